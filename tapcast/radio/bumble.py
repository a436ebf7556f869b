"""BLE over bumble: one bumble host per HCI transport, and a bleak client backend on it,
so node code written against ``BleakClient`` runs unchanged in the virtual hall (and on
BlueZ on a Pi).

Facts about bumble 0.0.236 that shaped this module (pinned in pyproject):
- A host (a bumble ``Device``) must be created inside the running event loop, and one
  process keeps one Device per transport (:class:`HciAdapter`): a transport is one
  controller, as a USB dongle is.
- A central's connection completes on the peripheral's next advertising event, so
  connect time is about the peripheral's advertising interval.
- ``Device.connect(timeout=...)`` cancels with LE Create Connection Cancel and then
  waits for the controller's failed Connection Complete. The virtual hall's controllers
  answer it (hall.air); so the timeout goes to bumble, never ``asyncio.wait_for``
  around it (that leaves a pending connect and the next one is refused).
- Nothing in bumble has a timeout by default: power-on is bounded here, and a lost
  transport (the air process died) marks the adapter closed; the next use reopens it.
- The virtual controller forwards every ACL fragment as a *first* fragment, so an L2CAP
  PDU longer than one link packet arrives broken: the ATT MTU must fit one link packet,
  MTU <= LE data length - 4 (L2CAP header) = 247 at the 251-byte maximum, which is also
  what phones with Data Length Extension use. The client requests 247 by default and
  refuses a larger request than the controller's data length allows.
- bumble's GATT client turns a write longer than MTU-3 into a prepared (long) write and
  the server does not refuse it; BlueZ/Android behave differently, so this backend
  refuses such writes itself.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, gatt, hci
from bumble.device import Advertisement, Connection, Device

log = logging.getLogger(__name__)

#: ATT MTU the client asks for: one 251-byte link packet minus the 4-byte L2CAP header.
DEFAULT_MTU = 247
#: Seconds power-on (HCI Reset and set-up) may take before the transport counts as dead.
POWER_ON_TIMEOUT = 5.0

PUBLIC = hci.Address.PUBLIC_DEVICE_ADDRESS  # 0
RANDOM = hci.Address.RANDOM_DEVICE_ADDRESS  # 1


def random_static_address() -> str:
    """A fresh random static address (two top bits set), as a phone or a Pi picks one."""
    raw = bytearray(os.urandom(6))
    raw[0] |= 0xC0
    return ":".join(f"{b:02X}" for b in raw)


class HciAdapter:
    """One bumble host on one HCI transport: this process's Bluetooth adapter.

    ``transport`` is a bumble transport spec ("tcp-client:127.0.0.1:7001", "usb:0") or,
    in one process with the virtual air, a ``(source, sink)`` pair (a controller is
    both). The host is opened on first use, inside the running loop, and powered on
    within ``power_on_timeout``. If the transport is lost (the air process died, the
    dongle was pulled) the adapter forgets the host and the next :meth:`device` call
    opens it again."""

    def __init__(self, transport: str | tuple[Any, Any], *, name: str = "tapcast",
                 address: str | None = None,
                 power_on_timeout: float = POWER_ON_TIMEOUT) -> None:
        self.transport = transport
        self.name = name
        self.address = address or random_static_address()
        self.power_on_timeout = power_on_timeout
        self._device: Device | None = None
        self._transport: Any = None
        self._lock: asyncio.Lock | None = None
        self._scan_lock: asyncio.Lock | None = None
        self._scanners: set[BumbleBleakScanner] = set()
        self.transport_losses = 0

    def __repr__(self) -> str:
        where = self.transport if isinstance(self.transport, str) else "in-process controller"
        return f"HciAdapter({where}, {self.address})"

    @property
    def is_open(self) -> bool:
        return self._device is not None

    async def device(self) -> Device:
        """The powered-on bumble Device on this transport (opened on first use).
        Raises ConnectionError when the transport cannot be opened or powered on."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._device is None:
                self._device = await self._open()
            return self._device

    async def _open(self) -> Device:
        if isinstance(self.transport, str):
            from bumble.transport import open_transport

            try:
                transport = await asyncio.wait_for(open_transport(self.transport),
                                                   self.power_on_timeout)
            except (OSError, TimeoutError, core.BaseBumbleError) as exc:
                raise ConnectionError(f"cannot open BLE transport {self.transport!r}: {exc}"
                                      " (is the virtual air / the adapter there?)") from None
            source, sink = transport.source, transport.sink
        else:
            transport = None
            source, sink = self.transport
        device = Device.with_hci(self.name, hci.Address(self.address, RANDOM), source, sink)
        try:
            await asyncio.wait_for(device.power_on(), self.power_on_timeout)
        except (TimeoutError, core.BaseBumbleError, hci.HCI_Error) as exc:
            if transport is not None:
                await transport.close()
            raise ConnectionError(f"BLE adapter {self!r} did not power on within "
                                  f"{self.power_on_timeout} s: {exc!r}") from None
        self._transport = transport
        terminated = getattr(source, "terminated", None)
        if isinstance(terminated, asyncio.Future):
            terminated.add_done_callback(lambda _f, d=device: self._on_transport_lost(d))
        log.debug("%r powered on", self)
        return device

    def _on_transport_lost(self, device: Device) -> None:
        if self._device is device:
            log.warning("%r: HCI transport lost; reopening on next use", self)
            self.transport_losses += 1
            self._device = None
            self._transport = None

    @property
    def data_length(self) -> int:
        """LE ACL payload per link packet, as the controller reported it (27 before
        power-on, the Bluetooth minimum)."""
        device = self._device
        queue = device.host.le_acl_packet_queue if device is not None else None
        return queue.max_packet_size if queue is not None else 27

    async def add_scanner(self, scanner: BumbleBleakScanner) -> None:
        """Start scanning for ``scanner`` (the controller scans once, however many
        scanners listen: a node may look for two handsets at once)."""
        device = await self.device()
        if self._scan_lock is None:
            self._scan_lock = asyncio.Lock()
        async with self._scan_lock:
            first = not self._scanners
            self._scanners.add(scanner)
            if first:
                device.on("advertisement", self._on_advertisement)
                try:
                    await device.start_scanning(active=False, filter_duplicates=False, legacy=True)
                except (core.BaseBumbleError, hci.HCI_Error) as exc:
                    self._scanners.discard(scanner)
                    device.remove_listener("advertisement", self._on_advertisement)
                    raise BleakError(f"scan on {self!r} failed: {exc!r}") from None

    async def remove_scanner(self, scanner: BumbleBleakScanner) -> None:
        if self._scan_lock is None or scanner not in self._scanners:
            return
        async with self._scan_lock:
            self._scanners.discard(scanner)
            device = self._device
            if self._scanners or device is None:
                return
            device.remove_listener("advertisement", self._on_advertisement)
            try:
                await device.stop_scanning()
            except (core.BaseBumbleError, hci.HCI_Error) as exc:
                log.debug("%r: stop scanning: %r", self, exc)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for scanner in list(self._scanners):
            scanner.on_advertisement(advertisement)

    async def close(self) -> None:
        """Disconnect, stop advertising and release the transport (bounded: a dead
        air must not hang shutdown)."""
        device, self._device = self._device, None
        transport, self._transport = self._transport, None
        if device is not None:
            try:
                async with asyncio.timeout(2.0):
                    for connection in list(device.connections.values()):
                        try:
                            await connection.disconnect()
                        except Exception as exc:  # already gone
                            log.debug("disconnect on close: %s", exc)
                    if device.is_advertising:
                        await device.stop_advertising()
                    await device.power_off()
            except (TimeoutError, core.BaseBumbleError, hci.HCI_Error) as exc:
                log.debug("%r: close was not clean: %r", self, exc)
        if transport is not None:
            await transport.close()


