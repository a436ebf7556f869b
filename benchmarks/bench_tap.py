"""Tap latency, unloaded: tap -> authenticated and tap -> first item, against a floor.

Both are timed on the handset (the phone's view, handset_app.sim.TapReport): a tap
starts when the phone starts listening on the display's NFC port (it enters the
field); "authenticated" is when its card session ends confirmed; "first item" is when
the first content item has arrived whole.

Product: the virtual hall with one node process and one handset (VirtualHall,
processes=True, hold_off=0, a real Mosquitto; no hub: it is not on a tap's path).

Floor: the same radio work, in the same process layout and with the same overlap, with
nothing of the product in it (DESIGN.md, Benchmarks):

* a node process (benchmarks.floor_node) running node.nfc_reader.NfcReader with a
  bare exchange: the real SELECT and two APDUs of exactly the real HELLO and CONFIRM
  sizes, answered with exactly the real answer sizes (measured below by one real
  NodeAuth/HandsetCard handshake with the hall's ids), no crypto. Like the node it
  gets the outcome before DESELECT and at once connects through bleak's BleakClient
  on the bumble backend over TCP to the air, does the same GATT work as the product
  before its first content write (MTU, discovery, start_notify tx, read info, HELLO
  and its answer) and
  writes as many frames, of the same sizes, as the product's sealed featured item;
* in this process, as the hall's handsets are: nfcpy card emulation with an echo card
  that answers with the real sizes and carries a random per-tap token and the
  peripheral's address in its HELLO answer, and a bare bumble GATT peripheral with the
  same service layout that starts advertising the token as a 128-bit service UUID at
  20 ms when the card session ends (as BlePeripheral does), so the floor's node scans
  for it and connects at the first sighting as the product's does; it counts received
  bytes: "first item" is when all frames of the message are in.

Floor and product alternate in blocks (ABBA order) so machine drift hits both, with a
random pause between taps (0.05-0.15 s) so a tap starts at a random phase of the
reader's poll cycle for both. p50 and p99 come with their sample count and a bootstrap
95% confidence interval of the p99.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from benchmarks.common import Progress, Result, bootstrap_ci, percentile
from hall.testing.mosquitto import Mosquitto
from hall.virtual import free_nfc_port

if TYPE_CHECKING:
    from hall.air import VirtualAir
    from hall.virtual import VirtualHall
    from tapcast.keys import NodeCredentials
    from tapcast.protocol.nfc import HandsetCard
    from tapcast.radio.bumble import HciAdapter

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: The handset's advertising interval after a tap (BlePeripheral's default).
ADVERTISING_INTERVAL_MS = 20.0
#: When the next tap starts: uniform in this range (seconds) after the last tap's card
#: session ended. The reader restarts its poll cycle (about 40 ms: 20 ms interval plus
#: the 20 ms SENS_RES wait) at that DESELECT, so measuring from there gives floor and
#: product the same distribution of poll phases whatever else their taps do; the range
#: spans several cycles and starts after the product's whole conversation is over.
GAP = (0.15, 0.31)
WARMUP = 3  # taps of each kind before measuring (first connections, lazy imports)
FLOOR_START_TIMEOUT = 30.0
#: A tap (floor or product) that takes longer than this is a failure (both give up on
#: their own within a few seconds; this catches a wait that never ends).
TAP_WATCHDOG = 20.0
MS = 1000.0


# ------------------------------------------------------------------- real sizes


@dataclass(frozen=True)
class Sizes:
    """Sizes the product puts on the radios for one tap, measured from real objects."""

    apdus: list[int]  # SELECT, HELLO, CONFIRM command APDUs
    responses: list[int]  # the card's answers, status words included
    frames: list[int]  # the sealed featured item's frames at MTU-3
    sealed: int  # the sealed featured item (ciphertext + tag)
    item: str  # its id


def real_sizes(hall: VirtualHall) -> Sizes:
    """One real handshake (the hall's authority, node id, zone, handset credentials and
    BLE address) and the real sealed featured item of the node's zone, in process."""
    from node.daemon import item_message
    from node.store import load_library
    from tapcast.keys import make_node_credentials
    from tapcast.protocol import ble
    from tapcast.protocol.nfc import HandsetCard
    from tapcast.radio.bumble import DEFAULT_MTU

    node, handset = hall.nodes[0], hall.handsets[0]
    creds = make_node_credentials(hall.authority, node.node_id, node.zone, time.time() + 3600)
    card = HandsetCard(handset.credentials, handset.peripheral.address,
                       ble_address_type=handset.peripheral.address_type,
                       consent=handset.consent)
    apdus, answers, session_key = handshake_sizes(creds, card)
    items = load_library(hall.library, node.zone)
    featured = sorted(items, key=lambda i: (not i.featured, i.id))[0]  # ContentStore.featured
    sealed = ble.Endpoint(session_key, "node").seal(item_message(featured))
    frames = sealed.frames(DEFAULT_MTU - 3)
    return Sizes(apdus, answers, [len(f) for f in frames], len(sealed.sealed), featured.id)


