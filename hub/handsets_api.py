"""JSON API for the handset app under /api/v1: register a customer, sign in again
(new phone or reset identity), and the code path without NFC (present a display's code,
answer the node, read its verdict). docs/api.md, "Handsets and codes"; the OpenAPI part
is hub/handsets_openapi.py.

Registering and signing in are public (no credential yet), exempt from the page's CSRF
check (no session, no cookie set: the answer carries the credential), and rate limited
as the staff sign-in is: failed sign-ins per remote address and per user name
(hub.auth.LOGIN_LIMIT), registrations per remote address (REGISTER_LIMIT); successful
sign-ins per user name too (ISSUE_LIMIT: each is a handset row and a token). Bodies are
read up to MAX_BODY bytes only (413 beyond). Failures are
counted with the hub's refused credentials (/api/v1/stats). Presenting a code needs
``presence:use`` (a customer's token has nothing else); wrong, expired or used codes
are counted the same way and limited per account (PRESENCE_LIMIT) and per remote
address (PRESENCE_ADDRESS_LIMIT).
"""
from __future__ import annotations

import logging
import re
from typing import Annotated, Any, TypeVar

import msgspec
from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from tapcast.keys import HubAuthority, KeyFileError

from hub.accounts import MAX_PASSWORD_LEN, AccountError, Actor
from hub.auth import (LOGIN_LIMIT, Principal, accounts, csrf_exempt, current_principal,
                      limiter, public, refused, requires)
from hub.handsets import Handsets
from hub.presence import PresenceError, PresenceStore

log = logging.getLogger(__name__)

bp = Blueprint("handsets_api", __name__, url_prefix="/api/v1")

#: Registrations per remote address (every attempt counts: accounts are not free).
REGISTER_LIMIT = "20 per hour"
#: Failed code presentations (wrong, expired, used) per account.
PRESENCE_LIMIT = "10 per minute"
#: ... and per remote address, whatever the account: one address may register twenty
#: accounts an hour, and the per-account limit alone would let it guess ten codes a
#: minute with each (generous, for a hall's customers behind one NAT).
PRESENCE_ADDRESS_LIMIT = "60 per minute"
#: Successful sign-ins (each a new handset row, certificate and token) per user name.
ISSUE_LIMIT = "10 per hour"
#: The largest body these routes read (theirs are a few KiB at most). The app-wide bound
#: is the content upload's ([hub] max_file_mb); a public route must not read, and parse
#: for its per-user-name limit, that much for anyone who asks.
MAX_BODY = 16 * 1024
_HANDSETS = "tapcast.handsets"
_PRESENCE = "tapcast.presence"
OFFER_ID_RE = r"[0-9a-f]{32}"

S = TypeVar("S")

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD_LEN)]
PublicKey = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class HandsetRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Name
    password: Password
    public_key: PublicKey


