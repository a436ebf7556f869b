"""A fleet of nodes on one hub: status lag, ack latency, hub memory and CPU (issue 7).

    .venv/bin/python -m benchmarks.bench_fleet                        # 10,000 nodes, SQLite
    .venv/bin/python -m benchmarks.bench_fleet --quick                # 500 nodes, 30 s
    .venv/bin/python -m benchmarks.bench_fleet --database postgresql  # a throwaway database
    .venv/bin/python -m benchmarks.bench_fleet --ingest-processes 2   # needs a shared subscription

One asyncio process simulates the whole fleet, each node as light as a node can be and
still speak real MQTT: a paho-mqtt client per node (client id = node id, MQTT 3.1.1,
TCP_NODELAY, keepalive 30 s, built by ``tapcast.mqttclient.make_client`` as the node's
uplink builds it) driven from the asyncio loop in paho's external-loop mode, as
``node.uplink`` drives its one client: no thread per node, one socket per node. Each
node, as ``node/uplink.py`` and ``node/daemon.py`` do:

* connects with a last will (``status`` = ``offline``, QoS1, retained), subscribes to
  its ``events/ack`` (QoS1), publishes ``status`` = ``online`` (retained) and its
  ``state`` (a ``NodeState``, retained);
* publishes its ``state`` again every ``--heartbeat`` seconds (first one at a random
  phase, as nodes booted at random times do);
* taps at random (Poisson, on average once every ``--tap-interval`` seconds per node):
  a tap is the batches a node's outbox sends for it, sealed with the node's stream key:
  ``[tap, auth]`` at once, ``[delivery]`` (the featured item) 0.08 s later and, for
  half the customers, ``[request, delivery]`` 1.5 s later: 4 events in 2.5 batches on
  average;
* takes an ack only when its tag verifies under its stream key and it names its epoch
  (as the uplink does) and times every batch from its publish to the first authentic
  ack covering it (the *ack latency*).

Nodes connect at a bounded rate (``--connect-rate``); the measured window
(``--duration``) starts once all are connected. Then traffic stops and the benchmark
waits (``--drain``) for every batch sent to be acked and every sampled state to reach
the hub: a batch never acked, or a state never seen, is counted and reported.

*Status lag* is the time from a node's ``state`` publish until the hub's database
holds that state (or a newer one): a thread reads ``SELECT node_id, state FROM nodes``
for ``--sample-nodes`` nodes every ``--poll`` seconds (read only, through SQLAlchemy,
SQLite or PostgreSQL) and matches the state's ``ts`` with what each node published. A
figure is an upper bound: the end of the first query that saw the state, so it is late
by up to one poll interval plus a query.

The hub is the real thing: ``tapcast hub ingest`` processes (``hall.testing.hub.
HubProcess``), its database initialised by the hub's own command; their memory (RSS,
the maximum over the whole run) and CPU (over the measured window) are read with
psutil, as are the broker's and the simulator's. The broker is Mosquitto
(``hall.testing.mosquitto``) with this process's open-file limit raised to its hard
limit, which the broker inherits (one descriptor per connection).

The floor (DESIGN.md, "Benchmarks"): the same fleet, the same seed, against a bare
subscriber in its own process that decodes nothing and acks each batch with an ack of
the sealed ack's size (``bench_ingest``'s floor, run for a duration), and reports
when it received the sampled nodes' states. The floor's status lag is receipt at a
subscriber, the product's is visibility in the database, so the floor shows what the
broker and the simulator add, not the same quantity polled. The figures that matter
here are absolute targets (10,000 nodes on one hub: status lag p99 < 2 s, ack p99 <
250 ms, hub RSS < 500 MB), reported, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Result, percentile, sample_stats
from tapcast.protocol import mqtt as m

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MS = 1000.0
MB = 1024 * 1024
NODE_PREFIX = "fleet-"
#: The stream secret of the benchmark's hub: every node's key derives from it.
BENCH_SECRET = bytes(range(32))
#: The server used for ``--database postgresql``; the benchmark makes its own database.
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: What a tap sends, as (delay after the tap in s, event kinds of one batch, probability):
#: the node records tap + auth together, the featured item's delivery after the BLE
#: push (~80 ms, docs/performance.md), and a requested item for some customers.
TAP_SHAPE: tuple[tuple[float, tuple[str, ...], float], ...] = (
    (0.0, ("tap", "auth"), 1.0),
    (0.08, ("delivery",), 1.0),
    (1.5, ("request", "delivery"), 0.5),
)
#: How often paho's loop_misc (keepalive pings) runs for every node, in slices.
MISC_PERIOD = 1.0
MISC_SLICES = 10
#: Period of the event-loop lag probe (the simulator's own health).
LAG_PROBE = 0.05
#: The floor's ack: the sealed ack's size, no tag computed (bench_ingest's floor).
FLOOR_ACK_PREFIX = b"t1." + b"0" * 32 + b"."
#: Memory and CPU samples, seconds apart.
MONITOR_PERIOD = 0.5


def node_name(i: int) -> str:
    return f"{NODE_PREFIX}{i:05d}"


# ------------------------------------------------------------------ pure helpers


def sample_indices(nodes: int, k: int) -> list[int]:
    """``k`` node indices spread evenly over ``0..nodes-1`` (all of them if k >= nodes)."""
    if k >= nodes:
        return list(range(nodes))
    if k <= 0:
        return []
    return sorted({(i * nodes) // k for i in range(k)})


def tap_batches(rng: random.Random) -> list[tuple[float, tuple[str, ...]]]:
    """One tap's batches, as (delay in s, event kinds), drawn from TAP_SHAPE."""
    return [(delay, kinds) for delay, kinds, p in TAP_SHAPE if p >= 1.0 or rng.random() < p]


def mean_tap_events() -> float:
    return sum(len(kinds) * p for _, kinds, p in TAP_SHAPE)


def mean_tap_batches() -> float:
    return sum(p for _, _, p in TAP_SHAPE)


def settle_acks(pending: collections.deque[tuple[int, float, bool]], seq: int,
                now: float) -> list[tuple[float, bool]]:
    """A node's batches awaiting an ack, oldest first, as (last seq, publish time,
    in the measured window): an ack of ``seq`` covers every one with last <= seq. Pops
    them; their (latency, in window)."""
    out = []
    while pending and pending[0][0] <= seq:
        _, sent, in_window = pending.popleft()
        out.append((now - sent, in_window))
    return out


