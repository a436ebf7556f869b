"""The hall display page and the WLAN file server (node/display.py), over real HTTP:
the node decides what the page shows, each slot a page shows is an impression, taps and
the hub's absence reach the page at once, and WLAN links are short-lived and
unforgeable."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from hall.testing.display import frames
from node.display import Display, DisplayItem

ITEMS = [DisplayItem("welcome", "Welcome", "article", "Hello"),
         DisplayItem("coffee", "Coffee", "coupon", "Second cup free", 0)]
BLOB = bytes(range(256)) * 40
SHA = hashlib.sha256(BLOB).hexdigest()


class Hall:
    def __init__(self) -> None:
        self.items = list(ITEMS)
        self.online = True
        self.impressions: list[str] = []


@pytest.fixture
async def hall(tmp_path: Path) -> AsyncIterator[tuple[Display, Hall]]:
    (tmp_path / SHA).write_bytes(BLOB)
    state = Hall()
    display = Display(loop=lambda now: state.items, online=lambda: state.online,
                      on_impression=state.impressions.append, files_dir=tmp_path,
                      slot_seconds=0.05)
    await display.start()
    yield display, state
    await display.stop()


async def next_event(stream: AsyncIterator[tuple[str, object]], kind: str) -> object:
    async def find() -> object:
        async for event, data in stream:
            if event == kind:
                return data
        raise AssertionError("stream ended")
    return await asyncio.wait_for(find(), 5)


async def test_the_page_is_served_with_the_call_to_action(hall: tuple[Display, Hall]) -> None:
    display, _ = hall
    async with aiohttp.ClientSession() as http, http.get(display.url + "/") as r:
        page = await r.text()
    assert r.status == 200 and "Tap your phone here" in page and "EventSource" in page


async def test_an_open_page_shows_the_loop_and_each_slot_is_an_impression(
        hall: tuple[Display, Hall]) -> None:
    display, state = hall
    assert state.impressions == []  # nobody looks yet: nothing shown, nothing counted
    async with aiohttp.ClientSession() as http, http.get(display.url + "/events") as r:
        stream = frames(r)
        shown = [await next_event(stream, "show") for _ in range(4)]
    assert [s["key"] for s in shown] == ["welcome", "coffee", "welcome", "coffee"]
    assert state.impressions[:4] == ["welcome", "coffee", "welcome", "coffee"]


async def test_no_page_open_records_no_impression(hall: tuple[Display, Hall]) -> None:
    display, state = hall
    await asyncio.sleep(display.slot_seconds * 4)  # slots pass with nobody looking
    assert state.impressions == [] and display.impressions == 0


async def test_a_taps_feedback_and_the_offline_badge_reach_the_page_at_once(
        hall: tuple[Display, Hall]) -> None:
    display, state = hall
    async with aiohttp.ClientSession() as http, http.get(display.url + "/events") as r:
        stream = frames(r)
        assert await next_event(stream, "status") == {"online": True}
        display.tap_feedback(3)
        assert (await next_event(stream, "tap"))["text"] == "3 items sent to your phone"
        state.online = False
        display.status_changed()
        assert await next_event(stream, "status") == {"online": False}


async def test_a_wlan_link_serves_the_file_with_ranges_until_it_expires(
        hall: tuple[Display, Hall]) -> None:
    display, _ = hall
    url = display.wlan_url(SHA, ttl=60)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200 and await r.read() == BLOB
        async with http.get(url, headers={"Range": "bytes=100-"}) as r:
            assert r.status == 206 and await r.read() == BLOB[100:]
        expired = display.wlan_url(SHA, ttl=-1)
        async with http.get(expired) as r:
            assert r.status == 403 and "expired" in (await r.json())["error"]


@pytest.mark.parametrize("tamper", ["sig", "exp", "sha", "missing", "unicode-exp",
                                    "upper-sig"])
async def test_a_forged_wlan_link_is_refused(hall: tuple[Display, Hall], tamper: str) -> None:
    display, _ = hall
    url = display.wlan_url(SHA, ttl=60)
    base, _, query = url.partition("?")
    exp, sig = (p.split("=", 1)[1] for p in query.split("&"))
    forged = {"sig": f"{base}?exp={exp}&sig={'0' * 64}",
              "exp": f"{base}?exp={int(exp) + 1000}&sig={sig}",
              "sha": f"{base.rsplit('/', 1)[0]}/{'a' * 64}?exp={exp}&sig={sig}",
              "missing": base,
              "unicode-exp": f"{base}?exp=%D9%A3&sig={sig}",  # an Arabic-Indic digit
              "upper-sig": f"{base}?exp={exp}&sig={sig.upper()}"}[tamper]
    error = {"sig": "not a link this node made", "exp": "not a link this node made",
             "sha": "not a link this node made"}.get(tamper, "exp and sig are required")
    async with aiohttp.ClientSession() as http, http.get(forged) as r:
        assert r.status == 403
        assert (await r.json())["error"] == error


async def test_files_are_served_to_the_local_display_only(
        hall: tuple[Display, Hall]) -> None:
    display, _ = hall
    async with aiohttp.ClientSession() as http, http.get(f"{display.url}/files/{SHA}") as r:
        assert r.status == 200 and await r.read() == BLOB  # the kiosk, on the node
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("192.168.1.30", 50000) if name == "peername" else default)
    phone = make_mocked_request("GET", f"/files/{SHA}", match_info={"sha256": SHA},
                                transport=transport)
    refused = await display._file(phone)
    assert refused.status == 403 and b"local display only" in refused.body


async def test_stop_ends_a_stream_whose_queue_is_full(hall: tuple[Display, Hall]) -> None:
    display, _ = hall
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=2)
    queue.put_nowait("a")
    queue.put_nowait("b")
    display._clients.add(queue)
    await display.stop()  # no QueueFull
    assert queue.get_nowait() == ""


async def test_a_second_page_does_not_end_the_slot_early(tmp_path: Path) -> None:
    state = Hall()
    display = Display(loop=lambda now: state.items, online=lambda: True,
                      on_impression=state.impressions.append, files_dir=tmp_path,
                      slot_seconds=0.5)
    await display.start()
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(display.url + "/events") as first:
            await next_event(frames(first), "show")
            for _ in range(3):  # more pages open within the slot
                async with http.get(display.url + "/events") as more:
                    await next_event(frames(more), "status")
            assert state.impressions == ["welcome"]
    finally:
        await display.stop()


async def test_an_empty_loop_shows_the_name_and_counts_nothing(
        hall: tuple[Display, Hall]) -> None:
    display, state = hall
    state.items = []
    async with aiohttp.ClientSession() as http, http.get(display.url + "/events") as r:
        assert await next_event(frames(r), "show") is None
    assert state.impressions == []


async def test_a_code_reaches_open_pages_and_pages_opened_later(
        hall: tuple[Display, Hall]) -> None:
    """The code path's code (node/presence.py): shown only while someone looks, so the
    display says when the first page opens and the last one closes."""
    from node.presence import qr_svg

    display, _ = hall
    watched: list[bool] = []
    nobody = asyncio.Event()

    def on_watch() -> None:
        watched.append(display.watched)
        if not display.watched:
            nobody.set()

    display.on_watch = on_watch
    code = {"code": "12345678", "uri": "tapcast:code/12345678",
            "qr": qr_svg("tapcast:code/12345678"), "seconds": 60.0}
    async with aiohttp.ClientSession() as http:
        async with http.get(display.url + "/events") as r:
            stream = frames(r)
            await next_event(stream, "status")
            assert watched == [True]
            display.show_code(code)
            assert await next_event(stream, "code") == code
            async with http.get(display.url + "/events") as later:
                assert await next_event(frames(later), "code") == code
            display.show_code(None)
            assert await next_event(stream, "code") is None
        page = await (await http.get(display.url + "/")).text()
    await asyncio.wait_for(nobody.wait(), 5)  # the last page closed
    assert watched == [True, False]
    assert 'data-testid="code-digits"' in page and 'data-testid="code-qr"' in page
    assert code["qr"].startswith("data:image/svg+xml")


@pytest.mark.slow
@pytest.mark.browser
async def test_the_code_is_readable_on_the_page_in_chromium(hall: tuple[Display, Hall]) -> None:
    """What a customer without NFC reads: the digits and a QR that renders (headless
    Chromium, as the hub page's test)."""
    from node.presence import qr_svg
    from playwright.async_api import async_playwright

    from tests.test_hub_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make test` (it installs it)")
    display, _ = hall
    watching = asyncio.Event()
    display.on_watch = watching.set
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(display.url + "/")
            await asyncio.wait_for(watching.wait(), 10)
            assert not await page.get_by_test_id("code").is_visible()
            display.show_code({"code": "12345678", "uri": "tapcast:code/12345678",
                               "qr": qr_svg("tapcast:code/12345678"), "seconds": 60.0})
            digits = page.get_by_test_id("code-digits")
            await digits.wait_for(state="visible", timeout=5000)
            assert await digits.text_content() == "1234 5678"
            qr = page.get_by_test_id("code-qr")
            assert await qr.get_attribute("alt") == "QR code tapcast:code/12345678"
            await page.wait_for_function(
                "document.querySelector('[data-testid=code-qr]').naturalWidth > 0",
                timeout=5000)
            display.show_code(None)
            await page.get_by_test_id("code").wait_for(state="hidden", timeout=5000)
        finally:
            await browser.close()