class CodeRequest(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class AnswerRequest(msgspec.Struct, forbid_unknown_fields=True):
    answer: Annotated[str, msgspec.Meta(min_length=2, max_length=4096)]


def _raw_body() -> bytes:
    """The request's body, read once and at most MAX_BODY bytes; AccountError 413 when
    it is longer."""
    if "tapcast_handset_body" not in g:
        data: bytes | None = None
        if (request.content_length or 0) <= MAX_BODY:
            data = request.stream.read(MAX_BODY + 1)
        g.tapcast_handset_body = data if data is not None and len(data) <= MAX_BODY else None
    if g.tapcast_handset_body is None:
        raise AccountError(f"body over {MAX_BODY} bytes (these routes take a small JSON "
                           "object)", 413)
    return g.tapcast_handset_body  # type: ignore[no-any-return]


def _body(kind: type[S]) -> S:
    try:
        return msgspec.json.decode(_raw_body(), type=kind)
    except msgspec.DecodeError as exc:
        raise AccountError(f"body: {exc} (send a JSON object)") from None


def _no_params() -> None:
    if request.args:
        raise AccountError(f"unknown query parameter(s) "
                           f"{', '.join(repr(k[:40]) for k in list(request.args)[:5])}; "
                           "accepted: none")


def handsets(app: Flask | None = None) -> Handsets:
    """The app's Handsets; AccountError 503 when this hub web has no signing key."""
    app = app or current_app
    found = app.extensions.get(_HANDSETS)
    if found is None:
        path = app.config["TAPCAST"].hub.signing_key
        try:
            authority = HubAuthority.load_key_file(path)
        except (KeyFileError, OSError, ValueError) as exc:
            log.error("handsets cannot be registered on this hub web: %s", exc)
            raise AccountError("this hub cannot issue handset certificates: its signing key "
                               "([hub] signing_key) is missing", 503) from None
        found = app.extensions[_HANDSETS] = Handsets(accounts(app).engine, accounts(app),
                                                     authority)
    return found


def presence(app: Flask | None = None) -> PresenceStore:
    app = app or current_app
    if _PRESENCE not in app.extensions:
        app.extensions[_PRESENCE] = PresenceStore(accounts(app).engine)
    return app.extensions[_PRESENCE]


def _actor(username: str) -> Actor:
    return Actor(None, f"handset:{username[:64]}", "api", request.remote_addr)


def _me() -> Principal:
    principal = current_principal()
    assert isinstance(principal, Principal)
    return principal


@bp.errorhandler(AccountError)
def account_error(exc: AccountError) -> ResponseReturnValue:
    return jsonify({"error": str(exc)}), exc.status


@bp.errorhandler(PresenceError)
def presence_error(exc: PresenceError) -> ResponseReturnValue:
    if exc.counted:
        g.tapcast_presence_failed = True
        refused(f"code presentation: {exc}")
    return jsonify({"error": str(exc)}), exc.status


# ------------------------------------------------------------------ accounts


@bp.post("/handsets")
@public
@csrf_exempt
def register() -> ResponseReturnValue:
    """A new customer account, its handset certificate and its token."""
    _no_params()
    body = _body(HandsetRequest)
    issued = handsets().register(_actor(body.username), body.username, body.password,
                                 bytes.fromhex(body.public_key))
    return jsonify(issued.public()), 201


@bp.post("/handsets/signin")
@public
@csrf_exempt
def sign_in() -> ResponseReturnValue:
    """A new handset for a customer account (new phone, reset identity)."""
    _no_params()
    body = _body(HandsetRequest)
    issued = handsets().sign_in(_actor(body.username), body.username, body.password,
                                bytes.fromhex(body.public_key))
    if issued is None:
        g.tapcast_login_failed = True
        refused("wrong user name or password at handset sign-in", login=True)
        return jsonify({"error": "wrong user name or password"}), 401
    return jsonify(issued.public()), 200


# ------------------------------------------------------------------ codes


@bp.post("/presence")
@requires("presence:use")
def present_code() -> ResponseReturnValue:
    """Claim the live offer a display's code names: the node's HELLO to answer."""
    _no_params()
    body = _body(CodeRequest)
    me = _me().user
    claim = presence().claim(body.code, me.id, me.handset_id)
    return jsonify(claim.public()), 201


@bp.post("/presence/<offer_id>/answer")
@requires("presence:use")
def answer(offer_id: str) -> ResponseReturnValue:
    """The handset's answer to the node's HELLO, relayed to the node."""
    _no_params()
    _check_offer_id(offer_id)
    body = _body(AnswerRequest)
    return jsonify(presence().answer(offer_id, _me().user.id, body.answer).public()), 202


@bp.get("/presence/<offer_id>")
@requires("presence:use")
def get_presence(offer_id: str) -> ResponseReturnValue:
    """How the code session goes: the node's verdict and CONFIRM MAC once it came."""
    _no_params()
    _check_offer_id(offer_id)
    return jsonify(presence().get(offer_id, _me().user.id).public())


def _check_offer_id(offer_id: str) -> None:
    if not re.fullmatch(OFFER_ID_RE, offer_id):
        raise PresenceError(f"no code session {offer_id[:40]!r}: an id is 32 hex digits", 404)


# ------------------------------------------------------------------ wiring


def _login_failed(response: object) -> bool:
    return bool(g.get("tapcast_login_failed"))


def _presence_failed(response: object) -> bool:
    return bool(g.get("tapcast_presence_failed"))


def _username_key() -> str:
    try:
        name = msgspec.json.decode(_raw_body()).get("username", "")
    except (msgspec.DecodeError, AttributeError, AccountError):
        name = ""
    return "handset-user:" + (name if isinstance(name, str) else "").strip().lower()[:64]


def _issued(response: Any) -> bool:
    return getattr(response, "status_code", 0) == 200


def _issue_key() -> str:
    return "handset-issue:" + _username_key()


def _account_key() -> str:
    principal = current_principal()
    user = getattr(principal, "user", None)
    return f"presence:{user.id if user is not None else request.remote_addr}"


def _address_key() -> str:
    return f"presence-address:{request.remote_addr}"


def init_app(app: Flask) -> None:
    """Register the blueprint with its rate limits (per app: each has its limiter)."""
    app.register_blueprint(bp)
    lim = limiter(app)
    views = app.view_functions
    views["handsets_api.register"] = lim.limit(REGISTER_LIMIT)(register)
    views["handsets_api.sign_in"] = lim.limit(LOGIN_LIMIT, deduct_when=_login_failed)(
        lim.limit(LOGIN_LIMIT, key_func=_username_key, deduct_when=_login_failed)(
            lim.limit(ISSUE_LIMIT, key_func=_issue_key, deduct_when=_issued)(sign_in)))
    views["handsets_api.present_code"] = lim.limit(
        PRESENCE_ADDRESS_LIMIT, key_func=_address_key, deduct_when=_presence_failed)(
        lim.limit(PRESENCE_LIMIT, key_func=_account_key, deduct_when=_presence_failed)(
            present_code))
