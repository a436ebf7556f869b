"""The virtual BLE radio: bumble virtual controllers on one LocalLink, and a bleak
client backend on top of them, so node code written against ``BleakClient`` runs
unchanged in the virtual hall (and on BlueZ on a Pi).

Facts about bumble 0.0.236 that shaped this module (pinned in pyproject):
- Controllers, hosts and the link must be created inside the running event loop
  (they schedule with ``asyncio.get_running_loop()``), so a :class:`VirtualRadio` is
  created by whoever owns the hall, inside that loop. No module-level state.
- A central's connection completes on the peripheral's next advertising event, so
  connect time is about the peripheral's advertising interval.
- ``Device.connect(timeout=...)`` hangs on the virtual controller when nobody
  advertises; we pass ``timeout=None`` and wrap it in ``asyncio.wait_for``.
- ``LocalLink.send_acl_data`` sends LE data from the sender controller's *random*
  address, so a peripheral advertising its *public* address never gets its replies
  through (the central drops them: "no connection for ..."). :class:`_LeLink` sends
  from the connection's own address instead, so address type 0 (public) works too.
- The virtual controller does not implement LE Set Data Length; the LE ACL buffer
  size it reports is what the host fragments to. We report 251 bytes (the LE Data
  Length Extension maximum) instead of the default 27.
- The virtual controller forwards every ACL fragment as a *first* fragment ("TODO:
  should fragment" upstream), so an L2CAP PDU longer than one link packet arrives
  broken. The ATT MTU must therefore fit one packet: MTU <= data length - 4 (L2CAP
  header) = 247, which is also what phones with Data Length Extension use. The
  client requests 247 by default and refuses a larger request on this radio.
- bumble's GATT client turns a write longer than MTU-3 into a prepared (long) write
  and the server does not refuse it; BlueZ/Android behave differently, so this
  backend refuses such writes itself.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, gatt, hci
from bumble.controller import Controller
from bumble.device import Connection, Device
from bumble.host import Host
from bumble.link import LocalLink

log = logging.getLogger(__name__)

#: LE ACL payload the virtual controllers report (Data Length Extension maximum).
LE_DATA_LENGTH = 251
#: ATT MTU the client asks for: one 251-byte link packet minus the 4-byte L2CAP header.
DEFAULT_MTU = LE_DATA_LENGTH - 4

PUBLIC = hci.Address.PUBLIC_DEVICE_ADDRESS  # 0
RANDOM = hci.Address.RANDOM_DEVICE_ADDRESS  # 1


class _LeLink(LocalLink):
    """LocalLink whose LE data carries the connection's own address as source (see
    the module docstring: upstream uses the controller's random address always)."""

    def send_acl_data(self, sender_controller: Controller, destination_address: hci.Address,
                      transport: core.PhysicalTransport, data: bytes) -> None:
        if transport == core.PhysicalTransport.LE:
            connection = sender_controller.le_connections.get(destination_address)
            destination = self.find_le_controller(destination_address)
            if connection is not None and destination is not None:
                source = connection.self_address
                asyncio.get_running_loop().call_soon(
                    destination.on_link_acl_data, source, transport, data)
                return
        super().send_acl_data(sender_controller, destination_address, transport, data)


