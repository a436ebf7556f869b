"""What an operator sees: the hub page in headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright): the sign-in form first (user name and password), then the page
updating itself while a virtual hall is tapped, until the operator signs out."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hall.testing.hub import HubServer
from hall.virtual import VirtualHall
from hall.testing.mosquitto import Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium keeps dialling out, and this machine has no network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make test` (it installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


@pytest.fixture
def hub_without_ingest(tmp_path: Path) -> Iterator[HubServer]:
    """An in-process hub with no broker: its database is written directly."""
    from hall.testing.hub import hub_config, serve

    hub = serve(hub_config(tmp_path / "hub.db", "mqtt://127.0.0.1:1"), start_ingest=False)
    try:
        yield hub
    finally:
        hub.shutdown()


PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub runs in this process: a cheap argon2 keeps sign-in fast."""
    import hub.accounts
    from hall.testing.hub import cheap_password_hashing

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())


async def sign_in(page, hub: HubServer, username: str = "olga",  # noqa: ANN001
                  role: str = "operator") -> None:
    """What an operator does: open the hub, type user name and password, press Sign in
    (the account is made first, as an admin would)."""
    from hall.testing.hub import make_user

    make_user(hub.app.config["TAPCAST"], username, role, password=PASSWORD)
    await page.goto(hub.url + "/")
    await page.get_by_test_id("signin-username").fill(username)
    await page.get_by_test_id("signin-password").fill(PASSWORD)
    await page.get_by_test_id("signin-submit").click()


