"""Accounts, roles, personal API tokens and the audit log, over the hub database.

No Flask here: the web (hub/auth.py), the API (hub/accounts_api.py) and the CLI
(``tapcast hub user|token ...``) all change accounts through ``Accounts``, so every change
is checked the same way and audited in the same transaction as the change itself.

Why it is built so:

* One table says what each role may do (``ROLE_PERMISSIONS``). Page and API checks ask
  it on every request, and a token's scopes are intersected with it on every request,
  so demoting a user takes power from their sessions and tokens at once.
* Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher``, RFC 9106 low
  memory profile); an unknown user name costs a verification too, so timing does not
  tell which names exist. There is never a default password: the first admin is made
  with ``tapcast hub user create --role admin`` on the hub's box.
* A token is ``tc1_`` and 32 random bytes (url-safe base64); only its sha256 is kept,
  looked up by that digest (the secret's hash, so the lookup's timing tells nothing).
* Nothing is kept beside the database file: the session-signing key is a row of
  ``settings`` created once by whichever process needs it first.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from hub.dbengine import writer
from hub.schema import api_tokens, audit_log, settings, users

log = logging.getLogger(__name__)

__all__ = ["ROLES", "PERMISSIONS", "ROLE_PERMISSIONS", "AccountError", "Actor", "User",
           "Token", "Accounts", "audit", "check_password", "parse_scopes", "TOKEN_PREFIX",
           "MIN_PASSWORD_LEN"]

#: Every permission, with what it lets one do (shown on the pages and in docs/api.md).
PERMISSIONS: dict[str, str] = {
    "nodes:read": "see the nodes and their health",
    "events:read": "read the events the nodes recorded (handset ids included)",
    "incidents:read": "read the incidents of the event stream",
    "stats:read": "read the counts (no handset ids)",
    "audit:read": "read the audit log",
    "users:admin": "create accounts, change roles, disable accounts, revoke any token",
    "tokens:own": "create, list and revoke one's own API tokens",
    "content:read": "see the content library, node groups and what a node would show",
    "content:write": "upload, edit, target, schedule and retire content; set node groups",
    "presence:use": "present a display's code from one's handset app (the code path "
                    "without NFC)",
}
_READ_FLEET = frozenset({"nodes:read", "events:read", "incidents:read", "stats:read"})
#: What each role may do: the one table page checks, API checks and token scopes use.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(PERMISSIONS),
    "operator": _READ_FLEET | {"tokens:own", "content:read"},
    "marketer": frozenset({"stats:read", "tokens:own", "content:read", "content:write"}),
    "auditor": _READ_FLEET | {"audit:read", "tokens:own", "content:read"},
    # Customers are registered by the handset app (hub/handsets.py), whose token has
    # only this: present a display's code. Nothing of the staff API.
    "customer": frozenset({"presence:use"}),
}
ROLES: tuple[str, ...] = tuple(ROLE_PERMISSIONS)

TOKEN_PREFIX = "tc1_"
MAX_TOKEN_LEN = 128  # a real one is 47 characters; longer input is refused unhashed
MIN_PASSWORD_LEN = 12
MAX_PASSWORD_LEN = 1024  # argon2 hashes any length, but a megabyte is not a password
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
TOKEN_ID_RE = re.compile(r"[0-9a-f]{16}")
MAX_TEXT_LEN = {"display_name": 128, "email": 254}
#: A token's last_used is written at most this often (a write per request would queue
#: every API call behind the ingest on SQLite).
LAST_USED_EVERY = 60.0
SESSION_SECRET_KEY = "session_secret"
VIA = ("web", "api", "cli")

#: The password hasher (argon2id, RFC 9106 low-memory profile). Tests may swap in a
#: cheaper one; a hash records its own parameters, so verification follows the hash.
HASHER = PasswordHasher()


class AccountError(ValueError):
    """A change that cannot be made; the message says why. ``status`` is the HTTP answer
    it becomes (400 bad input, 404 no such thing, 409 conflicts with what exists)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit log."""

    id: int | None
    name: str
    via: str  # web, api, cli
    remote_addr: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        """Whoever runs ``tapcast hub ...`` on the hub's box (the OS user name)."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "?"
        return cls(None, f"cli:{who}", "cli")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    has_password: bool
    handset_id: str | None
    display_name: str | None
    email: str | None
    created_at: float
    disabled: bool
    last_login: float | None
    #: Changes whenever the password does (a digest of its hash, "" without one). A
    #: signed-in session carries the stamp it began with, so a new password ends every
    #: session begun with the old one. Never shown.
    session_stamp: str = ""

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS.get(self.role, frozenset())

    def public(self) -> dict[str, Any]:
        """As the API and the audit log show it (never the password hash)."""
        return {"id": self.id, "username": self.username, "role": self.role,
                "display_name": self.display_name, "email": self.email,
                "handset_id": self.handset_id, "has_password": self.has_password,
                "disabled": self.disabled, "created_at": self.created_at,
                "last_login": self.last_login}