def handshake_sizes(creds: NodeCredentials, card: HandsetCard) -> tuple[list[int], list[int], bytes]:
    """(command sizes, answer sizes, session key) of one real SELECT/HELLO/CONFIRM
    between a node with ``creds`` and ``card``, run in process."""
    from tapcast.protocol.nfc import NodeAuth

    hs = NodeAuth(creds).begin()
    apdus = [hs.select_apdu(), hs.hello_apdu()]
    answers = [card.process_apdu(apdus[0]), card.process_apdu(apdus[1])]
    verdict = hs.check_answer(answers[1])
    if not verdict.ok or verdict.session is None:
        raise RuntimeError(f"the reference handshake failed: {verdict}")
    apdus.append(hs.confirm_apdu())
    answers.append(card.process_apdu(apdus[2]))
    if card.session is None:
        raise RuntimeError("the reference handshake did not confirm")
    return [len(a) for a in apdus], [len(a) for a in answers], verdict.session.session_key


# ------------------------------------------------------------------------ floor


class EchoCard:
    """The floor's card application: answers each APDU of a tap with the real answer's
    size (status 90 00), the second one carrying the BLE address where a node reads it.
    Duck-types HandsetCard for handset_app.nfc_hce.emulate_card."""

    def __init__(self, responses: list[int], address: str, address_type: int,
                 token: bytes = bytes(16)) -> None:
        self.responses = responses
        self.token = token
        self.address = bytes.fromhex(address.replace(":", "")) + bytes([address_type])
        self.session: str | None = None
        self.last_rejection: str | None = None
        self._step = 0

    def reset(self) -> None:
        self._step = 0

    def process_apdu(self, apdu: bytes) -> bytes:
        step, self._step = self._step, self._step + 1
        size = self.responses[min(step, 2)] - 2
        body = self.token + self.address if step == 1 else b""
        if step == 2:
            self.session = "floor"
        return body + bytes(size - len(body)) + b"\x90\x00"


