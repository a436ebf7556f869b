"""The handset core: what a customer's phone keeps and does, under any front end (the
Kivy app, handset_app/app.py; the simulated crowd reuses its pieces, handset_app/sim.py).

* Offline first: the inbox, the places tapped, the consent and the open records waiting
  for a node live in SQLite in the phone's data dir (handset_app/phonestore.py), files
  beside it under their sha256. A fresh Phone on the same data dir shows them with no
  network and no radios.
* A tap (:meth:`Phone.tap`): the NFC exchange over nfcpy's card emulation
  (handset_app/nfc_hce.py), then :meth:`Phone.attach` opens the BLE window with the
  session key (handset_app/ble_peripheral.py) and a :class:`PhoneSession` runs the
  conversation: every item is consent-checked (handset_app/consent.py), a refused one is
  not kept and the node is told (``Refused``); a kept one is checked against its sha256
  (inside the message, or fetched from the node's WLAN link with progress), stored and
  reported. Open records queued by :meth:`Phone.open_item` go to the node once the link
  is up (``Opened``) and are dropped when it acknowledges them (``OpenedAck``).
* Nothing a node sends crashes the phone: frames that fail authentication, messages
  that do not open, items whose bytes do not match are reported with ``on_error`` and
  dropped.

Deviations from the shared plan's API (issue 9), all additions:
``Phone(..., tz=None, window=3.0)`` (the zone quiet hours and the cap's day are taken
in, None: the phone's own; the BLE window after a tap), ``Phone.peripheral``,
``Phone.store`` (handset_app.phonestore.PhoneStore), ``PhoneSession.catalogue``,
``.items``, ``.refused``, ``.errors``, ``.requested``, ``.closed``, ``.closed_reason``,
``.stop(reason)``; a listener may implement any subset of TapListener's methods;
:meth:`Phone.tap` raises :class:`TapError` (after ``on_error``) when the NFC exchange
gives no session, and RuntimeError when not signed in; ``Consent.refuses_request(kind,
merchant)`` tells the catalogue which entries a request would still see refused.
Consent is checked before a file is fetched (a refused item costs no download), then
the file or text against its sha256.
"""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tapcast.keys import HandsetCredentials, KeyFileError, check_id, \
    load_handset_credentials, save_handset_credentials
from tapcast.protocol import ble
from tapcast.protocol.nfc import HandsetCard, HandsetSession
from tapcast.protocol.openrecord import OpenRecord

from handset_app.ble_peripheral import BlePeripheral
from handset_app.consent import Consent, day_start, local_time
from handset_app.nfc_hce import emulate_card
from handset_app.phonestore import DB_FILE, InboxEntry, PhoneStore, Place

__all__ = ["Phone", "PhoneSession", "InboxEntry", "Place", "Consent", "TapListener",
           "TapError", "ItemError", "fetch_wlan", "checked_file", "card_session"]

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
#: The hub account the identity came from (handset_app.hubclient.HUB_FILE): part of the
#: identity, which delete_local_data keeps; everything else in the data dir goes.
ACCOUNT_FILE = "hub.json"
WLAN_TIMEOUT = 10.0
WLAN_CHUNK = 64 * 1024
#: How long a session waits for the node's bye after the phone said its own.
BYE_TIMEOUT = 3.0
#: How often a session looks whether its link is gone for good (window closed, no link).
LINK_CHECK = 0.25
#: Unrequested items one session keeps at most, whatever the consent: a node pushes its
#: featured item unrequested and the rest on request; more is a node filling the phone
#: (refused as ``cap``).
MAX_UNREQUESTED_PER_SESSION = 3


class TapError(ConnectionError):
    """The NFC exchange gave no session (no reader answered, or the node was refused)."""


class ItemError(ValueError):
    """An item's bytes did not come or do not match its sha256; says which and why."""


# ----------------------------------------------------------- shared with sim.py