@dataclass(frozen=True)
class Token:
    id: str
    user_id: int
    username: str
    name: str
    scopes: tuple[str, ...]
    created_at: float
    last_used: float | None
    expires_at: float | None
    revoked_at: float | None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def public(self) -> dict[str, Any]:
        """As the API and the audit log show it (never the value or its digest)."""
        return {"id": self.id, "name": self.name, "user": self.username,
                "scopes": list(self.scopes), "created_at": self.created_at,
                "last_used": self.last_used, "expires_at": self.expires_at,
                "revoked_at": self.revoked_at}


@dataclass
class _Dummy:
    """A hash to verify against when the user does not exist (same cost as a real one)."""

    hashes: dict[int, str] = field(default_factory=dict)

    def get(self, hasher: PasswordHasher) -> str:
        key = id(hasher)
        if key not in self.hashes:
            self.hashes[key] = hasher.hash(secrets.token_hex(16))
        return self.hashes[key]


_DUMMY = _Dummy()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_password(password: str, username: str) -> None:
    """AccountError unless ``password`` is acceptable: at least MIN_PASSWORD_LEN
    characters, not the user name, not one character repeated (length over composition
    rules, as NIST SP 800-63B advises)."""
    if len(password) < MIN_PASSWORD_LEN:
        raise AccountError(f"password too short: use at least {MIN_PASSWORD_LEN} characters "
                           "(a few words make a good one)")
    if len(password) > MAX_PASSWORD_LEN:
        raise AccountError(f"password too long: at most {MAX_PASSWORD_LEN} characters")
    if username and username.lower() in password.lower():
        raise AccountError("password must not contain the user name")
    if len(set(password)) < 4:
        raise AccountError("password too weak: it repeats a few characters; use a few words")


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        shown = repr(username[:40]) if isinstance(username, str) else type(username).__name__
        raise AccountError(f"user name {shown} is not valid: use 1..64 lowercase letters, "
                           "digits, '_', '.', '@' and '-', starting with a letter or digit")
    return username


def check_role(role: str) -> str:
    if role not in ROLE_PERMISSIONS:
        shown = repr(role[:40]) if isinstance(role, str) else type(role).__name__
        raise AccountError(f"role {shown} is not a role: use one of {', '.join(ROLES)}")
    return role


def parse_scopes(scopes: Iterable[str] | str, role: str) -> tuple[str, ...]:
    """The scopes as stored (sorted, unique): each a permission, all within what
    ``role`` may do. ``"all"`` (alone) is every permission of the role."""
    items = scopes.replace(",", " ").split() if isinstance(scopes, str) else list(scopes)
    allowed = ROLE_PERMISSIONS[role]
    if items == ["all"]:
        items = sorted(allowed)
    if not items:
        raise AccountError("give the token at least one scope: "
                           f"{', '.join(sorted(allowed)) or '(this role has none)'}")
    unknown = [s for s in items if s not in PERMISSIONS]
    if unknown:
        raise AccountError(f"unknown scope(s) {', '.join(repr(s[:40]) for s in unknown[:5])}:"
                           f" scopes are {', '.join(PERMISSIONS)}")
    beyond = sorted(set(items) - allowed)
    if beyond:
        raise AccountError(f"scope(s) {', '.join(beyond)} go beyond what role {role} may do "
                           f"({', '.join(sorted(allowed)) or 'nothing'})", 403)
    return tuple(sorted(set(items)))


def _optional_text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    limit = MAX_TEXT_LEN[name]
    if not isinstance(value, str) or len(value) > limit or any(c < " " for c in value):
        raise AccountError(f"{name} must be text of at most {limit} characters, one line")
    return value or None


