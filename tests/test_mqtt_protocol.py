"""Test vectors for the MQTT payloads of docs/mqtt.md."""
from __future__ import annotations

import pytest

from tapcast.protocol import mqtt as m


def test_topics_follow_the_documented_layout() -> None:
    assert m.status_topic("hall-a_1") == "tapcast/v1/node/hall-a_1/status"
    assert m.events_topic("n1") == "tapcast/v1/node/n1/events"
    assert m.events_ack_topic("n1") == "tapcast/v1/node/n1/events/ack"
    assert m.parse_node_topic("tapcast/v1/node/n1/events/ack") == ("n1", "events/ack")


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x y"])
def test_node_ids_outside_the_alphabet_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        m.events_topic(bad)


SECRET = bytes(range(32))
KEY = m.stream_key(SECRET, "n1")


def batch(*seqs: int, low: int | None = None, node_id: str = "n1") -> m.EventBatch:
    return m.EventBatch(node_id=node_id, epoch="e1", low=low or seqs[0], first=seqs[0],
                        last=seqs[-1], events=[
                            m.Event(id=f"{s:032x}", seq=s, kind="tap", ts=1700000000.5)
                            for s in seqs])


def test_event_batch_vector_encodes_to_exact_bytes() -> None:
    b = m.EventBatch(node_id="n1", epoch="9f1c2a3b4d5e6f70", low=5, first=7, last=7, events=[
        m.Event(id="0f" * 16, seq=7, kind="tap", ts=1700000000.5, data={"port": 1})])
    assert m.encode(b) == (
        b'{"node_id":"n1","epoch":"9f1c2a3b4d5e6f70","low":5,"first":7,"last":7,'
        b'"events":[{"id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",'
        b'"seq":7,"kind":"tap","ts":1700000000.5,"data":{"port":1}}]}')
    assert m.decode_batch(m.encode(b), "n1") == b


def test_stream_key_vector() -> None:
    assert KEY.hex() == m.stream_key(SECRET, "n1").hex()
    assert KEY == __import__("hmac").digest(SECRET, b"tapcast/v1 stream key\x00n1", "sha256")
    assert m.stream_key(SECRET, "n2") != KEY


def test_sealed_ack_vector() -> None:
    sealed = m.seal_ack(KEY, "n1", m.EventAck(epoch="e1", seq=42, ts=1764000000.5))
    body = b'{"epoch":"e1","seq":42,"ts":1764000000.5}'
    tag = __import__("hmac").digest(
        KEY, b"tapcast/v1 events/ack\x00tapcast/v1/node/n1/events/ack\x00" + body, "sha256")[:16]
    assert sealed == b"t1." + tag.hex().encode() + b"." + body
    opened = m.open_sealed(KEY, m.ACK_CONTEXT, m.events_ack_topic("n1"), sealed)
    assert m.decode_ack(opened) == m.EventAck(epoch="e1", seq=42, ts=1764000000.5)


def test_sealed_batch_is_one_line_of_text() -> None:
    sealed = m.seal_batch(KEY, batch(1, 2))
    assert b"\n" not in sealed and sealed.isascii()


@pytest.mark.parametrize("tamper", [
    lambda p: p[:-2] + b"9}",  # body altered
    lambda p: p[:3] + (b"0" if p[3:4] != b"0" else b"1") + p[4:],  # tag altered
    lambda p: p[36:],  # tag stripped
    lambda p: b"t1." + b"zz" * 16 + p[35:],  # tag not hex
])
def test_an_altered_sealed_payload_is_refused_as_forged(tamper) -> None:  # type: ignore[no-untyped-def]
    sealed = m.seal_batch(KEY, batch(1, 2))
    with pytest.raises(m.ForgedError):
        m.open_sealed(KEY, m.BATCH_CONTEXT, m.events_topic("n1"), tamper(sealed))


def test_a_batch_sealed_for_one_node_does_not_open_under_another() -> None:
    sealed = m.seal_batch(m.stream_key(SECRET, "n2"), batch(1, node_id="n2"))
    with pytest.raises(m.ForgedError):
        m.open_sealed(KEY, m.BATCH_CONTEXT, m.events_topic("n1"), sealed)


