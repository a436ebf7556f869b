"""The node's side of content sync: check the hub's signed manifest, fetch the files it
names that the node lacks, then swap to the new set at once (docs/content.md,
"Manifests and sync"; DESIGN.md, "Content").

Why this order: nothing of a manifest is served until every file it names is on disk
and verified, so a tap sees the old set or the new one, whole, and a node whose hub is
away keeps serving what it has. Why files are fetched by the node (HTTP, resumable)
rather than pushed over MQTT: a video on a hall's Wi-Fi is cut off now and then, and a
Range request picks up where the cut was, where an MQTT message starts over.

One payload at a time, on the asyncio loop: ``offer`` checks it at once (signature,
kind, subject, expiry, serial, body) and records a refusal as a ``manifest_refused``
event; a newer manifest becomes the pending one and a background task fetches its
missing files (urllib, in a thread), each request signed with the node's stream key.
Bytes go to ``files/.partial/<sha256>`` and a retry asks for the rest only; a file
whose size or sha256 is wrong refuses the manifest (``bad_file``), except after a
resumed download: then the partial is deleted and the file fetched again from byte 0,
and only a fresh download that does not match refuses it. A network error is retried
with bounded backoff while the manifest stays pending; a disk without room for the
missing files (plus NO_SPACE_RESERVE) refuses the manifest (``no_space``) rather than
retrying forever. A newer manifest
arriving meanwhile replaces the pending one (files fetched so far are kept). Once every
file is in place the store swaps in one transaction and files that neither the new set
nor the previous one names are deleted.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import hashlib
import http.client
import logging
import os
import random
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tapcast.fsutil import fsync_dir
from tapcast.keys import HubKeyring
from tapcast.protocol.manifest import (FILES_PATH, MANIFEST_KIND, Manifest, ManifestError,
                                       ManifestFile, decode_manifest, file_request_sig)
from tapcast.ratelog import RateLimitedLog
from tapcast.signed import ISSUED_TOLERANCE, SignedObjectError, open_signed, peek

from node.outbox import Outbox
from node.store import ContentStore

log = logging.getLogger(__name__)

__all__ = ["ContentSync", "FetchError", "BadFileError", "NoSpaceError", "PARTIAL_DIR"]

#: Where files being downloaded wait, under the files directory, until they verify.
PARTIAL_DIR = ".partial"
CHUNK = 64 * 1024
#: Bytes of a download written between two fsyncs.
SYNC_EVERY = 1024 * 1024
#: Longest downloads (and a finished set's swap) pause for taps in one go, and how often
#: they look, seconds. Taps in a row (a phone left on the reader, re-sensed at every
#: poll) count as one pause: once it has lasted TAP_YIELD_MAX overall, downloads go on
#: for at least TAP_YIELD_GAP before a new tap pauses them again.
TAP_YIELD_MAX = 3.0
TAP_YIELD_GAP = 1.0
TAP_YIELD_STEP = 0.005
#: Free disk space kept beyond the missing files' bytes before a download starts.
NO_SPACE_RESERVE = 64 * 1024 * 1024
#: Each refusal reason is recorded as an event at most once in this many seconds; the
#: next one recorded says how many were skipped meanwhile (``skipped``).
REFUSAL_EVENT_INTERVAL = 60.0
#: Reasons found before the signature was verified: the serial such a payload claims
#: is anyone's to choose, so it does not make a refusal a new one.
UNAUTHENTICATED = frozenset({"malformed", "too_large", "unknown_key", "bad_signature"})
#: Longest ``detail`` of a manifest_refused event (the hub stores it as given).
MAX_DETAIL = 200
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")


class FetchError(Exception):
    """A file cannot be fetched now (network, hub away or refusing): try again later."""


class BadFileError(Exception):
    """A file's bytes are not what the manifest says (size or sha256): the manifest is
    refused, as the hub serves something other than what it signed."""


class NoSpaceError(Exception):
    """The node's disk has no room for the manifest's files: the manifest is refused
    (``no_space``) instead of being retried forever."""


@dataclass
class _Pending:
    """A checked manifest newer than the running one, waiting for its files."""

    serial: int
    expires: int
    manifest: Manifest
    bytes_fetched: int = 0


class ContentSync:
    """Keeps ``store`` at the newest valid manifest offered. ``keyring``: the hub keys
    the node trusts; ``stream_key``: the node's, to sign file requests; ``files_dir``:
    where files live, each as ``<sha256>``. ``clock`` is the node's best time and
    ``clock_trusted`` whether it is more than a guess (tapcast.clock): without it an
    object "issued in the future" cannot be told from a clock running behind.
    ``on_event(kind)`` is called after each event recorded in ``outbox`` (the daemon
    sends it on and republishes its state). All methods: on the asyncio loop."""

    def __init__(self, node_id: str, store: ContentStore, outbox: Outbox,
                 keyring: HubKeyring | bytes | Iterable[bytes], stream_key: bytes,
                 files_dir: Path | str, *, clock: Callable[[], float] = time.time,
                 clock_trusted: Callable[[], bool] = lambda: True,
                 on_event: Callable[[str], None] | None = None, timeout: float = 30.0,
                 backoff_min: float = 1.0, backoff_max: float = 300.0) -> None:
        if len(stream_key) != 32:
            raise ValueError("stream_key must be the node's 32-byte stream key")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        self.node_id = node_id
        self.store = store
        self.outbox = outbox
        self.keyring = HubKeyring.of(keyring)
        self._stream_key = stream_key
        self.files_dir = Path(files_dir)
        self.partial_dir = self.files_dir / PARTIAL_DIR
        self.clock = clock
        self.clock_trusted = clock_trusted
        self.on_event = on_event
        self.timeout = timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.refused: collections.Counter[str] = collections.Counter()  # by reason
        self.applied = 0
        self.fetch_errors = 0
        self.bytes_fetched = 0  # over all manifests, for operators
        # Taps come first: while one is served, downloads, hashing and the swap wait
        # (until tap_ended, or TAP_YIELD_MAX at most, so a tap that never ends cannot
        # stall a sync). tap_started runs in the NFC reader's thread, tap_ended on the
        # loop, _held in the download thread and on the loop: all under _hold_lock.
        self._hold_lock = threading.Lock()
        self._hold_since = 0.0  # time.monotonic() when the current pause began
        self._hold_until = 0.0  # it ends then (tap_ended ends it sooner)
        self._free_until = 0.0  # after a pause that reached the cap: no new one before
        #: Set when a download (or hashing) actually paused for a tap, and when a
        #: finished set waited for a tap before its swap (tests, operators).
        self.paused_for_tap = threading.Event()
        self.swap_waited_for_tap = threading.Event()
        self._pending: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a newer pending manifest, or close()
        self._progress = asyncio.Event()  # replaced at each step: wait_for wakes on it
        self._closed = False
        self._last_refusal: tuple[str, int | None] | None = None
        self._refusal_recorded: dict[str, float] = {}  # reason -> time.monotonic()
        self._refusal_skipped: collections.Counter[str] = collections.Counter()
        self._ratelog = RateLimitedLog(log)

    # ------------------------------------------------------------------ public API

    @property
    def pending_serial(self) -> int | None:
        """The serial of the manifest waiting for its files, if any."""
        return self._pending.serial if self._pending is not None else None

    def offer(self, payload: bytes) -> None:
        """A payload from the node's manifest topic. Checked now; a newer manifest is
        fetched and applied in the background. Never raises: anyone on the broker may
        send anything."""
        if self._closed:
            return
        try:
            pending = self._check(bytes(payload))
        except Exception:  # a bug must not take the uplink's read loop down
            log.exception("content sync %s: error while checking a manifest", self.node_id)
            return
        if pending is None:
            return
        if self._pending is not None:
            log.info("content sync %s: manifest %d replaces pending %d", self.node_id,
                     pending.serial, self._pending.serial)
        self._pending = pending
        self._changed.set()
        self._step()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"content-sync-{self.node_id}")

    async def sync(self, payload: bytes) -> None:
        """``offer`` and wait until nothing is pending (tests, tools)."""
        self.offer(payload)
        await self.wait_idle()

    async def wait_idle(self) -> None:
        """Until no manifest is pending: applied, refused or closed."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def wait_for(self, predicate: Callable[[], bool],
                       timeout: float | None = None) -> None:
        """Until ``predicate()`` holds, checked after each step of the sync (a check, a
        failed fetch, a swap); TimeoutError after ``timeout`` seconds."""
        async def until() -> None:
            while not predicate():
                await self._progress.wait()
        await asyncio.wait_for(until(), timeout)

    async def close(self) -> None:
        """Stop syncing; a pending manifest is dropped (its retained copy comes again
        at the next connection) and partial files stay for the next try."""
        self._closed = True
        self._changed.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------- checking

    def _check(self, payload: bytes) -> _Pending | None:
        """The payload as a pending manifest, or None: refused (recorded), the one
        running (a retained copy delivered again), or not newer than the pending one."""
        if not payload:
            log.info("content sync %s: the manifest topic was cleared; serving what runs",
                     self.node_id)
            return None
        running = self.store.content_serial()
        try:
            obj = open_signed(payload, self.keyring, kind=MANIFEST_KIND, subject=self.node_id,
                              now=self.clock(), min_serial=running,
                              tolerance=ISSUED_TOLERANCE if self.clock_trusted() else float("inf"))
        except SignedObjectError as exc:
            self._refuse(exc.reason, str(exc), _peeked_serial(payload))
            return None
        if obj.serial == running:
            log.debug("content sync %s: manifest %d runs already", self.node_id, obj.serial)
            return None
        try:
            manifest = decode_manifest(obj.body, self.node_id)
            _check_zone(manifest.tz)
        except ManifestError as exc:
            self._refuse("malformed", str(exc), obj.serial)
            return None
        pending = self._pending
        if pending is not None and obj.serial <= pending.serial:
            log.debug("content sync %s: manifest %d is not newer than pending %d",
                      self.node_id, obj.serial, pending.serial)
            return None
        return _Pending(obj.serial, obj.expires, manifest)

    def _refuse(self, reason: str, detail: str, serial: int | None) -> None:
        """Count and log (rate-limited) a refusal, and record it for the hub: not again
        for the same reason and serial in a row (a retained bad manifest delivered at
        every reconnection is one event), and at most one event per reason in
        REFUSAL_EVENT_INTERVAL (payloads sent over and over are not a flood); the next
        event of that reason carries ``skipped``, how many were not recorded. For a
        reason found before the signature is checked the claimed serial is not part of
        "the same" (anyone can vary it); the event still reports it."""
        self.refused[reason] += 1
        self._ratelog.warn(reason, "content sync %s: refused manifest (serial %s): %s; "
                           "serving what runs (serial %d)", self.node_id, serial, detail,
                           self.store.content_serial())
        key = (reason, None if reason in UNAUTHENTICATED else serial)
        now = time.monotonic()
        last = self._refusal_recorded.get(reason)
        if self._last_refusal == key or (last is not None
                                         and now - last < REFUSAL_EVENT_INTERVAL):
            self._refusal_skipped[reason] += 1
        else:
            self._last_refusal = key
            self._refusal_recorded[reason] = now
            data: dict[str, Any] = {"reason": reason, "detail": detail[:MAX_DETAIL],
                                    "serial": serial}
            skipped = self._refusal_skipped.pop(reason, 0)
            if skipped:
                data["skipped"] = skipped
            self._record("manifest_refused", data)
        self._step()

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self.outbox.add(kind, data)
        except Exception:  # a full disk must not end the sync; the log has it
            log.exception("content sync %s: cannot record %s %s", self.node_id, kind, data)
            return
        if self.on_event is not None:
            self.on_event(kind)

    def _step(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    # ------------------------------------------------------------------- fetching

    async def _run(self) -> None:
        """Fetch and apply pending manifests until none is left."""
        while not self._closed and self._pending is not None:
            pending = self._pending
            self._changed.clear()
            try:
                if await self._fetch(pending):
                    while self._held():  # a tap first, then the swap (same capped rule)
                        self.swap_waited_for_tap.set()
                        await asyncio.sleep(TAP_YIELD_STEP)
                    if not self._superseded(pending):
                        self._apply(pending)
            except BadFileError as exc:
                if self._pending is pending:
                    self._pending = None
                self._refuse("bad_file", str(exc), pending.serial)
            except NoSpaceError as exc:
                if self._pending is pending:
                    self._pending = None
                self._refuse("no_space", str(exc), pending.serial)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: drop this manifest (its retained copy comes again)
                log.exception("content sync %s: syncing manifest %d failed", self.node_id,
                              pending.serial)
                if self._pending is pending:
                    self._pending = None

    def _superseded(self, pending: _Pending) -> bool:
        return self._closed or self._pending is not pending

    async def _fetch(self, pending: _Pending) -> bool:
        """Put every file of ``pending`` in place; False when it was superseded first.
        Raises BadFileError, NoSpaceError."""
        wanted = {item.file.sha256: item.file for item in pending.manifest.items
                  if item.file is not None}
        await asyncio.to_thread(self._check_space, [f for f in wanted.values()
                                                    if not self._have(f)])
        failures = 0
        for file in wanted.values():
            while not self._have(file):
                if self._superseded(pending):
                    return False
                fetched = [0]
                try:
                    await asyncio.to_thread(self._download, pending.manifest.files_url, file,
                                            lambda: self._superseded(pending), fetched)
                    failures = 0
                except FetchError as exc:
                    failures += 1
                    self.fetch_errors += 1
                    delay = min(self.backoff_max, self.backoff_min * 2 ** min(failures - 1, 32))
                    delay = delay / 2 + random.uniform(0, delay / 2)
                    self._ratelog.warn("fetch", "content sync %s: manifest %d: %s; retrying "
                                       "in %.1f s (serving serial %d meanwhile)", self.node_id,
                                       pending.serial, exc, delay, self.store.content_serial())
                    self._step()
                    try:
                        await asyncio.wait_for(self._changed.wait(), delay)
                    except TimeoutError:
                        pass
                finally:
                    pending.bytes_fetched += fetched[0]
                    self.bytes_fetched += fetched[0]
        return not self._superseded(pending)

    def _check_space(self, missing: list[ManifestFile]) -> None:
        """Raise NoSpaceError unless the disk holds the missing files' remaining bytes
        plus NO_SPACE_RESERVE (a full disk would fail every retry the same way)."""
        if not missing:
            return
        need = 0
        for file in missing:
            try:
                have = (self.partial_dir / file.sha256).stat().st_size
            except OSError:
                have = 0
            need += max(0, file.size - have)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.files_dir).free
        if free < need + NO_SPACE_RESERVE:
            raise NoSpaceError(f"{len(missing)} missing file(s) need {need} bytes plus a "
                               f"{NO_SPACE_RESERVE}-byte reserve; {free} bytes are free "
                               f"under {self.files_dir}")

    def _have(self, file: ManifestFile) -> bool:
        """Whether the file is in place; one of the wrong size (a damaged disk) is
        deleted so it is fetched again. Files are renamed in only once verified."""
        path = self.files_dir / file.sha256
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size == file.size:
            return True
        log.warning("content sync %s: file %s has %d bytes, not %d; fetching it again",
                    self.node_id, file.sha256, size, file.size)
        path.unlink(missing_ok=True)
        return False

    def tap_started(self) -> None:
        """A tap began (called in the NFC reader's thread, when it senses a phone and
        as the exchange begins): downloads pause between chunks, and a finished set's
        swap waits, while it is served (a Pi has few cores; the customer at the display
        should not wait for a background download). The pause is capped: see
        TAP_YIELD_MAX and TAP_YIELD_GAP."""
        now = time.monotonic()
        with self._hold_lock:
            if now < self._free_until:
                return  # a pause just reached its cap: downloads' turn
            # Within TAP_YIELD_GAP of the last hold (and not after a capped one) this
            # tap continues the same pause; otherwise it starts a new one.
            chained = (now < self._hold_until + TAP_YIELD_GAP
                       and self._hold_since >= self._free_until)
            if not chained:
                self._hold_since = now
            cap = self._hold_since + TAP_YIELD_MAX
            if now >= cap:  # this pause has had its share: downloads go on for a while
                self._hold_until = now
                self._free_until = now + TAP_YIELD_GAP
            else:
                self._hold_until = cap

    def tap_ended(self) -> None:
        """The tap was served (on the loop): its pause ends now."""
        with self._hold_lock:
            self._hold_until = min(self._hold_until, time.monotonic())

    def _held(self) -> bool:
        """Whether a tap is being served now (within the capped pause)."""
        with self._hold_lock:
            return time.monotonic() < self._hold_until

    def _yield_to_taps(self) -> None:
        """In the download thread: wait while a tap is being served."""
        while self._held():
            self.paused_for_tap.set()
            time.sleep(TAP_YIELD_STEP)

    def _download(self, files_url: str, file: ManifestFile, abort: Callable[[], bool],
                  fetched: list[int]) -> None:
        """In a thread: fetch the rest of ``file`` into its partial file, then verify it
        and rename it into place. Returns early (partial kept) when ``abort()``. Raises
        FetchError (try again), BadFileError (partial deleted) or NoSpaceError.
        Bytes that do not match after a resumed download may be the old part's fault
        (a crash, a file changed on the hub since): the partial is deleted and the next
        try starts from byte 0; only a fresh download that does not match is bad."""
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        partial = self.partial_dir / file.sha256
        have = partial.stat().st_size if partial.exists() else 0
        if have > file.size:
            partial.unlink()
            have = 0
        resumed = have > 0
        if have < file.size:
            result = self._request(files_url, file, partial, have, abort, fetched)
            if result is None:
                return
            have, restarted = result
            resumed = resumed and not restarted
        if have != file.size:
            partial.unlink(missing_ok=True)
            if resumed:
                raise FetchError(f"file {file.sha256}: a resumed download came to more "
                                 f"than {file.size} bytes; fetching it again from byte 0")
            raise BadFileError(f"file {file.sha256}: the hub sent more than the "
                               f"{file.size} bytes the manifest names")
        digest = hashlib.sha256()
        with open(partial, "rb") as f:
            while chunk := f.read(CHUNK):
                self._yield_to_taps()
                digest.update(chunk)
        if digest.hexdigest() != file.sha256:
            partial.unlink(missing_ok=True)
            if resumed:
                raise FetchError(f"file {file.sha256}: a resumed download hashes to "
                                 f"{digest.hexdigest()}; fetching it again from byte 0")
            raise BadFileError(f"file {file.sha256}: the bytes the hub sent hash to "
                               f"{digest.hexdigest()}")
        os.replace(partial, self.files_dir / file.sha256)
        fsync_dir(self.files_dir)

    def _request(self, files_url: str, file: ManifestFile, partial: Path, have: int,
                 abort: Callable[[], bool], fetched: list[int]) -> tuple[int, bool] | None:
        """One GET for the bytes from ``have`` on; what the partial file holds after
        it (at most one byte over ``file.size``) and whether the hub sent the whole
        file instead (the partial restarted from byte 0), or None when aborted."""
        restarted = False
        ts = int(self.clock())
        query = urllib.parse.urlencode({"node": self.node_id, "ts": ts, "sig": file_request_sig(
            self._stream_key, self.node_id, file.sha256, ts)})
        url = files_url.rstrip("/") + FILES_PATH + file.sha256 + "?" + query
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=self.timeout) as response:
                if response.status == 206:
                    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                    if match is None or int(match.group(1)) != have:
                        partial.unlink(missing_ok=True)  # not the part asked for: start over
                        raise FetchError(f"file {file.sha256}: the hub answered another "
                                         f"range ({response.headers.get('Content-Range')})")
                    mode = "ab"
                elif response.status == 200:  # the whole file (no Range support): restart
                    mode, have, restarted = "wb", 0, True
                else:
                    raise FetchError(f"file {file.sha256}: HTTP {response.status}")
                with open(partial, mode) as out:
                    try:
                        unsynced = 0
                        while have <= file.size:
                            if abort():
                                return None
                            self._yield_to_taps()
                            chunk = response.read(min(CHUNK, file.size + 1 - have))
                            if not chunk:
                                break
                            out.write(chunk)
                            have += len(chunk)
                            fetched[0] += len(chunk)
                            unsynced += len(chunk)
                            if unsynced >= SYNC_EVERY:
                                # A little at a time: one large flush at the end would
                                # hold up the outbox's own fsync (a tap's events) behind it.
                                out.flush()
                                os.fsync(out.fileno())
                                unsynced = 0
                    finally:
                        out.flush()
                        os.fsync(out.fileno())
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # the hub's file is shorter than our part: start over
                partial.unlink(missing_ok=True)
            try:
                why = exc.read(300).decode("utf-8", "replace").strip()
            except (OSError, http.client.HTTPException):
                why = ""
            raise FetchError(f"file {file.sha256}: HTTP {exc.code} {why}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, timeouts
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                partial.unlink(missing_ok=True)  # give the room back
                raise NoSpaceError(f"file {file.sha256}: the disk is full ({exc})") from None
            raise FetchError(f"file {file.sha256}: {type(exc).__name__}: {exc} "
                             f"(from {files_url})") from None
        if have < file.size:
            raise FetchError(f"file {file.sha256}: cut off at {have} of {file.size} bytes")
        return have, restarted

    # ------------------------------------------------------------------- applying

    def _apply(self, pending: _Pending) -> None:
        """Swap to ``pending`` (every file in place), then delete the files neither it
        nor the set before it names."""
        if self._pending is pending:
            self._pending = None
        running = self.store.content_serial()
        if pending.serial <= running:
            return
        if self.clock() >= pending.expires:  # it waited for its files too long
            self._refuse("expired", f"manifest {pending.serial} expired at "
                         f"{pending.expires} while its files were fetched", pending.serial)
            return
        previous = self.store.file_hashes()
        self.store.apply_manifest(pending.serial, pending.manifest)
        self.applied += 1
        self._last_refusal = None
        items = len(pending.manifest.items)
        log.info("content sync %s: manifest %d runs (%d items, %d bytes fetched; was %d)",
                 self.node_id, pending.serial, items, pending.bytes_fetched, running)
        self._record("manifest_applied", {"serial": pending.serial, "items": items,
                                          "bytes_fetched": pending.bytes_fetched})
        keep = previous | self.store.file_hashes()
        if self._pending is not None:  # a newer one arrived meanwhile: keep its partials
            keep |= {i.file.sha256 for i in self._pending.manifest.items if i.file}
        self._collect(keep)
        self._step()

    def _collect(self, keep: set[str]) -> None:
        """Delete files (and partial files) not in ``keep``; only names that are a
        sha256, so nothing else under the directory is touched."""
        for directory in (self.files_dir, self.partial_dir):
            try:
                entries = list(directory.iterdir())
            except FileNotFoundError:
                continue
            for path in entries:
                if _SHA256.fullmatch(path.name) and path.name not in keep and path.is_file():
                    try:
                        path.unlink()
                        log.debug("content sync %s: deleted file %s", self.node_id, path.name)
                    except OSError as exc:
                        log.warning("content sync %s: cannot delete %s: %s", self.node_id,
                                    path, exc)


def _peeked_serial(payload: bytes) -> int | None:
    """The serial a refused object claims, for the report only; None when unreadable."""
    try:
        return peek(payload).serial
    except SignedObjectError:
        return None


def _check_zone(tz: str) -> None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a directory
        raise ManifestError(f"manifest time zone {tz!r} is not known here: {exc}") from None