async def test_operator_page_shows_taps_and_node_going_offline(
        page, running_hub: HubServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    from playwright.async_api import expect

    hall = VirtualHall(tmp_path / "hall", mosquitto.url, nodes=1, handsets=1, hold_off=0.0,
                       stream_secret=running_hub.stream_secret)
    await hall.start()
    try:
        await page.goto(running_hub.url + "/")
        await expect(page.get_by_test_id("signin-form")).to_be_visible()
        await expect(page.get_by_test_id("nodes-table")).to_have_count(0)
        await sign_in(page, running_hub)
        await expect(page.get_by_test_id("signed-in-as")).to_have_text("olga")
        await expect(page.get_by_test_id("signed-in-role")).to_have_text("operator")
        await expect(page.get_by_test_id("nav-tokens")).to_be_visible()
        await expect(page.get_by_test_id("nav-users")).to_have_count(0)  # not an admin
        row = page.locator('[data-testid="node-row"][data-node-id="node-1"]')
        await expect(row.locator('[data-testid="node-status"]')).to_have_text("online",
                                                                              timeout=10_000)
        for _ in range(2):
            report = await hall.tap(hall.handsets[0], hall.nodes[0])
            assert report.ok, report.error
        await expect(page.get_by_test_id("count-taps")).to_have_text("2", timeout=10_000)
        await expect(page.get_by_test_id("count-auth-ok")).to_have_text("2")
        await expect(page.get_by_test_id("count-deliveries")).to_have_text("4")
        await expect(page.locator('[data-testid="event-row"][data-kind="delivery"]')).to_have_count(4)
        await page.screenshot(path=str(tmp_path / "hub-online.png"), full_page=True)
    finally:
        await hall.stop()
    await expect(row.locator('[data-testid="node-status"]')).to_have_text("offline",
                                                                          timeout=10_000)
    await expect(page.get_by_test_id("refresh-error")).to_be_hidden()
    await page.get_by_test_id("signout").click()
    await expect(page.get_by_test_id("signin-form")).to_be_visible()
    await expect(page.get_by_test_id("nodes-table")).to_have_count(0)


async def test_page_goes_back_to_the_sign_in_form_when_its_account_is_disabled(
        page, hub_without_ingest: HubServer) -> None:
    from playwright.async_api import expect

    from hub.accounts import Actor
    from hub.auth import accounts

    hub = hub_without_ingest
    await sign_in(page, hub)
    await expect(page.get_by_test_id("nodes-table")).to_be_visible()
    accounts(hub.app).update_user(Actor.cli(), "olga", disabled=True)
    # The next 3 s refresh gets a 401 and reloads: the form, no data.
    await expect(page.get_by_test_id("signin-form")).to_be_visible(timeout=10_000)
    await expect(page.get_by_test_id("nodes-table")).to_have_count(0)


async def test_an_incident_written_after_the_page_loaded_shows_up_and_raises_the_flag(
        page, hub_without_ingest: HubServer) -> None:
    from playwright.async_api import expect

    from hub import get_db
    from tapcast.protocol.mqtt import Event

    hub = hub_without_ingest
    db = get_db(hub.app)
    db.write_batch([("node-1", Event(id="e1", seq=1, kind="tap", ts=1.7e9))])
    await sign_in(page, hub)
    await expect(page.get_by_test_id("no-incidents")).to_be_visible()
    await expect(page.get_by_test_id("incidents-flag")).to_be_hidden()
    # node-1 says it holds nothing below seq 5: seqs 2..4 are lost for good.
    db.write_batch([("node-1", Event(id="e5", seq=5, kind="tap", ts=1.7e9 + 5))], low=5)
    row = page.locator('[data-testid="incident-row"][data-kind="lost"]')
    await expect(row).to_have_count(1, timeout=10_000)  # the next 3 s refresh
    await expect(row.get_by_test_id("incident-node")).to_have_text("node-1")
    await expect(row.get_by_test_id("incident-count")).to_have_text("3")
    await expect(page.get_by_test_id("incidents-lost")).to_have_text("1")
    await expect(page.get_by_test_id("incidents-flag")).to_have_text("1 incident")
    await expect(page.get_by_test_id("no-incidents")).to_have_count(0)
    await expect(page.get_by_test_id("refresh-error")).to_be_hidden()


async def test_a_wrong_password_is_refused_and_a_marketer_sees_only_what_the_role_may(
        page, hub_without_ingest: HubServer) -> None:
    from playwright.async_api import expect

    from hall.testing.hub import make_user

    hub = hub_without_ingest
    make_user(hub.app.config["TAPCAST"], "mia", "marketer", password=PASSWORD)
    await page.goto(hub.url + "/")
    await page.get_by_test_id("signin-username").fill("mia")
    await page.get_by_test_id("signin-password").fill("not the password")
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("signin-error")).to_have_text("Wrong user name or password.")
    await page.get_by_test_id("signin-password").fill(PASSWORD)
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("signed-in-role")).to_have_text("marketer")
    await expect(page.locator('[data-testid=permission][data-permission="stats:read"]')
                 ).to_be_visible()
    await expect(page.get_by_test_id("nodes-table")).to_have_count(0)


async def test_an_admin_makes_a_token_on_the_page_and_the_audit_log_shows_it(
        page, hub_without_ingest: HubServer) -> None:
    from playwright.async_api import expect

    from hall.testing.hub import api_get

    hub = hub_without_ingest
    await sign_in(page, hub, "ada", "admin")
    await page.get_by_test_id("nav-tokens").click()
    await page.get_by_test_id("token-name").fill("laptop")
    await page.get_by_label("nodes:read: see the nodes and their health").check()
    await page.get_by_test_id("token-create").click()
    token = await page.get_by_test_id("new-token").text_content()
    assert token and token.startswith("tc1_")
    assert api_get(hub.url + "/api/v1/nodes", token) == {"nodes": [], "next_cursor": None,
                                                           "next": None}
    await page.get_by_test_id("nav-audit").click()
    newest = page.locator('[data-testid=audit-row][data-action="token.create"]').first
    await expect(newest.get_by_test_id("audit-actor")).to_have_text("ada")