# --------------------------------------------------------------------- bleak backend

_PROPERTY_NAMES = [
    (gatt.Characteristic.Properties.BROADCAST, "broadcast"),
    (gatt.Characteristic.Properties.READ, "read"),
    (gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (gatt.Characteristic.Properties.WRITE, "write"),
    (gatt.Characteristic.Properties.NOTIFY, "notify"),
    (gatt.Characteristic.Properties.INDICATE, "indicate"),
    (gatt.Characteristic.Properties.AUTHENTICATED_SIGNED_WRITES, "authenticated-signed-writes"),
    (gatt.Characteristic.Properties.EXTENDED_PROPERTIES, "extended-properties"),
]


def _uuid_str(uuid: core.UUID) -> str:
    text = uuid.to_hex_str("-").lower()
    if len(text) == 4:
        return f"0000{text}-0000-1000-8000-00805f9b34fb"
    if len(text) == 8:
        return f"{text}-0000-1000-8000-00805f9b34fb"
    return text


class BumbleBleakClient(BaseBleakClient):
    """bleak client backend on a bumble central (:class:`HciAdapter`).

    Use through bleak: ``BleakClient(address, backend=BumbleBleakClient, hci_adapter=adapter,
    address_type=1)``. ``timeout`` bounds the connect (the peripheral must advertise
    within it). ``mtu`` is the ATT MTU requested after connecting."""

    def __init__(self, address_or_ble_device: BLEDevice | str, *,
                 disconnected_callback: Callable[[], None] | None = None,
                 timeout: float = 10.0, hci_adapter: HciAdapter | None = None,
                 address_type: int = RANDOM, mtu: int = DEFAULT_MTU,
                 **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback,
                         timeout=timeout)
        if hci_adapter is None:
            raise BleakError("BumbleBleakClient needs hci_adapter=HciAdapter(...) "
                             "(pass it as a BleakClient keyword argument)")
        if address_type not in (PUBLIC, RANDOM):
            raise BleakError(f"address_type must be 0 (public) or 1 (random), got {address_type!r}")
        try:
            if isinstance(address_or_ble_device, BLEDevice) and \
                    isinstance(address_or_ble_device.details, hci.Address):
                self._peer = address_or_ble_device.details  # from BumbleBleakScanner: typed
            else:
                self._peer = hci.Address(self.address, address_type)
        except (core.InvalidArgumentError, ValueError) as exc:
            raise BleakError(f"bad Bluetooth address {self.address!r}: {exc}") from None
        if not 23 <= mtu <= DEFAULT_MTU:
            raise BleakError(f"mtu must be 23..{DEFAULT_MTU} (one link packet of at most 251 "
                             f"bytes minus the L2CAP header), got {mtu}")
        self._adapter = hci_adapter
        self._mtu_request = mtu
        self._connection: Connection | None = None
        self._closing = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}
        self._lost: asyncio.Future[int] | None = None  # resolved when the link drops

    # --------------------------------------------------------------- connectivity
    @property
    def name(self) -> str:
        return str(self._peer)

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if pair:
            log.warning("bumble backend does not pair; Tapcast seals frames with the NFC session key")
        if self._connection is not None:
            return
        try:
            device = await self._adapter.device()
        except ConnectionError as exc:
            raise BleakError(str(exc)) from None
        limit = self._adapter.data_length - 4
        if self._mtu_request > limit:
            raise BleakError(f"mtu {self._mtu_request} does not fit one link packet of "
                             f"{self._adapter.data_length} bytes on {self._adapter!r}: "
                             f"ask for at most {limit}")
        try:
            connection = await device.connect(self._peer, timeout=self._timeout)
        except (core.TimeoutError, TimeoutError):
            raise TimeoutError(f"no connection to {self._peer} within {self._timeout} s "
                               "(is it advertising?)") from None
        except core.BaseBumbleError as exc:
            raise BleakError(f"connect to {self._peer} failed: {exc!r}") from exc
        self._connection = connection
        self._closing = False
        self._lost = asyncio.get_running_loop().create_future()
        connection.on("disconnection", self._on_disconnection)
        try:
            await self._until_lost(connection.gatt_client.request_mtu(self._mtu_request))
            await self._until_lost(self._discover())
        except ConnectionError as exc:
            await self.disconnect()
            raise BleakError(str(exc)) from None
        except Exception:
            await self.disconnect()
            raise
        log.debug("connected to %s, mtu %d", self._peer, connection.att_mtu)

    def _on_disconnection(self, reason: int) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)
        self._connection = None
        self.services = None
        if not self._closing and self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)

    async def disconnect(self) -> None:
        self._closing = True
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                async with asyncio.timeout(2.0):
                    await connection.disconnect()
            except Exception as exc:  # the link or the transport is already gone
                log.debug("disconnect: %r", exc)
        self.services = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the bumble backend does not pair")

    async def unpair(self) -> None:
        raise NotImplementedError("the bumble backend does not pair")

    # ------------------------------------------------------------------ discovery
    async def _discover(self) -> None:
        if self._connection is None:  # the peer left between connect and discovery
            raise BleakError(f"link to {self._peer} lost before service discovery")
        client = self._connection.gatt_client
        collection = BleakGATTServiceCollection()
        for service in await client.discover_services():
            bleak_service = BleakGATTService(service, service.handle, _uuid_str(service.uuid))
            collection.add_service(bleak_service)
            for char in await service.discover_characteristics():
                props = [name for flag, name in _PROPERTY_NAMES if char.properties & flag]
                bleak_char = BleakGATTCharacteristic(
                    char, char.handle, _uuid_str(char.uuid), props,
                    lambda: self.mtu_size - 3, bleak_service)
                collection.add_characteristic(bleak_char)
                for desc in await char.discover_descriptors():
                    collection.add_descriptor(BleakGATTDescriptor(
                        desc, desc.handle, _uuid_str(desc.type), bleak_char))
        self.services = collection

    # ------------------------------------------------------------------------ I/O
    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise BleakError(f"not connected to {self._peer}")
        return self._connection

    async def _until_lost(self, awaitable: Any) -> Any:
        """Await ``awaitable`` unless the link drops first: bumble leaves an ATT request
        pending for 30 s when the peer disconnects under it (a handset dropping a link
        it did not bind). ConnectionError then."""
        lost = self._lost
        task = asyncio.ensure_future(awaitable)
        if lost is None or task.done():
            return await task
        done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ConnectionError(f"link to {self._peer} lost (reason 0x{lost.result():02x})")

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            return await self._until_lost(awaitable)
        except att.ATT_Error as exc:
            raise BleakGATTProtocolError(exc.error_code) from exc
        except (core.BaseBumbleError, asyncio.TimeoutError, ConnectionError) as exc:
            raise BleakError(f"{what} on {self._peer} failed: {exc!r}") from exc

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, *,
                             use_cached: bool = False, **kwargs: Any) -> bytearray:
        connection = self._require_connection()
        value = await self._call("read", connection.gatt_client.read_value(characteristic.handle))
        return bytearray(value)

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, *,
                                   use_cached: bool = False, **kwargs: Any) -> bytearray:
        connection = self._require_connection()
        value = await self._call("read", connection.gatt_client.read_value(descriptor.handle))
        return bytearray(value)

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any,
                              response: bool) -> None:
        connection = self._require_connection()
        limit = connection.att_mtu - 3
        if len(data) > limit:
            # bumble would silently do a prepared write; real stacks refuse or truncate.
            raise BleakError(f"write of {len(data)} bytes to {characteristic.uuid} exceeds "
                             f"MTU-3 = {limit} bytes (MTU {connection.att_mtu}); split it")
        await self._call("write", connection.gatt_client.write_value(
            characteristic.handle, bytes(data), with_response=response))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        connection = self._require_connection()
        await self._call("write", connection.gatt_client.write_value(
            descriptor.handle, bytes(data), with_response=True))

    async def start_notify(self, characteristic: BleakGATTCharacteristic,
                           callback: NotifyCallback, **kwargs: Any) -> None:
        connection = self._require_connection()

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        self._subscribers[characteristic.handle] = deliver
        await self._call("subscribe", connection.gatt_client.subscribe(
            characteristic.obj, deliver, prefer_notify=True))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        connection = self._require_connection()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await self._call("unsubscribe", connection.gatt_client.unsubscribe(
            characteristic.obj, subscriber))