def test_an_ack_cannot_be_replayed_as_a_batch() -> None:
    sealed = m.seal(KEY, m.ACK_CONTEXT, m.events_topic("n1"), b"{}")
    with pytest.raises(m.ForgedError):
        m.open_sealed(KEY, m.BATCH_CONTEXT, m.events_topic("n1"), sealed)


def test_oversized_payloads_are_refused_before_any_work() -> None:
    with pytest.raises(m.PayloadError, match="exceeds"):
        m.open_sealed(KEY, m.BATCH_CONTEXT, "t", b"t1." + b"0" * (m.MAX_PAYLOAD + 1))


HEAD = b'{"node_id":"n1","epoch":"e1","low":1,"first":1,"last":1,"events":'


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "malformed event batch"),
    (b'{"node_id":"n1"}', "epoch"),
    (HEAD + b'[{"id":"x","seq":0,"kind":"tap","ts":0}]}', "seq"),
    (HEAD + b'[{"id":"x","seq":18446744073709551616,"kind":"tap","ts":0}]}', "seq"),
    (HEAD + b'[{"id":"x","seq":1,"kind":"Tap!","ts":0}]}', "kind"),
    (HEAD + b'[{"id":"x","seq":1,"kind":"tap","ts":1e300}]}', "ts"),
    (HEAD + b'[{"id":"x","seq":1,"kind":"tap","ts":-1}]}', "ts"),
    (HEAD + b'[{"id":"x","seq":1,"kind":"tap","ts":0,"extra":1}]}', "extra"),
    (HEAD + b'[{"id":"x","seq":2,"kind":"tap","ts":0}]}', "outside 1..1"),
    (b'{"node_id":"n/1","epoch":"e1","low":1,"first":1,"last":1,"events":[]}', "node_id"),
    (b'{"node_id":"n1","epoch":"e1","low":3,"first":1,"last":1,"events":[]}', "low <= first"),
])
def test_malformed_batches_raise_payload_error_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(m.PayloadError, match=reason):
        m.decode_batch(payload)


def test_events_out_of_order_are_refused() -> None:
    b = m.encode(batch(1, 2))
    swapped = b.replace(b'"seq":1', b'"seq":9').replace(b'"seq":2', b'"seq":1').replace(b'"seq":9', b'"seq":2')
    with pytest.raises(m.PayloadError, match="out of order"):
        m.decode_batch(swapped)


def test_an_escaped_key_means_the_same_key() -> None:
    escaped = HEAD.replace(b'"low"', b'"l\\u006fw"') + b'[{"id":"x","seq":1,"kind":"tap","ts":0}]}'
    assert m.decode_batch(escaped).low == 1


def test_a_duplicate_key_decodes_to_one_value_the_hub_then_stores() -> None:
    dup = HEAD + b'[{"id":"x","seq":1,"seq":1,"kind":"tap","kind":"auth","ts":0}]}'
    assert m.decode_batch(dup).events[0].kind == "auth"  # one parse: what is stored is this


def test_unknown_event_kinds_decode_for_storage() -> None:
    newer = HEAD + b'[{"id":"x","seq":1,"kind":"impression","ts":0}]}'
    assert m.decode_batch(newer).events[0].kind == "impression"


def test_batch_published_under_another_node_id_is_refused() -> None:
    with pytest.raises(m.PayloadError, match="published under 'n2'"):
        m.decode_batch(m.encode(batch(1)), "n2")


def test_a_batch_header_reads_without_its_events() -> None:
    body = HEAD + b'"garbage"}'
    with pytest.raises(m.PayloadError):
        m.decode_batch(body, "n1")
    assert m.decode_batch_header(body, "n1") == m.BatchHeader("n1", "e1", 1, 1, 1)


def test_status_accepts_only_online_and_offline() -> None:
    assert m.decode_status(b"online") == "online"
    with pytest.raises(m.PayloadError):
        m.decode_status(b"maybe")


def test_documented_stream_key_and_sealed_ack_vectors_hold() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text(encoding="utf-8")
    vector_key = m.stream_key(bytes(range(32)), "hall-a-01")
    assert vector_key.hex() in doc
    sealed = m.seal_ack(vector_key, "hall-a-01", m.EventAck(epoch="9f1c2a3b4d5e6f70", seq=42, ts=1764000000.5))
    assert f"<!-- example: sealed-ack -->\n```\n{sealed.decode()}\n```" in doc
