"""The tap floor's node: a Tapcast node's radio work with nothing of Tapcast in it.

Run by benchmarks.bench_tap as its own process, as ``tapcast node run`` is in the
virtual hall, so the floor has the product's process layout (the node on the far end
of a TCP HCI transport from the air, its NFC reader in a thread of its own process):

    python -m benchmarks.floor_node --nfc udp:127.0.0.1:P \\
        --ble bumble:tcp-client:127.0.0.1:Q --apdus 14,252,37 --responses 3,190,2 \\
        --frames 244,100

Per tap it does what the node does, with the same overlap and without the product:

* NFC: node.nfc_reader.NfcReader (same poll loop, interval, SENS_RES cap, ISO-DEP)
  with a bare exchange: the real SELECT, then two APDUs of exactly the HELLO and
  CONFIRM sizes; the card's answers have the real sizes and carry, in the clear, a
  random per-tap token (16 bytes) and the handset's BLE address, where the product
  derives its token from the session key. No signatures, no key schedule, no outbox,
  no uplink.
* The reader hands the outcome over before DESELECT (NfcReader does that for the
  product too), and this process at once scans for the token as a 128-bit service UUID
  and connects at the first sighting, with bleak's ``BleakScanner`` and ``BleakClient``
  on the bumble backend, as node.ble_push does: scan, connect, MTU request and discovery
  (inside the backend's connect), ``start_notify`` on tx, read info, a HELLO-sized write
  answered by an ACK-sized notification (the product's key proof both ways); then writes the frames of
  the first message (write without response) with the sizes the product's sealed
  featured item has at this link's MTU. It waits for the handset's 8-byte notification
  (the product's DONE ack has that size) and disconnects.

One JSON line per tap goes to stdout (milliseconds from the moment the reader sensed
the card), so the benchmark can say where the floor's time goes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import struct
import sys
import time
from typing import Any

from node.nfc_reader import NfcReader, TapOutcome
from tapcast.protocol.nfc import NodeSession, NodeVerdict

log = logging.getLogger(__name__)

#: The line this process prints once it polls and its BLE adapter is powered on.
READY_PREFIX = "floor-node ready"
#: GATT layout of a Tapcast handset (the same handles and sizes, so discovery is the
#: same work); the floor sends nothing Tapcast would understand.
SERVICE_UUID = "7a9ca500-0001-4c4e-8a5e-7a9ca57b1e00"
RX_UUID = "7a9ca500-0002-4c4e-8a5e-7a9ca57b1e00"
TX_UUID = "7a9ca500-0003-4c4e-8a5e-7a9ca57b1e00"
INFO_UUID = "7a9ca500-0004-4c4e-8a5e-7a9ca57b1e00"
#: Where the echo card puts the tap's token (16 bytes), then the handset's address (6
#: bytes most significant first, then the address type) in its answer.
TOKEN_OFFSET = 0
ADDRESS_OFFSET = 16

def _control_sizes() -> tuple[int, int]:
    """(HELLO, ACK) frame sizes on the air, from the product's own frame layout."""
    from tapcast.protocol.ble import HELLO, HELLO_ACK, Endpoint

    key = bytes(32)
    return len(Endpoint(key, "node").wrap(HELLO)), len(Endpoint(key, "handset").wrap(HELLO_ACK))


#: The product's node writes HELLO and waits for the handset's answer before content;
#: the handset acks the message when it is whole. The floor sends frames of these sizes
#: (a HELLO-sized frame starts with 0x03, content frames with 0x01).
HELLO_SIZE, ACK_SIZE = _control_sizes()
HELLO_MARK, DATA_MARK = 0x03, 0x01


