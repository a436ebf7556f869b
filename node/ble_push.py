"""Node side of the BLE push, through bleak's public API only.

The same code runs on a Pi (bleak's BlueZ backend) and in the virtual hall (bleak with
the bumble client and scanner backends from tapcast.radio.bumble, on a controller of the
hall's virtual air).

Finding the handset: phones cannot tell their own address, so the handset advertises a
per-tap token derived from the session key (a 128-bit service UUID) and the node scans
filtered for exactly that token and connects at the first sighting (:meth:`BlePush.open`).
No general scan; the address the handset sent over NFC is only a hint (logged when it
differs). :func:`open_session` still connects to a known address directly.

A session: connect, subscribe to ``tx``, read ``info``; then ``send`` seals a message,
writes its frames (write-without-response, each at most MTU-3, each authenticated just
before it is written) and waits for the handset's DONE ack. If the link drops, it
reconnects to the same address (the handset keeps advertising while its window is
open), asks which frames arrived (QUERY) and resumes from the first missing one.
Notifications that fail authentication are dropped and counted in ``dropped``; they
cannot complete, reset or block anything.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Container
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakCharacteristicNotFoundError, BleakError

from node.config import BleSection
from tapcast.radio import parse_ble_adapter
from tapcast.protocol.ble import (
    INFO_UUID, RX_UUID, TX_UUID, AckFrame, AckReceived, AckStatus, ContentItem, Bye, Delivered,
    HELLO, Endpoint, Frame, FrameError, Info, Message, QueryFrame, Reply, Unauthentic, session_token,
)

log = logging.getLogger(__name__)


class PushError(Exception):
    """The push could not be completed (link gone for good, no ack); says why."""


class PushSession:
    """An open BLE session with one handset. Create with :func:`open_session`."""

    def __init__(self, client: BleakClient, endpoint: Endpoint, *, ack_timeout: float,
                 max_reconnects: int,
                 on_first_content: Callable[[float], None] | None) -> None:
        self.client = client
        self.endpoint = endpoint
        self.ack_timeout = ack_timeout
        self.max_reconnects = max_reconnects
        self.on_first_content = on_first_content
        #: time.perf_counter() when the first frame of the first ContentItem was written
        #: (benchmarks: tap -> first content byte).
        self.first_content_at: float | None = None
        self.info: Info | None = None
        self.errors: list[FrameError] = []  # authentic frames from the handset that were refused
        #: Frames dropped unread, by reason ("unauthentic": failed MAC, replayed, too short).
        self.dropped: Counter[str] = Counter()
        self.reconnects = 0
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        self._acks: asyncio.Queue[AckFrame] = asyncio.Queue()
        self._link_lost = asyncio.Event()
        self._bound = asyncio.Event()  # the handset answered HELLO on this link
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._closing = False
        self._send_lock = asyncio.Lock()  # one message in flight per direction (protocol rule)

    # ------------------------------------------------------------------- link
    async def _setup(self) -> None:
        """After each (re)connect: notifications on, limits read."""
        self._link_lost.clear()
        try:
            await self.client.start_notify(TX_UUID, self._on_notify)
            self.info = Info.decode(bytes(await self.client.read_gatt_char(INFO_UUID)))
        except (BleakCharacteristicNotFoundError, FrameError) as exc:  # anyone may advertise the token
            raise PushError(f"{self.client.address} is not a Tapcast handset: {exc}") from None
        # HELLO proves the session key, so the handset binds this link (and drops any
        # stranger's) before it sends or accepts anything; its answer proves the handset
        # holds the key too (a device that merely copied the tap's token cannot answer).
        self._bound.clear()
        await self.client.write_gatt_char(RX_UUID, self.endpoint.wrap(HELLO), response=False)
        try:
            await asyncio.wait_for(self._bound.wait(), self.ack_timeout)
        except TimeoutError:
            raise PushError(f"{self.client.address} did not answer HELLO within "
                            f"{self.ack_timeout} s: it does not hold the tap's key") from None

    def _on_disconnect(self, client: BleakClient) -> None:
        self._link_lost.set()

    async def _reconnect(self) -> None:
        if self._closing:
            # A bye is best effort: coming back only to say it would compete with the
            # node the customer tapped next for the handset's advertising.
            raise PushError(f"link to {self.client.address} lost while closing; no bye sent")
        if self.reconnects >= self.max_reconnects:
            raise PushError(f"link to {self.client.address} lost {self.reconnects} times; giving up")
        self.reconnects += 1
        log.info("reconnecting to %s (attempt %d)", self.client.address, self.reconnects)
        try:
            await self.client.connect()
            await self._setup()
        except (BleakError, TimeoutError, asyncio.TimeoutError, PushError) as exc:
            raise PushError(f"reconnect to {self.client.address} failed: {exc}") from exc

    @property
    def frame_size(self) -> int:
        """Largest frame this link carries: MTU-3 as bleak reports it for ``rx``."""
        char = self.client.services.get_characteristic(RX_UUID)
        if char is None:
            raise PushError("handset has no Tapcast rx characteristic")
        return char.max_write_without_response_size

    # ------------------------------------------------------------- notifications
    def _on_notify(self, _char: Any, data: bytearray) -> None:
        try:
            event = self.endpoint.handle(bytes(data))
        except Unauthentic as exc:  # hostile or stale: counted, never answered
            self.dropped["unauthentic"] += 1
            log.debug("dropped frame from %s: %s", self.client.address, exc)
            return
        except FrameError as exc:
            log.warning("rejected frame from handset: %s", exc)
            self.errors.append(exc)
            if exc.reply is not None:
                self._spawn(self._write_control(exc.reply))
            return
        if isinstance(event, AckReceived):
            if event.ack.msg_id == 0:  # HELLO answered
                self._bound.set()
            else:
                self._acks.put_nowait(event.ack)
        elif isinstance(event, Delivered):
            self._incoming.put_nowait(event.message)
            self._spawn(self._write_control(event.reply))
        elif isinstance(event, Reply) and event.reply is not None:
            self._spawn(self._write_control(event.reply))

    async def _write_control(self, frame: Frame) -> None:
        try:
            await self.client.write_gatt_char(RX_UUID, self.endpoint.wrap(frame), response=False)
        except BleakError as exc:  # link gone; the peer will QUERY again
            log.info("could not send control frame: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------- API
    async def send(self, message: Message) -> int:
        """Push one message and wait until the handset has opened it. Returns its id.
        Raises FrameError if the handset rejects it, PushError if the link cannot be
        kept up or no ack comes."""
        async with self._send_lock:
            return await self._send(message)

    async def _send(self, message: Message) -> int:
        if self._closed:
            raise PushError("session is closed")
        if not self.client.is_connected:  # dropped while idle
            await self._reconnect()
        outgoing = self.endpoint.seal(message)
        frame_size = self.frame_size
        frames = outgoing.chunks(frame_size)
        start = 0
        rounds = 0
        while True:
            rounds += 1
            if rounds > 2 * (self.max_reconnects + 2):
                raise PushError(f"message {outgoing.msg_id}: no DONE ack after {rounds - 1} rounds")
            if not self.client.is_connected:
                await self._reconnect()
                if self.frame_size < frame_size:
                    raise PushError(f"MTU shrank after reconnect ({self.frame_size} < {frame_size});"
                                    " cannot resume")
                resume = await self._query(outgoing.msg_id)
                if resume is None:
                    continue
                if resume == -1:
                    return outgoing.msg_id
                start = resume
            try:
                for index in range(start, len(frames)):
                    await self.client.write_gatt_char(RX_UUID, self.endpoint.wrap(frames[index]),
                                                      response=False)
                    if self.first_content_at is None and isinstance(message, ContentItem):
                        self.first_content_at = time.perf_counter()
                        if self.on_first_content is not None:
                            self.on_first_content(self.first_content_at)
            except BleakError as exc:
                log.info("write failed mid-message %d: %s", outgoing.msg_id, exc)
                start = 0
                continue
            ack = await self._await_ack(outgoing.msg_id)
            if ack is None:  # link lost or silence: reconnect / query
                if self.client.is_connected:
                    resume = await self._query(outgoing.msg_id)
                    if resume == -1:
                        return outgoing.msg_id
                    start = 0 if resume is None else resume
                continue  # not connected: the top of the loop reconnects and queries
            if ack.status == AckStatus.DONE:
                return outgoing.msg_id
            if ack.status == AckStatus.REJECTED:
                raise FrameError(f"handset rejected message {outgoing.msg_id} (could not open it)")
            start = ack.next_missing

    async def _query(self, msg_id: int) -> int | None:
        """Ask where to resume: the first missing frame, -1 if already done, None if
        the link dropped again."""
        try:
            await self.client.write_gatt_char(RX_UUID, self.endpoint.wrap(QueryFrame(msg_id)),
                                              response=True)
        except BleakError as exc:
            log.info("query failed: %s", exc)
            return None
        ack = await self._await_ack(msg_id)
        if ack is None:
            return None
        if ack.status == AckStatus.DONE:
            return -1
        if ack.status == AckStatus.REJECTED:
            raise FrameError(f"handset rejected message {msg_id} (could not open it)")
        return ack.next_missing

    async def _await_ack(self, msg_id: int) -> AckFrame | None:
        lost = asyncio.ensure_future(self._link_lost.wait())
        try:
            async with asyncio.timeout(self.ack_timeout):
                while True:
                    get = asyncio.ensure_future(self._acks.get())
                    done, _ = await asyncio.wait({get, lost}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        return None
                    ack = get.result()
                    if ack.msg_id == msg_id:
                        return ack
        except TimeoutError:
            log.info("no ack for message %d within %.1f s", msg_id, self.ack_timeout)
            return None
        finally:
            lost.cancel()

    async def receive(self) -> Message:
        """The next message the handset sent (request, offer_response, ack, bye)."""
        return await self._incoming.get()

    async def close(self, reason: str = "") -> None:
        """Say bye (best effort) and disconnect."""
        if self._closed:
            return
        self._closing = True
        try:
            if self.client.is_connected:
                await self.send(Bye(reason))
        except (PushError, FrameError, BleakError) as exc:
            log.info("bye not delivered: %s", exc)
        finally:
            self._closed = True
            for task in list(self._tasks):
                task.cancel()
            await self.client.disconnect()


async def open_session(address: str | BLEDevice, address_type: int, session_key: bytes, *,
                       backend: type[BaseBleakClient] | None = None,
                       backend_kwargs: dict[str, Any] | None = None,
                       connect_timeout: float = 5.0, ack_timeout: float = 2.0,
                       max_reconnects: int = 3,
                       on_first_content: Callable[[float], None] | None = None) -> PushSession:
    """Connect to the handset at ``address`` (a BLEDevice from :func:`find_handset`, or
    an address string) and open a session.

    ``backend=None`` is bleak's platform backend (BlueZ on a Pi); there the address
    type is learned from the advertisement and ``backend_kwargs`` may name the HCI
    adapter. A custom backend (BumbleBleakClient) gets ``address_type`` and
    ``backend_kwargs`` as keyword args.
    Raises TimeoutError if the handset does not come up within ``connect_timeout``.
    """
    kwargs: dict[str, Any] = dict(backend_kwargs or {})
    if backend is not None and isinstance(address, str):
        kwargs["address_type"] = address_type
    session: PushSession | None = None

    def on_disconnect(client: BleakClient) -> None:
        if session is not None:
            session._on_disconnect(client)

    client = BleakClient(address, on_disconnect, timeout=connect_timeout,
                         backend=backend, **kwargs)
    session = PushSession(client, Endpoint(session_key, "node"), ack_timeout=ack_timeout,
                          max_reconnects=max_reconnects, on_first_content=on_first_content)
    await client.connect()
    try:
        await session._setup()
    except BaseException:
        await client.disconnect()
        raise
    return session


async def find_handset(token: str, *, timeout: float,
                       backend: type[BaseBleakScanner] | None = None,
                       backend_kwargs: dict[str, Any] | None = None,
                       exclude: Container[str] = ()) -> BLEDevice | None:
    """The first device seen advertising ``token`` (a 128-bit service UUID) within
    ``timeout`` seconds, or None, skipping the addresses in ``exclude`` (devices that
    advertised the token but could not prove the key). The scan is filtered for exactly
    that UUID (BlueZ and the bumble backend filter in the stack; bleak filters again)."""

    def wanted(device: BLEDevice, adv: AdvertisementData) -> bool:
        return token in adv.service_uuids and device.address.upper() not in exclude

    return await BleakScanner.find_device_by_filter(
        wanted, timeout=timeout, service_uuids=[token], backend=backend,
        **dict(backend_kwargs or {}))


class BlePush:
    """Opens push sessions on one configured adapter, so the daemon picks the radio from
    config ``[ble] adapter`` and the rest of the node does not care."""

    def __init__(self, *, backend: type[BaseBleakClient] | None = None,
                 scanner_backend: type[BaseBleakScanner] | None = None,
                 backend_kwargs: dict[str, Any] | None = None, connect_timeout: float = 5.0,
                 ack_timeout: float = 2.0, max_reconnects: int = 3,
                 adapter: Any = None) -> None:
        self.backend = backend
        self.scanner_backend = scanner_backend
        self.backend_kwargs = dict(backend_kwargs or {})
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.max_reconnects = max_reconnects
        self.adapter = adapter  # an HciAdapter this BlePush owns and closes, if any

    @classmethod
    def from_config(cls, ble: BleSection) -> BlePush:
        """``adapter = "bluez[:hciN]"``: bleak's platform backend. ``"bumble:<transport>"``:
        the bumble-based bleak backend on that HCI transport (bumble is imported only
        then, so a Pi on BlueZ needs no bumble). ValueError names a bad string."""
        spec = parse_ble_adapter(ble.adapter)
        if spec.kind == "bluez":
            kwargs = {"bluez": {"adapter": spec.target}} if spec.target else {}
            return cls(backend_kwargs=kwargs, connect_timeout=ble.connect_timeout)
        try:
            from tapcast.radio.bumble import BumbleBleakClient, BumbleBleakScanner, HciAdapter
        except ImportError as exc:
            raise ValueError(f"[ble] adapter = {ble.adapter!r} needs bumble ({exc.name} is not "
                             "installed): pip install 'tapcast[sim]'") from None
        adapter = HciAdapter(spec.target, name="tapcast-node")
        return cls(backend=BumbleBleakClient, scanner_backend=BumbleBleakScanner,
                   backend_kwargs={"hci_adapter": adapter},
                   connect_timeout=ble.connect_timeout, adapter=adapter)

    async def start(self) -> None:
        """Open the adapter now (not at the first tap), so a missing radio is reported
        at start-up. Raises ConnectionError."""
        if self.adapter is not None:
            await self.adapter.device()

    async def close(self) -> None:
        if self.adapter is not None:
            await self.adapter.close()

    async def open(self, address: str, address_type: int, session_key: bytes, *,
                   on_first_content: Callable[[float], None] | None = None) -> PushSession:
        """Find the handset by the tap's token and open a session with it. ``address``
        and ``address_type`` (sent over NFC) are only a hint: a phone cannot know its
        address. Raises TimeoutError when no device advertises the token in time."""
        token = session_token(session_key)
        deadline = time.monotonic() + self.connect_timeout
        impostors: set[str] = set()
        while (left := deadline - time.monotonic()) > 0:
            device = await find_handset(token, timeout=left, backend=self.scanner_backend,
                                        backend_kwargs=self.backend_kwargs, exclude=impostors)
            if device is None:
                break
            if device.address.upper() != address.upper():
                log.debug("handset with token %s is at %s (hint was %s)", token,
                          device.address, address)
            try:
                return await open_session(
                    device, address_type, session_key, backend=self.backend,
                    backend_kwargs=self.backend_kwargs, connect_timeout=self.connect_timeout,
                    ack_timeout=self.ack_timeout, max_reconnects=self.max_reconnects,
                    on_first_content=on_first_content)
            except PushError as exc:  # advertised the token, cannot prove the key
                log.warning("%s; trying another device advertising the tap's token", exc)
                impostors.add(device.address.upper())
        raise TimeoutError(f"no handset advertised the tap's token {token} and proved its "
                           f"key within {self.connect_timeout} s"
                           + (f" ({len(impostors)} device(s) advertised it without the key)"
                              if impostors else ""))
