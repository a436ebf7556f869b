"""MQTT ingest: node status/state/event batches in, durable batched writes, acks out.

Exactly-once storage on top of at-least-once delivery: a node keeps every event in its
outbox until the hub acks it, and re-sends after a reconnect, so the hub sees
duplicates; the database stores each (node_id, seq) once (hub.db) and the ack names
the highest *contiguous* seq stored, so a lost batch in the middle is re-sent rather
than skipped.

Threads, a process, and why:
* paho's network thread (``loop_start``) only routes each message by its topic and
  queues its raw bytes; it must stay fast, because the broker's delivery rate to this
  client is the ceiling for the whole hub.
* the event writer (hub.ingest_writer) takes everything queued (up to
  ``mqtt.batch_size`` events), checks each batch's tag (HMAC, about 2 us), decodes it
  (msgspec, the one parse: the writer stores exactly these values) and writes it in ONE
  transaction, then seals one EventAck per stream touched; this side publishes them.
  Acks go out only after the commit, so an ack always means "on disk". While a commit
  runs, the next batch queues up, so batches grow with the load. By default it is a
  process of its own (``[mqtt] writer_process``), fed over a pipe by a sender thread,
  so that it and paho do not take turns on one interpreter; a writer process that dies
  is started again (what it held unacked, the nodes re-send). A batch whose tag does
  not verify is counted and dropped; an authentic one that does not decode is
  quarantined (kept verbatim) and acked past, so one bad batch never wedges a node.
* the node writer (the status lane, a thread here) stores status and state messages
  from a queue of their own, in transactions of their own: a backlog of events never
  delays them, so the operator page's online/offline and heartbeats stay current under
  load.

The MQTT session is persistent (``clean_session=False`` with ``mqtt.client_id``):
while the hub restarts the broker keeps queueing the QoS1 batches for it. Two hubs
must therefore not share a client id (the broker would disconnect one for the other).
With ``mqtt.shared_group`` set, several ingest workers share the events through an MQTT
5 shared subscription, each with its own session ("<client_id>-<worker>", clean_start
off, ``mqtt.session_expiry``); see docs/mqtt.md, "Several ingest workers".
"""
from __future__ import annotations

import logging
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.config import HubConfig
from hub.db import HubDB
from hub.ingest_writer import Outcome, Raw, WriterCore, start_writer_process
from hub.presence import PresenceRelay
from tapcast.mqttclient import (RoutingClient, TlsFiles, configure_tls, make_client,
                                parse_broker_url)
from tapcast.protocol.mqtt import (HUB_SUBSCRIPTIONS, MAX_PAYLOAD, PRESENCE_OFFER,
                                   PRESENCE_RESULT, PayloadError, parse_node_topic)
from tapcast.streamkeys import load_stream_secret
from tapcast.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

