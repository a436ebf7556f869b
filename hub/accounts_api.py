"""JSON API for accounts under /api/v1: who am I, one's own tokens, users (admins), and
the audit log (admins and auditors).

Bodies are JSON objects decoded by msgspec into the structs below: an unknown field, a
wrong type or a value out of bounds is a 400 saying which (as unknown query parameters
are). Every change goes through hub/accounts.py, which audits it in the same
transaction. A token's value appears once, in the answer that created it.
"""
from __future__ import annotations

import logging
import re
from typing import Annotated, Any, TypeVar

import msgspec
from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from hub.accounts import (MAX_PASSWORD_LEN, PERMISSIONS, ROLE_PERMISSIONS, AccountError,
                          USERNAME_RE)
from hub.auth import Principal, accounts, current_principal, requires, signed_in
from hub.db import QueryError, decode_cursor, encode_cursor

log = logging.getLogger(__name__)

bp = Blueprint("accounts_api", __name__, url_prefix="/api/v1")

MAX_AUDIT_LIMIT = 500
DEFAULT_AUDIT_LIMIT = 50
MAX_CURSOR_LEN = 200
MAX_TS = 1e11
_AUDIT_CURSOR = "audit"
ACTION_RE = re.compile(r"[a-z][a-z_.]{0,31}")
_INT_TEXT = re.compile(r"[0-9]{1,4}")

S = TypeVar("S")

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text128 = Annotated[str, msgspec.Meta(max_length=128)]
Text254 = Annotated[str, msgspec.Meta(max_length=254)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD_LEN)]
Expiry = Annotated[float, msgspec.Meta(gt=0, le=MAX_TS)]


class NewToken(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    scopes: Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]],
                      msgspec.Meta(min_length=1, max_length=len(PERMISSIONS))]
    expires_at: Expiry | None = None


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    username: Name
    role: Annotated[str, msgspec.Meta(max_length=16)]
    password: Password | None = None
    display_name: Text128 | None = None
    email: Text254 | None = None


class UserChange(msgspec.Struct, forbid_unknown_fields=True):
    role: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    disabled: bool | None = None
    display_name: Text128 | None = None
    email: Text254 | None = None


def _body(kind: type[S]) -> S:
    """The JSON body as ``kind``; AccountError (400) saying what is wrong."""
    try:
        return msgspec.json.decode(request.get_data(cache=False), type=kind)
    except msgspec.DecodeError as exc:
        raise AccountError(f"body: {exc} (send a JSON object)") from None


