"""Review of the handset core against hostile peers (issue 9): a node that acknowledges
open records it never got, re-sends one item with ever new bytes or pushes item after
item; a phone that reports refusals and open records for what it never received; and
the phone's local data after reset_identity / delete_local_data. Real stacks: bumble on
the hall's virtual air, the node daemon and its outbox."""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from hall.virtual import HallNode, VirtualHall
from handset_app.phone import Phone
from tapcast.protocol import ble
from tapcast.protocol.openrecord import OpenRecord
from tests.phone_support import Recorder, attached, pair, tap

__all__ = ["pair"]  # the fixture

pytestmark = pytest.mark.timeout(60)


def node_events(node: HallNode, kind: str) -> list[dict]:
    assert node.daemon is not None
    return [e.data for e in node.daemon.outbox.pending(10_000) if e.kind == kind]


def media(item_id: str, data: bytes) -> ble.ContentItem:
    return ble.ContentItem(id=item_id, title=item_id, kind="media", body="",
                           sha256=hashlib.sha256(data).hexdigest(), media_type="image/png",
                           size=len(data), data=data)


# ------------------------------------------------------------- a hostile node


async def test_a_node_cannot_make_the_phone_drop_open_records_it_was_never_sent(
        pair: tuple[VirtualHall, Phone]) -> None:
    """One Opened carries at most 100 records; a node acknowledging counters beyond
    those (or any it likes) must not make the phone forget records no node has."""
    hall, phone = pair
    for counter in range(1, ble.MAX_OPEN_RECORDS + 2):
        phone.store.add_pending_record(counter, b"record %d" % counter)
    async with attached(hall, phone) as (node, rec):
        opened = await asyncio.wait_for(node.receive(), 5)
        assert isinstance(opened, ble.Opened) and len(opened.records) == ble.MAX_OPEN_RECORDS
        await node.send(ble.OpenedAck(list(range(1, 10_000))))
        await node.send(ble.Bye("done"))
        await phone._session.wait_closed()  # type: ignore[union-attr]
    assert [c for c, _ in phone.store.pending_opens(1000)] == [ble.MAX_OPEN_RECORDS + 1]


async def test_an_item_sent_again_with_other_bytes_leaves_one_file_not_a_pile(
        pair: tuple[VirtualHall, Phone]) -> None:
    """The inbox keeps one entry per item id; the files of the entries it replaced must
    go too, or a node re-sending one id with fresh bytes fills the phone's storage."""
    hall, phone = pair
    async with attached(hall, phone) as (node, rec):
        for n in range(3):
            await node.send(media("map", os.urandom(2000)))
            await rec.wait("on_item", lambda e, n=n: len(rec.of("on_item")) > n)
        await node.close("done")
    [entry] = phone.inbox()
    assert entry.file is not None
    assert sorted(p.name for p in phone.store.files_dir.iterdir()) == [entry.file.name]


async def test_a_node_pushes_one_unrequested_item_a_session_not_a_flood(
        pair: tuple[VirtualHall, Phone]) -> None:
    """A node sends its featured item unrequested and the rest on request; a node that
    keeps pushing unrequested items (with no cap set) is refused after a few a session
    instead of filling the phone."""
    hall, phone = pair
    async with attached(hall, phone) as (node, rec):
        for n in range(10):
            await node.send(media(f"spam-{n}", os.urandom(1000)))
        await rec.wait("on_refused", lambda item, _r: item == "spam-9")
        refusal = await asyncio.wait_for(node.receive(), 5)
        while isinstance(refusal, ble.Opened):
            refusal = await asyncio.wait_for(node.receive(), 5)
        assert isinstance(refusal, ble.Refused) and refusal.reason == "cap"
        await node.close("done")
    from handset_app.phone import MAX_UNREQUESTED_PER_SESSION
    assert len(phone.inbox()) == MAX_UNREQUESTED_PER_SESSION
    assert len(list(phone.store.files_dir.iterdir())) == MAX_UNREQUESTED_PER_SESSION


# ------------------------------------------------------------- a hostile phone


