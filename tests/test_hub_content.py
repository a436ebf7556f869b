"""The content library (hub/content.py, hub/files.py) on SQLite and PostgreSQL, its API
and its pages: versions are immutable, uploads are checked and never half-stored,
targeting and schedules decide what a node gets, and the sample library imports
through the same checks (twice changes nothing)."""
from __future__ import annotations

import hashlib
import io
import re
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select

from hall.cli import main as cli
from hall.testing.hub import api_token, cheap_password_hashing, make_user
from hub import create_app, get_db
from hub.accounts import Actor
from hub.config import HubConfig
from hub.content import ContentError, ContentLibrary, ItemInput, Targets, import_directory
from hub.content_api import library
from hub.schema import content_files
from tapcast.config import load
from tapcast.schedule import Schedule, Window

REPO = Path(__file__).resolve().parent.parent
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000"
                    "000d4944415478da63f8cfc0f01f0005000201a5c7d2a10000000049454e44ae426082")
PDF = (REPO / "content" / "files" / "metro-map.pdf").read_bytes()
EXE = b"MZ\x90\x00" + bytes(200)
CLI = Actor.cli()
PASSWORD = "correct horse battery staple"


@pytest.fixture
def config(hub_database: str, tmp_path: Path) -> HubConfig:
    return load(HubConfig, data={"hub": {"database": hub_database,
                                         "files": str(tmp_path / "files"),
                                         "max_file_mb": 1}}, environ={})


@pytest.fixture
def app(config: HubConfig) -> Iterator[Flask]:
    app = create_app(config)
    yield app
    get_db(app).close()


@pytest.fixture
def lib(app: Flask) -> ContentLibrary:
    return library(app)


def stored_files(lib: ContentLibrary) -> list[Path]:
    """Every file in the store, temporary ones included."""
    return sorted(p for p in lib.files.root.rglob("*") if p.is_file()) \
        if lib.files.root.exists() else []


def file_rows(lib: ContentLibrary) -> int:
    with lib.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(content_files)).scalar_one()


def coupon(lib: ContentLibrary, key: str = "coffee", **placement: object) -> dict:
    png = lib.store_file(io.BytesIO(PNG), "coupon")
    return lib.create(CLI, key, "coupon", ItemInput("Coffee", "Second cup free", 0, png,
                                                    "coffee.png"), **placement)


# ------------------------------------------------------------------ versions


def test_a_new_item_is_version_1_with_its_file_kept_once_under_its_sha256(
        lib: ContentLibrary) -> None:
    item = coupon(lib)
    sha = hashlib.sha256(PNG).hexdigest()
    assert item["current"] == 1 and item["version"]["title"] == "Coffee"
    assert item["version"]["file"] == {"sha256": sha, "size": len(PNG),
                                       "media_type": "image/png", "name": "coffee.png"}
    assert lib.files.path(sha).read_bytes() == PNG
    coupon(lib, "tea")  # the same bytes again: one file
    assert stored_files(lib) == [lib.files.path(sha)] and file_rows(lib) == 1


def test_an_edit_is_a_new_version_and_the_old_one_stays_as_it_was(
        lib: ContentLibrary) -> None:
    coupon(lib)
    edited = lib.revise(CLI, "coffee", ItemInput(title="Coffee, all day"))
    assert edited["current"] == 2 and edited["version"]["title"] == "Coffee, all day"
    assert edited["version"]["file"]["name"] == "coffee.png"  # kept: not given
    old, = [v for v in lib.versions("coffee") if v["version"] == 1]
    assert old["title"] == "Coffee" and old["body"] == "Second cup free"


def test_an_edit_that_changes_nothing_is_refused(lib: ContentLibrary) -> None:
    coupon(lib)
    with pytest.raises(ContentError, match="nothing changed"):
        lib.revise(CLI, "coffee", ItemInput(title="Coffee"))
    assert [v["version"] for v in lib.versions("coffee")] == [1]


def test_an_items_merchant_is_versioned_checked_and_goes_into_its_manifest(
        lib: ContentLibrary) -> None:
    from hub.manifests import Snapshot

    lib.create(CLI, "ticket", "ticket", ItemInput("Show", "Tonight", 0, merchant="Hall Cinema"),
               targets=Targets(everywhere=True))
    assert lib.get("ticket")["version"]["merchant"] == "Hall Cinema"
    moved = lib.revise(CLI, "ticket", ItemInput(merchant="Other Cinema"))  # a change alone
    assert moved["current"] == 2 and moved["version"]["merchant"] == "Other Cinema"
    assert lib.revise(CLI, "ticket", ItemInput(title="Show!"))["version"]["merchant"] == \
        "Other Cinema"  # kept when not given
    [item] = Snapshot.load(lib.engine).for_node("n1", None)
    assert item.merchant == "Other Cinema"
    for bad in ("x" * 65, "tab\there", " padded"):
        with pytest.raises(ContentError, match="merchant"):
            lib.revise(CLI, "ticket", ItemInput(merchant=bad))