def bare_apdus(sizes: list[int]) -> list[bytes]:
    """SELECT (the real bytes), then HELLO- and CONFIRM-shaped APDUs of the given
    total sizes: headers as the product's (extended Lc/Le for HELLO), zero data."""
    select, hello, confirm = sizes
    real_select = bytes.fromhex("00A4040008F05441504353540100")
    if select != len(real_select):
        raise ValueError(f"SELECT is {len(real_select)} bytes, not {select}")
    hello_data = hello - 4 - 3 - 2  # CLA INS P1 P2 | 00 HH LL | data | 00 00
    confirm_data = confirm - 4 - 1  # CLA INS P1 P2 | Lc | data
    if hello_data < 1 or not 1 <= confirm_data <= 255:
        raise ValueError(f"APDU sizes {sizes} are too small")
    return [real_select,
            b"\x80\x10\x00\x00\x00" + struct.pack(">H", hello_data) + bytes(hello_data) + b"\x00\x00",
            b"\x80\x12\x00\x00" + bytes([confirm_data]) + bytes(confirm_data)]


class BareExchange:
    """Duck-types tapcast.protocol.nfc.NodeHandshake for NfcReader: sends the bare
    APDUs, checks only the answer sizes, and reads the address from the answer."""

    def __init__(self, apdus: list[bytes], responses: list[int]) -> None:
        self.apdus = apdus
        self.responses = responses
        self.session: NodeSession | None = None

    def _size(self, step: int, response: bytes) -> NodeVerdict | None:
        if response is None or len(response) != self.responses[step]:
            got = None if response is None else len(response)
            return NodeVerdict("protocol_error",
                               detail=f"answer {step} is {got} bytes, expected {self.responses[step]}")
        return None

    def select_apdu(self) -> bytes:
        return self.apdus[0]

    def check_select(self, response: bytes) -> NodeVerdict | None:
        return self._size(0, response)

    def hello_apdu(self) -> bytes:
        return self.apdus[1]

    def check_answer(self, response: bytes, now: float | None = None) -> NodeVerdict:
        bad = self._size(1, response)
        if bad is not None:
            return bad
        raw = bytes(response[ADDRESS_OFFSET:ADDRESS_OFFSET + 7])
        token = bytes(response[TOKEN_OFFSET:TOKEN_OFFSET + 16])  # carried as the session key
        self.session = NodeSession(
            handset_id="floor", ble_address=":".join(f"{b:02X}" for b in raw[:6]),
            ble_address_type=raw[6], consent=0, session_key=token, node_id="floor", started=0.0)
        return NodeVerdict("ok", self.session)

    def confirm_apdu(self) -> bytes:
        return self.apdus[2]

    def check_confirm(self, response: bytes) -> NodeVerdict | None:
        return self._size(2, response)


