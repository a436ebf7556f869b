"""JSON API under /api/v1: nodes, events, incidents, stats, and its OpenAPI document.

Every error is JSON ``{"error": "..."}`` saying what to fix; unknown query parameters
are refused (a typo such as ``?node=n1`` must not silently return everything), and so is
a parameter given twice. Every value is bounded before it reaches the database (integers
to SQLite's signed 64 bits, strings by length), so no input can make a 500. Every route
but the OpenAPI document needs a credential and a permission (hub/auth.py:
every view carries its access rule).
"""
from __future__ import annotations

import logging
import math
import re
import typing
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from tapcast.keys import MAX_ID_LEN
from tapcast.protocol.mqtt import ID_RE, KIND_PATTERN, EventKind

from hub.auth import auth_counts, public, requires
from hub.db import (MAX_EVENTS_LIMIT, MAX_NODES_LIMIT, NODE_STATUSES, HubDB, QueryError,
                    decode_cursor, encode_cursor)

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

#: The kinds a node of this version writes; the hub stores (and lists) any kind that
#: matches KIND_PATTERN, so a newer node's kinds can be listed too.
EVENT_KINDS: tuple[str, ...] = typing.get_args(EventKind)
_KIND_RE = re.compile(KIND_PATTERN)
#: Longest kind KIND_PATTERN allows.
MAX_KIND_LEN = 32
DEFAULT_EVENTS_LIMIT = 50
#: What hub/db.py records as incidents (docs/mqtt.md, "A stream that heals itself").
INCIDENT_KINDS: tuple[str, ...] = ("lost", "conflict", "quarantined", "new_epoch")
DEFAULT_INCIDENTS_LIMIT = 50
#: The incidents listing's cursors (positions are incident ids, for any node_id filter).
_INCIDENT_CURSOR = "incident"
#: SQLite's INTEGER is signed 64-bit: the upper bound of every integer parameter.
MAX_INT = 2**63 - 1
#: Cursors this API returns are about 30 characters.
MAX_CURSOR_LEN = 200
#: A number parameter's text, at most (a unix time with microseconds is 17).
MAX_NUMBER_LEN = 64
#: since/until bounds (unix seconds): 1e11 is the year 5138.
MAX_TS = 1e11
DEFAULT_NODES_LIMIT = 50
#: Longest zone or version a node reports (tapcast.protocol.mqtt.NodeState).
MAX_LABEL_LEN = 64
_INT_TEXT = re.compile(r"-?[0-9]{1,20}")
_NUMBER_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class BadRequest(ValueError):
    """A request parameter is wrong; becomes a 400 with this message."""


def _db():  # noqa: ANN202 - HubDB, imported lazily to avoid a cycle with hub/__init__
    from hub import get_db
    return get_db()


def _stale_after() -> float:
    return current_app.config["TAPCAST"].hub.stale_after


