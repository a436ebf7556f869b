"""Content sync: how fast a changed manifest reaches a fleet of nodes, how few bytes an
unchanged set moves again, and whether a node syncing keeps serving taps at its usual
latency (issue 8's targets; docs/performance.md, "Content sync").

    .venv/bin/python -m benchmarks.bench_content            # 100 nodes, about a minute
    .venv/bin/python -m benchmarks.bench_content --quick    # 20 nodes, a smoke run

Three parts, each a ratio to a floor measured in the same run:

* **Propagation.** A real Mosquitto, the hub in this process (web, ingest and its
  manifest publisher), and N simulated nodes: each is the node's own ContentSync with its
  own store, outbox and files on disk, fed by one MQTT connection subscribed to every
  node's manifest topic (as light as a node can be). After the first sync, one item's
  text changes; the figure is the time from that commit until every node runs the new
  manifest. Floor: the same broker handing N retained messages of the same size to the
  same subscriber. Most of the product is the publisher's check interval (2 s).
* **Bytes moved again.** In that change no file changed: what the nodes fetched over
  HTTP plus the manifests, against the manifests alone (the floor: what any sync must
  move); the target is that total's share of the sets the nodes hold.
* **Taps while syncing.** The virtual hall (real nfcpy and bumble), one node, taps while
  the node keeps syncing (one item's large file replaced again and again, each new
  manifest handed straight to it: downloading, hashing, swapping), against the same taps
  with the node idle (the floor). Tap to first item, p50 and p99, of the taps that
  overlapped a sync.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Progress, Result, percentile, run_and_report, sample_stats

TARGET_SECONDS = 10.0
PNG_HEAD = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                         "1f15c489")


def _png(n: int, size: int) -> bytes:
    """A file the hub takes as PNG (its bytes say so), ``size`` long, unique by ``n``."""
    body = n.to_bytes(4, "big") * ((size - len(PNG_HEAD)) // 4 + 1)
    return (PNG_HEAD + body)[:size]


class Fleet:
    """N simulated nodes: ContentSync instances behind one MQTT subscription."""

    def __init__(self, workdir: Path, hub: Any, n: int) -> None:
        from node.outbox import Outbox
        from node.store import ContentStore
        from node.sync import ContentSync
        from tapcast.keys import HubKeyring
        from tapcast.protocol.mqtt import stream_key

        self.applied: dict[str, float] = {}
        self.ids = [f"sim-{i:04d}" for i in range(n)]
        self.syncs: dict[str, Any] = {}
        self.stores: dict[str, Any] = {}
        keyring = HubKeyring([hub.authority.public_key_bytes])
        for node_id in self.ids:
            d = workdir / node_id
            d.mkdir(parents=True)
            store = ContentStore(d / "content.db")
            outbox = Outbox(d / "outbox.db")
            self.stores[node_id] = store
            self.syncs[node_id] = ContentSync(
                node_id, store, outbox, keyring, stream_key(hub.stream_secret, node_id),
                d / "files", clock=time.time, clock_trusted=lambda: True,
                on_event=lambda kind, n=node_id: self._event(n, kind))
        self.manifest_bytes = 0

    def _event(self, node_id: str, kind: str) -> None:
        if kind == "manifest_applied":
            self.applied[node_id] = time.monotonic()

    def subscribe(self, broker_url: str, loop: asyncio.AbstractEventLoop) -> Any:
        """One MQTT connection for the fleet: each manifest goes to its node's sync on
        the loop, as a node's uplink hands it over."""
        import paho.mqtt.client as mqtt

        from tapcast.mqttclient import parse_broker_url
        from tapcast.protocol.mqtt import parse_node_topic

        broker = parse_broker_url(broker_url)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-fleet")
        ready = threading.Event()

        def on_connect(c: Any, *_: Any) -> None:
            c.subscribe("tapcast/v1/node/+/manifest", qos=1)
            ready.set()

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            node_id, _ = parse_node_topic(msg.topic)
            sync = self.syncs.get(node_id)
            if sync is not None:
                self.manifest_bytes += len(msg.payload)
                loop.call_soon_threadsafe(sync.offer, bytes(msg.payload))

        client.on_connect = on_connect
        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the fleet's MQTT connection did not come up")
        return client

    def serials(self) -> dict[str, int]:
        return {n: s.content_serial() for n, s in self.stores.items()}

    def fetched(self) -> int:
        return sum(s.bytes_fetched for s in self.syncs.values())

    def set_bytes(self) -> int:
        total = 0
        for store in self.stores.values():
            for item in store.items():
                if item.file_sha256:
                    total += (store_path(store) / item.file_sha256).stat().st_size
        return total