def test_a_key_taken_is_a_conflict(lib: ContentLibrary) -> None:
    coupon(lib)
    with pytest.raises(ContentError, match="exists already") as exc:
        coupon(lib)
    assert exc.value.status == 409


def test_a_retired_item_reaches_no_node_and_takes_no_new_version(
        lib: ContentLibrary) -> None:
    coupon(lib, targets=Targets(everywhere=True))
    assert [i["key"] for i in lib.for_node("n1")] == ["coffee"]
    lib.retire(CLI, "coffee")
    assert lib.for_node("n1") == []
    with pytest.raises(ContentError, match="retired") as exc:
        lib.revise(CLI, "coffee", ItemInput(title="Back"))
    assert exc.value.status == 409


def test_every_change_is_in_the_audit_log_with_before_and_after(app: Flask,
                                                                 lib: ContentLibrary) -> None:
    from hub.auth import accounts

    coupon(lib)
    lib.revise(CLI, "coffee", ItemInput(title="Coffee 2"))
    lib.place(CLI, "coffee", targets=Targets(zones=("lobby",)))
    lib.set_group(CLI, "screens", ["n1"])
    lib.create_campaign(CLI, "spring", "Spring")
    lib.set_campaign_items(CLI, "spring", ["coffee"])
    lib.place_campaign(CLI, "spring", targets=Targets(zones=("lobby",)))
    lib.retire_campaign(CLI, "spring")
    lib.retire(CLI, "coffee")
    with app.app_context():
        entries = accounts().audit_entries(limit=20)
    assert [e["action"] for e in entries] == [
        "content.retire", "campaign.retire", "campaign.place", "campaign.items",
        "campaign.create", "group.set", "content.place", "content.revise",
        "content.create"]
    place = entries[6]
    assert entries[3]["after"]["items"] == ["coffee"]
    assert place["before"]["targets"]["zones"] == []
    assert place["after"]["targets"]["zones"] == ["lobby"]


# ------------------------------------------------------------------ uploads


@pytest.mark.parametrize("kind,data,status,says", [
    ("coupon", EXE, 415, "application/x-msdownload file; this kind of item takes GIF"),
    ("coupon", PDF, 415, "application/pdf file"),
    ("media", b"just some text, no type at all" * 10, 415, "not a file type the hub"),
    ("media", b"", 400, "empty"),
    ("media", PNG + bytes(1_100_000), 413, "larger than 1 MB"),
    ("ticket", PNG, 400, "carries no file"),
])
def test_a_wrong_upload_is_refused_with_the_reason_and_nothing_is_kept(
        lib: ContentLibrary, kind: str, data: bytes, status: int, says: str) -> None:
    with pytest.raises(ContentError) as exc:
        lib.store_file(io.BytesIO(data), kind)
    assert exc.value.status == status and says in str(exc.value)
    assert stored_files(lib) == [] and file_rows(lib) == 0


def test_a_media_item_needs_its_file(lib: ContentLibrary) -> None:
    with pytest.raises(ContentError, match="needs its file"):
        lib.create(CLI, "map", "media", ItemInput("Map", "", 0))


# ------------------------------------------------------------------ targeting and preview


def test_an_item_reaches_the_nodes_of_its_zones_groups_and_single_nodes_only(
        lib: ContentLibrary) -> None:
    write_node(lib, "n-lobby", "lobby")
    write_node(lib, "n-platform", "platform")
    lib.set_group(CLI, "screens", ["n-group"])
    coupon(lib, "by-zone", targets=Targets(zones=("lobby",)))
    coupon(lib, "by-group", targets=Targets(groups=("screens",)))
    coupon(lib, "by-node", targets=Targets(nodes=("n-platform",)))
    coupon(lib, "all", targets=Targets(everywhere=True))
    coupon(lib, "nowhere")
    reach = {n: [i["key"] for i in lib.for_node(n)]
             for n in ("n-lobby", "n-platform", "n-group", "n-other")}
    assert reach == {"n-lobby": ["all", "by-zone"], "n-platform": ["all", "by-node"],
                     "n-group": ["all", "by-group"], "n-other": ["all"]}


