"""Hub ingest throughput with durable commits, as a ratio to a bare subscriber's rate.

    .venv/bin/python -m benchmarks.bench_ingest            # 100k events, 5 and 200/message
    .venv/bin/python -m benchmarks.bench_ingest --quick    # smoke run, under a minute

Both sides are fed the same way (DESIGN.md, "Benchmarks"): the same node-shaped QoS1
``EventBatch`` messages (built with tapcast.protocol.mqtt), published by C publishers
in their own processes, ``mosquitto_pub -l`` per simulated node (one pre-encoded batch
per line, client id = node id, TCP_NODELAY, as a node's client), through a fresh
Mosquitto for each measurement, started only once the subscriber side is subscribed.
So neither side is limited by a Python publisher sharing its process or its GIL, which
is what the earlier floor measured. Unlike a node (which keeps at most 16 batches
unacked), a publisher does not wait for the side's acks: this measures how fast each
side takes events in, not a node's round trip.

* floor: a bare paho subscriber (``make_client``, persistent session, QoS1, the hub's
  HUB_SUBSCRIPTIONS) in a process of its own that decodes nothing and, as the hub does,
  publishes an ack (QoS1) on the node's ``events/ack`` topic, one per batch;
* product: the hub's ``hub.ingest.Ingest`` as shipped (default config) in a process of
  its own, writing a fresh SQLite database with durable commits and acking after each.

Events per second run from the first message the side receives to the last event it
received (floor) or stored (product). Measurements alternate floor and product over
--rounds rounds so drift hits both; each round gives a ratio and the figure is the
round with the median ratio.

Ack latency is what a side adds between a batch's arrival on its paho thread and its
ack being handed to paho (publish -> ack received cannot be seen from mosquitto_pub).
Flat out, that is mostly the wait behind the backlog the publishers dumped (it grows
with --events), so it is measured in a separate paced pass instead: the publishers are
fed one line at a time, all nodes interleaved, at --paced-load (default half) of the
product's median throughput, the same offered load for both sides.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from benchmarks.common import Progress, Result, percentile, sample_stats
from tapcast.protocol import mqtt as m

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MS = 1000.0
READY = "ready"
#: How often a side reports progress to the parent (a line on its stdout).
PROGRESS_EVERY = 0.25
#: QoS1 messages a publisher keeps awaiting the broker's PUBACK (paho's default).
INFLIGHT = 20
#: What the floor acks: each batch (the default: a node needs an answer to every
#: batch), or nothing. "none" is a diagnostic and a *slower* floor (59k vs 80k events/s
#: at 5 per message here): paho's loop_read reads max(1, own QoS>0 messages in flight)
#: packets per select(), so a client with no publishes of its own in flight pays one
#: select() per message received.
FLOOR_ACKS = ("batch", "none")
#: Where the product's event writer runs: a process of its own (as shipped, [mqtt]
#: writer_process = true) or a thread of the ingest's process (a diagnostic: the
#: difference is what the writer process buys).
WRITERS = ("process", "thread")
#: Wait after the publishers connected before releasing them (see wait_connected).
SETTLE = 0.15
#: How long the paced (latency) pass offers its load, seconds (--quick: a third).
PACED_SECONDS = 2.0
#: The stream secret of the benchmark's hub (its nodes' keys derive from it).
BENCH_SECRET = bytes(range(32))
#: What the floor puts in front of an ack so it has the size of the hub's sealed ack
#: (the floor computes no tag: that is the product's work).
FLOOR_ACK_PREFIX = b"t1." + b"0" * 32 + b"."


# ----------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """What the publishers send: one file per node, one encoded EventBatch a line."""

    nodes: int
    batch: int
    per_node: int  # events per node
    files: dict[str, Path]  # node id -> its lines

    @property
    def events(self) -> int:
        return self.per_node * self.nodes

    @property
    def messages_per_node(self) -> int:
        return -(-self.per_node // self.batch)

    @property
    def messages(self) -> int:
        return self.messages_per_node * self.nodes

    def last_seq(self, k: int) -> int:
        """The highest seq in a node's k-th (0-based) message: the ack that covers it."""
        return min((k + 1) * self.batch, self.per_node)


