"""The node daemon: one tap at a time from NFC, then a BLE session, events to the hub.

asyncio on the loop; nfcpy's blocking reader in its own thread (node.nfc_reader) hands
each tap over with call_soon_threadsafe. Every event goes to the durable outbox first
(committed before anything else happens), and the uplink forwards it to the hub; so a
node without its uplink still serves taps and loses nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tapcast import __version__
from tapcast.clock import FLOOR_FILE, BestTime
from tapcast.keys import NodeCredentials, load_node_credentials
from tapcast.protocol import ble
from tapcast.protocol.mqtt import MAX_SEQ, NodeState
from tapcast.protocol.nfc import NodeAuth

from node.handset_reports import SessionReports, handset_report
from node.config import NodeConfig
from node.nfc_reader import NfcReader, ReaderStatus, TapOutcome
from node.outbox import Outbox
from node.store import ContentStore, Item, load_library
from node.sync import ContentSync

if TYPE_CHECKING:
    from node.display import Display, DisplayItem
    from node.presence import CodePresence, CodeVerdict
from node.uplink import Uplink

log = logging.getLogger(__name__)

TIME_PERSIST_INTERVAL = 300.0  # seconds between writes of the time floor (SD card wear)
LINK_WATCH_INTERVAL = 1.0  # seconds between looks at the uplink for the display's badge
#: Slots of the display loop computed at a time (more than one period of shares).
LOOP_SLOTS = 1000


def _check_timezone(tz: str) -> None:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(tz)
    except (KeyError, ValueError, OSError):
        raise ValueError(f"[node] timezone = {tz!r} is not a time zone this node knows: use "
                         "an IANA name such as Europe/Berlin (or \"\" for the hub's)") from None


class NodeStartError(RuntimeError):
    """The node cannot start serving: which radio or file, and what to do about it."""


@dataclass
class Counters:
    taps: int = 0
    authenticated: int = 0
    rejected: int = 0
    deliveries: int = 0
    failures: int = 0


@dataclass
class TapRecord:
    """What the node saw of one tap; the benchmarks and the demo read these."""

    outcome: TapOutcome
    first_content_at: float | None = None  # time.perf_counter() of the first content frame
    delivered: list[str] = field(default_factory=list)
    error: str = ""


def item_message(item: Item) -> ble.ContentItem:
    return ble.ContentItem(id=item.id, title=item.title, kind=item.kind, body=item.body,
                           sha256=item.sha256, media_url=item.media_url,
                           version=item.version, merchant=item.merchant)


#: Put at the end of a body cut to fit one BLE message.
TRUNCATED_MARKER = "\u2026 [shortened: the full text is too long for one message]"


def fit_message(message: ble.ContentItem) -> ble.ContentItem:
    """``message`` with its body cut (by UTF-8 bytes, on a character boundary, with
    TRUNCATED_MARKER) so that it seals under ble.MAX_MESSAGE_SIZE; as is when it fits.
    A body's sha256 (an item without a file) is of the body sent. Raises ValueError
    when even an empty body does not fit (a file inside: the caller sends no file)."""
    if ble.message_fits(message):
        return message
    rest = len(ble.encode_message(msgspec.structs.replace(message, body="")))
    marker = TRUNCATED_MARKER.encode()
    room = ble.MAX_PLAIN_SIZE - rest - 5 - len(marker)  # 5: the largest msgpack str header
    if room < 0:
        raise ValueError(f"item {message.id}: does not fit one message even without its body")
    body = message.body.encode()[:room].decode("utf-8", "ignore") + TRUNCATED_MARKER
    sha = message.sha256
    if sha == hashlib.sha256(message.body.encode()).hexdigest():
        sha = hashlib.sha256(body.encode()).hexdigest()
    fitted = msgspec.structs.replace(message, body=body, sha256=sha)
    assert ble.message_fits(fitted)
    return fitted


def item_message_for(item: Item, files_dir: Path,
                     wlan_url: Callable[[str], str] | None) -> ble.ContentItem:
    """The item as it goes over BLE, sealing under ble.MAX_MESSAGE_SIZE: its file inside
    when the whole encoded message fits (ble.INLINE_FILE_MAX at most), else a link from
    ``wlan_url(sha256)`` (None: no usable WLAN server, text only); a body too long for
    one message is shortened (fit_message). Reads the file: call it in a thread."""
    message = fit_message(item_message(item))
    if item.file_sha256 is None:
        return message
    path = files_dir / item.file_sha256
    try:
        size = path.stat().st_size
    except OSError:  # the set names it, so sync fetched it; a damaged disk does this
        log.error("file %s of item %s is missing; sending its text only",
                  item.file_sha256, item.id)
        return message
    common = {"sha256": item.file_sha256, "media_type": item.media_type, "size": size}
    if size <= ble.INLINE_FILE_MAX:
        inline = msgspec.structs.replace(message, data=path.read_bytes(), **common)
        if ble.message_fits(inline):
            return inline
    if wlan_url is None:
        log.warning("item %s: its %d-byte file needs the WLAN server ([display] enabled "
                    "and reachable by phones: public_url); sending its text only",
                    item.id, size)
        return message
    return fit_message(msgspec.structs.replace(message, media_url=wlan_url(item.file_sha256),
                                               **common))


def wlan_reachable(host: str, public_url: str) -> bool:
    """Whether phones can reach the display's WLAN server: a public_url is set, or it
    listens on an address other than loopback or "any" (a link to 127.0.0.1 or 0.0.0.0
    would name the phone itself)."""
    if public_url:
        return True
    if host in ("", "localhost"):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a host name: phones resolve it
    return not (address.is_loopback or address.is_unspecified)


def catalogue_message(items: list[Item]) -> ble.Catalogue:
    return ble.Catalogue(items=[ble.CatalogueEntry(id=i.id, title=i.title, kind=i.kind,
                                                   price_cents=i.price_cents,
                                                   merchant=i.merchant) for i in items])


class NodeDaemon:
    """One node: the radios are named in its config (``[nfc] device``, ``[ble] adapter``),
    so the same daemon runs on a Pi and as a process of the virtual hall. ``push`` may
    be given to use an already-open BLE adapter (tests)."""

    def __init__(self, config: NodeConfig, *, base_dir: Path | str = ".",
                 push: Any = None, credentials: NodeCredentials | None = None,
                 stream_key: bytes | None = None,
                 revoked: Container[str] = frozenset(),
                 on_tap: Callable[[TapRecord], None] | None = None) -> None:
        from node.ble_push import BlePush  # bleak is imported only when a node runs

        self.config = config
        if config.node.timezone:
            _check_timezone(config.node.timezone)
        base = Path(base_dir)
        self.data_dir = base / config.node.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials = credentials or load_node_credentials(config.keys, base)
        if self.credentials.node_id != config.node.id:
            raise ValueError(f"node certificate is for {self.credentials.node_id!r} but the "
                             f"config says [node] id = {config.node.id!r}; re-provision the keys")
        # Certificate validity and content schedules are checked against the node's
        # best time (tapcast.clock): a Pi without a real-time clock may boot offline days off.
        self.best_time = BestTime(self.data_dir / FLOOR_FILE)
        self.store = ContentStore(self.data_dir / "content.db", clock=self.best_time.now)
        # The library seeds a node that never ran a manifest from the hub; one that did
        # keeps it across restarts (the hub's content wins over the seed).
        if config.node.library and self.store.content_serial() == 0:
            library = Path(config.node.library)
            self.store.replace_all(load_library(library if library.is_absolute() else base / library,
                                                config.node.zone))
        self.outbox = Outbox(self.data_dir / "outbox.db")
        self.counters = Counters()
        self.revoked: Container[str] = revoked
        self.auth = NodeAuth(self.credentials, revoked=lambda: self.revoked,
                             clock=self.best_time.now,
                             clock_trusted=lambda: self.best_time.trusted)
        self.push = push if push is not None else BlePush.from_config(config.ble)
        if stream_key is None:
            from tapcast.streamkeys import load_node_stream_key
            stream_key = load_node_stream_key(base / config.keys.stream_key)
        self.sync = ContentSync(config.node.id, self.store, self.outbox,
                                self.credentials.hub_keyring, stream_key, self.data_dir / "files",
                                clock=self.best_time.now,
                                clock_trusted=lambda: self.best_time.trusted,
                                on_event=self._on_sync_event)
        self.uplink = Uplink(config.node.id, config.mqtt, self.outbox, stream_key,
                             zone=config.node.zone, on_hub_time=self.best_time.observe_hub_time,
                             on_manifest=self.sync.offer, version=__version__,
                             state_provider=self.state, base_dir=base)
        self.display: Display | None = None
        if config.display.enabled:
            import node.display  # aiohttp, imported only when a node serves a display

            d = config.display
            self.display = node.display.Display(
                loop=self._loop_items, online=lambda: self.uplink.connected,
                on_impression=self._on_impression, files_dir=self.data_dir / "files",
                host=d.host, port=d.port, slot_seconds=d.slot_seconds, public_url=d.public_url)
        #: Codes for handsets without NFC, while a page shows them (node.presence).
        self.codes: CodePresence | None = None
        if self.display is not None and config.display.code_seconds > 0:
            from node.presence import CodePresence

            display = self.display
            self.codes = CodePresence(config.node.id, self.auth, self.uplink, stream_key,
                                      show=display.show_code, watched=lambda: display.watched,
                                      on_verdict=self._on_code_verdict,
                                      period=config.display.code_seconds)
            display.on_watch = self.codes.wake
        # Links to a loopback (or "any") address would point each phone at itself.
        self.wlan_links = (self.display is not None
                           and wlan_reachable(config.display.host, config.display.public_url))
        self.on_tap = on_tap
        self.reader: NfcReader | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()
        self._stopped = asyncio.Event()
        self._time_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None

    @property
    def node_id(self) -> str:
        return self.config.node.id

    def state(self) -> NodeState:
        c = self.counters
        reader = self.reader_state
        return NodeState(node_id=self.node_id, ts=time.time(), version=__version__,
                         zone=self.config.node.zone, uptime=time.monotonic() - self._started,
                         outbox_depth=self.outbox.depth(), taps=c.taps,
                         deliveries=c.deliveries, failures=c.failures,
                         reader=reader["state"], reader_reason=reader["reason"][:200],
                         time_trusted=self.best_time.trusted,
                         time_source=self.best_time.source()[:64],
                         content_serial=min(self.store.content_serial(), MAX_SEQ),
                         tz=self.config.node.timezone)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the radios and start the uplink. Raises NodeStartError naming the radio
        that is missing (the uplink needs no broker to start: offline-first)."""
        loop = asyncio.get_running_loop()
        try:
            await self.push.start()
        except ConnectionError as exc:
            raise NodeStartError(f"BLE adapter {self.config.ble.adapter!r} is not available: "
                                 f"{exc}. Check [ble] adapter in the node config") from None
        await self.uplink.start()
        nfc = self.config.nfc
        self.reader = NfcReader(nfc.device, nfc.poll_interval, self._begin_tap, loop,
                                self._on_outcome, sens_res_timeout=nfc.sens_res_timeout,
                                hold_off=nfc.hold_off, on_status=self._on_reader_status,
                                on_sensed=self.sync.tap_started)
        try:
            # Opening a USB/serial reader can take a moment; keep the loop free meanwhile.
            await asyncio.to_thread(self.reader.start)
        except (OSError, ValueError) as exc:
            self.reader = None
            raise NodeStartError(
                f"NFC reader {nfc.device!r} cannot be opened ({exc}). Is it plugged in and "
                "is [nfc] device right? `python -m nfc` lists the readers nfcpy finds") from None
        if self.display is not None:
            try:
                await self.display.start()
            except OSError as exc:
                raise NodeStartError(
                    f"the display page cannot listen on {self.config.display.host}:"
                    f"{self.config.display.port} ({exc}): free the port or change "
                    "[display] port (or set [display] enabled = false)") from None
            self._status_task = loop.create_task(self._watch_link())
            if self.codes is not None:
                self.codes.start()
        if self.display is not None and not self.wlan_links:
            log.warning("the display listens on %s and [display] public_url is empty: "
                        "phones cannot reach it, so large files (over %d bytes) are not "
                        "sent, only their text; set [display] public_url to the node's "
                        "address on the hall's WLAN", self.config.display.host,
                        ble.INLINE_FILE_MAX)
        log.info("node %s serving taps on %s", self.node_id, nfc.device)
        self.uplink.publish_state()  # the hub sees the reader up now, not at the heartbeat
        self._time_task = loop.create_task(self._persist_time())
        if not self.best_time.trusted:
            log.warning("no trustworthy time yet (clock not synchronised, no hub time): "
                        "certificate not-before is not checked; expiry against %s",
                        self.best_time.source())

    async def _persist_time(self) -> None:
        """Persist the time floor now and then: a Pi loses power without a clean stop."""
        while True:
            await asyncio.to_thread(self.best_time.persist)
            await asyncio.sleep(TIME_PERSIST_INTERVAL)

    async def stop(self) -> None:
        if self.reader is not None:
            await asyncio.to_thread(self.reader.stop)
            self.reader = None
        if self._time_task is not None:
            self._time_task.cancel()
            await asyncio.gather(self._time_task, return_exceptions=True)
            self._time_task = None
        self.best_time.persist()
        if self._status_task is not None:
            self._status_task.cancel()
            await asyncio.gather(self._status_task, return_exceptions=True)
            self._status_task = None
        if self.codes is not None:
            await self.codes.stop()
        if self.display is not None:
            await self.display.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sync.close()
        await self.uplink.stop()
        await self.push.close()
        self.outbox.close()
        self._stopped.set()

    async def wait_idle(self) -> None:
        """Until every tap handed over so far is served and its events are recorded."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def reader_state(self) -> dict[str, Any]:
        """The NFC reader's health for the state heartbeat: state ("ok", "failed",
        "starting", "stopped"), device, since, reason, failures, retry_in."""
        if self.reader is None:
            return {"state": "stopped", "device": self.config.nfc.device, "since": 0.0,
                    "reason": "", "failures": 0, "retry_in": 0.0}
        return self.reader.status.as_dict()

    def _on_sync_event(self, kind: str) -> None:
        """Content sync recorded an event: send it; a swap also changes the state's
        content_serial, which operators should see now, not at the heartbeat."""
        self.uplink.notify()
        if kind == "manifest_applied":
            self.uplink.publish_state()
            if self.display is not None:
                self.display.content_changed()

    async def _watch_link(self) -> None:
        """Tell the display page when the hub comes or goes (its offline badge)."""
        assert self.display is not None
        shown = None
        while True:
            now = self.uplink.connected
            if now != shown:
                self.display.status_changed()
                if self.codes is not None:
                    self.codes.wake()  # codes only while the hub can hear of them
                shown = now
            await asyncio.sleep(LINK_WATCH_INTERVAL)

    def _loop_items(self, now: float) -> list[DisplayItem]:
        """The display's loop, at the store's clock (the node's best time), not ``now``
        (the display's wall clock, which may be days off on a Pi without an RTC)."""
        from node.display import DisplayItem

        return [DisplayItem(i.id, i.title, i.kind, i.body, i.price_cents, i.file_sha256,
                            i.media_type) for i in self.store.loop(LOOP_SLOTS)]

    def _on_impression(self, item_id: str) -> None:
        self._record(("impression", {"item_id": item_id}))

    def _on_reader_status(self, status: ReaderStatus) -> None:
        """Runs on the loop. A failure is one "error" event (the reader logged it);
        recovery shows in reader_state."""
        if status.state == "failed":
            self._record(("error", {"component": "nfc_reader", "device": status.device,
                                    "reason": status.reason}))
        self.uplink.publish_state()  # operators see a lost reader now, not at the heartbeat

    def describe(self) -> str:
        """The one line `tapcast node run` prints when the node serves taps."""
        c = self.config
        shown = f", display {self.display.url}/" if self.display is not None else ""
        return (f"node {self.node_id} ({c.node.zone}) serving taps: NFC {c.nfc.device}, "
                f"BLE {c.ble.adapter}, MQTT {', '.join(c.mqtt.brokers)}{shown}")

    async def run_forever(self) -> None:
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            if not self._stopped.is_set():
                await self.stop()

    # ------------------------------------------------------------------- taps

    def _record(self, *events: tuple[str, dict[str, Any]]) -> None:
        self.outbox.add_many(events)
        self.uplink.notify()

    def _begin_tap(self) -> Any:
        """In the reader thread, as the exchange begins: background downloads pause
        until the tap is served (ContentSync.tap_started; the reader already said so
        when it sensed the phone, this keeps the pause going for the exchange)."""
        self.sync.tap_started()
        return self.auth.begin()

    def _on_outcome(self, outcome: TapOutcome, channel: str = "nfc") -> None:
        """Runs on the loop (the reader thread scheduled it)."""
        task = asyncio.get_running_loop().create_task(self._serve_tap(outcome, channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_code_verdict(self, verdict: CodeVerdict) -> None:
        """A handset answered a code through the hub (node.presence, on the loop):
        served as a tap, recorded as channel "code"."""
        if verdict.ok:
            self.sync.tap_started()  # background downloads wait, as for an NFC tap
        now = time.monotonic()
        self._on_outcome(TapOutcome(started=verdict.started, finished=now,
                                    reason=verdict.reason, session=verdict.session,
                                    error=verdict.detail,
                                    authenticated=now if verdict.ok else None), "code")

    async def _serve_tap(self, outcome: TapOutcome, channel: str = "nfc") -> None:
        record = TapRecord(outcome)
        session = outcome.session
        self.counters.taps += 1
        auth: dict[str, Any] = {"ok": outcome.ok, "reason": outcome.reason,
                                "ms": round(outcome.duration * 1000, 2)}
        if outcome.error:
            auth["detail"] = outcome.error
        if session is not None:
            auth["handset_id"] = session.handset_id
        tap: dict[str, Any] = {"zone": self.config.node.zone}
        if channel != "nfc":  # an NFC tap's events stay as they were
            tap["channel"] = auth["channel"] = channel
        self._record(("tap", tap), ("auth", auth))
        if session is None:
            self.counters.rejected += 1
            log.info("tap rejected: %s %s", outcome.reason, outcome.error)
            self._done(record)
            return
        self.counters.authenticated += 1
        try:
            await self._push(session.handset_id, session.ble_address, session.ble_address_type,
                             session.session_key, record, consent=session.consent,
                             handset_key=session.handset_key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any BLE failure ends this tap, never the daemon
            record.error = f"{type(exc).__name__}: {exc}"
            self.counters.failures += 1
            self._record(("delivery_failed", {"handset_id": session.handset_id,
                                              "reason": record.error}))
            log.warning("push to %s failed: %s", session.ble_address, record.error)
        self._done(record)

    def _done(self, record: TapRecord) -> None:
        self.sync.tap_ended()
        if self.display is not None:
            self.display.tap_feedback(len(record.delivered),
                                      ok=record.outcome.ok and not record.error)
        if self.on_tap is not None:
            self.on_tap(record)

    async def _push(self, handset_id: str, address: str, address_type: int,
                    session_key: bytes, record: TapRecord, *, consent: int = 0xFFFF,
                    handset_key: bytes = b"") -> None:
        """Featured item first (what the display shows: the customer sees it at once;
        not of a kind the handset's consent flags exclude), then the catalogue, then
        serve requests (and the handset's refusals and open records) until bye or idle."""
        t0 = time.perf_counter()
        push = await self.push.open(address, address_type, session_key)
        log.info("push to %s (%s): connected in %.0f ms", handset_id, address,
                 (time.perf_counter() - t0) * 1e3)
        reports = SessionReports(record.delivered)
        try:
            featured = next((i for i in self.store.items()
                             if ble.consent_allows_kind(consent, i.kind)
                             and self.store.cap_allows(handset_id, i)), None)
            if featured is not None:
                await self._deliver(push, handset_id, featured, record)
            await push.send(catalogue_message(self.store.items()))
            while True:
                try:
                    message = await asyncio.wait_for(push.receive(),
                                                     self.config.node.idle_timeout)
                except TimeoutError:
                    break
                if isinstance(message, ble.Bye):
                    break
                if isinstance(message, (ble.Refused, ble.Opened)):
                    await handset_report(push, message, handset_id, handset_key,
                                         self._record, reports)
                    continue
                if isinstance(message, ble.Request):
                    item = self.store.get(message.item_id)
                    self._record(("request", {"handset_id": handset_id,
                                              "item_id": message.item_id,
                                              "found": item is not None}))
                    if item is None:
                        await push.send(ble.Ack(ref=0, ok=False,
                                                reason=f"no item {message.item_id!r} here"))
                    elif not self.store.cap_allows(handset_id, item):
                        self._record(("capped", {"handset_id": handset_id,
                                                 "item_id": item.id}))
                        await push.send(ble.Ack(ref=0, ok=False, reason=(
                            f"{item.title!r}: you have had it as often as it may be "
                            "given for now")))
                    else:
                        await self._deliver(push, handset_id, item, record)
        finally:
            record.first_content_at = push.first_content_at
            await push.close()
            log.info("push to %s done: %d item(s) in %.0f ms", handset_id,
                     len(record.delivered), (time.perf_counter() - t0) * 1e3)

    async def _deliver(self, push: Any, handset_id: str, item: Item, record: TapRecord) -> None:
        """Send one item. A failure of this item alone (its file unreadable, the message
        refused by the handset or too big) is recorded as delivery_failed for it and the
        tap goes on; a lost link (ConnectionError, TimeoutError, PushError) ends it."""
        try:
            message = await asyncio.to_thread(self._item_message, item)
            await push.send(message)
        except (asyncio.CancelledError, ConnectionError, TimeoutError):
            raise
        except (ValueError, OSError) as exc:  # FrameError is a ValueError
            reason = f"{type(exc).__name__}: {exc}"
            self.counters.failures += 1
            self._record(("delivery_failed", {"handset_id": handset_id, "item_id": item.id,
                                              "reason": reason}))
            log.warning("item %s to %s failed: %s; going on", item.id, handset_id, reason)
            return
        self.counters.deliveries += 1
        record.delivered.append(item.id)
        self.store.delivered(handset_id, item.id)
        self._record(("delivery", {"handset_id": handset_id, "item_id": item.id,
                                   "kind": item.kind, "version": item.version,
                                   "bytes": len(message.body.encode()) + len(message.data or b""),
                                   "via": "wlan" if message.media_url else "ble"}))

    def _item_message(self, item: Item) -> ble.ContentItem:
        """The item as it goes over BLE (item_message_for; in a thread)."""
        wlan = self.display.wlan_url if self.display is not None and self.wlan_links else None
        return item_message_for(item, self.data_dir / "files", wlan)


async def run_until_signalled(daemon: NodeDaemon, announce: Callable[[str], None]) -> None:
    """Run ``daemon`` until SIGTERM or SIGINT, then stop it cleanly (offline status
    published, outbox closed). ``announce`` gets one line once taps are served. Raises
    NodeStartError when a radio is missing (after releasing what was opened)."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
    except BaseException:
        await daemon.stop()
        raise
    announce(daemon.describe())
    await stop.wait()
    await daemon.stop()