def settle_states(pending: collections.deque[float], seen_ts: float,
                  observed: float) -> list[tuple[float, float]]:
    """A node's published state timestamps not yet seen at the hub, oldest first: a
    stored state with ``seen_ts`` shows the hub has every one published at or before it
    (a newer state replaces an older one). Pops them; their (ts, observed)."""
    out = []
    while pending and pending[0] <= seen_ts:
        out.append((pending.popleft(), observed))
    return out


def window_lags(pairs: Iterable[tuple[float, float]], start: float, end: float) -> list[float]:
    """Lags (observed - ts) of the states published in [start, end] (wall clock)."""
    return [seen - ts for ts, seen in pairs if start <= ts <= end]


def cpu_percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    """CPU use between two (cpu seconds, wall seconds) readings, in % of one core."""
    wall = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / wall if wall > 0 else 0.0


def raise_nofile() -> int:
    """Raise this process's soft open-file limit to its hard limit (children such as
    the broker inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------- the fleet


@dataclass
class FleetParams:
    nodes: int = 10_000
    duration: float = 120.0
    heartbeat: float = 30.0
    tap_interval: float = 60.0
    keepalive: int = 30
    connect_rate: float = 500.0
    sample_nodes: int = 500
    poll: float = 0.1
    drain: float = 30.0
    seed: int = 1
    ingest_processes: int = 1
    shared_group: str = "fleet"


class SimNode:
    """One simulated node: its paho client and what its outbox would hold."""

    __slots__ = ("index", "node_id", "key", "client", "epoch", "seq", "acked", "pending",
                 "t_events", "t_ack", "t_state", "t_status", "connected", "taps",
                 "deliveries", "states", "boot")

    def __init__(self, index: int, secret: bytes) -> None:
        self.index = index
        self.node_id = node_name(index)
        self.key = m.stream_key(secret, self.node_id)
        self.client: Any = None
        self.epoch = uuid.uuid4().hex[:16]
        self.seq = 0  # highest seq assigned
        self.acked = 0  # highest seq acked: the outbox still holds acked+1..seq
        self.pending: collections.deque[tuple[int, float, bool]] = collections.deque()
        self.t_events = m.events_topic(self.node_id)
        self.t_ack = m.events_ack_topic(self.node_id)
        self.t_state = m.state_topic(self.node_id)
        self.t_status = m.status_topic(self.node_id)
        self.connected = False
        self.taps = 0
        self.deliveries = 0
        self.states: collections.deque[float] | None = None  # sampled nodes only
        self.boot = time.monotonic()


@dataclass
class FleetCounts:
    connected: int = 0
    connect_failures: int = 0
    lost_connections: int = 0
    taps: int = 0
    batches: int = 0
    events: int = 0
    states: int = 0
    acks: int = 0  # ack messages taken
    acked_batches: int = 0
    forged_acks: int = 0
    refused_acks: int = 0  # authentic but another epoch or beyond what was sent
    window_taps: int = 0
    window_batches: int = 0
    window_states: int = 0
    connected_at_start: int = 0  # of the window


class Fleet:
    """N simulated nodes on one asyncio loop. ``floor``: acks are the floor's (no tag
    to check: the k-th ack a node gets answers its k-th batch); otherwise an ack counts
    only when its tag verifies under the node's key and it names the node's epoch."""

    def __init__(self, url: str, params: FleetParams, *, floor: bool = False,
                 sampled: Sequence[int] = ()) -> None:
        from tapcast.mqttclient import parse_broker_url

        self.broker = parse_broker_url(url)
        self.params = params
        self.floor = floor
        self.rng = random.Random(params.seed)
        self.nodes = [SimNode(i, BENCH_SECRET) for i in range(params.nodes)]
        for i in sampled:
            self.nodes[i].states = collections.deque()
        self.sampled = [self.nodes[i] for i in sampled]
        self.counts = FleetCounts()
        self.ack_latencies: list[float] = []  # batches published in the window
        self.loop_lags: list[float] = []  # in the window
        self.in_window = False
        self.window: tuple[float, float] = (0.0, 0.0)  # wall clock
        self._recent_acks = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._tap_timer: asyncio.TimerHandle | None = None
        self._next_tap = 0.0
        self._traffic = False
        self._connack: dict[int, asyncio.Future[Any]] = {}
        self._closing = False

    # ------------------------------------------------------- paho on the loop

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(fn, *args)

    def _add_reader(self, client: Any, sock: Any) -> None:
        if sock.fileno() != -1:
            assert self._loop is not None
            self._loop.add_reader(sock, client.loop_read)

    def _add_writer(self, client: Any, sock: Any) -> None:
        if sock.fileno() != -1:
            assert self._loop is not None
            self._loop.add_writer(sock, client.loop_write)

    def _drop_socket(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _make_client(self, node: SimNode) -> Any:
        from tapcast.mqttclient import make_client

        client = make_client(node.node_id)
        client.user_data_set(node)
        client.will_set(node.t_status, m.OFFLINE, qos=1, retain=True)
        nodelay = client.on_socket_open  # make_client's TCP_NODELAY hook

        def on_socket_open(c: Any, userdata: Any, sock: Any) -> None:
            if nodelay is not None:
                nodelay(c, userdata, sock)
            self._on_loop(self._add_reader, c, sock)

        client.on_socket_open = on_socket_open
        client.on_socket_close = lambda c, u, sock: self._on_loop(self._drop_socket, sock)
        client.on_socket_register_write = \
            lambda c, u, sock: self._on_loop(self._add_writer, c, sock)
        client.on_socket_unregister_write = \
            lambda c, u, sock: self._on_loop(self._remove_writer, sock)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _on_connect(self, client: Any, node: SimNode, flags: Any, reason: Any,
                    props: Any) -> None:
        fut = self._connack.pop(node.index, None)
        if reason.is_failure:
            if fut is not None and not fut.done():
                fut.set_result(False)
            return
        node.connected = True
        self.counts.connected += 1
        client.subscribe(node.t_ack, qos=1)
        client.publish(node.t_status, m.ONLINE, qos=1, retain=True)
        self._publish_state(node)
        if fut is not None and not fut.done():
            fut.set_result(True)

    def _on_disconnect(self, client: Any, node: SimNode, flags: Any, reason: Any,
                       props: Any) -> None:
        if node.connected:
            node.connected = False
            self.counts.connected -= 1
            if not self._closing:
                self.counts.lost_connections += 1
                log.warning("node %s lost its connection: %s", node.node_id, reason)
        fut = self._connack.pop(node.index, None)
        if fut is not None and not fut.done():
            fut.set_result(False)

    def _on_message(self, client: Any, node: SimNode, msg: Any) -> None:
        if msg.topic != node.t_ack:
            return
        now = time.monotonic()
        self.counts.acks += 1
        payload = msg.payload
        try:
            body = m.open_sealed(node.key, m.ACK_CONTEXT, node.t_ack, payload)
        except m.ForgedError:
            if not self.floor:
                self.counts.forged_acks += 1
                return
            body = payload[len(FLOOR_ACK_PREFIX):]  # the floor tags nothing
        try:
            ack = m.decode_ack(body)
        except m.PayloadError:
            self.counts.refused_acks += 1
            return
        if self.floor:  # its seq is a count, not ours: the k-th ack is for the k-th batch
            if not node.pending:
                self.counts.refused_acks += 1
                return
            seq = node.pending[0][0]
        elif ack.epoch != node.epoch or ack.seq > node.seq:
            self.counts.refused_acks += 1
            return
        else:
            seq = ack.seq
        node.acked = max(node.acked, seq)
        settled = settle_acks(node.pending, seq, now)
        self.counts.acked_batches += len(settled)
        self._recent_acks += len(settled)
        self.ack_latencies.extend(lat for lat, in_window in settled if in_window)

    # ------------------------------------------------------------ what a node sends

    def _publish_state(self, node: SimNode) -> None:
        ts = time.time()
        state = m.NodeState(
            node_id=node.node_id, ts=ts, version="0.1.0", zone=f"hall-{node.index % 50:02d}",
            uptime=time.monotonic() - node.boot,
            outbox_depth=node.seq - node.acked, taps=node.taps,
            deliveries=node.deliveries, failures=0, reader="ok", reader_reason="",
            time_trusted=True, time_source="hub")
        if node.states is not None:
            node.states.append(ts)  # before the publish: the sampler may see it at once
        node.client.publish(node.t_state, m.encode(state), qos=1, retain=True)
        self.counts.states += 1
        if self.in_window:
            self.counts.window_states += 1

    def _event_data(self, kind: str, node: SimNode, handset: str) -> dict[str, Any]:
        if kind == "tap":
            return {"zone": f"hall-{node.index % 50:02d}"}
        if kind == "auth":
            return {"ok": True, "reason": "ok", "ms": 27.9, "handset_id": handset}
        if kind == "delivery":
            return {"handset_id": handset, "item_id": "welcome", "kind": "article",
                    "bytes": 812}
        if kind == "request":
            return {"handset_id": handset, "item_id": "menu", "found": True}
        return {}

    def _publish_batch(self, node: SimNode, kinds: tuple[str, ...], handset: str) -> None:
        if not node.connected or not self._traffic:
            return
        now = time.time()
        events = []
        for kind in kinds:
            node.seq += 1
            events.append(m.Event(id=uuid.uuid4().hex, seq=node.seq, kind=kind, ts=now,
                                  data=self._event_data(kind, node, handset)))
            if kind == "delivery":
                node.deliveries += 1
        payload = m.seal_batch(node.key, m.EventBatch(
            node_id=node.node_id, epoch=node.epoch, low=node.acked + 1, first=events[0].seq,
            last=events[-1].seq, events=events))
        node.pending.append((node.seq, time.monotonic(), self.in_window))
        node.client.publish(node.t_events, payload, qos=1)
        self.counts.batches += 1
        self.counts.events += len(events)
        if self.in_window:
            self.counts.window_batches += 1

    def _tap(self) -> None:
        """The fleet's taps are one Poisson process (rate nodes / tap_interval) landing
        on a node chosen at random: the same as one Poisson process per node. Scheduled
        on absolute times, so a late loop catches up instead of tapping less."""
        if not self._traffic:
            return
        assert self._loop is not None
        rate = self.params.nodes / self.params.tap_interval
        now = self._loop.time()
        while self._next_tap <= now:
            self._next_tap += self.rng.expovariate(rate)
            self._tap_one()
        self._tap_timer = self._loop.call_at(self._next_tap, self._tap)

    def _tap_one(self) -> None:
        assert self._loop is not None
        node = self.nodes[self.rng.randrange(len(self.nodes))]
        if not node.connected:
            return
        node.taps += 1
        self.counts.taps += 1
        if self.in_window:
            self.counts.window_taps += 1
        handset = f"hs-{self.rng.randrange(1 << 30):08x}"
        for delay, kinds in tap_batches(self.rng):
            if delay <= 0:
                self._publish_batch(node, kinds, handset)
            else:
                self._loop.call_later(delay, self._publish_batch, node, kinds, handset)

    def _heartbeat(self, node: SimNode, due: float) -> None:
        if not self._traffic:
            return
        assert self._loop is not None
        self._loop.call_at(due + self.params.heartbeat, self._heartbeat, node,
                           due + self.params.heartbeat)
        if node.connected:
            self._publish_state(node)

    def _misc(self, k: int) -> None:
        """paho's loop_misc (keepalive pings, a silent broker) for one slice of nodes."""
        if self._closing:
            return
        assert self._loop is not None
        self._loop.call_later(MISC_PERIOD / MISC_SLICES, self._misc, (k + 1) % MISC_SLICES)
        for node in self.nodes[k::MISC_SLICES]:
            if node.client is not None:
                node.client.loop_misc()

    def _probe_lag(self, due: float) -> None:
        if self._closing:
            return
        assert self._loop is not None
        now = self._loop.time()
        if self.in_window:
            self.loop_lags.append(max(0.0, now - due))
        self._loop.call_at(now + LAG_PROBE, self._probe_lag, now + LAG_PROBE)

    # -------------------------------------------------------------- lifecycle

    async def connect_all(self, report: Callable[[str], None] | None = None,
                          timeout: float = 30.0) -> None:
        """Connect every node at ``connect_rate`` per second (blocking TCP connects in
        a few executor threads, as the uplink does); wait for every CONNACK."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._loop.call_soon(self._misc, 0)
        self._loop.call_soon(self._probe_lag, self._loop.time())
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(4, thread_name_prefix="fleet-connect")
        rate = self.params.connect_rate
        t0 = time.monotonic()
        futures = []
        last_report = 0.0
        try:
            for node in self.nodes:
                due = t0 + node.index / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                node.client = self._make_client(node)
                fut = self._loop.create_future()
                self._connack[node.index] = fut
                futures.append(asyncio.ensure_future(self._connect(pool, node, fut, timeout)))
                if report is not None and time.monotonic() - last_report > 0.5:
                    last_report = time.monotonic()
                    report(f"connecting {self.counts.connected}/{self.params.nodes} "
                           f"({node.index + 1} started)")
            while True:
                done = sum(f.done() for f in futures)
                if report is not None:
                    report(f"connecting {self.counts.connected}/{self.params.nodes}")
                if done == len(futures):
                    break
                await asyncio.sleep(0.25)
        finally:
            pool.shutdown(wait=False)
        failed = [f.result() for f in futures if f.result() is not None]
        self.counts.connect_failures = len(failed)
        if failed:
            raise RuntimeError(f"{len(failed)}/{self.params.nodes} nodes failed to connect "
                               f"(connected: {self.counts.connected}); first: {failed[0]}")

    async def _connect(self, pool: Any, node: SimNode, fut: asyncio.Future[Any],
                       timeout: float) -> str | None:
        """None when connected, else why not."""
        assert self._loop is not None
        try:
            await self._loop.run_in_executor(pool, node.client.connect, self.broker.host,
                                             self.broker.port, self.params.keepalive)
        except OSError as exc:
            self._connack.pop(node.index, None)
            return f"{node.node_id}: {exc}"
        try:
            ok = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return f"{node.node_id}: no CONNACK within {timeout} s"
        return None if ok else f"{node.node_id}: refused or closed"

    def start_traffic(self) -> None:
        assert self._loop is not None
        self._traffic = True
        now = self._loop.time()
        for node in self.nodes:
            due = now + self.rng.uniform(0, self.params.heartbeat)
            self._loop.call_at(due, self._heartbeat, node, due)
        self._next_tap = now + self.rng.expovariate(self.params.nodes / self.params.tap_interval)
        self._tap()

    def begin_window(self) -> None:
        self.in_window = True
        self.counts.connected_at_start = self.counts.connected
        self.window = (time.time(), 0.0)

    def end_window(self) -> None:
        self.in_window = False
        self.window = (self.window[0], time.time())

    def stop_traffic(self) -> None:
        self._traffic = False
        if self._tap_timer is not None:
            self._tap_timer.cancel()

    def unacked(self) -> int:
        return sum(len(node.pending) for node in self.nodes)

    def take_recent_acks(self) -> int:
        n, self._recent_acks = self._recent_acks, 0
        return n

    async def close(self) -> None:
        """Disconnect every node (a DISCONNECT: the broker discards its will)."""
        self._closing = True
        self.stop_traffic()
        for node in self.nodes:
            if node.client is not None:
                try:
                    node.client.disconnect()
                except Exception:  # noqa: BLE001 - a broken socket: nothing to release
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                n.client is not None and n.client.socket() is not None for n in self.nodes):
            await asyncio.sleep(0.1)
        for node in self.nodes:
            client = node.client
            sock = client.socket() if client is not None else None
            if sock is not None:
                self._drop_socket(sock)
                sock.close()


# ------------------------------------------------------ status lag at the hub


class DbSampler(threading.Thread):
    """Reads the sampled nodes' stored states from the hub database every ``poll`` s
    (read only) and settles each node's published state timestamps against them.
    ``pairs`` collects (published ts, observed) for every state seen."""

    def __init__(self, url: str, nodes: Sequence[SimNode], poll: float) -> None:
        super().__init__(name="fleet-db-sampler", daemon=True)
        self.url = url
        self.nodes = {n.node_id: n for n in nodes}
        self.poll = poll
        self.pairs: list[tuple[float, float]] = []
        self.queries = 0
        self.query_seconds: list[float] = []
        self.errors = 0
        self.last_error = ""
        self._stop_event = threading.Event()

    def run(self) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        query = sa.text("SELECT node_id, state FROM nodes WHERE node_id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True))
        ids = list(self.nodes)
        last: dict[str, Any] = {}
        try:
            while not self._stop_event.is_set():
                t0 = time.time()
                try:
                    with engine.connect() as conn:
                        rows = conn.execute(query, {"ids": ids}).all()
                except Exception as exc:  # noqa: BLE001 - no table yet, a lock...: again
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    rows = []
                observed = time.time()
                self.queries += 1
                self.query_seconds.append(observed - t0)
                for node_id, state in rows:
                    if state is None or state == last.get(node_id):
                        continue  # unchanged since the last read: nothing to parse
                    last[node_id] = state
                    ts = (state if isinstance(state, dict) else json.loads(state))["ts"]
                    node = self.nodes.get(node_id)
                    if node is not None and node.states:
                        self.pairs.extend(settle_states(node.states, ts, observed))
                self._stop_event.wait(max(0.0, self.poll - (time.time() - t0)))
        finally:
            engine.dispose()

    def unseen(self) -> int:
        return sum(len(n.states or ()) for n in self.nodes.values())

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


# ----------------------------------------------------------- memory and CPU


class ResourceMonitor(threading.Thread):
    """RSS (maximum, sampled every MONITOR_PERIOD s) and CPU time of named processes
    (with their children, except ``alone``: the simulator's children are the broker and
    the hub); ``mark(name)`` takes a CPU reading that ``cpu(a, b)`` compares, and one of
    the whole machine's busy time (a shared machine: what else ran)."""

    def __init__(self, processes: dict[str, int], alone: Iterable[str] = ("simulator",)
                 ) -> None:
        import psutil

        super().__init__(name="fleet-monitor", daemon=True)
        self.alone = set(alone)
        self.procs = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.max_rss: dict[str, int] = {name: 0 for name in processes}
        self.marks: dict[str, dict[str, tuple[float, float]]] = {}
        self.thread_marks: dict[str, tuple[dict[str, float], float]] = {}
        self.machine_marks: dict[str, tuple[float, float]] = {}
        self._stop_event = threading.Event()

    def _tree(self, name: str) -> list[Any]:
        import psutil

        proc = self.procs[name]
        if name in self.alone:
            return [proc]
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return [proc]

    def _rss(self, name: str) -> int:
        import psutil

        total = 0
        for p in self._tree(name):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _cpu(self, name: str) -> float:
        import psutil

        total = 0.0
        for p in self._tree(name):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def sample(self) -> None:
        for name in self.procs:
            self.max_rss[name] = max(self.max_rss[name], self._rss(name))

    def run(self) -> None:
        while not self._stop_event.wait(MONITOR_PERIOD):
            self.sample()

    def mark(self, label: str) -> None:
        now = time.monotonic()
        self.marks[label] = {name: (self._cpu(name), now) for name in self.procs}
        self.thread_marks[label] = (self._own_threads(), now)
        self.machine_marks[label] = (self._machine_busy(), now)

    @staticmethod
    def _machine_busy() -> float:
        """CPU seconds the whole machine was busy (all cores; not idle, not iowait)."""
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def machine_cpu(self, a: str, b: str) -> float:
        """% of one core the whole machine was busy between two marks."""
        return cpu_percent(self.machine_marks[a], self.machine_marks[b])

    @staticmethod
    def _own_threads() -> dict[str, float]:
        """CPU seconds of this process's threads, by name (the simulator's loop is
        MainThread; the status-lag reader, this monitor and the connect pool beside it)."""
        import psutil

        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = collections.defaultdict(float)
        for t in psutil.Process().threads():
            out[names.get(t.id, "other")] += t.user_time + t.system_time
        return dict(out)

    def thread_cpu(self, a: str, b: str) -> dict[str, float]:
        (before, t0), (after, t1) = self.thread_marks[a], self.thread_marks[b]
        return {name: cpu_percent((before.get(name, 0.0), t0), (cpu, t1))
                for name, cpu in after.items()}

    def cpu(self, name: str, a: str, b: str) -> float:
        return cpu_percent(self.marks[a][name], self.marks[b][name])

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self.sample()


