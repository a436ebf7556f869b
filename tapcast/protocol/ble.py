"""BLE push wire format: GATT layout, messages, sealing and framing (bytes in docs/protocol.md, BLE part).

Pure code, no radio: the node (through bleak) and the handset (a bumble peripheral in
the virtual hall, Android on a phone) both drive an :class:`Endpoint`.

Why this shape:
- ATT writes and notifications carry at most MTU-3 bytes, and the MTU is negotiated
  per link (23 at worst), so every sealed message is split into frames and
  reassembled on the other side.
- BLE pairing is not used; the NFC tap already gave both sides a 32-byte session key.
  Each direction gets its own ChaCha20-Poly1305 key (HKDF), and the message id is the
  per-direction counter that forms the nonce, so a key/nonce pair is never reused.
- Anyone in radio range may connect and write during the advertising window, so every
  frame (data or control) carries a per-direction frame counter and a truncated HMAC,
  checked before any field is read: a stranger's or replayed frame touches no state.
- Phones cannot tell their own Bluetooth address, so the handset advertises a per-tap
  token derived from the session key (:func:`session_token`) and the node scans for it.
- Links drop (the customer walks away mid-push). The receiver keeps the frames it has,
  and answers a QUERY with the first missing frame index, so the sender resumes there.
"""
from __future__ import annotations

import enum
import hmac
import logging
import struct
import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Union

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------ GATT layout

#: The one Tapcast service and its characteristics (128-bit, vendor range).
SERVICE_UUID = "7a9ca500-0001-4c4e-8a5e-7a9ca57b1e00"
RX_UUID = "7a9ca500-0002-4c4e-8a5e-7a9ca57b1e00"  # write + write-without-response, node -> handset
TX_UUID = "7a9ca500-0003-4c4e-8a5e-7a9ca57b1e00"  # notify, handset -> node
INFO_UUID = "7a9ca500-0004-4c4e-8a5e-7a9ca57b1e00"  # read: protocol version and limits

PROTOCOL_VERSION = 2
#: Largest sealed message (ciphertext + 16-byte tag) either side accepts. Large media
#: travels as a short-lived URL on the node's WLAN server instead (ContentItem.media_url).
MAX_MESSAGE_SIZE = 64 * 1024
#: What sealing adds to the encoded message (the ChaCha20-Poly1305 tag).
SEAL_OVERHEAD = 16
#: Largest encoded (msgpack) message that still seals under MAX_MESSAGE_SIZE.
MAX_PLAIN_SIZE = MAX_MESSAGE_SIZE - SEAL_OVERHEAD
#: Largest file a node considers sending inside a ContentItem (msgpack bin: as is).
#: The whole encoded message must still fit MAX_PLAIN_SIZE (a long text can leave less
#: room than this): the node decides by the encoded size, and bigger goes over WLAN.
INLINE_FILE_MAX = 32 * 1024
#: Largest file a handset fetches from a node's WLAN link.
MAX_WLAN_FILE = 200 * 1024 * 1024
#: Smallest usable frame: ATT_MTU 23 minus the 3-byte ATT header.
MIN_FRAME_SIZE = 20
#: A DATA frame may start a message at most this many ids ahead of the last accepted
#: one; anything further is not a message this session could have produced.
MAX_ID_GAP = 1000

INFO_FORMAT = struct.Struct(">BIH")  # version u8 | max_message_size u32 | max_frames u16