def write_node(lib: ContentLibrary, node_id: str, zone: str) -> None:
    """A node the hub has heard, with its zone (as its heartbeat reports it)."""
    import time

    from hub.db import HubDB
    from tapcast.protocol.mqtt import NodeState

    db = HubDB(lib.engine.url.render_as_string(hide_password=False))
    try:
        now = time.time()
        db.write_batch([], states=[(node_id, NodeState(node_id=node_id, ts=now, version="1",
                                                       zone=zone, uptime=1.0,
                                                       outbox_depth=0), now)])
    finally:
        db.close()


def test_the_preview_follows_the_schedule_in_the_nodes_time_zone(
        lib: ContentLibrary) -> None:
    night = Schedule(days=[4], windows=[Window("22:00", "02:00")], priority=5)
    coupon(lib, "late", targets=Targets(everywhere=True), schedule=night)
    coupon(lib, "always", targets=Targets(everywhere=True))
    berlin = ZoneInfo("Europe/Berlin")
    saturday_1am = datetime(2026, 12, 5, 1, 0, tzinfo=berlin).timestamp()
    friday_1am = datetime(2026, 12, 4, 1, 0, tzinfo=berlin).timestamp()
    on = lib.preview("n1", saturday_1am, "Europe/Berlin")
    assert on["active"] == ["always", "late"] and on["push"] == ["late", "always"]
    assert sorted(set(on["loop"])) == ["always", "late"]
    off = lib.preview("n1", friday_1am, "Europe/Berlin")
    assert off["active"] == ["always"] and off["loop"] == ["always"] * 12
    # The same instant is Friday 19:00 in New York: not the window.
    assert lib.preview("n1", saturday_1am, "America/New_York")["active"] == ["always"]


def test_a_schedule_that_does_not_hold_is_refused_with_the_field() -> None:
    from hub.content import parse_schedule

    with pytest.raises(ContentError, match="schedule: .*start"):
        parse_schedule({"windows": [{"start": "10:00", "end": "10:00"}]})


def test_an_unknown_time_zone_is_refused_and_names_what_to_use(lib: ContentLibrary) -> None:
    with pytest.raises(ContentError, match="IANA name such as Europe/Berlin"):
        lib.preview("n1", 0.0, "../../etc/passwd")


# ------------------------------------------------------------------ import


def test_the_sample_library_imports_and_importing_again_changes_nothing(
        lib: ContentLibrary) -> None:
    first = import_directory(lib, REPO / "content", CLI)
    assert set(first.created) >= {"welcome", "coffee-coupon", "metro-map"}
    assert lib.get("metro-map")["version"]["file"]["media_type"] == "application/pdf"
    assert lib.get("welcome")["targets"]["everywhere"] is True
    assert lib.get("coffee-coupon")["targets"]["zones"] == ["food-court", "lobby"]
    assert lib.get("coffee-coupon")["version"]["merchant"] == "Bean & Leaf"
    again = import_directory(lib, REPO / "content", CLI)
    assert (again.created, again.revised, again.placed) == ([], [], [])
    assert sorted(again.unchanged) == sorted(first.created)


def test_an_edited_library_file_makes_new_versions_and_placements(
        lib: ContentLibrary, tmp_path: Path) -> None:
    copy = tmp_path / "library"
    shutil.copytree(REPO / "content", copy)
    import_directory(lib, copy, CLI)
    text = (copy / "library.toml").read_text()
    text = text.replace('title = "Opening hours"', 'title = "Opening hours (winter)"')
    text = text.replace('zones = ["platform"]', 'zones = ["platform", "lobby"]')
    (copy / "library.toml").write_text(text)
    report = import_directory(lib, copy, CLI)
    assert report.revised == ["hours"] and report.placed == ["platform-notice"]
    assert lib.get("hours")["current"] == 2


def test_an_import_with_a_bad_item_writes_nothing(lib: ContentLibrary,
                                                  tmp_path: Path) -> None:
    (tmp_path / "library.toml").write_text(
        '[[item]]\nid = "ok"\ntitle = "Fine"\nkind = "article"\n\n'
        '[[item]]\nid = "evil"\ntitle = "Escapes"\nkind = "media"\nfile = "../../etc/passwd"\n')
    with pytest.raises(ContentError, match=r"item #2 \(evil\): file .* is not a file inside"):
        import_directory(lib, tmp_path, CLI)
    assert lib.list() == []