def _check_params(allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise AccountError(f"unknown query parameter(s) "
                           f"{', '.join(repr(u[:40]) for u in unknown[:5])}; accepted: "
                           f"{', '.join(allowed) or 'none'}")
    repeated = sorted(k for k in request.args if len(request.args.getlist(k)) > 1)
    if repeated:
        raise AccountError(f"query parameter(s) {', '.join(repeated)} given more than once; "
                           "give each once")


def _me() -> Principal:
    principal = current_principal()
    assert isinstance(principal, Principal)  # the gate let only a signed-in user in
    return principal


@bp.errorhandler(AccountError)
def account_error(exc: AccountError) -> ResponseReturnValue:
    return jsonify({"error": str(exc)}), exc.status


@bp.get("/me")
@signed_in
def me() -> ResponseReturnValue:
    """Who the credential is, and what it may do here."""
    _check_params(())
    principal = _me()
    return jsonify({"user": principal.user.public(), "via": principal.via,
                    "token": None if principal.token is None else principal.token.public(),
                    "permissions": sorted(principal.permissions)})


# ------------------------------------------------------------------ tokens


@bp.get("/tokens")
@requires("tokens:own")
def list_tokens() -> ResponseReturnValue:
    _check_params(())
    mine = accounts().list_tokens(_me().user.username)
    return jsonify({"tokens": [t.public() for t in mine]})


@bp.post("/tokens")
@requires("tokens:own")
def create_token() -> ResponseReturnValue:
    """A new token of one's own; its value is in this answer and nowhere else."""
    _check_params(())
    body = _body(NewToken)
    principal = _me()
    # A token can only hand on what its own credential may do (a read-only token must
    # not mint an admin one).
    beyond = sorted(set(body.scopes) & (set(PERMISSIONS) - principal.permissions))
    if beyond and all(s in ROLE_PERMISSIONS[principal.user.role] for s in beyond):
        raise AccountError(f"scope(s) {', '.join(beyond)} go beyond this token's own "
                           "scopes", 403)
    token, value = accounts().create_token(principal.actor(), principal.user.username,
                                           body.name, body.scopes, expires_at=body.expires_at)
    response = jsonify({**token.public(), "token": value})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/tokens/<token_id>")
@requires("tokens:own")
def revoke_token(token_id: str) -> ResponseReturnValue:
    """Revoke one of one's own tokens (an admin with users:admin: anyone's)."""
    _check_params(())
    principal = _me()
    owner = None if principal.may("users:admin") else principal.user.username
    token = accounts().revoke_token(principal.actor(), token_id[:64], owner=owner)
    return jsonify(token.public())


# ------------------------------------------------------------------- users


@bp.get("/users")
@requires("users:admin")
def list_users() -> ResponseReturnValue:
    _check_params(())
    return jsonify({"users": [u.public() for u in accounts().list_users()]})


@bp.post("/users")
@requires("users:admin")
def create_user() -> ResponseReturnValue:
    _check_params(())
    body = _body(NewUser)
    user = accounts().create_user(_me().actor(), body.username, body.role,
                                  password=body.password, display_name=body.display_name,
                                  email=body.email)
    return jsonify(user.public()), 201


def _username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise AccountError(f"no user {username[:40]!r}", 404)
    return username


@bp.get("/users/<username>")
@requires("users:admin")
def get_user(username: str) -> ResponseReturnValue:
    _check_params(())
    user = accounts().get_user(_username(username))
    if user is None:
        raise AccountError(f"no user {username[:40]!r}", 404)
    return jsonify(user.public())


@bp.patch("/users/<username>")
@requires("users:admin")
def update_user(username: str) -> ResponseReturnValue:
    """Change a role, disable or enable, or change the names."""
    _check_params(())
    body = _body(UserChange)
    user = accounts().update_user(_me().actor(), _username(username), role=body.role,
                                  disabled=body.disabled, display_name=body.display_name,
                                  email=body.email)
    return jsonify(user.public())


# ------------------------------------------------------------------- audit


def audit_query(args: Any) -> dict[str, Any]:
    """The audit listing's filters from query parameters (the API and the page share
    it); AccountError (400) for a bad one."""
    out: dict[str, Any] = {"limit": DEFAULT_AUDIT_LIMIT, "before": None, "action": None,
                           "actor": None}
    raw = args.get("limit")
    if raw is not None:
        if not _INT_TEXT.fullmatch(raw) or not 1 <= int(raw) <= MAX_AUDIT_LIMIT:
            raise AccountError(f"limit must be between 1 and {MAX_AUDIT_LIMIT}, got "
                               f"{raw[:40]!r}")
        out["limit"] = int(raw)
    cursor = args.get("cursor")
    if cursor is not None:
        try:
            if not cursor or len(cursor) > MAX_CURSOR_LEN:
                raise QueryError(cursor)
            out["before"] = decode_cursor(cursor, _AUDIT_CURSOR)
        except QueryError:
            raise AccountError(f"cursor {cursor[:40]!r} is not one this API returned for "
                               "/api/v1/audit; pass next_cursor from a previous page "
                               "unchanged") from None
    action = args.get("action")
    if action is not None:
        if not ACTION_RE.fullmatch(action):
            raise AccountError(f"action {action[:40]!r} is not an action: such as "
                               "user.create, user.update, user.set_password, token.create, "
                               "token.revoke")
        out["action"] = action
    actor = args.get("actor")
    if actor is not None:
        if not 1 <= len(actor) <= 80 or not actor.isprintable():
            raise AccountError(f"actor {actor[:40]!r} is not a user name (or cli:NAME)")
        out["actor"] = actor
    return out


def audit_page(query: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """One page of audit entries and the cursor of the next (None on the last)."""
    store = accounts()
    entries = store.audit_entries(**query)
    next_cursor = None
    if len(entries) == query["limit"] and store.audit_entries(
            **{**query, "limit": 1, "before": entries[-1]["id"]}):
        next_cursor = encode_cursor(_AUDIT_CURSOR, entries[-1]["id"])
    return entries, next_cursor


@bp.get("/audit")
@requires("audit:read")
def list_audit() -> ResponseReturnValue:
    """Every change made through the web, the API or the CLI, newest first."""
    _check_params(("limit", "cursor", "action", "actor"))
    entries, next_cursor = audit_page(audit_query(request.args))
    next_url = None
    if next_cursor is not None:
        args = {k: v for k, v in request.args.items() if k != "cursor"}
        next_url = url_for("accounts_api.list_audit", **args, cursor=next_cursor)
    return jsonify({"entries": entries, "next_cursor": next_cursor, "next": next_url})
