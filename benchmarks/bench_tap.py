"""Tap latency: tap -> authenticated and tap -> first content item, over 200 taps.

"Tap" is the moment the handset starts listening on the node's NFC port (the phone
enters the field). Floors, measured in the same run on the same links:

* NFC floor: the same nfcpy udp reader loop (poll interval, SENS_RES cap, ISO-DEP) and
  the same card emulation, exchanging SELECT plus two bare APDUs (as many round trips as
  the authentication) with no crypto: what the simulated RF link itself costs.
* BLE floor: bare bumble on the same virtual radio: a central connects to a peripheral
  advertising at the same 20 ms interval, discovers one characteristic, writes once.

tap -> first item is compared with NFC floor + BLE floor (per percentile).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from benchmarks.common import Progress, Result, percentile
from hall.testing.mosquitto import Mosquitto, free_port

log = logging.getLogger(__name__)

SELECT = bytes.fromhex("00A4040008F054415043535401" "00")
BARE_APDU = bytes.fromhex("80100000" "00")


class _EchoCard:
    """Answers every APDU with 90 00: the card side of the floor, no protocol at all."""

    session = None
    last_rejection = None

    def process_apdu(self, apdu: bytes) -> bytes:
        return b"\x90\x00"

    def reset(self) -> None:
        pass


class _BareExchange:
    """Duck-types NodeHandshake for NfcReader: SELECT + two APDUs, no checks."""

    def select_apdu(self) -> bytes:
        return SELECT

    def check_select(self, response: bytes) -> None:
        return None

    def hello_apdu(self) -> bytes:
        return BARE_APDU

    def check_answer(self, response: bytes, now: float | None = None):  # noqa: ANN201
        from tapcast.protocol.nfc import NodeVerdict
        return NodeVerdict("ok")

    def confirm_apdu(self) -> bytes:
        return BARE_APDU

    def check_confirm(self, response: bytes) -> None:
        return None


async def nfc_floor(taps: int, poll_interval: float) -> list[float]:
    from handset_app.nfc_hce import emulate_card
    from node.nfc_reader import NfcReader

    loop = asyncio.get_running_loop()
    outcomes: asyncio.Queue = asyncio.Queue()
    device = f"udp:127.0.0.1:{free_port()}"
    reader = NfcReader(device, poll_interval, _BareExchange, loop, outcomes.put_nowait,
                       hold_off=0.0)
    reader.start()
    samples = []
    progress = Progress("floor: bare nfcpy exchange", taps)
    try:
        for _ in range(taps):
            started = time.monotonic()
            await asyncio.to_thread(emulate_card, device, _EchoCard(), 2.0)
            outcome = await asyncio.wait_for(outcomes.get(), 5)
            if outcome.authenticated is None:
                raise RuntimeError(f"bare exchange failed: {outcome.reason} {outcome.error}")
            samples.append(outcome.authenticated - started)
            progress.step()
    finally:
        progress.close()
        reader.stop()
    return samples


async def ble_floor(connects: int) -> list[float]:
    from bumble import gatt
    from bumble.device import Peer

    from hall.air import VirtualRadio

    radio = VirtualRadio()
    peripheral = await radio.add_device("floor-peripheral")
    uuid = "7a9ca500-ffff-4c4e-8a5e-7a9ca57b1e00"
    written = asyncio.Event()
    char = gatt.Characteristic(uuid, gatt.Characteristic.Properties.WRITE,
                               gatt.Characteristic.WRITEABLE,
                               gatt.CharacteristicValue(write=lambda conn, value: written.set()))
    service_uuid = "7a9ca500-fffe-4c4e-8a5e-7a9ca57b1e00"
    peripheral.add_service(gatt.Service(service_uuid, [char]))
    peripheral.on("disconnection", lambda *_: None)
    samples = []
    progress = Progress("floor: bare bumble connect", connects)
    try:
        for _ in range(connects):
            central = await radio.add_device("floor-central")
            written.clear()
            started = time.monotonic()
            await peripheral.start_advertising(advertising_interval_min=20,
                                               advertising_interval_max=20)
            connection = await asyncio.wait_for(central.connect(peripheral.random_address,
                                                                timeout=None), 5)
            peer = Peer(connection)
            [service] = await peer.discover_service(service_uuid)
            [found] = await peer.discover_characteristics(uuids=[uuid], service=service)
            await found.write_value(b"x", with_response=True)
            await asyncio.wait_for(written.wait(), 5)
            samples.append(time.monotonic() - started)
            await connection.disconnect()
            if peripheral.is_advertising:
                await peripheral.stop_advertising()
            await radio.remove_device(central)
            progress.step()
    finally:
        progress.close()
        await radio.close()
    return samples


async def tapcast_taps(taps: int, workdir: Path, broker_url: str) -> tuple[list[float], list[float]]:
    from hall.virtual import VirtualHall

    records: asyncio.Queue = asyncio.Queue()
    hall = VirtualHall(workdir, broker_url, nodes=1, handsets=1, seed=1, hold_off=0.0,
                       on_tap=records.put_nowait)
    await hall.start()
    auth, first_item = [], []
    progress = Progress("tapcast taps", taps)
    try:
        handset, node = hall.handsets[0], hall.nodes[0]
        for _ in range(taps):
            report = await hall.tap(handset, node, extra_requests=0)
            if not report.ok:
                raise RuntimeError(f"tap failed: {report.error}")
            # Authenticated as the floor measures it: when the node's reader has the
            # verdict (the handset learns it a DESELECT and a thread hop later).
            record = await asyncio.wait_for(records.get(), 5)
            auth.append(record.outcome.authenticated - report.started)
            first_item.append(report.first_item_at - report.started)
            progress.step()
    finally:
        progress.close()
        await hall.stop()
    return auth, first_item


async def measure(taps: int) -> list[Result]:
    from node.config import NfcSection

    poll = NfcSection().poll_interval
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mq") as broker:
        nfc = await nfc_floor(taps, poll)
        ble = await ble_floor(taps)
        auth, item = await tapcast_taps(taps, Path(tmp) / "hall", broker.url)
    ms = 1000.0
    results = []
    for q in (50, 99):
        nfc_q, ble_q = percentile(nfc, q) * ms, percentile(ble, q) * ms
        results.append(Result(f"tap -> authenticated p{q}", "ms", percentile(auth, q) * ms,
                              nfc_q, "p99 < 100 ms" if q == 99 else "",
                              {"floor": "bare nfcpy udp SELECT + 2 APDUs"}))
        results.append(Result(f"tap -> first content item p{q}", "ms", percentile(item, q) * ms,
                              nfc_q + ble_q, "p99 < 300 ms" if q == 99 else "",
                              {"floor": "bare nfcpy exchange + bare bumble connect+write"}))
    results.append(Result("floor: bare bumble connect + write p50", "ms",
                          percentile(ble, 50) * ms))
    results.append(Result("nfc poll interval (config default)", "ms", poll * ms))
    return results


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=200)
    args = parser.parse_args(argv)
    return asyncio.run(measure(args.taps))


if __name__ == "__main__":
    from benchmarks.common import table
    print(table(main()))