def test_tapcast_content_import_reports_what_it_did(config: HubConfig,
                                                    tmp_path: Path) -> None:
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(f'[hub]\ndatabase = "{config.hub.database}"\n'
                        f'files = "{config.hub.files}"\n')
    runner = CliRunner()
    first = runner.invoke(cli, ["content", "import", str(REPO / "content"),
                                "--config", str(hub_toml)])
    assert first.exit_code == 0, first.output
    assert "content import: 7 created, 0 revised, 0 placed, 0 unchanged" in first.output
    again = runner.invoke(cli, ["content", "import", str(REPO / "content"),
                                "--config", str(hub_toml)])
    assert again.exit_code == 0, again.output
    assert "0 created, 0 revised, 0 placed, 7 unchanged" in again.output


# ------------------------------------------------------------------ API and pages


def test_an_api_upload_then_item_then_a_resumed_download(app: Flask, config: HubConfig) -> None:
    token = api_token(config, "content", user="mia", role="marketer")
    c = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    up = c.post("/api/v1/files?kind=media", data=PDF, headers=auth)
    assert up.status_code == 201, up.json
    sha = up.json["sha256"]
    made = c.post("/api/v1/content", headers=auth, json={
        "key": "map", "kind": "media", "title": "Map", "file_sha256": sha,
        "file_name": "map.pdf", "targets": {"zones": ["lobby"]},
        "schedule": {"windows": [{"start": "08:00", "end": "20:00"}]}})
    assert made.status_code == 201, made.json
    assert made.json["schedule"]["windows"] == [{"start": "08:00", "end": "20:00"}]
    half = len(PDF) // 2
    first = c.get(f"/api/v1/files/{sha}", headers={**auth, "Range": f"bytes=0-{half - 1}"})
    rest = c.get(f"/api/v1/files/{sha}", headers={**auth, "Range": f"bytes={half}-"})
    assert (first.status_code, rest.status_code) == (206, 206)
    assert first.data + rest.data == PDF
    assert hashlib.sha256(first.data + rest.data).hexdigest() == sha


def test_an_operator_may_read_the_library_but_not_change_it(app: Flask,
                                                            config: HubConfig) -> None:
    token = api_token(config, "ops", user="olaf", role="operator")
    c = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    assert c.get("/api/v1/content", headers=auth).status_code == 200
    refused = c.post("/api/v1/content", headers=auth,
                     json={"key": "x", "kind": "article", "title": "X"})
    assert refused.status_code == 403 and "content:write" in refused.json["error"]


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.accounts

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())


def signed_in_marketer(app: Flask, config: HubConfig) -> tuple[object, str]:
    make_user(config, "mia", "marketer", password=PASSWORD)
    client = app.test_client()
    form = client.get("/signin").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form).group(1)
    r = client.post("/signin", data={"username": "mia", "password": PASSWORD,
                                     "csrf_token": token})
    assert r.status_code == 303
    page = client.get("/content").get_data(as_text=True)
    return client, re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                             page).group(1)


def new_item_form(csrf: str, **fields: object) -> dict[str, object]:
    return {"csrf_token": csrf, "key": "coffee", "kind": "coupon", "title": "Coffee",
            "body": "Second cup free", "price_cents": "0", "zones": "lobby",
            "priority": "0", "share": "1", "cap_per": "day", **fields}


def test_the_form_shows_a_wrong_file_as_an_error_and_keeps_nothing(
        app: Flask, config: HubConfig, lib: ContentLibrary) -> None:
    client, csrf = signed_in_marketer(app, config)
    r = client.post("/content", content_type="multipart/form-data", data=new_item_form(
        csrf, file=(io.BytesIO(EXE), "coupon.png")))
    assert r.status_code == 415
    page = r.get_data(as_text=True)
    assert 'data-testid="content-error"' in page and "application/x-msdownload" in page
    assert 'value="Coffee"' in page  # what was typed is still there
    assert lib.list() == [] and stored_files(lib) == [] and file_rows(lib) == 0


def test_a_form_that_fails_on_its_fields_keeps_no_file(
        app: Flask, config: HubConfig, lib: ContentLibrary) -> None:
    client, csrf = signed_in_marketer(app, config)
    r = client.post("/content", content_type="multipart/form-data", data=new_item_form(
        csrf, windows="25:00-26:00", file=(io.BytesIO(PNG), "coupon.png")))
    assert r.status_code == 400 and "schedule" in r.get_data(as_text=True)
    assert stored_files(lib) == [] and lib.list() == []