def _shown(raw: str, limit: int = 40) -> str:
    """A client's text as quoted in an error: repr, cut short (it may be megabytes)."""
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def check_params(allowed: tuple[str, ...]) -> None:
    """BadRequest (400) for a query parameter not in ``allowed``, or one given twice."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(_shown(u) for u in unknown[:5])}"
                         f"; accepted: {', '.join(allowed) or 'none'}")
    repeated = sorted(k for k in request.args if len(request.args.getlist(k)) > 1)
    if repeated:
        raise BadRequest(f"query parameter(s) {', '.join(repeated)} given more than once; "
                         "give each once")


def int_arg(name: str, lo: int, hi: int = MAX_INT) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not _INT_TEXT.fullmatch(raw):
        raise BadRequest(f"{name} must be an integer (decimal digits), got {_shown(raw)}")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {_shown(raw)}")
    return value


def float_arg(name: str, lo: float, hi: float) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if len(raw) > MAX_NUMBER_LEN or not _NUMBER_TEXT.fullmatch(raw):
        raise BadRequest(f"{name} must be a number (unix seconds, such as 1700000000.5), "
                         f"got {_shown(raw)}")
    value = float(raw)
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {_shown(raw)}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo:g} and {hi:g}, got {_shown(raw)}")
    return value


def node_id_arg(value: str | None) -> str | None:
    if value is not None and (len(value) > MAX_ID_LEN or not ID_RE.fullmatch(value)):
        raise BadRequest(f"node_id {_shown(value)} is not a node id: use 1..{MAX_ID_LEN} "
                         "letters, digits, '_' and '-'")
    return value


def _cursor_arg() -> str | None:
    raw = request.args.get("cursor")
    if raw is not None and (not raw or len(raw) > MAX_CURSOR_LEN):
        raise BadRequest(f"cursor {_shown(raw)} is not one this API returned; pass "
                         "next_cursor from a previous page unchanged")
    return raw


def _kind_arg() -> str | None:
    """Any kind of KIND_PATTERN's shape: a newer node's kinds are stored and listed too
    (a well-formed kind nobody wrote lists nothing)."""
    raw = request.args.get("kind")
    if raw is not None and (len(raw) > MAX_KIND_LEN or not _KIND_RE.fullmatch(raw)):
        raise BadRequest(f"kind {_shown(raw)} is not an event kind: use 1..{MAX_KIND_LEN} "
                         "lowercase letters, digits and '_', starting with a letter, such as "
                         f"{', '.join(EVENT_KINDS)}")
    return raw


def _label_arg(name: str) -> str | None:
    raw = request.args.get(name)
    if raw is not None and (not raw or len(raw) > MAX_LABEL_LEN or not raw.isprintable()):
        raise BadRequest(f"{name} {_shown(raw)} is not a {name} a node reports: use 1.."
                         f"{MAX_LABEL_LEN} printable characters")
    return raw


def _choice_arg(name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is not None and raw not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}, got {_shown(raw)}")
    return raw


def _next_url(endpoint: str, next_cursor: str | None) -> str | None:
    if next_cursor is None:
        return None
    args = {k: v for k, v in request.args.items() if k != "cursor"}
    return url_for(endpoint, **args, cursor=next_cursor)


def conditional(payload: dict[str, Any]) -> ResponseReturnValue:
    """JSON with an ETag; a 304 without a body when the client's copy is current, so a
    page refreshing every few seconds moves only what changed."""
    response = jsonify(payload)
    response.add_etag()
    response.headers["Cache-Control"] = "private, no-cache"  # revalidate every time
    return response.make_conditional(request)


def _public_node(node: dict[str, Any], *, with_state: bool) -> dict[str, Any]:
    out = dict(node)
    if not with_state:
        out.pop("state", None)
    return out


@bp.get("/nodes")
@requires("nodes:read")
def list_nodes() -> ResponseReturnValue:
    """One page of nodes by id; filters on indexes (zone, version) or the computed
    status; ``cursor`` for the next page."""
    check_params(("zone", "version", "status", "limit", "cursor"))
    limit = int_arg("limit", 1, MAX_NODES_LIMIT) or DEFAULT_NODES_LIMIT
    try:
        nodes, next_cursor = _db().list_nodes(
            stale_after=_stale_after(), zone=_label_arg("zone"), version=_label_arg("version"),
            status=_choice_arg("status", NODE_STATUSES), cursor=_cursor_arg(), limit=limit)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None
    return conditional({"nodes": [_public_node(n, with_state=False) for n in nodes],
                        "next_cursor": next_cursor,
                        "next": _next_url("api.list_nodes", next_cursor)})


@bp.get("/nodes/<node_id>")
@requires("nodes:read")
def get_node(node_id: str) -> ResponseReturnValue:
    check_params(())
    node_id_arg(node_id)
    node = _db().get_node(node_id, stale_after=_stale_after())
    if node is None:
        return jsonify({"error": f"no node {node_id!r} has reported to this hub"}), 404
    return jsonify(_public_node(node, with_state=True))


@bp.get("/events")
@requires("events:read")
def list_events() -> ResponseReturnValue:
    allowed = ("node_id", "kind", "since_seq", "since", "until", "limit", "cursor")
    check_params(allowed)
    node_id = node_id_arg(request.args.get("node_id"))
    kind = _kind_arg()
    limit = int_arg("limit", 1, MAX_EVENTS_LIMIT) or DEFAULT_EVENTS_LIMIT
    try:
        events, next_cursor = _db().list_events(
            node_id=node_id, kind=kind, since_seq=int_arg("since_seq", 0),
            since=float_arg("since", 0.0, MAX_TS), until=float_arg("until", 0.0, MAX_TS),
            cursor=_cursor_arg(), limit=limit)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None
    return conditional({"events": events, "next_cursor": next_cursor,
                        "next": _next_url("api.list_events", next_cursor)})


@bp.get("/incidents")
@requires("incidents:read")
def list_incidents() -> ResponseReturnValue:
    """Incidents of the event stream (lost, conflict, quarantined, new_epoch), newest
    first, paged by cursor like the events."""
    check_params(("node_id", "limit", "cursor"))
    node_id = node_id_arg(request.args.get("node_id"))
    limit = int_arg("limit", 1, MAX_EVENTS_LIMIT) or DEFAULT_INCIDENTS_LIMIT
    cursor = _cursor_arg()
    before = None
    if cursor is not None:
        try:
            before = decode_cursor(cursor, _INCIDENT_CURSOR)
        except QueryError:
            raise BadRequest(f"cursor {_shown(cursor)} is not one this API returned for "
                             "/api/v1/incidents; pass next_cursor from a previous page "
                             "unchanged") from None
    incidents = _db().list_incidents(node_id=node_id, limit=limit + 1, before=before)
    next_cursor = None
    if len(incidents) > limit:  # one more than asked: there is a next page
        incidents = incidents[:limit]
        next_cursor = encode_cursor(_INCIDENT_CURSOR, incidents[-1]["id"])
    return conditional({"incidents": incidents, "next_cursor": next_cursor,
                        "next": _next_url("api.list_incidents", next_cursor)})


def incident_totals(db: HubDB) -> dict[str, int]:
    """Incidents per kind (every known kind, 0 when none) and quarantined batches."""
    return {**dict.fromkeys(INCIDENT_KINDS, 0), **db.incident_totals()}


@bp.get("/stats")
@requires("stats:read")
def stats() -> ResponseReturnValue:
    check_params(())
    from hub import get_ingest

    db = _db()
    ingest = get_ingest()
    return conditional({
        "events": db.event_totals(),
        "nodes": db.node_totals(stale_after=_stale_after()),
        "incidents": incident_totals(db),
        "ingest": ingest.counters.snapshot() if ingest is not None else None,
        "api": auth_counts(),
    })


@bp.get("/openapi.json")
@public
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
