"""MQTT ingest: node status/state/event batches in, durable batched writes, acks out.

Exactly-once storage on top of at-least-once delivery: a node keeps every event in its
outbox until the hub acks it, and re-sends after a reconnect, so the hub sees
duplicates; the database stores each (node_id, seq) once (hub.db) and the ack names
the highest *contiguous* seq stored, so a lost batch in the middle is re-sent rather
than skipped.

Threads and why:
* paho's network thread (``loop_start``) only authenticates (HMAC, about 2 us),
  decodes and validates (msgspec, the one parse: the writer stores exactly these
  values) and queues; it must stay fast, because the broker's delivery rate to this
  client is the ceiling for the whole hub. A batch whose tag does not verify is counted
  and dropped; an authentic one that does not decode is quarantined (kept verbatim) and
  acked past, so one bad batch never wedges a node. (A client reading the socket in
  64 KiB chunks instead of paho's four reads per message was tried: no measurable gain
  in bench_ingest, so paho's own client it is.)
* the event writer takes everything queued (up to ``mqtt.batch_size`` events), writes
  it in ONE transaction, then publishes one tagged EventAck per stream touched. Acks go
  out only after the commit, so an ack always means "on disk". While a commit runs, the
  next batch queues up, so batches grow with the load.
* the node writer (the status lane) stores status and state messages from a queue of
  their own, in transactions of their own: a backlog of events never delays them, so
  the operator page's online/offline and heartbeats stay current under load.

The MQTT session is persistent (``clean_session=False`` with ``mqtt.client_id``):
while the hub restarts the broker keeps queueing the QoS1 batches for it. Two hubs
must therefore not share a client id (the broker would disconnect one for the other).
With ``mqtt.shared_group`` set, several ingest workers share the events through an MQTT
5 shared subscription, each with its own session ("<client_id>-<worker>", clean_start
off, ``mqtt.session_expiry``); see docs/mqtt.md, "Several ingest workers".
"""
from __future__ import annotations

import functools
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt

from hub.config import HubConfig
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tapcast.mqttclient import TlsFiles, configure_tls, make_client, parse_broker_url
from tapcast.protocol.mqtt import (BATCH_CONTEXT, HUB_SUBSCRIPTIONS, EventAck, ForgedError,
                                   NodeState, PayloadError, decode_batch, decode_batch_header,
                                   decode_state, decode_status, events_ack_topic, open_sealed,
                                   parse_node_topic, seal_ack, stream_key)
from tapcast.ratelog import RateLimitedLog
from tapcast.streamkeys import load_stream_secret

from hub.db import HubDB, Quarantined

log = logging.getLogger(__name__)

_STOP = object()
_GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Messages queued for the writer before paho's thread waits for room. The writer drains
# 100k+ events/s, so this only bites when the disk stalls; then the broker holds the
# rest (and nodes re-send whatever is never acked).
MAX_QUEUED = 10_000

#: Which topic leaves go through the shared subscription when ``mqtt.shared_group`` is
#: set. Only events: a node's status and state are "the latest wins", and through a
#: share two of its messages could reach two workers and be stored out of order (an
#: "offline" overwritten by the "online" before it); a retained message is not sent to
#: a shared subscription either. So each worker subscribes to those itself and stores
#: them all (the same values, in the node's order: the last write is the newest).
SHARED_LEAVES = ("events",)


def client_id_for(config: HubConfig, worker: int = 1) -> str:
    """The MQTT client id of ingest ``worker`` (1, 2, ...): ``mqtt.client_id`` alone
    without a shared group (one ingest), "<client_id>-<worker>" with one, so each
    worker has a session of its own that a restart (same number) resumes."""
    if not config.mqtt.shared_group:
        return config.mqtt.client_id
    return f"{config.mqtt.client_id}-{worker}"


def subscriptions(config: HubConfig) -> list[str]:
    """The hub's topic filters: HUB_SUBSCRIPTIONS, the events one shared
    ($share/<group>/...) when ``mqtt.shared_group`` is set."""
    group = config.mqtt.shared_group
    if not group:
        return list(HUB_SUBSCRIPTIONS)
    return [f"$share/{group}/{topic}" if topic.rsplit("/", 1)[1] in SHARED_LEAVES else topic
            for topic in HUB_SUBSCRIPTIONS]