def fetch_wlan(url: str, timeout: float = WLAN_TIMEOUT, *, size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> bytes:
    """A large item's file from the node's WLAN link (what a phone on the hall's Wi-Fi
    does). With ``size`` (the message's), reads at most one byte more than it (and
    than MAX_WLAN_FILE) and raises ValueError unless exactly ``size`` bytes came.
    ``progress(done, total)`` after each chunk. Blocking: run it in a thread."""
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) link: {url[:80]!r}")
    limit = ble.MAX_WLAN_FILE if size is None else min(size, ble.MAX_WLAN_FILE)
    data = bytearray()
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked above
        while len(data) <= limit:
            chunk = response.read(min(WLAN_CHUNK, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
            if progress is not None:
                progress(len(data), size or 0)
    if size is not None and len(data) != size:
        raise ValueError(f"the link gave {len(data)}{'+' if len(data) > limit else ''} "
                         f"bytes, the item says {size}")
    return bytes(data)


async def checked_file(message: ble.ContentItem,
                       progress: Callable[[int, int], None] | None = None
                       ) -> tuple[bytes | None, str]:
    """(file bytes or None, how they came: "ble", "wlan" or "" for none) of an item,
    checked against its sha256; an item without a file has its body checked instead.
    Raises ItemError saying what failed."""
    if message.data is not None:
        data, via = message.data, "ble"
    elif message.media_url is not None and message.size:
        try:
            data = await asyncio.to_thread(fetch_wlan, message.media_url,
                                           size=message.size, progress=progress)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise ItemError(f"item {message.id}: its file did not come over WLAN: {exc}") from None
        via = "wlan"
    else:
        if hashlib.sha256(message.body.encode()).hexdigest() != message.sha256:
            raise ItemError(f"item {message.id}: its text does not match its sha256")
        return None, ""
    if hashlib.sha256(data).hexdigest() != message.sha256:
        raise ItemError(f"item {message.id}: its file does not match its sha256 ({via})")
    if progress is not None and via == "ble":
        progress(len(data), len(data))
    return data, via


def _drain(peripheral: BlePeripheral) -> None:
    """Drop what an earlier, broken session left in the peripheral's queues."""
    for queue in (peripheral.messages, peripheral.errors):
        while not queue.empty():
            queue.get_nowait()


async def card_session(peripheral: BlePeripheral, credentials: HandsetCredentials,
                       consent: int, nfc_device: str, timeout: float) -> HandsetSession:
    """One tap's NFC exchange as the card: the previous BLE session ends first (the node
    tapped next connects as soon as it has authenticated us). Raises TapError."""
    await peripheral.end_session()
    card = HandsetCard(credentials, peripheral.address,
                       ble_address_type=peripheral.address_type, consent=consent)
    _drain(peripheral)
    session = await asyncio.to_thread(emulate_card, nfc_device, card, timeout)
    if session is None:
        raise TapError(f"nfc: refused the node: {card.last_rejection}" if card.last_rejection
                       else "nfc: no session (no reader answered, or the node refused us)")
    return session


# ------------------------------------------------------------------- listener


class TapListener(Protocol):
    """Callbacks, called on the phone's asyncio loop."""

    def on_authenticated(self, node_id: str, zone: str) -> None: ...
    def on_catalogue(self, entries: list[ble.CatalogueEntry]) -> None: ...
    def on_progress(self, item_id: str, done: int, total: int) -> None: ...
    def on_item(self, entry: InboxEntry) -> None: ...
    def on_refused(self, item_id: str, reason: str) -> None: ...
    def on_error(self, message: str) -> None: ...
    def on_closed(self, reason: str) -> None: ...


class _Listeners:
    """Calls a listener's methods, if it has them; a listener that raises is logged,
    never allowed to end the session."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener

    def __call__(self, name: str, *args: Any) -> None:
        method = getattr(self.listener, name, None)
        if method is None:
            return
        try:
            method(*args)
        except Exception:
            log.exception("listener %s failed", name)


# ---------------------------------------------------------------------- phone


class Phone:
    """One customer's phone. ``clock``: unix time (received, places, quiet hours, the
    cap's day, opened at); ``tz``: the zone local time is taken in (None: the phone's)."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time,
                 tz: str | None = None, window: float = 3.0) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.tz = tz
        self.window = window
        self.store = PhoneStore(self.data_dir)
        self.credentials: HandsetCredentials | None = None
        try:
            self.credentials = load_handset_credentials(self.data_dir / IDENTITY_DIR)
        except KeyFileError:
            pass  # not signed in yet (or the files are damaged: sign in again)
        self.peripheral: BlePeripheral | None = None
        self._session: PhoneSession | None = None

    # ------------------------------------------------------------- identity
    def install_credentials(self, creds: HandsetCredentials) -> None:
        save_handset_credentials(self.data_dir / IDENTITY_DIR, creds)
        self.credentials = creds

    def reset_identity(self) -> None:
        """Forget the credentials and keys (a new pseudonymous identity comes with the
        next sign-in). Open records signed by the old key are dropped (no node would
        take them from the new identity) and the counter starts again (its next value
        would link the new identity to the old one). OSError when the key files could
        not be removed."""
        self.credentials = None
        try:
            shutil.rmtree(self.data_dir / IDENTITY_DIR)
        except FileNotFoundError:
            pass
        self.store.new_identity()

    def delete_local_data(self) -> None:
        """Delete the inbox, its files, the places, the consent, the queued open
        records and whatever a front end keeps beside them in the data dir; the
        identity stays (and the hub account it came from: reset_identity forgets the
        identity), and so does the open counter:
        the hub counts an open once per (handset, counter), so a counter is never used
        twice by one identity (kept in the same database, never anywhere else)."""
        self.store.delete_all()
        keep = (IDENTITY_DIR, ACCOUNT_FILE, self.store.files_dir.name)
        for path in self.data_dir.iterdir():
            if path.name in keep or path.name.startswith(DB_FILE):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- local
    def inbox(self) -> list[InboxEntry]:
        return self.store.inbox()

    def item(self, item_id: str) -> InboxEntry | None:
        return self.store.item(item_id)

    def places(self) -> list[Place]:
        return self.store.places()

    def consent(self) -> Consent:
        return self.store.consent()

    def set_consent(self, consent: Consent) -> None:
        self.store.set_consent(consent)

    def open_item(self, item_id: str) -> None:
        """Mark the item opened and queue a handset-signed open record for the next node
        the phone talks to. KeyError: no such item; RuntimeError: not signed in."""
        entry = self.store.item(item_id)
        if entry is None:
            raise KeyError(f"no item {item_id!r} in the inbox")
        creds = self.credentials
        if creds is None:
            raise RuntimeError("not signed in: an open record needs the handset key")
        opened_at = int(self.clock())

        def record(counter: int) -> bytes:
            return OpenRecord(creds.handset_id, entry.item_id, entry.version, entry.node_id,
                              opened_at, counter).sign(creds.private_key)

        try:
            self.store.queue_open(record)
        except ValueError as exc:  # an entry no record can name (kept before the check)
            log.warning("no open record for %.80r: %s", item_id, exc)
        self.store.mark_opened(item_id)

    def pending_events(self) -> int:
        return self.store.pending_count()

    # ---------------------------------------------------------------- radios
    async def start(self, ble_adapter: Any) -> None:
        """Take the BLE adapter (a tapcast.radio.bumble.HciAdapter, as SimulatedHandset)."""
        name = self.credentials.handset_id if self.credentials else "phone"
        self.peripheral = BlePeripheral(ble_adapter, name=name, window=self.window)
        await self.peripheral.start()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.stop("phone closed")
        if self.peripheral is not None:
            await self.peripheral.close()
            self.peripheral = None
        self.store.close()

    def _require_peripheral(self) -> BlePeripheral:
        if self.peripheral is None:
            raise RuntimeError("Phone.start() was not called")
        return self.peripheral

    async def tap(self, nfc_device: str, listener: TapListener | None = None,
                  *, nfc_timeout: float = 3.0) -> PhoneSession:
        """Hold the phone to the reader at ``nfc_device``: NFC authentication, then the
        BLE session (attach). Raises TapError when no session came of it."""
        creds = self.credentials
        if creds is None:
            raise RuntimeError("not signed in: a tap needs the handset credentials")
        if self._session is not None:
            await self._session.stop("a new tap")
        try:
            session = await card_session(self._require_peripheral(), creds,
                                         self.consent().flags, nfc_device, nfc_timeout)
        except TapError as exc:
            _Listeners(listener)("on_error", str(exc))
            raise
        return await self.attach(session.node_id, session.zone, session.session_key,
                                 channel="nfc", listener=listener)

    async def attach(self, node_id: str, zone: str, session_key: bytes, *,
                     channel: str, listener: TapListener | None = None) -> PhoneSession:
        """The BLE part after an authentication done elsewhere (NFC, or the code path):
        open the window for ``session_key`` and run the conversation in the background."""
        peripheral = self._require_peripheral()
        if self._session is not None:
            await self._session.stop("a new session")
        if channel != "nfc":
            # As a tap does before its NFC exchange: the last session's advertising and
            # link go first, or a radio still advertising the old token never
            # advertises the new one (the node then finds no handset).
            await peripheral.end_session()
        _drain(peripheral)
        session = PhoneSession(self, peripheral, node_id, zone, channel, listener)
        self._session = session
        await peripheral.open_window(session_key)
        session.begin()
        return session


