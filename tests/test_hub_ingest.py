"""Hub ingest against a real Mosquitto: authentic batches stored once and acked; forged,
injected and malformed ones refused and counted; authentic but undecodable ones
quarantined and acked past."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hall.testing.hub import hub_config as make_hub_config
from hall.testing.mosquitto import Mosquitto
from hall.testing.mqtt import NodePublisher, make_batch
from hub.config import HubConfig
from hub.db import HubDB
from hub.ingest import Ingest
from hub.ingest_writer import Outcome, WriterCore
from tapcast.protocol.mqtt import (BATCH_CONTEXT, MAX_PAYLOAD, NodeState, encode,
                                   events_ack_topic,
                                   events_topic, seal, seal_batch, state_topic, status_topic,
                                   stream_key)

TIMEOUT = 10.0


@pytest.fixture
def hub_config(mosquitto: Mosquitto, hub_database: str, tmp_path: Path) -> HubConfig:
    """On SQLite and on PostgreSQL (conftest's hub_database)."""
    conf = make_hub_config(hub_database, mosquitto.url, secret_dir=tmp_path)
    conf.mqtt.batch_size = 1000
    return conf


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
def pub(mosquitto: Mosquitto, hub_config: HubConfig) -> Iterator[NodePublisher]:
    p = NodePublisher(mosquitto.url, hub_config.hub.stream_secret)
    yield p
    p.close()


def sealed_body(pub: NodePublisher, node_id: str, body: bytes) -> bytes:
    """Any body, tagged with the node's own key: authentic, whatever it says."""
    return seal(pub.key(node_id), BATCH_CONTEXT, events_topic(node_id), body)


def test_published_batch_is_stored_and_acked_with_its_last_seq(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    pub.publish_batch(make_batch("n1", range(1, 51)))
    pub.ack_for("n1", 50)
    assert db.count_events() == 50
    assert ingest.counters.stored == 50


def test_resent_batch_is_not_stored_twice_but_acked_again(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    pub.publish_batch(make_batch("n1", range(1, 11)))
    pub.ack_for("n1", 10)
    pub.publish_batch(make_batch("n1", range(1, 11)))
    pub.ack_for("n1", 10)
    assert db.count_events() == 10
    assert ingest.wait_for(lambda c: c.duplicates == 10, TIMEOUT)


def test_ack_stops_at_a_gap_until_the_missing_batch_arrives(
        ingest: Ingest, pub: NodePublisher) -> None:
    pub.publish_batch(make_batch("n1", range(1, 6)))
    pub.ack_for("n1", 5)
    pub.publish_batch(make_batch("n1", range(8, 11), low=6))
    pub.ack_for("n1", 5)
    pub.publish_batch(make_batch("n1", [6, 7]))
    pub.ack_for("n1", 10)


def test_each_node_gets_its_own_ack(ingest: Ingest, pub: NodePublisher) -> None:
    pub.publish_batch(make_batch("a", range(1, 4)))
    pub.publish_batch(make_batch("b", range(1, 8)))
    pub.ack_for("a", 3)
    pub.ack_for("b", 7)


@pytest.mark.parametrize("topic,payload,why", [
    (state_topic("n1"), b'{"node_id": "n1"}', "state missing fields"),
    (state_topic("n1"), b'{"node_id":"n1","ts":1,"version":"1","zone":"z","uptime":1,'
                        b'"outbox_depth":18446744073709551616}', "state past 2^64"),
    (status_topic("n1"), b"maybe", "unknown status"),
])
def test_malformed_message_is_counted_and_ingest_keeps_storing(
        ingest: Ingest, pub: NodePublisher, db: HubDB, topic: str, payload: bytes,
        why: str) -> None:
    pub.publish(topic, payload)
    assert ingest.wait_for(lambda c: c.malformed == 1, TIMEOUT), why
    pub.publish_batch(make_batch("n1", [1, 2]))
    pub.ack_for("n1", 2)
    assert db.count_events() == 2


@pytest.mark.parametrize("payload,why", [
    (b"{not json", "not sealed at all"),
    (encode(make_batch("n1", [1])), "a well-formed batch without a tag"),
    (b"t1." + b"0" * 32 + b"." + encode(make_batch("n1", [1])), "a made-up tag"),
])
def test_a_batch_without_the_nodes_tag_is_refused_as_forged_and_not_stored(
        ingest: Ingest, pub: NodePublisher, db: HubDB, payload: bytes, why: str) -> None:
    pub.publish_events("n1", payload)
    assert ingest.wait_for(lambda c: c.forged == 1, TIMEOUT), why
    pub.publish_batch(make_batch("n1", [1, 2]))
    pub.ack_for("n1", 2)
    assert [e["id"] for e in db.list_events()[0]] == ["n1-e1-2", "n1-e1-1"]


def test_a_batch_injected_on_another_nodes_topic_is_refused_and_its_events_still_land(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    """A client holding n2's key publishes n2-tagged events on n1's topic: refused, so
    n1's genuine events with the same seqs are stored, not dropped as duplicates."""
    injected = make_batch("n1", [1, 2], epoch="e1")
    pub.publish_events("n1", seal_batch(stream_key(pub.secret, "n2"), injected))
    assert ingest.wait_for(lambda c: c.forged == 1, TIMEOUT)
    genuine = make_batch("n1", [1, 2], epoch="e1")
    pub.publish_batch(genuine)
    pub.ack_for("n1", 2)
    assert db.count_events() == 2 and ingest.counters.duplicates == 0


@pytest.mark.parametrize("body,why", [
    (b'{"node_id":"n1","epoch":"e1","low":1,"first":1,"last":1,"events":'
     b'[{"id":"a","seq":18446744073709551616,"kind":"tap","ts":1}]}', "seq past 2^64"),
    (b'{"node_id":"n1","epoch":"e1","low":1,"first":1,"last":1,"events":'
     b'[{"id":"a","seq":1,"kind":"tap","ts":1e300}]}', "ts out of range"),
    (b'{"node_id":"n1","epoch":"e1","low":1,"first":1,"last":1,"events":'
     b'[{"id":"a","seq":1,"kind":"tap","ts":1,"data":{},"more":1}]}', "unknown field"),
])
def test_an_authentic_batch_that_does_not_decode_is_quarantined_and_acked_past(
        ingest: Ingest, pub: NodePublisher, db: HubDB, body: bytes, why: str) -> None:
    pub.publish_events("n1", sealed_body(pub, "n1", body))
    pub.ack_for("n1", 1)  # past it: later events are not stuck behind it
    assert ingest.wait_for(lambda c: c.quarantined == 1, TIMEOUT), why
    assert db.count_events() == 0
    assert db.incident_totals()["quarantined_batches"] == 1
    pub.publish_batch(make_batch("n1", [2, 3]))
    pub.ack_for("n1", 3)


def test_duplicate_and_escaped_keys_store_exactly_the_values_validated(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    body = (b'{"node_id":"n1","epoch":"e1","low":1,"first":1,"last":2,"events":['
            b'{"id":"a","seq":5,"seq":1,"kind":"tap","ts":1},'
            b'{"id":"b","s\\u0065q":2,"kind":"auth","ts":2,"data":{"ok":true,"ok":false}}]}')
    pub.publish_events("n1", sealed_body(pub, "n1", body))
    pub.ack_for("n1", 2)
    events = {e["id"]: e for e in db.list_events()[0]}
    assert (events["a"]["seq"], events["b"]["seq"]) == (1, 2)
    assert events["b"]["data"] == {"ok": False}
    assert db.event_totals()["auth_ok"] == 0


def test_an_unknown_event_kind_is_stored(ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    pub.publish_batch(make_batch("n1", [1], kind="impression"))
    pub.ack_for("n1", 1)
    assert db.event_totals()["by_kind"] == {"impression": 1}


def test_hostile_input_costs_a_counter_and_a_few_log_lines_not_one_per_message(
        ingest: Ingest, pub: NodePublisher, db: HubDB, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hub")
    for i in range(200):
        pub.client.publish(events_topic("n1"), b"t1." + b"%032x" % i + b".{}", qos=1)
    pub.publish_batch(make_batch("n1", [1]))
    pub.ack_for("n1", 1)  # genuine traffic is not blocked behind the flood
    assert ingest.wait_for(lambda c: c.forged == 200, TIMEOUT)
    lines = [r for r in caplog.records if "not from that node" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    assert not any(r.exc_info for r in caplog.records)


def test_an_oversized_message_is_refused_as_malformed_and_genuine_traffic_goes_on(
        ingest: Ingest, pub: NodePublisher, db: HubDB) -> None:
    pub.client.publish(events_topic("n1"), b"t1." + b"0" * (MAX_PAYLOAD + 1), qos=1)
    pub.publish_batch(make_batch("n1", [1, 2]))
    pub.ack_for("n1", 2)
    assert ingest.wait_for(lambda c: c.malformed == 1, TIMEOUT)
    assert db.count_events() == 2


def test_message_on_an_unexpected_topic_under_the_subscription_is_malformed(
        ingest: Ingest, pub: NodePublisher) -> None:
    # "bad id!" fails the node id pattern; the '+' wildcard still delivers it.
    pub.publish("tapcast/v1/node/bad id!/events", encode(make_batch("n1", [1])))
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
    pub.publish_batch(make_batch("n1", [1]))
    pub.ack_for("n1", 1)
    mosquitto.restart()
    assert ingest.wait_for(lambda c: c.connects == 2, TIMEOUT), "ingest did not reconnect"
    again = NodePublisher(mosquitto.url, pub.secret)
    try:
        again.publish_batch(make_batch("n1", [2, 3]))
        again.ack_for("n1", 3)
    finally:
        again.close()
    assert db.count_events() == 3


def test_stop_stores_what_was_already_queued(
        hub_config: HubConfig, db: HubDB, pub: NodePublisher) -> None:
    running = Ingest(hub_config, db)
    running.start(wait=TIMEOUT)
    pub.publish_batch(make_batch("n1", range(1, 101)))
    assert running.wait_for(lambda c: c.received == 100, TIMEOUT)
    running.stop()
    assert db.count_events() == 100


def test_one_unstorable_message_does_not_sink_the_others_written_with_it(
        hub_config: HubConfig, db: HubDB) -> None:
    from tapcast.protocol.mqtt import Event, EventBatch

    core = WriterCore(hub_config, db)  # the writer's step alone, wherever it runs
    good = make_batch("n1", [1, 2])
    # Decodes, but its data cannot be stored: stands in for any message the store refuses.
    bad = EventBatch(node_id="n2", epoch="e1", low=1, first=1, last=1, events=[
        Event(id="x", seq=1, kind="tap", ts=1.0, data={"x": object()})])
    out = Outcome()
    core.write([("events", "n1", good, None), ("events", "n2", bad, None)], out)
    assert db.count_events() == 2 and db.acked_seq("n1") == 2
    assert (out.counts["write_errors"], out.counts["stored"]) == (1, 2)
    assert [topic for topic, _ in out.acks] == [events_ack_topic("n1")]


class EventWritesWait:
    """A HubDB whose event writes (any with batches) wait until the test opens the
    gate: an event writer stuck on a slow disk, a backlog queued behind it."""

    def __init__(self, db: HubDB) -> None:
        self.db = db
        self.gate = threading.Event()
        self.stuck = threading.Event()

    def write(self, batches: Any = (), **kwargs: Any) -> Any:
        if batches:
            self.stuck.set()
            # a bound for a broken test only: a loaded machine may take a while to
            # queue the backlog behind it
            assert self.gate.wait(120), "the test never opened the gate"
        return self.db.write(batches, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_status_and_state_are_stored_while_the_event_writer_is_stuck_behind_a_backlog(
        hub_config: HubConfig, db: HubDB, pub: NodePublisher) -> None:
    slow = EventWritesWait(db)
    # The event writer in a thread, so that it writes through the stuck store.
    running = Ingest(hub_config, slow, writer_process=False)  # type: ignore[arg-type]
    running.start(wait=TIMEOUT)
    try:
        pub.publish_batch(make_batch("n1", range(1, 6)))
        assert slow.stuck.wait(TIMEOUT)
        for first in range(6, 1006, 5):  # a backlog queued behind the stuck write
            pub.publish_batch(make_batch("n1", range(first, first + 5), low=1))
        assert running.wait_for(lambda c: c.messages == 201, TIMEOUT)
        state = NodeState(node_id="n1", ts=time.time(), version="2.0", zone="hall-b",
                          uptime=1.0, outbox_depth=1000)
        pub.publish(state_topic("n1"), encode(state), retain=True)
        pub.publish(status_topic("n1"), b"online", retain=True)

        def stored(_: object) -> bool:
            node = db.get_node("n1", stale_after=60)
            return node is not None and node["version"] == "2.0" \
                and node["reported_status"] == "online"

        assert running.wait_for(stored, TIMEOUT)
        assert db.count_events() == 0  # the events are still waiting
    finally:
        slow.gate.set()
    pub.wait_acked("n1", 1005)
    running.stop()
    assert db.count_events() == 1005
