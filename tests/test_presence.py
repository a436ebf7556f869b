"""The code path without NFC (docs/protocol.md, "Without NFC").

* Wire format: the messages and the sealed code, with a vector.
* The hub's half on SQLite and PostgreSQL (hub/presence.py): offers stored from sealed
  payloads only, a code claimed once, an expired or wrong one refused and counted, the
  relay sending each answer once.
* The node's half (node/presence.py) with the NFC exchange's own crypto: a good answer
  confirmed, a forged one (bad signature, another handset's certificate, an answer
  replayed) refused with its reason, an expired code stale.
* End to end (slow): a node in a virtual hall shows a code on its display page, a
  customer registered through the hub presents it from a Phone and gets an item over
  BLE; the event is recorded as channel "code".
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hall.testing.display import next_code
from hub.db import HubDB, open_db
from hub.presence import PresenceError, PresenceRelay, PresenceStore
from tapcast.keys import HubAuthority, make_handset_credentials, make_node_credentials
from tapcast.protocol.mqtt import (PRESENCE_ANSWER, PRESENCE_OFFER, PRESENCE_RESULT,
                                   presence_topic, stream_key)
from tapcast.protocol.nfc import (ADDRESS_RANDOM, NodeAuth, ProtocolError, answer_hello,
                                  parse_ble_address)
from tapcast.protocol.presence import (Offer, RelayedAnswer, Result, code_hash, code_uri,
                                       open_answer, open_code, open_offer, open_result,
                                       parse_code, seal_answer, seal_code, seal_offer,
                                       seal_result)

SECRET = bytes(range(32))
NODE = "node-1"
KEY = stream_key(SECRET, NODE)
ADDRESS = parse_ble_address("C0:11:22:33:44:55")


# ------------------------------------------------------------------ wire format


def test_codes_parse_from_digits_or_the_qr_uri() -> None:
    assert parse_code("1234 5678") == parse_code("tapcast:code/12345678") == "12345678"
    assert code_uri("12345678") == "tapcast:code/12345678"
    for bad in ("1234567", "123456789", "abcdefgh", "tapcast:code/1234", "", "x" * 100):
        with pytest.raises(ValueError):
            parse_code(bad)
    # the vector in docs/protocol.md
    assert code_hash("12345678") == \
        "fb43b734e36dcaffb77e17171895497b9f3d0120238198f3befd231b8029a2f7"


def test_messages_open_only_under_the_nodes_key_and_topic() -> None:
    offer_id = "ab" * 16
    sealed = seal_code(KEY, offer_id, "12345678")
    assert open_code(KEY, offer_id, sealed) == "12345678"
    from tapcast.protocol.mqtt import ForgedError, PayloadError

    with pytest.raises(PayloadError):
        open_code(stream_key(SECRET, "node-2"), offer_id, sealed)
    with pytest.raises(PayloadError):
        open_code(KEY, "cd" * 16, sealed)  # bound to its offer
    offer = Offer(offer_id=offer_id, code=sealed, ttl=90.0, hello="00ff")
    payload = seal_offer(KEY, NODE, offer)
    assert open_offer(KEY, NODE, payload) == offer
    with pytest.raises(ForgedError):
        open_offer(stream_key(SECRET, "node-2"), "node-2", payload)
    with pytest.raises(ForgedError):  # a result is not an offer, even under the right key
        open_offer(KEY, NODE, seal_result(KEY, NODE, Result(offer_id=offer_id, reason="ok")))
    answer = RelayedAnswer(offer_id=offer_id, handset_id="h1", answer="0102")
    assert open_answer(KEY, NODE, seal_answer(KEY, NODE, answer)) == answer
    result = Result(offer_id=offer_id, reason="ok", confirm="aa" * 32)
    assert open_result(KEY, NODE, seal_result(KEY, NODE, result)) == result
    with pytest.raises(PayloadError):
        open_offer(KEY, NODE, payload.replace(b'"ttl":90.0', b'"ttl":9999.0'))
    assert presence_topic(NODE, PRESENCE_OFFER) == "tapcast/v1/node/node-1/presence/offer"


# ------------------------------------------------------------------ the hub's half


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(hub_database: str) -> Iterator[HubDB]:
    database = open_db(hub_database)
    yield database
    database.close()


def offer_payload(code: str, offer_id: str, ttl: float = 90.0, hello: str = "0a0b") -> bytes:
    return seal_offer(KEY, NODE, Offer(offer_id=offer_id, code=seal_code(KEY, offer_id, code),
                                       ttl=ttl, hello=hello))


def test_the_hub_keeps_offers_claims_once_and_relays_each_answer_once(db: HubDB) -> None:
    clock = Clock()
    sent: list[tuple[str, bytes]] = []
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: sent.append((t, p)), clock=clock)
    store = PresenceStore(db.engine, clock=clock)
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("12345678", "a" * 32))
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("12345678", "a" * 32))  # QoS 1 again
    assert relay.counters.offers == 1
    claim = store.claim("1234-5678", user_id=7, handset_id="h7")
    assert (claim.id, claim.node_id, claim.state, claim.hello) == ("a" * 32, NODE,
                                                                   "claimed", "0a0b")
    with pytest.raises(PresenceError) as used:
        store.claim("12345678", user_id=8, handset_id="h8")
    assert used.value.status == 409 and used.value.counted and "used" in str(used.value)
    with pytest.raises(PresenceError) as other:  # not this account's session
        store.answer("a" * 32, user_id=8, answer_hex="00")
    assert other.value.status == 404
    assert store.answer("a" * 32, user_id=7, answer_hex="0102").state == "answered"
    with pytest.raises(PresenceError) as twice:
        store.answer("a" * 32, user_id=7, answer_hex="0102")
    assert twice.value.status == 409
    # a second relay (another ingest worker) finds nothing left to send
    assert relay.relay() == 1 and relay.relay() == 0
    [(topic, payload)] = sent
    assert topic == presence_topic(NODE, PRESENCE_ANSWER)
    assert open_answer(KEY, NODE, payload) == RelayedAnswer(offer_id="a" * 32,
                                                            handset_id="h7", answer="0102")
    assert store.get("a" * 32, 7).state == "relayed"
    relay.handle(PRESENCE_RESULT, NODE, seal_result(KEY, NODE, Result(
        offer_id="a" * 32, reason="ok", confirm="cc" * 32)))
    done = store.get("a" * 32, 7)
    assert (done.state, done.reason, done.confirm) == ("confirmed", "ok", "cc" * 32)
    # a late or repeated verdict changes nothing
    relay.handle(PRESENCE_RESULT, NODE, seal_result(KEY, NODE, Result(
        offer_id="a" * 32, reason="bad_signature")))
    assert store.get("a" * 32, 7).state == "confirmed" and relay.counters.late == 1


def test_wrong_and_expired_codes_are_refused_and_counted(db: HubDB) -> None:
    clock = Clock()
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: None, clock=clock)
    store = PresenceStore(db.engine, clock=clock)
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("11112222", "b" * 32, ttl=30.0))
    with pytest.raises(PresenceError) as wrong:
        store.claim("99998888", 1, "h1")
    assert wrong.value.status == 404 and wrong.value.counted
    clock.now += 31
    with pytest.raises(PresenceError) as expired:
        store.claim("11112222", 1, "h1")
    assert expired.value.status == 404 and "expired" in str(expired.value)
    with pytest.raises(PresenceError) as no_handset:
        store.claim("11112222", 1, None)
    assert no_handset.value.status == 409
    with pytest.raises(PresenceError) as malformed:
        store.claim("1111", 1, "h1")
    assert malformed.value.status == 400
    # an expired claim cannot be answered either
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("33334444", "c" * 32, ttl=30.0))
    store.claim("33334444", 1, "h1")
    clock.now += 31
    with pytest.raises(PresenceError) as late:
        store.answer("c" * 32, 1, "00")
    assert late.value.status == 409 and "expired" in str(late.value)
    assert store.get("c" * 32, 1).state == "expired"


def test_forged_and_malformed_node_messages_are_counted_and_never_stored(db: HubDB) -> None:
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: None)
    store = PresenceStore(db.engine)
    other = stream_key(SECRET, "node-2")
    forged = seal_offer(other, NODE, Offer(offer_id="d" * 32,
                                           code=seal_code(other, "d" * 32, "55556666"),
                                           ttl=60.0, hello="00"))
    relay.handle(PRESENCE_OFFER, NODE, forged)
    relay.handle(PRESENCE_OFFER, NODE, b"t1." + b"0" * 32 + b".{}")
    # sealed by the right key, but its code sealed by another node's
    relay.handle(PRESENCE_OFFER, NODE, seal_offer(KEY, NODE, Offer(
        offer_id="e" * 32, code=seal_code(other, "e" * 32, "55556666"), ttl=60.0,
        hello="00")))
    relay.handle(PRESENCE_OFFER, NODE, seal_offer(KEY, NODE, Offer(
        offer_id="f" * 32, code="00" * 36, ttl=60.0, hello="00")))
    relay.handle(PRESENCE_RESULT, NODE, b"garbage")
    assert (relay.counters.forged, relay.counters.malformed, relay.counters.offers) == (3, 2, 0)
    with pytest.raises(PresenceError):
        store.claim("55556666", 1, "h1")


# ------------------------------------------------------------------ the node's half


class FakeUplink:
    """Stands in for the MQTT connection only (the crypto and the checks are real)."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.handlers: dict[str, Any] = {}

    def publish(self, topic: str, payload: bytes) -> bool:
        self.published.append((topic, payload))
        return True

    def subscribe(self, topic: str, handler: Any) -> None:
        self.handlers[topic] = handler


