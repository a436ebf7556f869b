"""A failed NFC reader is one report, is retried with capped exponential backoff, and
serves taps again by itself (node.nfc_reader). Real nfcpy udp readers and cards; only
the failure is injected: nfcpy's udp driver cannot be unplugged, so ``Unpluggable``
wraps the real opener (a missing device fails to open, as nfcpy does for a USB reader
that is gone) and makes a lost device raise from inside clf.connect."""
from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hall.virtual import free_nfc_port
from handset_app.nfc_hce import emulate_card
from node.nfc_reader import NfcReader, ReaderStatus, TapOutcome, open_frontend
from tapcast.keys import HubAuthority, make_handset_credentials, make_node_credentials
from tapcast.protocol.nfc import HandsetCard, NodeAuth

pytestmark = pytest.mark.timeout(30)

RETRY_MIN, RETRY_MAX = 0.02, 0.16


class Unpluggable:
    """The real nfcpy opener, with a plug: unplugged, opening fails (OSError) and the
    open device fails its next poll with ``error`` (IOError: what a USB driver raises
    when the reader is pulled; anything else: escapes clf.connect)."""

    def __init__(self) -> None:
        self.plugged = True
        self.error: BaseException = OSError(errno.ENODEV, "No such device")
        self.attempts: list[float] = []  # monotonic times of opens while unplugged
        self.enough = threading.Event()
        self.want = 0
        self.clf: Any = None

    def __call__(self, path: str) -> Any:
        if not self.plugged:
            self.attempts.append(time.monotonic())
            if len(self.attempts) >= self.want:
                self.enough.set()
            raise OSError(f"cannot open NFC reader {path!r}")
        self.clf = open_frontend(path)
        return self.clf

    def unplug(self, attempts: int) -> None:
        """Pull the reader; ``enough`` is set after ``attempts`` failed reopens."""
        self.plugged, self.want = False, attempts
        device, error = self.clf.device, self.error

        def gone(*args: object, **kwargs: object) -> None:
            raise error

        device.sense_tta = gone


class Node:
    def __init__(self, path: str, hub: HubAuthority, plug: Unpluggable) -> None:
        loop = asyncio.get_running_loop()
        self.path = path
        self.outcomes: asyncio.Queue[TapOutcome] = asyncio.Queue()
        self.statuses: asyncio.Queue[ReaderStatus] = asyncio.Queue()
        auth = NodeAuth(make_node_credentials(hub, "node-1", "hall-a", time.time() + 3600))
        self.reader = NfcReader(path, 0.02, auth.begin, loop, self.outcomes.put_nowait,
                                hold_off=0.0, on_status=self.statuses.put_nowait,
                                retry_min=RETRY_MIN, retry_max=RETRY_MAX, open_device=plug)

    async def tap(self, card: HandsetCard) -> TapOutcome:
        loop = asyncio.get_running_loop()
        handset = loop.run_in_executor(None, emulate_card, self.path, card, 5.0)
        outcome = await asyncio.wait_for(self.outcomes.get(), 5)
        await asyncio.wait_for(handset, 5)
        return outcome


@pytest.fixture
def hub() -> HubAuthority:
    return HubAuthority.generate()


@pytest.fixture
def plug() -> Unpluggable:
    return Unpluggable()


@pytest.fixture
async def node(hub: HubAuthority, plug: Unpluggable) -> AsyncIterator[Node]:
    node = Node(f"udp:127.0.0.1:{free_nfc_port()}", hub, plug)
    node.reader.start()
    yield node
    node.reader.stop()


def card(hub: HubAuthority) -> HandsetCard:
    return HandsetCard(make_handset_credentials(hub, "h-1", time.time() + 3600),
                       "C0:11:22:33:44:55")


async def wait_attempts(plug: Unpluggable) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, plug.enough.wait, 10)


async def test_a_reader_lost_after_start_is_reported_once_and_serves_again_when_back(
        node: Node, plug: Unpluggable, hub: HubAuthority) -> None:
    assert (await node.tap(card(hub))).ok
    plug.unplug(attempts=6)
    await wait_attempts(plug)
    failed = node.statuses.get_nowait()
    assert (failed.state, failed.device, failed.failures) == ("failed", node.path, 1)
    assert "stopped answering" in failed.reason
    assert node.statuses.empty()  # six failed reopens, still one report
    assert node.reader.status.state == "failed"
    plug.plugged = True
    back = await asyncio.wait_for(node.statuses.get(), 5)
    assert back.state == "ok"
    assert (await node.tap(card(hub))).ok


async def test_reopen_attempts_back_off_exponentially_up_to_the_cap(
        node: Node, plug: Unpluggable) -> None:
    plug.unplug(attempts=7)
    await wait_attempts(plug)
    gaps = [b - a for a, b in zip(plug.attempts, plug.attempts[1:])]
    expected = [min(RETRY_MIN * 2 ** (i + 1), RETRY_MAX) for i in range(len(gaps))]
    assert all(gap >= want * 0.9 for gap, want in zip(gaps, expected)), (gaps, expected)
    assert max(gaps) < RETRY_MAX * 3, gaps  # capped (with room for a loaded machine)
    assert node.reader.status.retry_in == RETRY_MAX


async def test_an_exception_out_of_connect_is_a_failure_that_recovers(
        node: Node, plug: Unpluggable, hub: HubAuthority) -> None:
    plug.error = RuntimeError("driver fell over")
    plug.unplug(attempts=2)
    await wait_attempts(plug)
    plug.plugged = True
    failed = await asyncio.wait_for(node.statuses.get(), 5)
    assert (failed.state, failed.reason) == ("failed", "RuntimeError: driver fell over")
    assert (await asyncio.wait_for(node.statuses.get(), 5)).state == "ok"
    assert (await node.tap(card(hub))).ok


async def test_a_failed_reader_logs_one_line_per_change_and_no_traceback(
        node: Node, plug: Unpluggable, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node.nfc_reader")
    plug.unplug(attempts=5)
    await wait_attempts(plug)
    plug.plugged = True
    await asyncio.wait_for(node.statuses.get(), 5)
    await asyncio.wait_for(node.statuses.get(), 5)
    ours = [r for r in caplog.records if r.name == "node.nfc_reader"
            and r.levelno >= logging.WARNING]
    assert [r.levelname for r in ours] == ["ERROR", "WARNING"], [r.message for r in ours]
    assert "failed" in ours[0].getMessage() and "is back" in ours[1].getMessage()
    assert not any(r.exc_info for r in caplog.records)


async def test_stop_is_prompt_while_the_reader_waits_to_retry(
        hub: HubAuthority, plug: Unpluggable) -> None:
    node = Node(f"udp:127.0.0.1:{free_nfc_port()}", hub, plug)
    node.reader.retry_min = node.reader.retry_max = 30.0
    node.reader.start()
    plug.unplug(attempts=1)
    assert (await asyncio.wait_for(node.statuses.get(), 5)).state == "failed"
    t0 = time.monotonic()
    node.reader.stop()
    assert time.monotonic() - t0 < 1.0
    assert node.reader.status.state == "stopped"