class FloorHandset:
    """A bare bumble GATT peripheral with the Tapcast layout (rx, tx, info) that counts
    the bytes written to rx; no session, no reassembly, no sealing."""

    def __init__(self, adapter: HciAdapter, expected: int) -> None:
        self.adapter = adapter
        self.expected = expected
        self.received = 0
        self.done = asyncio.Event()
        self.done_at: float | None = None
        self.disconnected = asyncio.Event()
        self._device: Any = None
        self._tx: Any = None
        self._connection: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from bumble import gatt

        from benchmarks.floor_node import INFO_UUID, RX_UUID, SERVICE_UUID, TX_UUID

        device = await self.adapter.device()
        rx = gatt.Characteristic(
            RX_UUID,
            gatt.Characteristic.Properties.WRITE | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            gatt.Characteristic.WRITEABLE, gatt.CharacteristicValue(write=self._on_rx))
        self._tx = gatt.Characteristic(TX_UUID, gatt.Characteristic.Properties.NOTIFY,
                                       gatt.Characteristic.READABLE, b"")
        info = gatt.Characteristic(INFO_UUID, gatt.Characteristic.Properties.READ,
                                   gatt.Characteristic.READABLE, bytes(7))  # Info is 7 bytes
        device.add_service(gatt.Service(SERVICE_UUID, [rx, self._tx, info]))
        device.on("connection", self._on_connection)
        self._device = device

    @property
    def address(self) -> str:
        return self._device.random_address.to_string(with_type_qualifier=False)

    def _on_connection(self, connection: Any) -> None:
        self._connection = connection
        self.disconnected.clear()
        connection.on("disconnection", self._on_disconnection)

    def _on_disconnection(self, _reason: int) -> None:
        self._connection = None
        self.disconnected.set()

    def _on_rx(self, connection: Any, value: bytes) -> None:
        from benchmarks.floor_node import ACK_SIZE, HELLO_MARK

        if value[:1] == bytes([HELLO_MARK]):  # answered at once, as the product's HELLO
            self._notify(connection, bytes(ACK_SIZE))
            return
        self.received += len(value)
        if self.received >= self.expected and self.done_at is None:
            self.done_at = time.monotonic()
            self.done.set()
            self._notify(connection, bytes(ACK_SIZE))

    def _notify(self, connection: Any, value: bytes) -> None:
        task = asyncio.ensure_future(self._device.notify_subscriber(
            connection, self._tx, value, force=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self, timeout: float = 2.0) -> None:
        """Before a tap (outside the timing, as SimulatedHandset.end_session): the last
        link gone and no advertising."""
        if self._connection is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.disconnected.wait(), timeout)
        with contextlib.suppress(TimeoutError):  # a link the air already dropped
            if self._connection is not None:
                await asyncio.wait_for(self._connection.disconnect(), timeout)
        if self._device.is_advertising:
            await asyncio.wait_for(self._device.stop_advertising(), timeout)

    async def tap(self, nfc_device: str, responses: list[int]) -> tuple[float, float, float]:
        """(started, authenticated, first item) in time.monotonic(); RuntimeError when
        the tap fails."""
        import uuid

        from bumble import core, hci

        from handset_app.nfc_hce import emulate_card

        await self.settle()
        self.received, self.done_at = 0, None
        self.done.clear()
        started = time.monotonic()
        token = os.urandom(16)
        card = EchoCard(responses, self.address, 1, token)
        session = await asyncio.to_thread(emulate_card, nfc_device, card, 3.0)
        if session is None:
            raise RuntimeError("floor: no card session")
        authenticated = time.monotonic()
        data = core.AdvertisingData([  # as BlePeripheral: flags and the tap's token
            (core.AdvertisingData.FLAGS, bytes([0x06])),
            (core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
             core.UUID(str(uuid.UUID(bytes=token))).to_bytes(force_128=True))])
        await self._device.start_advertising(
            own_address_type=hci.OwnAddressType.RANDOM, advertising_data=bytes(data),
            advertising_interval_min=ADVERTISING_INTERVAL_MS,
            advertising_interval_max=ADVERTISING_INTERVAL_MS)
        try:
            await asyncio.wait_for(self.done.wait(), 3.0)
        except TimeoutError:
            raise RuntimeError(f"floor: {self.received}/{self.expected} bytes within 3 s") from None
        assert self.done_at is not None
        return started, authenticated, self.done_at

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.adapter.close()


class FloorRig:
    """The floor's node process, its controller on an air of its own, and the handset."""

    def __init__(self, workdir: Path, sizes: Sizes, poll_interval: float,
                 sens_res_timeout: float) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.poll_interval = poll_interval
        self.sens_res_timeout = sens_res_timeout
        self.nfc_device = f"udp:127.0.0.1:{free_nfc_port()}"
        self.air: VirtualAir | None = None
        self.handset: FloorHandset | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.node_lines: list[dict[str, Any]] = []  # the floor node's per-tap report
        self._log: IO[str] | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from hall.air import VirtualAir

        self.air = VirtualAir()
        ble = await self.air.serve("floor-node")
        self.handset = FloorHandset(self.air.local_adapter("floor-handset"), sum(self.sizes.frames))
        await self.handset.start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "floor-node.log"
        self._log = log_path.open("a", encoding="utf-8")
        csv = lambda xs: ",".join(map(str, xs))  # noqa: E731
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.floor_node", "--nfc", self.nfc_device,
            "--ble", ble, "--apdus", csv(self.sizes.apdus),
            "--responses", csv(self.sizes.responses), "--frames", csv(self.sizes.frames),
            "--poll-interval", str(self.poll_interval),
            "--sens-res-timeout", str(self.sens_res_timeout), "--hold-off", "0",
            stdout=asyncio.subprocess.PIPE, stderr=self._log, env=env, cwd=ROOT)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._read(ready))
        try:
            await asyncio.wait_for(ready, FLOOR_START_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"floor node did not start ({exc or 'timeout'}); see {log_path}") from None

    async def _read(self, ready: asyncio.Future[None]) -> None:
        from benchmarks.floor_node import READY_PREFIX

        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(READY_PREFIX):
                if not ready.done():
                    ready.set_result(None)
            elif line.startswith("{"):
                self.node_lines.append(json.loads(line))
        if not ready.done():
            ready.set_exception(RuntimeError(f"exited with code {await self.proc.wait()}"))

    async def tap(self) -> tuple[float, float, float]:
        """(started, authenticated, first item), time.monotonic() on the handset."""
        assert self.handset is not None
        return await self.handset.tap(self.nfc_device, self.sizes.responses)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 5)
        if self.handset is not None:
            await self.handset.close()
        if self.air is not None:
            await self.air.close()
        if self._log is not None:
            self._log.close()


# ---------------------------------------------------------------------- product


