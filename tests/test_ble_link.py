"""BLE push end to end: node code on bleak's public API, bleak on the bumble backend,
the handset a real bumble GATT peripheral, both on controllers of one virtual air in one
event loop (tests/test_ble_air.py puts them in separate processes)."""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bleak import BleakClient
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core

from handset_app.ble_peripheral import ATT_FRAME_ERROR, BlePeripheral
from node.ble_push import BlePush, PushError, PushSession, find_handset, open_session
from node.config import BleSection
from hall.air import VirtualAir
from tapcast.radio.bumble import PUBLIC, RANDOM, BumbleBleakClient, BumbleBleakScanner, HciAdapter
from tapcast.protocol.ble import (
    HELLO, RX_UUID, AckFrame, AckStatus, Bye, ContentItem, Endpoint, OfferResponse, QueryFrame,
    Request, session_token,
)

pytestmark = pytest.mark.timeout(20)


def item(size: int) -> ContentItem:
    body = ("Tapcast hall news. " * (size // 19 + 1))[:size]
    return ContentItem(id="news-1", title="Hall news", kind="article", body=body,
                       sha256=hashlib.sha256(body.encode()).hexdigest())


@pytest.fixture
async def radio(air: VirtualAir) -> AsyncIterator[HciAdapter]:
    """The node's adapter: one central for the whole test, as on a Pi."""
    adapter = air.local_adapter("node")
    yield adapter
    await adapter.close()


@pytest.fixture
def session_key() -> bytes:
    return os.urandom(32)


async def make_handset(air: VirtualAir, **kwargs: object) -> BlePeripheral:
    handset = BlePeripheral(air.local_adapter("handset"), **kwargs)  # type: ignore[arg-type]
    await handset.start()
    return handset


@pytest.fixture
async def handset(air: VirtualAir) -> AsyncIterator[BlePeripheral]:
    handset = await make_handset(air)
    yield handset
    await handset.close()


async def connect(radio: HciAdapter, handset: BlePeripheral, key: bytes,
                  **kwargs: object) -> PushSession:
    kwargs.setdefault("connect_timeout", 1.0)
    return await open_session(handset.address, handset.address_type, key,
                              backend=BumbleBleakClient, backend_kwargs={"hci_adapter": radio},
                              **kwargs)  # type: ignore[arg-type]


async def push_arrives(radio: HciAdapter, handset: BlePeripheral, key: bytes, size: int) -> None:
    """The genuine node connects, pushes an item of ``size`` bytes and the handset opens
    it (whatever a stranger did before)."""
    session = await connect(radio, handset, key)
    await session.send(item(size))
    assert (await handset.messages.get()).body == item(size).body
    await session.close()


async def test_content_bigger_than_several_mtus_arrives_intact_and_opened(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(session_key)
    t0 = time.perf_counter()
    session = await connect(radio, handset, session_key)
    content = item(4000)
    await session.send(content)
    assert session.first_content_at is not None
    print(f"\nconnect+setup {1000 * (session.first_content_at - t0):.1f} ms to first content "
          f"write, {1000 * (time.perf_counter() - t0):.1f} ms to acked 4 kB item, "
          f"MTU {session.client.mtu_size}")
    assert 4000 > 5 * session.client.mtu_size
    assert await handset.messages.get() == content
    await session.close()


async def test_link_negotiates_mtu_247(air: VirtualAir, radio: HciAdapter, handset: BlePeripheral,
                                       session_key: bytes) -> None:
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    assert session.client.mtu_size == 247
    assert session.frame_size == 244
    await session.close()


async def test_handset_request_reaches_the_node(air: VirtualAir, radio: HciAdapter, handset: BlePeripheral,
                                                session_key: bytes) -> None:
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    await handset.send(Request(item_id="coupon-7"))
    assert await session.receive() == Request(item_id="coupon-7")
    await session.close()


async def test_offer_response_larger_than_the_mtu_reaches_the_node(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    response = OfferResponse(offer_id="o-1", accept=True, signed=bytes(range(256)) * 3,
                             signature=b"\x55" * 64)
    await handset.send(response)
    assert await session.receive() == response
    await session.close()


async def test_close_says_bye_to_the_handset(air: VirtualAir, radio: HciAdapter, handset: BlePeripheral,
                                             session_key: bytes) -> None:
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    await session.close("done")
    assert await handset.messages.get() == Bye("done")
    assert not session.client.is_connected


async def test_public_address_type_is_honoured(air: VirtualAir, radio: HciAdapter, session_key: bytes) -> None:
    handset = await make_handset(air, address_type=PUBLIC)
    await handset.open_window(session_key)
    await push_arrives(radio, handset, session_key, 600)
    await handset.close()


async def test_wrong_address_type_finds_nobody(air: VirtualAir, radio: HciAdapter, handset: BlePeripheral,
                                               session_key: bytes) -> None:
    await handset.open_window(session_key)
    with pytest.raises(TimeoutError, match="no connection to"):
        await open_session(handset.address, PUBLIC, session_key, backend=BumbleBleakClient,
                           backend_kwargs={"hci_adapter": radio}, connect_timeout=0.2)


async def stranger(air: VirtualAir, handset: BlePeripheral, name: str = "stranger") -> BleakClient:
    """Someone else's central, connected to the handset inside its window (the address
    is on air in every advertisement)."""
    client = BleakClient(handset.address, timeout=1.0, backend=BumbleBleakClient,
                         hci_adapter=air.local_adapter(name), address_type=handset.address_type)
    await client.connect()
    return client


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait for a condition that has no event of its own (a counter, a dropped link)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def forged_frames(key: bytes) -> dict[str, bytes]:
    """What a stranger can write: garbage, frames under another key (data, DONE, ACK,
    QUERY, HELLO), a genuine frame with one bit flipped."""
    other = Endpoint(os.urandom(32), "node")
    genuine = bytearray(Endpoint(key, "node").seal(Request(item_id="x")).frames(100)[0])
    genuine[-1] ^= 0x80
    return {
        "garbage-10": bytes.fromhex("01000000010001000100"),
        "wrong-key-data": other.seal(Request(item_id="evil")).frames(100)[0],
        "forged-done": other.wrap(AckFrame(1, 0xFFFF, AckStatus.DONE)),
        "forged-partial": other.wrap(AckFrame(1, 0, AckStatus.PARTIAL)),
        "forged-query": other.wrap(QueryFrame(1)),
        "forged-hello": other.wrap(HELLO),
        "tampered": bytes(genuine),
    }


async def test_a_strangers_forged_frames_inside_the_window_do_not_block_the_genuine_message(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(session_key)
    intruder = await stranger(air, handset)
    forged = forged_frames(session_key)
    for frame in forged.values():
        await intruder.write_gatt_char(RX_UUID, frame, response=False)
    with pytest.raises(BleakGATTProtocolError) as err:  # a write request gets an ATT error
        await intruder.write_gatt_char(RX_UUID, forged["forged-done"], response=True)
    assert err.value.args[0] == ATT_FRAME_ERROR
    await push_arrives(radio, handset, session_key, 1000)
    assert handset.dropped["unauthentic"] == len(forged) + 1
    assert handset.errors.empty()


async def test_an_oversized_long_write_from_a_stranger_is_dropped_and_counted(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(session_key)
    intruder = await stranger(air, handset)
    rx = intruder.services.get_characteristic(RX_UUID)
    # bleak refuses writes over MTU-3; bumble itself turns one into a prepared write
    link = intruder._backend._connection  # type: ignore[attr-defined]
    # (bumble drops long writes over 512 bytes silently)
    with pytest.raises(att.ATT_Error) as refused:
        await link.gatt_client.write_value(rx.handle, b"\x01" * 400, with_response=True)
    assert refused.value.error_code == ATT_FRAME_ERROR  # the handset's own refusal
    assert handset.dropped["oversized"] == 1
    await push_arrives(radio, handset, session_key, 500)


async def test_the_session_binds_to_the_node_and_drops_the_stranger_who_connected_first(
        air: VirtualAir, radio: HciAdapter, session_key: bytes) -> None:
    handset = await make_handset(air, bind_timeout=60.0)  # only the bind can drop it
    await handset.open_window(session_key)
    intruder = await stranger(air, handset)
    await push_arrives(radio, handset, session_key, 300)
    await until(lambda: not intruder.is_connected)
    assert handset.dropped["unproven_connection"] == 0
    await handset.close()


async def test_genuine_frames_replayed_by_a_stranger_after_a_dropped_link_are_refused(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(session_key)
    replica = Endpoint(session_key, "node")  # the node's first frames, byte for byte
    recorded = [replica.wrap(HELLO), *replica.seal(Request(item_id="x")).frames(244)]
    session = await connect(radio, handset, session_key)
    await session.send(Request(item_id="x"))
    assert await handset.messages.get() == Request(item_id="x")
    await handset.drop_link()  # the customer stepped away; the handset advertises again
    intruder = await stranger(air, handset)  # gets there first and replays what it heard
    for frame in recorded:
        await intruder.write_gatt_char(RX_UUID, frame, response=False)
    await until(lambda: handset.dropped["unauthentic"] == len(recorded))
    await session.send(Request(item_id="y"))  # the node reconnects and carries on
    assert await handset.messages.get() == Request(item_id="y")
    assert session.reconnects == 1 and handset.messages.empty()
    await session.close()


async def test_a_link_that_does_not_prove_the_key_in_time_is_dropped(
        air: VirtualAir, session_key: bytes) -> None:
    handset = await make_handset(air, bind_timeout=0.2)
    await handset.open_window(session_key)
    intruder = await stranger(air, handset)
    await until(lambda: not intruder.is_connected)
    assert handset.dropped["unproven_connection"] == 1
    assert not handset.connected.is_set()
    await handset.close()


async def test_a_node_holding_another_key_is_never_bound_and_gives_up(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(os.urandom(32))
    with pytest.raises(PushError, match="did not answer HELLO"):
        await connect(radio, handset, session_key, ack_timeout=0.3, max_reconnects=1)
    assert handset.dropped["unauthentic"] >= 1  # the node's HELLO
    assert handset.messages.empty() and not handset.connected.is_set()


async def test_a_forged_done_from_a_peripheral_records_no_delivery(
        air: VirtualAir, radio: HciAdapter, session_key: bytes) -> None:
    # A stranger's phone the node reached (say it cloned the token) answers every write
    # with DONE acks for messages 1-3 under a key of its own.
    class Forger(BlePeripheral):
        async def _receive(self, connection: Any, value: bytes) -> None:
            self._connection = connection
            other = Endpoint(os.urandom(32), "handset")
            for msg_id in (1, 2, 3):
                await self.send_frame(other.wrap(AckFrame(msg_id, 0xFFFF, AckStatus.DONE)))

    forger = Forger(air.local_adapter("forger"))
    await forger.start()
    await forger.open_window(os.urandom(32))
    with pytest.raises(PushError, match="did not answer HELLO"):  # its acks are not ours
        await open_session(forger.address, forger.address_type, session_key,
                           backend=BumbleBleakClient, backend_kwargs={"hci_adapter": radio},
                           connect_timeout=1.0, ack_timeout=0.3, max_reconnects=0)
    await forger.close()


async def test_bad_frame_from_the_handset_is_recorded_and_the_node_carries_on(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    await handset.connected.wait()  # bound: the node's HELLO arrived
    await handset.send_frame(b"\x02" * 14)  # unauthentic: dropped and counted
    await handset.send_frame(handset._require_endpoint().wrap(AckFrame(42, 0, AckStatus.DONE)))
    await handset.send(Request(item_id="after"))
    assert await session.receive() == Request(item_id="after")
    assert [str(e) for e in session.errors] == ["ACK for unknown message id 42 (last sent 0)"]
    assert session.dropped["unauthentic"] == 1
    await session.close()


async def test_token_binding_finds_the_tapped_handset_among_several_advertising(
        air: VirtualAir, session_key: bytes) -> None:
    others = [await make_handset(air) for _ in range(3)]
    for other in others:
        await other.open_window(os.urandom(32))
    tapped = await make_handset(air)
    await tapped.open_window(session_key)
    push = BlePush.from_config(BleSection(adapter=await air.serve("node-token"), connect_timeout=1.0))
    await push.start()
    # the address sent over NFC is only a hint: a wrong one does not matter
    session = await push.open(others[0].address, others[0].address_type, session_key)
    assert session.client.address == tapped.address
    await session.send(item(300))
    assert (await tapped.messages.get()).body == item(300).body
    assert all(o.messages.empty() and not o.connected.is_set() for o in others)
    await session.close()
    await push.close()
    for handset in [*others, tapped]:
        await handset.close()


async def test_a_stranger_who_copied_the_token_and_is_seen_first_does_not_block_the_tap(
        air: VirtualAir, session_key: bytes) -> None:
    class Copier(BlePeripheral):
        """Advertises the tapped handset's token (overheard) under a key of its own."""

        async def open_window(self, session_key: bytes) -> None:
            await super().open_window(session_key)
            device = self._require_device()
            async with self._adv_lock:
                if device.is_advertising:
                    await device.stop_advertising()
            assert self._endpoint is not None
            self._endpoint.token = session_token(tapped_key)
            await self._advertise(device)

    tapped_key = session_key
    copier = Copier(air.local_adapter("copier"))
    await copier.start()
    await copier.open_window(os.urandom(32))  # advertising before the genuine handset
    tapped = await make_handset(air)
    push = BlePush.from_config(BleSection(adapter=await air.serve("node-copied"),
                                          connect_timeout=3.0))
    await push.start()
    push.ack_timeout = 0.3
    opening = asyncio.ensure_future(push.open(copier.address, copier.address_type, session_key))
    await until(lambda: copier.link_count > 0)  # the node went for the copier first
    await tapped.open_window(session_key)
    session = await opening
    assert session.client.address == tapped.address
    assert copier.dropped["unauthentic"] >= 1 and not copier.connected.is_set()
    await session.send(item(300))
    assert (await tapped.messages.get()).body == item(300).body
    await session.close()
    await push.close()
    for handset in (copier, tapped):
        await handset.close()


async def test_a_device_without_the_tapcast_service_advertising_the_token_is_skipped(
        air: VirtualAir, session_key: bytes) -> None:
    rogue = air.local_adapter("rogue")
    device = await rogue.device()
    reached = asyncio.Event()
    device.on("connection", lambda _connection: reached.set())
    await device.start_advertising(advertising_data=bytes(core.AdvertisingData([
        (core.AdvertisingData.FLAGS, bytes([0x06])),
        (core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
         core.UUID(session_token(session_key)).to_bytes(force_128=True)),
    ])), advertising_interval_min=20, advertising_interval_max=20)
    tapped = await make_handset(air)
    push = BlePush.from_config(BleSection(adapter=await air.serve("node-rogue"), connect_timeout=3.0))
    await push.start()
    opening = asyncio.ensure_future(push.open(tapped.address, tapped.address_type, session_key))
    await reached.wait()  # the node went for the rogue first
    await tapped.open_window(session_key)
    session = await opening
    assert session.client.address == tapped.address
    await session.close()
    await push.close()
    await tapped.close()
    await rogue.close()


async def test_no_handset_with_the_token_times_out_with_a_clear_error(
        air: VirtualAir, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(os.urandom(32))  # another tap's token
    push = BlePush.from_config(BleSection(adapter=await air.serve("node-none"), connect_timeout=0.3))
    await push.start()
    with pytest.raises(TimeoutError, match="no handset advertised the tap's token"):
        await push.open(handset.address, handset.address_type, session_key)
    await push.close()


async def test_no_connection_after_the_window_closes(air: VirtualAir, radio: HciAdapter,
                                                     session_key: bytes) -> None:
    handset = await make_handset(air, window=0.1)
    await handset.open_window(session_key)
    await handset.window_closed.wait()
    with pytest.raises(TimeoutError, match="is it advertising"):
        await connect(radio, handset, session_key, connect_timeout=0.3)
    await handset.close()


async def test_connection_within_the_window_stays_up_after_it_closes(
        air: VirtualAir, radio: HciAdapter, session_key: bytes) -> None:
    handset = await make_handset(air, window=0.5)
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    await handset.window_closed.wait()
    await session.send(Request(item_id="still-here"))
    assert await handset.messages.get() == Request(item_id="still-here")
    await session.close()
    await handset.close()


async def test_dropped_link_mid_message_is_resumed_from_the_first_missing_frame(
        air: VirtualAir, radio: HciAdapter, session_key: bytes) -> None:
    seen: list[int] = []
    handset: BlePeripheral

    def on_frame(index: int, total: int) -> None:
        seen.append(index)
        if index == 3 and seen.count(3) == 1:
            handset.drop_link()

    handset = await make_handset(air, on_frame=on_frame)
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    content = item(4000)
    await session.send(content)
    assert await handset.messages.get() == content
    assert session.reconnects == 1
    resumed_at = seen[seen.index(3) + 1:]
    # frame 3 arrived, then the link dropped: the node resumes at 4, not at 0
    assert resumed_at[:1] == [4], f"frames seen: {seen}"
    await session.close()
    await handset.close()


async def test_send_fails_with_push_error_when_the_link_drops_after_the_window(
        air: VirtualAir, radio: HciAdapter, session_key: bytes) -> None:
    handset = await make_handset(air, window=0.5)
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key, connect_timeout=0.2)
    await handset.window_closed.wait()
    await handset.drop_link()
    with pytest.raises(PushError, match="reconnect to .* failed: no connection"):
        await session.send(Request(item_id="too-late"))
    await handset.close()


async def test_write_longer_than_mtu_minus_3_is_refused_by_the_backend(
        air: VirtualAir, radio: HciAdapter, handset: BlePeripheral, session_key: bytes) -> None:
    await handset.open_window(session_key)
    session = await connect(radio, handset, session_key)
    with pytest.raises(BleakError, match="write of 245 bytes .* exceeds MTU-3 = 244"):
        await session.client.write_gatt_char(RX_UUID, b"\x01" * 245, response=True)
    await session.send(Request(item_id="ok"))  # the link is unaffected
    await session.close()


async def test_backend_without_an_adapter_says_how_to_pass_one() -> None:
    from bleak import BleakClient
    with pytest.raises(BleakError, match="needs hci_adapter=HciAdapter"):
        BleakClient("C0:00:00:00:00:01", backend=BumbleBleakClient)


def test_virtual_air_outside_a_running_loop_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside the running event loop"):
        VirtualAir()


async def test_random_static_is_the_default_address_type(handset: BlePeripheral) -> None:
    assert handset.address_type == RANDOM
    assert int(handset.address[:2], 16) >= 0xC0  # random static: two top bits set


async def test_bluetooth_4_0_link_without_data_length_extension_works_at_mtu_23(
        session_key: bytes) -> None:
    air = VirtualAir(data_length=27)
    radio = air.local_adapter("node")
    handset = await make_handset(air)
    await handset.open_window(session_key)
    session = await open_session(handset.address, handset.address_type, session_key,
                                 backend=BumbleBleakClient,
                                 backend_kwargs={"hci_adapter": radio, "mtu": 23}, connect_timeout=1.0)
    assert session.frame_size == 20
    content = item(1000)  # 231 frames of 5 payload bytes
    await session.send(content)
    assert await handset.messages.get() == content
    await session.close()
    await handset.close()
    await radio.close()
    await air.close()


async def test_mtu_larger_than_one_link_packet_is_refused(radio: HciAdapter) -> None:
    from bleak import BleakClient
    with pytest.raises(BleakError, match=r"mtu must be 23\.\.247"):
        BleakClient("C0:00:00:00:00:01", backend=BumbleBleakClient, hci_adapter=radio, mtu=517)


async def test_mtu_larger_than_the_controllers_data_length_allows_is_refused_at_connect(
        session_key: bytes) -> None:
    air = VirtualAir(data_length=27)
    radio = air.local_adapter("node")
    with pytest.raises(BleakError, match="does not fit one link packet of 27 bytes"):
        await open_session("C0:00:00:00:00:01", RANDOM, session_key, backend=BumbleBleakClient,
                           backend_kwargs={"hci_adapter": radio}, connect_timeout=0.2)
    await radio.close()
    await air.close()


async def test_ble_push_from_a_bumble_adapter_string_opens_sessions_on_the_air(
        air: VirtualAir, handset: BlePeripheral, session_key: bytes) -> None:
    adapter = await air.serve("node-1")
    push = BlePush.from_config(BleSection(adapter=adapter, connect_timeout=1.0))
    await push.start()
    await handset.open_window(session_key)
    firsts: list[float] = []
    session = await push.open(handset.address, handset.address_type, session_key,
                              on_first_content=firsts.append)
    await session.send(item(300))
    assert firsts == [session.first_content_at]
    assert (await handset.messages.get()).body == item(300).body
    await session.close()
    await push.close()


def test_ble_push_adapter_string_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="'bumble:' needs a bumble transport"):
        BlePush.from_config(BleSection(adapter="bumble"))
    with pytest.raises(ValueError, match="BLE adapter 'zigbee': use 'bluez'"):
        BlePush.from_config(BleSection(adapter="zigbee"))
    assert BlePush.from_config(BleSection(adapter="bluez")).backend is None
    assert BlePush.from_config(BleSection(adapter="bluez:hci1")).backend_kwargs == {"bluez": {"adapter": "hci1"}}


async def test_ble_push_start_names_an_air_that_is_not_there() -> None:
    from hall.testing.mosquitto import free_port
    push = BlePush.from_config(BleSection(adapter=f"bumble:tcp-client:127.0.0.1:{free_port()}"))
    with pytest.raises(ConnectionError, match="cannot open BLE transport"):
        await push.start()


async def test_a_token_advertisement_with_a_name_that_is_not_utf8_is_still_reported(
        air: VirtualAir, radio: HciAdapter, session_key: bytes) -> None:
    # Anyone may advertise the token with any bytes as its local name; the scanner must
    # report the device (bumble's own decoding raised inside its HCI packet handler).
    rogue = air.local_adapter("rogue")
    device = await rogue.device()
    await device.start_advertising(advertising_data=bytes(core.AdvertisingData([
        (core.AdvertisingData.FLAGS, bytes([0x06])),
        (core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
         core.UUID(session_token(session_key)).to_bytes(force_128=True)),
        (core.AdvertisingData.COMPLETE_LOCAL_NAME, b"\xffrogue"),
    ])), advertising_interval_min=20, advertising_interval_max=20)
    found = await find_handset(session_token(session_key), timeout=1.0, backend=BumbleBleakScanner,
                               backend_kwargs={"hci_adapter": radio})
    assert found is not None
    assert found.address == device.random_address.to_string(with_type_qualifier=False)
    assert found.name == "\ufffdrogue"
    await rogue.close()
