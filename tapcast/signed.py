"""One signed-object format for everything the hub signs that is not a certificate:
content manifests, node configuration, revocation lists.

Why one format: each of these needs the same guarantees (made by the hub, meant for
this kind and this node, not replayed from the past, not kept in use after it ends) and
one parser is one place to get them right. The body is opaque bytes (manifests put JSON
there): the signature covers the exact bytes, so no JSON canonicalisation is needed.
Bytes (all integers big-endian):

    off  size  field
    0    4     magic b"TCSO": a stored file says what it is
    4    1     format version 0x01: another version is refused, never guessed at
    5    1     k = length of kind (1..32)
    6    k     kind, ASCII [a-z][a-z0-9_-]*: "manifest", "config", "revocations";
               signed, so an object of one kind is never accepted as another
    -    1     s = length of subject (1..64)
    -    s     subject, ASCII [a-zA-Z0-9_-]+ (a node id) or "*" (every node); signed, so
               an object made for one node is not accepted by another
    -    8     key id of the signing hub key: SHA-256(raw hub public key)[:8], picks
               the key in the receiver's HubKeyring (key rotation, as for certificates)
    -    8     serial, uint64: increases with each object of this kind for this subject;
               a receiver refuses one lower than what it runs ("stale"), so an older,
               still unexpired object cannot be replayed to undo a newer one
    -    8     issued, uint64 unix seconds (hub clock at signing)
    -    8     expires, uint64 unix seconds (valid while now < expires): bounds how
               long an object withheld from a node stays usable
    -    4     n = body length, uint32, at most MAX_BODY (4 MiB: a Pi's memory)
    -    n     body, opaque bytes
    -    64    Ed25519 signature by the named hub key over SIGNED_CONTEXT || every
               preceding byte

SIGNED_CONTEXT ("tapcast/v1/signed\\0") differs from the certificate context, so no
certificate's signature ever verifies as a signed object's and the other way round,
although the same hub key makes both. Layout and checks: docs/protocol.md, "Signed
objects".
"""
from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tapcast.keys import ID_RE, KEY_ID_LEN, MAX_ID_LEN, HubAuthority, HubKeyring, key_id

log = logging.getLogger(__name__)

MAGIC = b"TCSO"
VERSION = 0x01
SIGNED_CONTEXT = b"tapcast/v1/signed\x00"
MAX_KIND_LEN = 32
MAX_SUBJECT_LEN = MAX_ID_LEN
ALL_SUBJECTS = "*"
MAX_BODY = 4 * 1024 * 1024
SIGNATURE_LEN = 64
#: serial, issued, expires, body length
_FIXED = struct.Struct(">QQQI")
MAX_HEADER = 4 + 1 + 1 + MAX_KIND_LEN + 1 + MAX_SUBJECT_LEN + KEY_ID_LEN + _FIXED.size
#: The largest well-formed signed object; open_signed refuses more before parsing.
MAX_SIZE = MAX_HEADER + MAX_BODY + SIGNATURE_LEN
#: How far in the future "issued" may lie before an object is "not_yet_valid": the
#: hub's and the receiver's clocks differ by a little.
ISSUED_TOLERANCE = 300.0

KIND_RE = re.compile(r"[a-z][a-z0-9_-]*")  # fullmatch: "$" would accept a trailing "\n"

REASONS = ("malformed", "too_large", "unknown_key", "bad_signature", "wrong_kind",
           "wrong_subject", "expired", "not_yet_valid", "stale")