class PhoneSession:
    """One conversation with a node, from authentication to bye."""

    def __init__(self, phone: Phone, peripheral: BlePeripheral, node_id: str, zone: str,
                 channel: str, listener: Any) -> None:
        self.phone = phone
        self.peripheral = peripheral
        self.node_id = node_id
        self.zone = zone
        self.channel = channel
        self.notify = _Listeners(listener)
        self.catalogue: list[ble.CatalogueEntry] = []
        self.items: list[InboxEntry] = []
        self.refused: list[tuple[str, str]] = []  # (item id, reason)
        self.errors: list[str] = []
        self.requested: set[str] = set()
        self.closed_reason: str | None = None
        self._closed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._place = phone.store.add_place(node_id, zone, phone.clock(), channel)
        self._reported: set[str] = set()
        self._opens: asyncio.Task[None] | None = None
        self._sent_opens: set[int] = set()  # counters sent: the only ones an ack may drop
        self._unrequested = 0  # unrequested items this session took or tried to

    def begin(self) -> None:
        self.peripheral.on_dropped = self._on_dropped
        self.notify("on_authenticated", self.node_id, self.zone)
        self._spawn(self._run())
        self._spawn(self._errors())
        self._opens = self._spawn(self._send_opens())

    # --------------------------------------------------------------- API
    async def request(self, item_id: str) -> None:
        """Ask the node for a catalogue item (consented by this request)."""
        self.requested.add(item_id)
        await self._send(ble.Request(item_id))

    async def leave(self) -> None:
        """Say bye; the node answers with its own and disconnects."""
        if self._closed.is_set():
            return
        # the open records go first: a bye first would end the session without them
        if self._opens is not None:
            await asyncio.wait({self._opens}, timeout=BYE_TIMEOUT)
        await self._send(ble.Bye("done"))
        try:
            await asyncio.wait_for(self._closed.wait(), BYE_TIMEOUT)
        except TimeoutError:
            await self.stop("left (the node did not answer the bye)")

    async def wait_closed(self) -> str:
        await self._closed.wait()
        assert self.closed_reason is not None
        return self.closed_reason

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def stop(self, reason: str) -> None:
        """End the session from the phone's side (a new tap, the app closing)."""
        self._finish(reason)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ----------------------------------------------------------- internals
    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _finish(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.closed_reason = reason
        self._closed.set()
        if self.peripheral.on_dropped == self._on_dropped:
            self.peripheral.on_dropped = None
        current = asyncio.current_task()
        for task in list(self._tasks):  # nothing of this session outlives it
            if task is not current:
                task.cancel()
        self.notify("on_closed", reason)

    def _error(self, message: str) -> None:
        log.info("%s: %s", self.node_id, message)
        self.errors.append(message)
        self.notify("on_error", message)

    def _on_dropped(self, reason: str, detail: str) -> None:
        """A frame dropped unread (wrong key, replayed, oversized): reported once per
        reason and session (a stranger could send thousands), counted by the peripheral."""
        if reason not in self._reported:
            self._reported.add(reason)
            self._error(f"dropped a frame that is not from this session's node ({reason}: "
                        f"{detail})")

    async def _send(self, message: ble.Message) -> bool:
        async with self._send_lock:
            try:
                await self.peripheral.send(message)
                return True
            except (ConnectionError, TimeoutError, ble.FrameError) as exc:
                self._error(f"could not send {type(message).__name__.lower()}: {exc}")
                return False

    async def _errors(self) -> None:
        while True:
            exc = await self.peripheral.errors.get()
            self._error(f"refused a message from the node: {exc}")

    async def _send_opens(self) -> None:
        """Once the node holds the link: the open records waiting for a contact."""
        try:
            await asyncio.wait_for(self.peripheral.connected.wait(), self.phone.window + 2)
        except TimeoutError:
            return
        pending = self.phone.store.pending_opens(ble.MAX_OPEN_RECORDS)
        if pending:
            self._sent_opens.update(counter for counter, _ in pending)
            await self._send(ble.Opened([record for _, record in pending]))

    async def _run(self) -> None:
        messages = self.peripheral.messages
        while not self._closed.is_set():
            try:
                message = await asyncio.wait_for(messages.get(), LINK_CHECK)
            except TimeoutError:
                if not self.peripheral.window_open and not self.peripheral.link_count:
                    self._finish("link lost" if self.peripheral.connected.is_set() or self.items
                                 or self.catalogue else "no node connected")
                continue
            try:
                await self._handle(message)
            except Exception as exc:  # never crash on what a node sent
                log.exception("%s: handling %s failed", self.node_id, type(message).__name__)
                self._error(f"could not handle a {type(message).__name__}: {exc}")

    async def _handle(self, message: ble.Message) -> None:
        if isinstance(message, ble.ContentItem):
            await self._take(message)
        elif isinstance(message, ble.Catalogue):
            self.catalogue = list(message.items)
            self.notify("on_catalogue", self.catalogue)
        elif isinstance(message, ble.OpenedAck):
            # only records sent in this session: a node cannot make the phone forget others
            done = self._sent_opens.intersection(message.counters)
            self._sent_opens -= done
            self.phone.store.drop_opens(sorted(done))
            for counter, reason in message.refused.items():
                log.warning("node %s refused open record %d: %s", self.node_id, counter, reason)
        elif isinstance(message, ble.Ack) and not message.ok:
            self._error(f"the node refused a request: {message.reason}")
        elif isinstance(message, ble.Bye):
            self._finish(f"bye: {message.reason}" if message.reason else "bye")
        else:
            log.debug("%s: ignored %s", self.node_id, type(message).__name__)

    async def _take(self, message: ble.ContentItem) -> None:
        phone = self.phone
        try:  # what an open record names it by (an id, a uint32), or it could never be
            check_id(message.id, "item id")
            if not 0 <= message.version < 2**32:
                raise ValueError(f"item version {message.version} is not a uint32")
        except ValueError as exc:
            self._error(f"dropped an item the phone could not name: {exc}"[:300])
            return
        requested = message.id in self.requested
        self.requested.discard(message.id)  # one item a request, kept or not: ask again
        now = phone.clock()
        local = local_time(now, phone.tz)
        reason = phone.consent().refusal(
            message.kind, message.merchant, requested=requested, local=local,
            unrequested_today=phone.store.unrequested_since(day_start(local)))
        if reason is None and not requested:  # taken, or tried (a download costs too)
            self._unrequested += 1
            if self._unrequested > MAX_UNREQUESTED_PER_SESSION:
                reason = "cap"
        if reason is not None:
            self.refused.append((message.id, reason))
            self.notify("on_refused", message.id, reason)
            await self._send(ble.Refused(message.id, message.version, reason))
            return
        try:
            data, _via = await checked_file(
                message, lambda done, total: self.notify("on_progress", message.id, done, total))
        except ItemError as exc:
            self._error(str(exc))
            return
        file = phone.store.keep_file(message.sha256, data) if data is not None else None
        entry = InboxEntry(message.id, message.version, message.kind, message.title,
                           message.body, message.media_type, file, message.merchant,
                           self.node_id, self.zone, now, requested, False)
        phone.store.add_item(entry)
        phone.store.count_place_item(self._place)
        self.items.append(entry)
        self.notify("on_item", entry)