@pytest.fixture
def world() -> dict[str, Any]:
    authority = HubAuthority.generate()
    expires = time.time() + 86400
    return {"authority": authority,
            "node": make_node_credentials(authority, NODE, "hall-a", expires),
            "alice": make_handset_credentials(authority, "halice", expires),
            "bob": make_handset_credentials(authority, "hbob", expires)}


def node_presence(world: dict[str, Any], revoked: frozenset[str] = frozenset(),
                  monotonic: Any = time.monotonic) -> tuple[Any, FakeUplink, list[Any]]:
    from node.presence import CodePresence

    uplink = FakeUplink()
    verdicts: list[Any] = []
    shown: list[Any] = []
    auth = NodeAuth(world["node"], revoked=revoked, monotonic=monotonic)
    presence = CodePresence(NODE, auth, uplink, KEY, show=shown.append, watched=lambda: True,
                            on_verdict=verdicts.append, period=60.0, monotonic=monotonic)
    presence.new_code()
    return presence, uplink, verdicts


def hub_view(uplink: FakeUplink) -> tuple[str, str, str]:
    """What the hub learns from the node's offer: id, code, HELLO."""
    topic, payload = uplink.published[-1]
    assert topic == presence_topic(NODE, PRESENCE_OFFER)
    offer = open_offer(KEY, NODE, payload)
    return offer.offer_id, open_code(KEY, offer.offer_id, offer.code), offer.hello


