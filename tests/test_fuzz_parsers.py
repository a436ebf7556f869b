"""Fuzzing the parsers that read bytes from strangers: NFC APDUs (both ends), BLE frames
and messages, MQTT payloads and topics.

Each property feeds a parser arbitrary bytes, or structured mutations of a valid message
(bit flips, truncation, extension, boundary integers written over fields; for JSON also
hostile values at and past the bounds, NaN/Infinity, duplicate and escaped keys, deep
nesting, huge strings), and checks that the parser either returns a valid object (within
the protocol's bounds, re-encoding to what it read) or raises only the protocol's
documented error: PayloadError (ForgedError) for MQTT, FrameError (Unauthentic) for BLE,
ApduError/ProtocolError/CertificateError inside the NFC module, which the card turns into
a status word and the node into a NodeVerdict. A mutation that leaves a message unchanged
must leave it working.

Bounded for ``make test`` (TAPCAST_FUZZ_EXAMPLES, default 200 examples per property,
derandomized so CI is stable); ``make fuzz`` runs the same properties with many more
examples and a fresh random seed (counts in docs/performance.md, "Fuzzing").
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings, strategies as st

from tapcast.keys import (
    Certificate,
    CertificateError,
    HubAuthority,
    make_handset_credentials,
    make_node_credentials,
)
from tapcast.protocol import ble
from tapcast.protocol import mqtt as m
from tapcast.protocol import nfc

EXAMPLES = int(os.environ.get("TAPCAST_FUZZ_EXAMPLES", "200"))
LONG_RUN = "TAPCAST_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,  # CI: the same examples every run; make fuzz: a fresh seed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
)

# ------------------------------------------------------------------ byte mutations

BOUNDARY_INTS = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**53 - 1, 2**53, 2**63 - 1, 2**63,
                 2**64 - 1]


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """1-4 mutations of ``original``: bit flip, letter case, truncation, extension, insertion,
    deletion, overwrite, or a boundary integer (u8/u16/u32/u64, big-endian) written over
    whatever field sits at some offset."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "case", "truncate", "extend", "insert", "delete",
                                   "overwrite", "boundary"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "case":  # the same text to a case-insensitive reader (hex digits)
            letters = [i for i, c in enumerate(data) if chr(c).isascii() and chr(c).isalpha()]
            if letters:
                i = letters[at % len(letters)]
                data[i] ^= 0x20
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif op == "boundary":
            size = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(BOUNDARY_INTS)) % (1 << (8 * size))
            data[at:at + size] = value.to_bytes(size, "big")
    return bytes(data)


# =================================================================== MQTT

SECRET = bytes(range(32))
NODE = "n1"
STREAM_KEY = m.stream_key(SECRET, NODE)
KIND_RE = re.compile(m.KIND_PATTERN)
ID_RE = re.compile(m.ID_PATTERN)


def check_header_bounds(h: m.EventBatch | m.BatchHeader) -> None:
    assert ID_RE.match(h.node_id) and ID_RE.match(h.epoch)
    for v in (h.low, h.first, h.last):
        assert type(v) is int and 1 <= v <= m.MAX_SEQ
    assert h.low <= h.first <= h.last and h.last - h.first < m.MAX_BATCH_EVENTS


def check_ts(ts: float) -> None:
    assert type(ts) is float and math.isfinite(ts) and 0.0 <= ts <= m.MAX_TS


def check_batch(batch: m.EventBatch) -> None:
    """Everything decode_batch accepts is within bounds, and what the hub stores (the
    re-encoded struct) is what was validated: it decodes to the same values, by msgspec
    and by a second, independent JSON parser."""
    check_header_bounds(batch)
    assert len(batch.events) <= m.MAX_BATCH_EVENTS
    previous = batch.first - 1
    for e in batch.events:
        assert type(e.seq) is int and previous < e.seq <= batch.last <= m.MAX_SEQ
        previous = e.seq
        check_ts(e.ts)
        assert KIND_RE.match(e.kind) and ID_RE.match(e.id)
        assert isinstance(e.data, dict) and all(isinstance(k, str) for k in e.data)
    stored = m.encode(batch)
    assert m.decode_batch(stored, batch.node_id) == batch
    other = json.loads(stored)
    assert [(e["id"], e["seq"], e["kind"], e["ts"]) for e in other["events"]] == [
        (e.id, e.seq, e.kind, e.ts) for e in batch.events]
    assert (other["low"], other["first"], other["last"]) == (batch.low, batch.first, batch.last)


