"""Hub ingest against a real Mosquitto: batches stored once and acked, bad input dropped."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.db import HubDB
from hub.ingest import Ingest
from hub.config import HubConfig
from tapcast.config import load
from tapcast.protocol.mqtt import (Event, EventBatch, NodeState, encode,
                                   events_topic, state_topic, status_topic)
from hall.testing.mqtt import NodePublisher
from hall.testing.mosquitto import Mosquitto

TIMEOUT = 10.0


def _event(seq: int, kind: str = "tap", **data: object) -> Event:
    return Event(id=uuid.uuid4().hex, seq=seq, kind=kind, ts=1_700_000_000.0 + seq, data=data)


def _batch(node_id: str, seqs: range | list[int]) -> bytes:
    return encode(EventBatch(node_id=node_id, events=[_event(s) for s in seqs]))


@pytest.fixture
def hub_config(mosquitto: Mosquitto, tmp_path: Path) -> HubConfig:
    return load(HubConfig, data={"hub": {"database": str(tmp_path / "hub.db")},
                                 "mqtt": {"broker": mosquitto.url, "batch_size": 1000}},
                environ={})


@pytest.fixture
def db(hub_config: HubConfig) -> Iterator[HubDB]:
    store = HubDB(hub_config.hub.database)
    yield store
    store.close()


@pytest.fixture
def ingest(hub_config: HubConfig, db: HubDB) -> Iterator[Ingest]:
    running = Ingest(hub_config, db)
    running.start(wait=TIMEOUT)
    yield running
    running.stop()


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[NodePublisher]:
    p = NodePublisher(mosquitto.url)
    yield p
    p.close()


def test_published_batch_is_stored_and_acked_with_its_last_seq(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    pub.publish(events_topic("n1"), _batch("n1", range(1, 51)))
    pub.ack_for("n1", 50)
    assert db.count_events() == 50
    assert ingest.counters.stored == 50


def test_resent_batch_is_not_stored_twice_but_acked_again(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    pub.publish(events_topic("n1"), _batch("n1", range(1, 11)))
    pub.ack_for("n1", 10)
    pub.publish(events_topic("n1"), _batch("n1", range(1, 11)))
    pub.ack_for("n1", 10)
    assert db.count_events() == 10
    assert ingest.wait_for(lambda c: c.duplicates == 10, TIMEOUT)


def test_ack_stops_at_a_gap_until_the_missing_batch_arrives(
        ingest: Ingest, pub: NodePublisher) -> None:
    pub.publish(events_topic("n1"), _batch("n1", range(1, 6)))
    pub.ack_for("n1", 5)
    pub.publish(events_topic("n1"), _batch("n1", range(8, 11)))
    pub.ack_for("n1", 5)
    pub.publish(events_topic("n1"), _batch("n1", [6, 7]))
    pub.ack_for("n1", 10)


def test_each_node_gets_its_own_ack(ingest: Ingest, pub: NodePublisher) -> None:
    pub.publish(events_topic("a"), _batch("a", range(1, 4)))
    pub.publish(events_topic("b"), _batch("b", range(1, 8)))
    pub.ack_for("a", 3)
    pub.ack_for("b", 7)


@pytest.mark.parametrize("topic,payload,why", [
    (events_topic("n1"), b"{not json", "bad JSON"),
    (events_topic("n1"), b'{"node_id": "n1", "events": [{"seq": 1}]}', "wrong schema"),
    (events_topic("n1"), _batch("other", [1]), "node id mismatch"),
    (state_topic("n1"), b'{"node_id": "n1"}', "state missing fields"),
    (status_topic("n1"), b"maybe", "unknown status"),
])
def test_malformed_message_is_counted_and_ingest_keeps_storing(
        ingest: Ingest, pub: NodePublisher, db: HubDB, topic: str, payload: bytes,
        why: str) -> None:
    pub.publish(topic, payload)
    assert ingest.wait_for(lambda c: c.malformed == 1, TIMEOUT), why
    pub.publish(events_topic("n1"), _batch("n1", [1, 2]))
    pub.ack_for("n1", 2)
    assert db.count_events() == 2


def test_message_on_an_unexpected_topic_under_the_subscription_is_malformed(
        ingest: Ingest, pub: NodePublisher) -> None:
    # "bad id!" fails the node id pattern; the '+' wildcard still delivers it.
    pub.publish("tapcast/v1/node/bad id!/events", _batch("n1", [1]))
    assert ingest.wait_for(lambda c: c.malformed == 1, TIMEOUT)


def test_status_and_state_update_the_node_row(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    now = time.time()
    state = NodeState(node_id="n1", ts=now, version="1.2.3", zone="hall-a", uptime=5.0,
                      outbox_depth=7)
    pub.publish(status_topic("n1"), b"online", retain=True)
    pub.publish(state_topic("n1"), encode(state), retain=True)
    assert ingest.wait_for(lambda c: c.transactions >= 1, TIMEOUT)

    def node_complete(_: object) -> bool:
        node = db.get_node("n1", stale_after=60)
        return node is not None and node["version"] == "1.2.3" and node["reported_status"] == "online"

    assert ingest.wait_for(node_complete, TIMEOUT)
    node = db.get_node("n1", stale_after=60)
    assert node is not None
    assert (node["status"], node["zone"], node["outbox_depth"]) == ("online", "hall-a", 7)


def test_retained_state_from_long_ago_does_not_make_a_node_look_alive(
        hub_config: HubConfig, db: HubDB, pub: NodePublisher) -> None:
    old = NodeState(node_id="n1", ts=1_000.0, version="1", zone="z", uptime=1.0,
                    outbox_depth=0)
    pub.publish(status_topic("n1"), b"online", retain=True)
    pub.publish(state_topic("n1"), encode(old), retain=True)
    late = Ingest(hub_config, db)  # subscribes after the fact: gets the retained copies
    late.start(wait=TIMEOUT)
    try:
        assert late.wait_for(lambda c: c.messages >= 2 and c.transactions >= 1, TIMEOUT)
        assert late.wait_for(
            lambda c: (db.get_node("n1", stale_after=60) or {}).get("version") == "1", TIMEOUT)
        node = db.get_node("n1", stale_after=60)
        assert node is not None and node["status"] == "offline"
        assert node["last_seen"] == 1_000.0
    finally:
        late.stop()


def test_ingest_reconnects_and_keeps_storing_after_broker_restart(
        ingest: Ingest, pub: NodePublisher, mosquitto: Mosquitto, db: HubDB) -> None:
    pub.publish(events_topic("n1"), _batch("n1", [1]))
    pub.ack_for("n1", 1)
    mosquitto.restart()
    assert ingest.wait_for(lambda c: c.connects == 2, TIMEOUT), "ingest did not reconnect"
    again = NodePublisher(mosquitto.url)
    try:
        again.publish(events_topic("n1"), _batch("n1", [2, 3]))
        again.ack_for("n1", 3)
    finally:
        again.close()
    assert db.count_events() == 3


def test_stop_stores_what_was_already_queued(
        hub_config: HubConfig, db: HubDB, pub: NodePublisher) -> None:
    running = Ingest(hub_config, db)
    running.start(wait=TIMEOUT)
    pub.publish(events_topic("n1"), _batch("n1", range(1, 101)))
    assert running.wait_for(lambda c: c.received == 100, TIMEOUT)
    running.stop()
    assert db.count_events() == 100


def test_one_unstorable_message_does_not_sink_the_others_written_with_it(
        hub_config: HubConfig, db: HubDB) -> None:
    from hub.db import RawBatch

    ingest = Ingest(hub_config, db)  # not started: only its writer step is exercised
    good = RawBatch("n1", _batch("n1", [1, 2]).decode(), 2)
    # Passes no decode_batch (no "kind"), but stands in for any message SQLite refuses.
    bad = RawBatch("n2", '{"node_id": "n2", "events": [{"id": "x", "seq": 1, "ts": 1}]}', 1)
    ingest._write([("events", "n1", good, None), ("events", "n2", bad, None)])
    assert db.count_events() == 2 and db.acked_seq("n1") == 2
    assert (ingest.counters.write_errors, ingest.counters.stored) == (1, 2)