class ProductRig:
    """The virtual hall: one node process, one handset, hold_off 0, no hub."""

    def __init__(self, workdir: Path, broker_url: str) -> None:
        from hall.virtual import VirtualHall

        self.hall = VirtualHall(workdir, broker_url, nodes=1, handsets=1, seed=1,
                                hold_off=0.0, processes=True)

    async def start(self) -> None:
        await self.hall.start()

    async def tap(self) -> tuple[float, float, float]:
        """(started, authenticated, first item), time.monotonic() on the handset."""
        report = await self.hall.tap(self.hall.handsets[0], self.hall.nodes[0], extra_requests=0)
        if report.authenticated is None or report.first_item_at is None:
            raise RuntimeError(f"product tap failed: {report.error}")
        return report.started, report.authenticated, report.first_item_at

    async def stop(self) -> None:
        await self.hall.stop()


# ----------------------------------------------------------------- measurement


@dataclass
class Samples:
    auth: list[float] = field(default_factory=list)
    item: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    blocks: list[tuple[int, int]] = field(default_factory=list)  # sample index ranges
    late: int = 0  # taps still busy when the next was due (their phase is not random)

    def block_p50s(self, values: list[float]) -> list[float]:
        return [statistics.median(values[a:b]) * MS for a, b in self.blocks if b > a]