def store_path(store: Any) -> Path:
    return Path(store.db.conn.execute("PRAGMA database_list").fetchone()[2]).parent / "files"


def broker_floor(broker_url: str, n: int, size: int) -> float:
    """Seconds for the broker to hand ``n`` retained messages of ``size`` bytes to one
    subscriber (published first, as the manifests are, then subscribed)."""
    import paho.mqtt.client as mqtt

    from tapcast.mqttclient import parse_broker_url

    broker = parse_broker_url(broker_url)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-floor-pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    payload = bytes(size)
    infos = [pub.publish(f"bench/floor/{i}", payload, qos=1, retain=True) for i in range(n)]
    for info in infos:
        info.wait_for_publish(10)
    got = threading.Event()
    count = [0]
    t0 = time.monotonic()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        count[0] += 1
        if count[0] == n:
            got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-floor-sub")
    sub.on_message = on_message
    sub.on_connect = lambda c, *a: c.subscribe("bench/floor/+", qos=1)
    t0 = time.monotonic()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    if not got.wait(30):
        raise RuntimeError(f"the broker floor got {count[0]} of {n} messages")
    elapsed = time.monotonic() - t0
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
    return elapsed


async def measure_propagation(nodes: int, files: int, file_size: int, texts: int,
                              workdir: Path) -> list[Result]:
    from hall.testing.hub import hub_config, serve
    from hall.testing.mosquitto import Mosquitto
    from hub import get_db
    from hub.accounts import Actor
    from hub.content import ItemInput, Targets
    from hub.content_api import library
    from tapcast.protocol.mqtt import NodeState

    broker = Mosquitto(workdir / "mosquitto", extra_conf="max_queued_messages 10000\n")
    broker.start()
    hub = serve(hub_config(workdir / "hub.db", broker.url, secret_dir=workdir),
                wait_ingest=10.0, publish_manifests=True)
    client = None
    fleet = None
    try:
        lib, cli = library(hub.app), Actor.cli()
        for i in range(files):
            stored = lib.store_file(io.BytesIO(_png(i, file_size)), "media")
            lib.create(cli, f"file-{i}", "media", ItemInput(f"File {i}", "", 0, stored,
                                                              f"f{i}.png"),
                       targets=Targets(everywhere=True))
        for i in range(texts):
            lib.create(cli, f"text-{i}", "article", ItemInput(f"Text {i}", "x" * 200),
                       targets=Targets(everywhere=True))
        fleet = Fleet(workdir / "fleet", hub, nodes)
        loop = asyncio.get_running_loop()
        client = fleet.subscribe(broker.url, loop)
        now = time.time()
        get_db(hub.app).write_batch([], states=[
            (n, NodeState(node_id=n, ts=now, version="bench", zone="hall", uptime=1.0,
                          outbox_depth=0), now) for n in fleet.ids])
        progress = Progress("content: first sync", nodes)
        while len(fleet.applied) < nodes:
            before = len(fleet.applied)
            await asyncio.sleep(0.05)  # the fleet's syncs run on this loop
            progress.step(len(fleet.applied) - before)
        progress.close()
        first_serials = fleet.serials()
        fetched_before = fleet.fetched()
        manifest_before = fleet.manifest_bytes
        fleet.applied.clear()
        t0 = time.monotonic()
        lib.revise(cli, "text-0", ItemInput(title="Text 0, changed"))
        deadline = t0 + 60
        while (len(fleet.applied) < nodes or any(
                s == first_serials[n] for n, s in fleet.serials().items())) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        delays = sorted(fleet.applied[n] - t0 for n in fleet.ids if n in fleet.applied)
        moved = (fleet.fetched() - fetched_before) + (fleet.manifest_bytes - manifest_before)
        set_bytes = fleet.set_bytes()
        manifest_bytes = fleet.manifest_bytes - manifest_before
        manifest_size = manifest_bytes // max(1, nodes)
        floor = broker_floor(broker.url, nodes, manifest_size)
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        if fleet is not None:
            for sync in fleet.syncs.values():
                await sync.close()
        hub.shutdown()
        broker.stop()
    reached = len(delays)
    last = delays[-1] if delays else float("inf")
    return [
        Result(f"content: a changed manifest runs on all {nodes} nodes", "s", last, floor,
               f"< {TARGET_SECONDS:.0f} s", extra={
                   "n": reached, "p50_s": statistics.median(delays) if delays else None,
                   "nodes_reached": reached, "floor_what": "broker: retained to subscriber"}),
        # Floor: the manifests alone, what any sync must move to learn that nothing
        # else changed; the target is the share of the set the nodes hold.
        Result("content: bytes moved to re-sync an unchanged file set", "bytes",
               moved, max(1, manifest_bytes), "< 1% of the set",
               extra={"moved_bytes": moved, "set_bytes": set_bytes,
                      "share_of_set_pct": 100.0 * moved / max(1, set_bytes),
                      "manifest_bytes_per_node": manifest_size}),
    ]


