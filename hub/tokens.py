"""Interim API credential: hub-issued bearer tokens, and the operator page's sign-in.

Why interim: user accounts and roles come with the hub platform (issue 7), which
replaces this module whole; until then anyone who reaches the hub's port must still not
read handset ids. Everything about the credential lives here:

* ``tapcast hub token create|list|revoke`` (wired in hall/cli.py) keep the tokens in a
  JSON file next to the database (``<database>.tokens.json``, mode 0600). A token is 32
  random bytes (``tc1_`` + url-safe base64); only its sha256 is stored, so the file
  does not let anyone in. The value is printed once and never logged.
* Every gunicorn worker re-reads the file when it changes (inode, size, mtime), so a new
  or revoked token counts in every worker at its next request.
* ``/api/v1`` takes ``Authorization: Bearer <token>`` or the page's session; anything
  else is a 401 with ``WWW-Authenticate`` and how to get a token. Refusals are counted
  (``/api/v1/stats`` ``api.auth_failures``, shared by the workers of one ``hub web``)
  and logged at most once a minute per process.
* The page's sign-in form (CSRF-protected by Flask-WTF) puts the token's id, not the
  token, in Flask's signed session cookie; revoking the token ends those sessions too.
  The cookie key is ``<database>.secret`` (32 random bytes, mode 0600), created once by
  whichever process needs it first, so all workers sign alike; delete it to sign
  everyone out.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import multiprocessing
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import msgspec
from flask import (Blueprint, Flask, Response, current_app, jsonify, redirect,
                   render_template, request, session, url_for)
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import InputRequired, Length

from tapcast.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

__all__ = ["TokenError", "TokenRecord", "TokenStore", "token_store", "init_app",
           "current_credential", "require_credential", "auth_failures", "bp"]

TOKEN_PREFIX = "tc1_"
NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MAX_TOKEN_LEN = 128  # a real one is 47 characters; longer input is refused unhashed
REALM = "tapcast-hub"
SESSION_KEY = "token_id"
SESSION_LIFETIME = timedelta(hours=12)
REFUSAL_LOG_INTERVAL = 60.0
HOW_TO_GET_ONE = ("an operator creates one with `tapcast hub token create --config "
                  "hub.toml --name NAME`")

_STORE = "tapcast.tokens"


class TokenError(ValueError):
    """A token command cannot do what was asked; the message says why and what to do."""


class TokenRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    id: str  # random, names the token in session cookies (never the token itself)
    sha256: str  # hex digest of the token text
    created: float  # unix seconds


class _TokenFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int = 1
    tokens: list[TokenRecord] = msgspec.field(default_factory=list)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _sibling(database: str, suffix: str) -> Path:
    if "://" in database or database in ("", ":memory:"):
        raise TokenError(f"[hub] database {database!r}: API tokens are kept next to a "
                         "SQLite database file; set [hub] database to a file path")
    path = Path(database)
    return path.with_name(path.name + suffix)


class TokenStore:
    """The token file: create, list, revoke (the CLI) and check (every request)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._records: tuple[TokenRecord, ...] = ()

    # ------------------------------------------------------------ reading

    def records(self) -> tuple[TokenRecord, ...]:
        """The tokens as the file says now (re-read only when it changed). A file that
        cannot be read or parsed raises TokenError naming it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise TokenError(f"{self.path}: cannot read it ({exc.strerror})") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key != self._seen:
                self._records = tuple(self._read().tokens)
                self._seen = key
            return self._records

    def _read(self) -> _TokenFile:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=_TokenFile)
        except FileNotFoundError:
            return _TokenFile()
        except OSError as exc:
            raise TokenError(f"{self.path}: cannot read it ({exc.strerror})") from None
        except msgspec.DecodeError as exc:
            raise TokenError(f"{self.path}: not a token file ({exc}); restore it or "
                             "delete it and create tokens again") from None

    def check(self, token: str) -> TokenRecord | None:
        """The record whose hash matches ``token``; every stored hash is compared, in
        constant time each, so timing tells nothing about which one nearly matched."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LEN:
            return None
        digest = _digest(token)
        found = None
        for record in self.records():
            if hmac.compare_digest(record.sha256, digest):
                found = record
        return found

    def by_id(self, token_id: str) -> TokenRecord | None:
        for record in self.records():
            if hmac.compare_digest(record.id, token_id):
                return record
        return None

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _editing(self) -> Iterator[_TokenFile]:
        """The file under an exclusive lock, written back atomically (0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as out:  # mkstemp creates it 0600
                    out.write(msgspec.json.format(msgspec.json.encode(data)) + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def create(self, name: str) -> str:
        """A new token named ``name``; returns its value, which is stored nowhere."""
        if not NAME_RE.fullmatch(name):
            raise TokenError(f"token name {name[:80]!r}: use 1..64 letters, digits, '_', "
                             "'.', '@' and '-'")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._editing() as data:
            if any(r.name == name for r in data.tokens):
                raise TokenError(f"a token named {name!r} exists: revoke it first "
                                 f"(tapcast hub token revoke {name}) or pick another name")
            data.tokens.append(TokenRecord(name=name, id=secrets.token_hex(8),
                                           sha256=_digest(token), created=time.time()))
        log.info("API token %r created", name)
        return token

    def revoke(self, name: str) -> None:
        with self._editing() as data:
            kept = [r for r in data.tokens if r.name != name]
            if len(kept) == len(data.tokens):
                names = ", ".join(r.name for r in data.tokens) or "none"
                raise TokenError(f"no token named {name[:80]!r} (tokens: {names})")
            data.tokens = kept
        log.info("API token %r revoked", name)


def token_store(database: str) -> TokenStore:
    """The token store of the hub whose ``[hub] database`` is ``database``."""
    return TokenStore(_sibling(database, ".tokens.json"))


def load_or_create_secret(database: str) -> bytes:
    """The session-signing key shared by every process of this hub: read from
    ``<database>.secret``, or created there once (0600). Creation is a hard link of a
    complete temporary file, so workers starting together all end up with one key."""
    path = _sibling(database, ".secret")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd, tmp = tempfile.mkstemp(prefix=".secret-", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_hex(32) + "\n")
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users: chmod 600 it (anyone who reads "
                        "it can forge operator sessions)", path)
        secret = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"session key {path}: {exc.strerror or exc}") from None
    if len(secret) < 32:
        raise TokenError(f"{path}: too short to be a session key; delete it and it is "
                         "created again (everyone signs in again)")
    return secret.encode()


# ------------------------------------------------------------------ refusals

# Allocated when this module is first imported. `hub web` and `hub serve` build the app
# once in the gunicorn master (hub.run.check_web_app) before forking the workers, so the
# workers share this one counter.
_FAILURES = multiprocessing.get_context("fork").Value("q", 0)


def auth_failures() -> int:
    """Requests refused for want of a valid credential, since this hub web started."""
    return int(_FAILURES.value)


#: At most one warning line per interval for refusals: a flood of bad tokens costs a
#: counter, not a line per request (the next line says how many were held back).
_refusal_log = RateLimitedLog(log, interval=REFUSAL_LOG_INTERVAL)


def _refused(reason: str) -> None:
    """Count a request refused for want of a valid credential, and log it (rate-limited;
    never the token)."""
    with _FAILURES.get_lock():
        _FAILURES.value += 1
    _refusal_log.warn("refused", "refused a request without a valid API credential (%s, "
                      "from %s); at most one such line per %.0f s", reason,
                      request.remote_addr or "?", REFUSAL_LOG_INTERVAL)


# ------------------------------------------------------------------ requests


def _store(app: Flask | None = None) -> TokenStore:
    return (app or current_app).extensions[_STORE]


def init_app(app: Flask) -> None:
    """Session key, cookie settings, token store and the sign-in views."""
    database = app.config["TAPCAST"].hub.database
    app.secret_key = load_or_create_secret(database)
    app.config.update(SESSION_COOKIE_NAME="tapcast_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)
    store = token_store(database)
    store.records()  # a token file that cannot be read stops the start, in one line
    app.extensions[_STORE] = store
    app.register_blueprint(bp)


def _bearer() -> tuple[str | None, str]:
    """(token, "") from the Authorization header, or (None, why it is unusable)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None, "no credential"
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None, "Authorization header is not 'Bearer <token>'"
    return value.strip(), ""