def check_ack(ack: m.EventAck) -> None:
    assert ID_RE.match(ack.epoch)
    assert type(ack.seq) is int and 0 <= ack.seq <= m.MAX_SEQ
    check_ts(ack.ts)
    assert m.decode_ack(m.encode(ack)) == ack


def check_state(state: m.NodeState) -> None:
    assert ID_RE.match(state.node_id)
    check_ts(state.ts)
    check_ts(state.uptime)
    assert len(state.version) <= 64 and len(state.zone) <= 64
    for v in (state.outbox_depth, state.taps, state.deliveries, state.failures):
        assert type(v) is int and 0 <= v <= m.MAX_SEQ
    assert m.decode_state(m.encode(state)) == state


def run_mqtt_decoders(body: bytes) -> None:
    """Every MQTT decoder on ``body``: a valid object or PayloadError, nothing else."""
    decoders: list[tuple[Callable[[bytes], Any], Callable[[Any], None]]] = [
        (lambda b: m.decode_batch(b), check_batch),
        (lambda b: m.decode_batch(b, NODE), check_batch),
        (lambda b: m.decode_batch_header(b, NODE), check_header_bounds),
        (m.decode_ack, check_ack),
        (m.decode_state, check_state),
        (m.decode_status, lambda s: None),
    ]
    for decode, check in decoders:
        try:
            value = decode(body)
        except m.PayloadError:
            continue
        check(value)


@dataclass(frozen=True)
class Raw:
    """JSON text written verbatim (NaN, 2^64, deep nesting, ...)."""

    text: str


@dataclass
class Obj:
    """A JSON object as ordered pairs: keys may repeat or be written escaped."""

    pairs: list[tuple[str, Any]]


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return "{" + ",".join(f"{k}:{to_json(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return to_json(as_obj(value))
    return json.dumps(value)


def as_obj(d: dict[str, Any]) -> Obj:
    return Obj([(json.dumps(k), v) for k, v in d.items()])


HOSTILE_VALUES = [Raw(t) for t in [
    "0", "-1", "1", "-0", "-0.0", "1.0", "1.5", "1e3", "01", "0x10", "+1",
    str(m.MAX_SEQ), str(m.MAX_SEQ + 1), str(2**63 - 1), str(2**63), str(2**64 - 1),
    str(2**64), str(-2**63), str(-2**63 - 1), "1" + "0" * 400, "1e400", "-1e400",
    "NaN", "-NaN", "Infinity", "-Infinity", "nan", "inf", "8589934592.0", "8589934592.5",
    "8589934593", "1e-400", "true", "false", "null", '"1"', '""', '"tap"', '"\\u0000"',
    '"\\ud800"', '"n1\\n"', '"n/1"', '"' + "a" * 65 + '"', '"' + "x" * 100_000 + '"',
    "[]", "{}", "[1,2]", '{"a":1}', "[" * 3000 + "]" * 3000,
    '{"a":' * 3000 + "1" + "}" * 3000, "", "[", "}", '"unterminated',
]]


def escaped(key: str, index: int) -> str:
    """``key`` as a JSON string with one character written as a \\u escape."""
    i = index % len(key)
    return '"' + key[:i] + f"\\u{ord(key[i]):04x}" + key[i + 1:] + '"'


@st.composite
def json_values(draw: st.DrawFn) -> Any:
    return draw(st.one_of(
        st.sampled_from(HOSTILE_VALUES),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                 allow_infinity=False)
            | st.text(max_size=20),
            lambda children: st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4),
            max_leaves=12)))


