"""The simulated handset radio: a bumble GATT peripheral speaking the Tapcast BLE protocol.

It plays what the Android app does after a tap: advertise the tap's token (a 128-bit
service UUID derived from the session key, tapcast.protocol.ble.session_token)
connectable for a short window only (so a phone is not connectable all day and not
trackable across taps), accept the node's connection, reassemble, open and acknowledge
what the node pushes, and answer over ``tx`` notifications (request, offer response,
ack, bye).

Anyone in range may connect in the window. The session binds to the first connection
that proves the session key (an authentic frame); until then the handset keeps
advertising, so a stranger connecting first cannot lock the node out, and a connection
that has not proven the key within ``bind_timeout`` is dropped. Frames that fail
authentication, come from another connection or exceed MTU-3 are dropped unread and
counted in :attr:`BlePeripheral.dropped`.

bumble facts that matter here (bumble 0.0.236): a GATT write callback that raises
anything but ``ATT_Error`` leaves a write-with-response client waiting 30 s, so every
callback below catches everything and maps it to an ``ATT_Error``; the device must be
created inside the running loop (tapcast.radio.bumble.HciAdapter opens it there).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from bumble import att, core, gatt, hci
from bumble.device import Connection, Device

from tapcast.radio.bumble import PUBLIC, RANDOM, HciAdapter
from tapcast.protocol.ble import (
    INFO_UUID, RX_UUID, SERVICE_UUID, TX_UUID, AckFrame, AckReceived, AckStatus, Delivered,
    Endpoint, Frame, FrameError, Info, Message, QueryFrame, Reply, Unauthentic,
)

log = logging.getLogger(__name__)

#: ATT application error code (0x80-0x9F are application errors) for a bad frame.
ATT_FRAME_ERROR = 0x80
#: Longest wait for our own disconnection to complete (see BlePeripheral._disconnect).
DISCONNECT_TIMEOUT = 1.0


class BlePeripheral:
    """One handset's BLE side on a bumble :class:`HciAdapter` (which it owns and closes).

    Call :meth:`start` inside the running loop, then :meth:`open_window` after each tap.
    Received messages land in :attr:`messages` (and ``on_message`` if given); authentic
    frames that were refused land in :attr:`errors` as FrameError; frames dropped unread
    are counted in :attr:`dropped` by reason ("unauthentic", "other_connection",
    "oversized", "no_session"), and connections dropped for not proving the key in
    ``dropped["unproven_connection"]``. ``on_frame(index, total)`` is called for each
    authentic DATA frame received (diagnostics; tests use it to drop a link mid-message).
    """

    def __init__(self, adapter: HciAdapter, *, name: str = "handset",
                 address_type: int = RANDOM, window: float = 3.0,
                 advertising_interval_ms: float = 20.0, ack_timeout: float = 2.0,
                 bind_timeout: float = 1.0,
                 on_message: Callable[[Message], None] | None = None,
                 on_frame: Callable[[int, int], None] | None = None,
                 on_dropped: Callable[[str, str], None] | None = None) -> None:
        if address_type not in (PUBLIC, RANDOM):
            raise ValueError(f"address_type must be 0 (public) or 1 (random), got {address_type!r}")
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self.adapter = adapter
        self.name = name
        self.address_type = address_type
        self.window = window
        self.advertising_interval_ms = advertising_interval_ms
        self.ack_timeout = ack_timeout
        self.bind_timeout = bind_timeout
        self.dropped: Counter[str] = Counter()
        self.on_message = on_message
        self.on_frame = on_frame
        #: Called with (reason, detail) for each frame dropped unread (the phone reports it).
        self.on_dropped = on_dropped
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.errors: asyncio.Queue[FrameError] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.window_closed = asyncio.Event()
        self._acks: asyncio.Queue[AckReceived] = asyncio.Queue()
        self._device: Device | None = None
        self._connection: Connection | None = None  # the session's, once bound
        self._links: set[Connection] = set()  # every live link, bound or not
        self._endpoint: Endpoint | None = None
        self._window_open_until = 0.0
        self._window_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dead: set[Connection] = set()  # dropped links whose data is discarded
        self._tx: gatt.Characteristic | None = None
        self._adv_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        device = await self.adapter.device()
        rx = gatt.Characteristic(
            RX_UUID,
            gatt.Characteristic.Properties.WRITE | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue(write=self._on_rx_write))
        self._tx = gatt.Characteristic(
            TX_UUID, gatt.Characteristic.Properties.NOTIFY, gatt.Characteristic.READABLE, b"")
        info = gatt.Characteristic(
            INFO_UUID, gatt.Characteristic.Properties.READ, gatt.Characteristic.READABLE,
            Info().encode())
        device.add_service(gatt.Service(SERVICE_UUID, [rx, self._tx, info]))
        device.on("connection", self._on_connection)
        self._device = device

    async def close(self) -> None:
        tasks = list(self._tasks) + ([self._window_task] if self._window_task else [])
        for task in tasks:
            task.cancel()
        # Wait for them: a task cancelled inside bumble's stop_advertising leaves the
        # advertising set half-removed, and removing the device then races with it.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_advertising_locked()  # after any shielded start still running
        self._device = None
        await self.adapter.close()

    @property
    def address(self) -> str:
        """"AA:BB:CC:DD:EE:FF" of the address this handset advertises (type: address_type)."""
        device = self._require_device()
        if self.address_type == PUBLIC:
            address = device.public_address
        else:
            address = device.random_address
        return address.to_string(with_type_qualifier=False)

    def _require_device(self) -> Device:
        if self._device is None:
            raise RuntimeError("BlePeripheral.start() was not called (or close() was)")
        return self._device

    # --------------------------------------------------------------------- window
    async def end_session(self) -> None:
        """When a new tap begins: the previous session is over. Stop advertising for it
        and drop its link now, before the NFC exchange, because the node tapped next
        starts connecting as soon as it has authenticated the phone, and a link that
        arrives then must not be mistaken for the old one."""
        if self._window_task is not None:
            self._window_task.cancel()
            self._window_task = None
        self._endpoint = None
        await self._drop_all_links()
        await asyncio.shield(self._stop_advertising_locked())

    async def open_window(self, session_key: bytes) -> None:
        """After a tap: take the new session key and advertise connectable for ``window``
        seconds, at ``advertising_interval_ms``."""
        device = self._require_device()
        # A link still left from the previous tap (end_session() was not called) belongs
        # to a dead session (other key): drop it, or this handset would never advertise
        # for the new one.
        await self._drop_all_links()
        self._endpoint = Endpoint(session_key, "handset")
        self._window_open_until = time.monotonic() + self.window
        self.window_closed.clear()
        if self._window_task is not None:
            self._window_task.cancel()
        self._window_task = asyncio.create_task(self._close_window_later())
        await self._advertise(device)

    @property
    def link_count(self) -> int:
        """Live links, bound to the session or not (``connected`` is set once bound)."""
        return len(self._links)

    @property
    def token(self) -> str | None:
        """The UUID this handset advertises for the current session (None before a tap)."""
        return self._endpoint.token if self._endpoint is not None else None

    @property
    def window_open(self) -> bool:
        return time.monotonic() < self._window_open_until

    # bumble 0.0.236 keeps one legacy advertising set and removes it in two steps (HCI
    # command, then its own bookkeeping); two start/stop calls interleaving, or one
    # cancelled between the steps, leave it half-removed and the next call raises
    # KeyError. So every start/stop holds _adv_lock and runs shielded from cancellation.

    async def _advertise(self, device: Device) -> None:
        await asyncio.shield(self._advertise_locked(device))

    async def _advertise_locked(self, device: Device) -> None:
        async with self._adv_lock:
            endpoint = self._endpoint
            if device.is_advertising or self._connection is not None or endpoint is None \
                    or not self.window_open:
                return
            data = core.AdvertisingData([
                (core.AdvertisingData.FLAGS, bytes([0x06])),  # LE general discoverable, no BR/EDR
                (core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                 core.UUID(endpoint.token).to_bytes(force_128=True)),
            ])
            await device.start_advertising(
                own_address_type=(hci.OwnAddressType.PUBLIC if self.address_type == PUBLIC
                                  else hci.OwnAddressType.RANDOM),
                advertising_data=bytes(data),
                advertising_interval_min=self.advertising_interval_ms,
                advertising_interval_max=self.advertising_interval_ms)

    async def _stop_advertising_locked(self) -> None:
        async with self._adv_lock:
            if self._device is not None and self._device.is_advertising:
                await self._device.stop_advertising()

    async def _close_window_later(self) -> None:
        await asyncio.sleep(self.window)
        self._window_open_until = 0.0
        await asyncio.shield(self._stop_advertising_locked())
        log.debug("%s: window closed", self.name)
        self.window_closed.set()

    # ----------------------------------------------------------------- connection
    def _on_connection(self, connection: Connection) -> None:
        self._links.add(connection)
        connection.on("disconnection", lambda _reason, c=connection: self._on_disconnection(c))
        if self._connection is None and self.window_open and self._device is not None:
            # Not bound yet: whoever this is, keep the door open for the node (a stranger
            # connecting first must not lock it out), and drop this link unless it
            # proves the session key in time.
            self._spawn(self._advertise(self._device))
            self._spawn(self._expire_unproven(connection))

    async def _expire_unproven(self, connection: Connection) -> None:
        await asyncio.sleep(self.bind_timeout)
        if connection in self._links and connection is not self._connection:
            self.dropped["unproven_connection"] += 1
            log.info("%s: dropping a link that did not prove the session key in %.1f s",
                     self.name, self.bind_timeout)
            self._dead.add(connection)
            await self._disconnect(connection)

    def _bind(self, connection: Connection) -> None:
        """The first connection that proves the session key owns the session: others
        are dropped and advertising stops."""
        self._connection = connection
        self.connected.set()
        self._drop_unbound_links()
        self._spawn(self._stop_advertising_locked())

    async def _disconnect(self, connection: Connection) -> None:
        """Disconnect, bounded: when the peer ends the link at the same moment, the
        virtual controller may never report our own disconnection complete (bumble then
        waits forever, and so would the next tap's open_window). After
        DISCONNECT_TIMEOUT the link is taken as gone."""
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT):  # no extra task: same timing
                await connection.disconnect()
        except (core.BaseBumbleError, hci.HCI_Error) as exc:  # already gone
            log.debug("disconnect: %r", exc)
        except TimeoutError:
            log.info("%s: no disconnection complete within %.1f s; taking the link as gone",
                     self.name, DISCONNECT_TIMEOUT)
            if connection in self._links:
                self._on_disconnection(connection)

    def _on_disconnection(self, connection: Connection) -> None:
        self._links.discard(connection)
        self._dead.discard(connection)
        if connection is not self._connection:
            return
        self._connection = None
        self.connected.clear()
        if self.window_open and self._device is not None:
            self._spawn(self._advertise(self._device))  # let the node come back

    def _drop_unbound_links(self) -> None:
        for other in list(self._links - {self._connection}):
            self._dead.add(other)
            self._spawn(self._disconnect(other))

    async def _drop_all_links(self) -> None:
        """The session is over: drop every link, the bound one last and awaited."""
        self._window_open_until = 0.0  # so the drop does not re-advertise for the old one
        self._drop_unbound_links()
        stale = self.drop_link()
        if stale is not None:
            await stale

    def drop_link(self) -> asyncio.Task[None] | None:
        """Break the link from this side, as when the customer walks out of range:
        from this call on nothing more from the node is taken (frames in flight are
        lost, as on air), and the disconnect runs in the returned task."""
        connection = self._connection
        if connection is None:
            return None
        self._dead.add(connection)
        return self._spawn(self._disconnect(connection))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------- receive
    async def _on_rx_write(self, connection: Connection, value: bytes) -> None:
        # Never let anything but ATT_Error reach bumble (see module docstring).
        if connection in self._dead or connection not in self._links:
            return  # the link was dropped (or is gone already): this never arrived
        try:
            await self._receive(connection, bytes(value))
        except att.ATT_Error:
            raise
        except Exception as exc:
            log.exception("%s: rx write failed", self.name)
            raise att.ATT_Error(att.ATT_UNLIKELY_ERROR_ERROR, message=repr(exc)) from None

    def _drop(self, reason: str, detail: str) -> NoReturn:
        """A frame dropped unread: counted, one debug line, an ATT error for a write
        request (nothing else: no state, no reply)."""
        self.dropped[reason] += 1
        log.debug("%s: dropped frame (%s): %s", self.name, reason, detail)
        if self.on_dropped is not None:
            try:
                self.on_dropped(reason, detail)
            except Exception:  # a listener's bug must not become a bumble hang
                log.exception("%s: on_dropped failed", self.name)
        raise att.ATT_Error(ATT_FRAME_ERROR, message=f"{reason}: {detail}")

    async def _receive(self, connection: Connection, value: bytes) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            self._drop("no_session", "open_window() was not called")
        if len(value) > connection.att_mtu - 3:  # bumble accepts long (prepared) writes
            self._drop("oversized", f"{len(value)} bytes exceeds MTU-3 = {connection.att_mtu - 3}")
        if self._connection is not None and connection is not self._connection:
            self._drop("other_connection", "the session is bound to another link")
        try:
            event = endpoint.handle(value)
        except Unauthentic as exc:
            self._drop("unauthentic", str(exc))
        except FrameError as exc:  # authentic, but refused: the peer holds the key
            if self._connection is None:
                self._bind(connection)
            log.warning("%s: refused frame: %s", self.name, exc)
            self.errors.put_nowait(exc)
            if exc.reply is not None:
                await self._send_control(exc.reply)
            raise att.ATT_Error(ATT_FRAME_ERROR, message=str(exc)) from None
        if self._connection is None:
            self._bind(connection)
        if isinstance(event, Delivered):
            self.messages.put_nowait(event.message)
            if self.on_message is not None:
                self.on_message(event.message)
            await self._send_control(event.reply)
        elif isinstance(event, Reply):
            if self.on_frame is not None and endpoint.last_data is not None:
                self.on_frame(*endpoint.last_data)
            if event.reply is not None:
                await self._send_control(event.reply)
        else:
            self._acks.put_nowait(event)

    async def _send_control(self, frame: Frame) -> None:
        try:
            await self.send_frame(self._require_endpoint().wrap(frame))
        except ConnectionError as exc:  # the link went; the node will QUERY again
            log.info("%s: could not send control frame: %s", self.name, exc)

    def _require_endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise ConnectionError(f"{self.name}: no session")
        return self._endpoint

    async def send_frame(self, frame: bytes) -> None:
        """Notify one raw frame on ``tx`` (send() frames messages; this is for acks,
        diagnostics and tests that need a malformed frame on the air)."""
        connection = self._connection
        if connection is None or self._device is None or self._tx is None:
            raise ConnectionError("not connected")
        limit = connection.att_mtu - 3
        if len(frame) > limit:
            raise FrameError(f"notification of {len(frame)} bytes exceeds MTU-3 = {limit}")
        await self._device.notify_subscriber(connection, self._tx, frame, force=True)

    # ---------------------------------------------------------------------- send
    async def send(self, message: Message) -> int:
        """Seal, frame and notify ``message`` to the connected node; wait for its DONE
        ack. Returns the message id. Raises ConnectionError when no node is connected
        or the link drops (the handset does not resume; the node does), FrameError when
        the node rejects the message, TimeoutError when no ack comes."""
        if self._connection is None and self._links and self._endpoint is not None:
            try:  # connected, but the node's HELLO (proof of the key) is still on its way
                await asyncio.wait_for(self.connected.wait(), self.ack_timeout)
            except TimeoutError:
                pass
        connection = self._connection
        if connection is None or self._endpoint is None:
            raise ConnectionError(f"{self.name}: no node connected")
        endpoint = self._endpoint
        outgoing = endpoint.seal(message)
        frames = outgoing.chunks(connection.att_mtu - 3)
        start = 0
        for _attempt in range(3):
            for frame in frames[start:]:
                await self.send_frame(endpoint.wrap(frame))
            try:
                ack = await self._wait_ack(outgoing.msg_id)
            except TimeoutError:
                await self.send_frame(endpoint.wrap(QueryFrame(outgoing.msg_id)))
                ack = await self._wait_ack(outgoing.msg_id)
            if ack.status == AckStatus.DONE:
                return outgoing.msg_id
            if ack.status == AckStatus.REJECTED:
                raise FrameError(f"node rejected message {outgoing.msg_id}")
            start = ack.next_missing
        raise TimeoutError(f"{self.name}: message {outgoing.msg_id} not completed after 3 rounds")

    async def _wait_ack(self, msg_id: int) -> AckFrame:
        async with asyncio.timeout(self.ack_timeout):
            while True:
                event = await self._acks.get()
                if event.ack.msg_id == msg_id:
                    return event.ack