def current_credential() -> tuple[TokenRecord | None, str]:
    """(record, "") for a valid bearer token or page session, else (None, reason)."""
    store = _store()
    try:
        if "Authorization" in request.headers:
            token, why = _bearer()
            if token is None:
                return None, why
            record = store.check(token)
            return (record, "") if record else (None, "wrong or revoked token")
        token_id = session.get(SESSION_KEY)
        if not isinstance(token_id, str):
            return None, "no credential"
        record = store.by_id(token_id)
        return (record, "") if record else (None, "session of a revoked token")
    except TokenError as exc:  # a broken token file: refuse everything, say why (rate-limited)
        _refusal_log.warn("token-file", "%s", exc, level=logging.ERROR)
        return None, "the hub's token file cannot be read"


def require_credential() -> ResponseReturnValue | None:
    """None when the request carries a valid credential, else the 401 to send."""
    record, why = current_credential()
    if record is not None:
        return None
    _refused(why)
    challenge = f'Bearer realm="{REALM}"'
    if why != "no credential":
        challenge += ', error="invalid_token"'
    message = (f"this API needs a token ({why}): send 'Authorization: Bearer <token>'; "
               f"{HOW_TO_GET_ONE}")
    response = jsonify({"error": message})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = challenge
    response.headers["Cache-Control"] = "no-store"
    return response