@st.composite
def mutated_object(draw: st.DrawFn, obj: Obj) -> Obj:
    """One field-level mutation of a JSON object."""
    pairs = list(obj.pairs)
    op = draw(st.sampled_from(["set", "delete", "unknown", "duplicate", "escape",
                               "nest", "swap"]))
    i = draw(st.integers(0, max(0, len(pairs) - 1)))
    if not pairs:
        op = "unknown"
    if op == "set":
        pairs[i] = (pairs[i][0], draw(json_values()))
    elif op == "delete":
        del pairs[i]
    elif op == "unknown":
        pairs.insert(i, (json.dumps(draw(st.text(max_size=10))), draw(json_values())))
    elif op == "duplicate":  # the same key again, before or after, same or hostile value
        key, value = pairs[i]
        again = value if draw(st.booleans()) else draw(json_values())
        pairs.insert(draw(st.integers(0, len(pairs))), (key, again))
    elif op == "escape":
        key = json.loads(pairs[i][0])
        if key:
            pairs[i] = (escaped(key, draw(st.integers(0, 63))), pairs[i][1])
    elif op == "nest":
        depth = draw(st.sampled_from([1, 10, 200, 1000, 5000]))
        pairs[i] = (pairs[i][0], Raw("[" * depth + to_json(pairs[i][1]) + "]" * depth))
    elif op == "swap" and len(pairs) > 1:
        j = draw(st.integers(0, len(pairs) - 1))
        pairs[i], pairs[j] = pairs[j], pairs[i]
    return Obj(pairs)


ids = st.from_regex(r"\A[a-zA-Z0-9_-]{1,64}\Z")


@st.composite
def batches(draw: st.DrawFn) -> m.EventBatch:
    """Valid batches, seqs and times drawn up to their bounds."""
    n = draw(st.integers(0, 5))
    first = draw(st.one_of(st.integers(1, 100), st.integers(1, m.MAX_SEQ - 1000),
                           st.just(m.MAX_SEQ - 9), st.just(m.MAX_SEQ)))
    top = min(first + 9, m.MAX_SEQ)
    seqs = sorted(draw(st.sets(st.integers(first, top), min_size=min(n, top - first + 1),
                               max_size=n)))
    last = min(max(seqs, default=first) + draw(st.integers(0, 3)), m.MAX_SEQ)
    low = draw(st.integers(1, first))
    events = [m.Event(id=draw(ids), seq=s, kind=draw(st.sampled_from(["tap", "auth", "x_1"])),
                      ts=draw(st.floats(0.0, m.MAX_TS)),
                      data=draw(st.dictionaries(st.text(max_size=5), st.integers() | st.text(
                          max_size=5), max_size=3)))
              for s in seqs]
    return m.EventBatch(node_id=NODE, epoch=draw(ids), low=low, first=first, last=last,
                        events=events)


def batch_as_obj(batch: m.EventBatch) -> Obj:
    doc = json.loads(m.encode(batch))
    obj = as_obj(doc)
    obj.pairs = [(k, [as_obj(e) for e in v]) if k == '"events"' else (k, v)
                 for k, v in obj.pairs]
    return obj


@st.composite
def mutated_sealed(draw: st.DrawFn, sealed: bytes) -> bytes:
    """A sealed payload mutated as a whole, or in one of its parts (prefix, tag, body)."""
    head, tag, body = sealed[:3], sealed[3:35], sealed[35:]
    part = draw(st.sampled_from(["whole", "head", "tag", "body"]))
    if part == "whole":
        return draw(mutated(sealed))
    if part == "head":
        return draw(mutated(head)) + tag + body
    if part == "tag":
        return head + draw(mutated(tag)) + body
    return head + tag + draw(mutated(body))


@FUZZ
@given(st.binary(max_size=600))
def test_mqtt_decoders_refuse_arbitrary_bytes_with_payload_error_only(data: bytes) -> None:
    run_mqtt_decoders(data)


@FUZZ
@given(json_values())
def test_mqtt_decoders_refuse_arbitrary_json_with_payload_error_only(value: Any) -> None:
    run_mqtt_decoders(to_json(value).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.data(), batches())
def test_mutated_batch_fields_decode_within_bounds_or_raise_payload_error(
        data: st.DataObject, batch: m.EventBatch) -> None:
    assert m.decode_batch(m.encode(batch), NODE) == batch
    obj = batch_as_obj(batch)
    target = data.draw(st.sampled_from(["batch", "event"]))
    events = dict(obj.pairs).get('"events"')
    if target == "event" and events:
        k = data.draw(st.integers(0, len(events) - 1))
        events[k] = data.draw(mutated_object(events[k]))
    else:
        obj = data.draw(mutated_object(obj))
    run_mqtt_decoders(to_json(obj).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.data(), batches())