def relay(presence: Any, uplink: FakeUplink, offer_id: str, handset_id: str,
          answer: bytes) -> Result:
    presence.on_answer(seal_answer(KEY, NODE, RelayedAnswer(
        offer_id=offer_id, handset_id=handset_id, answer=answer.hex())))
    topic, payload = uplink.published[-1]
    assert topic == presence_topic(NODE, PRESENCE_RESULT)
    return open_result(KEY, NODE, payload)


def answer(creds: Any, hello_hex: str) -> Any:
    return answer_hello(creds, bytes.fromhex(hello_hex), ble_address=ADDRESS,
                        ble_address_type=ADDRESS_RANDOM, consent=3, now=time.time())


def test_a_good_answer_is_confirmed_with_the_nfc_key_schedule(world: dict[str, Any]) -> None:
    presence, uplink, verdicts = node_presence(world)
    offer_id, code, hello = hub_view(uplink)
    assert parse_code(code) == code
    pending = answer(world["alice"], hello)
    result = relay(presence, uplink, offer_id, "halice", pending.answer)
    assert result.reason == "ok"
    session = pending.confirm(bytes.fromhex(result.confirm))
    assert session is not None and (session.node_id, session.zone) == (NODE, "hall-a")
    [verdict] = verdicts
    assert verdict.ok and verdict.session.handset_id == "halice"
    assert verdict.session.session_key == session.session_key
    assert verdict.session.consent == 3
    # the offer is used: the same answer again (a replay on the broker) is dropped,
    # with no verdict, no event and no result (tests/test_presence_hostile.py)
    published = len(uplink.published)
    presence.on_answer(seal_answer(KEY, NODE, RelayedAnswer(
        offer_id=offer_id, handset_id="halice", answer=pending.answer.hex())))
    assert len(uplink.published) == published and len(verdicts) == 1
    assert presence.replayed == 1 and offer_id not in presence.live
    # and the display moved on to a new code at once
    assert presence.current is None


