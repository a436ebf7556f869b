"""The handset app's client of the hub: register, sign in again, and the code path for
a phone without NFC (docs/protocol.md "Without NFC", docs/api.md "Handsets and codes").

The phone makes its Ed25519 key itself and sends only the public half; the hub answers
with the handset certificate, the hub keys to trust and a bearer token (scope
``presence:use``). With a Phone (handset_app.phone) the credentials go to
``Phone.install_credentials`` and the hub's address and token to ``hub.json`` in the
phone's data dir (mode 0600); without one they are returned.

Presenting a code: the hub gives the node's HELLO for the code; this client checks it
exactly as the phone checks a reader at a tap and answers with the NFC exchange's own
function (tapcast.protocol.nfc.answer_hello), posts the answer, waits for the node's
CONFIRM MAC (polling the hub every ``poll`` seconds) and checks it. Only then is there
a session key, and ``attach`` hands it to ``Phone.attach(..., channel="code")``, which
advertises the session's token over BLE as after a tap.

Only the standard library for HTTP (urllib): the app ships few dependencies. Blocking
calls: the Kivy app runs them in a thread (``asyncio.to_thread``), as ``attach`` does.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tapcast.keys import HandsetCredentials, public_key_bytes
from tapcast.protocol.nfc import (ADDRESS_RANDOM, HelloRejected, ProtocolError,
                                  answer_hello, parse_ble_address)
from tapcast.protocol.presence import parse_code

log = logging.getLogger(__name__)

__all__ = ["HubClient", "HubError", "CodeRefused", "CodeSession", "HUB_FILE"]

HUB_FILE = "hub.json"
#: A phone without a known Bluetooth address sends this one: the node finds the phone
#: by the session's token, the address is only a hint (docs/protocol.md, BLE).
UNKNOWN_ADDRESS = "C0:00:00:00:00:00"


class HubError(RuntimeError):
    """The hub refused or could not be reached; ``status`` is the HTTP status (0: no
    answer) and the message is the hub's reason, fit to show the customer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CodeRefused(HubError):
    """The code session failed: a wrong, expired or used code (the hub's 4xx), a node
    that fails the phone's checks, or the node's refusal (``reason``)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(status, message)
        self.reason = reason


@dataclass(frozen=True)
class CodeSession:
    """An authenticated code session: what ``Phone.attach`` needs."""

    offer_id: str
    node_id: str
    zone: str
    session_key: bytes
    handset_id: str


#: The largest answer read from the hub (its answers are a few KiB).
MAX_ANSWER = 256 * 1024
_OFFER_ID = re.compile(r"[0-9a-f]{32}")
_CONFIRM = re.compile(r"[0-9a-f]{64}")


def _garbled(what: str) -> HubError:
    return HubError(502, f"the hub answered with {what}: is this address a Tapcast hub?")


def _field(answer: Any, name: str) -> str:
    """``answer[name]``, a string; HubError (502) otherwise."""
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, str):
        raise _garbled(f"no {name!r} string in its answer")
    return value


class HubClient:
    """One hub, at ``url`` (``http://host:port``), with the app's token once signed in."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the hub's address must be http(s)://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # ------------------------------------------------------------ storage

    @classmethod
    def load(cls, data_dir: str | Path) -> HubClient | None:
        """The client saved in ``data_dir`` (hub.json), or None."""
        path = Path(data_dir) / HUB_FILE
        try:
            saved = json.loads(path.read_text())
            return cls(saved["url"], token=saved.get("token"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, data_dir: str | Path) -> None:
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (HUB_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": self.url, "token": self.token}, f)
        os.replace(tmp, path / HUB_FILE)

    # ------------------------------------------------------------ HTTP

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              auth: bool = True) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            if not self.token:
                raise HubError(401, "not signed in: register or sign in first")
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read(MAX_ANSWER)).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise HubError(exc.code, str(message)[:500]) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise HubError(0, f"cannot reach the hub at {self.url}: "
                              f"{getattr(exc, 'reason', exc)}") from None
        if len(raw) > MAX_ANSWER:
            raise _garbled(f"an answer over {MAX_ANSWER} bytes")
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise _garbled("an answer that is not JSON") from None
        if not isinstance(answer, dict):
            raise _garbled("JSON that is not an object")
        return answer

    # ------------------------------------------------------------ accounts

    def register(self, username: str, password: str, *, phone: Any = None,
                 private_key: Ed25519PrivateKey | None = None) -> HandsetCredentials:
        """A new customer account and this phone's handset certificate."""
        return self._issue("/api/v1/handsets", username, password, phone, private_key)

    def sign_in(self, username: str, password: str, *, phone: Any = None,
                private_key: Ed25519PrivateKey | None = None) -> HandsetCredentials:
        """Sign in on a new phone or after "reset identity": a new key, handset id and
        certificate (the account's previous handset id is no longer its own)."""
        return self._issue("/api/v1/handsets/signin", username, password, phone,
                           private_key)

    def _issue(self, path: str, username: str, password: str, phone: Any,
               private_key: Ed25519PrivateKey | None) -> HandsetCredentials:
        key = private_key or Ed25519PrivateKey.generate()
        answer = self._call("POST", path, {"username": username, "password": password,
                                           "public_key": public_key_bytes(key).hex()},
                            auth=False)
        try:
            keys = tuple(bytes.fromhex(k) for k in answer["hub_public_keys"])
            creds = HandsetCredentials(_field(answer, "handset_id"), key,
                                       bytes.fromhex(_field(answer, "certificate")),
                                       keys[0], keys[1:])
            token = _field(answer, "token")
        except (KeyError, TypeError, ValueError, IndexError):
            raise _garbled("no handset certificate, hub keys and token") from None
        self.token = token
        if phone is not None:
            phone.install_credentials(creds)
            self.save(phone.data_dir)
        log.info("signed in as %s: handset %s", username, creds.handset_id)
        return creds

    # ------------------------------------------------------------ codes

    def present_code(self, code: str, credentials: HandsetCredentials, *,
                     ble_address: str = UNKNOWN_ADDRESS,
                     ble_address_type: int = ADDRESS_RANDOM, consent: int = 0,
                     timeout: float = 5.0, poll: float = 0.02) -> CodeSession:
        """Authenticate at the node showing ``code`` (digits or its tapcast:code/ URI).
        CodeRefused says why not (the hub's reason, or the node's)."""
        try:
            digits = parse_code(code)
        except ValueError as exc:
            raise CodeRefused(400, str(exc), "malformed") from None
        try:
            claim = self._call("POST", "/api/v1/presence", {"code": digits})
        except HubError as exc:
            if isinstance(exc, CodeRefused) or exc.status in (0, 401, 403):
                raise
            raise CodeRefused(exc.status, str(exc)) from None
        offer_id, hello = _field(claim, "id"), _field(claim, "hello")
        if not _OFFER_ID.fullmatch(offer_id):
            raise _garbled(f"a code session id {offer_id[:40]!r}")
        try:
            pending = answer_hello(credentials, bytes.fromhex(hello),
                                   ble_address=parse_ble_address(ble_address),
                                   ble_address_type=ble_address_type, consent=consent,
                                   now=time.time())
        except (HelloRejected, ProtocolError, ValueError) as exc:
            raise CodeRefused(0, f"this display is not a genuine Tapcast node ({exc}); "
                                 "nothing was sent to it", "node_rejected") from None
        self._call("POST", f"/api/v1/presence/{offer_id}/answer",
                   {"answer": pending.answer.hex()})
        deadline = time.monotonic() + timeout
        while True:
            state = self._call("GET", f"/api/v1/presence/{offer_id}")
            if _field(state, "state") in ("confirmed", "refused", "expired"):
                break
            if time.monotonic() > deadline:
                raise CodeRefused(0, f"the display did not answer within {timeout:.0f} s: "
                                     "try its next code", "timeout")
            time.sleep(poll)
        if state["state"] != "confirmed":
            reason = state.get("reason")
            reason = reason[:40] if isinstance(reason, str) and reason else state["state"]
            raise CodeRefused(0, f"the display refused this phone ({reason})", reason)
        confirm = _field(state, "confirm")
        if not _CONFIRM.fullmatch(confirm):
            raise _garbled("a confirmation that is not 64 hex digits")
        session = pending.confirm(bytes.fromhex(confirm))
        if session is None:
            raise CodeRefused(0, "the confirmation is not the node's: nothing is trusted",
                              "bad_confirm")
        return CodeSession(offer_id, session.node_id, session.zone, session.session_key,
                           credentials.handset_id)

    async def attach(self, phone: Any, code: str, *, listener: Any = None,
                     timeout: float = 5.0) -> Any:
        """Present ``code`` with ``phone``'s credentials (in a thread), then
        ``phone.attach(node_id, zone, session_key, channel="code")``: the PhoneSession."""
        creds = phone.credentials
        if creds is None:
            raise HubError(401, "this phone is not signed in: register or sign in first")
        peripheral = getattr(phone, "peripheral", None)
        address = getattr(peripheral, "address", None) or UNKNOWN_ADDRESS
        address_type = getattr(peripheral, "address_type", ADDRESS_RANDOM)
        consent = phone.consent().flags if hasattr(phone, "consent") else 0
        session = await asyncio.to_thread(self.present_code, code, creds,
                                          ble_address=address,
                                          ble_address_type=address_type, consent=consent,
                                          timeout=timeout)
        return await phone.attach(session.node_id, session.zone, session.session_key,
                                  channel="code", listener=listener)