def test_mutated_sealed_batch_opens_only_unchanged_and_then_round_trips(
        data: st.DataObject, batch: m.EventBatch) -> None:
    topic = m.events_topic(NODE)
    sealed = m.seal_batch(STREAM_KEY, batch)
    payload = data.draw(st.one_of(mutated_sealed(sealed), st.just(sealed)))
    try:
        body = m.open_sealed(STREAM_KEY, m.BATCH_CONTEXT, topic, payload)
    except m.ForgedError:
        assert payload != sealed
        return
    except m.PayloadError:
        assert len(payload) > m.MAX_PAYLOAD
        return
    assert payload == sealed  # one sealed form per body: no altered copy opens
    assert m.decode_batch(body, NODE) == batch


@FUZZ
@given(st.data(), st.integers(0, m.MAX_SEQ), st.floats(0.0, m.MAX_TS), ids)
def test_mutated_acks_decode_within_bounds_or_raise_payload_error(
        data: st.DataObject, seq: int, ts: float, epoch: str) -> None:
    ack = m.EventAck(epoch=epoch, seq=seq, ts=ts)
    sealed = m.seal_ack(STREAM_KEY, NODE, ack)
    topic = m.events_ack_topic(NODE)
    assert m.decode_ack(m.open_sealed(STREAM_KEY, m.ACK_CONTEXT, topic, sealed)) == ack
    field_level = data.draw(mutated_object(as_obj(json.loads(m.encode(ack)))))
    run_mqtt_decoders(to_json(field_level).encode("utf-8", "surrogatepass"))
    payload = data.draw(mutated_sealed(sealed))
    try:
        body = m.open_sealed(STREAM_KEY, m.ACK_CONTEXT, topic, payload)
    except m.PayloadError:
        return
    assert payload == sealed and m.decode_ack(body) == ack


@FUZZ
@given(st.data())
def test_mutated_node_states_decode_within_bounds_or_raise_payload_error(
        data: st.DataObject) -> None:
    state = m.NodeState(node_id=NODE, ts=data.draw(st.floats(0.0, m.MAX_TS)),
                        version="0.1", zone="hall-a", uptime=12.5,
                        outbox_depth=data.draw(st.integers(0, m.MAX_SEQ)), taps=3)
    encoded = m.encode(state)
    assert m.decode_state(encoded) == state
    obj = data.draw(mutated_object(as_obj(json.loads(encoded))))
    run_mqtt_decoders(to_json(obj).encode("utf-8", "surrogatepass"))
    run_mqtt_decoders(data.draw(mutated(encoded)))


@FUZZ
@given(st.one_of(
    st.text(max_size=120),
    st.builds(lambda node, leaf: f"tapcast/v1/node/{node}/{leaf}",
              st.text(max_size=70), st.text(max_size=20)),
))
def test_node_topics_parse_to_a_valid_id_or_raise_payload_error(topic: str) -> None:
    try:
        node_id, leaf = m.parse_node_topic(topic)
    except m.PayloadError:
        return
    assert m.ID_RE.fullmatch(node_id)
    assert f"{m.PREFIX}/node/{node_id}/{leaf}" == topic


# Examples the fuzzer found, kept as regular tests.


def test_deeply_nested_json_is_a_payload_error_not_a_recursion_error() -> None:
    nested = b"[" * 5000 + b"]" * 5000
    batch = (b'{"node_id":"n1","epoch":"e1","low":1,"first":1,"last":1,"events":[{"id":"x",'
             b'"seq":1,"kind":"tap","ts":0,"data":{"a":' + nested + b'}}]}')
    with pytest.raises(m.PayloadError, match="nested too deeply"):
        m.decode_batch(batch, NODE)
    with pytest.raises(m.PayloadError, match="nested too deeply"):
        m.decode_batch_header(b'{"node_id":"n1","x":' + nested + b'}', NODE)


def test_a_sealed_payload_with_its_tag_in_uppercase_does_not_open() -> None:
    """Otherwise anyone on the broker could re-case a recorded authentic payload into
    thousands of "new" payloads that all open (the hub keeps quarantined batches by the
    digest of the payload)."""
    sealed = m.seal_ack(STREAM_KEY, NODE, m.EventAck(epoch="e1", seq=1, ts=1.0))
    recased = sealed[:3] + sealed[3:35].upper() + sealed[35:]
    assert recased != sealed
    with pytest.raises(m.ForgedError, match="lowercase"):
        m.open_sealed(STREAM_KEY, m.ACK_CONTEXT, m.events_ack_topic(NODE), recased)