class FloorNode:
    """NfcReader + bleak on the bumble backend, wired as node.daemon wires them."""

    def __init__(self, args: argparse.Namespace) -> None:
        from tapcast.radio.bumble import HciAdapter

        transport = args.ble.removeprefix("bumble:")
        self.adapter = HciAdapter(transport, name="floor-node")
        self.args = args
        self.apdus = bare_apdus(args.apdus)
        self.frames = [bytes([DATA_MARK]) + bytes(size - 1) for size in args.frames]
        self.reader: NfcReader | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.adapter.device()  # powered on before the first tap, as BlePush.start
        loop = asyncio.get_running_loop()
        self.reader = NfcReader(self.args.nfc, self.args.poll_interval,
                                lambda: BareExchange(self.apdus, self.args.responses), loop,
                                self._on_outcome, sens_res_timeout=self.args.sens_res_timeout,
                                hold_off=self.args.hold_off)
        await asyncio.to_thread(self.reader.start)

    async def stop(self) -> None:
        if self.reader is not None:
            await asyncio.to_thread(self.reader.stop)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.adapter.close()

    def _on_outcome(self, outcome: TapOutcome) -> None:
        """On the loop, straight from the reader thread (before its DESELECT)."""
        task = asyncio.get_running_loop().create_task(self._push(outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, outcome: TapOutcome) -> None:
        import uuid

        from bleak import BleakClient, BleakScanner
        from tapcast.radio.bumble import BumbleBleakClient, BumbleBleakScanner

        t0 = outcome.started
        line: dict[str, Any] = {"reason": outcome.reason,
                                "nfc_ms": round(outcome.duration * 1e3, 2)}
        if outcome.session is None:
            line["error"] = outcome.error
            _emit(line)
            return
        session = outcome.session
        line["handed_over_ms"] = round((time.monotonic() - t0) * 1e3, 2)
        token = str(uuid.UUID(bytes=session.session_key))
        device = await BleakScanner.find_device_by_filter(
            lambda _d, adv: token in adv.service_uuids, timeout=self.args.connect_timeout,
            service_uuids=[token], backend=BumbleBleakScanner, hci_adapter=self.adapter)
        if device is None:
            line["error"] = f"no device advertised token {token}"
            _emit(line)
            return
        line["found_ms"] = round((time.monotonic() - t0) * 1e3, 2)
        client = BleakClient(device, timeout=self.args.connect_timeout,
                             backend=BumbleBleakClient, hci_adapter=self.adapter)
        answers: asyncio.Queue[bytes] = asyncio.Queue()
        try:
            await client.connect()  # connect, MTU request, discovery
            line["connected_ms"] = round((time.monotonic() - t0) * 1e3, 2)
            await client.start_notify(TX_UUID, lambda _char, data: answers.put_nowait(bytes(data)))
            await client.read_gatt_char(INFO_UUID)
            await client.write_gatt_char(RX_UUID, bytes([HELLO_MARK]) + bytes(HELLO_SIZE - 1),
                                         response=False)  # as the product's HELLO
            await asyncio.wait_for(answers.get(), 2.0)  # its answer
            char = client.services.get_characteristic(RX_UUID)
            frame_size = char.max_write_without_response_size
            line["frame_size"] = frame_size
            if max(len(f) for f in self.frames) > frame_size:
                raise RuntimeError(f"link frame size {frame_size} is below the product's "
                                   f"frames {[len(f) for f in self.frames]}")
            line["set_up_ms"] = round((time.monotonic() - t0) * 1e3, 2)
            for frame in self.frames:
                await client.write_gatt_char(char, frame, response=False)
            line["written_ms"] = round((time.monotonic() - t0) * 1e3, 2)
            await asyncio.wait_for(answers.get(), 2.0)
            line["acked_ms"] = round((time.monotonic() - t0) * 1e3, 2)
        except Exception as exc:  # report and serve the next tap
            line["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await client.disconnect()
        _emit(line)


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from node.config import NfcSection

    nfc = NfcSection()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfc", required=True, help="nfcpy device, udp:HOST:PORT")
    parser.add_argument("--ble", required=True, help="bumble:tcp-client:HOST:PORT (an air controller)")
    parser.add_argument("--apdus", type=_sizes, required=True,
                        help="sizes of SELECT, HELLO and CONFIRM APDUs, comma separated")
    parser.add_argument("--responses", type=_sizes, required=True,
                        help="sizes of the card's three answers, status words included")
    parser.add_argument("--frames", type=_sizes, required=True,
                        help="sizes of the first message's frames")
    parser.add_argument("--poll-interval", type=float, default=nfc.poll_interval)
    parser.add_argument("--sens-res-timeout", type=float, default=nfc.sens_res_timeout)
    parser.add_argument("--hold-off", type=float, default=0.0)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if len(args.apdus) != 3 or len(args.responses) != 3 or not args.frames:
        parser.error("--apdus and --responses take three sizes, --frames at least one")
    return args


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = FloorNode(args)
    try:
        await node.start()
        print(f"{READY_PREFIX}: NFC {args.nfc}, BLE {args.ble}", flush=True)
        await stop.wait()
    finally:
        await node.stop()


def main(argv: list[str] | None = None) -> None:
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)  # nfcpy sets its logger to INFO on import
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        asyncio.run(run(parse_args(argv)))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