@dataclass
class IngestCounters:
    """What the ingest has seen since it started (exposed in /api/v1/stats)."""

    messages: int = 0  # MQTT messages received on the hub subscriptions
    received: int = 0  # events in well-formed batches (duplicates included)
    stored: int = 0  # events written (first time seen)
    duplicates: int = 0  # events already stored (re-sent by a node), dropped
    malformed: int = 0  # messages dropped: bad topic, bad JSON, wrong schema, id mismatch
    forged: int = 0  # batches whose tag did not verify (not from the node): dropped
    quarantined: int = 0  # authentic batches that did not decode: kept verbatim
    conflicts: int = 0  # events with a stored (node, epoch, seq) but another id: refused
    lost: int = 0  # seqs found lost for good (below what a node still holds)
    write_errors: int = 0  # transactions that failed (nothing acked; nodes re-send)
    transactions: int = 0  # write transactions committed
    acks_sent: int = 0  # EventAck messages published
    connects: int = 0  # times connected and subscribed (2+ means it reconnected)

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class Ingest:
    """Subscribe to every node's status/state/events, store them, ack the events.

    ``start()`` connects in the background (and keeps reconnecting: paho's loop thread
    retries and ``on_connect`` re-subscribes); ``stop()`` disconnects, writes what is
    queued and joins the writers. ``worker`` numbers this ingest among several sharing
    ``mqtt.shared_group`` (its client id). Tests wait on ``wait_ready`` / ``wait_for``
    instead of sleeping."""

    def __init__(self, config: HubConfig, db: HubDB, *, worker: int = 1) -> None:
        self.config = config
        self.db = db
        self.counters = IngestCounters()
        mq = config.mqtt
        group = mq.shared_group
        if group and not _GROUP_RE.fullmatch(group):
            raise ValueError(f"[mqtt] shared_group {group!r}: use letters, digits, '_' "
                             "and '-' (it becomes part of the topic $share/<group>/...)")
        if worker < 1:
            raise ValueError(f"ingest worker numbers start at 1, got {worker}")
        if worker > 1 and not group:
            raise ValueError("several ingest workers need [mqtt] shared_group (for example "
                             "\"hub\"): without it each would store every event")
        self.worker = worker
        self.client_id = client_id_for(config, worker)
        # Raises StreamKeyError (a ValueError: one line at start-up) when it is missing.
        secret = load_stream_secret(config.hub.stream_secret)
        # Node keys derived once each; bounded, since topics are chosen by whoever publishes.
        self._key = functools.lru_cache(maxsize=100_000)(functools.partial(stream_key, secret))
        self._ratelog = RateLimitedLog(log)
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # events, quarantine
        self._nodes_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # status, state
        self._room = threading.Event()
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._node_writer: threading.Thread | None = None
        #: Called on paho's thread as ``link_listener(up, reason)``: up=True once
        #: subscribed, False when a connection attempt fails or the link is lost (it
        #: keeps retrying either way). ``tapcast hub ingest`` prints these; keep it fast.
        self.link_listener: Callable[[bool, str], None] | None = None
        broker = parse_broker_url(mq.broker)
        self._broker = broker
        self._v5 = bool(group)
        self._subscriptions = subscriptions(config)
        self._client = make_client(
            self.client_id, clean_session=False,
            username=mq.username or broker.username,
            password=mq.password or broker.password,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311)
        configure_tls(self._client, broker, TlsFiles(mq.ca_file, mq.cert_file, mq.key_file))
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        # Acks are QoS 1; paho holds back any past 20 awaiting the broker's PUBACK, and
        # those PUBACKs queue behind the events still unread on the same connection,
        # so a hub that fell behind would ack at a trickle exactly when nodes wait on
        # it. No limit: an ack is small, and the broker's own limits still apply.
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_connect_fail = self._on_connect_fail

    # ------------------------------------------------------------- lifecycle

    def start(self, wait: float | None = None) -> None:
        """Start the writers and the MQTT loop. With ``wait``, block until subscribed
        (TimeoutError after that many seconds); otherwise keep retrying in the background."""
        if self._writer is not None:
            raise RuntimeError("ingest already started")
        self._writer = threading.Thread(target=self._write_loop, name="hub-ingest-writer",
                                        daemon=True)
        self._node_writer = threading.Thread(target=self._node_write_loop,
                                             name="hub-ingest-nodes", daemon=True)
        self._writer.start()
        self._node_writer.start()
        log.info("hub ingest connecting to %s as %r (MQTT %s)", self._broker, self.client_id,
                 "5" if self._v5 else "3.1.1")
        if self._v5:
            # clean_start off plus a session expiry: what clean_session=False was in
            # MQTT 3.1.1, the broker keeping this worker's session while it restarts.
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = max(0, int(self.config.mqtt.session_expiry))
            self._client.connect_async(self._broker.host, self._broker.port, keepalive=30,
                                       clean_start=False, properties=props)
        else:
            self._client.connect_async(self._broker.host, self._broker.port, keepalive=30)
        self._client.loop_start()
        if wait is not None and not self.wait_ready(wait):
            raise TimeoutError(f"hub ingest not subscribed on {self._broker} within {wait}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect, store what is already queued, stop the writers."""
        self._stopping = True
        self._room.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._ready.clear()
        for thread, q in ((self._writer, self._queue), (self._node_writer, self._nodes_queue)):
            if thread is None:
                continue
            q.put(_STOP)
            thread.join(timeout)
            if thread.is_alive():
                log.error("hub ingest %s did not stop within %ss", thread.name, timeout)
        self._writer = self._node_writer = None

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and subscribed (cleared while disconnected)."""
        return self._ready.wait(timeout)

    def wait_for(self, predicate: Callable[[IngestCounters], bool], timeout: float) -> bool:
        """Block until ``predicate(counters)`` holds (checked after every write and every
        dropped message); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.counters), timeout)

    def wait_stored(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` events were stored since start."""
        return self.wait_for(lambda c: c.stored >= n, timeout)

    # ---------------------------------------------------------- paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the hub: %s", self._broker, reason_code)
            self._tell_link(False, f"refused: {reason_code}")
            return
        log.info("hub ingest connected to %s (session present: %s)", self._broker,
                 getattr(flags, "session_present", None))
        # Always (re-)subscribe: after a broker restart without persistence the session
        # is gone, and subscribing again is harmless when it is not.
        client.subscribe([(topic, 1) for topic in self._subscriptions])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: Any, properties: Any) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused hub subscriptions: %s", failed)
            return
        with self._cond:
            self.counters.connects += 1
            self._cond.notify_all()
        self._ready.set()
        self._tell_link(True, "subscribed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: Any, properties: Any) -> None:
        self._ready.clear()
        if reason_code.is_failure and not self._stopping:
            log.warning("hub ingest lost the broker (%s); reconnecting", reason_code)
            self._tell_link(False, "connection lost")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho calls this inside its ``except OSError`` around a (re)connect attempt, so
        the exception being handled is the reason (refused, unknown host, timed out)."""
        exc = sys.exception()
        reason = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                  if exc is not None else "connection failed")
        log.debug("hub ingest cannot reach %s: %s", self._broker, reason)
        self._tell_link(False, reason)

    def _tell_link(self, up: bool, reason: str) -> None:
        listener = self.link_listener
        if listener is None:
            return
        try:
            listener(up, reason)
        except Exception:  # noqa: BLE001 - must not kill paho's loop
            log.exception("hub ingest link listener failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Runs on paho's network thread: validate and queue, nothing slow. Never raises
        (an exception here would stop paho's loop)."""
        self.counters.messages += 1
        # A retained message is a replay of the past: it says nothing about liveness now.
        heard = None if msg.retain else time.time()
        topic = msg.topic
        try:
            node_id, leaf = parse_node_topic(topic)
            if leaf == "events":
                if self._queue.qsize() >= MAX_QUEUED:
                    self._wait_for_room()
                self._on_batch(node_id, topic, msg.payload, heard)
            elif leaf == "state":  # the status lane: never behind queued events
                state = decode_state(msg.payload)
                if state.node_id != node_id:
                    raise PayloadError(f"state names node {state.node_id!r} but was "
                                       f"published under {node_id!r}")
                self._nodes_queue.put(("state", node_id, state, heard))
            elif leaf == "status":
                self._nodes_queue.put(("status", node_id, decode_status(msg.payload), heard))
            else:
                raise PayloadError(f"the hub does not handle topic leaf {leaf!r}")
        except ForgedError as exc:
            with self._cond:
                self.counters.forged += 1
                self._cond.notify_all()
            self._ratelog.warn("forged", "dropped a batch on %r that is not from that node "
                               "(%s); %d so far", msg.topic, exc, self.counters.forged)
        except PayloadError as exc:
            self._dropped(msg, str(exc))
        except Exception as exc:  # noqa: BLE001 - must not kill paho's loop
            self._ratelog.warn("unexpected", "unexpected error handling %s: %s: %s",
                               msg.topic, type(exc).__name__, exc, level=logging.ERROR)
            self._dropped(msg, f"unexpected {type(exc).__name__}: {exc}")

    def _wait_for_room(self) -> None:
        """Backpressure: the event queue is full (the disk stalls), so paho's thread
        stops reading until the writer makes room; the broker holds the rest."""
        while self._queue.qsize() >= MAX_QUEUED and not self._stopping:
            self._room.clear()  # the writer sets it after each write
            if self._queue.qsize() < MAX_QUEUED:
                break
            self._room.wait(1.0)

    def _on_batch(self, node_id: str, topic: str, payload: bytes, heard: float | None) -> None:
        """Authenticate (ForgedError), then decode once; an authentic batch that does not
        decode goes to quarantine (verbatim), acked past when its header is readable."""
        body = open_sealed(self._key(node_id), BATCH_CONTEXT, topic, payload)
        try:
            batch = decode_batch(body, node_id)
        except PayloadError as exc:
            try:
                header = decode_batch_header(body, node_id)
            except PayloadError:
                header = None
            self._ratelog.warn("quarantine", "quarantined a batch from node %s: %s",
                               node_id, exc)
            self._queue.put(("quarantine", node_id,
                             Quarantined(node_id, bytes(payload), str(exc), header), heard))
            return
        self.counters.received += len(batch.events)
        self._queue.put(("events", node_id, batch, heard))

    def _dropped(self, msg: mqtt.MQTTMessage, reason: str) -> None:
        self._ratelog.warn("malformed", "dropped a malformed message on %r (%d bytes): %s",
                           msg.topic[:200], len(msg.payload), reason[:300])
        with self._cond:
            self.counters.malformed += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ writer

    def _write_loop(self) -> None:
        """The event writer: events and quarantined batches, acked after each commit."""
        self._drain(self._queue, max(1, self.config.mqtt.batch_size), "writer")

    def _node_write_loop(self) -> None:
        """The status lane: every status and state queued so far, in one transaction of
        its own (the latest per node wins), whatever the event writer is doing."""
        self._drain(self._nodes_queue, None, "node writer")

    def _drain(self, source: queue.SimpleQueue[Any], batch_size: int | None,
               name: str) -> None:
        """Write what ``source`` holds, a transaction at a time: everything queued so
        far, up to ``batch_size`` events (None: no limit), until _STOP."""
        get, get_nowait = source.get, source.get_nowait
        stopping = False
        while not stopping:
            first = get()
            if first is _STOP:
                break
            items = [first]
            n = _weight(first)
            while batch_size is None or n < batch_size:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                items.append(item)
                n += _weight(item)
            try:
                self._write(items)
            except Exception:  # noqa: BLE001 - the writer must outlive any one batch
                log.exception("hub ingest %s failed on a batch; continuing", name)
            self._room.set()

    def _write(self, items: list[tuple[str, str, Any, float | None]]) -> None:
        batches = []
        quarantined = []
        states: dict[str, tuple[str, NodeState, float | None]] = {}
        statuses: dict[str, tuple[str, str, float | None]] = {}
        seen: dict[str, float] = {}
        for what, node_id, body, heard in items:
            if what == "events":
                batches.append(body)
            elif what == "quarantine":
                quarantined.append(body)
            elif what == "state":
                states[node_id] = (node_id, body, heard)  # the latest wins
            else:
                statuses[node_id] = (node_id, body, heard)
            if heard is not None and not (what == "status" and body == "offline"):
                seen[node_id] = max(seen.get(node_id, 0.0), heard)
        try:
            # Node rows in one order (node id) in every transaction, whichever lane or
            # worker writes it: concurrent writers then never wait on each other in a
            # cycle (a deadlock, with row locks on PostgreSQL).
            result = self.db.write(batches, quarantined=quarantined,
                                   states=[states[k] for k in sorted(states)],
                                   statuses=[statuses[k] for k in sorted(statuses)],
                                   seen={k: seen[k] for k in sorted(seen)})
        except Exception:  # noqa: BLE001 - disk full, locked...: nodes re-send, we go on
            if len(items) > 1:
                # One bad message must not sink the others coalesced with it (and again
                # on every re-send): store them one by one, so only the culprit fails.
                self._ratelog.warn("split", "a batch of %d messages failed to store; "
                                   "retrying one by one", len(items))
                for item in items:
                    self._write([item])
                return
            self._ratelog.warn("write", "hub could not store a message from %s; not acking "
                               "it (the node re-sends)", items[0][1], level=logging.ERROR)
            log.debug("write failure", exc_info=True)
            with self._cond:
                self.counters.write_errors += 1
                self._cond.notify_all()
            return
        with self._cond:  # counted before the acks go out: whoever sees an ack sees these
            c = self.counters
            c.stored += result.stored
            c.duplicates += result.duplicates
            c.conflicts += result.conflicts
            c.lost += result.lost
            c.quarantined += result.quarantined
            c.transactions += 1
            self._cond.notify_all()
        acks = 0
        for node_id, epoch, seq in result.acks:
            if seq > 0:  # seq 0: nothing contiguous stored yet, nothing to delete
                self._client.publish(
                    events_ack_topic(node_id),
                    seal_ack(self._key(node_id), node_id,
                             EventAck(epoch=epoch, seq=seq, ts=time.time())), qos=1)
                acks += 1
        with self._cond:
            self.counters.acks_sent += acks
            self._cond.notify_all()
        if result.duplicates:
            log.debug("dropped %d duplicate events", result.duplicates)


def _weight(item: Any) -> int:
    """How much of the writer's batch an item takes: its events, or 1."""
    return len(item[2].events) if item[0] == "events" else 1