# =================================================================== BLE

KEY = bytes(range(32))
STRANGER_KEY = bytes(range(1, 33))
FRAME_TYPES = [int(t) for t in ble.FrameType] + [0x00, 0x04, 0xFF]


@st.composite
def authentic_raw_frames(draw: st.DrawFn) -> bytes:
    """type | counter | fields, with the type and counter at and past their bounds."""
    kind = draw(st.one_of(st.sampled_from(FRAME_TYPES), st.integers(0, 255)))
    counter = draw(st.sampled_from([0, 1, 2, 63, 64, 65, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1))
    fields = draw(st.one_of(
        st.binary(max_size=40),
        st.builds(lambda a, b, c, rest: struct.pack(">HHH", a, b, c) + rest,
                  *(st.sampled_from([0, 1, 2, 0xFFFE, 0xFFFF]) | st.integers(0, 0xFFFF)
                    for _ in range(3)), st.binary(max_size=20)),
        st.builds(lambda a, b, s: struct.pack(">HHB", a, b, s),
                  st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 255)),
    ))
    return ble.FRAME_PREFIX.pack(kind, counter) + fields


@FUZZ
@given(st.sampled_from(list(ble.Direction)), authentic_raw_frames())
def test_authentic_frames_with_any_fields_parse_exactly_or_raise_frame_error(
        direction: ble.Direction, raw: bytes) -> None:
    key = ble.frame_key(KEY, direction)
    frame = raw + ble.frame_mac(key, raw)
    try:
        counter, parsed = ble.open_frame(key, frame)
    except ble.Unauthentic:
        raise AssertionError("an authentic frame was called unauthentic") from None
    except ble.FrameError:
        return
    assert ble.encode_frame(key, counter, parsed) == frame


@st.composite
def stranger_frames(draw: st.DrawFn, genuine: list[bytes]) -> bytes:
    """What a stranger in radio range can write: garbage, altered, truncated or extended
    copies of frames it overheard, and well-formed frames under its own key."""
    how = draw(st.sampled_from(["garbage", "mutated", "own key"]))
    if how == "garbage":
        return draw(st.binary(max_size=60))
    if how == "mutated":
        return draw(mutated(draw(st.sampled_from(genuine))))
    raw = draw(authentic_raw_frames())
    direction = draw(st.sampled_from(list(ble.Direction)))
    return raw + ble.frame_mac(ble.frame_key(STRANGER_KEY, direction), raw)


@FUZZ
@given(st.data(), st.sampled_from(["node", "handset"]), st.sampled_from([20, 23, 64, 244]),
       st.text(max_size=200))
def test_stranger_frames_between_genuine_ones_change_nothing(
        data: st.DataObject, sender_role: str, frame_size: int, item_id: str) -> None:
    """The genuine message arrives intact, once, whatever a stranger writes in between;
    each stranger frame is refused as Unauthentic (it touched no state), including
    replays of genuine frames already received."""
    receiver_role = "handset" if sender_role == "node" else "node"
    sender, receiver = ble.Endpoint(KEY, sender_role), ble.Endpoint(KEY, receiver_role)
    message = ble.Request(item_id=item_id)
    genuine = ([sender.wrap(ble.HELLO)] if sender_role == "node" else []) + \
        sender.seal(message).frames(frame_size)
    delivered: list[ble.Message] = []
    for i, frame in enumerate(genuine):
        for _ in range(data.draw(st.integers(0, 2))):
            hostile = data.draw(stranger_frames(genuine[:i + 1] if i else genuine))
            if hostile in genuine[i:]:
                continue  # not a forgery: the genuine frame itself, early
            with pytest.raises(ble.Unauthentic):
                receiver.handle(hostile)
        event = receiver.handle(frame)
        if isinstance(event, ble.Delivered):
            delivered.append(event.message)
    assert delivered == [message]
    assert receiver.last_accepted == 1