def test_the_form_publishes_an_item_and_its_page_shows_it(
        app: Flask, config: HubConfig, lib: ContentLibrary) -> None:
    client, csrf = signed_in_marketer(app, config)
    r = client.post("/content", content_type="multipart/form-data", data=new_item_form(
        csrf, windows="22:00-02:00", days=["4"], cap_count="1", merchant="Bean & Leaf",
        file=(io.BytesIO(PNG), "coupon.png")))
    assert r.status_code == 303, r.get_data(as_text=True)[:500]
    item = lib.get("coffee")
    assert item["targets"]["zones"] == ["lobby"]
    assert item["schedule"]["windows"] == [{"start": "22:00", "end": "02:00"}]
    assert item["schedule"]["cap"] == {"count": 1, "per": "day"}
    assert item["schedule"]["days"] == [4]
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Second cup free" in page and item["version"]["file"]["sha256"] in page
    assert item["version"]["created_by"] == "mia"
    assert item["version"]["merchant"] == "Bean & Leaf"
    assert 'data-testid="merchant">Bean &amp; Leaf<' in page


# ------------------------------------------------------------------ funnel


def funnel_events(app: Flask) -> None:
    """Two days of one coupon's life at two nodes, as the ingest stores them."""
    from tapcast.protocol.mqtt import Event

    day1, day2 = 20_000 * 86400.0 + 3600, 20_001 * 86400.0 + 3600  # 2024-10-04, -05
    events = []
    for node, when, kind, item in [
            ("n1", day1, "impression", "coffee"), ("n1", day1, "impression", "coffee"),
            ("n1", day1, "tap", None), ("n1", day1, "delivery", "coffee"),
            ("n1", day2, "request", "coffee"), ("n1", day2, "delivery", "coffee"),
            ("n2", day2, "delivery", "coffee"), ("n2", day2, "delivery", "tea"),
            ("n2", day2, "tap", None), ("n2", day2, "delivery", "bad key!")]:
        data = {} if item is None else {"item_id": item}
        events.append((node, kind, when, data))
    seqs: dict[str, int] = {}
    rows = []
    for node, kind, when, data in events:
        seqs[node] = seqs.get(node, 0) + 1
        rows.append((node, Event(id=f"{node}-{seqs[node]}", seq=seqs[node], kind=kind,
                                 ts=when, data=data)))
    get_db(app).write_batch(rows)


def test_the_funnel_counts_each_stage_per_day_and_per_node(app: Flask) -> None:
    funnel_events(app)
    f = get_db(app).funnel("coffee", 20_000, 20_001)
    assert f["totals"] == {"impression": 2, "tap": 2, "delivery": 3, "request": 1, "open": 0,
                           "refused": 0}
    assert [(d["day"], d["impression"], d["delivery"], d["tap"]) for d in f["by_day"]] == \
        [("2024-10-04", 2, 1, 1), ("2024-10-05", 0, 2, 1)]
    assert f["by_node"] == [
        {"node_id": "n1", "impression": 2, "tap": 1, "delivery": 2, "request": 1, "open": 0,
         "refused": 0},
        {"node_id": "n2", "impression": 0, "tap": 1, "delivery": 1, "request": 0, "open": 0,
         "refused": 0}]


def test_an_open_counts_once_per_handset_and_counter_however_often_it_comes(
        app: Flask) -> None:
    """A handset's signed open record re-sent (its ack lost) or carried by two nodes is
    stored as often as it came, counted in the funnel once; refusals are a stage."""
    from tapcast.protocol.mqtt import Event

    day = 20_000 * 86400.0 + 3600
    seqs: dict[str, int] = {}

    def batch(*events: tuple[str, str, dict]) -> None:
        rows = []
        for node, kind, data in events:
            seqs[node] = seqs.get(node, 0) + 1
            rows.append((node, Event(id=f"{node}-{seqs[node]}", seq=seqs[node], kind=kind,
                                     ts=day, data=data)))
        get_db(app).write_batch(rows)

    def opened(handset: str, counter: object) -> dict:
        return {"item_id": "coffee", "version": 1, "handset_id": handset, "counter": counter}

    batch(("n1", "open", opened("h1", 1)), ("n1", "open", opened("h1", 1)),  # twice at once
          ("n1", "open", opened("h2", 1)), ("n1", "open", opened("h1", "2")),  # not a counter
          ("n1", "refused", {"item_id": "coffee", "reason": "kind", "handset_id": "h3"}))
    batch(("n2", "open", opened("h1", 1)), ("n1", "open", opened("h1", 2)))  # again, and new
    f = get_db(app).funnel("coffee", 20_000, 20_000)
    assert (f["totals"]["open"], f["totals"]["refused"]) == (3, 1)
    kept = [(r["handset_id"], r["counter"], r["node_id"]) for r in get_db(app).query(
        "select handset_id, counter, node_id from handset_opens order by handset_id, counter")]
    assert kept == [("h1", 1, "n1"), ("h1", 2, "n1"), ("h2", 1, "n1")]  # the first to come
    assert get_db(app).count_events() == 7  # every delivery is in the log


