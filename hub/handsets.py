"""Customer accounts made from the handset app: register, sign in again, and the
handset certificate the hub issues for the key the phone made (the private key never
leaves the phone; docs/api.md, "Handsets").

No Flask here (hub/handsets_api.py is the API). Why it is built so:

* A customer is a ``customer`` account (hub/accounts.py): a password checked and hashed
  as staff passwords are (argon2id), and ``users.handset_id``, the pseudonymous id in
  the certificate. The id is random and says nothing of the account; the hub alone
  links the two.
* The app's bearer credential is an API token of the account with the one scope the
  role has, ``presence:use`` (so a customer's credential cannot call a staff endpoint,
  whatever the role table grows to): the same check, revocation and audit as every
  token, no second mechanism. It expires with the certificate.
* Signing in again (a new phone, or "reset identity" on the same one) sends a new
  public key and gets a new handset id and certificate: the previous handset row is
  marked replaced and its token revoked, so the old id is no longer the account's.
  Every issue is audited (``handset.issue``) with the account's user name and the new
  and old handset ids, in the same transaction as the change.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from tapcast.keys import HubAuthority

from hub.accounts import AccountError, Accounts, Actor, User, audit
from hub.dbengine import writer
from hub.schema import handsets, users

log = logging.getLogger(__name__)

__all__ = ["Handsets", "Issued", "CERT_LIFETIME", "TOKEN_SCOPE", "new_handset_id"]

#: How long a handset certificate (and the token issued with it) is valid: a year; the
#: app signs in again before then.
CERT_LIFETIME = 365 * 86400.0
TOKEN_SCOPE = "presence:use"
HANDSET_ID_PREFIX = "h"


def new_handset_id() -> str:
    """A fresh pseudonymous handset id: "h" and 16 random hex digits."""
    return HANDSET_ID_PREFIX + secrets.token_hex(8)


def check_public_key(value: bytes) -> bytes:
    """AccountError unless ``value`` is 32 bytes (a raw Ed25519 public key; the phone
    proves it holds the private key at every tap, where the node checks its signature)."""
    if len(value) != 32:
        raise AccountError(f"public_key must be 32 bytes (64 hex digits), got {len(value)}")
    return value


@dataclass(frozen=True)
class Issued:
    """What the app keeps after registering or signing in (the answer's body)."""

    username: str
    handset_id: str
    certificate: bytes
    certificate_expires_at: float
    hub_public_keys: tuple[bytes, ...]
    token: str
    token_expires_at: float
    replaced: str | None = None  # the handset id this account had before, if any

    def public(self) -> dict[str, Any]:
        return {"username": self.username, "handset_id": self.handset_id,
                "certificate": self.certificate.hex(),
                "certificate_expires_at": self.certificate_expires_at,
                "hub_public_keys": [k.hex() for k in self.hub_public_keys],
                "token": self.token, "token_expires_at": self.token_expires_at}


class Handsets:
    """Customer registration and handset certificates over the hub database."""

    def __init__(self, engine: Engine, accounts: Accounts, authority: HubAuthority) -> None:
        self.engine = engine
        self.accounts = accounts
        self.authority = authority
        self._writer = writer(engine)

    def register(self, actor: Actor, username: str, password: str,
                 public_key: bytes) -> Issued:
        """A new customer account with its first handset. AccountError: 400 (a bad user
        name, weak password, not a key), 409 (the name is taken)."""
        check_public_key(public_key)
        handset_id = new_handset_id()
        user = self.accounts.create_user(actor, username, "customer", password=password,
                                         handset_id=handset_id)
        return self._issue(actor, user, handset_id, public_key)

    def sign_in(self, actor: Actor, username: str, password: str,
                public_key: bytes) -> Issued | None:
        """A new handset (id, certificate, token) for the customer whose password this
        is, replacing the one they had; None when the name or password is wrong (or the
        account is disabled). AccountError 403 for a staff account (they do not get
        handset certificates), 400 for a bad key."""
        check_public_key(public_key)
        user = self.accounts.authenticate(username, password)
        if user is None:
            return None
        if user.role != "customer":
            raise AccountError(f"{username} is a {user.role} account: handsets are for "
                               "customer accounts", 403)
        return self._issue(actor, user, new_handset_id(), public_key)

    def _issue(self, actor: Actor, user: User, handset_id: str, public_key: bytes) -> Issued:
        now = time.time()
        expires = now + CERT_LIFETIME
        cert = self.authority.issue_handset_cert(handset_id, public_key, expires,
                                                 not_before=now)
        token, value = self.accounts.create_token(
            actor, user.username, f"handset-{handset_id}", TOKEN_SCOPE, expires_at=expires)
        with self._writer.begin() as conn:
            # The account's row first: it locks the row (PostgreSQL), so two issues for
            # one account at once take turns, and the second sees the first's handset
            # as one to replace (else both stayed current, one token never revoked).
            conn.execute(update(users).where(users.c.id == user.id)
                         .values(handset_id=handset_id))
            old = conn.execute(select(handsets.c.handset_id, handsets.c.token_id).where(
                handsets.c.user_id == user.id, handsets.c.replaced_at.is_(None))).all()
            conn.execute(update(handsets).where(handsets.c.user_id == user.id,
                                                handsets.c.replaced_at.is_(None))
                         .values(replaced_at=now))
            conn.execute(insert(handsets).values(
                handset_id=handset_id, user_id=user.id, public_key=public_key.hex(),
                issued_at=now, expires_at=expires, token_id=token.id))
            audit(conn, actor, "handset.issue", "user", user.username,
                  {"handset_id": user.handset_id},
                  {"handset_id": handset_id, "expires_at": expires,
                   "replaced": [r.handset_id for r in old]})
        for row in old:
            if row.token_id:
                self.accounts.revoke_token(actor, row.token_id)
        log.info("handset %s issued to %s (replacing %s)", handset_id, user.username,
                 ", ".join(r.handset_id for r in old) or "none")
        return Issued(user.username, handset_id, cert, expires,
                      (self.authority.public_key_bytes,), value, expires,
                      old[0].handset_id if old else None)

    def current(self, user_id: int) -> str | None:
        """The handset id the account has now (None: none)."""
        with self.engine.connect() as conn:
            return conn.execute(select(handsets.c.handset_id).where(
                handsets.c.user_id == user_id, handsets.c.replaced_at.is_(None))).scalar()
