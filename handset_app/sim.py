"""A simulated handset: the card emulation and the BLE peripheral of one phone, driven
the way a customer would: tap a display, read what arrives, maybe ask for one more item
from the catalogue, say bye.

The radios are the real stacks (nfcpy's udp driver, bumble on the hall's virtual radio);
only the customer is scripted.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from tapcast.keys import HandsetCredentials
from tapcast.protocol import ble

from handset_app.ble_peripheral import BlePeripheral
from handset_app.phone import ItemError, TapError, card_session, checked_file, fetch_wlan

__all__ = ["SimulatedHandset", "TapReport", "fetch_wlan"]

log = logging.getLogger(__name__)


@dataclass
class TapReport:
    """One tap as the handset saw it. Times are time.monotonic()."""

    started: float
    authenticated: float | None = None  # CONFIRM accepted: the node knows us
    first_item_at: float | None = None  # first ContentItem opened on the handset
    node_id: str = ""
    items: list[str] = field(default_factory=list)
    catalogue: list[str] = field(default_factory=list)
    #: Files that came with items, checked against their sha256: item id -> bytes, and
    #: how each came ("ble": inside the message, "wlan": from the node's WLAN link).
    files: dict[str, bytes] = field(default_factory=dict)
    file_paths: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.authenticated is not None and bool(self.items) and not self.error


class SimulatedHandset:
    def __init__(self, credentials: HandsetCredentials, adapter: Any, *,
                 consent: int = 0xFFFF, window: float = 3.0,
                 rng: random.Random | None = None) -> None:
        self.credentials = credentials
        self.consent = consent
        self.rng = rng or random.Random()
        self.peripheral = BlePeripheral(adapter, name=credentials.handset_id, window=window)

    @property
    def handset_id(self) -> str:
        return self.credentials.handset_id

    async def start(self) -> None:
        await self.peripheral.start()

    async def _take_file(self, message: ble.ContentItem, report: TapReport) -> None:
        """An item's file, inside the message or from its WLAN link, kept only when its
        bytes match the item's sha256 (else the tap's error says so); the phone's check
        (handset_app.phone.checked_file)."""
        try:
            data, via = await checked_file(message)
        except ItemError as exc:
            report.error = str(exc)
            return
        if data is not None:
            report.files[message.id] = data
            report.file_paths[message.id] = via

    async def close(self) -> None:
        await self.peripheral.close()

    async def tap(self, nfc_device: str, *, nfc_timeout: float = 3.0,
                  extra_requests: int = 1, ask_for: list[str] | None = None,
                  message_timeout: float = 3.0) -> TapReport:
        """Hold the phone to the display at ``nfc_device`` (e.g. "udp:127.0.0.1:PORT").

        After the catalogue arrives the customer asks for ``extra_requests`` items picked
        at random from it, or for exactly the ids in ``ask_for``. Returns when the node
        said bye, or on the first failure (report.error)."""
        report = TapReport(started=time.monotonic())
        try:  # a new tap supersedes the last session
            session = await card_session(self.peripheral, self.credentials, self.consent,
                                         nfc_device, nfc_timeout)
        except TapError as exc:
            report.error = str(exc)
            return report
        report.authenticated = time.monotonic()
        report.node_id = session.node_id
        await self.peripheral.open_window(session.session_key)
        try:
            await self._converse(report, extra_requests, ask_for, message_timeout)
        except (TimeoutError, ConnectionError, ble.FrameError) as exc:
            report.error = f"ble: {type(exc).__name__}: {exc}"
        return report

    async def _next_message(self, report: TapReport, timeout: float, wanted: list[str], *,
                            after_bye: bool = False) -> ble.Message:
        """The next message from the node; TimeoutError says what the phone waited for."""
        try:
            return await asyncio.wait_for(self.peripheral.messages.get(), timeout)
        except TimeoutError:
            if after_bye:
                waiting = "the node's bye"
            elif not self.peripheral.connected.is_set() and not report.items:
                waiting = "the node to connect"
            elif not report.items and not report.catalogue:
                waiting = "the first item"
            elif not report.catalogue:
                waiting = "the catalogue"
            else:
                waiting = f"the requested item(s) {wanted}"
            raise TimeoutError(f"no message from the node within {timeout:.1f} s "
                               f"(waiting for {waiting})") from None

    async def _converse(self, report: TapReport, extra_requests: int,
                        ask_for: list[str] | None, timeout: float) -> None:
        wanted: list[str] = []
        while True:
            message = await self._next_message(report, timeout, wanted)
            if isinstance(message, ble.ContentItem):
                if report.first_item_at is None:
                    report.first_item_at = time.monotonic()
                report.items.append(message.id)
                await self._take_file(message, report)
                if message.id in wanted:
                    wanted.remove(message.id)
            elif isinstance(message, ble.Catalogue):
                report.catalogue = [entry.id for entry in message.items]
                if ask_for is not None:
                    wanted = list(ask_for)
                else:
                    choices = [i for i in report.catalogue if i not in report.items]
                    wanted = self.rng.sample(choices, min(extra_requests, len(choices)))
                for item_id in wanted:
                    await self.peripheral.send(ble.Request(item_id))
            elif isinstance(message, ble.Ack) and not message.ok:
                report.error = f"node refused a request: {message.reason}"
                wanted.clear()  # answered, if not as hoped; say bye below
            elif isinstance(message, ble.Bye):
                return
            if report.catalogue and not wanted:
                await self.peripheral.send(ble.Bye("done"))
                # the node answers with its own bye and disconnects
                extra = await self._next_message(report, timeout, wanted, after_bye=True)
                if not isinstance(extra, ble.Bye):
                    log.debug("%s: after bye got %s", self.handset_id, type(extra).__name__)
                return