class FrameError(ValueError):
    """A frame or message is malformed, unauthentic or out of place. The message says
    what; ``reply`` (if set) is the frame the receiver should send back (e.g. a
    REJECTED ack) so the sender stops waiting."""

    def __init__(self, message: str, reply: AckFrame | None = None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class Info:
    """What the ``info`` characteristic reads: 7 bytes, big-endian."""

    version: int = PROTOCOL_VERSION
    max_message_size: int = MAX_MESSAGE_SIZE
    max_frames: int = 0xFFFF

    def encode(self) -> bytes:
        return INFO_FORMAT.pack(self.version, self.max_message_size, self.max_frames)

    @classmethod
    def decode(cls, data: bytes) -> Info:
        if len(data) < INFO_FORMAT.size:
            raise FrameError(f"info value is {len(data)} bytes, expected at least {INFO_FORMAT.size}")
        version, size, frames = INFO_FORMAT.unpack_from(data)
        return cls(version, size, frames)


# --------------------------------------------------------------------------- messages


class CatalogueEntry(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    title: str
    kind: str
    price_cents: int = 0
    merchant: str = ""  # who offers it ("": none named); phones may block merchants


class Catalogue(msgspec.Struct, tag="catalogue", tag_field="t", forbid_unknown_fields=True):
    """What this node offers; the customer may ask for any entry with a Request."""

    items: list[CatalogueEntry]


class ContentItem(msgspec.Struct, tag="item", tag_field="t", forbid_unknown_fields=True):
    """One content item. ``sha256`` (hex) is of ``body`` (UTF-8) for an item without a
    file; for one with a file it is the file's, whose bytes come in ``data`` when small
    (at most INLINE_FILE_MAX) or from ``media_url`` on the node's WLAN server (a
    short-lived link) when large. Either way the handset checks the bytes against it."""

    id: str
    title: str
    kind: str
    body: str
    sha256: str
    media_url: str | None = None
    version: int = 0  # the item's version on the hub (0: the node's own seed)
    media_type: str | None = None  # of the file, when there is one
    size: int = 0  # of the file, in bytes (what a progress bar counts to)
    data: bytes | None = None  # the file itself, small ones only (msgpack bin)
    merchant: str = ""  # who offers it ("": none named); phones may block merchants


class Offer(msgspec.Struct, tag="offer", tag_field="t", forbid_unknown_fields=True):
    offer_id: str
    item_id: str
    title: str
    price_cents: int
    currency: str = "EUR"
    expires: float = 0.0  # unix time; 0 = no expiry


class OfferResponse(msgspec.Struct, tag="offer_response", tag_field="t", forbid_unknown_fields=True):
    """The customer's answer. ``signed`` is the exact byte string the handset signed
    (offer id, amount, monotonic counter; format owned by the payment code) and
    ``signature`` its Ed25519 signature; this layer carries them opaquely."""

    offer_id: str
    accept: bool
    signed: bytes = b""
    signature: bytes = b""


class Receipt(msgspec.Struct, tag="receipt", tag_field="t", forbid_unknown_fields=True):
    offer_id: str
    item_id: str
    amount_cents: int
    journal_hash: str = ""  # hex hash of the node's journal entry for this charge


class Ack(msgspec.Struct, tag="ack", tag_field="t", forbid_unknown_fields=True):
    """Application-level answer to message ``ref`` (e.g. an item was opened). Transport
    acknowledgements are ACK frames, not this."""

    ref: int
    ok: bool = True
    reason: str = ""


class Request(msgspec.Struct, tag="request", tag_field="t", forbid_unknown_fields=True):
    """The customer asks for a catalogue item."""

    item_id: str


class Bye(msgspec.Struct, tag="bye", tag_field="t", forbid_unknown_fields=True):
    reason: str = ""


#: Why a handset refused an item (docs/handset.md, "Consent").
REFUSAL_REASONS = ("kind", "merchant", "quiet_hours", "cap")


class Refused(msgspec.Struct, tag="refused", tag_field="t", forbid_unknown_fields=True):
    """Handset to node: the customer's consent refused this item, so the phone did not
    keep it. ``reason`` is one of REFUSAL_REASONS. The node records a ``refused`` event."""

    item_id: str
    version: int
    reason: str


#: Most open records one Opened message carries (each is about 150 bytes).
MAX_OPEN_RECORDS = 100


class Opened(msgspec.Struct, tag="opened", tag_field="t", forbid_unknown_fields=True):
    """Handset to node, after the session is up: open records the phone queued
    (tapcast.protocol.openrecord, each signed by the handset key), delivered on its next
    contact with any node. The node answers OpenedAck."""

    records: list[bytes]


class OpenedAck(msgspec.Struct, tag="opened_ack", tag_field="t", forbid_unknown_fields=True):
    """Node to handset: the counters of the records of one Opened message the node has
    dealt with, recorded (``open`` events, durable in its outbox) or refused (``refused``:
    counter -> reason, e.g. a record not signed by this session's handset). The phone
    drops exactly these; what is not named it sends again on a later contact."""

    counters: list[int]
    refused: dict[int, str] = {}


Message = Union[Catalogue, ContentItem, Offer, OfferResponse, Receipt, Ack, Request, Bye,
                Refused, Opened, OpenedAck]

# ----------------------------------------------------------------- consent flags
#
# The uint16 consent flags of the handset's NFC answer (docs/protocol.md, "Consent
# flags"): which kinds of content the customer takes unrequested. The node skips pushing
# a kind the flags exclude (air time); the phone enforces its consent in any case.

#: Bit per kind of content (bit set: the customer takes that kind unrequested).
CONSENT_KIND_BITS = {"article": 0x0001, "coupon": 0x0002, "media": 0x0004,
                     "ticket": 0x0008, "goods": 0x0010}
#: Set when the kind bits mean something; a phone that leaves it clear (older handsets,
#: which sent 0 or arbitrary flags) takes every kind as far as the node is concerned.
CONSENT_KINDS_DECLARED = 0x8000


def consent_flags(kinds: dict[str, bool]) -> int:
    """The consent flags for per-kind consent ``kinds`` (kind -> allowed; unnamed: allowed)."""
    flags = CONSENT_KINDS_DECLARED
    for kind, bit in CONSENT_KIND_BITS.items():
        if kinds.get(kind, True):
            flags |= bit
    return flags


def consent_allows_kind(flags: int, kind: str) -> bool:
    """Whether a node may push ``kind`` unrequested to a handset that sent ``flags``."""
    if not flags & CONSENT_KINDS_DECLARED:
        return True
    bit = CONSENT_KIND_BITS.get(kind)
    return bit is None or bool(flags & bit)

_msg_encoder = msgspec.msgpack.Encoder()
_msg_decoder = msgspec.msgpack.Decoder(Message)


def encode_message(message: Message) -> bytes:
    """msgpack map with the tag in key ``"t"`` (see docs/protocol.md, BLE part)."""
    return _msg_encoder.encode(message)


def message_fits(message: Message) -> bool:
    """Whether ``message`` seals to at most MAX_MESSAGE_SIZE bytes."""
    return len(encode_message(message)) <= MAX_PLAIN_SIZE


def decode_message(data: bytes) -> Message:
    try:
        return _msg_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FrameError(f"malformed message: {exc}") from None


# ---------------------------------------------------------------------------- sealing


class Direction(enum.IntEnum):
    NODE_TO_HANDSET = 0
    HANDSET_TO_NODE = 1


_HKDF_SALT = b"tapcast-ble-v1"
_HKDF_INFO = {
    Direction.NODE_TO_HANDSET: b"tapcast ble node->handset",
    Direction.HANDSET_TO_NODE: b"tapcast ble handset->node",
}
_AAD_PREFIX = b"TCB1"


def _derive(session_key: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256(ikm=session_key, salt="tapcast-ble-v1", info, L=length): every BLE key
    and the token come from the session key this way."""
    if len(session_key) != 32:
        raise ValueError(f"session_key must be 32 bytes, got {len(session_key)}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT,
                info=info).derive(session_key)


def direction_key(session_key: bytes, direction: Direction) -> bytes:
    """HKDF-SHA256(ikm=session_key, salt="tapcast-ble-v1", info=per direction), 32 bytes."""
    return _derive(session_key, _HKDF_INFO[direction])


def nonce(msg_id: int) -> bytes:
    """12 bytes: four zero bytes, then the message id as u64 big-endian."""
    return b"\x00" * 4 + msg_id.to_bytes(8, "big")


def aad(direction: Direction, msg_id: int) -> bytes:
    """"TCB1" | direction u8 | message id u32 big-endian: binds both to the ciphertext."""
    return _AAD_PREFIX + bytes([direction]) + msg_id.to_bytes(4, "big")


def seal(key: bytes, direction: Direction, msg_id: int, message: Message) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce(msg_id), encode_message(message), aad(direction, msg_id))


def open_sealed(key: bytes, direction: Direction, msg_id: int, sealed: bytes) -> Message:
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce(msg_id), sealed, aad(direction, msg_id))
    except InvalidTag:
        raise FrameError(f"message {msg_id} failed authentication (wrong key or tampered)") from None
    return decode_message(plain)


# ---------------------------------------------------------------------------- framing
#
# Every frame, data or control, carries a per-direction frame counter and a truncated
# HMAC over everything before it, under a per-direction frame key. The receiver checks
# the MAC and the counter before it reads a single field, so a stranger's frame (or a
# replayed genuine one) can neither start, corrupt, reset nor complete anything.


_FRAME_INFO = {
    Direction.NODE_TO_HANDSET: b"tapcast ble frame node->handset",
    Direction.HANDSET_TO_NODE: b"tapcast ble frame handset->node",
}
_TOKEN_INFO = b"tapcast ble token"

#: Truncated MAC per frame: 32 bits, as Bluetooth LE link encryption (AES-CCM MIC) and
#: Bluetooth Mesh access PDUs use. A guess costs one ATT write on air (at most a few
#: thousand a second) and a session lasts seconds; the whole message keeps its 16-byte
#: AEAD tag on top. 8 bytes would leave 1 payload byte per frame at MTU 23.
MAC_SIZE = 4
#: How far behind the highest counter seen a frame may still arrive (it may not repeat).
REPLAY_WINDOW = 64
#: Largest message id (u16 on the wire); a session seals at most this many messages per
#: direction.
MAX_MSG_ID = 0xFFFF


def frame_key(session_key: bytes, direction: Direction) -> bytes:
    """HKDF-SHA256(ikm=session_key, salt="tapcast-ble-v1", info="tapcast ble frame <dir>"), 32 bytes."""
    return _derive(session_key, _FRAME_INFO[direction])


def session_token(session_key: bytes) -> str:
    """The per-tap token the handset advertises as a 128-bit service UUID and the node
    scans for: HKDF-SHA256(session_key, salt "tapcast-ble-v1", info "tapcast ble
    token", L=16), the 16 bytes read big-endian as a UUID, in bleak's lowercase form.
    Nothing in it is stable across taps, so it cannot track a phone."""
    return str(uuid.UUID(bytes=_derive(session_key, _TOKEN_INFO, 16)))


def frame_mac(key: bytes, unsigned: bytes) -> bytes:
    """HMAC-SHA256(frame key, type || counter || fields) truncated to MAC_SIZE bytes."""
    return hmac.digest(key, unsigned, "sha256")[:MAC_SIZE]


class FrameType(enum.IntEnum):
    DATA = 0x01  # type | ctr u32 | msg_id u16 | index u16 | total u16 | chunk | mac
    ACK = 0x02  # type | ctr u32 | msg_id u16 | next_missing u16 | status u8 | mac
    QUERY = 0x03  # type | ctr u32 | msg_id u16 | mac  ("which frames of it do you have?";
    #               msg_id 0 is HELLO: the node's first frame on each link, proving the key)


class AckStatus(enum.IntEnum):
    PARTIAL = 0  # frames [0, next_missing) are held; send the rest
    DONE = 1  # message reassembled, opened and delivered
    REJECTED = 2  # message reassembled but failed to open; do not resend it


FRAME_PREFIX = struct.Struct(">BI")  # type | frame counter
DATA_FIELDS = struct.Struct(">HHH")
ACK_FIELDS = struct.Struct(">HHB")
QUERY_FIELDS = struct.Struct(">H")
#: Bytes of a DATA frame that are not payload: prefix, fields, MAC (15).
DATA_OVERHEAD = FRAME_PREFIX.size + DATA_FIELDS.size + MAC_SIZE
MIN_AUTH_FRAME = FRAME_PREFIX.size + MAC_SIZE


class Unauthentic(FrameError):
    """A frame that failed the MAC or the replay check (or is too short to carry one):
    nothing in it was looked at. Counted and dropped; never answered with state."""


@dataclass(frozen=True)
class DataFrame:
    msg_id: int
    index: int
    total: int
    chunk: bytes

    type: ClassVar[FrameType] = FrameType.DATA

    def fields(self) -> bytes:
        return DATA_FIELDS.pack(self.msg_id, self.index, self.total) + self.chunk


@dataclass(frozen=True)
class AckFrame:
    msg_id: int
    next_missing: int
    status: AckStatus

    type: ClassVar[FrameType] = FrameType.ACK

    def fields(self) -> bytes:
        return ACK_FIELDS.pack(self.msg_id, self.next_missing, self.status)


@dataclass(frozen=True)
class QueryFrame:
    msg_id: int

    type: ClassVar[FrameType] = FrameType.QUERY

    def fields(self) -> bytes:
        return QUERY_FIELDS.pack(self.msg_id)


Frame = Union[DataFrame, AckFrame, QueryFrame]

#: The node's first frame on every (re)connect: proves the session key so the handset
#: binds the link before anything else happens. Not answered.
HELLO = QueryFrame(0)
#: The handset's answer to HELLO: with it the node knows the device that advertised the
#: tap's token holds the session key, and is not a stranger who copied the token.
HELLO_ACK = AckFrame(0, 0, AckStatus.DONE)


def encode_frame(key: bytes, counter: int, frame: Frame) -> bytes:
    """type u8 | counter u32 | fields | MAC (docs/protocol.md, BLE "Frames")."""
    if not 0 < counter <= 0xFFFFFFFF:
        raise ValueError(f"frame counter {counter} out of range 1..2^32-1")
    unsigned = FRAME_PREFIX.pack(frame.type, counter) + frame.fields()
    return unsigned + frame_mac(key, unsigned)


def open_frame(key: bytes, data: bytes) -> tuple[int, Frame]:
    """Check the MAC (raising :class:`Unauthentic`), then parse. Returns (counter, frame);
    FrameError says what is wrong with an authentic but malformed frame."""
    data = bytes(data)
    if len(data) < MIN_AUTH_FRAME:
        raise Unauthentic(f"frame of {len(data)} bytes is shorter than the {MIN_AUTH_FRAME}-byte minimum")
    unsigned, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    if not hmac.compare_digest(frame_mac(key, unsigned), mac):
        raise Unauthentic(f"frame of {len(data)} bytes failed authentication (not from this session)")
    kind, counter = FRAME_PREFIX.unpack_from(unsigned)
    if counter == 0:
        raise FrameError("frame counter 0 is reserved")
    return counter, _parse_fields(kind, unsigned[FRAME_PREFIX.size:])


def _parse_fields(kind: int, body: bytes) -> Frame:
    if kind == FrameType.DATA:
        if len(body) < DATA_FIELDS.size:
            raise FrameError(f"truncated DATA header: {len(body)} field bytes, need {DATA_FIELDS.size}")
        msg_id, index, total = DATA_FIELDS.unpack_from(body)
        if msg_id == 0:
            raise FrameError("message id 0 is reserved")
        if total == 0 or index >= total:
            raise FrameError(f"frame index {index} out of range for total {total}")
        if len(body) == DATA_FIELDS.size:
            raise FrameError(f"DATA frame {index}/{total} of message {msg_id} has no payload")
        return DataFrame(msg_id, index, total, body[DATA_FIELDS.size:])
    if kind == FrameType.ACK:
        if len(body) != ACK_FIELDS.size:
            raise FrameError(f"ACK frame has {len(body)} field bytes, expected {ACK_FIELDS.size}")
        msg_id, next_missing, status = ACK_FIELDS.unpack(body)
        try:
            return AckFrame(msg_id, next_missing, AckStatus(status))
        except ValueError:
            raise FrameError(f"ACK frame has unknown status {status}") from None
    if kind == FrameType.QUERY:
        if len(body) != QUERY_FIELDS.size:
            raise FrameError(f"QUERY frame has {len(body)} field bytes, expected {QUERY_FIELDS.size}")
        (msg_id,) = QUERY_FIELDS.unpack(body)
        return QueryFrame(msg_id)
    raise FrameError(f"unknown frame type 0x{kind:02x}")


class ReplayWindow:
    """Frame counters seen in one direction: the highest, and a bitmap of the
    REPLAY_WINDOW below it (RFC 4303, 3.4.3). A counter is accepted once, and only
    within the window, so a small local reordering of writes is tolerated."""

    def __init__(self) -> None:
        self.highest = 0
        self._bits = 0  # bit i set: counter highest - i was seen

    def check(self, counter: int) -> None:
        if counter > self.highest:
            return
        age = self.highest - counter
        if age >= REPLAY_WINDOW:
            raise Unauthentic(f"frame counter {counter} is too old (highest seen {self.highest})")
        if self._bits >> age & 1:
            raise Unauthentic(f"frame counter {counter} replayed")

    def mark(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)


def chunk(msg_id: int, sealed: bytes, frame_size: int) -> list[DataFrame]:
    """Cut a sealed message into DATA frames of at most ``frame_size`` bytes (MTU-3)
    once authenticated."""
    if frame_size < MIN_FRAME_SIZE:
        raise ValueError(f"frame_size {frame_size} is below the BLE minimum {MIN_FRAME_SIZE}")
    if len(sealed) > MAX_MESSAGE_SIZE:
        raise ValueError(f"sealed message is {len(sealed)} bytes; the limit is {MAX_MESSAGE_SIZE}"
                         " (send large media as a media_url)")
    room = frame_size - DATA_OVERHEAD
    chunks = [sealed[i:i + room] for i in range(0, len(sealed), room)] or [b""]
    return [DataFrame(msg_id, i, len(chunks), c) for i, c in enumerate(chunks)]


@dataclass
class _Partial:
    msg_id: int
    total: int
    frames: dict[int, bytes] = field(default_factory=dict)
    size: int = 0

    @property
    def next_missing(self) -> int:
        i = 0
        while i in self.frames:
            i += 1
        return i


# ------------------------------------------------------------------------- endpoint


@dataclass(frozen=True)
class Outgoing:
    """A sealed message waiting to be framed. Senders authenticate each frame of
    :meth:`chunks` with :meth:`Endpoint.wrap` right before writing it (so counters go
    on air in order); :meth:`frames` does all of them at once."""

    msg_id: int
    sealed: bytes
    endpoint: Endpoint = field(repr=False, compare=False)

    def chunks(self, frame_size: int) -> list[DataFrame]:
        return chunk(self.msg_id, self.sealed, frame_size)

    def frames(self, frame_size: int) -> list[bytes]:
        return [self.endpoint.wrap(f) for f in self.chunks(frame_size)]


@dataclass(frozen=True)
class Delivered:
    """A complete, authentic, new message; send ``reply`` (a DONE ack) back."""

    msg_id: int
    message: Message
    reply: AckFrame


@dataclass(frozen=True)
class Reply:
    """Nothing to deliver (yet), but send ``reply`` (an ACK) back, if not None."""

    reply: AckFrame | None


@dataclass(frozen=True)
class AckReceived:
    ack: AckFrame


Event = Union[Delivered, Reply, AckReceived]


class Endpoint:
    """One side of a session: seals and authenticates what it sends, authenticates,
    reassembles and opens what it receives, and answers QUERY frames. ``role`` is
    "node" or "handset".

    Receiving rules (docs/protocol.md, BLE "Receiver"): first the frame's MAC and
    counter (:class:`Unauthentic` if either fails; nothing else is looked at). Then a
    DATA frame for an id at or below the last accepted one is a duplicate and is
    answered DONE without delivering again; an id above it starts (or continues) the
    one message in progress, and a newer id abandons an older unfinished one.
    """

    def __init__(self, session_key: bytes, role: str) -> None:
        if role not in ("node", "handset"):
            raise ValueError(f"role must be 'node' or 'handset', not {role!r}")
        self.role = role
        if role == "node":
            self.out_dir, self.in_dir = Direction.NODE_TO_HANDSET, Direction.HANDSET_TO_NODE
        else:
            self.out_dir, self.in_dir = Direction.HANDSET_TO_NODE, Direction.NODE_TO_HANDSET
        self._out_key = direction_key(session_key, self.out_dir)
        self._in_key = direction_key(session_key, self.in_dir)
        self._out_mac = frame_key(session_key, self.out_dir)
        self._in_mac = frame_key(session_key, self.in_dir)
        self.token = session_token(session_key)
        self.last_sent = 0  # id of the last message sealed by this side
        self.last_accepted = 0  # id of the last message received and delivered
        self.frames_sent = 0  # counter of the last frame this side authenticated
        self.proven = False  # an authentic frame has arrived: the peer holds the key
        self._seen = ReplayWindow()
        self._partial: _Partial | None = None
        #: (index, total) of the last authentic DATA frame (diagnostics).
        self.last_data: tuple[int, int] | None = None

    # sending
    def seal(self, message: Message) -> Outgoing:
        if self.last_sent >= MAX_MSG_ID:
            raise ValueError(f"session has sealed {MAX_MSG_ID} messages; start a new one")
        self.last_sent += 1
        return Outgoing(self.last_sent, seal(self._out_key, self.out_dir, self.last_sent, message), self)

    def wrap(self, frame: Frame) -> bytes:
        """Authenticate ``frame`` with this direction's next counter: call it right
        before the write, so frames reach the air in counter order."""
        self.frames_sent += 1
        return encode_frame(self._out_mac, self.frames_sent, frame)

    # receiving
    def handle(self, data: bytes) -> Event:
        """Process one received frame. Raises :class:`Unauthentic` for a frame that
        failed the MAC or replay check (no state touched), FrameError (with ``reply``
        set when the peer must be told) for an authentic frame that is out of place."""
        self.last_data = None
        counter, frame = open_frame(self._in_mac, data)
        self._seen.check(counter)
        self._seen.mark(counter)
        self.proven = True
        if isinstance(frame, AckFrame):
            if frame.msg_id == 0 and self.role == "node":  # the answer to our HELLO
                return AckReceived(frame)
            if frame.msg_id == 0 or frame.msg_id > self.last_sent:
                raise FrameError(f"ACK for unknown message id {frame.msg_id} "
                                 f"(last sent {self.last_sent})")
            return AckReceived(frame)
        if isinstance(frame, QueryFrame):
            if frame.msg_id == 0:  # HELLO: proves the key on a new link; the ACK we
                return Reply(HELLO_ACK)  # answer proves ours (a token copier cannot)
            return Reply(self._status(frame.msg_id))
        return self._data(frame)

    def _status(self, msg_id: int) -> AckFrame:
        if 0 < msg_id <= self.last_accepted:
            return AckFrame(msg_id, 0xFFFF, AckStatus.DONE)
        if self._partial is not None and self._partial.msg_id == msg_id:
            return AckFrame(msg_id, self._partial.next_missing, AckStatus.PARTIAL)
        if self.last_accepted < msg_id <= self.last_accepted + MAX_ID_GAP:
            return AckFrame(msg_id, 0, AckStatus.PARTIAL)  # nothing of it arrived yet
        raise FrameError(f"QUERY for unknown message id {msg_id} (last accepted {self.last_accepted})")

    def _data(self, frame: DataFrame) -> Event:
        self.last_data = (frame.index, frame.total)
        if frame.msg_id <= self.last_accepted:
            return Reply(AckFrame(frame.msg_id, 0xFFFF, AckStatus.DONE))
        if frame.msg_id > self.last_accepted + MAX_ID_GAP:
            raise FrameError(f"unknown message id {frame.msg_id}: last accepted is "
                             f"{self.last_accepted}, at most {MAX_ID_GAP} ahead is allowed")
        part = self._partial
        if part is not None and frame.msg_id < part.msg_id:
            raise FrameError(f"stale frame for abandoned message {frame.msg_id} "
                             f"(message {part.msg_id} in progress)")
        if part is None or frame.msg_id > part.msg_id:
            if part is not None:
                log.info("message %d abandoned at %d/%d frames for message %d",
                         part.msg_id, len(part.frames), part.total, frame.msg_id)
            part = self._partial = _Partial(frame.msg_id, frame.total)
        if frame.total != part.total:
            raise FrameError(f"frame {frame.index} of message {frame.msg_id} says total "
                             f"{frame.total}, earlier frames said {part.total}")
        if frame.index not in part.frames:  # a duplicate is ignored
            if part.size + len(frame.chunk) > MAX_MESSAGE_SIZE:
                self._partial = None
                raise FrameError(f"message {frame.msg_id} exceeds {MAX_MESSAGE_SIZE} bytes")
            part.frames[frame.index] = frame.chunk
            part.size += len(frame.chunk)
        if len(part.frames) < part.total:
            if frame.index == part.total - 1:  # sender is done but there is a gap
                return Reply(AckFrame(part.msg_id, part.next_missing, AckStatus.PARTIAL))
            return Reply(None)
        self._partial = None
        sealed = b"".join(part.frames[i] for i in range(part.total))
        try:
            message = open_sealed(self._in_key, self.in_dir, part.msg_id, sealed)
        except FrameError as exc:
            raise FrameError(str(exc), AckFrame(part.msg_id, 0, AckStatus.REJECTED)) from None
        self.last_accepted = part.msg_id
        return Delivered(part.msg_id, message, AckFrame(part.msg_id, 0xFFFF, AckStatus.DONE))