def _user(m: Mapping[str, Any], password_hash: str | None = None) -> User:
    hashed = m["password_hash"] if password_hash is None else password_hash
    return User(id=int(m["id"]), username=m["username"], role=m["role"],
                has_password=hashed is not None, handset_id=m["handset_id"],
                display_name=m["display_name"], email=m["email"],
                created_at=float(m["created_at"]), disabled=bool(m["disabled"]),
                last_login=m["last_login"], session_stamp=_stamp(hashed))


def _stamp(password_hash: str | None) -> str:
    if password_hash is None:
        return ""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


_TOKEN_COLUMNS = (api_tokens.c.id, api_tokens.c.user_id, users.c.username, api_tokens.c.name,
                  api_tokens.c.scopes, api_tokens.c.created_at, api_tokens.c.last_used,
                  api_tokens.c.expires_at, api_tokens.c.revoked_at)


def _token(m: Mapping[str, Any]) -> Token:
    return Token(id=m["id"], user_id=int(m["user_id"]), username=m["username"], name=m["name"],
                 scopes=tuple(m["scopes"].split()), created_at=float(m["created_at"]),
                 last_used=m["last_used"], expires_at=m["expires_at"],
                 revoked_at=m["revoked_at"])


def audit(conn: Connection, actor: Actor, action: str, target_type: str, target_id: str,
          before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    """Record a change in the audit log on ``conn``: in the change's own transaction, so
    a change is never without its entry, nor an entry without its change."""
    conn.execute(insert(audit_log).values(
        at=time.time(), actor_id=actor.id, actor_name=actor.name[:80], via=actor.via,
        action=action, target_type=target_type[:16], target_id=str(target_id)[:64],
        before=None if before is None else json.dumps(before, sort_keys=True),
        after=None if after is None else json.dumps(after, sort_keys=True),
        remote_addr=(actor.remote_addr or None) and actor.remote_addr[:64]))


class Accounts:
    """Users, tokens and the audit log in the hub database behind ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @contextmanager
    def _change(self) -> Iterator[Connection]:
        """A write transaction; a unique constraint hit becomes a 409."""
        try:
            with self._writer.begin() as conn:
                yield conn
        except IntegrityError as exc:
            raise AccountError(f"conflicts with what exists: {str(exc.orig).splitlines()[0]}",
                               409) from None

    def _audit(self, conn: Connection, actor: Actor, action: str, target_type: str,
               target_id: str, before: dict[str, Any] | None,
               after: dict[str, Any] | None) -> None:
        audit(conn, actor, action, target_type, target_id, before, after)

    # ------------------------------------------------------------------ users

    def _find(self, conn: Connection, username: str, *, lock: bool = False) -> User:
        q = select(users).where(users.c.username == username)
        if lock and conn.dialect.name == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise AccountError(f"no user {username[:64]!r}", 404)
        return _user(row._mapping)

    def get_user(self, username: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        return None if row is None else _user(row._mapping)

    def user_by_id(self, user_id: int) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.id == user_id)).first()
        return None if row is None else _user(row._mapping)

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            return [_user(r._mapping)
                    for r in conn.execute(select(users).order_by(users.c.username))]

    def count_users(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    def create_user(self, actor: Actor, username: str, role: str, *,
                    password: str | None = None, display_name: str | None = None,
                    email: str | None = None, handset_id: str | None = None) -> User:
        """A new account; ``password`` None makes one that cannot sign in with a password
        (tokens only, or a customer's handset key)."""
        check_username(username)
        check_role(role)
        hashed = None
        if password is not None:
            check_password(password, username)
            hashed = HASHER.hash(password)
        values = {"username": username, "role": role, "password_hash": hashed,
                  "handset_id": handset_id, "created_at": time.time(),
                  "display_name": _optional_text("display_name", display_name),
                  "email": _optional_text("email", email), "disabled": False}
        with self._change() as conn:
            if conn.execute(select(users.c.id).where(users.c.username == username)).first():
                raise AccountError(f"user {username!r} exists", 409)
            conn.execute(insert(users).values(**values))
            user = self._find(conn, username)
            self._audit(conn, actor, "user.create", "user", user.username, None, user.public())
        log.info("user %r (%s) created by %s via %s", username, role, actor.name, actor.via)
        return user

    def update_user(self, actor: Actor, username: str, *, role: str | None = None,
                    disabled: bool | None = None, display_name: str | None = None,
                    email: str | None = None) -> User:
        """Change a role, disable or enable, or change the names; the last enabled admin
        can be neither demoted nor disabled (the hub would have nobody to run it)."""
        changes: dict[str, Any] = {}
        if role is not None:
            changes["role"] = check_role(role)
        if disabled is not None:
            changes["disabled"] = bool(disabled)
        if display_name is not None:
            changes["display_name"] = _optional_text("display_name", display_name)
        if email is not None:
            changes["email"] = _optional_text("email", email)
        with self._change() as conn:
            before = self._find(conn, username, lock=True)
            losing_admin = before.role == "admin" and not before.disabled and (
                changes.get("role", "admin") != "admin" or changes.get("disabled", False))
            if losing_admin:
                q = select(users.c.id).where(users.c.role == "admin",
                                             users.c.disabled == False)  # noqa: E712
                if conn.dialect.name == "postgresql":
                    q = q.with_for_update()
                if len(conn.execute(q).all()) <= 1:
                    raise AccountError(f"{username!r} is the last enabled admin: make "
                                       "another admin first", 409)
            if changes:
                conn.execute(update(users).where(users.c.id == before.id).values(**changes))
            after = self._find(conn, username)
            if after != before:
                self._audit(conn, actor, "user.update", "user", username, before.public(),
                            after.public())
        return after

    def set_password(self, actor: Actor, username: str, password: str) -> None:
        check_password(password, username)
        hashed = HASHER.hash(password)
        with self._change() as conn:
            before = self._find(conn, username, lock=True)
            conn.execute(update(users).where(users.c.id == before.id)
                         .values(password_hash=hashed))
            self._audit(conn, actor, "user.set_password", "user", username,
                        {"has_password": before.has_password}, {"has_password": True})

    def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user whose password this is, else None. Costs one argon2
        verification either way; records the sign-in time."""
        row = None
        if USERNAME_RE.fullmatch(username or "") and len(password) <= MAX_PASSWORD_LEN:
            with self.engine.connect() as conn:
                row = conn.execute(select(users).where(users.c.username == username)).first()
        stored = row._mapping["password_hash"] if row is not None else None
        try:
            HASHER.verify(stored or _DUMMY.get(HASHER), password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or stored is None:
            return None
        if row._mapping["disabled"]:
            return None
        values: dict[str, Any] = {"last_login": time.time()}
        if HASHER.check_needs_rehash(stored):
            values["password_hash"] = HASHER.hash(password)
        # The stamp of the hash stored from now on: the session begins with it.
        user = _user(row._mapping, values.get("password_hash", stored))
        with self._writer.begin() as conn:
            conn.execute(update(users).where(users.c.id == user.id).values(**values))
        return user

    # ----------------------------------------------------------------- tokens

    def create_token(self, actor: Actor, username: str, name: str,
                     scopes: Iterable[str] | str, *,
                     expires_at: float | None = None) -> tuple[Token, str]:
        """A new token for ``username``: (its record, its value). The value is stored
        nowhere: show it once."""
        if not isinstance(name, str) or not TOKEN_NAME_RE.fullmatch(name):
            raise AccountError(f"token name {str(name)[:40]!r}: use 1..64 letters, digits, "
                               "'_', '.', '@' and '-'")
        if expires_at is not None and expires_at <= time.time():
            raise AccountError("expires_at is in the past")
        value = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._change() as conn:
            owner = self._find(conn, username)
            if owner.disabled:
                raise AccountError(f"user {username!r} is disabled", 409)
            granted = parse_scopes(scopes, owner.role)
            taken = conn.execute(select(api_tokens.c.id).where(
                api_tokens.c.user_id == owner.id, api_tokens.c.name == name)).first()
            if taken:
                raise AccountError(f"{username} has a token named {name!r}: revoke it or "
                                   "pick another name", 409)
            token_id = secrets.token_hex(8)
            conn.execute(insert(api_tokens).values(
                id=token_id, user_id=owner.id, name=name, sha256=digest(value),
                scopes=" ".join(granted), created_at=time.time(), expires_at=expires_at))
            token = self._load_token(conn, token_id)
            self._audit(conn, actor, "token.create", "token", token_id, None, token.public())
        log.info("API token %r of %r created by %s via %s", name, username, actor.name,
                 actor.via)
        return token, value

    def _load_token(self, conn: Connection, token_id: str) -> Token:
        row = conn.execute(select(*_TOKEN_COLUMNS).join(users, users.c.id == api_tokens.c.user_id)
                           .where(api_tokens.c.id == token_id)).first()
        if row is None:
            raise AccountError(f"no token {token_id[:40]!r}", 404)
        return _token(row._mapping)

    def get_token(self, token_id: str) -> Token | None:
        with self.engine.connect() as conn:
            try:
                return self._load_token(conn, token_id)
            except AccountError:
                return None

    def list_tokens(self, username: str | None = None) -> list[Token]:
        """Tokens (of one user, or all), revoked ones included, oldest first."""
        q = select(*_TOKEN_COLUMNS).join(users, users.c.id == api_tokens.c.user_id)
        if username is not None:
            q = q.where(users.c.username == username)
        with self.engine.connect() as conn:
            return [_token(r._mapping) for r in conn.execute(
                q.order_by(api_tokens.c.created_at, api_tokens.c.id))]

    def revoke_token(self, actor: Actor, token_id: str, *, owner: str | None = None) -> Token:
        """Revoke a token (only one of ``owner``'s when given): it stops at once."""
        with self._change() as conn:
            before = self._load_token(conn, token_id)
            if owner is not None and before.username != owner:
                raise AccountError(f"no token {token_id[:40]!r}", 404)
            if before.revoked_at is not None:
                return before
            conn.execute(update(api_tokens).where(api_tokens.c.id == token_id)
                         .values(revoked_at=time.time()))
            after = self._load_token(conn, token_id)
            self._audit(conn, actor, "token.revoke", "token", token_id, before.public(),
                        after.public())
        return after

    def check_token(self, value: str) -> tuple[User, Token] | None:
        """The (enabled owner, active token) this value is, else None."""
        if not isinstance(value, str) or not value.startswith(TOKEN_PREFIX) \
                or len(value) > MAX_TOKEN_LEN:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_TOKEN_COLUMNS, *[c.label(f"u_{c.name}") for c in users.c])
                .join(users, users.c.id == api_tokens.c.user_id)
                .where(api_tokens.c.sha256 == digest(value))).first()
        if row is None:
            return None
        m = row._mapping
        token = _token(m)
        user = _user({c.name: m[f"u_{c.name}"] for c in users.c})
        now = time.time()
        if user.disabled or not token.active(now):
            return None
        if token.last_used is None or now - token.last_used > LAST_USED_EVERY:
            with self._writer.begin() as conn:
                conn.execute(update(api_tokens).where(api_tokens.c.id == token.id)
                             .values(last_used=now))
        return user, token

    # ------------------------------------------------------------------ audit

    def audit_entries(self, *, limit: int = 50, before: int | None = None,
                      action: str | None = None, actor: str | None = None
                      ) -> list[dict[str, Any]]:
        """Audit entries newest first; ``before``: only ids below it (the next page)."""
        q = select(audit_log)
        if before is not None:
            q = q.where(audit_log.c.id < before)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        if actor is not None:
            q = q.where(audit_log.c.actor_name == actor)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(audit_log.c.id.desc()).limit(limit)).all()
        out = []
        for row in rows:
            entry = dict(row._mapping)
            for key in ("before", "after"):
                entry[key] = None if entry[key] is None else json.loads(entry[key])
            out.append(entry)
        return out

    # --------------------------------------------------------------- settings

    def shared_secret(self, key: str = SESSION_SECRET_KEY) -> bytes:
        """A random key every process of this hub shares: created once (the first
        writer wins, INSERT ... ON CONFLICT DO NOTHING), then read back."""
        with self.engine.connect() as conn:
            value = conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar()
        if value is None:
            with self._writer.begin() as conn:
                conn.execute(self._insert(settings).values(key=key, value=secrets.token_hex(32))
                             .on_conflict_do_nothing(index_elements=["key"]))
                value = conn.execute(select(settings.c.value)
                                     .where(settings.c.key == key)).scalar_one()
        return str(value).encode()