async def measure_taps_while_syncing(taps: int, file_size: int, workdir: Path,
                                     cycles: int = 60) -> list[Result]:
    """Taps at one node of the virtual hall, first idle, then while it keeps syncing:
    ``cycles`` signed manifests, each replacing one item's ``file_size`` file, handed
    to the node one after the other (no publisher interval in between), so the node is
    downloading, hashing or swapping through the second phase."""
    from hall.testing.hub import HubProcess, hub_config
    from hall.testing.mosquitto import Mosquitto, free_port
    from hall.virtual import VirtualHall
    from hub.accounts import Actor
    from hub.content import ContentLibrary, ItemInput, Targets
    from hub.db import HubDB
    from hub.files import FileStore
    from hub.manifests import ManifestPublisher
    from tapcast import config as cfg
    from tapcast.keys import HubAuthority
    from tapcast.protocol.mqtt import NodeState
    from tapcast.streamkeys import load_stream_secret

    broker = Mosquitto(workdir / "mosquitto-taps")
    broker.start()
    # The hub's web in a process of its own, as on a real hub box: the node's downloads
    # cost the hub's interpreter, not the node's.
    port = free_port()
    config = hub_config(workdir / "hub-taps.db", broker.url, secret_dir=workdir / "keys",
                        port=port, public_url=f"http://127.0.0.1:{port}")
    config_path = workdir / "hub-taps.toml"
    config_path.write_text(cfg.dump(config))
    web = HubProcess("web", config_path, "--workers", "1")
    web.wait_line("hub web", 30)
    db = HubDB(config.hub.database)
    authority = HubAuthority.load_key_file(config.hub.signing_key)
    lib = ContentLibrary(db.engine, FileStore(config.hub.files), max_file_size=2**31)
    cli = Actor.cli()
    hall = VirtualHall(workdir / "hall", broker.url, nodes=1, handsets=1, hold_off=0.0,
                       processes=False,
                       stream_secret=load_stream_secret(config.hub.stream_secret),
                       authority=authority)
    sent: dict[str, bytes] = {}
    publisher = ManifestPublisher(config, db.engine, authority,
                                  lambda topic, payload: sent.__setitem__(topic, payload)
                                  or True)
    busy: list[tuple[float, float]] = []
    stop = asyncio.Event()
    try:
        await hall.start()
        node, phone = hall.nodes[0], hall.handsets[0]
        daemon = node.daemon
        assert daemon is not None
        now = time.time()
        db.write_batch([], states=[(node.node_id, NodeState(
            node_id=node.node_id, ts=now, version="bench", zone=node.zone, uptime=1.0,
            outbox_depth=0), now)])
        stored = lib.store_file(io.BytesIO(_png(0, file_size)), "media")
        lib.create(cli, "big", "media", ItemInput("Big", "", 0, stored, "b.png"),
                   targets=Targets(everywhere=True))

        def signed_manifest() -> bytes:
            sent.clear()
            publisher.tick()
            (payload,) = sent.values()
            return payload

        async def apply(payload: bytes) -> None:
            serial_before = daemon.store.content_serial()
            daemon.sync.offer(payload)
            await daemon.sync.wait_for(lambda: daemon.store.content_serial() != serial_before,
                                       60)

        await apply(signed_manifest())
        # Every manifest of the second phase signed now, so the hub's side (storing
        # files, signing) costs nothing while the taps run: three files in turn, so
        # each manifest names one the node no longer holds and must download.
        files = [lib.store_file(io.BytesIO(_png(k, file_size)), "media") for k in (1, 2, 3)]
        manifests = []
        for k in range(cycles):
            lib.revise(cli, "big", ItemInput(file=files[k % 3], file_name=f"b{k % 3}.png"))
            manifests.append(signed_manifest())

        async def churn() -> None:
            for payload in manifests:
                if stop.is_set():
                    return
                t0 = time.monotonic()
                await apply(payload)
                busy.append((t0, time.monotonic()))

        async def tap_times(label: str, n: int) -> list[tuple[float, float, float]]:
            out = []
            progress = Progress(label, n)
            for _ in range(n):
                report = await hall.tap(phone, node, extra_requests=0)
                if report.ok and report.first_item_at is not None:
                    out.append((report.started, report.first_item_at,
                                report.first_item_at - report.started))
                progress.step()
            progress.close()
            return out

        idle = [t[2] for t in await tap_times("content: taps, node idle", taps)]
        churning = asyncio.create_task(churn())
        during = await tap_times("content: taps while syncing", taps)
        stop.set()
        await churning
    finally:
        stop.set()
        await hall.stop()
        web.stop()
        db.close()
        broker.stop()
    # Only the taps that overlapped a sync (one published, fetched, checked, swapped).
    syncing = [d for start, first, d in during
               if any(s <= first and start <= e for s, e in busy)]
    if len(idle) < 2 or len(syncing) < 2:
        raise RuntimeError(f"too few taps to compare: {len(idle)} idle, {len(syncing)} "
                           "while syncing")
    results = []
    for q in (50, 99):
        results.append(Result(
            f"content: tap to first item while the node syncs, p{q}", "ms",
            percentile(syncing, q) * 1000, percentile(idle, q) * 1000,
            "about 1x (its usual latency)",
            extra={**sample_stats(syncing, q, scale=1000),
                   **sample_stats(idle, q, scale=1000, prefix="floor_"),
                   "syncs": len(busy), "file_bytes": file_size,
                   "taps_overlapping_a_sync": f"{len(syncing)}/{len(during)}"}))
    return results


