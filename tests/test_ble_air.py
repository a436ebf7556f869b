"""The virtual BLE air across processes: controllers served over TCP behave like real
ones when a connect is cancelled, a host resets or dies, or a second host knocks."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator

import pytest
from bleak.exc import BleakError
from bumble import hci

from hall.air import VirtualAir
from handset_app.ble_peripheral import BlePeripheral
from node.ble_push import PushSession, open_session
from tapcast.protocol.ble import Request
from tapcast.radio.bumble import RANDOM, BumbleBleakClient, HciAdapter

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def handset(air: VirtualAir) -> AsyncIterator[BlePeripheral]:
    handset = BlePeripheral(air.local_adapter("handset"), window=10.0)
    await handset.start()
    yield handset
    await handset.close()


def tcp_adapter(spec: str) -> HciAdapter:
    return HciAdapter(spec.removeprefix("bumble:"), name="node")


async def test_a_node_in_another_transport_pushes_to_a_handset_over_tcp(
        air: VirtualAir, handset: BlePeripheral) -> None:
    node = tcp_adapter(await air.serve("node-1"))
    key = os.urandom(32)
    await handset.open_window(key)
    session = await open_session(handset.address, handset.address_type, key,
                                 backend=BumbleBleakClient, backend_kwargs={"hci_adapter": node},
                                 connect_timeout=2.0)
    assert session.client.mtu_size == 247
    await session.send(Request(item_id="over-tcp"))
    assert await handset.messages.get() == Request(item_id="over-tcp")
    await session.close()
    await node.close()


async def test_connect_to_an_absent_peer_times_out_and_the_next_connect_works(
        air: VirtualAir, handset: BlePeripheral) -> None:
    node = tcp_adapter(await air.serve("node-1"))
    key = os.urandom(32)
    with pytest.raises(TimeoutError, match="is it advertising"):
        await open_session("C0:DE:AD:00:00:01", RANDOM, key, backend=BumbleBleakClient,
                           backend_kwargs={"hci_adapter": node}, connect_timeout=0.2)
    await handset.open_window(key)  # the same host connects at once afterwards
    session = await open_session(handset.address, handset.address_type, key,
                                 backend=BumbleBleakClient, backend_kwargs={"hci_adapter": node},
                                 connect_timeout=2.0)
    await session.close()
    await node.close()


NODE_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from bleak import BleakClient
    from tapcast.radio.bumble import BumbleBleakClient, HciAdapter

    async def main():
        adapter = HciAdapter(sys.argv[1], name="doomed-node")
        client = BleakClient(sys.argv[2], backend=BumbleBleakClient, hci_adapter=adapter,
                             address_type=1, timeout=5.0)
        await client.connect()
        print("connected", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_a_host_killed_with_sigkill_drops_its_link_and_the_handset_is_told(
        air: VirtualAir, handset: BlePeripheral) -> None:
    spec = (await air.serve("node-1")).removeprefix("bumble:")
    await handset.open_window(os.urandom(32))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NODE_SCRIPT, spec, handset.address,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"connected"
    assert handset.link_count == 1
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    while handset.link_count:  # the air tells the peer, as a supervision timeout would
        await asyncio.sleep(0.01)
    while air.attached("node-1"):
        await asyncio.sleep(0.01)
    # the controller is free again: a restarted node attaches and connects
    node = tcp_adapter(spec)
    key = os.urandom(32)
    await handset.open_window(key)
    session = await open_session(handset.address, handset.address_type, key,
                                 backend=BumbleBleakClient, backend_kwargs={"hci_adapter": node},
                                 connect_timeout=2.0)
    await session.close()
    await node.close()


async def test_a_second_host_on_a_taken_controller_is_refused(air: VirtualAir) -> None:
    spec = (await air.serve("node-1")).removeprefix("bumble:")
    first = tcp_adapter(spec)
    await first.device()
    second = HciAdapter(spec, name="intruder", power_on_timeout=1.0)
    with pytest.raises(ConnectionError):
        await second.device()
    assert air.attached("node-1")
    await first.close()


async def test_an_async_command_the_controller_lacks_is_answered_not_left_hanging(
        air: VirtualAir) -> None:
    adapter = air.local_adapter("node")
    device = await adapter.device()
    with pytest.raises(hci.HCI_Error):
        await asyncio.wait_for(device.host.send_command(hci.HCI_LE_Set_PHY_Command(
            connection_handle=1, all_phys=0, tx_phys=1, rx_phys=1, phy_options=0),
            check_result=True), 2.0)
    await adapter.close()


async def test_two_nodes_racing_for_one_handset_one_wins_the_other_is_dropped_cleanly(
        air: VirtualAir, handset: BlePeripheral) -> None:
    """Stock bumble told both centrals they were connected; the loser then waited 30 s
    on its first ATT request to a peer that had ignored its CONNECT_IND. Now the handset
    binds the first link that proves the key and drops the other at once (or the other
    never connects)."""
    key = os.urandom(32)
    await handset.open_window(key)
    first, second = air.local_adapter("node-1"), air.local_adapter("node-2")

    async def try_connect(adapter: HciAdapter) -> object:
        try:
            return await open_session(handset.address, handset.address_type, key,
                                      backend=BumbleBleakClient,
                                      backend_kwargs={"hci_adapter": adapter},
                                      connect_timeout=1.0)
        except (TimeoutError, BleakError) as exc:
            return exc

    outcomes = await asyncio.wait_for(
        asyncio.gather(try_connect(first), try_connect(second)), 5.0)
    sessions = [o for o in outcomes if isinstance(o, PushSession)]
    assert sessions, outcomes
    await handset.connected.wait()
    async with asyncio.timeout(2.0):
        while sum(s.client.is_connected for s in sessions) != 1:
            await asyncio.sleep(0.005)
    winner = next(s for s in sessions if s.client.is_connected)
    await winner.send(Request(item_id="winner"))
    assert await handset.messages.get() == Request(item_id="winner")
    await winner.close()
    await first.close()
    await second.close()
