"""MQTT topics and message schemas shared by nodes and the hub (bytes in docs/mqtt.md).

All payloads but ``status`` are UTF-8; a payload that does not validate raises
PayloadError with the reason, and is never half-applied. Event batches and their acks
are authenticated (``seal``/``open_sealed``): ``t1.<tag>.<json>``, where the tag is an
HMAC-SHA256 (truncated to 16 bytes, 32 hex digits) under the node's stream key over a
context label, the topic and the JSON. Only the node and the hub hold that key (the hub
derives it from its stream secret and the node id), so the broker, and anyone else on
it, can neither inject a batch under a node's topic nor forge an ack that makes a node
delete events. One parse: the hub stores exactly the values these schemas decoded, and
every number is bounded here.
"""
from __future__ import annotations

import hmac
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

PREFIX = "tapcast/v1"
ID_RE = re.compile(r"[a-zA-Z0-9_-]+")

ONLINE = b"online"
OFFLINE = b"offline"

#: Seqs stay exact in every JSON reader (JavaScript's numbers included).
MAX_SEQ = 2**53 - 1
#: Event times: unix seconds up to the year 2242; an event cannot predate 1970.
MAX_TS = 2.0**33
#: Most events one batch may carry, and its largest payload; a node sends at most
#: ``mqtt.batch_size`` (200) events of a few hundred bytes each.
MAX_BATCH_EVENTS = 1000
MAX_PAYLOAD = 512 * 1024
#: Largest ``data`` object of one event, as stored (JSON bytes).
MAX_EVENT_DATA = 8 * 1024
#: Event kinds a node of this version writes. The hub stores any kind that matches
#: KIND_PATTERN (a newer node's kinds are stored, not refused).
EventKind = Literal[
    "tap",  # a handset answered the node's SELECT: a tap began
    "auth",  # verdict of the mutual authentication: data.ok, data.reason, data.handset_id
    "delivery",  # a message reached the handset: data.item_id, data.kind, data.bytes
    "delivery_failed",  # BLE push failed: data.reason
    "request",  # the customer asked for a catalogue item: data.item_id
    "error",  # something went wrong on the node that an operator should see
    "manifest_applied",  # a signed content manifest runs: data.serial, .items, .bytes_fetched
    "manifest_refused",  # a manifest was refused: data.reason, .detail, .serial (or null)
    "impression",  # the display page showed an item for one slot: data.item_id
    "capped",  # an item was held back by its frequency cap: data.item_id, .handset_id
    "refused",  # the handset's consent refused an item: data.item_id, .version, .reason, .handset_id
    "open",  # a handset-signed open record: data.item_id, .version, .handset_id, .counter, ...
    "open_refused",  # an open record that did not verify: data.handset_id, .counter, .reason
]
KIND_PATTERN = "^[a-z][a-z0-9_]{0,31}$"
ID_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"

Seq = Annotated[int, Meta(ge=1, le=MAX_SEQ)]
Ts = Annotated[float, Meta(ge=0.0, le=MAX_TS)]
Kind = Annotated[str, Meta(pattern=KIND_PATTERN)]
Ident = Annotated[str, Meta(pattern=ID_PATTERN)]

class PayloadError(ValueError):
    """An MQTT payload is malformed; the message says what is wrong."""


class Event(msgspec.Struct, forbid_unknown_fields=True):
    """One thing that happened on a node. (node_id, epoch, seq) is unique; seq starts
    at 1 in each outbox epoch and increases by one per event, so the hub can ack the
    highest contiguous seq."""

    id: Ident  # globally unique (uuid4 hex), for logs and cross-references
    seq: Seq
    kind: Kind
    ts: Ts  # unix time, seconds
    data: dict[str, Any] = {}


class EventBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Events ``first``..``last`` of one outbox ``epoch`` (a new data dir is a new
    epoch). ``low`` is the lowest seq the node still holds: the hub will never get a
    seq below it again, so a hole there is lost for good, not "will be re-sent"."""

    node_id: Ident
    epoch: Ident
    low: Seq
    first: Seq
    last: Seq
    events: list[Event]


class BatchHeader(msgspec.Struct):
    """What the hub reads of a batch whose events it cannot decode (a newer node's
    format, a bug): enough to quarantine it and ack past it."""

    node_id: Ident
    epoch: Ident
    low: Seq
    first: Seq
    last: Seq


class EventAck(msgspec.Struct, forbid_unknown_fields=True):
    """Hub to node: every event of ``epoch`` with seq <= ``seq`` is stored (or lost
    for good); delete them. ``ts`` is the hub's clock when it acked: authenticated like
    the rest, it gives a node without a real-time clock a time it can trust."""

    epoch: Ident
    seq: Annotated[int, Meta(ge=0, le=MAX_SEQ)]
    ts: Ts


Count = Annotated[int, Meta(ge=0, le=MAX_SEQ)]
Text = Annotated[str, Meta(max_length=64)]


class NodeState(msgspec.Struct, forbid_unknown_fields=True):
    """Retained heartbeat snapshot a node publishes on .../state."""

    node_id: Ident
    ts: Ts
    version: Text
    zone: Text
    uptime: Annotated[float, Meta(ge=0.0, le=MAX_TS)]
    outbox_depth: Count
    taps: Count = 0
    deliveries: Count = 0
    failures: Count = 0
    # The NFC reader: "ok", "failed", "starting" or "stopped", and why it failed.
    reader: Text = ""
    reader_reason: Annotated[str, Meta(max_length=200)] = ""
    # Whether the node's clock is trusted (NTP or the hub's acks) and where it comes from.
    time_trusted: bool = False
    time_source: Text = ""
    # The serial of the signed content manifest the node runs; 0: none applied yet.
    content_serial: Count = 0
    # The node's time zone (IANA, e.g. "Europe/Berlin"; "": the hub's): its content
    # schedules run in it, and the hub signs its manifests with it.
    tz: Annotated[str, Meta(max_length=64)] = ""


# ------------------------------------------------------------------------- topics


def _check_id(node_id: str) -> str:
    if not ID_RE.fullmatch(node_id):
        raise ValueError(f"invalid node id {node_id!r}: use letters, digits, '_' and '-'")
    return node_id


def node_topic(node_id: str, leaf: str) -> str:
    return f"{PREFIX}/node/{_check_id(node_id)}/{leaf}"


def status_topic(node_id: str) -> str:
    return node_topic(node_id, "status")


def state_topic(node_id: str) -> str:
    return node_topic(node_id, "state")


def events_topic(node_id: str) -> str:
    return node_topic(node_id, "events")


def events_ack_topic(node_id: str) -> str:
    return node_topic(node_id, "events/ack")


REVOCATIONS_TOPIC = f"{PREFIX}/revocations"

#: The code path (no NFC; tapcast.protocol.presence, docs/protocol.md "Without NFC"):
#: the node offers each code it shows, the hub relays a handset's answer, the node
#: says how it went. Each payload is sealed with the node's stream key.
PRESENCE_OFFER = "presence/offer"
PRESENCE_ANSWER = "presence/answer"
PRESENCE_RESULT = "presence/result"


def presence_topic(node_id: str, leaf: str) -> str:
    """``tapcast/v1/node/{id}/presence/{offer|answer|result}``."""
    if leaf not in (PRESENCE_OFFER, PRESENCE_ANSWER, PRESENCE_RESULT):
        raise ValueError(f"not a presence topic leaf: {leaf!r}")
    return node_topic(node_id, leaf)


# Subscriptions the hub needs (single-level wildcard on the node id).
HUB_SUBSCRIPTIONS = (
    f"{PREFIX}/node/+/status",
    f"{PREFIX}/node/+/state",
    f"{PREFIX}/node/+/events",
    f"{PREFIX}/node/+/{PRESENCE_OFFER}",
    f"{PREFIX}/node/+/{PRESENCE_RESULT}",
)


def parse_node_topic(topic: str) -> tuple[str, str]:
    """Split ``tapcast/v1/node/{id}/{leaf...}`` into (node_id, leaf)."""
    parts = topic.split("/", 4)
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != "node":
        raise PayloadError(f"not a node topic: {topic!r}")
    if not ID_RE.fullmatch(parts[3]):
        raise PayloadError(f"invalid node id in topic {topic!r}")
    return parts[3], parts[4]


# ------------------------------------------------------------------------ codecs

_batch_decoder = msgspec.json.Decoder(EventBatch)
_header_decoder = msgspec.json.Decoder(BatchHeader)
_ack_decoder = msgspec.json.Decoder(EventAck)
_state_decoder = msgspec.json.Decoder(NodeState)
_encoder = msgspec.json.Encoder()

TAG_PREFIX = b"t1."
TAG_BYTES = 16
_SEALED_HEAD = len(TAG_PREFIX) + 2 * TAG_BYTES + 1  # "t1." + 32 hex + "."
_TAG_HEX = re.compile(rb"[0-9a-f]{%d}" % (2 * TAG_BYTES))
BATCH_CONTEXT = b"tapcast/v1 events\x00"
ACK_CONTEXT = b"tapcast/v1 events/ack\x00"
STREAM_KEY_INFO = b"tapcast/v1 stream key\x00"


class ForgedError(PayloadError):
    """A sealed payload's tag does not verify: not from the key holder, or altered."""


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def stream_key(secret: bytes, node_id: str) -> bytes:
    """The node's 32-byte stream key, derived from the hub's stream secret: the hub
    needs no table of node keys, and one node's key says nothing about another's."""
    if len(secret) < 32:
        raise ValueError("the stream secret must be at least 32 bytes")
    return hmac.digest(secret, STREAM_KEY_INFO + _check_id(node_id).encode(), "sha256")