async def test_a_marketer_publishes_a_coupon_for_one_zone_and_the_preview_shows_where(
        page, hub_without_ingest: HubServer, tmp_path: Path) -> None:
    """The new-item form with a file, as a marketer fills it in Chromium; then the
    preview of a node in that zone lists the coupon and a node elsewhere does not."""
    import time

    from playwright.async_api import expect

    from hub import get_db
    from tapcast.protocol.mqtt import NodeState

    hub = hub_without_ingest
    now = time.time()
    get_db(hub.app).write_batch([], states=[
        (n, NodeState(node_id=n, ts=now, version="1", zone=z, uptime=1.0, outbox_depth=0), now)
        for n, z in (("n-lobby", "lobby"), ("n-platform", "platform"))])
    png = tmp_path / "coffee.png"
    png.write_bytes(bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154"
        "78da63f8cfc0f01f0005000201a5c7d2a10000000049454e44ae426082"))
    await sign_in(page, hub, "mia", "marketer")
    await page.get_by_test_id("nav-content").click()
    await page.get_by_test_id("key").fill("coffee")
    await page.get_by_test_id("kind").select_option("coupon")
    await page.get_by_test_id("title").fill("Coffee: second cup free")
    await page.get_by_test_id("body").fill("Show this at Bean & Leaf.")
    await page.get_by_test_id("file").set_input_files(str(png))
    await page.get_by_test_id("zones").fill("lobby")
    await page.get_by_test_id("publish").click()
    await expect(page.get_by_test_id("item-title")).to_have_text("Coffee: second cup free")
    await expect(page.get_by_test_id("item-preview").locator("img")).to_be_visible()
    await expect(page.get_by_test_id("version-row")).to_have_count(1)
    for node_id, gets in (("n-lobby", "coffee"), ("n-platform", "nothing")):
        await page.get_by_test_id("nav-content").click()
        await page.locator("#node_id").fill(node_id)
        await page.get_by_test_id("preview").click()
        await expect(page.get_by_test_id("preview-push")).to_have_text(gets)


async def test_a_published_coupon_shows_on_the_display_of_a_node_in_its_zone_only(
        page, mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The marketer publishes in Chromium; the hub signs the manifests; each node syncs;
    the display page of the lobby node shows the coupon, the food court's does not."""
    from playwright.async_api import expect

    from hall.testing.hub import hub_config, serve

    hub = serve(hub_config(tmp_path / "hub.db", mosquitto.url, secret_dir=tmp_path),
                wait_ingest=10.0, publish_manifests=True)
    hall = VirtualHall(tmp_path / "hall", mosquitto.url, nodes=2, handsets=1, hold_off=0.0,
                       processes=False, stream_secret=hub.stream_secret,
                       authority=hub.authority)
    try:
        await hall.start()
        lobby, food_court = hall.nodes
        await sign_in(page, hub, "mia", "marketer")
        await page.get_by_test_id("nav-content").click()
        await page.get_by_test_id("key").fill("lobby-coffee")
        await page.get_by_test_id("kind").select_option("coupon")
        await page.get_by_test_id("title").fill("Coffee: second cup free")
        await page.get_by_test_id("zones").fill("lobby")
        await page.get_by_test_id("publish").click()
        await expect(page.get_by_test_id("item-title")).to_have_text("Coffee: second cup free")
        from hub.accounts import Actor
        from hub.content import ItemInput, Targets
        from hub.content_api import library

        library(hub.app).create(Actor.cli(), "food-news", "article",
                                ItemInput("Food court news", "New stalls open"),
                                targets=Targets(zones=("food-court",)))
        for node in (lobby, food_court):
            daemon = node.daemon
            await daemon.sync.wait_for(lambda d=daemon: d.store.content_serial() > 0
                                       and len(d.store.items()) == 1, 20.0)
        await page.goto(lobby.daemon.display.url + "/")
        await expect(page.get_by_test_id("slot-title")).to_have_text("Coffee: second cup free")
        await expect(page.get_by_test_id("cta")).to_have_text("Tap your phone here")
        await page.goto(food_court.daemon.display.url + "/")
        # Its loop is that one article: the page shows it, and never the lobby's coupon.
        await expect(page.get_by_test_id("slot-title")).to_have_text("Food court news")
        assert [i.id for i in food_court.daemon.store.loop(3)] == ["food-news"] * 3
    finally:
        await hall.stop()
        hub.shutdown()