class BumbleBleakScanner(BaseBleakScanner):
    """bleak scanner backend on a bumble central (:class:`HciAdapter`), passive.

    Use through bleak: ``BleakScanner(service_uuids=[...], backend=BumbleBleakScanner,
    hci_adapter=adapter)`` or ``BleakScanner.find_device_by_filter(...)`` with the same
    keywords. A found :class:`BLEDevice` carries the bumble address (with its type) in
    ``details``, so :class:`BumbleBleakClient` connects to it without being told the
    type. Advertisements without a wanted service UUID are dropped here."""

    def __init__(self, detection_callback: Any, service_uuids: list[str] | None,
                 scanning_mode: str = "passive", *, hci_adapter: HciAdapter | None = None,
                 **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        if hci_adapter is None:
            raise BleakError("BumbleBleakScanner needs hci_adapter=HciAdapter(...) "
                             "(pass it as a BleakScanner keyword argument)")
        self._adapter = hci_adapter

    async def start(self) -> None:
        self.seen_devices = {}
        await self._adapter.add_scanner(self)

    async def stop(self) -> None:
        await self._adapter.remove_scanner(self)

    def on_advertisement(self, advertisement: Advertisement) -> None:
        data = advertisement.data
        uuids = [_uuid_str(u) for ad_type in (
            core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            core.AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            core.AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        ) for uuids in data.get_all(ad_type) for u in uuids]
        if not self.is_allowed_uuid(uuids):
            return
        # Raw: bumble decodes a name as strict UTF-8 and would raise on a stranger's bytes.
        name = data.get(core.AdvertisingData.COMPLETE_LOCAL_NAME, raw=True)
        address = advertisement.address
        adv = AdvertisementData(
            local_name=name.decode("utf-8", "replace") if isinstance(name, bytes) else None,
            manufacturer_data={},
            service_data={}, service_uuids=uuids, tx_power=None, rssi=advertisement.rssi,
            platform_data=(advertisement,))
        text = address.to_string(with_type_qualifier=False)
        device = self.create_or_update_device(str(address), text, adv.local_name, address, adv)
        self.call_detection_callbacks(device, adv)
