"""Ingest that scales out: several ingest workers on an MQTT 5 shared subscription
($share/<group>/...) against a real Mosquitto, all writing one hub database.

What a SIGKILLed worker really costs (Mosquitto 2.0, measured here): the events it had
received (and PUBACKed) but not committed are gone from the broker, and while it is
down the broker keeps handing its persistent session a share of the new events. Two
things bring every event in, each stored once: the worker started again under its
number resumes its session (the queued share), and nodes re-send what is not acked
(the uplink's go-back-N after ``ack_timeout``; ``resend_unacked`` here plays it).

The database is conftest's ``hub_database``: each test runs on a SQLite file (WAL, the
workers writing it under its write lock) and on PostgreSQL (row locks on the streams)."""
from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hall.testing.hub import HubProcess, hub_config
from hall.testing.mosquitto import Mosquitto
from hall.testing.mqtt import NodePublisher, make_batch
from hub.config import HubConfig
from hub.db import HubDB, open_db
from hub.ingest import Ingest, client_id_for, subscriptions
from tapcast import config as cfg
from tapcast.protocol.mqtt import (NodeState, encode, events_topic, seal_batch, state_topic,
                                   status_topic)
from tapcast.streamkeys import STREAM_SECRET_FILE, write_stream_secret

TIMEOUT = 15.0


@pytest.fixture
def shared_config(mosquitto: Mosquitto, tmp_path: Path, hub_database: str) -> HubConfig:
    secret = tmp_path / "var" / STREAM_SECRET_FILE
    if not secret.exists():
        write_stream_secret(secret.parent)
    conf = hub_config(hub_database, mosquitto.url, stream_secret=str(secret))
    conf.mqtt.shared_group = "hub"
    return conf


@pytest.fixture
def db(shared_config: HubConfig) -> Iterator[HubDB]:
    store = open_db(shared_config.hub.database)
    yield store
    store.close()


@pytest.fixture
def pub(mosquitto: Mosquitto, shared_config: HubConfig) -> Iterator[NodePublisher]:
    p = NodePublisher(mosquitto.url, shared_config.hub.stream_secret, timeout=TIMEOUT)
    yield p
    p.close()


def test_shared_group_subscribes_events_shared_and_status_and_state_plainly(
        shared_config: HubConfig) -> None:
    assert subscriptions(shared_config) == [
        "tapcast/v1/node/+/status", "tapcast/v1/node/+/state",
        "$share/hub/tapcast/v1/node/+/events", "tapcast/v1/node/+/presence/offer",
        "tapcast/v1/node/+/presence/result"]
    assert [client_id_for(shared_config, k) for k in (1, 2)] == ["tapcast-hub-1",
                                                                 "tapcast-hub-2"]
    shared_config.mqtt.shared_group = ""
    assert client_id_for(shared_config, 1) == "tapcast-hub"


