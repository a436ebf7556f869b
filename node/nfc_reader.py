"""The node's NFC reader: poll 106A, authenticate the handset, report each tap.

nfcpy is blocking, so it runs in its own thread; every outcome is handed to the asyncio
loop with ``loop.call_soon_threadsafe``. The same code opens ``usb:...``/``tty:...``
readers on a Pi and ``udp:HOST:PORT`` in the virtual hall; the only udp-specific code
is ``cap_udp_sens_res_wait`` (marked below).

Per tap: sense 106A -> RATS (nfcpy's Type4ATag) -> SELECT AID -> HELLO -> CONFIRM ->
S(DESELECT). APDUs go through ``Type4Tag.transceive`` (not send_apdu, which refuses
extended-length APDUs on Type 4A; see tapcast.protocol.nfc).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tapcast.protocol.nfc import NodeHandshake, NodeSession, NodeVerdict

log = logging.getLogger(__name__)

DESELECT = b"\xC2"


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
    """

    def __init__(self, device_path: str, poll_interval: float,
                 auth_factory: Callable[[], NodeHandshake],
                 loop: asyncio.AbstractEventLoop,
                 on_outcome: Callable[[TapOutcome], None], *,
                 sens_res_timeout: float = 0.02, hold_off: float = 0.5) -> None:
        self.device_path = device_path
        self.poll_interval = poll_interval
        self.auth_factory = auth_factory
        self.loop = loop
        self.on_outcome = on_outcome
        self.sens_res_timeout = sens_res_timeout
        self.hold_off = hold_off
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clf = None

    def start(self) -> None:
        """Open the device (OSError if it cannot be opened) and start polling."""
        import nfc

        if self._thread is not None:
            raise RuntimeError("NfcReader already started")
        clf = nfc.ContactlessFrontend()
        if not clf.open(self.device_path):
            raise OSError(f"cannot open NFC reader {self.device_path!r}")
        cap_udp_sens_res_wait(clf.device, self.sens_res_timeout)
        self._clf = clf
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nfc-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and close the device. Prompt: the poll loop waits on an event,
        and a tap in progress ends within nfcpy's frame timeouts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("nfc reader thread did not stop within %.1f s", timeout)
            self._thread = None
        if self._clf is not None:
            self._clf.close()
            self._clf = None

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
            return bool(target.sel_res and target.sel_res[0] & 0x20)

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
        while not self._stop.is_set():
            try:
                self._clf.connect(rdwr=options, terminate=self._terminate)
            except Exception:  # never let one bad tap kill the reader
                log.exception("nfc reader: poll failed")
                self._stop.wait(max(self.poll_interval, 0.1))

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
