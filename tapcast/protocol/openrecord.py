"""The handset-signed open record: "this handset opened this item" (bytes in
docs/protocol.md, "Open records"; the rules in docs/handset.md).

Why signed by the handset: an open happens on the phone, often long after the tap and
with no node around; the phone queues the record and hands it to the next node it talks
to (any node). That node cannot see the open, so the record must prove itself: the node
checks the Ed25519 signature against the key in the certificate of the handset it has
just authenticated, so no node, stranger or other phone can make opens up for someone.
The phone's own counter makes each record unique: the hub counts an open once per
(handset, counter), however often it is delivered (a lost ack, two nodes).

Layout (big-endian):

    magic "TCOR" | version 01 | n u8 | handset id | m u8 | item id | item version u32
    | k u8 | node id (where the item was received) | opened at u64 (unix seconds)
    | counter u64 (1..2^53-1) | Ed25519 signature (64) over "tapcast/v1/open\\0" || all before it
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tapcast.keys import check_id

__all__ = ["OpenRecord", "OpenRecordError", "MAGIC", "CONTEXT", "MAX_RECORD_SIZE", "verify"]

MAGIC = b"TCOR"
VERSION = 1
CONTEXT = b"tapcast/v1/open\x00"
SIG_LEN = 64
#: Largest well-formed record: three 64-character ids.
MAX_RECORD_SIZE = 4 + 1 + 3 * (1 + 64) + 4 + 8 + 8 + SIG_LEN
_TAIL = struct.Struct(">QQ")
#: Counters stay exact in JSON (event data) and fit a signed 64-bit column.
MAX_COUNTER = 2**53 - 1


class OpenRecordError(ValueError):
    """A record refused; ``reason``: ``malformed``, ``other_handset`` or ``bad_signature``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class OpenRecord:
    handset_id: str
    item_id: str
    version: int
    node_id: str  # where the phone received the item
    opened_at: int  # unix seconds, the phone's clock
    counter: int  # the phone's own, +1 per record, never reused

    def signed_part(self) -> bytes:
        def text(value: str) -> bytes:
            raw = value.encode("ascii")
            return bytes([len(raw)]) + raw

        return (MAGIC + bytes([VERSION]) + text(self.handset_id) + text(self.item_id)
                + struct.pack(">I", self.version) + text(self.node_id)
                + _TAIL.pack(self.opened_at, self.counter))

    def sign(self, key: Ed25519PrivateKey) -> bytes:
        """The record's bytes, signed by the handset key."""
        for name in ("handset_id", "item_id", "node_id"):
            check_id(getattr(self, name), name)
        if not (0 <= self.version < 2**32 and 0 <= self.opened_at < 2**64
                and 0 < self.counter <= MAX_COUNTER):
            raise ValueError(f"open record out of range: {self}")
        unsigned = self.signed_part()
        return unsigned + key.sign(CONTEXT + unsigned)

    @classmethod
    def decode(cls, data: bytes) -> tuple[OpenRecord, bytes]:
        """(record, signature), unverified; OpenRecordError("malformed") when it does not
        parse exactly."""
        data = bytes(data)
        if len(data) > MAX_RECORD_SIZE:
            raise OpenRecordError("malformed", f"record of {len(data)} bytes")
        if data[:5] != MAGIC + bytes([VERSION]):
            raise OpenRecordError("malformed", "not an open record (magic or version)")
        pos = 5
        texts: list[str] = []
        version = 0
        try:
            for i in range(3):
                n = data[pos]
                raw = data[pos + 1:pos + 1 + n]
                if len(raw) != n:
                    raise IndexError
                texts.append(check_id(raw.decode("ascii"), "id"))
                pos += 1 + n
                if i == 1:
                    (version,) = struct.unpack_from(">I", data, pos)
                    pos += 4
            opened_at, counter = _TAIL.unpack_from(data, pos)
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            raise OpenRecordError("malformed", "open record truncated or ids invalid") from None
        pos += _TAIL.size
        signature = data[pos:]
        if len(signature) != SIG_LEN or not 0 < counter <= MAX_COUNTER:
            raise OpenRecordError("malformed", "open record: bad signature length or counter 0")
        return cls(texts[0], texts[1], version, texts[2], opened_at, counter), signature


def verify(data: bytes, handset_id: str, public_key: bytes) -> OpenRecord:
    """The record in ``data`` if it parses, names ``handset_id`` and carries that
    handset key's signature; else OpenRecordError with the reason."""
    record, signature = OpenRecord.decode(data)
    if record.handset_id != handset_id:
        raise OpenRecordError("other_handset", f"record of handset {record.handset_id!r}, "
                              f"the session's is {handset_id!r}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, CONTEXT + record.signed_part())
    except (InvalidSignature, ValueError):
        raise OpenRecordError("bad_signature", "open record signature does not verify") from None
    return record