@FUZZ
@given(st.lists(authentic_raw_frames(), max_size=12))
def test_a_misbehaving_peer_gets_frame_errors_only(raws: list[bytes]) -> None:
    """Even frames under the session key (a buggy or hostile peer) raise nothing but
    FrameError, and the receiver's counters stay within their bounds."""
    handset = ble.Endpoint(KEY, "handset")
    key = ble.frame_key(KEY, ble.Direction.NODE_TO_HANDSET)
    for raw in raws:
        try:
            event = handset.handle(raw + ble.frame_mac(key, raw))
        except ble.FrameError:
            continue
        assert isinstance(event, (ble.Delivered, ble.Reply, ble.AckReceived))
    assert 0 <= handset.last_accepted <= ble.MAX_MSG_ID


messages = st.one_of(
    st.builds(ble.Request, item_id=st.text(max_size=30)),
    st.builds(ble.Ack, ref=st.integers(-2**63, 2**64 - 1), ok=st.booleans(),
              reason=st.text(max_size=10)),
    st.builds(ble.Offer, offer_id=st.text(max_size=8), item_id=st.text(max_size=8),
              title=st.text(max_size=8), price_cents=st.integers(-2**63, 2**63 - 1),
              expires=st.floats()),
    st.builds(ble.OfferResponse, offer_id=st.text(max_size=8), accept=st.booleans(),
              signed=st.binary(max_size=16), signature=st.binary(max_size=64)),
    st.builds(ble.Bye, reason=st.text(max_size=10)),
)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=12)


@FUZZ
@given(st.one_of(
    st.binary(max_size=200),
    msgpack_values.map(msgspec.msgpack.encode),
    messages.map(ble.encode_message).flatmap(mutated),
))
def test_message_decoder_returns_a_message_that_round_trips_or_raises_frame_error(
        data: bytes) -> None:
    try:
        message = ble.decode_message(data)
    except ble.FrameError:
        return
    encoded = ble.encode_message(message)
    assert ble.encode_message(ble.decode_message(encoded)) == encoded


@FUZZ
@given(st.binary(max_size=120), st.integers(0, 0xFFFF))
def test_sealed_message_opener_raises_frame_error_on_any_bytes(data: bytes, msg_id: int) -> None:
    key = ble.direction_key(KEY, ble.Direction.NODE_TO_HANDSET)
    with pytest.raises(ble.FrameError):
        ble.open_sealed(key, ble.Direction.NODE_TO_HANDSET, msg_id, data)


@FUZZ
@given(st.binary(max_size=20))
def test_info_value_decodes_its_first_seven_bytes_or_raises_frame_error(data: bytes) -> None:
    try:
        info = ble.Info.decode(data)
    except ble.FrameError:
        assert len(data) < ble.INFO_FORMAT.size
        return
    assert info.encode() == data[:ble.INFO_FORMAT.size]


# =================================================================== NFC

T = 1_700_000_000
HUB = HubAuthority.from_seed(bytes(range(32)))
NODE_CREDS = make_node_credentials(HUB, "node-1", "hall-a", T + 3600,
                                   Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32),
                                   not_before=T - 86_400)
HANDSET_CREDS = make_handset_credentials(HUB, "h-42", T + 3600,
                                         Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32),
                                         not_before=T - 86_400)
BLE_ADDRESS = "C0:11:22:33:44:55"
VERDICTS = {"ok", "rejected_by_handset", "protocol_error", "stale", "malformed",
            "bad_signature", "revoked", "unknown_key_id", "unknown_issuer", "not_yet_valid",
            "expired_certificate"}
RECORDED_HELLO = nfc.NodeAuth(NODE_CREDS, clock=lambda: T).begin(
    nonce=bytes(16), ephemeral=X25519PrivateKey.from_private_bytes(bytes([3]) * 32)).hello_apdu()


def new_card() -> nfc.HandsetCard:
    return nfc.HandsetCard(HANDSET_CREDS, BLE_ADDRESS, 1, 0x0005, clock=lambda: T)


def node_auth() -> nfc.NodeAuth:
    return nfc.NodeAuth(NODE_CREDS, clock=lambda: T)


@FUZZ
@given(st.binary(max_size=300))
def test_command_apdus_parse_to_their_exact_bytes_or_raise_apdu_error(raw: bytes) -> None:
    try:
        cmd = nfc.parse_command_apdu(raw)
    except nfc.ApduError as exc:
        assert exc.sw in (nfc.SW.WRONG_LENGTH,)
        return
    assert cmd.encode(extended=len(raw) > 5 and raw[4] == 0) == raw


