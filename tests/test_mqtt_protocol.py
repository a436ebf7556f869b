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


def test_event_batch_vector_encodes_to_exact_bytes() -> None:
    batch = m.EventBatch(node_id="n1", events=[
        m.Event(id="0f" * 16, seq=7, kind="tap", ts=1700000000.5, data={"port": 1})])
    assert m.encode(batch) == (
        b'{"node_id":"n1","events":[{"id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",'
        b'"seq":7,"kind":"tap","ts":1700000000.5,"data":{"port":1}}]}')
    assert m.decode_batch(m.encode(batch), "n1") == batch


def test_ack_vector() -> None:
    assert m.encode(m.EventAck(seq=42)) == b'{"seq":42}'
    assert m.decode_ack(b'{"seq":42}').seq == 42


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "malformed event batch"),
    (b'{"node_id":"n1"}', "events"),
    (b'{"node_id":"n1","events":[{"id":"x","seq":1,"kind":"nope","ts":0}]}', "kind"),
    (b'{"node_id":"n1","events":[{"id":"x","seq":0,"kind":"tap","ts":0}]}', "seq 0"),
    (b'{"node_id":"n/1","events":[]}', "invalid node_id"),
])
def test_malformed_batches_raise_payload_error_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(m.PayloadError, match=reason):
        m.decode_batch(payload)


def test_batch_published_under_another_node_id_is_refused() -> None:
    payload = m.encode(m.EventBatch(node_id="n1", events=[]))
    with pytest.raises(m.PayloadError, match="published under 'n2'"):
        m.decode_batch(payload, "n2")


def test_status_accepts_only_online_and_offline() -> None:
    assert m.decode_status(b"online") == "online"
    with pytest.raises(m.PayloadError):
        m.decode_status(b"maybe")