def test_two_workers_share_the_events_and_each_stores_every_status(
        shared_config: HubConfig, db: HubDB, pub: NodePublisher) -> None:
    workers = [Ingest(shared_config, db, worker=k) for k in (1, 2)]
    for w in workers:
        w.start(wait=TIMEOUT)
    try:
        nodes = [f"n{i}" for i in range(6)]
        for first in range(1, 101, 10):
            for node_id in nodes:
                pub.publish_batch(make_batch(node_id, range(first, first + 10), low=1))
        for node_id in nodes:
            pub.wait_acked(node_id, 100)
        assert db.count_events() == 600
        assert all(db.acked_seq(n) == 100 for n in nodes)
        got = [w.counters.received for w in workers]
        assert sum(got) == 600 and min(got) > 0, got  # each took a part, none twice
        state = NodeState(node_id="n0", ts=time.time(), version="3", zone="z", uptime=1.0,
                          outbox_depth=0)
        pub.publish(state_topic("n0"), encode(state))
        pub.publish(status_topic("n0"), b"online")
        for w in workers:  # not shared: both see both, in the node's order
            assert w.wait_for(lambda c: c.messages == c.received // 10 + 2, TIMEOUT)
    finally:
        for w in workers:
            w.stop()
    node = db.get_node("n0", stale_after=60)
    assert node is not None and node["version"] == "3" and node["reported_status"] == "online"


# --------------------------------------------------------------- processes


def write_config(tmp_path: Path, config: HubConfig, name: str = "hub.toml") -> Path:
    path = tmp_path / name
    path.write_text(cfg.dump(config))
    return path


class Acks:
    """The latest ack per node, watched as they arrive (no polling)."""

    def __init__(self, pub: NodePublisher) -> None:
        self.cond = threading.Condition()
        self.acked: dict[str, int] = {}
        inner = pub.client.on_message

        def on_message(client: object, userdata: object, msg: object) -> None:
            inner(client, userdata, msg)  # type: ignore[misc]
            with self.cond:
                for node_id, q in list(pub.acks.items()):
                    while True:
                        try:
                            seq = q.get_nowait()
                        except queue.Empty:
                            break
                        self.acked[node_id] = max(self.acked.get(node_id, 0), seq)
                self.cond.notify_all()

        pub.client.on_message = on_message

    def wait(self, predicate: Callable[[dict[str, int]], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.acked), timeout)


def publish_batches(pub: NodePublisher, nodes: list[str], start: int, stop: int,
                    per_batch: int) -> None:
    """Every node's batches of ``per_batch`` seqs from ``start`` below ``stop``, nodes
    interleaved, not waiting for each PUBACK (a node keeps several batches in flight)."""
    for first in range(start, stop, per_batch):
        for node_id in nodes:
            pub.client.publish(events_topic(node_id), seal_batch(
                pub.key(node_id), make_batch(node_id, range(first, first + per_batch), low=1)),
                qos=1)


def resend_unacked(pub: NodePublisher, acks: Acks, last: dict[str, int], per_batch: int,
                   ack_timeout: float = 1.0, timeout: float = 60.0) -> int:
    """What a node's uplink does: while its acks move, wait; when they stop short for
    ``ack_timeout``, publish again every batch above its latest ack (go-back-N). Until
    every node is acked to its last seq; returns how many batches were re-sent."""
    resent = 0
    deadline = time.monotonic() + timeout
    while True:
        with acks.cond:
            before = dict(acks.acked)
        if acks.wait(lambda a: a != before or all(a.get(n, 0) >= top for n, top in last.items()),
                     ack_timeout):
            if all(acks.acked.get(n, 0) >= top for n, top in last.items()):
                return resent
            continue
        assert time.monotonic() < deadline, f"never acked: {before} (of {last})"
        for node_id, top in last.items():
            seq = before.get(node_id, 0)
            for first in range(seq + 1, top + 1, per_batch):
                pub.publish_batch(make_batch(node_id, range(first, first + per_batch),
                                             low=seq + 1))
                resent += 1


@pytest.mark.slow
def test_a_worker_killed_mid_stream_loses_and_duplicates_nothing(
        mosquitto: Mosquitto, tmp_path: Path, shared_config: HubConfig,
        pub: NodePublisher) -> None:
    config = write_config(tmp_path, shared_config)
    nodes = [f"node-{i}" for i in range(8)]
    per_batch, batches = 50, 40
    last = {n: per_batch * batches for n in nodes}
    total = sum(last.values())
    with HubProcess("ingest", config, "--worker", "1") as one, \
            HubProcess("ingest", config, "--worker", "2") as two:
        one.wait_line("hub ingest subscribed at")
        two.wait_line("as 'tapcast-hub-2'")

        def publish(start: int, stop: int) -> None:
            publish_batches(pub, nodes, start, stop, per_batch)

        acks = Acks(pub)
        half = per_batch * batches // 2
        publish(1, half + 1)
        assert acks.wait(lambda a: a.get(nodes[0], 0) >= half // 2, TIMEOUT)  # both write
        rest = threading.Thread(target=publish, args=(half + 1, last[nodes[0]] + 1))
        rest.start()
        two.stop(signal.SIGKILL)  # mid-stream: batches in its queue, its socket, its session
        rest.join(TIMEOUT)
        assert not rest.is_alive()
        # Worker 1 alone cannot finish: the broker keeps giving the dead worker's session
        # a share of the events (they wait there), and what it had taken is gone.
        assert not acks.wait(lambda a: all(a.get(n, 0) >= top for n, top in last.items()),
                             1.0)
        with acks.cond:
            at_restart = sum(acks.acked.values())

        with HubProcess("ingest", config, "--worker", "2") as again:
            again.wait_line("as 'tapcast-hub-2'")  # resumes its session: its queued share
            resent = resend_unacked(pub, acks, last, per_batch)
            assert one.stop() == 0 and again.stop() == 0
        print(f"acked when worker 2 came back: {at_restart}/{total}; "
              f"batches the nodes re-sent (go-back-N, from each node's first gap): {resent}")

    store = open_db(shared_config.hub.database)
    try:
        assert store.count_events() == total  # none lost, none twice
        for node_id in nodes:
            assert store.acked_seq(node_id) == last[node_id]
            events, _ = store.list_events(node_id=node_id, limit=500)
            assert len({e["seq"] for e in events}) == len(events)
    finally:
        store.close()
    assert pub.forged_acks == 0


@pytest.mark.slow
def test_workers_option_forks_numbered_workers_and_starts_a_killed_one_again(
        mosquitto: Mosquitto, tmp_path: Path, shared_config: HubConfig,
        pub: NodePublisher) -> None:
    config = write_config(tmp_path, shared_config)
    with HubProcess("ingest", config, "--workers", "2") as hub:
        pids = hub.wait_line("hub ingest: 2 workers (pids ")
        hub.wait_line("as 'tapcast-hub-1'")
        hub.wait_line("as 'tapcast-hub-2'")
        first_pid, second_pid = (int(p) for p in pids.split("(pids ")[1].rstrip(")").split(", "))
        import os

        os.kill(second_pid, signal.SIGKILL)
        hub.wait_line("hub ingest worker 2 was killed by SIGKILL; starting it again")
        assert sum("as 'tapcast-hub-2'" in line for line in
                   [hub.wait_line("as 'tapcast-hub-2'")] + hub.stdout) >= 2
        for node_id in ("a", "b", "c"):
            for first in range(1, 41, 10):
                pub.publish_batch(make_batch(node_id, range(first, first + 10), low=1))
        for node_id in ("a", "b", "c"):
            pub.wait_acked(node_id, 40)
        assert hub.stop() == 0
        assert hub.stdout[-1] == "hub ingest stopped (SIGTERM): 2 workers"
        assert sum(line.startswith("hub ingest stopped (SIGTERM): ") for line in hub.stdout) == 3
        text = "\n".join(hub.stdout + hub.stderr)
        assert "Traceback" not in text, text


@pytest.mark.slow
def test_a_writer_process_killed_mid_stream_is_started_again_and_loses_and_duplicates_nothing(
        shared_config: HubConfig, db: HubDB, pub: NodePublisher) -> None:
    nodes = [f"node-{i}" for i in range(4)]
    per_batch, batches = 20, 30
    last = {n: per_batch * batches for n in nodes}
    running = Ingest(shared_config, db, writer_process=True)
    running.start(wait=TIMEOUT)
    try:
        acks = Acks(pub)
        first_writer = running.writer
        assert first_writer is not None

        publish_batches(pub, nodes, 1, per_batch * batches // 2 + 1, per_batch)
        assert running.wait_for(lambda c: c.transactions >= 1, TIMEOUT)
        first_writer.process.kill()  # SIGKILL, between or inside its transactions
        publish_batches(pub, nodes, per_batch * batches // 2 + 1, per_batch * batches + 1,
                        per_batch)
        resend_unacked(pub, acks, last, per_batch)
        assert running.writer is not first_writer and running.writer is not None
        assert running.writer.process.poll() is None  # the new one runs
        assert first_writer.failure == "exited with code -9"
    finally:
        running.stop()
    assert db.count_events() == sum(last.values())  # none lost, none twice
    for node_id in nodes:
        assert db.acked_seq(node_id) == last[node_id]