def test_the_funnel_api_and_its_csv(app: Flask, config: HubConfig, lib: ContentLibrary) -> None:
    coupon(lib)
    funnel_events(app)
    token = api_token(config, "f", user="max", role="marketer")
    c = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    r = c.get("/api/v1/content/coffee/funnel?since=2024-10-04&until=2024-10-05", headers=auth)
    assert r.status_code == 200 and r.json["totals"]["delivery"] == 3
    assert c.get("/api/v1/content/coffee/funnel?since=2024-10-06&until=2024-10-05",
                 headers=auth).status_code == 400
    assert c.get("/api/v1/content/nope/funnel", headers=auth).status_code == 404
    client, _ = signed_in_marketer(app, config)
    csv_text = client.get("/content/coffee/funnel.csv?since=2024-10-04&until=2024-10-05"
                          ).get_data(as_text=True)
    assert csv_text.splitlines() == ["day,impression,tap,delivery,request,open,refused",
                                     "2024-10-04,2,1,1,0,0,0", "2024-10-05,0,1,2,1,0,0"]
    page = client.get("/content/coffee?since=2024-10-04&until=2024-10-05"
                      ).get_data(as_text=True)
    assert 'data-testid="funnel-delivery">3<' in page and "<svg" in page


# ------------------------------------------------------------------ campaigns


def test_items_in_a_campaign_go_where_and_when_it_says_and_back_when_they_leave(
        app: Flask, lib: ContentLibrary) -> None:
    write_node(lib, "n-lobby", "lobby")
    write_node(lib, "n-platform", "platform")
    coupon(lib, "coffee", targets=Targets(zones=("platform",)))
    coupon(lib, "tea", targets=Targets(zones=("platform",)))
    evening = Schedule(windows=[Window("18:00", "22:00")], priority=7)
    lib.create_campaign(CLI, "spring", "Spring offers", targets=Targets(zones=("lobby",)),
                        schedule=evening)
    lib.set_campaign_items(CLI, "spring", ["coffee", "tea"])
    assert [i["key"] for i in lib.for_node("n-lobby")] == ["coffee", "tea"]
    assert lib.for_node("n-platform") == []
    berlin = ZoneInfo("Europe/Berlin")
    at_19 = datetime(2026, 12, 2, 19, 0, tzinfo=berlin).timestamp()
    at_10 = datetime(2026, 12, 2, 10, 0, tzinfo=berlin).timestamp()
    assert lib.preview("n-lobby", at_19, "Europe/Berlin")["active"] == ["coffee", "tea"]
    assert lib.preview("n-lobby", at_10, "Europe/Berlin")["active"] == []
    assert lib.get("coffee")["campaign"] == "spring"
    lib.set_campaign_items(CLI, "spring", ["tea"])  # coffee leaves: its own placement
    assert [i["key"] for i in lib.for_node("n-platform")] == ["coffee"]
    assert lib.get("coffee")["campaign"] is None


def test_a_retired_campaigns_items_reach_no_node(lib: ContentLibrary) -> None:
    write_node(lib, "n1", "lobby")
    coupon(lib, "coffee", targets=Targets(everywhere=True))
    lib.create_campaign(CLI, "spring", "Spring", targets=Targets(everywhere=True))
    lib.set_campaign_items(CLI, "spring", ["coffee"])
    assert [i["key"] for i in lib.for_node("n1")] == ["coffee"]  # reached it before
    lib.retire_campaign(CLI, "spring")
    assert lib.for_node("n1") == []
    coupon(lib, "tea")
    with pytest.raises(ContentError, match="retired") as exc:  # nothing joins it now
        lib.set_campaign_items(CLI, "spring", ["coffee", "tea"])
    assert exc.value.status == 409
    lib.set_campaign_items(CLI, "spring", [])  # but its items may leave it
    assert [i["key"] for i in lib.for_node("n1")] == ["coffee"]  # their own placement


def test_an_item_is_in_one_campaign_at_most(lib: ContentLibrary) -> None:
    coupon(lib, "coffee")
    lib.create_campaign(CLI, "spring", "Spring")
    lib.create_campaign(CLI, "summer", "Summer")
    lib.set_campaign_items(CLI, "spring", ["coffee"])
    with pytest.raises(ContentError, match="is in campaign 'spring'") as exc:
        lib.set_campaign_items(CLI, "summer", ["coffee"])
    assert exc.value.status == 409
    assert lib.get_campaign("summer")["items"] == []