@FUZZ
@given(st.binary(max_size=400))
def test_nfc_message_decoders_raise_only_their_documented_errors(raw: bytes) -> None:
    for decode in (nfc.Hello.decode, nfc.AnswerPayload.decode):
        try:
            decoded = decode(raw)
        except nfc.ProtocolError as exc:
            assert exc.reason == "malformed"
            continue
        assert decoded.encoded == raw if isinstance(decoded, nfc.Hello) else decoded.encode() == raw
    try:
        cert = Certificate.decode(raw)
    except CertificateError as exc:
        assert exc.reason == "malformed"
    else:
        assert cert.encoded == raw
        with pytest.raises(CertificateError):  # nobody but the hub signs a certificate
            cert.verify(HUB.public_key_bytes, T)


@st.composite
def command_apdus(draw: st.DrawFn) -> bytes:
    """Garbage and near-miss command APDUs (never a HELLO the genuine node built now)."""
    how = draw(st.sampled_from(["bytes", "structured", "select", "recorded hello",
                                "mutated hello", "confirm guess"]))
    if how == "bytes":
        return draw(st.binary(max_size=300))
    if how == "select":
        return nfc.select_apdu()
    if how == "recorded hello":
        return RECORDED_HELLO
    if how == "mutated hello":
        return draw(mutated(RECORDED_HELLO))
    if how == "confirm guess":
        return nfc.confirm_apdu(draw(st.binary(min_size=32, max_size=32)))
    cmd = nfc.CommandApdu(
        draw(st.sampled_from([0x00, 0x80, 0xFF]) | st.integers(0, 255)),
        draw(st.sampled_from([nfc.INS_SELECT, nfc.INS_HELLO, nfc.INS_CONFIRM]) | st.integers(0, 255)),
        draw(st.sampled_from([0, 4]) | st.integers(0, 255)),
        draw(st.sampled_from([0, 0x0C]) | st.integers(0, 255)),
        draw(st.one_of(st.just(nfc.AID), st.binary(max_size=300), st.just(RECORDED_HELLO[7:-2]))),
        draw(st.none() | st.sampled_from([0, 1, 255, 256, 0xFFFF])))
    short_fits = len(cmd.data) <= 255
    return cmd.encode(extended=draw(st.none() | st.booleans()) if short_fits else True)


@FUZZ
@given(st.lists(command_apdus(), min_size=1, max_size=8))
def test_handset_card_answers_any_apdu_sequence_with_a_status_word_and_no_identity(
        apdus: list[bytes]) -> None:
    """No sequence without the genuine node's keys gets more than a SELECT answer, or a
    sealed answer to a replayed HELLO: never an internal error, never the handset's
    certificate, id or address in the clear, and never a session."""
    card = new_card()
    known = {sw.value for sw in nfc.SW} - {nfc.SW.INTERNAL.value}
    for apdu in apdus:
        answer = card.process_apdu(apdu)
        assert len(answer) >= 2
        assert struct.unpack(">H", answer[-2:])[0] in known, answer.hex()
        data = answer[:-2]
        assert HANDSET_CREDS.cert not in answer
        assert b"h-42" not in answer and bytes.fromhex(BLE_ADDRESS.replace(":", "")) not in answer
        if data and data != b"\x02":
            assert apdu_data_is(apdu, RECORDED_HELLO), "only a genuine HELLO gets an answer"
            assert len(data) == 1 + nfc.NONCE_LEN + nfc.X25519_LEN + len(nfc.AnswerPayload(
                HANDSET_CREDS.cert, bytes(6), 1, 5, bytes(64)).encode()) + 16
    assert card.session is None


def apdu_data_is(apdu: bytes, reference: bytes) -> bool:
    try:
        a, b = nfc.parse_command_apdu(apdu), nfc.parse_command_apdu(reference)
    except nfc.ApduError:
        return False
    return (a.cla, a.ins, a.p1, a.p2, a.data) == (b.cla, b.ins, b.p1, b.p2, b.data)


@FUZZ
@given(st.data())
def test_mutated_hello_is_refused_by_status_word_unless_unchanged(data: st.DataObject) -> None:
    hs = node_auth().begin()
    hello = hs.hello_apdu()
    apdu = data.draw(st.one_of(mutated(hello), st.just(hello)))
    card = new_card()
    assert card.process_apdu(hs.select_apdu()) == b"\x02\x90\x00"
    answer = card.process_apdu(apdu)
    if not apdu_data_is(apdu, hello):
        assert len(answer) == 2 and answer != nfc.SW.INTERNAL.wire
        assert card.process_apdu(hs.hello_apdu())[-2:] == b"\x90\x00"  # still usable
        answer = card.process_apdu(hs.hello_apdu())
    verdict = hs.check_answer(answer)
    assert verdict.ok, verdict.detail
    assert card.process_apdu(hs.confirm_apdu()) == b"\x90\x00" and card.session is not None