def render(results: list[Result]) -> str:
    lines = []
    for r in results:
        ratio = f" ({r.ratio:.1f}x its floor)" if r.ratio else ""
        lines.append(f"{r.name}: {r.value:.2f} {r.unit}{ratio}  target {r.target}  "
                     f"{ {k: v for k, v in r.extra.items() if not k.endswith('ci95')} }")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--files", type=int, default=3, help="files in every node's set")
    parser.add_argument("--file-kb", type=int, default=500,
                        help="size of each file in the set, KB (500: a typical hall photo)")
    parser.add_argument("--texts", type=int, default=10, help="text items in the set")
    parser.add_argument("--taps", type=int, default=40, help="taps per phase")
    parser.add_argument("--sync-mb", type=int, default=20,
                        help="size of the file the tapped node keeps re-downloading, MB")
    parser.add_argument("--quick", action="store_true", help="20 nodes, fewer taps")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.taps, args.sync_mb = 20, 10, 8
    with tempfile.TemporaryDirectory(prefix="bench-content-") as tmp:
        work = Path(tmp)
        results = asyncio.run(measure_propagation(args.nodes, args.files,
                                                  args.file_kb * 1024, args.texts, work))
        results += asyncio.run(measure_taps_while_syncing(
            args.taps, args.sync_mb * 1024 * 1024, work))
    return results


if __name__ == "__main__":
    run_and_report(main, render)
