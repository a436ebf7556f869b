"""The node's MQTT uplink: streams the outbox to the hub, exactly once.

Exactly-once = at-least-once delivery + idempotent storage (argument in docs/mqtt.md):
every event carries a seq from the durable outbox; batches go out as QoS1 and are
re-sent after a reconnect or when no ack came for ``ack_timeout`` seconds; the hub
stores each (node_id, seq) once and acks the highest *contiguous* seq it holds; only
that ack deletes events from the outbox. Losing a PUBACK, an ack or a whole connection
therefore costs a duplicate send, never an event.

Why paho runs on the asyncio loop (paho's "external event loop" mode, as in its
loop_asyncio example) rather than in ``loop_start()``'s thread: every callback then runs
on the loop thread, so the Outbox (a SQLite connection, which refuses other threads)
and the window bookkeeping need no locks. Only the blocking TCP connect runs in an
executor, so an unreachable broker (SYN timeouts) never stalls the node's tap handling.
paho's own reconnect is not used: it retries one host without jitter, and the node must
fail over across ``mqtt.brokers``.

Given ``on_manifest``, the uplink also subscribes to the node's retained manifest topic
and hands each payload to it on the loop (node.sync checks it); one over
tapcast.signed.MAX_SIZE is refused here, unread.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from node.outbox import Outbox
from node.config import MqttSection
from tapcast.mqttclient import (TlsFiles, configure_tls, describe_tls_error, make_client,
                                parse_broker_url, tls_close_hint, tls_context)
from tapcast.protocol.mqtt import (ACK_CONTEXT, OFFLINE, ONLINE, EventBatch, ForgedError,
                                   NodeState, PayloadError, decode_ack, encode,
                                   events_ack_topic, events_topic, open_sealed, seal_batch,
                                   state_topic, status_topic)
from tapcast.protocol.manifest import manifest_topic
from tapcast.ratelog import RateLimitedLog
from tapcast.signed import MAX_SIZE as MAX_SIGNED_SIZE

log = logging.getLogger(__name__)


class Uplink:
    """One node's connection to the hub's broker. All methods: call from the asyncio
    loop that ran ``start()`` (from another thread use ``loop.call_soon_threadsafe``).

    Tuning: ``window`` batches (of up to ``mqtt.batch_size`` events) may await the hub's
    ack at once, so a backlog streams without a round trip per batch while a slow hub
    still bounds what is re-sent after a timeout. 16 x 200 measured 150k+ events/s on
    loopback; smaller windows expose round-trip latency (a Mosquitto without
    ``set_tcp_nodelay true`` adds delayed-ACK stalls: window 4 fell to 25k/s).
    """

    def __init__(self, node_id: str, mqtt: MqttSection, outbox: Outbox, stream_key: bytes, *,
                 zone: str = "default", version: str = "0",
                 state_provider: Callable[[], NodeState] | None = None,
                 on_hub_time: Callable[[float], None] | None = None,
                 on_manifest: Callable[[bytes], None] | None = None,
                 heartbeat_interval: float = 30.0, ack_timeout: float = 10.0,
                 window: int = 16, backoff_min: float = 0.5, backoff_max: float = 30.0,
                 connect_timeout: float = 5.0, base_dir: str | Path = ".") -> None:
        if not mqtt.brokers:
            raise ValueError("mqtt.brokers is empty: give at least one mqtt://host:port")
        self.brokers = [parse_broker_url(url) for url in mqtt.brokers]  # fail early on a bad URL
        # TLS files for mqtts:// brokers, relative to base_dir (the config file's folder).
        self.tls = TlsFiles(mqtt.ca_file, mqtt.cert_file, mqtt.key_file).resolved(base_dir)
        if any(b.tls for b in self.brokers):
            tls_context(self.tls)  # fail early (ValueError) on a missing or bad file
        if min(heartbeat_interval, ack_timeout, connect_timeout, backoff_min) <= 0:
            raise ValueError("heartbeat_interval, ack_timeout, connect_timeout and backoff_min "
                             "must be > 0 seconds")
        if mqtt.batch_size < 1 or window < 1:
            raise ValueError(f"mqtt.batch_size and window must be >= 1 "
                             f"(got batch_size={mqtt.batch_size}, window={window})")
        if len(stream_key) != 32:
            raise ValueError("stream_key must be the node's 32-byte stream key")
        self.node_id = node_id
        self.mqtt = mqtt
        self.outbox = outbox
        self._stream_key = stream_key
        #: Called with the hub's clock from every authentic ack (tapcast.clock.BestTime).
        self.on_hub_time = on_hub_time
        #: Called on the loop with each payload on the manifest topic (node.sync).
        self.on_manifest = on_manifest
        self.zone = zone
        self.version = version
        self.state_provider = state_provider
        self.heartbeat_interval = heartbeat_interval
        self.ack_timeout = ack_timeout
        self.window = window
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self._topic_events = events_topic(node_id)  # also validates node_id
        self._topic_ack = events_ack_topic(node_id)
        self._topic_status = status_topic(node_id)
        self._topic_state = state_topic(node_id)
        self._topic_manifest = manifest_topic(node_id)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: paho.Client | None = None
        self._broker_index = 0
        self._connected = False
        self._stop = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._lost = asyncio.Event()
        self._connack: asyncio.Future[Any] | None = None
        self._sent_upto = 0  # highest seq published on the current connection
        self._acked = 0  # highest seq the hub acked (this process)
        self._inflight: collections.deque[int] = collections.deque()  # last seq per batch
        self._progress_t = 0.0  # monotonic time of the last ack progress (or first send)
        self._pump_scheduled = False
        self._drain_waiters: list[tuple[int | None, asyncio.Future[None]]] = []
        self._publish_waiters: dict[int, asyncio.Future[None]] = {}
        self._started_t = time.monotonic()
        self.connections = 0  # successful CONNACKs so far (for operators and tests)
        self.resends = 0  # go-back-N restarts after an ack timeout
        self.forged_acks = 0  # acks whose tag did not verify: ignored
        self.refused_acks = 0  # authentic but malformed, of another epoch, or beyond our seqs
        self.refused_manifests = 0  # manifest payloads over MAX_SIGNED_SIZE: not passed on
        #: Further topics the node reads (node.presence's answers), subscribed on every
        #: connect: topic -> handler, called on the loop with the payload.
        self._extra: dict[str, Callable[[bytes], None]] = {}
        self._ratelog = RateLimitedLog(log)

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def broker(self) -> str:
        """The broker URL currently used (or tried next)."""
        return str(self.brokers[self._broker_index])

    async def start(self) -> None:
        """Start connecting in the background; returns at once (offline-first)."""
        if self._task is not None:
            raise RuntimeError("Uplink already started")
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._started_t = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"uplink-{self.node_id}")

    def notify(self) -> None:
        """New events are in the outbox: send them when the window allows. Cheap and
        coalescing: many calls in one loop iteration give one outbox query."""
        if self._loop is None or self._pump_scheduled:
            return
        self._pump_scheduled = True
        self._loop.call_soon(self._pump)

    async def stop(self) -> None:
        """Publish retained "offline", disconnect cleanly (so the broker does not fire
        the will), and end the background task. Events not yet acked stay in the outbox."""
        if self._task is None:
            return
        self._stop.set()
        await self._task
        self._task = None

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    async def wait_drained(self, timeout: float | None = None, *, upto: int | None = None) -> None:
        """Return once the hub acked every event with seq <= ``upto`` (default: once the
        outbox is empty). For tests, benchmarks and a graceful shutdown that flushes."""
        if self._drained(upto):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (upto, fut)
        self._drain_waiters.append(waiter)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _drained(self, upto: int | None) -> bool:
        first = self.outbox.pending(1)
        return not first or (upto is not None and first[0].seq > upto)

    def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Read ``topic`` (QoS 1) from now on, on this and every later connection;
        ``handler(payload)`` runs on the loop and must check what it gets."""
        self._extra[topic] = handler
        if self._client is not None and self._connected:
            self._client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish ``payload`` at QoS 1 now; False (nothing queued) while disconnected:
        for messages that are worthless later (node.presence's offers)."""
        if self._client is None or not self._connected:
            return False
        return self._client.publish(topic, payload, qos=1).rc == paho.MQTT_ERR_SUCCESS

    def publish_state(self) -> None:
        """Publish the state heartbeat now (something an operator should see changed);
        a no-op while offline (the next connection publishes it)."""
        if self._connected:
            self._publish_state()

    def state(self) -> NodeState:
        """The heartbeat snapshot: from ``state_provider`` when given, else a minimal one."""
        if self.state_provider is not None:
            return self.state_provider()
        return NodeState(node_id=self.node_id, ts=time.time(), version=self.version,
                         zone=self.zone, uptime=time.monotonic() - self._started_t,
                         outbox_depth=self.outbox.depth())

    # ------------------------------------------------------------ connection policy

    async def _run(self) -> None:
        failed_rounds = 0
        n = len(self.brokers)
        while not self._stop.is_set():
            try:
                for i in range(n):
                    index = (self._broker_index + i) % n
                    if await self._connect_once(index):
                        self._broker_index = index
                        failed_rounds = 0
                        await self._serve()
                        break
                    if self._stop.is_set():
                        return
                else:
                    failed_rounds += 1
            except Exception:  # a bug or a disk error must not end the uplink for good
                log.exception("uplink %s: unexpected error; reconnecting", self.node_id)
                self._drop_client()
                failed_rounds += 1
            if self._stop.is_set():
                return
            # Exponential backoff with jitter ("equal jitter": half fixed, half random)
            # so a fleet of nodes does not reconnect in lockstep after a broker restart.
            # A connection that was lost (failed_rounds == 0) retries after backoff_min.
            delay = min(self.backoff_max, self.backoff_min * 2 ** min(failed_rounds, 32))
            delay = delay / 2 + random.uniform(0, delay / 2)
            log.info("uplink %s: reconnecting in %.2fs", self.node_id, delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    async def _connect_once(self, index: int) -> bool:
        """One connect attempt to broker ``index``: True once the broker accepted us."""
        assert self._loop is not None
        url = self.brokers[index]
        client = make_client(self.node_id,
                             username=url.username or self.mqtt.username,
                             password=url.password if url.username else self.mqtt.password)
        client.will_set(self._topic_status, OFFLINE, qos=1, retain=True)
        client.connect_timeout = self.connect_timeout
        client.max_inflight_messages_set(self.window + 4)  # + status, state, subscribe
        self._wire(client)
        self._client = client
        self._lost.clear()
        self._connack = self._loop.create_future()
        try:
            configure_tls(client, url, self.tls)  # re-reads the files: renewed certs apply
            await self._loop.run_in_executor(
                None, client.connect, url.host, url.port, self.mqtt.keepalive)
        except ssl.SSLError as exc:  # refused the broker's certificate, or the handshake failed
            log.warning("uplink %s: %s", self.node_id, describe_tls_error(exc, url, self.tls))
            self._client = None
            return False
        except (OSError, ValueError) as exc:
            log.warning("uplink %s: cannot reach broker %s: %s", self.node_id, url, exc)
            self._client = None
            return False
        stop_wait = asyncio.ensure_future(self._stop.wait())
        lost_wait = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({self._connack, stop_wait, lost_wait},
                                         timeout=self.connect_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            lost_wait.cancel()
        if self._connack in done and not self._connack.result().is_failure:
            return True
        if self._connack in done:
            log.warning("uplink %s: broker %s refused the connection: %s",
                        self.node_id, url, self._connack.result())
        elif self._lost.is_set():
            log.warning("uplink %s: broker %s closed the connection before CONNACK%s",
                        self.node_id, url, tls_close_hint(url, self.tls))
        elif not self._stop.is_set():
            log.warning("uplink %s: no CONNACK from %s within %ss",
                        self.node_id, url, self.connect_timeout)
        client.disconnect()
        self._client = None
        return False

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        self._connected_event.clear()
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # already broken: nothing more to release
                log.debug("uplink %s: disconnect of a broken client failed", self.node_id,
                          exc_info=True)

    async def _serve(self) -> None:
        """Run one established connection until it is lost or stop() is called."""
        client = self._client
        assert client is not None
        url = self.brokers[self._broker_index]
        log.info("uplink %s: connected to %s", self.node_id, url)
        self.connections += 1
        self._connected = True
        self._connected_event.set()
        client.subscribe(self._topic_ack, qos=1)
        if self.on_manifest is not None:  # retained: the latest comes at once
            client.subscribe(self._topic_manifest, qos=1)
        for topic in self._extra:
            client.subscribe(topic, qos=1)
        client.publish(self._topic_status, ONLINE, qos=1, retain=True)
        self._publish_state()
        # Re-send everything not acked: acks for the previous connection may be lost;
        # the hub dedups on (node_id, seq).
        self._sent_upto = 0
        self._inflight.clear()
        self._pump()
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        # paho's loop_misc wants a call about once a second; ack timeouts and heartbeats
        # shorter than that (tests) need a faster tick.
        tick = min(1.0, self.ack_timeout / 2, self.heartbeat_interval / 2)
        stop_wait = asyncio.ensure_future(self._stop.wait())
        lost_wait = asyncio.ensure_future(self._lost.wait())
        try:
            while not self._lost.is_set() and not self._stop.is_set():
                await asyncio.wait({stop_wait, lost_wait}, timeout=tick,
                                   return_when=asyncio.FIRST_COMPLETED)
                if self._lost.is_set() or self._stop.is_set():
                    break
                client.loop_misc()  # keepalive pings; detects a silent broker
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._publish_state()
                    next_heartbeat = now + self.heartbeat_interval
                self._check_ack_timeout(now)
            if self._stop.is_set() and not self._lost.is_set():
                await self._say_goodbye(client)
        finally:
            stop_wait.cancel()
            lost_wait.cancel()
            if not self._lost.is_set():  # left by an exception: release the socket
                client.disconnect()
            self._connected = False
            self._connected_event.clear()
            self._client = None
        log.info("uplink %s: disconnected from %s", self.node_id, url)

    async def _say_goodbye(self, client: paho.Client) -> None:
        assert self._loop is not None
        info = client.publish(self._topic_status, OFFLINE, qos=1, retain=True)
        fut = self._loop.create_future()
        self._publish_waiters[info.mid] = fut
        lost_wait = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({fut, lost_wait}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._publish_waiters.pop(info.mid, None)
            lost_wait.cancel()
        if self._lost.is_set():
            return
        client.disconnect()  # a DISCONNECT packet: the broker discards the will
        try:
            await asyncio.wait_for(self._lost.wait(), 5.0)
        except TimeoutError:
            log.warning("uplink %s: broker did not close the connection after DISCONNECT",
                        self.node_id)

    # ---------------------------------------------------------------- streaming

    def _pump(self) -> None:
        """Publish batches of pending events until the window is full."""
        self._pump_scheduled = False
        client = self._client
        if not self._connected or client is None:
            return
        while len(self._inflight) < self.window:
            events = self.outbox.pending(self.mqtt.batch_size, after=self._sent_upto)
            if not events:
                return
            low = self.outbox.lowest_seq() or events[0].seq
            payload = seal_batch(self._stream_key, EventBatch(
                node_id=self.node_id, epoch=self.outbox.epoch, low=low,
                first=events[0].seq, last=events[-1].seq, events=events))
            info = client.publish(self._topic_events, payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                log.warning("uplink %s: publish failed (%s); will re-send after reconnect",
                            self.node_id, paho.error_string(info.rc))
                return
            if not self._inflight:
                self._progress_t = time.monotonic()
            self._sent_upto = events[-1].seq
            self._inflight.append(events[-1].seq)

    def _check_ack_timeout(self, now: float) -> None:
        if self._inflight and now - self._progress_t > self.ack_timeout:
            log.warning("uplink %s: no ack for %.1fs; re-sending from the oldest unacked event",
                        self.node_id, now - self._progress_t)
            self.resends += 1
            self._sent_upto = 0
            self._inflight.clear()
            self._pump()

    def _handle_ack(self, payload: bytes) -> None:
        """Delete what the hub stored, but only on an ack that provably comes from the
        hub (its tag verifies under this node's stream key) and names this outbox's
        epoch: anyone else on the broker can publish on our ack topic."""
        try:
            ack = decode_ack(open_sealed(self._stream_key, ACK_CONTEXT, self._topic_ack, payload))
        except ForgedError as exc:
            self.forged_acks += 1
            self._ratelog.warn("forged", "uplink %s: ignoring an ack that is not from the hub "
                               "(%s); %d so far", self.node_id, exc, self.forged_acks)
            return
        except PayloadError as exc:
            self.refused_acks += 1
            self._ratelog.warn("malformed", "uplink %s: ignoring a malformed ack: %s",
                               self.node_id, exc)
            return
        if self.on_hub_time is not None:  # authentic: the hub's own clock
            self.on_hub_time(ack.ts)
        if ack.epoch != self.outbox.epoch:
            self.refused_acks += 1
            self._ratelog.warn("epoch", "uplink %s: ignoring an ack for outbox epoch %s (this "
                               "outbox is epoch %s)", self.node_id, ack.epoch, self.outbox.epoch)
            return
        last = self.outbox.last_seq()
        if ack.seq > last:
            self.refused_acks += 1
            self._ratelog.warn("beyond", "uplink %s: hub acked seq %d but this outbox "
                               "assigned only up to %d; ignoring the ack", self.node_id,
                               ack.seq, last, level=logging.ERROR)
            return
        if ack.seq > self._acked:
            self._acked = ack.seq
            self._progress_t = time.monotonic()
        self.outbox.ack(ack.seq)
        while self._inflight and self._inflight[0] <= ack.seq:
            self._inflight.popleft()
        self._sent_upto = max(self._sent_upto, ack.seq)
        self._pump()
        for upto, fut in list(self._drain_waiters):
            if not fut.done() and self._drained(upto):
                fut.set_result(None)
                self._drain_waiters.remove((upto, fut))

    def _handle_manifest(self, payload: bytes) -> None:
        if self.on_manifest is None:
            return
        if len(payload) > MAX_SIGNED_SIZE:
            self.refused_manifests += 1
            self._ratelog.warn("manifest_size", "uplink %s: refusing a manifest payload of %d "
                               "bytes, over the %d a signed object may have", self.node_id,
                               len(payload), MAX_SIGNED_SIZE)
            return
        self.on_manifest(bytes(payload))

    def _publish_state(self) -> None:
        if self._client is None:
            return
        try:
            payload = encode(self.state())
        except Exception:  # a broken provider must not take the uplink down
            log.exception("uplink %s: state_provider failed; heartbeat skipped", self.node_id)
            return
        self._client.publish(self._topic_state, payload, qos=1, retain=True)

    # ------------------------------------------------------- paho on the asyncio loop

    def _wire(self, client: paho.Client) -> None:
        """Hook paho's external-loop callbacks to the asyncio loop. Socket callbacks may
        fire in the executor thread during connect(); they hop to the loop thread."""
        loop = self._loop
        assert loop is not None
        loop_thread = threading.get_ident()
        nodelay = client.on_socket_open  # make_client's TCP_NODELAY hook

        def on_loop(fn: Callable[..., Any], *args: Any) -> None:
            if threading.get_ident() == loop_thread:
                fn(*args)
            else:
                loop.call_soon_threadsafe(fn, *args)

        def read() -> None:
            client.loop_read()
            # TLS: a record may hold more than loop_read consumed; what stays in the
            # SSL buffer never makes the socket readable again, so read it now.
            for _ in range(64):
                sock = client.socket()
                if not isinstance(sock, ssl.SSLSocket) or sock.pending() <= 0:
                    break
                client.loop_read()

        def add_reader(sock: socket.socket) -> None:
            if sock.fileno() != -1:
                loop.add_reader(sock, read)

        def add_writer(sock: socket.socket) -> None:
            if sock.fileno() != -1:
                loop.add_writer(sock, client.loop_write)

        def on_socket_open(c: paho.Client, userdata: Any, sock: socket.socket) -> None:
            if nodelay is not None:
                nodelay(c, userdata, sock)
            on_loop(add_reader, sock)

        def on_socket_close(c: paho.Client, userdata: Any, sock: socket.socket) -> None:
            on_loop(loop.remove_reader, sock)
            on_loop(loop.remove_writer, sock)

        def on_register_write(c: paho.Client, userdata: Any, sock: socket.socket) -> None:
            on_loop(add_writer, sock)

        def on_unregister_write(c: paho.Client, userdata: Any, sock: socket.socket) -> None:
            on_loop(loop.remove_writer, sock)

        def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if c is self._client and self._connack is not None and not self._connack.done():
                self._connack.set_result(reason)

        def on_disconnect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if c is not self._client:
                return
            if not self._stop.is_set():
                log.warning("uplink %s: connection lost: %s", self.node_id, reason)
            self._connected = False
            self._lost.set()

        def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            if c is not self._client:
                return
            try:
                if msg.topic == self._topic_ack:
                    self._handle_ack(msg.payload)
                elif msg.topic == self._topic_manifest:
                    self._handle_manifest(msg.payload)
                elif msg.topic in self._extra:
                    self._extra[msg.topic](bytes(msg.payload))
            except Exception:  # never let one message break paho's read loop
                log.exception("uplink %s: error while handling a message on %s",
                              self.node_id, msg.topic)

        def on_publish(c: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            fut = self._publish_waiters.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

        client.on_socket_open = on_socket_open
        client.on_socket_close = on_socket_close
        client.on_socket_register_write = on_register_write
        client.on_socket_unregister_write = on_unregister_write
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.on_publish = on_publish