def test_a_campaigns_manifest_entries_carry_its_schedule(app: Flask,
                                                          lib: ContentLibrary) -> None:
    from hub.manifests import Snapshot

    coupon(lib, "coffee", schedule=Schedule(priority=1))
    lib.create_campaign(CLI, "spring", "Spring", targets=Targets(everywhere=True),
                        schedule=Schedule(share=5))
    lib.set_campaign_items(CLI, "spring", ["coffee"])
    item, = Snapshot.load(get_db(app).engine).for_node("n9", None)
    assert item.key == "coffee" and item.schedule == Schedule(share=5)


def test_a_campaigns_funnel_sums_its_items(app: Flask, config: HubConfig,
                                           lib: ContentLibrary) -> None:
    coupon(lib)
    coupon(lib, "tea")
    funnel_events(app)
    token = api_token(config, "c", user="max", role="marketer")
    c = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    made = c.post("/api/v1/campaigns", headers=auth, json={
        "key": "drinks", "title": "Drinks", "items": ["coffee", "tea"],
        "targets": {"zones": ["lobby"]}})
    assert made.status_code == 201 and made.json["items"] == ["coffee", "tea"]
    f = c.get("/api/v1/campaigns/drinks/funnel?since=2024-10-04&until=2024-10-05",
              headers=auth).json
    assert f["items"] == ["coffee", "tea"] and f["totals"]["delivery"] == 4
    client, _ = signed_in_marketer(app, config)
    page = client.get("/campaigns/drinks?since=2024-10-04&until=2024-10-05"
                      ).get_data(as_text=True)
    assert 'data-testid="funnel-delivery">4<' in page and "<svg" in page


def test_the_campaign_form_creates_it_with_its_items_and_shows_an_error_for_a_taken_item(
        app: Flask, config: HubConfig, lib: ContentLibrary) -> None:
    coupon(lib)
    client, csrf = signed_in_marketer(app, config)
    fields = {"csrf_token": csrf, "title": "Spring", "zones": "lobby", "items": "coffee",
              "priority": "0", "share": "1", "cap_per": "day"}
    r = client.post("/campaigns", data={**fields, "key": "spring"})
    assert r.status_code == 303 and lib.get("coffee")["campaign"] == "spring"
    again = client.post("/campaigns", data={**fields, "key": "summer"})
    assert again.status_code == 409
    assert "is in campaign &#39;spring&#39;" in again.get_data(as_text=True)
    assert [c["key"] for c in lib.list_campaigns()] == ["spring"]  # summer: not half-made


@pytest.mark.parametrize("query", ["tz=", "zone=", "node_id=", "at=", "at=nan", "at=-1"])
def test_a_preview_with_an_empty_or_bad_parameter_is_refused(app: Flask, config: HubConfig,
                                                            query: str) -> None:
    token = api_token(config, "p", user="pia", role="marketer")
    base = "node_id=n1&" if not query.startswith("node_id") else ""
    r = app.test_client().get(f"/api/v1/preview?{base}{query}",
                              headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json["error"]


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("path", [
    "/api/v1/content/a%00b", "/api/v1/content/a%00b/versions", "/api/v1/content/a%00b/funnel",
    "/api/v1/campaigns/a%00b", "/api/v1/content/" + "a" * 70, "/content/a%00b",
    "/campaigns/a%00b", "/content/a%00b/funnel.csv"])
def test_a_key_that_is_not_a_key_is_a_404_never_a_500(app: Flask, config: HubConfig,
                                                      path: str) -> None:
    client, _ = signed_in_marketer(app, config)
    assert client.get(path).status_code == 404


def test_a_longer_key_in_a_page_url_is_another_item_not_a_cut_one(
        app: Flask, config: HubConfig, lib: ContentLibrary) -> None:
    coupon(lib, "a" * 64)
    client, csrf = signed_in_marketer(app, config)
    r = client.post(f"/content/{'a' * 64}zzz/retire", data={"csrf_token": csrf})
    assert r.status_code == 303 and lib.get("a" * 64)["retired_at"] is None


@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=0", "node_id=a%00b",
                                   "cursor=Y29udGVudDphAGI"])
