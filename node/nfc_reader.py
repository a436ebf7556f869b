"""The node's NFC reader: poll 106A, authenticate the handset, report each tap.

nfcpy is blocking, so it runs in its own thread; every outcome is handed to the asyncio
loop with ``loop.call_soon_threadsafe``. The same code opens ``usb:...``/``tty:...``
readers on a Pi and ``udp:HOST:PORT`` in the virtual hall; the only udp-specific code
is ``cap_udp_sens_res_wait`` (marked below).

Per tap: sense 106A -> RATS (nfcpy's Type4ATag) -> SELECT AID -> HELLO -> CONFIRM ->
S(DESELECT). APDUs go through ``Type4Tag.transceive`` (not send_apdu, which refuses
extended-length APDUs on Type 4A; see tapcast.protocol.nfc).

A reader can fail after start (USB unplugged, a serial line gone): nfcpy's connect then
returns False (it swallows IOError) or raises. The reader thread closes the device,
reports the failure once (``on_status``, one log line), and reopens it with
exponential backoff (``retry_min`` doubling up to ``retry_max``) until it works again;
then it reports the recovery (one line) and serves taps, without a restart.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from tapcast.protocol.nfc import NodeHandshake, NodeSession, NodeVerdict

log = logging.getLogger(__name__)

DESELECT = b"\xC2"
RETRY_MIN = 0.1  # seconds before the first reopen of a failed reader
RETRY_MAX = 30.0  # backoff cap: a reader plugged back in is serving within this


@dataclass(frozen=True)
class ReaderStatus:
    """The reader's health as the node reports it. ``since``: time.time() of the last
    change; ``reason``: why it failed (empty when ok); ``failures``: state changes to
    failed since start; ``retry_in``: seconds until the next reopen (failed only)."""

    state: Literal["starting", "ok", "failed", "stopped"]
    device: str
    since: float
    reason: str = ""
    failures: int = 0
    retry_in: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "device": self.device, "since": round(self.since, 3),
                "reason": self.reason, "failures": self.failures,
                "retry_in": round(self.retry_in, 3)}


def open_frontend(path: str) -> Any:
    """Open an nfcpy ContactlessFrontend on ``path``; OSError naming it if it cannot."""
    import nfc

    clf = nfc.ContactlessFrontend()
    try:
        opened = clf.open(path)
    except OSError as exc:
        raise OSError(f"cannot open NFC reader {path!r}: {exc.strerror or exc}") from None
    if not opened:
        raise OSError(f"cannot open NFC reader {path!r}")
    return clf


@dataclass(frozen=True)
class TapOutcome:
    """One tap. Times are time.monotonic(): ``started`` when the target was sensed,
    ``authenticated`` when the handset accepted CONFIRM (None unless reason == "ok"),
    ``finished`` when the verdict was known."""

    started: float
    finished: float
    reason: str
    session: NodeSession | None = None
    error: str = ""
    authenticated: float | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "ok"

    @property
    def duration(self) -> float:
        return self.finished - self.started


def cap_udp_sens_res_wait(device: object, sens_res_timeout: float) -> None:
    """UDP ONLY. nfcpy's udp driver waits a hard-coded 1.0 s for SENS_RES; with no card
    listening (the usual case between taps) every poll blocks that long, so a handset
    that starts listening just after a poll waits ~1 s, and stop() waits as long. On
    loopback a SENS_RES arrives in microseconds, so we cap the first wait of each
    sense_tta (the SENS_RES one) to ``sens_res_timeout``; the anticollision waits that
    follow keep nfcpy's values. Done by switching this one device instance to a
    subclass, so nothing global changes and real drivers are untouched."""
    import nfc.clf.udp

    if not isinstance(device, nfc.clf.udp.Device):
        return

    class FastSenseUdpDevice(nfc.clf.udp.Device):
        _cap_next_recv = False

        def sense_tta(self, target):  # type: ignore[no-untyped-def]
            self._cap_next_recv = True
            try:
                return super().sense_tta(target)
            finally:
                self._cap_next_recv = False

        def _recv_data(self, timeout, *brty_list):  # type: ignore[no-untyped-def]
            if self._cap_next_recv:
                self._cap_next_recv = False
                if timeout is not None:
                    timeout = min(timeout, sens_res_timeout)
            return super()._recv_data(timeout, *brty_list)

    device.__class__ = FastSenseUdpDevice


class NfcReader:
    """Polls for handsets and authenticates each one with a fresh ``auth_factory()``.

    ``hold_off``: seconds to stop polling after a tap. A phone stays in the field for
    a second or so and every poll re-activates it (with a fresh random UID, so it cannot
    be recognised at this layer); without a pause one tap would authenticate tens of
    times. 0 in tests that tap in quick succession.

    ``on_status``: called on the loop with a ReaderStatus at each change of state (ok,
    failed); ``open_device``: how a path becomes an open ContactlessFrontend (nfcpy by
    default; tests wrap it to unplug a reader).
    """

    def __init__(self, device_path: str, poll_interval: float,
                 auth_factory: Callable[[], NodeHandshake],
                 loop: asyncio.AbstractEventLoop,
                 on_outcome: Callable[[TapOutcome], None], *,
                 sens_res_timeout: float = 0.02, hold_off: float = 0.5,
                 on_status: Callable[[ReaderStatus], None] | None = None,
                 on_sensed: Callable[[], None] | None = None,
                 retry_min: float = RETRY_MIN, retry_max: float = RETRY_MAX,
                 open_device: Callable[[str], Any] = open_frontend) -> None:
        self.device_path = device_path
        self.poll_interval = poll_interval
        self.auth_factory = auth_factory
        # Called in this reader's thread as soon as a phone is sensed, before the
        # exchange: whoever must make way for a tap (background downloads) hears first.
        self.on_sensed = on_sensed
        self.loop = loop
        self.on_outcome = on_outcome
        self.on_status = on_status
        self.sens_res_timeout = sens_res_timeout
        self.hold_off = hold_off
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.open_device = open_device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clf: Any = None
        self._status = ReaderStatus("starting", device_path, time.time())

    @property
    def status(self) -> ReaderStatus:
        return self._status

    def start(self) -> None:
        """Open the device (OSError if it cannot be opened) and start polling. A reader
        missing at start is the operator's to fix (one clear line); one lost later is
        retried by the reader thread."""
        if self._thread is not None:
            raise RuntimeError("NfcReader already started")
        self._clf = self._open()
        self._status = ReaderStatus("ok", self.device_path, time.time())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nfc-reader", daemon=True)
        self._thread.start()

    def _open(self) -> Any:
        clf = self.open_device(self.device_path)
        cap_udp_sens_res_wait(clf.device, self.sens_res_timeout)
        return clf

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and close the device. Prompt: the poll loop waits on an event,
        and a tap in progress ends within nfcpy's frame timeouts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("nfc reader thread did not stop within %.1f s", timeout)
            self._thread = None
        self._close()
        self._status = ReaderStatus("stopped", self.device_path, time.time(),
                                    failures=self._status.failures)

    def _close(self) -> None:
        clf, self._clf = self._clf, None
        if clf is not None:
            try:
                clf.close()
            except Exception as exc:  # a device already gone may fail to close
                log.debug("nfc reader: close failed: %s", exc)

    # ------------------------------------------------------------ reader thread

    def _terminate(self) -> bool:
        # nfcpy calls this between polls: waiting here *is* the poll interval, and an
        # event wait (unlike nfcpy's own time.sleep) ends at once on stop().
        return self._stop.wait(self.poll_interval)

    def _run(self) -> None:
        sensed = {"at": 0.0}

        def on_discover(target) -> bool:  # type: ignore[no-untyped-def]
            sensed["at"] = time.monotonic()
            # ISO-DEP (SEL_RES bit 6) only: phones in HCE mode, not plain tags.
            phone = bool(target.sel_res and target.sel_res[0] & 0x20)
            if phone and self.on_sensed is not None:
                try:
                    self.on_sensed()  # before activation: the tap has begun
                except Exception:  # noqa: BLE001 - the callback's fault, not the device's
                    log.exception("nfc reader: on_sensed failed; serving the tap anyway")
            return phone

        def on_connect(tag) -> bool:  # type: ignore[no-untyped-def]
            self._tap(tag, sensed["at"])
            return False  # no presence-check loop: the tap is done

        options = {
            "targets": ["106A"],
            "iterations": 1,
            "interval": self.poll_interval,
            "on-discover": on_discover,
            "on-connect": on_connect,
            "beep-on-connect": False,
        }
        backoff = self.retry_min
        while not self._stop.is_set():
            if self._clf is None:
                try:
                    self._clf = self._open()
                except Exception as exc:  # nfcpy raises OSError, drivers anything
                    self._failed(f"cannot reopen: {_describe(exc)}", backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.retry_max)
                    continue
                self._recovered()
            opened = time.monotonic()
            try:
                result = self._clf.connect(rdwr=options, terminate=self._terminate)
            except Exception as exc:  # taps catch their own errors: this is the device
                reason = _describe(exc)
            else:
                if result is not False or self._stop.is_set():
                    continue
                # nfcpy returns False after logging an IOError: the device is gone.
                reason = "the reader stopped answering (I/O error; see nfcpy's log line)"
            self._close()
            if time.monotonic() - opened >= self.retry_max:
                backoff = self.retry_min  # it had worked for a while: a new failure
            self._failed(reason, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.retry_max)

    def _failed(self, reason: str, retry_in: float) -> None:
        """Report a failure once per change of state, not once per attempt."""
        previous = self._status
        if previous.state == "failed":
            self._status = replace(previous, retry_in=retry_in)
            return
        self._status = ReaderStatus("failed", self.device_path, time.time(), reason,
                                    previous.failures + 1, retry_in)
        log.error("nfc reader %s failed: %s; retrying with backoff up to %.0f s",
                  self.device_path, reason, self.retry_max)
        self._report()

    def _recovered(self) -> None:
        down = time.time() - self._status.since
        self._status = ReaderStatus("ok", self.device_path, time.time(),
                                    failures=self._status.failures)
        log.warning("nfc reader %s is back after %.1f s; serving taps", self.device_path, down)
        self._report()

    def _report(self) -> None:
        if self.on_status is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.on_status, self._status)
        except RuntimeError:  # loop closed: the node is shutting down
            pass

    def _tap(self, tag, started: float) -> None:  # type: ignore[no-untyped-def]
        import nfc.tag.tt4

        if not isinstance(tag, nfc.tag.tt4.Type4Tag):
            return
        authenticated = None
        error = ""
        try:
            hs = self.auth_factory()
            verdict = hs.check_select(tag.transceive(hs.select_apdu()))
            if verdict is None:
                verdict = hs.check_answer(tag.transceive(hs.hello_apdu()))
                if verdict.ok:
                    confirm = hs.check_confirm(tag.transceive(hs.confirm_apdu()))
                    if confirm is not None:
                        verdict = confirm
                    else:
                        authenticated = time.monotonic()
        except nfc.tag.tt4.Type4TagCommandError as exc:
            gone = exc.errno in (nfc.tag.TIMEOUT_ERROR, nfc.tag.RECEIVE_ERROR)
            verdict = NodeVerdict("no_answer" if gone else "protocol_error")
            error = str(exc)
        except Exception as exc:  # a bug in a verdict path must not kill the reader
            log.exception("nfc reader: tap failed")
            verdict = NodeVerdict("protocol_error")
            error = f"{type(exc).__name__}: {exc}"
        finished = time.monotonic()
        outcome = TapOutcome(started, finished, verdict.reason,
                             verdict.session if verdict.ok else None,
                             error or verdict.detail, authenticated)
        # Hand the outcome over before DESELECT: the node starts its BLE connect while
        # the card is released, and the tap is on the loop before the handset is done.
        try:
            self.loop.call_soon_threadsafe(self.on_outcome, outcome)
        except RuntimeError:  # loop closed: the node is shutting down
            log.debug("nfc reader: loop closed, outcome dropped")
        self._deselect(tag)
        log.info("tap: %s in %.1f ms%s", outcome.reason, outcome.duration * 1e3,
                 f" ({outcome.error})" if outcome.error else "")
        if self.hold_off > 0:
            self._stop.wait(self.hold_off)

    @staticmethod
    def _deselect(tag) -> None:  # type: ignore[no-untyped-def]
        import nfc.clf

        try:
            tag.clf.exchange(bytearray(DESELECT), 0.05)
        except nfc.clf.CommunicationError as exc:
            log.debug("deselect: %s", exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