class VirtualRadio:
    """One shared radio medium (a LocalLink) and the bumble devices on it.

    Create it inside the running event loop and close it when the hall stops. Every
    device gets its own controller; random static addresses are handed out in order
    (C0:00:00:00:00:01, ...) unless given."""

    def __init__(self, *, data_length: int = LE_DATA_LENGTH) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("create VirtualRadio inside the running event loop: bumble's "
                               "controllers schedule on it") from None
        if not 27 <= data_length <= 251:
            raise ValueError(f"data_length must be 27..251 (LE Data Length), got {data_length}")
        self.link = _LeLink()
        self.data_length = data_length
        self._serial = itertools.count(1)
        self._devices: dict[Device, Controller] = {}

    def next_random_address(self) -> str:
        n = next(self._serial)
        return "C0:00:00:" + ":".join(f"{b:02X}" for b in n.to_bytes(3, "big"))

    async def add_device(self, name: str, *, random_address: str | None = None,
                         public_address: str | None = None) -> Device:
        """A powered-on bumble Device with its own controller on this radio."""
        n = next(self._serial)
        controller = Controller(
            name, link=self.link,
            public_address=public_address or "00:1B:DC:" + ":".join(
                f"{b:02X}" for b in n.to_bytes(3, "big")))
        # Before power-on: the host reads these with LE Read Buffer Size.
        controller.le_acl_data_packet_length = self.data_length
        controller.supported_max_tx_octets = self.data_length
        controller.supported_max_rx_octets = self.data_length
        controller.suggested_max_tx_octets = self.data_length
        address = hci.Address(random_address or self.next_random_address(), RANDOM)
        device = Device(name=name, address=address, host=Host(controller, controller))
        await device.power_on()
        self._devices[device] = controller
        return device

    async def remove_device(self, device: Device) -> None:
        controller = self._devices.pop(device, None)
        if controller is None:
            return
        for connection in list(device.connections.values()):
            try:
                await connection.disconnect()
            except Exception as exc:  # already gone: nothing to tear down
                log.debug("disconnect on removal: %s", exc)
        if device.is_advertising:
            await device.stop_advertising()
        await device.power_off()
        if controller in self.link.controllers:
            self.link.remove_controller(controller)

    async def close(self) -> None:
        for device in list(self._devices):
            await self.remove_device(device)


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
    """bleak client backend on a bumble central with its own virtual controller.

    Use through bleak: ``BleakClient(address, backend=BumbleBleakClient, radio=radio,
    address_type=1)``. ``timeout`` bounds the connect (the peripheral must advertise
    within it). ``mtu`` is the ATT MTU requested after connecting."""

    def __init__(self, address_or_ble_device: BLEDevice | str, *,
                 disconnected_callback: Callable[[], None] | None = None,
                 timeout: float = 10.0, radio: VirtualRadio | None = None,
                 address_type: int = RANDOM, mtu: int = DEFAULT_MTU,
                 **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback,
                         timeout=timeout)
        if radio is None:
            raise BleakError("BumbleBleakClient needs radio=VirtualRadio(...) "
                             "(pass it as a BleakClient keyword argument)")
        if address_type not in (PUBLIC, RANDOM):
            raise BleakError(f"address_type must be 0 (public) or 1 (random), got {address_type!r}")
        try:
            self._peer = hci.Address(self.address, address_type)
        except (core.InvalidArgumentError, ValueError) as exc:
            raise BleakError(f"bad Bluetooth address {self.address!r}: {exc}") from None
        if not 23 <= mtu <= radio.data_length - 4:
            raise BleakError(f"mtu must be 23..{radio.data_length - 4} on this radio (one link "
                             f"packet of {radio.data_length} bytes minus L2CAP header), got {mtu}")
        self._radio = radio
        self._mtu_request = mtu
        self._device: Device | None = None
        self._connection: Connection | None = None
        self._closing = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

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
            log.warning("virtual radio does not pair; Tapcast seals frames with the NFC session key")
        if self._connection is not None:
            return
        if self._device is None:
            self._device = await self._radio.add_device(f"central-{self._radio.next_random_address()}")
        device = self._device
        try:
            # bumble's own timeout hangs on the virtual controller: wait_for instead.
            connection = await asyncio.wait_for(
                device.connect(self._peer, timeout=None), self._timeout)
        except (asyncio.TimeoutError, TimeoutError):
            await self._release_device()
            raise TimeoutError(f"no connection to {self._peer} within {self._timeout} s "
                               "(is it advertising?)") from None
        except core.BaseBumbleError as exc:
            await self._release_device()
            raise BleakError(f"connect to {self._peer} failed: {exc}") from exc
        self._connection = connection
        self._closing = False
        connection.on("disconnection", self._on_disconnection)
        try:
            await connection.gatt_client.request_mtu(self._mtu_request)
            await self._discover()
        except Exception:
            await self.disconnect()
            raise
        log.debug("connected to %s, mtu %d", self._peer, connection.att_mtu)

    def _on_disconnection(self, reason: int) -> None:
        self._connection = None
        self.services = None
        if not self._closing and self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)

    async def disconnect(self) -> None:
        self._closing = True
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.disconnect()
            except Exception as exc:  # the link is already gone
                log.debug("disconnect: %s", exc)
        self.services = None
        await self._release_device()

    async def _release_device(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            await self._radio.remove_device(device)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the virtual radio does not pair")

    async def unpair(self) -> None:
        raise NotImplementedError("the virtual radio does not pair")

    # ------------------------------------------------------------------ discovery
    async def _discover(self) -> None:
        assert self._connection is not None
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

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
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
