"""Shared by the handset core tests: a TapListener that records every callback and lets
a test await the one it needs (no sleeps), and a phone in a small virtual hall."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hall.testing.hub import HubServer
from hall.testing.mosquitto import Mosquitto
from hall.virtual import HallNode, VirtualHall
from handset_app.phone import Phone
from node.ble_push import PushSession, open_session
from tapcast.keys import make_handset_credentials
from tapcast.radio.bumble import BumbleBleakClient

WAIT = 10.0


class Recorder:
    """Every callback as (name, args), in order; ``wait`` for one that matches."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith("on_"):
            raise AttributeError(name)

        def record(*args: Any) -> None:
            self.calls.append((name, args))
            self._changed.set()
        return record

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]

    async def wait(self, name: str | tuple[str, ...],
                   match: Callable[..., bool] = lambda *a: True,
                   timeout: float = WAIT) -> tuple[Any, ...]:
        """The first call of ``name`` (or of any of several names) that ``match``es."""
        names = (name,) if isinstance(name, str) else name
        async with asyncio.timeout(timeout):
            while True:
                for n, args in self.calls:
                    if n in names and match(*args):
                        return args
                self._changed.clear()
                await self._changed.wait()


async def hall_phone(hall: VirtualHall, data_dir: Path, *, handset_id: str = "phone-1",
                     clock: Callable[[], float] = time.time) -> Phone:
    """A signed-in phone on ``hall``'s air (local time in UTC, so tests can say when)."""
    phone = Phone(data_dir, clock=clock, tz="UTC")
    phone.install_credentials(make_handset_credentials(hall.authority, handset_id,
                                                       time.time() + 3600))
    assert hall.air is not None
    await phone.start(hall.air.local_adapter(handset_id))
    return phone


async def tap(phone: Phone, node: HallNode, ask_for: tuple[str, ...] = (),
              listener: Recorder | None = None) -> Recorder:
    """One tap: wait for the catalogue, ask for ``ask_for`` one by one (each kept or
    refused), say bye, until the node has served it (its events are in its outbox)."""
    rec = listener or Recorder()
    session = await phone.tap(node.nfc_device, rec)
    await rec.wait("on_catalogue")
    for item_id in ask_for:
        await session.request(item_id)
        await rec.wait(("on_item", "on_refused"),
                       lambda x, *_: getattr(x, "item_id", x) == item_id)
    await session.leave()
    assert session.closed_reason is not None and session.closed_reason.startswith("bye")
    assert node.daemon is not None
    await node.daemon.wait_idle()
    return rec


@asynccontextmanager
async def hall_and_phone(mosquitto: Mosquitto, tmp_path: Path, *,
                         hub: HubServer | None = None,
                         clock: Callable[[], float] = time.time
                         ) -> AsyncIterator[tuple[VirtualHall, Phone]]:
    """A one-node hall in this process (reporting to ``hub`` when given) and a phone."""
    hall = VirtualHall(tmp_path / "hall", mosquitto.url, nodes=1, handsets=1, hold_off=0.0,
                       processes=False,
                       stream_secret=hub.stream_secret if hub is not None else None)
    await hall.start()
    try:
        phone = await hall_phone(hall, tmp_path / "phone", clock=clock)
        try:
            yield hall, phone
        finally:
            await phone.close()
    finally:
        await hall.stop()


@asynccontextmanager
async def node_side(hall: VirtualHall, phone: Phone, key: bytes
                    ) -> AsyncIterator[PushSession]:
    """The node's end of a BLE session with ``phone`` (attached with ``key``), on its own
    radio of the hall's air: bleak on the bumble backend, as a node runs it."""
    assert hall.air is not None and phone.peripheral is not None
    radio = hall.air.local_adapter("node-side")
    try:
        yield await open_session(phone.peripheral.address, phone.peripheral.address_type,
                                 key, backend=BumbleBleakClient,
                                 backend_kwargs={"hci_adapter": radio}, connect_timeout=2.0)
    finally:
        await radio.close()


@asynccontextmanager
async def attached(hall: VirtualHall, phone: Phone
                   ) -> AsyncIterator[tuple[PushSession, Recorder]]:
    """A code-path session of ``phone`` (a fresh key, node "node-x" in "lobby") and the
    node's end of it (node_side), with the phone's listener."""
    key, rec = os.urandom(32), Recorder()
    await phone.attach("node-x", "lobby", key, channel="code", listener=rec)
    async with node_side(hall, phone, key) as node:
        yield node, rec


@pytest.fixture
async def pair(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[tuple[VirtualHall, Phone]]:
    """A one-node hall and a signed-in phone on its air (no hub)."""
    async with hall_and_phone(mosquitto, tmp_path) as both:
        yield both
