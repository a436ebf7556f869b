"""The code path (docs/protocol.md "Without NFC") under hostile input, one test per
problem a review found: floods on the presence topics (anyone on the broker, or one
node's own key), a second answer racing the first, replayed relayed answers at the node,
codes guessed across accounts from one address, and a hub (or a man in the middle) that
answers the app with garbage."""
from __future__ import annotations

import time
from types import SimpleNamespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.db import HubDB, open_db
from hub.presence import (MAX_PRESENCE_PAYLOAD, MAX_QUEUED, OFFERS_PER_MINUTE,
                          PresenceError, PresenceRelay, PresenceStore)
from tapcast.protocol.mqtt import PRESENCE_OFFER, PRESENCE_RESULT, presence_topic, stream_key
from tapcast.protocol.presence import (Offer, RelayedAnswer, seal_answer, seal_code,
                                       seal_offer)
from tests.test_presence import (KEY, NODE, SECRET, Clock, answer, hub_view, node_presence,
                                 offer_payload, relay)
from tests.test_presence import world as world  # noqa: F401 - the fixture

# ------------------------------------------------------------------ the hub's relay


@pytest.fixture
def db(hub_database: str) -> Iterator[HubDB]:
    database = open_db(hub_database)
    yield database
    database.close()


def count_rows(db: HubDB) -> int:
    from sqlalchemy import func, select

    from hub.schema import presence_offers

    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(presence_offers)).scalar())


def test_the_relays_queue_is_bounded_and_big_payloads_never_queued(db: HubDB) -> None:
    """Anyone on the broker may publish on .../presence/offer for any node id: the queue
    between paho's thread and the relay must not grow without bound (the relay thread is
    not started here, as when the database stalls)."""
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: None)
    for n in range(MAX_QUEUED + 500):
        relay.submit(PRESENCE_OFFER, f"n{n}", b"t1." + b"0" * 32 + b".{}")
    assert relay._queue.qsize() == MAX_QUEUED
    assert relay.counters.dropped == 500
    relay.submit(PRESENCE_RESULT, NODE, b"x" * (MAX_PRESENCE_PAYLOAD + 1))
    assert relay._queue.qsize() == MAX_QUEUED and relay.counters.malformed == 1


def test_a_forged_flood_does_not_query_the_database_per_message(db: HubDB) -> None:
    """The relay looks for answers to send every RELAY_INTERVAL, not after every message
    it handles: a flood of forged payloads costs an HMAC each, not a query each."""
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: None, interval=0.05)
    looks = [0]
    original = relay.relay

    def counting() -> int:
        looks[0] += 1
        return original()

    relay.relay = counting  # type: ignore[method-assign]
    for _ in range(500):
        relay.submit(PRESENCE_OFFER, NODE, b"t1." + b"0" * 32 + b".{}")
    started = time.monotonic()
    relay.start()
    try:
        assert relay.wait_for(lambda c: c.forged == 500, 20)
    finally:
        relay.stop()
    took = time.monotonic() - started
    assert looks[0] <= took / 0.05 + 3, (looks[0], took)


def test_an_offer_flood_from_one_node_is_bounded_and_counted(db: HubDB) -> None:
    """A node's key (a stolen Pi) can seal as many offers as it likes; the hub keeps at
    most OFFERS_PER_MINUTE a minute of them per node (the node itself makes one a
    period, and one per code used), counts the rest and stores nothing of them."""
    clock = Clock()
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: None, clock=clock)
    for n in range(OFFERS_PER_MINUTE * 4):
        relay.handle(PRESENCE_OFFER, NODE, offer_payload(f"{n:08d}", f"{n:032x}"))
    assert relay.counters.offers == OFFERS_PER_MINUTE
    assert relay.counters.flood == OFFERS_PER_MINUTE * 3
    assert count_rows(db) == OFFERS_PER_MINUTE
    # another node is not held back by it
    other = stream_key(SECRET, "node-2")
    relay.handle(PRESENCE_OFFER, "node-2", seal_offer(other, "node-2", Offer(
        offer_id="e" * 32, code=seal_code(other, "e" * 32, "12121212"), ttl=60.0,
        hello="00")))
    assert relay.counters.offers == OFFERS_PER_MINUTE + 1
    # and the node gets its rate back as time passes
    clock.now += 60.0
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("99999999", "f" * 32))
    assert relay.counters.offers == OFFERS_PER_MINUTE + 2