async def _run_block(rig: FloorRig | ProductRig, taps: int, samples: Samples | None,
                     rng: random.Random, progress: Progress | None) -> None:
    start = len(samples.auth) if samples is not None else 0
    next_tap = time.monotonic()
    for _ in range(taps):
        await asyncio.sleep(next_tap - time.monotonic())
        try:
            started, authenticated, first = await _watched(rig.tap())
        except (RuntimeError, TimeoutError) as exc:
            if samples is None:
                raise
            samples.failures.append(str(exc))
            log.warning("%s", exc)
            if len(samples.failures) > max(3, taps // 10):
                raise RuntimeError(f"too many failed taps: {samples.failures[-3:]}") from None
            next_tap = time.monotonic() + GAP[1]
        else:
            if samples is not None:
                samples.auth.append(authenticated - started)
                samples.item.append(first - started)
            next_tap = authenticated + rng.uniform(*GAP)
            if samples is not None and time.monotonic() > next_tap:
                samples.late += 1
        if progress is not None:
            progress.step()
    if samples is not None:
        samples.blocks.append((start, len(samples.auth)))


async def _watched(tap: Any, timeout: float = TAP_WATCHDOG) -> tuple[float, float, float]:
    """A tap that has not ended after ``timeout`` seconds is a failure, not a hung run;
    where every task of this process waits is logged, to say what hung."""
    task = asyncio.ensure_future(tap)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task in done:
        return task.result()
    import io

    out = io.StringIO()
    for other in asyncio.all_tasks():
        other.print_stack(limit=8, file=out)
    log.error("a tap hung for %.0f s; the tasks of this process:\n%s", timeout, out.getvalue())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise RuntimeError(f"the tap did not end within {timeout:.0f} s (stacks logged)")


def _ci(values: list[float], q: int) -> tuple[float, float]:
    lo, hi = bootstrap_ci(values, q)[:2]
    return lo * MS, hi * MS


def _result(name: str, q: int, product: list[float], floor: list[float], target: str) -> Result:
    value, base = percentile(product, q) * MS, percentile(floor, q) * MS
    extra: dict[str, Any] = {"n": len(product), "floor_n": len(floor),
                             "ci95": _ci(product, q), "floor_ci95": _ci(floor, q)}
    return Result(f"{name} p{q}", "ms", value, base, target if q == 99 else "", extra)


async def measure(taps: int, blocks: int, seed: int | None = None) -> list[Result]:
    from node.config import NfcSection

    if taps < 2 * blocks:
        raise ValueError(f"--taps {taps} is too few for {blocks} blocks")
    nfc = NfcSection()
    rng = random.Random(seed)
    per_block = taps // blocks
    floor_s, product_s = Samples(), Samples()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mq") as broker:
        product = ProductRig(Path(tmp) / "hall", broker.url)
        floor: FloorRig | None = None
        try:
            await product.start()
            sizes = real_sizes(product.hall)
            log.info("real sizes: %s", sizes)
            floor = FloorRig(Path(tmp) / "floor", sizes, nfc.poll_interval, nfc.sens_res_timeout)
            await floor.start()
            for rig in (floor, product):
                await _run_block(rig, WARMUP, None, rng, None)
            floor.node_lines.clear()
            progress = Progress("tap: floor/product blocks", 2 * per_block * blocks)
            try:
                for b in range(blocks):
                    order = [(floor, floor_s), (product, product_s)]
                    for rig, samples in (order if b % 2 == 0 else order[::-1]):
                        await _run_block(rig, per_block, samples, rng, progress)
            finally:
                progress.close()
            floor_node = list(floor.node_lines)
        finally:
            if floor is not None:
                await floor.stop()
            await product.stop()
    from tapcast.radio.bumble import DEFAULT_MTU

    odd = {line["frame_size"] for line in floor_node if "frame_size" in line} - {DEFAULT_MTU - 3}
    if odd:  # the product frames at the link's size too: sizes would differ
        raise RuntimeError(f"the floor's link frames at {odd}, the sizes assume {DEFAULT_MTU - 3}")
    for name, s in (("floor", floor_s), ("product", product_s)):
        if len(s.auth) < 2:
            raise RuntimeError(f"{name}: fewer than 2 taps succeeded ({s.failures[:3]})")
    results = []
    for q in (50, 99):
        results.append(_result("tap -> authenticated", q, product_s.auth, floor_s.auth,
                               "p99 < 2x floor"))
    for q in (50, 99):
        results.append(_result("tap -> first item", q, product_s.item, floor_s.item,
                               "p99 < 1.5x floor"))
    results.append(Result("floor breakdown (node side, from sensing) p50", "ms",
                          _median(floor_node, "acked_ms"), None, "",
                          {k: _median(floor_node, k) for k in
                           ("nfc_ms", "handed_over_ms", "found_ms", "connected_ms", "set_up_ms",
                            "written_ms", "acked_ms")}))
    for r in results[:4]:
        r.extra["failures"] = len(product_s.failures)
        r.extra["floor_failures"] = len(floor_s.failures)
        r.extra["blocks"] = blocks
    results[0].extra["block_p50s"] = product_s.block_p50s(product_s.auth)
    results[0].extra["floor_block_p50s"] = floor_s.block_p50s(floor_s.auth)
    results[2].extra["block_p50s"] = product_s.block_p50s(product_s.item)
    results[2].extra["floor_block_p50s"] = floor_s.block_p50s(floor_s.item)
    results[0].extra["sizes"] = sizes.__dict__
    beaten = [r.name for r in results[:4] if beats_floor(r)]
    if beaten:
        log.warning("the product beat its floor on %s: the floor is wrong", ", ".join(beaten))
    return results


def beats_floor(r: Result) -> bool:
    """True when the product is faster than its floor beyond noise: its percentile's
    whole 95% interval lies below the floor's (a p99 of a few dozen taps is nearly the
    maximum, and a median of taps that start at a random phase of a 40 ms poll cycle
    moves by several ms: two such figures cross by chance). Without intervals, any
    value below the floor's counts."""
    if r.ratio is None or r.ratio >= 1.0:
        return False
    if "ci95" in r.extra and "floor_ci95" in r.extra:
        return bool(r.extra["ci95"][1] < r.extra["floor_ci95"][0])
    return True


def _median(lines: list[dict[str, Any]], key: str) -> float:
    values = [line[key] for line in lines if key in line]
    return statistics.median(values) if values else float("nan")


def render(results: list[Result]) -> str:
    """One line per figure: value, floor, ratio, n and the p99's 95% CI."""
    out = []
    for r in results:
        line = f"{r.name:48} {r.value:8.1f} {r.unit}"
        if r.floor:
            line += f"   floor {r.floor:7.1f} {r.unit}   ratio {r.ratio:5.2f}"
        if "n" in r.extra:
            line += f"   n={r.extra['n']}" + (f"/{r.extra['floor_n']}" if "floor_n" in r.extra else "")
        if "ci95" in r.extra:
            lo, hi = r.extra["ci95"]
            line += f"   p99 CI95 {lo:.1f}-{hi:.1f}"
        if "floor_ci95" in r.extra:
            lo, hi = r.extra["floor_ci95"]
            line += f" (floor {lo:.1f}-{hi:.1f})"
        if r.extra.get("failures") or r.extra.get("floor_failures"):
            line += f"   failures {r.extra.get('failures', 0)}/{r.extra.get('floor_failures', 0)}"
        if r.target:
            line += f"   target {r.target}"
        out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=200, help="measured taps of each kind")
    parser.add_argument("--blocks", type=int, default=4,
                        help="alternating floor/product blocks (taps are split evenly)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    return asyncio.run(measure(args.taps, args.blocks, args.seed))


if __name__ == "__main__":
    from benchmarks.common import run_and_report

    run_and_report(main, render, raw=True)
