"""The tap floor does the product's radio work: the same APDU and answer sizes, the
handset's address handed over by a real nfcpy exchange, and a check that refuses a
floor the product beats beyond noise."""
from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.bench_tap import EchoCard, beats_floor, handshake_sizes
from benchmarks.common import Result
from benchmarks.floor_node import BareExchange, bare_apdus
from hall.virtual import free_nfc_port
from handset_app.nfc_hce import emulate_card
from node.nfc_reader import NfcReader, TapOutcome
from tapcast.keys import HubAuthority, make_handset_credentials, make_node_credentials
from tapcast.protocol.nfc import HandsetCard

ADDRESS = "C0:11:22:33:44:55"


@pytest.fixture(scope="module")
def real() -> tuple[list[int], list[int]]:
    hub = HubAuthority.generate()
    creds = make_node_credentials(hub, "node-01", "lobby", time.time() + 3600)
    card = HandsetCard(make_handset_credentials(hub, "handset-01", time.time() + 3600), ADDRESS)
    apdus, answers, _ = handshake_sizes(creds, card)
    return apdus, answers


def test_floor_commands_have_the_real_sizes(real: tuple[list[int], list[int]]) -> None:
    apdus, _ = real
    assert [len(a) for a in bare_apdus(apdus)] == apdus


def test_floor_select_is_the_real_select(real: tuple[list[int], list[int]]) -> None:
    from tapcast.protocol.nfc import NodeAuth

    hub = HubAuthority.generate()
    select = NodeAuth(make_node_credentials(hub, "n", "z", time.time() + 60)).begin().select_apdu()
    assert bare_apdus(real[0])[0] == select


def test_echo_card_answers_have_the_real_sizes(real: tuple[list[int], list[int]]) -> None:
    apdus, answers = real
    card = EchoCard(answers, ADDRESS, 1)
    got = [card.process_apdu(a) for a in bare_apdus(apdus)]
    assert [len(a) for a in got] == answers
    assert all(a.endswith(b"\x90\x00") for a in got)


def test_bare_apdus_refuse_sizes_they_cannot_build() -> None:
    with pytest.raises(ValueError):
        bare_apdus([13, 200, 30])  # SELECT is 14 bytes
    with pytest.raises(ValueError):
        bare_apdus([14, 200, 400])  # CONFIRM has a short Lc


@pytest.mark.timeout(30)
async def test_floor_reader_gets_the_taps_token_and_the_handset_address_over_nfcpy(
        real: tuple[list[int], list[int]]) -> None:
    apdus, answers = real
    path = f"udp:127.0.0.1:{free_nfc_port()}"
    outcomes: asyncio.Queue[TapOutcome] = asyncio.Queue()
    reader = NfcReader(path, 0.02, lambda: BareExchange(bare_apdus(apdus), answers),
                       asyncio.get_running_loop(), outcomes.put_nowait, hold_off=0.0)
    await asyncio.to_thread(reader.start)
    try:
        card = EchoCard(answers, ADDRESS, 1, token=bytes(range(16)))
        handset = asyncio.get_running_loop().run_in_executor(None, emulate_card, path, card, 5.0)
        outcome = await asyncio.wait_for(outcomes.get(), 5)
        assert await asyncio.wait_for(handset, 5) is not None
    finally:
        await asyncio.to_thread(reader.stop)
    assert outcome.reason == "ok", outcome.error
    assert outcome.session is not None
    assert (outcome.session.ble_address, outcome.session.ble_address_type) == (ADDRESS, 1)
    assert outcome.session.session_key == bytes(range(16))  # the floor's token


def _row(value: float, floor: float, ci: tuple[float, float] | None = None,
         floor_ci: tuple[float, float] | None = None) -> Result:
    extra = {} if ci is None else {"ci95": ci, "floor_ci95": floor_ci}
    return Result("x", "ms", value, floor, "", extra)


def test_a_median_below_the_floor_beats_it() -> None:
    assert beats_floor(_row(20.0, 22.0))


def test_a_slower_product_does_not_beat_its_floor() -> None:
    assert not beats_floor(_row(30.0, 22.0, (28.0, 33.0), (20.0, 24.0)))


def test_a_p99_below_the_floor_within_noise_does_not_beat_it() -> None:
    assert not beats_floor(_row(38.0, 39.6, (36.3, 38.2), (37.9, 39.7)))


def test_a_p99_whose_interval_is_below_the_floor_beats_it() -> None:
    assert beats_floor(_row(30.0, 40.0, (29.0, 31.0), (38.0, 42.0)))
