"""JSON API under /api/v1: nodes, events, stats, and its OpenAPI document.

Every error is JSON ``{"error": "..."}`` saying what to fix; unknown query parameters
are refused (a typo such as ``?node=n1`` must not silently return everything).
"""
from __future__ import annotations

import logging
import math
import typing
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from tapcast.protocol.mqtt import ID_RE, EventKind

from hub.db import MAX_EVENTS_LIMIT, QueryError

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

EVENT_KINDS: tuple[str, ...] = typing.get_args(EventKind)
DEFAULT_EVENTS_LIMIT = 50


class BadRequest(ValueError):
    """A request parameter is wrong; becomes a 400 with this message."""


def _db():  # noqa: ANN202 - HubDB, imported lazily to avoid a cycle with hub/__init__
    from hub import get_db
    return get_db()


def _stale_after() -> float:
    return current_app.config["TAPCAST"].hub.stale_after


def _check_params(allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(allowed) or 'none'}")


def _int_arg(name: str, lo: int, hi: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise BadRequest(f"{name} must be {bound}, got {value}")
    return value


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number (unix seconds), got {raw!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {raw!r}")
    return value


def _node_id_arg(value: str | None) -> str | None:
    if value is not None and not ID_RE.fullmatch(value):
        raise BadRequest(f"node_id {value!r} is not a node id: use letters, digits, '_' and '-'")
    return value


def _public_node(node: dict[str, Any], *, with_state: bool) -> dict[str, Any]:
    out = dict(node)
    if not with_state:
        out.pop("state", None)
    return out


@bp.get("/nodes")
def list_nodes() -> ResponseReturnValue:
    _check_params(())
    nodes = _db().list_nodes(stale_after=_stale_after())
    return jsonify({"nodes": [_public_node(n, with_state=False) for n in nodes]})


@bp.get("/nodes/<node_id>")
def get_node(node_id: str) -> ResponseReturnValue:
    _check_params(())
    _node_id_arg(node_id)
    node = _db().get_node(node_id, stale_after=_stale_after())
    if node is None:
        return jsonify({"error": f"no node {node_id!r} has reported to this hub"}), 404
    return jsonify(_public_node(node, with_state=True))


@bp.get("/events")
def list_events() -> ResponseReturnValue:
    allowed = ("node_id", "kind", "since_seq", "since_ts", "limit", "cursor")
    _check_params(allowed)
    node_id = _node_id_arg(request.args.get("node_id"))
    kind = request.args.get("kind")
    if kind is not None and kind not in EVENT_KINDS:
        raise BadRequest(f"kind {kind!r} is not an event kind; use one of "
                         f"{', '.join(EVENT_KINDS)}")
    limit = _int_arg("limit", 1, MAX_EVENTS_LIMIT) or DEFAULT_EVENTS_LIMIT
    try:
        events, next_cursor = _db().list_events(
            node_id=node_id, kind=kind, since_seq=_int_arg("since_seq", 0),
            since_ts=_float_arg("since_ts"), cursor=request.args.get("cursor"), limit=limit)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None
    next_url = None
    if next_cursor is not None:
        args = {k: v for k, v in request.args.items() if k != "cursor"}
        next_url = url_for("api.list_events", **args, cursor=next_cursor)
    return jsonify({"events": events, "next_cursor": next_cursor, "next": next_url})


@bp.get("/stats")
def stats() -> ResponseReturnValue:
    _check_params(())
    from hub import get_ingest

    db = _db()
    nodes = db.list_nodes(stale_after=_stale_after())
    online = sum(1 for n in nodes if n["status"] == "online")
    ingest = get_ingest()
    return jsonify({
        "events": db.event_totals(),
        "nodes": {"total": len(nodes), "online": online, "offline": len(nodes) - online},
        "ingest": ingest.counters.snapshot() if ingest is not None else None,
    })


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    from hub.openapi import openapi_document
    return jsonify(openapi_document())


def register_error_handlers(app: Flask) -> None:
    """400 for BadRequest; JSON (not HTML) for any HTTP error under /api/."""

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> ResponseReturnValue:
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        if request.path.startswith("/api/"):
            return jsonify({"error": f"{exc.name}: {exc.description}"}), exc.code or 500
        return exc