# ----------------------------------------------------------------- the floor


def floor_main(argv: list[str]) -> None:
    """The floor subscriber's process: a bare paho subscriber (persistent session, the
    hub's subscriptions, QoS1) that decodes nothing, acks each batch with an ack of the
    sealed ack's size, and stamps the arrival of the sampled nodes' states (reading only
    their ``ts``). Prints "ready", then, when its stdin closes, "result <json>"."""
    from tapcast.mqttclient import make_client, parse_broker_url

    parser = argparse.ArgumentParser(prog="bench_fleet floor")
    parser.add_argument("--url", required=True)
    parser.add_argument("--sampled", type=Path, required=True, help="JSON list of node ids")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    broker = parse_broker_url(args.url)
    sampled = {m.state_topic(n) for n in json.loads(args.sampled.read_text())}
    subscribed = threading.Event()
    counts = {"messages": 0, "batches": 0, "states": 0, "statuses": 0}
    seqs: dict[str, int] = {}
    pairs: list[tuple[float, float]] = []

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        t = time.time()
        topic = msg.topic
        counts["messages"] += 1
        if topic.endswith("/events"):
            counts["batches"] += 1
            seq = seqs.get(topic, 0) + 1  # a number of the right size; nothing decoded
            seqs[topic] = seq
            client.publish(topic + "/ack", FLOOR_ACK_PREFIX + m.encode(
                m.EventAck(epoch="floor", seq=seq, ts=time.time())), qos=1)
        elif topic.endswith("/state"):
            counts["states"] += 1
            if topic in sampled and not msg.retain:
                pairs.append((json.loads(msg.payload)["ts"], t))
        else:
            counts["statuses"] += 1

    def on_connect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        client.subscribe([(topic, 1) for topic in m.HUB_SUBSCRIPTIONS])

    client = make_client(f"fleet-floor-{uuid.uuid4().hex[:8]}", clean_session=False)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("the floor subscriber did not subscribe within 10 s")
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
    client.loop_stop()
    client.disconnect()
    print("result " + json.dumps({**counts, "pairs": pairs}), flush=True)