async def test_refusals_count_only_for_items_the_node_delivered_and_once_each(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    node = hall.nodes[0]
    rec = Recorder()
    session = await phone.tap(node.nfc_device, rec)
    await rec.wait("on_catalogue")
    [delivered] = rec.of("on_item")
    item = delivered[0].item_id
    for _ in range(50):  # a flood, and refusals of what it never got
        await session._send(ble.Refused(item, 0, "kind"))
        await session._send(ble.Refused("coffee-coupon", 0, "kind"))
        await session._send(ble.Refused("x" * 60, 0, "cap"))
    await session.leave()
    assert node.daemon is not None
    await node.daemon.wait_idle()
    assert [(e["item_id"], e["reason"]) for e in node_events(node, "refused")] == [(item, "kind")]


async def test_open_records_a_session_takes_are_bounded(
        pair: tuple[VirtualHall, Phone]) -> None:
    """Each Opened carries at most 100 records, but a phone may send many: the node
    takes at most 100 a session (the rest wait for a later contact, as the phone's
    own queue does) and an event per counter, however often it is repeated."""
    hall, phone = pair
    node = hall.nodes[0]
    await tap(phone, node)
    assert phone.credentials is not None
    creds = phone.credentials
    records = [OpenRecord(creds.handset_id, "welcome", 0, node.node_id, int(time.time()),
                          c).sign(creds.private_key) for c in range(1, 301)]
    rec = Recorder()
    session = await phone.tap(node.nfc_device, rec)
    await rec.wait("on_catalogue")
    for first in (0, 0, 100, 200):
        await session._send(ble.Opened(records[first:first + 100]))
        await session._send(ble.Opened([b"garbage"] * 100))
    await session.leave()
    assert node.daemon is not None
    await node.daemon.wait_idle()
    opens, refused = node_events(node, "open"), node_events(node, "open_refused")
    assert len(opens) + len(refused) <= ble.MAX_OPEN_RECORDS
    assert len({e["counter"] for e in opens}) == len(opens)


# ------------------------------------------------------------- local data


async def test_reset_identity_starts_a_new_counter_so_the_new_id_is_not_linkable(
        pair: tuple[VirtualHall, Phone]) -> None:
    """The hub counts per (handset, counter): a new identity may start at 1, and must,
    or its first counter says which old identity it was."""
    hall, phone = pair
    await tap(phone, hall.nodes[0])
    for _ in range(3):
        phone.open_item("welcome")
    phone.reset_identity()
    assert not (phone.data_dir / "identity").exists()
    from tapcast.keys import make_handset_credentials
    phone.install_credentials(make_handset_credentials(hall.authority, "phone-2",
                                                       time.time() + 3600))
    phone.open_item("welcome")
    assert [c for c, _ in phone.store.pending_opens(10)] == [1]


async def test_delete_local_data_leaves_nothing_of_the_items_on_disk(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    secret = b"SECRET-ARTICLE-" + os.urandom(8).hex().encode()
    async with attached(hall, phone) as (node, rec):
        body = secret.decode()
        await node.send(ble.ContentItem(id="secret", title="Secret", kind="article",
                                        body=body, sha256=hashlib.sha256(secret).hexdigest()))
        await node.send(media("pic", os.urandom(500)))
        await rec.wait("on_item", lambda e: e.item_id == "pic")
        await node.close("done")
    phone.open_item("secret")
    cache = phone.data_dir / "app-cache"  # what a front end keeps beside the store
    cache.mkdir()
    (cache / "pic.png").write_bytes(b"x")
    (phone.data_dir / "hub.json").write_text("{}")  # the account: the identity's, kept
    phone.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an inbox of some age
    phone.store.db.execute("PRAGMA secure_delete = OFF")  # SQLite's default (Debian's: ON)
    assert secret in (phone.data_dir / "phone.db").read_bytes()
    phone.delete_local_data()
    assert phone.inbox() == [] and phone.pending_events() == 0
    assert (phone.data_dir / "hub.json").exists()
    left = [p for p in phone.data_dir.rglob("*") if p.is_file()
            and "identity" not in p.relative_to(phone.data_dir).parts and p.name != "hub.json"]
    assert all(p.name.startswith("phone.db") for p in left), left
    for p in left:
        assert secret not in p.read_bytes() and b"node-x" not in p.read_bytes(), p
    assert phone.store.get_meta("open_counter") == "1"  # never reused by this identity


def test_the_counter_survives_delete_local_data_even_when_killed_in_the_middle(
        tmp_path: Path) -> None:
    """delete_local_data must not have a moment where the counter exists nowhere: a
    kill -9 there would make the next records reuse counters the hub counted."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from handset_app.phone import Phone
        phone = Phone(Path({str(tmp_path)!r}))
        phone.store.set_meta("open_counter", "41")
        real = Path.unlink
        def die(self, *a, **k):
            real(self, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        Path.unlink = die
        import shutil
        shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        phone.delete_local_data()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], check=False)
    phone = Phone(tmp_path)
    try:
        assert phone.store.get_meta("open_counter") == "41"
    finally:
        phone.store.close()


def test_a_kill_while_a_file_is_written_leaves_no_half_file_and_no_orphan(
        tmp_path: Path) -> None:
    """kill -9 after the bytes went to the temporary name (before the rename), and
    after the rename before the inbox entry: the next start finds neither."""
    import subprocess
    import sys
    import textwrap

    for where in ("replace", "add_item"):
        script = textwrap.dedent(f"""
            import os, signal
            from pathlib import Path
            from handset_app.phonestore import PhoneStore
            store = PhoneStore(Path({str(tmp_path)!r}))
            if {where!r} == "replace":
                os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
            store.keep_file("{'ab' * 32}", b"x" * 100_000)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1],
                       check=False)
        assert list((tmp_path / "files").iterdir()), where  # something was left ...
        from handset_app.phonestore import PhoneStore
        PhoneStore(tmp_path).close()
        assert list((tmp_path / "files").iterdir()) == [], where  # ... and is gone
    (tmp_path / "files" / "a-folder").mkdir()  # not ours to remove, and no reason to fail
    PhoneStore(tmp_path).close()