def test_a_bad_listing_or_preview_parameter_is_a_400(app: Flask, config: HubConfig,
                                                     query: str) -> None:
    token = api_token(config, "q", user="quinn", role="marketer")
    path = "/api/v1/preview" if query.startswith("node_id") else "/api/v1/content"
    r = app.test_client().get(f"{path}?{query}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json["error"]


def test_a_page_preview_at_the_edge_of_the_calendar_is_a_clear_error(
        app: Flask, config: HubConfig) -> None:
    client, _ = signed_in_marketer(app, config)
    for at in ("9999-12-31T23:59", "0001-01-01T00:00"):
        r = client.get(f"/content?node_id=n1&at={at}&tz=America/New_York")
        assert r.status_code == 400 and "1970 to 2242" in r.get_data(as_text=True)


@pytest.mark.parametrize("name,kept", [("../../etc/x.png", "x.png"), ("a\x00b.png", None),
                                       ("C:\\\\photos\\\\c.png", "c.png")])
def test_a_file_name_is_kept_as_its_last_part_and_control_characters_are_refused(
        lib: ContentLibrary, name: str, kept: str | None) -> None:
    png = lib.store_file(io.BytesIO(PNG), "coupon")
    if kept is None:
        with pytest.raises(ContentError, match="plain name"):
            lib.create(CLI, "c", "coupon", ItemInput("C", "", 0, png, name))
        assert lib.list() == []
    else:
        assert lib.create(CLI, "c", "coupon", ItemInput("C", "", 0, png, name)
                          )["version"]["file"]["name"] == kept


def test_a_file_name_without_a_file_is_refused(lib: ContentLibrary) -> None:
    coupon(lib)
    with pytest.raises(ContentError, match="give file_sha256 with it"):
        lib.revise(CLI, "coffee", ItemInput(file_name="new.png"))


def test_a_form_whose_title_is_refused_keeps_no_file(
        app: Flask, config: HubConfig, lib: ContentLibrary) -> None:
    client, csrf = signed_in_marketer(app, config)
    r = client.post("/content", content_type="multipart/form-data", data=new_item_form(
        csrf, title="   ", file=(io.BytesIO(PNG), "coupon.png")))
    assert r.status_code == 400 and "give the item a title" in r.get_data(as_text=True)
    assert stored_files(lib) == [] and file_rows(lib) == 0


def test_everywhere_and_named_targets_together_are_refused(lib: ContentLibrary) -> None:
    with pytest.raises(ContentError, match="not both"):
        coupon(lib, targets=Targets(everywhere=True, zones=("lobby",)))


def test_a_campaign_with_a_retired_member_still_takes_new_items(lib: ContentLibrary) -> None:
    coupon(lib, "a")
    coupon(lib, "b")
    coupon(lib, "c")
    lib.create_campaign(CLI, "spring", "Spring", items=["a", "b"])
    lib.retire(CLI, "a")
    assert lib.set_campaign_items(CLI, "spring", ["a", "b", "c"])["items"] == ["a", "b", "c"]


def test_retiring_twice_writes_nothing_the_second_time(app: Flask,
                                                      lib: ContentLibrary) -> None:
    from hub.auth import accounts

    coupon(lib)
    lib.retire(CLI, "coffee")
    lib.retire(CLI, "coffee")
    with app.app_context():
        actions = [e["action"] for e in accounts().audit_entries(limit=10)]
    assert actions == ["content.retire", "content.create"]


def test_an_import_item_with_groups_only_goes_to_those_groups(lib: ContentLibrary,
                                                             tmp_path: Path) -> None:
    (tmp_path / "library.toml").write_text(
        '[[item]]\nid = "vip"\ntitle = "VIP"\nkind = "article"\ngroups = ["vips"]\n')
    import_directory(lib, tmp_path, CLI)
    assert lib.get("vip")["targets"] == {"everywhere": False, "zones": [],
                                         "groups": ["vips"], "nodes": []}
    assert import_directory(lib, tmp_path, CLI).unchanged == ["vip"]


@pytest.mark.parametrize("second", [
    'id = "old"\ntitle = "Old"\nkind = "coupon"\n',  # the library holds it as an article
    'id = "pic"\ntitle = "Pic"\nkind = "coupon"\nfile = "notes.txt"\n',  # not an image
])
def test_an_import_that_would_fail_halfway_writes_nothing(
        lib: ContentLibrary, tmp_path: Path, second: str) -> None:
    lib.create(CLI, "old", "article", ItemInput("Old", "", 0))
    (tmp_path / "notes.txt").write_text("plain text, not an image " * 40)
    (tmp_path / "library.toml").write_text(
        f'[[item]]\nid = "new"\ntitle = "New"\nkind = "article"\n\n[[item]]\n{second}')
    with pytest.raises(ContentError, match="item #2"):
        import_directory(lib, tmp_path, CLI)
    assert [i["key"] for i in lib.list()] == ["old"]