# ------------------------------------------------------------------ sign-in page

bp = Blueprint("tokens", __name__)


class SignInForm(FlaskForm):
    token = PasswordField("API token", validators=[InputRequired(),
                                                   Length(max=MAX_TOKEN_LEN)])


class SignOutForm(FlaskForm):
    """Only the CSRF token: signing out is a POST a foreign page cannot make."""


def sign_in_page(form: SignInForm | None = None, error: str = "",
                 status: int = 200) -> ResponseReturnValue:
    """The sign-in form (what ``/`` shows without a session)."""
    response = Response(render_template("signin.html", form=form or SignInForm(),
                                        error=error, how=HOW_TO_GET_ONE), status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/signin")
def signin_form() -> ResponseReturnValue:
    """/signin opened by address (after a refused sign-in it is in the address bar): /."""
    return redirect(url_for("pages.index"), 303)


@bp.post("/signin")
def signin() -> ResponseReturnValue:
    form = SignInForm()
    if not form.validate_on_submit():
        if "csrf_token" in form.errors:
            return sign_in_page(form, "The form expired or came from another site: "
                                      "sign in again.", 400)
        return sign_in_page(form, "Paste an API token.", 400)
    record = None
    with contextlib.suppress(TokenError):
        record = _store().check(form.token.data.strip())
    if record is None:
        _refused("wrong or revoked token at sign-in")
        return sign_in_page(SignInForm(formdata=None), "That token is not valid here "
                            "(wrong, or revoked).", 401)
    session.clear()
    session.permanent = True
    session[SESSION_KEY] = record.id
    log.info("operator page signed in with token %r from %s", record.name,
             request.remote_addr)
    return redirect(url_for("pages.index"), 303)


@bp.post("/signout")
def signout() -> ResponseReturnValue:
    if SignOutForm().validate_on_submit():
        session.clear()
    return redirect(url_for("pages.index"), 303)
