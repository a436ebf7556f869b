"""MQTT topics and message schemas shared by nodes and the hub (bytes in docs/mqtt.md).

All payloads but ``status`` are UTF-8 JSON objects validated with msgspec; a payload
that does not validate raises PayloadError with the reason, and is never half-applied.
"""
from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

PREFIX = "tapcast/v1"
ID_RE = re.compile(r"[a-zA-Z0-9_-]+")

ONLINE = b"online"
OFFLINE = b"offline"

EventKind = Literal[
    "tap",  # a handset answered the node's SELECT: a tap began
    "auth",  # verdict of the mutual authentication: data.ok, data.reason, data.handset_id
    "delivery",  # a message reached the handset: data.item_id, data.kind, data.bytes
    "delivery_failed",  # BLE push failed: data.reason
    "request",  # the customer asked for a catalogue item: data.item_id
    "error",  # something went wrong on the node that an operator should see
]


class PayloadError(ValueError):
    """An MQTT payload is malformed; the message says what is wrong."""


class Event(msgspec.Struct, forbid_unknown_fields=True):
    """One thing that happened on a node. (node_id, seq) is unique; seq starts at 1
    and increases by one per event, so the hub can ack the highest contiguous seq."""

    id: str  # globally unique (uuid4 hex), for logs and cross-references
    seq: int
    kind: EventKind
    ts: float  # unix time, seconds
    data: dict[str, Any] = {}


class EventBatch(msgspec.Struct, forbid_unknown_fields=True):
    node_id: str
    events: list[Event]


class EventAck(msgspec.Struct, forbid_unknown_fields=True):
    """Hub to node: every event with seq <= this one is stored; delete them."""

    seq: int


class NodeState(msgspec.Struct, forbid_unknown_fields=True):
    """Retained heartbeat snapshot a node publishes on .../state."""

    node_id: str
    ts: float
    version: str
    zone: str
    uptime: float
    outbox_depth: int
    taps: int = 0
    deliveries: int = 0
    failures: int = 0


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

# Subscriptions the hub needs (single-level wildcard on the node id).
HUB_SUBSCRIPTIONS = (
    f"{PREFIX}/node/+/status",
    f"{PREFIX}/node/+/state",
    f"{PREFIX}/node/+/events",
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
_ack_decoder = msgspec.json.Decoder(EventAck)
_state_decoder = msgspec.json.Decoder(NodeState)
_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def _decode(decoder: msgspec.json.Decoder, payload: bytes | bytearray, what: str) -> Any:
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"malformed {what}: {exc}") from None


def decode_batch(payload: bytes | bytearray, node_id: str | None = None) -> EventBatch:
    """Decode an event batch; when ``node_id`` (from the topic) is given, the batch
    must name the same node, so a node cannot file events under another's id."""
    batch: EventBatch = _decode(_batch_decoder, payload, "event batch")
    if not ID_RE.fullmatch(batch.node_id):
        raise PayloadError(f"malformed event batch: invalid node_id {batch.node_id!r}")
    if node_id is not None and batch.node_id != node_id:
        raise PayloadError(
            f"event batch names node {batch.node_id!r} but was published under {node_id!r}")
    for event in batch.events:
        if event.seq < 1:
            raise PayloadError(f"malformed event batch: seq {event.seq} < 1")
    return batch


def decode_ack(payload: bytes | bytearray) -> EventAck:
    return _decode(_ack_decoder, payload, "event ack")


def decode_state(payload: bytes | bytearray) -> NodeState:
    return _decode(_state_decoder, payload, "node state")


def decode_status(payload: bytes | bytearray) -> str:
    if payload not in (ONLINE, OFFLINE):
        raise PayloadError(f"malformed status: expected 'online' or 'offline', got {payload[:40]!r}")
    return bytes(payload).decode()