@pytest.mark.parametrize("forgery,reason", [
    ("bad_signature", "bad_signature"),  # the sealed payload altered
    ("other_handset", "wrong_handset"),  # bob's certificate for alice's claim
    ("other_hello", "bad_signature"),  # an answer to another offer's HELLO
    ("revoked", "revoked"),
    ("garbage", "malformed"),
])
def test_a_forged_answer_is_refused_with_its_reason(world: dict[str, Any], forgery: str,
                                                    reason: str) -> None:
    presence, uplink, verdicts = node_presence(
        world, revoked=frozenset({"halice"}) if forgery == "revoked" else frozenset())
    offer_id, _, hello = hub_view(uplink)
    if forgery == "other_hello":
        presence.new_code()
        hello = hub_view(uplink)[2]  # answered the newer HELLO, relayed for the older id
    data = answer(world["bob" if forgery == "other_handset" else "alice"], hello).answer
    if forgery == "bad_signature":
        data = data[:-1] + bytes([data[-1] ^ 1])
    if forgery == "garbage":
        data = b"\x02" + b"\x00" * 10
    result = relay(presence, uplink, offer_id, "halice", data)
    assert result.reason == reason and result.confirm == ""
    assert verdicts[-1].reason == reason and verdicts[-1].session is None
    assert offer_id not in presence.live  # spent either way


def test_an_expired_code_is_stale_at_the_node(world: dict[str, Any]) -> None:
    now = [1000.0]
    presence, uplink, verdicts = node_presence(world, monotonic=lambda: now[0])
    offer_id, _, hello = hub_view(uplink)
    pending = answer(world["alice"], hello)
    now[0] += 60 + 30 + 10 + 1  # period + grace + the relay's grace, and a second
    assert relay(presence, uplink, offer_id, "halice", pending.answer).reason == "stale"


def test_a_handset_refuses_a_hello_not_from_a_genuine_node(world: dict[str, Any]) -> None:
    from tapcast.protocol.nfc import HelloRejected

    rogue = make_node_credentials(HubAuthority.generate(), NODE, "hall-a", time.time() + 60)
    hello = NodeAuth(rogue).begin().hello
    with pytest.raises(HelloRejected):
        answer(world["alice"], hello.hex())
    with pytest.raises(ProtocolError):
        answer(world["alice"], "02")


# ------------------------------------------------------------------ end to end


