"""Android's BLE GATT server for a tap's session, through pyjnius: what
handset_app/ble_peripheral.py does on bumble. The Tapcast service (rx write, tx notify,
info read), advertising the tap's token (a 128-bit service UUID) connectable for
``window`` seconds, and the frame protocol of tapcast.protocol.ble.Endpoint: the
session binds to the first link that proves the key; unauthentic frames are dropped
and counted. NOT exercised by the tests here.

Android's callbacks arrive on binder threads through org.tapcast.TapcastGattCallback
(java/: pyjnius cannot extend BluetoothGattServerCallback, an abstract class) and are
handed to the asyncio loop the app runs on.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from jnius import PythonJavaClass, autoclass, java_method  # type: ignore[import-not-found]

from tapcast.protocol.ble import (
    INFO_UUID, RX_UUID, SERVICE_UUID, TX_UUID, AckReceived, AckStatus, Delivered, Endpoint,
    FrameError, Info, Message, Reply, Unauthentic,
)

log = logging.getLogger(__name__)

CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
STATE_CONNECTED = 2
GATT_SUCCESS = 0
ATT_FRAME_ERROR = 0x80
DEFAULT_MTU = 23


def _uuid(text: str) -> Any:
    return autoclass("java.util.UUID").fromString(text)


class _Events(PythonJavaClass):  # type: ignore[misc]
    __javainterfaces__ = ["org/tapcast/GattEvents"]
    __javacontext__ = "app"

    def __init__(self, owner: AndroidGattPeripheral) -> None:
        super().__init__()
        self.owner = owner

    def _later(self, fn: Any, *args: Any) -> None:
        self.owner.loop.call_soon_threadsafe(fn, *args)

    @java_method("(Landroid/bluetooth/BluetoothDevice;I)V")
    def connection(self, device: Any, state: int) -> None:
        self._later(self.owner._on_connection, device, state)

    @java_method("(Landroid/bluetooth/BluetoothDevice;I[BZ)V")
    def write(self, device: Any, request_id: int, value: Any, response_needed: bool) -> None:
        self._later(self.owner._on_write, device, request_id, bytes(value), response_needed)

    @java_method("(Landroid/bluetooth/BluetoothDevice;IILjava/lang/String;)V")
    def read(self, device: Any, request_id: int, offset: int, uuid: str) -> None:
        self._later(self.owner._on_read, device, request_id, offset, uuid)

    @java_method("(Landroid/bluetooth/BluetoothDevice;Z)V")
    def subscribed(self, device: Any, on: bool) -> None:
        pass

    @java_method("(Landroid/bluetooth/BluetoothDevice;I)V")
    def mtu(self, device: Any, mtu: int) -> None:
        self._later(self.owner._mtus.__setitem__, device.getAddress(), mtu)

    @java_method("(Landroid/bluetooth/BluetoothDevice;I)V")
    def notified(self, device: Any, status: int) -> None:
        self._later(self.owner._notified.set)

    @java_method("(ZI)V")
    def advertising(self, started: bool, error: int) -> None:
        if not started:
            log.warning("gatt: advertising failed (error %d)", error)


class AndroidGattPeripheral:
    """The phone's side of a tap's BLE session on Android. Create it on the app's loop;
    :meth:`start` once, :meth:`open_window` after each tap's NFC exchange. It offers what
    handset_app.phone.PhoneSession uses of handset_app.ble_peripheral.BlePeripheral
    (messages, errors, connected, window_open, link_count, on_dropped, send,
    open_window, end_session, address), so main.py puts it in ``Phone.peripheral``."""

    #: Android does not tell an app its Bluetooth address: the node finds the phone by
    #: the session's token (the address in the NFC answer is only a hint).
    address = "C0:00:00:00:00:00"
    address_type = 1  # random

    def __init__(self, *, window: float = 3.0, ack_timeout: float = 2.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.window = window
        self.ack_timeout = ack_timeout
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.errors: asyncio.Queue[FrameError] = asyncio.Queue()
        self.dropped: Counter[str] = Counter()
        self.connected = asyncio.Event()
        self.on_dropped: Any = None  # (reason, detail), as BlePeripheral's
        self._window_until = 0.0
        self._endpoint: Endpoint | None = None
        self._device: Any = None  # the bound link's BluetoothDevice
        self._mtus: dict[str, int] = {}
        self._acks: asyncio.Queue[AckReceived] = asyncio.Queue()
        self._notified = asyncio.Event()
        self._events = _Events(self)
        self._server: Any = None
        self._tx: Any = None
        self._advertiser: Any = None
        self._callback: Any = None
        self._stop_later: asyncio.TimerHandle | None = None

    def start(self) -> None:
        Context = autoclass("android.content.Context")
        activity = autoclass("org.kivy.android.PythonActivity").mActivity
        manager = activity.getSystemService(Context.BLUETOOTH_SERVICE)
        Characteristic = autoclass("android.bluetooth.BluetoothGattCharacteristic")
        Descriptor = autoclass("android.bluetooth.BluetoothGattDescriptor")
        Service = autoclass("android.bluetooth.BluetoothGattService")
        self._callback = autoclass("org.tapcast.TapcastGattCallback")(self._events)
        self._server = manager.openGattServer(activity, self._callback)
        self._callback.setServer(self._server)
        rx = Characteristic(_uuid(RX_UUID), Characteristic.PROPERTY_WRITE
                            | Characteristic.PROPERTY_WRITE_NO_RESPONSE,
                            Characteristic.PERMISSION_WRITE)
        self._tx = Characteristic(_uuid(TX_UUID), Characteristic.PROPERTY_NOTIFY,
                                  Characteristic.PERMISSION_READ)
        self._tx.addDescriptor(Descriptor(_uuid(CCCD_UUID), Descriptor.PERMISSION_READ
                                          | Descriptor.PERMISSION_WRITE))
        info = Characteristic(_uuid(INFO_UUID), Characteristic.PROPERTY_READ,
                              Characteristic.PERMISSION_READ)
        service = Service(_uuid(SERVICE_UUID), Service.SERVICE_TYPE_PRIMARY)
        for characteristic in (rx, self._tx, info):
            service.addCharacteristic(characteristic)
        self._server.addService(service)
        self._advertiser = manager.getAdapter().getBluetoothLeAdvertiser()

    @property
    def window_open(self) -> bool:
        return self.loop.time() < self._window_until

    @property
    def link_count(self) -> int:
        return 0 if self._device is None else 1

    async def end_session(self) -> None:
        """A new session begins: the last one's advertising and link go."""
        self.close_window()
        if self._device is not None:
            self._server.cancelConnection(self._device)
            self._device = None
            self.connected.clear()
        self._endpoint = None

    async def open_window(self, session_key: bytes) -> None:
        """Advertise this tap's token, connectable, for ``window`` seconds."""
        await self.end_session()
        self._endpoint = Endpoint(session_key, "handset")
        self._window_until = self.loop.time() + self.window
        Settings = autoclass("android.bluetooth.le.AdvertiseSettings$Builder")
        Data = autoclass("android.bluetooth.le.AdvertiseData$Builder")
        ParcelUuid = autoclass("android.os.ParcelUuid")
        settings = (Settings().setAdvertiseMode(2).setConnectable(True)  # low latency
                    .setTimeout(int(self.window * 1000)).setTxPowerLevel(1).build())
        data = Data().addServiceUuid(ParcelUuid(_uuid(self._endpoint.token))).build()
        self._advertiser.startAdvertising(settings, data, self._callback.advertiseCallback)
        self._stop_later = self.loop.call_later(self.window, self.close_window)

    def close_window(self) -> None:
        self._window_until = 0.0
        if self._stop_later is not None:
            self._stop_later.cancel()
            self._stop_later = None
        if self._advertiser is not None:
            self._advertiser.stopAdvertising(self._callback.advertiseCallback)

    # -- receive (on the loop)
    def _on_connection(self, device: Any, state: int) -> None:
        if state != STATE_CONNECTED and self._device is not None \
                and device.getAddress() == self._device.getAddress():
            self._device = None
            self.connected.clear()

    def _respond(self, device: Any, request_id: int, status: int, value: Any = None) -> None:
        self._server.sendResponse(device, request_id, status, 0, value)

    def _on_read(self, device: Any, request_id: int, offset: int, uuid: str) -> None:
        value = Info().encode() if uuid.lower() == INFO_UUID else b""
        self._respond(device, request_id, GATT_SUCCESS, value[offset:])

    def _on_write(self, device: Any, request_id: int, value: bytes, response: bool) -> None:
        status = self._receive(device, value)
        if response:
            self._respond(device, request_id, status)

    def _receive(self, device: Any, value: bytes) -> int:
        endpoint = self._endpoint
        if endpoint is None:
            return self._drop("no_session", "no tap yet")
        if self._device is not None and device.getAddress() != self._device.getAddress():
            return self._drop("other_connection", "the session is bound to another link")
        try:
            event = endpoint.handle(value)
        except Unauthentic as exc:
            return self._drop("unauthentic", str(exc))
        except FrameError as exc:  # authentic, refused: the peer holds the key
            self._bind(device)
            self.errors.put_nowait(exc)
            if exc.reply is not None:
                self.loop.create_task(self._notify(endpoint.wrap(exc.reply)))
            return ATT_FRAME_ERROR
        self._bind(device)
        if isinstance(event, Delivered):
            self.messages.put_nowait(event.message)
            self.loop.create_task(self._notify(endpoint.wrap(event.reply)))
        elif isinstance(event, Reply):
            if event.reply is not None:
                self.loop.create_task(self._notify(endpoint.wrap(event.reply)))
        else:
            self._acks.put_nowait(event)
        return GATT_SUCCESS

    def _drop(self, reason: str, detail: str) -> int:
        self.dropped[reason] += 1
        if self.on_dropped is not None:
            self.on_dropped(reason, detail)
        return ATT_FRAME_ERROR

    def _bind(self, device: Any) -> None:
        if self._device is None:
            self._device = device
            self.connected.set()
            self.close_window()

    # -- send
    async def _notify(self, frame: bytes) -> None:
        device = self._device
        if device is None:
            raise ConnectionError("no node connected")
        self._notified.clear()
        self._tx.setValue(frame)
        if not self._server.notifyCharacteristicChanged(device, self._tx, False):
            raise ConnectionError("notification not queued")
        await asyncio.wait_for(self._notified.wait(), self.ack_timeout)

    async def send(self, message: Message) -> int:
        """Seal, frame and notify ``message``; wait for the node's DONE."""
        endpoint, device = self._endpoint, self._device
        if endpoint is None or device is None:
            raise ConnectionError("no node connected")
        outgoing = endpoint.seal(message)
        mtu = self._mtus.get(device.getAddress(), DEFAULT_MTU)
        for frame in outgoing.chunks(mtu - 3):
            await self._notify(endpoint.wrap(frame))
        async with asyncio.timeout(self.ack_timeout):
            while True:
                ack = (await self._acks.get()).ack
                if ack.msg_id == outgoing.msg_id and ack.status == AckStatus.DONE:
                    return outgoing.msg_id
                if ack.msg_id == outgoing.msg_id and ack.status == AckStatus.REJECTED:
                    raise FrameError(f"node rejected message {outgoing.msg_id}")

    async def close(self) -> None:
        self.close_window()
        if self._server is not None:
            self._server.close()
            self._server = None
