"""Hub ingest throughput with durable commits, as a ratio to the raw broker rate.

Both halves publish the same node-shaped traffic (QoS1 EventBatch JSON, batches of
--batch events) through the same Mosquitto:

* floor: a bare paho subscriber that only counts what arrives (broker -> paho rate);
* hub: the hub's Ingest, decoding, storing each (node_id, seq) once in SQLite
  transactions and publishing acks.

Events per second from the first publish to the last event received / stored.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path

from benchmarks.common import Progress, Result
from tapcast import config as cfg
from tapcast.mqttclient import make_client, parse_broker_url
from tapcast.protocol import mqtt as m
from hall.testing.mosquitto import Mosquitto

log = logging.getLogger(__name__)


def payloads(nodes: int, events: int, batch: int) -> list[tuple[str, bytes]]:
    """Node-shaped batches, interleaved across nodes as a hall's traffic is."""
    out = []
    per_node = events // nodes
    for start in range(0, per_node, batch):
        for n in range(nodes):
            node_id = f"bench-{n}"
            evs = [m.Event(id=uuid.uuid4().hex, seq=seq, kind="delivery", ts=time.time(),
                           data={"handset_id": "h1", "item_id": "welcome", "kind": "article",
                                 "bytes": 180})
                   for seq in range(start + 1, min(start + batch, per_node) + 1)]
            out.append((m.events_topic(node_id), m.encode(m.EventBatch(node_id, evs))))
    return out


def publish_all(url: str, batches: list[tuple[str, bytes]], progress: Progress) -> None:
    broker = parse_broker_url(url)
    pub = make_client(f"bench-pub-{uuid.uuid4().hex[:6]}")
    pub.max_inflight_messages_set(64)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        infos = []
        for topic, payload in batches:
            infos.append(pub.publish(topic, payload, qos=1))
            progress.step()
        for info in infos:
            info.wait_for_publish(30)
    finally:
        pub.loop_stop()
        pub.disconnect()


def raw_rate(url: str, batches: list[tuple[str, bytes]], batch: int, total: int) -> float:
    broker_url = parse_broker_url(url)
    done = threading.Event()
    ready = threading.Event()
    count = {"events": 0, "last": 0.0}
    sizes = {payload: payload.count(b'"seq"') for _, payload in batches}

    def on_message(client, userdata, msg):  # noqa: ANN001, ANN202
        count["events"] += sizes.get(msg.payload, batch)
        if count["events"] >= total:
            count["last"] = time.perf_counter()
            done.set()

    sub = make_client("bench-raw-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(m.HUB_SUBSCRIPTIONS[2], qos=1)
    sub.connect(broker_url.host, broker_url.port)
    sub.loop_start()
    try:
        if not ready.wait(10):
            raise RuntimeError("raw subscriber did not subscribe")
        progress = Progress("floor: broker -> bare paho", len(batches))
        t0 = time.perf_counter()
        publish_all(url, batches, progress)
        progress.close()
        if not done.wait(60):
            raise RuntimeError(f"raw subscriber got {count['events']}/{total} events")
        return total / (count["last"] - t0)
    finally:
        sub.loop_stop()
        sub.disconnect()


def hub_rate(url: str, batches: list[tuple[str, bytes]], total: int, workdir: Path) -> tuple[float, dict]:
    from hub.config import HubConfig
    from hub.db import open_db
    from hub.ingest import Ingest

    conf = cfg.load(HubConfig, data={"hub": {"database": str(workdir / "hub.db")},
                                         "mqtt": {"broker": url, "client_id": "bench-hub"}},
                    environ={})
    db = open_db(conf.hub.database)
    ingest = Ingest(conf, db)
    ingest.start(wait=10.0)
    try:
        progress = Progress("hub ingest (durable)", len(batches))
        t0 = time.perf_counter()
        publish_all(url, batches, progress)
        progress.close()
        if not ingest.wait_stored(total, timeout=120):
            raise RuntimeError(f"hub stored {ingest.counters.stored}/{total} events")
        elapsed = time.perf_counter() - t0
        stored = db.count_events()
        if stored != total:
            raise RuntimeError(f"hub database holds {stored} events, expected {total}")
        return total / elapsed, ingest.counters.snapshot()
    finally:
        ingest.stop()
        db.close()


def measure(events: int, batch: int, nodes: int) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mq") as broker:
        batches = payloads(nodes, events, batch)
        total = sum(p.count(b'"seq"') for _, p in batches)
        raw = raw_rate(broker.url, batches, batch, total)
        hub, counters = hub_rate(broker.url, batches, total, Path(tmp))
    return [Result(f"hub ingest, durable commits, {batch} events/message", "events/s", hub, raw,
                   ">= 0.60 of floor",
                   {"floor": "broker -> bare paho subscriber", "events": total, "batch": batch,
                    "nodes": nodes, "transactions": counters.get("transactions")})]


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200, help="events per MQTT message "
                        "(the node's default mqtt.batch_size)")
    parser.add_argument("--nodes", type=int, default=10)
    args = parser.parse_args(argv)
    return measure(args.events, args.batch, args.nodes)


if __name__ == "__main__":
    from benchmarks.common import table
    print(table(main()))