def _tag(key: bytes, context: bytes, topic: str, body: bytes) -> bytes:
    return hmac.digest(key, context + topic.encode() + b"\x00" + body, "sha256")[:TAG_BYTES]


def seal(key: bytes, context: bytes, topic: str, body: bytes) -> bytes:
    """``t1.<tag hex>.<body>``: text-safe (one line), so a C publisher can send it."""
    return TAG_PREFIX + _tag(key, context, topic, body).hex().encode() + b"." + body


def open_sealed(key: bytes, context: bytes, topic: str, payload: bytes | bytearray) -> bytes:
    """The body of a sealed payload; ForgedError when the tag does not verify."""
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if type(payload) is not bytes:
        payload = bytes(payload)
    if not payload.startswith(TAG_PREFIX) or payload[_SEALED_HEAD - 1:_SEALED_HEAD] != b".":
        raise ForgedError("not sealed (expected t1.<32 hex digits>.<json>)")
    tag_hex = payload[len(TAG_PREFIX):_SEALED_HEAD - 1]
    body = payload[_SEALED_HEAD:]
    # Compared as the lowercase hex seal() writes: an uppercase copy of an authentic
    # payload must not open (it would be a new payload: a replayed quarantined batch
    # stored again), and no parse of the hex is needed.
    if not hmac.compare_digest(tag_hex, _tag(key, context, topic, body).hex().encode()):
        if not _TAG_HEX.fullmatch(tag_hex):
            raise ForgedError("not sealed (the tag is not 32 lowercase hex digits)")
        raise ForgedError("tag does not verify (not from this node's key holder, or altered)")
    return body


def seal_batch(key: bytes, batch: EventBatch) -> bytes:
    return seal(key, BATCH_CONTEXT, events_topic(batch.node_id), encode(batch))


def seal_ack(key: bytes, node_id: str, ack: EventAck) -> bytes:
    return seal(key, ACK_CONTEXT, events_ack_topic(node_id), encode(ack))


def _decode(decoder: msgspec.json.Decoder, payload: bytes | bytearray, what: str) -> Any:
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"malformed {what}: {exc}") from None
    except RecursionError:  # msgspec recurses once per level of nesting
        raise PayloadError(f"malformed {what}: nested too deeply") from None


def decode_batch(body: bytes | bytearray, node_id: str | None = None) -> EventBatch:
    """Decode an (opened) event batch; when ``node_id`` (from the topic) is given, the
    batch must name the same node. Events must be in ``first``..``last``, increasing,
    and ``low`` <= ``first`` <= ``last``."""
    batch: EventBatch = _decode(_batch_decoder, body, "event batch")
    if node_id is not None and batch.node_id != node_id:
        raise PayloadError(
            f"event batch names node {batch.node_id!r} but was published under {node_id!r}")
    check_header(batch)
    if len(batch.events) > MAX_BATCH_EVENTS:
        raise PayloadError(f"malformed event batch: {len(batch.events)} events, "
                           f"at most {MAX_BATCH_EVENTS}")
    previous = batch.first - 1
    for event in batch.events:
        if not previous < event.seq <= batch.last:
            raise PayloadError(f"malformed event batch: seq {event.seq} out of order or "
                               f"outside {batch.first}..{batch.last}")
        previous = event.seq
    return batch


def check_header(header: EventBatch | BatchHeader) -> None:
    if not header.low <= header.first <= header.last:
        raise PayloadError(f"malformed event batch: expected low <= first <= last, got "
                           f"{header.low}, {header.first}, {header.last}")
    if header.last - header.first >= MAX_BATCH_EVENTS:
        raise PayloadError(f"malformed event batch: {header.first}..{header.last} spans "
                           f"more than {MAX_BATCH_EVENTS} seqs")


def decode_batch_header(body: bytes | bytearray, node_id: str) -> BatchHeader:
    """The header of a batch whose events did not decode (ignores everything else)."""
    header: BatchHeader = _decode(_header_decoder, body, "event batch header")
    if header.node_id != node_id:
        raise PayloadError(
            f"event batch names node {header.node_id!r} but was published under {node_id!r}")
    check_header(header)
    return header


def decode_ack(body: bytes | bytearray) -> EventAck:
    return _decode(_ack_decoder, body, "event ack")


def decode_state(payload: bytes | bytearray) -> NodeState:
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"node state of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _decode(_state_decoder, payload, "node state")


def decode_status(payload: bytes | bytearray) -> str:
    if payload not in (ONLINE, OFFLINE):
        raise PayloadError(f"malformed status: expected 'online' or 'offline', got {payload[:40]!r}")
    return bytes(payload).decode()