class Recorder:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.got_item = asyncio.Event()
        self.errors: list[str] = []

    def on_item(self, entry: Any) -> None:
        self.items.append(entry)
        self.got_item.set()

    def on_error(self, message: str) -> None:
        self.errors.append(message)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


@pytest.mark.slow
async def test_a_code_on_the_display_gets_a_signed_in_phone_its_items_over_ble(
        make_hall: Any, running_hub: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp

    import hub.accounts
    from hall.testing.hub import cheap_password_hashing
    from handset_app.hubclient import CodeRefused, HubClient
    from handset_app.phone import Phone
    from hub import get_db, get_ingest

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())
    hall = await make_hall(authority=running_hub.authority, processes=False)
    daemon = hall.nodes[0].daemon
    await daemon.uplink.wait_connected(10)
    client = HubClient(running_hub.url)
    phone = Phone(tmp_path / "phone")
    creds = await asyncio.to_thread(client.register, "alice", "a long walk by the river",
                                    phone=phone)
    assert phone.credentials == creds and HubClient.load(phone.data_dir).token == client.token
    await phone.start(hall.air.local_adapter("alice-phone"))
    async with aiohttp.ClientSession() as http, \
            http.get(daemon.display.url + "/events") as stream:
        shown = await next_code(stream)
        assert shown["uri"] == "tapcast:code/" + shown["code"]
        # the display shows it as it offers it; a person reads it later than the hub
        # stores it, a test must wait for that
        relay = get_ingest(running_hub.app).presence
        assert await asyncio.to_thread(relay.wait_for, lambda c: c.offers >= 1, 10)
        assert shown["qr"].startswith("data:image/svg+xml")
        # a wrong code is refused by the hub with its reason
        wrong = f"{(int(shown['code']) + 1) % 10**8:08d}"
        with pytest.raises(CodeRefused) as refused:
            await asyncio.to_thread(client.present_code, wrong, creds)
        assert refused.value.status == 404 and "no display shows" in str(refused.value)
        recorder = Recorder()
        started = time.perf_counter()
        session = await client.attach(phone, shown["uri"], listener=recorder)
        authenticated = time.perf_counter() - started
        await asyncio.wait_for(recorder.got_item.wait(), 15)
        print(f"code session: authenticated in {authenticated * 1000:.0f} ms, first item "
              f"after {(time.perf_counter() - started) * 1000:.0f} ms")
        assert authenticated < 1.0
        assert recorder.items[0].node_id == daemon.node_id and not recorder.errors
        await session.leave()
        # the code is used: presenting it again is refused; the display shows a new one
        with pytest.raises(CodeRefused) as reused:
            await asyncio.to_thread(client.present_code, shown["code"], creds)
        assert reused.value.status == 409 and "used" in str(reused.value)
        fresh = await next_code(stream)
        assert fresh["code"] != shown["code"]
        assert await asyncio.to_thread(relay.wait_for, lambda c: c.offers >= 2, 10)
        # bob, signed in, answers with alice's certificate: the node refuses it
        bob = HubClient(running_hub.url)
        await asyncio.to_thread(bob.register, "bob", "another long walk home")
        with pytest.raises(CodeRefused) as forged:
            await asyncio.to_thread(bob.present_code, fresh["code"], creds)
        assert forged.value.reason == "wrong_handset"
    assert [p.channel for p in phone.places()] == ["code"]
    await daemon.wait_idle()
    await daemon.uplink.wait_drained(10)
    events, _ = get_db(running_hub.app).list_events(kind="auth")
    assert [(e["data"]["channel"], e["data"]["ok"], e["data"]["reason"])
            for e in reversed(events)] == [("code", True, "ok"),
                                           ("code", False, "wrong_handset")]
    assert events[-1]["data"]["handset_id"] == creds.handset_id
    assert get_ingest(running_hub.app).presence.counters.results == 2
    await phone.close()
