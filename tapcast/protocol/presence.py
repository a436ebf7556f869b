"""The code path: a handset without NFC authenticates at a node through the hub
(docs/protocol.md, "Without NFC"; topics in tapcast.protocol.mqtt).

The node shows a short-lived code (8 digits, and a QR of ``tapcast:code/<digits>``) and
offers it to the hub with a fresh node HELLO, exactly the HELLO of the NFC exchange. A
signed-in handset presents the code to the hub, gets that HELLO, checks it and answers
as it answers a reader (tapcast.protocol.nfc.answer_hello); the hub relays the answer to
the node, which checks it as it checks an NFC answer (NodeHandshake.check_answer_data)
and sends back the CONFIRM MAC, which the handset checks (PendingAnswer.confirm). The
crypto is the NFC exchange's, unchanged: the hub only carries bytes it can neither read
(the answer is sealed to the node's ephemeral key) nor forge (both ends sign).

Messages between node and hub are JSON sealed with the node's stream key
(tapcast.protocol.mqtt.seal), one context per topic, so nobody else on the broker can
offer a code for a node, relay an answer to it or report a result. The code travels
encrypted (ChaCha20-Poly1305 under a key derived from the stream key): someone reading
the broker cannot learn a live code and use it up from afar.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from typing import Annotated, TypeVar

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from msgspec import Meta

from tapcast.protocol.mqtt import (ID_PATTERN, PRESENCE_ANSWER, PRESENCE_OFFER,
                                   PRESENCE_RESULT, PayloadError, open_sealed,
                                   presence_topic, seal)

__all__ = ["CODE_DIGITS", "CODE_URI_PREFIX", "Offer", "RelayedAnswer", "Result",
           "new_code", "code_uri", "parse_code", "code_hash", "seal_code", "open_code",
           "seal_offer", "open_offer", "seal_answer", "open_answer", "seal_result",
           "open_result", "OFFER_CONTEXT", "ANSWER_CONTEXT", "RESULT_CONTEXT",
           "MAX_TTL", "RESULT_REASONS"]

CODE_DIGITS = 8
CODE_URI_PREFIX = "tapcast:code/"
_CODE_RE = re.compile(r"[0-9]{%d}" % CODE_DIGITS)
OFFER_CONTEXT = b"tapcast/v1 presence/offer\x00"
ANSWER_CONTEXT = b"tapcast/v1 presence/answer\x00"
RESULT_CONTEXT = b"tapcast/v1 presence/result\x00"
CODE_KEY_INFO = b"tapcast/v1 presence code\x00"
#: Longest lifetime an offer may claim, seconds (the hub caps what it stores).
MAX_TTL = 600.0
#: A HELLO is 251..367 bytes; an answer about 260 + the certificate (at most ~520).
MAX_HELLO_HEX = 2 * 1024
MAX_ANSWER_HEX = 2 * 2048
#: What a node says of an answer: "ok", the NFC verdict reasons (tapcast.protocol.nfc),
#: and the code path's own: unknown_offer (expired, used, or never this node's),
#: wrong_handset (the certificate is not the signed-in account's handset).
RESULT_REASONS = ("ok", "unknown_offer", "wrong_handset", "stale", "malformed",
                  "bad_signature", "unknown_key_id", "unknown_issuer", "not_yet_valid",
                  "expired_certificate", "revoked")

OfferId = Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
Ident = Annotated[str, Meta(pattern=ID_PATTERN)]
Hex = Annotated[str, Meta(pattern="^([0-9a-f]{2})*$")]


class Offer(msgspec.Struct, forbid_unknown_fields=True):
    """Node to hub: a code the node shows now. ``code`` is the sealed code (seal_code),
    ``ttl`` how many seconds from now it may be presented, ``hello`` the node HELLO of
    the NFC exchange (hex)."""

    offer_id: OfferId
    code: Annotated[str, Meta(pattern="^[0-9a-f]{72}$")]
    ttl: Annotated[float, Meta(gt=0.0, le=MAX_TTL)]
    hello: Annotated[str, Meta(pattern="^([0-9a-f]{2})*$", max_length=MAX_HELLO_HEX)]


class RelayedAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """Hub to node: a handset's answer to the HELLO of ``offer_id``, from the account
    whose handset is ``handset_id`` (the node refuses a certificate of any other)."""

    offer_id: OfferId
    handset_id: Ident
    answer: Annotated[str, Meta(pattern="^([0-9a-f]{2})*$", max_length=MAX_ANSWER_HEX)]


class Result(msgspec.Struct, forbid_unknown_fields=True):
    """Node to hub: how the answer to ``offer_id`` went. ``confirm``: the CONFIRM MAC
    (64 hex digits) when ``reason`` is "ok", else ""."""

    offer_id: OfferId
    reason: Annotated[str, Meta(pattern="^[a-z_]{1,32}$")]
    confirm: Annotated[str, Meta(pattern="^([0-9a-f]{64})?$")] = ""
    detail: Annotated[str, Meta(max_length=200)] = ""

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


# ------------------------------------------------------------------ codes


def new_code() -> str:
    """A fresh code: CODE_DIGITS decimal digits, uniformly random."""
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def code_uri(code: str) -> str:
    """What the display's QR holds: ``tapcast:code/12345678``."""
    return CODE_URI_PREFIX + parse_code(code)