class SignedObjectError(ValueError):
    """A signed object is refused; ``reason`` is one of REASONS (for counters and
    verdicts), the message says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class SignedObject:
    """A parsed signed object; ``raw`` is the exact signed bytes (signature included),
    to store or forward unchanged."""

    kind: str
    subject: str
    key_id: bytes
    serial: int
    issued: int
    expires: int
    body: bytes
    raw: bytes


def _valid_kind(kind: str) -> bool:
    return len(kind) <= MAX_KIND_LEN and KIND_RE.fullmatch(kind) is not None


def _valid_subject(subject: str) -> bool:
    return subject == ALL_SUBJECTS or (
        len(subject) <= MAX_SUBJECT_LEN and ID_RE.fullmatch(subject) is not None)


def sign_object(authority: HubAuthority, kind: str, subject: str, serial: int,
                body: bytes, *, expires: float, issued: float | None = None) -> bytes:
    """The signed bytes of one object. ``issued`` defaults to the hub's clock now;
    ``subject`` is a node id or "*" for every node. Raises ValueError on input that
    would give an object no receiver accepts."""
    if not isinstance(kind, str) or not _valid_kind(kind):
        raise ValueError(f"invalid kind {kind!r}: use 1..{MAX_KIND_LEN} of a-z, 0-9, "
                         "'_' and '-', starting with a letter")
    if not isinstance(subject, str) or not _valid_subject(subject):
        raise ValueError(f"invalid subject {subject!r}: use a node id (1..{MAX_SUBJECT_LEN}"
                         " letters, digits, '_' and '-') or '*' for every node")
    if not 0 <= serial < 2**64:
        raise ValueError(f"serial {serial} out of range 0..2**64-1")
    body = bytes(body)
    if len(body) > MAX_BODY:
        raise ValueError(f"body of {len(body)} bytes is over MAX_BODY ({MAX_BODY})")
    iss = int(time.time() if issued is None else issued)
    exp = int(expires)
    if not 0 <= iss < exp < 2**64:
        raise ValueError(f"need 0 <= issued ({iss}) < expires ({exp}) < 2**64")
    k, s = kind.encode("ascii"), subject.encode("ascii")
    head = (MAGIC + bytes([VERSION, len(k)]) + k + bytes([len(s)]) + s + authority.key_id
            + _FIXED.pack(serial, iss, exp, len(body)))
    signed = head + body
    return signed + authority.sign(SIGNED_CONTEXT, signed)


def peek(data: bytes) -> SignedObject:
    """Parse without verifying anything but the layout: for logs and diagnostics only,
    never to act on. Raises SignedObjectError("malformed")."""
    data = bytes(data)

    def bad(why: str) -> SignedObjectError:
        return SignedObjectError("malformed", f"signed object {why}")

    if len(data) < len(MAGIC) + 1:
        raise bad(f"is too short ({len(data)} bytes)")
    if data[:4] != MAGIC:
        raise bad(f"starts with {data[:4]!r}, not {MAGIC!r}: not a Tapcast signed object")
    if data[4] != VERSION:
        raise bad(f"has format version {data[4]}; this software reads version {VERSION} "
                  "(update it, or have the hub sign version 1)")
    pos = 5
    fields: list[str] = []
    for name in ("kind", "subject"):
        if pos >= len(data):
            raise bad(f"is truncated before the {name}")
        n = data[pos]
        raw = data[pos + 1:pos + 1 + n]
        if len(raw) != n:
            raise bad(f"is truncated in the {name}")
        fields.append(raw.decode("ascii", "replace"))
        pos += 1 + n
    kind, subject = fields
    if not _valid_kind(kind):
        raise bad(f"has an invalid kind {kind!r}")
    if not _valid_subject(subject):
        raise bad(f"has an invalid subject {subject!r}")
    if len(data) < pos + KEY_ID_LEN + _FIXED.size:
        raise bad("is truncated in the header")
    kid = data[pos:pos + KEY_ID_LEN]
    serial, issued, expires, n = _FIXED.unpack_from(data, pos + KEY_ID_LEN)
    pos += KEY_ID_LEN + _FIXED.size
    if n > MAX_BODY:
        raise bad(f"declares a body of {n} bytes, over MAX_BODY ({MAX_BODY})")
    expected = pos + n + SIGNATURE_LEN
    if len(data) != expected:
        what = "is truncated" if len(data) < expected else "has trailing bytes"
        raise bad(f"{what}: {len(data)} bytes, its header says {expected}")
    return SignedObject(kind, subject, kid, serial, issued, expires,
                        data[pos:pos + n], data)


def open_signed(data: bytes, keyring: HubKeyring | bytes | Iterable[bytes], *,
                kind: str, subject: str | None = None, now: float | None = None,
                min_serial: int | None = None, max_size: int = MAX_SIZE,
                tolerance: float = ISSUED_TOLERANCE) -> SignedObject:
    """Verify and parse a signed object; raises SignedObjectError unless it is signed by
    a hub key in ``keyring``, of ``kind``, for ``subject`` (its own or "*"; any when
    None), valid at ``now`` and, given ``min_serial`` (the serial the receiver runs), not
    older than that. Signature before content: what a forger claims means nothing.

    ``tolerance``: seconds "issued" may lie ahead of ``now`` (clock difference); a
    receiver without trustworthy time (see tapcast.clock) passes float("inf"), as it
    cannot tell an object from the future from its own clock running behind."""
    if len(data) > max_size:
        raise SignedObjectError("too_large", f"signed object of {len(data)} bytes is over "
                                f"the limit of {max_size}; refused unread")
    obj = peek(data)
    what = f"{obj.kind} for {obj.subject!r} (serial {obj.serial})"
    ring = HubKeyring.of(keyring)
    hub_key = ring.get(obj.key_id)
    if hub_key is None:
        raise SignedObjectError(
            "unknown_key", f"{what} is signed by hub key id {obj.key_id.hex()}, which is "
            f"not trusted here (trusted: {', '.join(key_id(k).hex() for k in ring.keys)}); "
            "add the hub's new key to hub.pub if it was rotated")
    try:
        Ed25519PublicKey.from_public_bytes(hub_key).verify(
            obj.raw[-SIGNATURE_LEN:], SIGNED_CONTEXT + obj.raw[:-SIGNATURE_LEN])
    except InvalidSignature:
        raise SignedObjectError("bad_signature", f"{what}: signature does not verify under "
                                f"hub key id {obj.key_id.hex()} (altered or "
                                "corrupted)") from None
    if obj.kind != kind:
        raise SignedObjectError("wrong_kind", f"{what} is a {obj.kind!r}, expected {kind!r}")
    if subject is not None and obj.subject not in (subject, ALL_SUBJECTS):
        raise SignedObjectError("wrong_subject", f"{what} is for {obj.subject!r}, "
                                f"not for {subject!r}")
    t = time.time() if now is None else now
    if obj.issued > t + tolerance:
        raise SignedObjectError("not_yet_valid", f"{what} was issued at {obj.issued}, "
                                f"now is {t:.0f}: check this clock (or the hub's)")
    if t >= obj.expires:
        raise SignedObjectError("expired", f"{what} expired at {obj.expires}, now is "
                                f"{t:.0f}; the hub must sign a fresh one")
    if min_serial is not None and obj.serial < min_serial:
        raise SignedObjectError("stale", f"{what} is older than serial {min_serial}, "
                                "which this receiver runs (a replay, or a late delivery)")
    log.debug("accepted %s, key id %s", what, obj.key_id.hex())
    return obj