def build_workload(directory: Path, nodes: int, events: int, batch: int) -> Workload:
    """Node-shaped batches as a node's uplink seals them (tagged with the node's stream
    key from BENCH_SECRET): seq 1.. per node, uuid4 ids, a delivery event's data (the
    commonest kind). A sealed batch is one line of text, so each line is one message
    for ``mosquitto_pub -l``."""
    if events < nodes:
        raise ValueError(f"--events {events} is fewer than --nodes {nodes}")
    directory.mkdir(parents=True, exist_ok=True)
    per_node = events // nodes
    files = {}
    now = time.time()
    for n in range(nodes):
        node_id = f"bench-{n}"
        path = directory / f"{node_id}.jsonl"
        with path.open("wb") as out:
            for start in range(1, per_node + 1, batch):
                evs = [m.Event(id=uuid.uuid4().hex, seq=seq, kind="delivery",
                               ts=now + seq * 0.001,
                               data={"handset_id": "hs-7Qx2", "item_id": "welcome",
                                     "kind": "article", "bytes": 180})
                       for seq in range(start, min(start + batch, per_node + 1))]
                line = m.seal_batch(m.stream_key(BENCH_SECRET, node_id), m.EventBatch(
                    node_id=node_id, epoch="bench", low=1, first=evs[0].seq,
                    last=evs[-1].seq, events=evs))
                assert b"\n" not in line
                out.write(line + b"\n")
        files[node_id] = path
    return Workload(nodes, batch, per_node, files)


def find_mosquitto_pub() -> str:
    found = shutil.which("mosquitto_pub")
    if not found:
        raise RuntimeError("mosquitto_pub is not installed (Debian: apt-get install "
                           "mosquitto-clients); the ingest benchmark publishes with it")
    return found