@FUZZ
@given(st.binary(max_size=400))
def test_node_turns_any_response_into_a_verdict(response: bytes) -> None:
    hs = node_auth().begin()
    for check in (hs.check_select, hs.check_confirm):
        verdict = check(response)
        assert verdict is None or verdict.reason == "protocol_error"
    verdict = hs.check_answer(response)
    assert verdict.reason in VERDICTS - {"ok"} and verdict.session is None


def rogue_answer(hs: nfc.NodeHandshake, plaintext: Callable[[bytes], bytes]) -> bytes:
    """A handset that runs the key exchange honestly and seals ``plaintext(th1)`` (what
    any phone can do): the node then parses attacker-chosen answer payload bytes."""
    eph = X25519PrivateKey.from_private_bytes(bytes([4]) * 32)
    eph_pub = eph.public_key().public_bytes_raw()
    node_eph = nfc.Hello.decode(hs.hello).ephemeral
    shared = eph.exchange(X25519PublicKey.from_public_bytes(node_eph))
    h_nonce = bytes(range(16, 32))
    th1 = nfc.transcript_hash_1(hs.hello, h_nonce, eph_pub)
    sealed = ChaCha20Poly1305(nfc.answer_key(shared, th1)).encrypt(
        nfc.AEAD_NONCE, plaintext(th1), th1)
    return bytes([nfc.PROTOCOL_VERSION]) + h_nonce + eph_pub + sealed + b"\x90\x00"


def genuine_payload(th1: bytes) -> bytes:
    payload = nfc.AnswerPayload(HANDSET_CREDS.cert, bytes.fromhex("C01122334455"), 1, 5)
    th2 = nfc.transcript_hash_2(th1, payload.signed_part())
    sig = HANDSET_CREDS.private_key.sign(nfc.CTX_ANSWER + th2)
    return payload.signed_part() + sig


@FUZZ
@given(st.data())
def test_node_refuses_a_sealed_answer_with_mutated_payload_unless_unchanged(
        data: st.DataObject) -> None:
    hs = node_auth().begin()
    unchanged: list[bool] = []

    def payload(th1: bytes) -> bytes:
        original = genuine_payload(th1)
        changed = data.draw(st.one_of(mutated(original), st.just(original)))
        unchanged.append(changed == original)
        return changed

    verdict = hs.check_answer(rogue_answer(hs, payload))
    assert verdict.reason in VERDICTS
    assert verdict.ok == unchanged[0], verdict.detail
    if verdict.ok:
        assert verdict.session is not None and verdict.session.handset_id == "h-42"


@FUZZ
@given(st.binary(max_size=300))
def test_node_refuses_any_sealed_answer_payload_with_a_verdict(plaintext: bytes) -> None:
    hs = node_auth().begin()
    verdict = hs.check_answer(rogue_answer(hs, lambda th1: plaintext))
    assert verdict.reason in VERDICTS - {"ok"}, verdict.detail


@FUZZ
@given(st.sampled_from([
    bytes(32), bytes([1]) + bytes(31), bytes([0xFF]) * 32,
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]) | st.binary(min_size=32, max_size=32))
def test_handset_answers_a_signed_hello_with_any_ephemeral_key_without_internal_error(
        ephemeral: bytes) -> None:
    """A genuine node's signature over a low-order or non-canonical X25519 point: the
    card refuses (6982) or answers, never fails inside."""
    body = nfc.encode_hello_body(NODE_CREDS.cert, bytes(16), ephemeral)
    hello = body + NODE_CREDS.private_key.sign(nfc.CTX_HELLO + body)
    card = new_card()
    card.process_apdu(nfc.select_apdu())
    answer = card.process_apdu(nfc.hello_apdu(hello))
    assert answer == nfc.SW.NODE_REJECTED.wire or answer.endswith(b"\x90\x00")
    assert HANDSET_CREDS.cert not in answer