def test_a_second_answer_racing_the_first_is_a_409_not_a_silent_202(db: HubDB) -> None:
    """Two requests answer one claim at once (two web workers): both read "claimed",
    one update wins. The loser must hear 409, not 202 for an answer that was dropped."""
    clock = Clock()
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: None, clock=clock)
    store = PresenceStore(db.engine, clock=clock)
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("12345678", "a" * 32))
    store.claim("12345678", 7, "h7")
    first = store._mine
    stale: list[Any] = []

    def mine(conn: Any, offer_id: str, user_id: int) -> Any:
        row = first(conn, offer_id, user_id)
        if not stale:  # what the loser read before the winner committed
            stale.append(row)
            PresenceStore(db.engine, clock=clock).answer(offer_id, user_id, "0a0a")
        return row

    racing = PresenceStore(db.engine, clock=clock)
    racing._mine = mine  # type: ignore[method-assign]
    if db.engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises the writers: the loser cannot have read first")
    with pytest.raises(PresenceError) as lost:
        racing.answer("a" * 32, 7, "0b0b")
    assert lost.value.status == 409
    assert store.get("a" * 32, 7).state == "answered"


def test_a_second_answer_reported_as_answered_by_another_is_409(db: HubDB) -> None:
    """The same race on any database: the update that finds no "claimed" row (another
    request moved it) is a 409."""
    clock = Clock()
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: None, clock=clock)
    store = PresenceStore(db.engine, clock=clock)
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("12345678", "a" * 32))
    store.claim("12345678", 7, "h7")
    store.answer("a" * 32, 7, "0a0a")  # the winner
    first = store._mine
    calls = [0]

    def mine(conn: Any, offer_id: str, user_id: int) -> Any:
        row = first(conn, offer_id, user_id)
        calls[0] += 1
        if calls[0] == 1:  # what it read before the winner committed
            return SimpleNamespace(**{**row._mapping, "state": "claimed"})
        return row

    store._mine = mine  # type: ignore[method-assign]
    with pytest.raises(PresenceError) as lost:
        store.answer("a" * 32, 7, "0b0b")
    assert lost.value.status == 409
    from sqlalchemy import select

    from hub.schema import presence_offers

    with db.engine.connect() as conn:
        assert conn.execute(select(presence_offers.c.answer)).scalar() == "0a0a"


# ------------------------------------------------------------------ the node


def test_a_replayed_relayed_answer_records_nothing_at_the_node(world: dict[str, Any]) -> None:
    """Anyone on the broker can record the hub's sealed relay and publish it again. The
    node judged that offer once; a replay must not make a tap and an auth event (and a
    result) each time, or a loop on the broker fills the node's outbox."""
    presence, uplink, verdicts = node_presence(world)
    offer_id, _, hello = hub_view(uplink)
    pending = answer(world["alice"], hello)
    assert relay(presence, uplink, offer_id, "halice", pending.answer).reason == "ok"
    published = len(uplink.published)
    payload = seal_answer(KEY, NODE, RelayedAnswer(offer_id=offer_id, handset_id="halice",
                                                   answer=pending.answer.hex()))
    for _ in range(100):
        presence.on_answer(payload)
    assert len(verdicts) == 1 and len(uplink.published) == published
    assert presence.replayed == 100
    # an answer for an offer this node never made (another node's, or one from before
    # a restart) is dropped the same way
    presence.on_answer(seal_answer(KEY, NODE, RelayedAnswer(
        offer_id="9" * 32, handset_id="halice", answer=pending.answer.hex())))
    assert len(verdicts) == 1 and presence.replayed == 101