def parse_code(text: str) -> str:
    """The 8 digits of what a customer typed or scanned: the digits (spaces and dashes
    allowed between them) or the ``tapcast:code/`` URI. ValueError otherwise."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("a code is 8 digits")
    value = text.strip()
    if value.lower().startswith(CODE_URI_PREFIX):
        value = value[len(CODE_URI_PREFIX):]
    value = value.replace(" ", "").replace("-", "")
    if not _CODE_RE.fullmatch(value):
        raise ValueError(f"a code is {CODE_DIGITS} digits, as the display shows it")
    return value


def code_hash(code: str) -> str:
    """How the hub finds an offer by its code (hex SHA-256 of the digits)."""
    return hashlib.sha256(b"tapcast/v1 code\x00" + parse_code(code).encode()).hexdigest()


def _code_key(stream_key: bytes) -> bytes:
    return hmac.digest(stream_key, CODE_KEY_INFO, "sha256")


def seal_code(stream_key: bytes, offer_id: str, code: str) -> str:
    """hex(nonce(12) || ChaCha20-Poly1305(code key, nonce, digits, aad = offer id)):
    72 hex digits."""
    nonce = os.urandom(12)
    sealed = ChaCha20Poly1305(_code_key(stream_key)).encrypt(
        nonce, parse_code(code).encode(), offer_id.encode())
    return (nonce + sealed).hex()


def open_code(stream_key: bytes, offer_id: str, sealed_hex: str) -> str:
    try:
        raw = bytes.fromhex(sealed_hex)
        code = ChaCha20Poly1305(_code_key(stream_key)).decrypt(
            raw[:12], raw[12:], offer_id.encode()).decode("ascii")
        return parse_code(code)
    except (ValueError, InvalidTag, UnicodeDecodeError):
        raise PayloadError("the offer's code does not open under this node's key") from None


# ------------------------------------------------------------------ messages

M = TypeVar("M", Offer, RelayedAnswer, Result)
_encoder = msgspec.json.Encoder()
_offer = msgspec.json.Decoder(Offer)
_answer = msgspec.json.Decoder(RelayedAnswer)
_result = msgspec.json.Decoder(Result)


#: Per message: its context and topic leaf (one kind never opens as another).
_KINDS: dict[type, tuple[bytes, str, msgspec.json.Decoder]] = {
    Offer: (OFFER_CONTEXT, PRESENCE_OFFER, _offer),
    RelayedAnswer: (ANSWER_CONTEXT, PRESENCE_ANSWER, _answer),
    Result: (RESULT_CONTEXT, PRESENCE_RESULT, _result),
}


def seal_message(stream_key: bytes, node_id: str,
                 message: Offer | RelayedAnswer | Result) -> bytes:
    """``t1.<tag>.<json>`` under the node's stream key, for the message's own topic."""
    context, leaf, _ = _KINDS[type(message)]
    return seal(stream_key, context, presence_topic(node_id, leaf), _encoder.encode(message))


def open_message(kind: type[M], stream_key: bytes, node_id: str, payload: bytes) -> M:
    """The ``kind`` message of a sealed payload: ForgedError when not sealed by the
    node's key holder for this kind and topic, PayloadError when malformed."""
    context, leaf, decoder = _KINDS[kind]
    body = open_sealed(stream_key, context, presence_topic(node_id, leaf), payload)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise PayloadError(f"presence {leaf}: {exc}") from None


def seal_offer(stream_key: bytes, node_id: str, offer: Offer) -> bytes:
    return seal_message(stream_key, node_id, offer)


def open_offer(stream_key: bytes, node_id: str, payload: bytes) -> Offer:
    return open_message(Offer, stream_key, node_id, payload)


def seal_answer(stream_key: bytes, node_id: str, answer: RelayedAnswer) -> bytes:
    return seal_message(stream_key, node_id, answer)


def open_answer(stream_key: bytes, node_id: str, payload: bytes) -> RelayedAnswer:
    return open_message(RelayedAnswer, stream_key, node_id, payload)


def seal_result(stream_key: bytes, node_id: str, result: Result) -> bytes:
    return seal_message(stream_key, node_id, result)


def open_result(stream_key: bytes, node_id: str, payload: bytes) -> Result:
    return open_message(Result, stream_key, node_id, payload)