async def test_node_chosen_titles_merchants_and_types_never_name_a_file(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    nasty = "../../" + "\x00\n\x1b[2J/etc/passwd" + "x" * 3000
    async with attached(hall, phone) as (node, rec):
        data = os.urandom(300)
        await node.send(ble.ContentItem(
            id="nasty", title=nasty, kind="media", body=nasty, merchant=nasty,
            sha256=hashlib.sha256(data).hexdigest(), media_type="../" + nasty, size=300,
            data=data))
        [entry] = await rec.wait("on_item")
        await node.close("done")
    assert entry.file == phone.store.files_dir / hashlib.sha256(data).hexdigest()
    assert [p.name for p in phone.store.files_dir.iterdir()] == [entry.file.name]
    assert [p for p in phone.data_dir.parent.rglob("*passwd*")] == []
    assert phone.item("nasty") == entry and entry.title == nasty  # text, kept as it came


async def test_an_item_that_could_never_be_opened_is_not_kept(
        pair: tuple[VirtualHall, Phone]) -> None:
    """An open record names the item by id and version (an id of letters, digits, '_'
    and '-', a uint32): an item without such an id or version would sit in the inbox
    and make open_item raise (in the app: from a touch on the inbox)."""
    hall, phone = pair
    body = "text"
    sha = hashlib.sha256(body.encode()).hexdigest()
    async with attached(hall, phone) as (node, rec):
        for item_id, version in (("a b", 1), ("x" * 65, 1), ("fine", -1), ("fine", 2**32),
                                 ("fine", 3)):
            await node.send(ble.ContentItem(id=item_id, title="T", kind="article", body=body,
                                            sha256=sha, version=version))
        await rec.wait("on_item")
        await node.close("done")
    assert [(e.item_id, e.version) for e in phone.inbox()] == [("fine", 3)]
    assert len(rec.of("on_error")) >= 4


def test_open_item_of_an_entry_no_record_can_name_does_not_raise(tmp_path: Path) -> None:
    """Entries kept before the check (or by an older version of the app)."""
    from handset_app.phonestore import InboxEntry
    from tapcast.keys import HubAuthority, make_handset_credentials

    phone = Phone(tmp_path)
    try:
        phone.install_credentials(make_handset_credentials(HubAuthority.generate(), "phone-1",
                                                           time.time() + 3600))
        phone.store.add_item(InboxEntry("a b", 1, "article", "T", "", None, None, "",
                                        "node-1", "z", 1.0, False, False))
        phone.open_item("a b")
        assert phone.item("a b").opened and phone.pending_events() == 0
    finally:
        phone.store.close()


async def test_one_request_lets_one_item_through_even_when_it_fails_its_check(
        pair: tuple[VirtualHall, Phone]) -> None:
    """A request consents to one item; a node answering it with bytes that fail their
    check must not keep the request open for as many tries (each maybe a 200 MiB
    download) as it likes, past quiet hours and the cap."""
    hall, phone = pair
    from handset_app.consent import Consent

    phone.set_consent(Consent(daily_cap=0))
    async with attached(hall, phone) as (node, rec):
        await phone._session.request("x")  # type: ignore[union-attr]
        body = "the real thing"
        await node.send(ble.ContentItem(id="x", title="X", kind="article", body=body,
                                        sha256=hashlib.sha256(b"other").hexdigest()))
        await rec.wait("on_error", lambda m: "sha256" in m)
        await node.send(ble.ContentItem(id="x", title="X", kind="article", body=body,
                                        sha256=hashlib.sha256(body.encode()).hexdigest()))
        await rec.wait(("on_item", "on_refused"))
        await node.close("done")
    assert rec.of("on_refused") == [("x", "cap")] and phone.inbox() == []