def test_an_answer_for_an_expired_offer_is_refused_once(world: dict[str, Any]) -> None:
    """The hub may relay an answer the node no longer takes (the offer expired and was
    pruned, or pushed out by newer ones): one unknown_offer verdict, then silence."""
    now = [1000.0]
    presence, uplink, verdicts = node_presence(world, monotonic=lambda: now[0])
    offer_id, _, hello = hub_view(uplink)
    pending = answer(world["alice"], hello)
    now[0] += 60 + 30 + 10 + 1
    presence._rotate()  # prunes the expired offer (and shows a new code)
    assert offer_id not in presence.live
    assert relay(presence, uplink, offer_id, "halice", pending.answer).reason == "unknown_offer"
    published = len(uplink.published)
    presence.on_answer(seal_answer(KEY, NODE, RelayedAnswer(
        offer_id=offer_id, handset_id="halice", answer=pending.answer.hex())))
    assert len(verdicts) == 1 and len(uplink.published) == published


# ------------------------------------------------------------------ the web


def test_codes_guessed_across_accounts_from_one_address_are_limited(
        hub_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten failures a minute per account does not bound one address that registered
    many accounts (twenty an hour): failures are limited per address too."""
    import hub.accounts
    from hall.testing.hub import cheap_password_hashing
    from hub import create_app, get_db
    from hub.config import HubConfig
    from hub.handsets_api import PRESENCE_ADDRESS_LIMIT
    from tapcast.config import load
    from tapcast.keys import HubAuthority
    from tests.test_hub_handsets import register

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())
    HubAuthority.generate().save(tmp_path / "keys")
    app = create_app(load(HubConfig, data={"hub": {
        "database": hub_database, "files": str(tmp_path / "files"),
        "signing_key": str(tmp_path / "keys" / "hub.key")}}, environ={}))
    try:
        client = app.test_client()
        per_address = int(PRESENCE_ADDRESS_LIMIT.split()[0])
        accounts = [register(client, f"guesser{n}") for n in range(per_address // 10 + 1)]
        statuses = []
        for n in range(per_address + 5):
            who = accounts[n // 10]
            statuses.append(client.post("/api/v1/presence", json={"code": f"{n:08d}"},
                                        headers={"Authorization": f"Bearer {who['token']}"})
                            .status_code)
        assert statuses[:per_address] == [404] * per_address
        assert set(statuses[per_address:]) == {429}
        # another address is not held back
        other = client.post("/api/v1/presence", json={"code": "00000000"},
                            environ_base={"REMOTE_ADDR": "10.9.8.7"},
                            headers={"Authorization": f"Bearer {accounts[-1]['token']}"})
        assert other.status_code == 404
    finally:
        get_db(app).close()


# ------------------------------------------------------------------ the app's client


@pytest.mark.parametrize("claim,state", [
    ([], None),  # not an object
    ({"id": "a" * 32}, None),  # no hello
    ("bad id", None),  # an id that is not one, with a genuine HELLO
    ({"id": "a" * 32, "hello": 7}, None),
    ("valid", {"state": "confirmed", "confirm": "not hex"}),
    ("valid", {"state": "confirmed", "confirm": 5}),
    ("valid", {"state": 3}),
    ("valid", ["confirmed"]),
])
def test_a_hub_answering_garbage_is_a_code_refused_not_a_crash(
        world: dict[str, Any], claim: Any, state: Any) -> None:
    """The app must survive a broken hub (or whatever answers at its address) with a
    HubError it shows, never a KeyError/TypeError/ValueError out of present_code."""
    from handset_app.hubclient import HubClient, HubError

    presence, uplink, _ = node_presence(world)
    offer_id, _, hello = hub_view(uplink)
    if claim == "valid":
        claim = {"id": offer_id, "hello": hello, "state": "claimed"}
    if claim == "bad id":
        claim = {"id": "../../handsets", "hello": hello, "state": "claimed"}
    client = HubClient("http://hub.invalid", token="tc1_x")
    calls: list[str] = []

    def call(method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        calls.append(path)
        if path == "/api/v1/presence":
            return claim
        if path.endswith("/answer"):
            return {"state": "answered"}
        return state

    client._call = call  # type: ignore[method-assign]
    with pytest.raises(HubError):
        client.present_code("12345678", world["alice"], timeout=0.2, poll=0.01)
    assert not any(".." in p for p in calls)


@pytest.mark.parametrize("issued", [
    [], {}, {"handset_id": "h1", "certificate": "zz", "hub_public_keys": ["00"],
             "token": "t"},
    {"handset_id": "h1", "certificate": "00", "hub_public_keys": [], "token": "t"},
    {"handset_id": 5, "certificate": "00", "hub_public_keys": ["00"], "token": "t"},
])
def test_a_hub_answering_garbage_to_a_sign_in_is_a_hub_error(issued: Any) -> None:
    from handset_app.hubclient import HubClient, HubError

    client = HubClient("http://hub.invalid")
    client._call = lambda *a, **k: issued  # type: ignore[method-assign]
    with pytest.raises(HubError) as garbled:
        client.sign_in("alice", "a long walk by the river")
    assert garbled.value.status == 502 and client.token is None


# ------------------------------------------------------------------ public bodies


@pytest.fixture
def web(hub_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import hub.accounts
    from hall.testing.hub import cheap_password_hashing
    from hub import create_app, get_db
    from hub.config import HubConfig
    from tapcast.config import load
    from tapcast.keys import HubAuthority

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())
    HubAuthority.generate().save(tmp_path / "keys")
    app = create_app(load(HubConfig, data={"hub": {
        "database": hub_database, "files": str(tmp_path / "files"),
        "signing_key": str(tmp_path / "keys" / "hub.key")}}, environ={}))
    yield app
    get_db(app).close()


class Endless:
    """A request body that says it is 50 MB and counts what the hub reads of it."""

    def __init__(self) -> None:
        self.read_bytes = 0
        self.head = b'{"username": "alice", "password": "'

    def read(self, n: int = -1) -> bytes:
        n = 1 << 20 if n is None or n < 0 else min(n, 1 << 20)
        chunk = (self.head + b"x" * n)[:n]
        self.head = self.head[len(chunk):]
        self.read_bytes += len(chunk)
        return chunk


@pytest.mark.parametrize("url", ["/api/v1/handsets/signin", "/api/v1/handsets"])
def test_a_public_route_reads_no_more_than_a_small_body(web: Any, url: str) -> None:
    """Anyone may post to the public routes, and a 400 there is not counted towards a
    limit: each must refuse a body far larger than its own (413) without reading it
    (the app-wide bound is the content upload's, 100 MB by default)."""
    from hub.handsets_api import MAX_BODY

    client = web.test_client()
    for declared in (True, False):
        body = Endless()
        headers = {"Content-Type": "application/json"}
        environ: dict[str, Any] = {"wsgi.input": body}
        if declared:
            environ["CONTENT_LENGTH"] = "50000000"
        else:  # chunked: no length said
            environ.update({"wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
        r = client.post(url, headers=headers, environ_overrides=environ)
        assert r.status_code == 413, (declared, r.status_code, r.get_json())
        assert body.read_bytes <= MAX_BODY + 1, body.read_bytes


def test_successful_sign_ins_are_limited_per_user_name(web: Any) -> None:
    """Each sign-in makes a handset row, a certificate and a token (the old one is kept,
    revoked): a script with the password must not make them without end."""
    from hub.handsets_api import ISSUE_LIMIT
    from tests.test_hub_handsets import PASSWORD, new_key, register

    client = web.test_client()
    register(client, "carol")
    limit = int(ISSUE_LIMIT.split()[0])
    statuses = [client.post("/api/v1/handsets/signin", json={
        "username": "carol", "password": PASSWORD, "public_key": new_key()[1]}).status_code
        for _ in range(limit + 2)]
    assert statuses == [200] * limit + [429, 429]


def test_the_node_survives_any_answer_the_hub_relays(world: dict[str, Any]) -> None:
    """The hub relays whatever hex an account posted (up to 4096 digits): random bytes,
    truncations and bit flips of a genuine answer each get a verdict, never an
    exception; garbled or forged relays are counted apart and dropped."""
    import random

    from tapcast.protocol.mqtt import seal
    from tapcast.protocol.presence import ANSWER_CONTEXT

    rng = random.Random(9)
    presence, uplink, verdicts = node_presence(world)
    genuine = answer(world["alice"], hub_view(uplink)[2]).answer
    bodies = [rng.randbytes(rng.randrange(0, 2048)) for _ in range(60)]
    bodies += [genuine[:n] for n in range(0, len(genuine), 17)]
    bodies += [genuine[:i] + bytes([genuine[i] ^ 0x40]) + genuine[i + 1:]
               for i in range(0, len(genuine), 23)]
    for body in bodies:
        presence.new_code()
        offer_id = hub_view(uplink)[0]
        result = relay(presence, uplink, offer_id, "halice", body)
        assert result.reason != "ok" and result.reason in (
            "malformed", "bad_signature", "unknown_key_id", "unknown_issuer",
            "not_yet_valid", "expired_certificate", "revoked", "stale", "wrong_handset")
    assert len(verdicts) == len(bodies)
    topic = presence_topic(NODE, "presence/answer")
    presence.on_answer(seal(KEY, ANSWER_CONTEXT, topic, b'{"offer_id": 1}'))
    presence.on_answer(b"t1." + b"0" * 32 + b".{}")
    presence.on_answer(b"")
    assert (presence.malformed, presence.forged) == (1, 2)
    assert len(verdicts) == len(bodies)


def test_two_sign_ins_at_once_leave_one_handset_and_one_live_token(
        web: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sign-ins of one account at the same moment (two web workers): each marks the
    handsets it sees replaced, but one that commits while the other waits must not be
    missed, or the account keeps two current handsets and a token never revoked."""
    import threading

    import hub.handsets
    from hub.accounts import Actor
    from hub.handsets_api import handsets
    from tests.test_hub_handsets import PASSWORD, new_key, register

    client = web.test_client()
    register(client, "dave")
    with web.app_context():
        store = handsets(web)
    if store.engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises the writers")
    insert = hub.handsets.insert
    first_in = threading.Event()

    def slow_insert(*args: Any, **kwargs: Any) -> Any:
        # the first sign-in holds its transaction open after marking the old handset
        # replaced, before it writes the account row
        if not first_in.is_set():
            first_in.set()
            time.sleep(0.5)
        return insert(*args, **kwargs)

    monkeypatch.setattr(hub.handsets, "insert", slow_insert)
    issued: list[Any] = []

    def sign_in() -> None:
        issued.append(store.sign_in(Actor(None, "test", "api", None), "dave", PASSWORD,
                                    bytes.fromhex(new_key()[1])))

    one = threading.Thread(target=sign_in)
    one.start()
    assert first_in.wait(5)
    two = threading.Thread(target=sign_in)
    two.start()
    one.join(10)
    two.join(10)
    assert len(issued) == 2
    from sqlalchemy import select

    from hub.schema import handsets as table
    from hub.schema import users

    with store.engine.connect() as conn:
        current = conn.execute(select(table.c.handset_id).where(
            table.c.replaced_at.is_(None))).scalars().all()
        mine = conn.execute(select(users.c.handset_id).where(
            users.c.username == "dave")).scalar()
    assert current == [mine], (current, mine)
    live = [i for i in issued if client.get(
        "/api/v1/presence/" + "0" * 32,
        headers={"Authorization": f"Bearer {i.token}"}).status_code != 401]
    assert [i.handset_id for i in live] == [mine]


def test_two_claims_of_one_code_at_once_give_it_to_one_account(
        db: HubDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two web workers claim one code at the same moment: both read it open; the update
    that finds it no longer open is a 409 (PostgreSQL; SQLite serialises writers)."""
    import threading

    import hub.presence

    if db.engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises the writers")
    clock = Clock()
    PresenceRelay(db.engine, SECRET, lambda t, p: None, clock=clock).handle(
        PRESENCE_OFFER, NODE, offer_payload("12345678", "a" * 32))
    update = hub.presence.update
    first_in, second_done = threading.Event(), threading.Event()

    def slow_update(*args: Any, **kwargs: Any) -> Any:
        if not first_in.is_set():  # the first read it open, then waits
            first_in.set()
            second_done.wait(5)
        return update(*args, **kwargs)

    monkeypatch.setattr(hub.presence, "update", slow_update)
    outcomes: dict[int, Any] = {}

    def claim(user: int) -> None:
        try:
            outcomes[user] = PresenceStore(db.engine, clock=clock).claim(
                "12345678", user, f"h{user}").state
        except PresenceError as exc:
            outcomes[user] = exc.status
        finally:
            if user == 2:
                second_done.set()

    one = threading.Thread(target=claim, args=(1,))
    one.start()
    assert first_in.wait(5)
    claim(2)
    one.join(10)
    assert outcomes == {1: 409, 2: "claimed"}


def test_the_phone_survives_any_hello_and_confirmation(world: dict[str, Any]) -> None:
    """What the hub gives the phone (the node's HELLO, the CONFIRM MAC) is untrusted:
    garbled, truncated or bit-flipped, it is refused with the exceptions hubclient
    handles, and a wrong MAC gives no session."""
    import random

    from tapcast.protocol.nfc import HelloRejected, ProtocolError

    rng = random.Random(3)
    presence, uplink, _ = node_presence(world)
    hello = bytes.fromhex(hub_view(uplink)[2])
    hellos = [rng.randbytes(rng.randrange(0, 600)) for _ in range(100)]
    hellos += [hello[:n] for n in range(0, len(hello), 7)]
    hellos += [hello[:i] + bytes([hello[i] ^ 0x10]) + hello[i + 1:]
               for i in range(0, len(hello), 5)]
    hellos += [hello + b"\x00", hello + rng.randbytes(300)]
    for bad in hellos:
        with pytest.raises((HelloRejected, ProtocolError, ValueError)):
            answer(world["alice"], bad.hex())
    pending = answer(world["alice"], hello.hex())
    for mac in (b"", b"\x00" * 32, b"\x00" * 31, rng.randbytes(64)):
        assert pending.confirm(mac) is None


def test_a_node_cannot_report_a_verdict_on_another_nodes_session(db: HubDB) -> None:
    """node-2 seals with its own key, on its own topic, a result for node-1's offer (its
    id is on the broker in clear): the hub ignores it (late), node-1's session waits."""
    from tapcast.protocol.presence import Result, seal_result

    clock = Clock()
    sent: list[Any] = []
    relay = PresenceRelay(db.engine, SECRET, lambda t, p: sent.append(t), clock=clock)
    store = PresenceStore(db.engine, clock=clock)
    relay.handle(PRESENCE_OFFER, NODE, offer_payload("12345678", "a" * 32))
    store.claim("12345678", 7, "h7")
    store.answer("a" * 32, 7, "0102")
    assert relay.relay() == 1 and sent == [presence_topic(NODE, "presence/answer")]
    other = stream_key(SECRET, "node-2")
    relay.handle(PRESENCE_RESULT, "node-2", seal_result(other, "node-2", Result(
        offer_id="a" * 32, reason="ok", confirm="cc" * 32)))
    assert relay.counters.late == 1 and relay.counters.results == 0
    assert store.get("a" * 32, 7).state == "relayed"
    # nor an offer: node-2 offering node-1's offer id stores nothing new
    relay.handle(PRESENCE_OFFER, "node-2", seal_offer(other, "node-2", Offer(
        offer_id="a" * 32, code=seal_code(other, "a" * 32, "87654321"), ttl=60.0,
        hello="00")))
    with pytest.raises(PresenceError):
        store.claim("87654321", 8, "h8")


@pytest.mark.parametrize("body", [b"<html>not json</html>", b"[1, 2]", b"\xff\xfe",
                                  b"{" + b" " * (300 * 1024) + b"}"])
def test_the_apps_client_reads_a_garbled_or_huge_answer_as_a_hub_error(body: bytes) -> None:
    """Over real HTTP: whatever answers at the hub's address (a captive portal, a
    proxy) gives a HubError 502, and the client reads no more than MAX_ANSWER."""
    import http.server
    import threading

    from handset_app.hubclient import HubClient, HubError

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            # the request read whole first: a server closing with it unread resets the
            # connection (RST), and the client may see that before the answer
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = HubClient(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(HubError) as garbled:
            client.register("erin", "a long walk by the river")
        assert garbled.value.status == 502
    finally:
        server.shutdown()
        server.server_close()