_STOP = object()
_GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Messages queued for the writer before paho's thread waits for room, and again at most
# handed to the writer process and not yet written. The writer drains tens of thousands
# of events a second, so this only bites when the disk stalls; then the broker holds
# the rest (and nodes re-send whatever is never acked).
MAX_QUEUED = 10_000
#: Seconds between attempts to start a writer process that died or would not start.
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)

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
    queued and stops the writers. ``worker`` numbers this ingest among several sharing
    ``mqtt.shared_group`` (its client id). ``writer_process`` (default: ``[mqtt]
    writer_process``) runs the event writer in a process of its own rather than a
    thread; the writer opens ``hub.database`` itself there, while ``db`` serves the
    status lane (and, in a thread, the events too). Tests wait on ``wait_ready`` /
    ``wait_for`` instead of sleeping."""

    def __init__(self, config: HubConfig, db: HubDB, *, worker: int = 1,
                 writer_process: bool | None = None) -> None:
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
        self.writer_process = mq.writer_process if writer_process is None else writer_process
        # Raises StreamKeyError (a ValueError: one line at start-up) when the stream
        # secret is missing; the status lane's core (the event writer's, in a thread).
        self._node_core = WriterCore(config, db)
        #: The code path without NFC: offers and verdicts from nodes, answers to them.
        self.presence = PresenceRelay(db.engine, load_stream_secret(config.hub.stream_secret),
                                      self._publish_qos1)
        self._event_core = None if self.writer_process else WriterCore(config, db)
        self._ratelog = RateLimitedLog(log)
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()  # Raw events
        self._nodes_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # Raw status, state
        self._room = threading.Event()
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self._node_writer: threading.Thread | None = None
        #: The writer process now serving (process mode); tests kill it to see one
        #: started again.
        self.writer: _WriterProcess | None = None
        #: Called on paho's thread as ``link_listener(up, reason)``: up=True once
        #: subscribed, False when a connection attempt fails or the link is lost (it
        #: keeps retrying either way). ``tapcast hub ingest`` prints these; keep it fast.
        self.link_listener: Callable[[bool, str], None] | None = None
        self._on_stop: list[Callable[[], None]] = []
        broker = parse_broker_url(mq.broker)
        self._broker = broker
        self._v5 = bool(group)
        self._subscriptions = subscriptions(config)
        self._client = make_client(
            self.client_id, clean_session=False,
            username=mq.username or broker.username,
            password=mq.password or broker.password,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311, client_class=RoutingClient)
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
        """Start the writers and the MQTT loop. With ``wait``, block until subscribed and
        the writer process has the database open (TimeoutError after that many seconds);
        otherwise keep retrying in the background (what arrives meanwhile queues)."""
        if self._writer is not None:
            raise RuntimeError("ingest already started")
        if self.writer_process:
            # Started here, not on the first event: it imports and opens the database
            # (about half a second) while paho connects.
            self.writer = self._start_writer_process()
            loop, name = self._send_loop, "hub-ingest-sender"
        else:
            loop, name = self._write_loop, "hub-ingest-writer"
        self._writer = threading.Thread(target=loop, name=name, daemon=True)
        self._node_writer = threading.Thread(target=self._node_write_loop,
                                             name="hub-ingest-nodes", daemon=True)
        self._writer.start()
        self._node_writer.start()
        self.presence.start()
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
        if wait is None:
            return
        deadline = time.monotonic() + wait
        if not self.wait_ready(wait):
            raise TimeoutError(f"hub ingest not subscribed on {self._broker} within {wait}s")
        writer = self.writer
        if writer is not None and not writer.wait_ready(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"hub ingest's writer process {writer.failure or 'not ready'} "
                               f"within {wait}s")

    def publish_retained(self, topic: str, payload: bytes) -> bool:
        """Publish ``payload`` retained at QoS 1 (a node's manifest); False when the
        broker is away (paho queues nothing for a client that is not connected)."""
        if not self._client.is_connected():
            return False
        info = self._client.publish(topic, payload, qos=1, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _publish_qos1(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    def on_stop(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` first thing in ``stop`` (a manifest publisher that
        publishes through this ingest's connection); None: nothing."""
        if callback is not None:
            self._on_stop.append(callback)

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect, store what is already queued, stop the writers."""
        for callback in self._on_stop:
            callback()
        self._on_stop.clear()
        self._stopping.set()
        self._room.set()
        self.presence.stop()
        self._client.disconnect()
        self._client.loop_stop()
        self._ready.clear()
        for thread, q in ((self._writer, self._events), (self._node_writer, self._nodes_queue)):
            if thread is None:
                continue
            q.put(_STOP)
            thread.join(timeout)
            if thread.is_alive():
                log.error("hub ingest %s did not stop within %ss", thread.name, timeout)
        if self.writer is not None:
            self.writer.close(timeout)
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
        if reason_code.is_failure and not self._stopping.is_set():
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
        """Runs on paho's network thread: route by topic and queue, nothing slow (the
        writers check and decode). Never raises (an exception here would stop paho's
        loop)."""
        self.counters.messages += 1
        # A retained message is a replay of the past: it says nothing about liveness now.
        heard = None if msg.retain else time.time()
        topic = msg.topic
        try:
            node_id, leaf = parse_node_topic(topic)
            if len(msg.payload) > MAX_PAYLOAD:  # never queued, never piped
                raise PayloadError(f"payload of {len(msg.payload)} bytes exceeds "
                                   f"{MAX_PAYLOAD}")
            if leaf == "events":
                if self._events.qsize() >= MAX_QUEUED:
                    self._wait_for_room()
                self._events.put(Raw(leaf, node_id, topic, msg.payload, heard))
            elif leaf in ("state", "status"):  # the status lane: never behind events
                self._nodes_queue.put(Raw(leaf, node_id, topic, msg.payload, heard))
            elif leaf in (PRESENCE_OFFER, PRESENCE_RESULT):  # codes: hub/presence.py
                self.presence.submit(leaf, node_id, msg.payload)
            else:
                raise PayloadError(f"the hub does not handle topic leaf {leaf!r}")
        except PayloadError as exc:
            self._dropped(msg, str(exc))
        except Exception as exc:  # noqa: BLE001 - must not kill paho's loop
            self._ratelog.warn("unexpected", "unexpected error handling %s: %s: %s",
                               msg.topic, type(exc).__name__, exc, level=logging.ERROR)
            self._dropped(msg, f"unexpected {type(exc).__name__}: {exc}")

    def _wait_for_room(self) -> None:
        """Backpressure: the event queue is full (the disk stalls), so paho's thread
        stops reading until the writer makes room; the broker holds the rest."""
        while self._events.qsize() >= MAX_QUEUED and not self._stopping.is_set():
            self._room.clear()  # set each time the writer (or the sender) takes some
            if self._events.qsize() < MAX_QUEUED:
                break
            self._room.wait(1.0)

    def _dropped(self, msg: mqtt.MQTTMessage, reason: str) -> None:
        self._ratelog.warn("malformed", "dropped a malformed message on %r (%d bytes): %s",
                           msg.topic[:200], len(msg.payload), reason[:300])
        with self._cond:
            self.counters.malformed += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ writers

    def _take(self, source: queue.SimpleQueue[Any]) -> tuple[list[Raw], bool]:
        """Everything ``source`` holds (waiting for the first), at most
        ``mqtt.batch_size`` messages; and whether _STOP came (then the list may be
        empty)."""
        first = source.get()
        if first is _STOP:
            return [], True
        raws = [first]
        get_nowait = source.get_nowait
        limit = max(1, self.config.mqtt.batch_size)
        while len(raws) < limit:
            try:
                item = get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return raws, True
            raws.append(item)
        return raws, False

    def _run_core(self, source: queue.SimpleQueue[Any], core: WriterCore, name: str) -> None:
        """A writer thread: what ``source`` holds, a piece at a time, until _STOP."""
        stopping = False
        while not stopping:
            raws, stopping = self._take(source)
            if raws:
                try:
                    self._deliver(core.handle(raws))
                except Exception:  # noqa: BLE001 - the writer must outlive any one batch
                    log.exception("hub ingest %s failed on a batch; continuing", name)
            self._room.set()

    def _write_loop(self) -> None:
        """The event writer in a thread (``writer_process = false``)."""
        assert self._event_core is not None
        self._run_core(self._events, self._event_core, "writer")

    def _node_write_loop(self) -> None:
        """The status lane: the statuses and states queued so far (up to
        ``mqtt.batch_size`` a transaction, the latest per node wins), in transactions of
        their own, whatever the event writer is doing."""
        self._run_core(self._nodes_queue, self._node_core, "node writer")

    def _deliver(self, out: Outcome) -> None:
        """A writer's outcome: counted before the acks go out (whoever sees an ack sees
        the counts), then the acks (each after the commit it confirms)."""
        with self._cond:
            c = self.counters
            for name, n in out.counts.items():
                setattr(c, name, getattr(c, name) + n)
            self._cond.notify_all()
        for record in out.logs:  # the writer process's, logged here as they came
            logging.getLogger(record.name).handle(record)
        publish = self._client.publish
        for topic, payload in out.acks:
            publish(topic, payload, qos=1)
        if out.acks:
            with self._cond:
                self.counters.acks_sent += len(out.acks)
                self._cond.notify_all()

    # ---------------------------------------------------- the writer process

    def _start_writer_process(self) -> _WriterProcess:
        return _WriterProcess(self.config, logging.getLogger("hub").getEffectiveLevel(),
                              self._cond, self._deliver)

    def _send_loop(self) -> None:
        """The sender thread (process mode): queued events to the writer process, in
        pieces of at most ``mqtt.batch_size`` messages, never more than MAX_QUEUED
        handed over and not yet written; a writer that died is started again."""
        restarts = 0
        stopping = False
        while not stopping:
            raws, stopping = self._take(self._events)
            self._room.set()
            while raws:
                writer = self.writer
                assert writer is not None
                if writer.done.is_set():
                    if self._stopping.is_set():
                        log.error("hub ingest stopping with its writer process gone: "
                                  "%d messages not stored (their nodes re-send them)",
                                  len(raws))
                        return
                    delay = RESTART_DELAYS[min(restarts, len(RESTART_DELAYS) - 1)]
                    log.error("hub ingest's writer process %s; starting another in %.1f s "
                              "(the nodes re-send what it had not stored)",
                              writer.failure or "stopped", delay)
                    restarts += 1
                    writer.close(1.0)
                    self._stopping.wait(delay)
                    try:
                        self.writer = self._start_writer_process()
                    except OSError as exc:  # no memory, no process slots: try again
                        writer.failure = f"could not be started again ({exc})"
                    continue
                if writer.send(raws):
                    raws = []
                    if writer.handled:  # it works: the next failure starts a new count
                        restarts = 0
        writer = self.writer
        if writer is not None and not writer.done.is_set():
            writer.finish()


class _WriterProcess:
    """One writer process (``python -m hub.ingest_writer``) and the thread that reads
    what it sends back. ``done`` is set once it said bye, failed or died."""

    def __init__(self, config: HubConfig, level: int, cond: threading.Condition,
                 deliver: Callable[[Outcome], None]) -> None:
        self.process, self._to_child, self._from_child = start_writer_process(config, level)
        self._cond = cond
        self._deliver = deliver
        self.sent = 0  # Raw messages handed over (the sender thread's)
        self.handled = 0  # of which it wrote (this reader's, under cond)
        self.failure: str | None = None
        self.ready = threading.Event()  # it has the database open
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read, name="hub-ingest-writer-reader",
                                        daemon=True)
        self._reader.start()

    def send(self, raws: list[Raw]) -> bool:
        """Hand ``raws`` over once fewer than MAX_QUEUED are waiting in it; False when it
        is gone (``done``) first, and ``raws`` were not handed over."""
        with self._cond:
            self._cond.wait_for(lambda: self.sent - self.handled < MAX_QUEUED
                                or self.done.is_set())
        if self.done.is_set():
            return False
        try:
            # As plain tuples: a NamedTuple pickles and unpickles about 6x slower
            # (the writer unpacks each by position either way).
            self._to_child.send([tuple(raw) for raw in raws])
        except OSError:  # it died meanwhile: the reader sees EOF and sets done
            self.done.wait(5.0)
            return False
        self.sent += len(raws)
        return True

    def wait_ready(self, timeout: float) -> bool:
        """True once it has the database open; False on timeout or when it failed."""
        with self._cond:
            self._cond.wait_for(lambda: self.ready.is_set() or self.done.is_set(), timeout)
        return self.ready.is_set()

    def finish(self) -> None:
        """No more messages: it writes what it holds, says bye and exits."""
        try:
            self._to_child.send(None)
        except OSError:
            pass

    def close(self, timeout: float) -> None:
        """Wait for it to finish (after ``finish``) or stop it, and for the reader."""
        if not self.done.wait(timeout):
            log.error("hub ingest's writer process did not finish within %ss; stopping it",
                      timeout)
        try:
            self.process.wait(timeout if self.done.is_set() else 0.1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)
        self._to_child.close()
        self._from_child.close()

    def _read(self) -> None:
        try:
            while True:
                kind, body = self._from_child.recv()
                if kind == "outcome":
                    with self._cond:
                        self.handled += body.handled
                        self._cond.notify_all()
                    self._deliver(body)
                elif kind == "ready":
                    with self._cond:
                        self.ready.set()
                        self._cond.notify_all()
                elif kind == "fatal":
                    self.failure = f"could not start: {body}"
                    return
                else:  # "bye"
                    return
        except (EOFError, OSError):
            try:
                code: int | None = self.process.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            self.failure = f"exited with code {code}"
        except Exception:  # noqa: BLE001 - say so; the sender starts another
            log.exception("hub ingest could not read its writer process")
            self.failure = "sent something unreadable"
            self.process.kill()
        finally:
            with self._cond:
                self.done.set()
                self._cond.notify_all()