class Publishers:
    """One ``mosquitto_pub -l`` per node (QoS1, one message per line of its stdin),
    all connected and idle before any sends: ``release`` feeds every stdin at once, so
    the measured window holds no process start-up or connect; or, with ``rate``, one
    line at a time on a schedule. Each exits 0 once all its lines are published and
    acked by the broker (it polls for that every 0.1 s)."""

    def __init__(self, port: int, workload: Workload, rate: float | None = None) -> None:
        exe = find_mosquitto_pub()
        self.node_ids = list(workload.files)
        self.data = {node_id: path.read_bytes() for node_id, path in workload.files.items()}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._gate = threading.Event()
        self._started = 0.0
        self._feeders: list[threading.Thread] = []
        for node_id in self.node_ids:
            self.procs.append(subprocess.Popen(
                [exe, "-h", "127.0.0.1", "-p", str(port), "-i", node_id, "-q", "1",
                 "-M", str(INFLIGHT), "--nodelay", "-t", m.events_topic(node_id), "-l"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        # Threads started now, waiting on the gate: releasing them takes microseconds.
        if rate is None:
            for proc, node_id in zip(self.procs, self.node_ids):
                self._feeders.append(threading.Thread(
                    target=self._feed, args=(proc, self.data[node_id]),
                    name=f"feed-{node_id}", daemon=True))
        else:
            self._feeders.append(threading.Thread(target=self._pace, args=(rate,),
                                                  name="feed-paced", daemon=True))
        for feeder in self._feeders:
            feeder.start()

    def _feed(self, proc: subprocess.Popen[bytes], data: bytes) -> None:
        self._gate.wait()
        assert proc.stdin is not None
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except (BrokenPipeError, ValueError):  # it died (wait() says why) or was closed
            pass

    def _pace(self, rate: float) -> None:
        """``rate`` messages per second in all, nodes taking turns (node k's i-th line
        is due at (i * nodes + k) / rate), each line written as it falls due."""
        lines = [self.data[node_id].splitlines(keepends=True) for node_id in self.node_ids]
        nodes = len(lines)
        schedule = sorted((i * nodes + k, k, line)
                          for k, node_lines in enumerate(lines)
                          for i, line in enumerate(node_lines))
        self._gate.wait()
        try:
            for slot, k, line in schedule:
                delay = self._started + slot / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                stdin = self.procs[k].stdin
                assert stdin is not None
                stdin.write(line)
                stdin.flush()
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    def wait_connected(self, broker_log: Path, timeout: float = 10.0) -> None:
        """Until the broker has logged every publisher's connection (log_type notice),
        and then SETTLE more: mosquitto_pub checks for its CONNACK every 0.1 s before it
        reads stdin, so one released too early starts up to 0.1 s after the others."""
        deadline = time.monotonic() + timeout
        wanted = {f" as {node_id} " for node_id in self.node_ids}
        while True:
            text = broker_log.read_text(errors="replace") if broker_log.exists() else ""
            if all(w in text for w in wanted):
                time.sleep(SETTLE)
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"mosquitto_pub exited {proc.returncode} before "
                                       f"publishing: {err.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"publishers not connected within {timeout} s")
            time.sleep(0.005)

    def release(self) -> float:
        """Let every publisher go; returns the moment they were let go."""
        self._started = time.monotonic()
        self._gate.set()
        return self._started

    def wait(self, timeout: float) -> float:
        """When the last publisher exited; RuntimeError if one failed."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError("mosquitto_pub did not finish") from None
        done = time.monotonic()
        for proc in self.procs:
            if proc.returncode != 0:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"mosquitto_pub exited {proc.returncode}: {err.strip()}")
        return done

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._gate.set()  # feeders still waiting write into a closed pipe and end
        for feeder in self._feeders:
            feeder.join(5)
        for proc in self.procs:
            for stream in (proc.stdin, proc.stderr):
                if stream is not None and not stream.closed:
                    try:
                        stream.close()
                    except BrokenPipeError:
                        pass


# ------------------------------------------------------------------ the two sides
# Each runs in a child process (``python -m benchmarks.bench_ingest side ...``) and
# talks to the parent in lines on stdout: "ready", "progress <events>", "result <json>".


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _report_progress(count: Callable[[], int], stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(PROGRESS_EVERY):
            _say(f"progress {count()}")

    thread = threading.Thread(target=loop, name="bench-progress", daemon=True)
    thread.start()
    return thread


def floor_side(url: str, workload: Workload, timeout: float,
               acks_mode: str = "batch") -> dict[str, Any]:
    """A bare subscriber that acks each batch: the hub's MQTT work with none of the
    hub (no decoding, no validation, no queue, no database). ``acks_mode="none"``
    leaves the acks out, to see what they cost."""
    from tapcast.mqttclient import make_client, parse_broker_url

    broker = parse_broker_url(url)
    expected = workload.messages
    subscribed, done = threading.Event(), threading.Event()
    latencies: list[float] = []
    acks: dict[str, int] = {}
    state: dict[str, Any] = {"count": 0, "first": None, "last": None}
    acking = acks_mode == "batch"

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        t = time.monotonic()
        topic = msg.topic
        seq = acks.get(topic, 0) + 1  # a number of the right size; nothing is decoded
        acks[topic] = seq
        if acking:
            client.publish(topic + "/ack", FLOOR_ACK_PREFIX + m.encode(
                m.EventAck(epoch="bench", seq=seq, ts=time.time())), qos=1)
        latencies.append(time.monotonic() - t)
        if state["first"] is None:
            state["first"] = t
        state["count"] += 1
        if state["count"] >= expected:
            state["last"] = time.monotonic()
            done.set()

    def on_subscribe(client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        subscribed.set()

    def on_connect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        client.subscribe([(topic, 1) for topic in m.HUB_SUBSCRIPTIONS])

    # A persistent session, as the hub's: the broker does the same bookkeeping for both.
    client = make_client(f"bench-floor-{uuid.uuid4().hex[:8]}", clean_session=False)
    client.on_message, client.on_subscribe, client.on_connect = \
        on_message, on_subscribe, on_connect
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    stop = threading.Event()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("the floor subscriber did not subscribe within 10 s")
        _say(READY)
        _report_progress(lambda: min(state["count"] * workload.batch, workload.events), stop)
        if not done.wait(timeout):
            raise RuntimeError(f"the floor received {state['count']}/{expected} messages "
                               f"in {timeout:.0f} s")
    finally:
        stop.set()
        client.loop_stop()
        client.disconnect()
    return {"first": state["first"], "last": state["last"], "events": workload.events,
            "latencies": latencies, "acks": sum(acks.values()) if acking else 0,
            "messages": state["count"]}


class _Probe:
    """Arrival and ack stamps inside the product's paho client: on_message and publish
    wrapped on the client object (two clock reads and an append per message, as the
    floor pays), so Ingest itself is untouched."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.arrivals: dict[str, list[float]] = defaultdict(list)  # events topic -> stamps
        self.acks: dict[str, list[tuple[float, int]]] = defaultdict(list)  # -> (stamp, seq)

    @classmethod
    def attach(cls, ingest: Any) -> _Probe | None:
        client = getattr(ingest, "_client", None)
        inner = getattr(client, "on_message", None)
        publish = getattr(client, "publish", None)
        if not callable(inner) or not callable(publish):
            log.warning("hub.ingest.Ingest has no paho client at ._client any more: "
                        "ack latency is not measured")
            return None
        probe = cls()

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            t = time.monotonic()
            if probe.first is None:
                probe.first = t
            probe.arrivals[msg.topic].append(t)
            inner(c, userdata, msg)

        def probed_publish(topic: str, payload: Any = None, qos: int = 0,
                           retain: bool = False, properties: Any = None) -> Any:
            info = publish(topic, payload, qos, retain, properties)
            if topic.endswith("/events/ack"):
                probe.acks[topic[:-4]].append(
                    (time.monotonic(), json.loads(payload.split(b".", 2)[2])["seq"]))
            return info

        client.on_message = on_message
        client.publish = probed_publish
        return probe

    def latencies(self, workload: Workload) -> tuple[list[float], int]:
        """Per batch: arrival -> the first ack covering its last seq was published; and
        how many batches no ack covered. A broker keeps one publisher's QoS1 messages
        in order, so a node's k-th arrival is its k-th line."""
        out: list[float] = []
        unmatched = 0
        for topic, arrivals in self.arrivals.items():
            acks = self.acks.get(topic, [])
            i = 0
            for k, arrived in enumerate(arrivals):
                need = workload.last_seq(k)
                while i < len(acks) and acks[i][1] < need:
                    i += 1
                if i == len(acks):
                    unmatched += len(arrivals) - k
                    break
                out.append(acks[i][0] - arrived)
        return out, unmatched


def product_side(url: str, workload: Workload, db_path: Path, timeout: float,
                 writer: str = "process") -> dict[str, Any]:
    """The hub's Ingest as shipped, into a fresh SQLite file; ``writer`` "thread": its
    event writer in a thread instead of a process of its own (``writer_process``)."""
    from hub.config import HubConfig
    from hub.db import open_db
    from hub.migrate import upgrade
    from hub.ingest import Ingest
    from tapcast import config as cfg

    secret = db_path.parent / "stream.secret"
    secret.write_text(BENCH_SECRET.hex() + "\n")
    conf = cfg.load(HubConfig, data={
        "hub": {"database": str(db_path), "stream_secret": str(secret)},
        "mqtt": {"broker": url, "client_id": f"bench-hub-{uuid.uuid4().hex[:8]}"}},
        environ={})
    upgrade(conf.hub.database, echo=lambda line: None)
    db = open_db(conf.hub.database)
    ingest = Ingest(conf, db, writer_process=writer == "process")
    probe = _Probe.attach(ingest)
    total = workload.events
    stop = threading.Event()
    try:
        ingest.start(wait=10.0)
        _say(READY)
        _report_progress(lambda: ingest.counters.stored, stop)
        first = None
        if probe is None:  # no stamps: see the first message in the counters instead
            deadline = time.monotonic() + timeout
            while ingest.counters.messages == 0 and time.monotonic() < deadline:
                time.sleep(0.0005)
            first = time.monotonic()
        if not ingest.wait_stored(total, timeout=timeout):
            raise RuntimeError(f"the hub stored {ingest.counters.stored}/{total} events "
                               f"in {timeout:.0f} s ({ingest.counters.snapshot()})")
        last = time.monotonic()
        stop.set()
        stored = db.count_events()
        if stored != total:
            raise RuntimeError(f"the hub's database holds {stored} events, expected {total}")
        counters = ingest.counters.snapshot()
    finally:
        stop.set()
        ingest.stop()
        db.close()
    latencies, unmatched = probe.latencies(workload) if probe else ([], 0)
    return {"first": probe.first if probe else first, "last": last, "events": total,
            "latencies": latencies, "unmatched": unmatched, "acks": counters["acks_sent"],
            "messages": counters["messages"], "counters": counters}


def side_main(argv: list[str]) -> None:
    """Entry of a side's child process."""
    parser = argparse.ArgumentParser(prog="bench_ingest side")
    parser.add_argument("side", choices=("floor", "product"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--workload", type=Path, required=True, help="its JSON description")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--floor-acks", choices=FLOOR_ACKS, default="batch")
    parser.add_argument("--writer", choices=WRITERS, default="process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(args.workload.read_text())
    workload = Workload(spec["nodes"], spec["batch"], spec["per_node"],
                        {k: Path(v) for k, v in spec["files"].items()})
    if args.side == "floor":
        result = floor_side(args.url, workload, args.timeout, args.floor_acks)
    else:
        result = product_side(args.url, workload, args.db, args.timeout, args.writer)
    _say("result " + json.dumps(result))


# ------------------------------------------------------------------------ parent


@dataclass
class Run:
    """One side measured once."""

    side: str
    rate: float  # events/s, first message received -> last event received / stored
    seconds: float
    start_lag: float  # publishers released -> the side's first message
    latencies: list[float]
    acks: int
    extra: dict[str, Any] = field(default_factory=dict)


def _lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n")


def _broker(workdir: Path) -> Any:
    from hall.testing.mosquitto import Mosquitto

    # log_type notice/subscribe: the broker logs each connection and subscription,
    # which says when publishers and the C subscriber are ready (nothing per message).
    return Mosquitto(workdir / "mosquitto", extra_conf="log_type notice\nlog_type subscribe\n")


def measure_side(side: str, workload: Workload, spec: Path, workdir: Path,
                 progress: Progress, timeout: float, floor_acks: str = "batch",
                 rate: float | None = None, writer: str = "process") -> Run:
    """A fresh broker, the side's process, then the publishers (flat out, or ``rate``
    messages/s in all); one Run."""
    workdir.mkdir(parents=True)
    with _broker(workdir) as broker:
        cmd = [sys.executable, "-m", "benchmarks.bench_ingest", "side", side,
               "--url", broker.url, "--workload", str(spec), "--timeout", str(timeout),
               "--floor-acks", floor_acks]
        if side == "product":
            cmd += ["--db", str(workdir / "hub.db"), "--writer", writer]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        watchdog = threading.Timer(timeout + 60, child.kill)
        watchdog.start()
        pubs: Publishers | None = None
        try:
            assert child.stdout is not None
            lines = _lines(child.stdout)
            if next(lines, None) != READY:
                raise RuntimeError(f"the {side} process did not get ready "
                                   f"(exit code {child.wait()})")
            pubs = Publishers(broker.port, workload, rate)
            pubs.wait_connected(broker.log_file)
            released = pubs.release()
            result = None
            seen = 0
            for line in lines:
                if line.startswith("progress "):
                    now = int(line.split()[1])
                    progress.step(max(0, now - seen))
                    seen = max(seen, now)
                elif line.startswith("result "):
                    result = json.loads(line[len("result "):])
            progress.step(max(0, workload.events - seen))
            if child.wait() != 0 or result is None:
                raise RuntimeError(f"the {side} process failed (exit code {child.returncode})")
            pubs.wait(30)
        finally:
            watchdog.cancel()
            if pubs is not None:
                pubs.close()
            if child.poll() is None:
                child.kill()
                child.wait()
    seconds = result["last"] - result["first"]
    extra = {k: result[k] for k in ("counters", "unmatched", "events") if k in result}
    return Run(side, result["events"] / seconds, seconds, result["first"] - released,
               result["latencies"], result["acks"], extra)


def measure_ceiling(workload: Workload, workdir: Path, timeout: float) -> float:
    """Events/s into a C subscriber (mosquitto_sub, QoS1, no acks) from the same
    publishers: what the broker and the publishers can do with no Python receiving.
    Context for the floor, not a floor: the product is a paho client, as the floor is."""
    exe = shutil.which("mosquitto_sub")
    if not exe:
        raise RuntimeError("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
    workdir.mkdir(parents=True)
    stamps = workdir / "stamps.txt"
    with _broker(workdir) as broker, stamps.open("w") as out:
        client_id = "bench-ceiling"
        sub = subprocess.Popen(
            [exe, "-h", "127.0.0.1", "-p", str(broker.port), "-i", client_id, "-q", "1",
             "-c", "--nodelay", "-C", str(workload.messages), "-F", "%U",
             *[arg for topic in m.HUB_SUBSCRIPTIONS for arg in ("-t", topic)]],
            stdout=out, stderr=subprocess.PIPE)
        pubs: Publishers | None = None
        try:
            deadline = time.monotonic() + 10
            while f"{client_id} 1 {m.HUB_SUBSCRIPTIONS[-1]}" not in (
                    broker.log_file.read_text(errors="replace")
                    if broker.log_file.exists() else ""):
                if time.monotonic() > deadline or sub.poll() is not None:
                    raise RuntimeError("mosquitto_sub did not subscribe")
                time.sleep(0.005)
            pubs = Publishers(broker.port, workload)
            pubs.wait_connected(broker.log_file)
            pubs.release()
            sub.wait(timeout)
            pubs.wait(30)
        finally:
            if pubs is not None:
                pubs.close()
            if sub.poll() is None:
                sub.kill()
                sub.wait()
            if sub.stderr:
                sub.stderr.close()
    times = [float(line) for line in stamps.read_text().split()]
    if len(times) != workload.messages:
        raise RuntimeError(f"mosquitto_sub got {len(times)}/{workload.messages} messages")
    return workload.events / (max(times) - min(times))


def _write_spec(path: Path, workload: Workload) -> Path:
    path.write_text(json.dumps({"nodes": workload.nodes, "batch": workload.batch,
                                "per_node": workload.per_node,
                                "files": {k: str(v) for k, v in workload.files.items()}}))
    return path


def measure(events: int, batch: int, nodes: int, rounds: int, floor_acks: str = "batch",
            paced_load: float = 0.5, paced_seconds: float = PACED_SECONDS,
            writer: str = "process") -> list[Result]:
    """``rounds`` floor/product pairs for one message shape, in alternating order, then
    one paced pair for the ack latency (``paced_load`` 0: none)."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workload = build_workload(Path(tmp) / "lines", nodes, events, batch)
        spec = _write_spec(Path(tmp) / "workload.json", workload)
        timeout = max(60.0, workload.events / 2000)
        ceiling = measure_ceiling(workload, Path(tmp) / "ceiling", timeout)
        progress = Progress(f"ingest {batch} ev/msg", 2 * rounds * workload.events)
        runs: list[tuple[Run, Run]] = []
        paced: tuple[Run, Run] | None = None
        offered = 0.0
        try:
            for r in range(rounds):
                order = ("floor", "product") if r % 2 == 0 else ("product", "floor")
                got: dict[str, Run] = {}
                for side in order:
                    progress.label = f"ingest {batch}/msg r{r + 1} {side}"
                    got[side] = measure_side(side, workload, spec, Path(tmp) / f"{r}-{side}",
                                             progress, timeout, floor_acks, writer=writer)
                runs.append((got["floor"], got["product"]))
            if paced_load > 0:
                offered = paced_load * statistics.median(p.rate for _, p in runs)
                paced_events = max(int(offered * paced_seconds), nodes * batch * 10)
                slow = build_workload(Path(tmp) / "paced", nodes, paced_events, batch)
                slow_spec = _write_spec(Path(tmp) / "paced.json", slow)
                progress.total += 2 * slow.events
                got = {}
                for side in ("floor", "product"):
                    progress.label = f"ingest {batch}/msg paced {side}"
                    got[side] = measure_side(side, slow, slow_spec, Path(tmp) / f"paced-{side}",
                                             progress, timeout, floor_acks,
                                             rate=offered / batch, writer=writer)
                paced = (got["floor"], got["product"])
        finally:
            progress.close()
        auth_s = auth_seconds_per_message(workload)
    results = _results(workload, runs, paced, offered)
    results[0].extra["floor_acks"] = floor_acks
    results[0].extra["writer"] = writer
    results[0].extra["c_subscriber"] = ceiling
    product_messages = statistics.median(p.rate for _, p in runs) / batch
    # The hub seals one ack per stream per transaction, not one per message: the
    # seal's cost is weighed by the acks the product actually sent.
    acks_per_message = statistics.median(p.acks for _, p in runs) / workload.messages
    check_s, seal_s = auth_s
    per_message = check_s + seal_s * acks_per_message
    results.append(Result(
        f"hub ingest: share of its time spent authenticating, {batch} events/message",
        "%", 100 * per_message * product_messages, None, "< 10%",
        {"auth_us_per_message": per_message * 1e6, "check_us": check_s * 1e6,
         "seal_us": seal_s * 1e6, "acks_per_message": acks_per_message,
         "product_messages_per_s": product_messages,
         "measured": "checking a batch's tag, plus tagging an ack times the acks the "
                     "product sent per message, on the workload's own messages, in this "
                     "process, times the product's median message rate"}))
    return results


def auth_seconds_per_message(workload: Workload, repeat: int = 3) -> tuple[float, float]:
    """What authentication costs the hub: (open_sealed per message: check the batch's
    tag, key derivation cached as the ingest caches it; seal_ack per ack: tag it),
    timed on the workload's own lines; the best of ``repeat`` passes each."""
    lines = [(node_id, line.rstrip(b"\n")) for node_id, path in workload.files.items()
             for line in path.read_bytes().splitlines(keepends=True)]
    keys = {node_id: m.stream_key(BENCH_SECRET, node_id) for node_id in workload.files}
    topics = {node_id: m.events_topic(node_id) for node_id in workload.files}
    ack = m.EventAck(epoch="bench", seq=1, ts=time.time())
    check = seal = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for node_id, line in lines:
            m.open_sealed(keys[node_id], m.BATCH_CONTEXT, topics[node_id], line)
        t1 = time.perf_counter()
        for node_id, _line in lines:
            m.seal_ack(keys[node_id], node_id, ack)
        t2 = time.perf_counter()
        check = min(check, (t1 - t0) / len(lines))
        seal = min(seal, (t2 - t1) / len(lines))
    return check, seal


def _latency_ms(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": percentile(samples, q) * MS for q in (50, 99)} if len(samples) >= 2 else {}


def _results(workload: Workload, runs: list[tuple[Run, Run]],
             paced: tuple[Run, Run] | None, offered: float) -> list[Result]:
    batch = workload.batch
    ratios = [p.rate / f.rate for f, p in runs]
    beaten = [i + 1 for i, ratio in enumerate(ratios) if ratio > 1]
    if beaten:
        log.warning("the hub beat its floor in round(s) %s at %d events/message: the "
                    "floor is wrong", beaten, batch)
    mid = ratios.index(statistics.median_low(ratios))  # the round the figure comes from
    floor, product = runs[mid]
    shape = "live" if batch < 50 else "backlog"
    rates = {
        "rounds": [{"floor": f.rate, "product": p.rate, "ratio": p.rate / f.rate,
                    "floor_seconds": f.seconds, "product_seconds": p.seconds,
                    "floor_start_lag": f.start_lag, "product_start_lag": p.start_lag,
                    "floor_acks": f.acks, "product_acks": p.acks,
                    "transactions": p.extra.get("counters", {}).get("transactions")}
                   for f, p in runs],
        "median_ratio": statistics.median(ratios),
        "median_floor": statistics.median(f.rate for f, _ in runs),
        "median_product": statistics.median(p.rate for _, p in runs),
        "figure_round": mid + 1,
        "events": workload.events, "batch": batch, "nodes": workload.nodes,
        "publishers": "mosquitto_pub -l -q 1, one process per node, released together",
        "floor": "bare paho subscriber in its own process, acks each batch (QoS1)",
        # flat out, arrival -> ack is mostly the wait behind the dumped backlog
        "saturated_latency_ms": _latency_ms([x for _, p in runs for x in p.latencies]),
        "floor_saturated_latency_ms": _latency_ms([x for f, _ in runs for x in f.latencies]),
    }
    results = [Result(f"hub ingest, durable commits, {batch} events/message ({shape})",
                      "events/s", product.rate, floor.rate, ">= 0.60 of floor", rates)]
    if paced is None:
        return results
    floor_lat, product_lat = paced[0].latencies, paced[1].latencies
    if len(product_lat) < 2 or len(floor_lat) < 2:
        log.warning("ack latency not measured (%d product samples)", len(product_lat))
        return results
    for q in (50, 99):
        extra: dict[str, Any] = {
            "n": len(product_lat), "floor_n": len(floor_lat),
            "offered_events_per_s": offered, "events": paced[1].extra.get("events"),
            "achieved_events_per_s": paced[1].rate, "floor_achieved_events_per_s": paced[0].rate,
            "unmatched": paced[1].extra.get("unmatched", 0),
            "measured": "batch arrival on the side's paho thread -> its ack handed to paho"}
        if q == 99:
            extra.update(sample_stats(product_lat, q, scale=MS))
            extra.update(sample_stats(floor_lat, q, scale=MS, prefix="floor_"))
        results.append(Result(
            f"hub ingest arrival -> ack p{q}, {batch} events/message, "
            f"{offered / 1000:.0f}k events/s offered", "ms", percentile(product_lat, q) * MS,
            percentile(floor_lat, q) * MS, "", extra))
    return results


def render(results: list[Result]) -> str:
    """Per shape: each round's floor, product and ratio, then the latency rows."""
    out = []
    for r in results:
        if "rounds" in r.extra and isinstance(r.extra["rounds"], list):
            out.append(f"{r.name}:")
            for i, row in enumerate(r.extra["rounds"], 1):
                out.append(f"  round {i}: floor {row['floor'] / 1000:7.1f}k  product "
                           f"{row['product'] / 1000:7.1f}k events/s  ratio {row['ratio']:.2f}"
                           f"   (windows {row['floor_seconds']:.2f}/"
                           f"{row['product_seconds']:.2f} s; acks "
                           f"{row['floor_acks']}/{row['product_acks']}; "
                           f"{row['transactions']} transactions)")
            out.append(f"  median: floor {r.extra['median_floor'] / 1000:.1f}k  product "
                       f"{r.extra['median_product'] / 1000:.1f}k events/s  ratio "
                       f"{r.extra['median_ratio']:.2f}   (hub's event writer: a "
                       f"{r.extra.get('writer', 'process')})")
            if "c_subscriber" in r.extra:
                out.append(f"  (same publishers into a C subscriber, mosquitto_sub: "
                           f"{r.extra['c_subscriber'] / 1000:.1f}k events/s)")
            sat, floor_sat = r.extra["saturated_latency_ms"], r.extra["floor_saturated_latency_ms"]
            if sat and floor_sat:
                out.append(f"  flat out, arrival -> ack p50/p99: product {sat['p50']:.1f}/"
                           f"{sat['p99']:.1f} ms, floor {floor_sat['p50']:.3f}/"
                           f"{floor_sat['p99']:.3f} ms (the backlog's wait, see the paced rows)")
        elif r.floor is None:  # a share, not a ratio
            out.append(f"{r.name}: {r.value:.2f} {r.unit} (target {r.target}; "
                       f"{r.extra['auth_us_per_message']:.2f} us per message: "
                       f"{r.extra['check_us']:.2f} us the check, "
                       f"{r.extra['seal_us']:.2f} us an ack x {r.extra['acks_per_message']:.3f})")
        else:
            line = f"{r.name}: {r.value:.2f} {r.unit} (n={r.extra.get('n')}"
            if "ci95" in r.extra:
                line += ", 95% CI {:.2f}-{:.2f}".format(*r.extra["ci95"])
            line += f")   floor {r.floor:.3f} {r.unit} (n={r.extra.get('floor_n')}"
            if "floor_ci95" in r.extra:
                line += ", 95% CI {:.3f}-{:.3f}".format(*r.extra["floor_ci95"])
            if "achieved_events_per_s" in r.extra and "ci95" in r.extra:
                line += (f"; received at {r.extra['floor_achieved_events_per_s'] / 1000:.1f}k"
                         f"/{r.extra['achieved_events_per_s'] / 1000:.1f}k events/s")
            out.append(line + ")")
    return "\n".join(out)


def default_events(batch: int, quick: bool = False) -> int:
    """Enough events that the floor's window is not a few scheduler ticks: at 200 per
    message the floor takes 100k events in about 0.07 s, so the backlog shape gets more."""
    return max(20_000, 400 * batch) if quick else max(100_000, 2_000 * batch)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None,
                        help="events per measurement (default: 100000, or 2000 per event "
                        "in a message if more; --quick: 20000, or 400 per event in a message)")
    parser.add_argument("--batch", default="5,200",
                        help="events per MQTT message, comma-separated for several shapes "
                        "(5: live traffic; 200: a node draining its backlog)")
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes (publishers)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="floor/product pairs per shape, alternating which goes first")
    parser.add_argument("--quick", action="store_true", help="a smoke run (20000 events)")
    parser.add_argument("--floor-acks", choices=FLOOR_ACKS, default="batch",
                        help="'none': a floor that acks nothing (a diagnostic: with paho "
                        "that floor is slower, see FLOOR_ACKS)")
    parser.add_argument("--writer", choices=WRITERS, default="process",
                        help="'thread': the hub's event writer in a thread of the ingest's "
                        "process, not a process of its own (a diagnostic)")
    parser.add_argument("--paced-load", type=float, default=0.5,
                        help="ack latency pass: offered load as a fraction of the product's "
                        "median throughput (0: skip it)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    results: list[Result] = []
    for batch in batches:
        events = args.events or default_events(batch, args.quick)
        results += measure(events, batch, args.nodes, args.rounds, args.floor_acks,
                           args.paced_load, PACED_SECONDS / 3 if args.quick else PACED_SECONDS,
                           args.writer)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["side"]:
        side_main(sys.argv[2:])
    else:
        from benchmarks.common import run_and_report

        run_and_report(main, render)