class FloorProcess:
    def __init__(self, url: str, sampled_file: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_fleet", "floor", "--url", url,
             "--sampled", str(sampled_file)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"the floor subscriber did not get ready: {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=timeout)  # closes its stdin: it stops
        for line in out.splitlines():
            if line.startswith("result "):
                return json.loads(line[len("result "):])
        raise RuntimeError(f"the floor subscriber gave no result (exit {self.proc.returncode})")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------- the hub side


def init_hub_database(config_path: Path) -> None:
    """Create the hub's database by the hub's own command (`tapcast hub db upgrade`)."""
    cmd = ["hub", "db", "upgrade", "--config", str(config_path)]
    done = subprocess.run([sys.executable, "-m", "hall.cli", *cmd], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"`tapcast hub db upgrade` failed: {done.stderr.strip()}")


class PgDatabase:
    """A throwaway PostgreSQL database, made and dropped through an admin connection
    to the server's ``postgres`` database."""

    def __init__(self, server_url: str) -> None:
        import sqlalchemy as sa

        url = sa.engine.make_url(server_url)
        self.name = f"tapcast_bench_{secrets.token_hex(4)}"
        self.admin = sa.create_engine(url.set(database="postgres"),
                                      isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        self.url = url.set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


class HubSide:
    """``tapcast hub ingest`` processes on a fresh database (SQLite file or a
    throwaway PostgreSQL database)."""

    def __init__(self, workdir: Path, broker_url: str, database: str, params: FleetParams
                 ) -> None:
        import msgspec

        from hall.testing.hub import HubProcess
        from hub.config import HubConfig
        from tapcast import config as cfg
        from tapcast.streamkeys import write_stream_secret

        workdir.mkdir(parents=True, exist_ok=True)
        write_stream_secret(workdir, BENCH_SECRET)
        self.pg: PgDatabase | None = None
        if database == "sqlite":
            path = workdir / "hub.db"
            hub_db = str(path)
            self.read_url = f"sqlite:///{path}"
        else:
            self.pg = PgDatabase(DEFAULT_PG if database == "postgresql" else database)
            hub_db = self.read_url = self.pg.url
        self.procs: list[Any] = []
        self.configs: list[Path] = []
        n = params.ingest_processes
        try:
            base = cfg.load(HubConfig, data={
                "hub": {"database": hub_db, "port": 0,
                        "stream_secret": str(workdir / "stream.secret")},
                "mqtt": {"broker": broker_url}}, environ={})
            for k in range(n):
                mqtt = msgspec.structs.replace(base.mqtt, client_id=f"bench-hub-{k}")
                if n > 1:  # [mqtt] shared_group: the workers split the events
                    mqtt = msgspec.structs.replace(mqtt, shared_group=params.shared_group)
                path = workdir / f"hub-{k}.toml"
                path.write_text(cfg.dump(msgspec.structs.replace(base, mqtt=mqtt)))
                self.configs.append(path)
            init_hub_database(self.configs[0])
            for path in self.configs:
                proc = HubProcess("ingest", path)
                self.procs.append(proc)
                proc.wait_line("hub ingest subscribed", timeout=60)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> dict[str, int]:
        return {f"ingest-{k}": p.pid for k, p in enumerate(self.procs)}

    def problems(self) -> list[str]:
        """Warnings and errors the ingest processes printed."""
        return [line for p in self.procs for line in p.stderr
                if "WARNING" in line or "ERROR" in line or "Traceback" in line][:20]

    def final_counts(self) -> dict[str, Any]:
        """What the database holds at the end (each query may fail on a schema that
        changed: then None)."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.read_url)
        out: dict[str, Any] = {}
        queries = {"nodes": "SELECT count(*) FROM nodes",
                   "nodes_with_state": "SELECT count(*) FROM nodes WHERE state IS NOT NULL",
                   "nodes_online": "SELECT count(*) FROM nodes WHERE status = 'online'",
                   "events": "SELECT count(*) FROM events"}
        try:
            for name, sql in queries.items():
                try:
                    with engine.connect() as conn:
                        out[name] = conn.execute(sa.text(sql)).scalar()
                except Exception:  # noqa: BLE001 - another schema: not counted
                    out[name] = None
        finally:
            engine.dispose()
        return out

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stop(timeout=60)
            except AssertionError as exc:
                log.warning("%s", exc)
        if self.pg is not None:
            try:
                self.pg.drop()
            except Exception as exc:  # noqa: BLE001 - say so, the run's figures stand
                log.warning("could not drop %s: %s", self.pg.name, exc)


# ---------------------------------------------------------------- one side


@dataclass
class SideRun:
    side: str
    ack_latencies: list[float]
    status_lags: list[float]
    counts: dict[str, Any]
    rss_max: dict[str, int]
    cpu: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


class Reporter:
    """One live line on a terminal, a plain line every 10 s elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
        elif time.monotonic() - self._last >= 10:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _p(values: list[float], q: int) -> float | None:
    return percentile(values, q) if len(values) >= 2 else None


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * MS:.0f} ms"


async def _drive(fleet: Fleet, params: FleetParams, side: str, monitor: ResourceMonitor,
                 lags: Callable[[], list[float]], unseen: Callable[[], int],
                 reporter: Reporter) -> dict[str, Any]:
    t_connect = time.monotonic()
    monitor.mark("connect")
    await fleet.connect_all(lambda s: reporter(f"{side}: {s}"))
    connect_s = time.monotonic() - t_connect
    monitor.mark("start")
    fleet.start_traffic()
    fleet.begin_window()
    t0 = time.monotonic()
    last_p99 = 0.0
    text = ""
    while (left := params.duration - (time.monotonic() - t0)) > 0:
        await asyncio.sleep(min(1.0, left))
        acks_per_s = fleet.take_recent_acks() / 1.0
        if time.monotonic() - last_p99 > 3:  # a percentile of everything so far
            last_p99 = time.monotonic()
            ack99, lag99 = _p(fleet.ack_latencies, 99), _p(lags(), 99)
            text = f"ack p99 {_fmt_ms(ack99)}, status lag p99 {_fmt_ms(lag99)}"
        reporter(f"{side}: {time.monotonic() - t0:5.0f}/{params.duration:.0f} s, "
                 f"{fleet.counts.connected} connected, {acks_per_s:5.0f} acks/s, {text}")
    fleet.end_window()
    monitor.mark("end")
    fleet.stop_traffic()
    # Drain: every batch acked, every sampled state seen (or the grace period is over).
    t_drain = time.monotonic()
    await asyncio.sleep(TAP_SHAPE[-1][0] + 0.1)  # the taps' follow-up batches go out
    while time.monotonic() - t_drain < params.drain:
        if fleet.unacked() == 0 and unseen() == 0:
            break
        reporter(f"{side}: draining: {fleet.unacked()} batches unacked, "
                 f"{unseen()} sampled states not seen")
        await asyncio.sleep(0.2)
    drain_s = time.monotonic() - t_drain
    out = {"connect_seconds": connect_s, "drain_seconds": drain_s,
           "unacked_at_end": fleet.unacked(), "states_unseen_at_end": unseen()}
    await fleet.close()
    return out


def run_side(side: str, params: FleetParams, workdir: Path, database: str = "sqlite",
             reporter: Reporter | None = None) -> SideRun:
    """One full run of the fleet against a fresh broker and ``side`` ("product": hub
    ingest processes; "floor": the bare acking subscriber)."""
    from hall.testing.mosquitto import Mosquitto

    reporter = reporter or Reporter()
    nofile = raise_nofile()
    needed = params.nodes + 200
    if nofile < needed:
        raise RuntimeError(f"the open-file limit is {nofile}: {params.nodes} nodes need "
                           f"about {needed} here and in the broker (raise the hard limit)")
    workdir.mkdir(parents=True, exist_ok=True)
    sampled = sample_indices(params.nodes, params.sample_nodes)
    broker = Mosquitto(workdir / "mosquitto", extra_conf="max_connections -1\n")
    broker.start()
    hub: HubSide | None = None
    floor: FloorProcess | None = None
    sampler: DbSampler | None = None
    monitor: ResourceMonitor | None = None
    try:
        assert broker.proc is not None
        pids = {"broker": broker.proc.pid, "simulator": os.getpid()}
        if side == "product":
            hub = HubSide(workdir / "hub", broker.url, database, params)
            pids.update(hub.pids)
        else:
            ids_file = workdir / "sampled.json"
            ids_file.write_text(json.dumps([node_name(i) for i in sampled]))
            floor = FloorProcess(broker.url, ids_file)
            pids["floor"] = floor.pid
        monitor = ResourceMonitor(pids)
        monitor.start()
        fleet = Fleet(broker.url, params, floor=side == "floor", sampled=sampled)
        if hub is not None:
            sampler = DbSampler(hub.read_url, fleet.sampled, params.poll)
            sampler.start()
            lag_source = sampler
            lags: Callable[[], list[float]] = lambda: window_lags(
                lag_source.pairs, fleet.window[0], fleet.window[1] or time.time())
            unseen: Callable[[], int] = sampler.unseen
        else:
            lags = list
            unseen = lambda: 0  # noqa: E731 - the floor reports its states at the end
        drive = asyncio.run(_drive(fleet, params, side, monitor, lags, unseen, reporter))
        reporter.done()
        monitor.stop()
        extra: dict[str, Any] = dict(drive)
        if sampler is not None:
            sampler.stop()
            pairs = sampler.pairs
            extra["status_lag_measured"] = (
                f"state publish -> the end of the first database read that returns it "
                f"(every {params.poll} s, {len(sampled)} sampled nodes)")
            extra["db_queries"] = sampler.queries
            extra["db_query_p99_ms"] = (_p(sampler.query_seconds, 99) or 0) * MS
            extra["db_query_errors"] = sampler.errors
            if sampler.last_error:
                extra["db_last_error"] = sampler.last_error
        else:
            assert floor is not None
            result = floor.finish()
            pairs = [tuple(p) for p in result.pop("pairs")]
            extra["floor_counts"] = result
            extra["status_lag_measured"] = (f"state publish -> received by the bare "
                                            f"subscriber ({len(sampled)} sampled nodes)")
        status_lags = window_lags(pairs, *fleet.window)
        if hub is not None:
            extra["database"] = "sqlite" if database == "sqlite" else "postgresql"
            extra["hub_final"] = hub.final_counts()
            extra["hub_problems"] = hub.problems()
        ingest_names = [n for n in pids if n.startswith("ingest-")]
        cpu = {name: monitor.cpu(name, "start", "end") for name in pids}
        cpu_connect = {name: monitor.cpu(name, "connect", "start") for name in pids}
        rss = dict(monitor.max_rss)
        if ingest_names:
            cpu["hub"] = sum(cpu[n] for n in ingest_names)
            rss["hub"] = sum(rss[n] for n in ingest_names)
        extra["cpu_connect_phase"] = cpu_connect
        extra["simulator_threads_cpu"] = monitor.thread_cpu("start", "end")
        machine = monitor.machine_cpu("start", "end")
        extra["machine_cpu"] = machine
        # not this benchmark's processes (the machine is shared)
        extra["other_cpu"] = machine - sum(cpu[name] for name in pids)
        extra["cores"] = os.cpu_count()
        extra["loop_lag_p99_ms"] = (_p(fleet.loop_lags, 99) or 0) * MS
        extra["window_seconds"] = fleet.window[1] - fleet.window[0]
        counts = {**fleet.counts.__dict__, "sampled_nodes": len(sampled)}
        return SideRun(side, fleet.ack_latencies, status_lags, counts, rss, cpu, extra)
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if monitor is not None and monitor.is_alive():
            monitor.stop()
        if floor is not None:
            floor.kill()
        if hub is not None:
            hub.close()
        broker.stop()


# ----------------------------------------------------------------- results


def _ci_extra(samples: list[float], q: int, prefix: str = "") -> dict[str, Any]:
    if len(samples) < 2:
        return {f"{prefix}n": len(samples)}
    return sample_stats(samples, q, scale=MS, prefix=prefix)


def results(product: SideRun, floor: SideRun | None, params: FleetParams,
            label: str) -> list[Result]:
    out: list[Result] = []
    targets = {("status lag", 99): "< 2000 ms", ("ack latency", 99): "< 250 ms"}
    for what, prod, flo in (("status lag", product.status_lags,
                             floor.status_lags if floor else []),
                            ("ack latency", product.ack_latencies,
                             floor.ack_latencies if floor else [])):
        for q in (50, 99):
            value = _p(prod, q)
            if value is None:
                continue
            fvalue = _p(flo, q)
            # the interval for the p99s only (a bootstrap of 50k samples takes seconds)
            extra: dict[str, Any] = _ci_extra(prod, q) if q == 99 else {"n": len(prod)}
            if flo:
                extra.update(_ci_extra(flo, q, "floor_") if q == 99 else {"floor_n": len(flo)})
            out.append(Result(f"{label}: {what} p{q}", "ms", value * MS,
                              fvalue * MS if fvalue is not None else None,
                              targets.get((what, q), ""), extra))
    hub_rss = product.rss_max.get("hub", 0) / MB
    floor_rss = floor.rss_max.get("floor", 0) / MB if floor else None
    out.append(Result(f"{label}: hub ingest RSS, max", "MB", hub_rss, floor_rss, "< 500 MB",
                      {"per_process_mb": {k: v / MB for k, v in product.rss_max.items()}}))
    out.append(Result(
        f"{label}: hub ingest CPU (% of one core)", "%", product.cpu.get("hub", 0.0),
        floor.cpu.get("floor") if floor else None, "",
        {"per_process": {k: v for k, v in product.cpu.items()},
         "floor_per_process": floor.cpu if floor else None}))
    out.append(Result(f"{label}: broker CPU (% of one core)", "%", product.cpu["broker"],
                      floor.cpu["broker"] if floor else None, ""))
    details = {"params": params.__dict__, "product_counts": product.counts,
               "product_extra": product.extra}
    if floor is not None:
        details.update(floor_counts=floor.counts, floor_extra=floor.extra)
    out[0].extra["run"] = details
    return out


def _threads(extra: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in extra.get("simulator_threads_cpu", {}).items()
                     if v >= 0.05)


def render(found: list[Result]) -> str:
    lines = []
    for r in found:
        if "run" not in r.extra:
            continue
        run = r.extra["run"]
        p, pe = run["product_counts"], run["product_extra"]
        lines.append(
            f"product: {p['connected_at_start']} nodes connected in {pe['connect_seconds']:.1f} s; "
            f"window {pe['window_seconds']:.0f} s: {p['window_taps']} taps (Poisson mean "
            f"{run['params']['nodes'] / run['params']['tap_interval'] * pe['window_seconds']:.0f}), "
            f"{p['window_batches']} batches, "
            f"{p['window_states']} states published; whole run: {p['taps']} taps, "
            f"{p['batches']} batches ({p['events']} events), {p['acked_batches']} acked, "
            f"{pe['unacked_at_end']} unacked after {pe['drain_seconds']:.1f} s of drain; "
            f"{p['forged_acks']} forged / {p['refused_acks']} refused acks; "
            f"{p['lost_connections']} connections lost; sampled states not seen at the "
            f"hub: {pe['states_unseen_at_end']}")
        lines.append(f"  hub database at the end: {pe.get('hub_final')}")
        lines.append(f"  simulator loop lag p99 {pe['loop_lag_p99_ms']:.1f} ms, its threads' "
                     f"CPU %: {_threads(pe)}; "
                     f"status-lag reads: {pe.get('db_queries')} "
                     f"(p99 {pe.get('db_query_p99_ms', 0):.1f} ms, "
                     f"{pe.get('db_query_errors')} failed)")
        lines.append(f"  the machine ({pe['cores']} cores) was busy {pe['machine_cpu']:.0f}% "
                     f"of one core over the window, {pe['other_cpu']:.0f}% of it not this "
                     f"benchmark's processes")
        if pe.get("hub_problems"):
            lines.append("  hub warnings: " + " | ".join(pe["hub_problems"][:5]))
        if "floor_counts" in run:
            f, fe = run["floor_counts"], run["floor_extra"]
            lines.append(
                f"floor: {f['connected_at_start']} connected in {fe['connect_seconds']:.1f} s; "
                f"{f['batches']} batches, {f['acked_batches']} acked, "
                f"{fe['unacked_at_end']} unacked at the end; simulator loop lag p99 "
                f"{fe['loop_lag_p99_ms']:.1f} ms, its threads' CPU %: {_threads(fe)}")
    for r in found:
        if "per_process" in r.extra:
            lines.append("CPU % of one core over the window: product " + ", ".join(
                f"{k} {v:.1f}" for k, v in r.extra["per_process"].items()))
            if r.extra.get("floor_per_process"):
                lines.append("                                    floor   " + ", ".join(
                    f"{k} {v:.1f}" for k, v in r.extra["floor_per_process"].items()))
        if "per_process_mb" in r.extra:
            lines.append("max RSS MB (product run): " + ", ".join(
                f"{k} {v:.0f}" for k, v in r.extra["per_process_mb"].items()))
    return "\n".join(lines)


def measure(params: FleetParams, database: str = "sqlite", floor: bool = True,
            workdir: Path | None = None) -> list[Result]:
    label = f"fleet {params.nodes} nodes, {'SQLite' if database == 'sqlite' else 'PostgreSQL'}"
    if params.ingest_processes > 1:
        label += f", {params.ingest_processes} ingests"
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        base = workdir or Path(tmp)
        floor_run = run_side("floor", params, base / "floor") if floor else None
        product = run_side("product", params, base / "product", database)
    return results(product, floor_run, params, label)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = FleetParams()
    parser.add_argument("--nodes", type=int, default=d.nodes)
    parser.add_argument("--duration", type=float, default=d.duration,
                        help="measured seconds, once every node is connected")
    parser.add_argument("--heartbeat", type=float, default=d.heartbeat,
                        help="seconds between a node's state publishes")
    parser.add_argument("--tap-interval", type=float, default=d.tap_interval,
                        help="mean seconds between one node's taps (Poisson)")
    parser.add_argument("--keepalive", type=int, default=d.keepalive)
    parser.add_argument("--connect-rate", type=float, default=d.connect_rate,
                        help="nodes connecting per second")
    parser.add_argument("--sample-nodes", type=int, default=d.sample_nodes,
                        help="nodes whose status lag is measured")
    parser.add_argument("--poll", type=float, default=d.poll,
                        help="seconds between reads of the sampled nodes' stored state")
    parser.add_argument("--drain", type=float, default=d.drain,
                        help="at most this long after the window for the last acks")
    parser.add_argument("--database", default="sqlite",
                        help="'sqlite', 'postgresql' (a throwaway database on "
                        f"{DEFAULT_PG.rsplit('/', 1)[0]}), or a PostgreSQL server URL")
    parser.add_argument("--ingest-processes", type=int, default=d.ingest_processes,
                        help="`hub ingest` processes (more than 1 needs the hub's shared "
                        "subscription setting)")
    parser.add_argument("--shared-group", default=d.shared_group)
    parser.add_argument("--no-floor", action="store_true", help="skip the floor run")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--quick", action="store_true", help="500 nodes, 30 s (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.duration = min(args.nodes, 500), min(args.duration, 30.0)
    params = FleetParams(
        nodes=args.nodes, duration=args.duration, heartbeat=args.heartbeat,
        tap_interval=args.tap_interval, keepalive=args.keepalive,
        connect_rate=args.connect_rate, sample_nodes=args.sample_nodes, poll=args.poll,
        drain=args.drain, seed=args.seed, ingest_processes=args.ingest_processes,
        shared_group=args.shared_group)
    return measure(params, args.database, floor=not args.no_floor)


if __name__ == "__main__":
    if sys.argv[1:2] == ["floor"]:
        floor_main(sys.argv[2:])
    else:
        from benchmarks.common import run_and_report

        run_and_report(main, render)
