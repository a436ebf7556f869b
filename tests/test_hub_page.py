"""Operator page "/": nodes, counts and latest events, server-rendered then polled."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hub import create_app, get_db
from hub.config import HubConfig
from tapcast.config import load
from tapcast.protocol.mqtt import Event, NodeState


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = load(HubConfig, data={"hub": {"database": str(tmp_path / "hub.db")}}, environ={})
    app = create_app(config)
    yield app
    get_db(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _row(html: str, node_id: str) -> str:
    match = re.search(rf'<tr data-testid="node-row" data-node-id="{node_id}">(.*?)</tr>',
                      html, re.S)
    assert match, f"no row for {node_id}"
    return match.group(1)


def test_page_shows_a_row_per_node_with_badge_and_queue_depth(app: Flask,
                                                              client: FlaskClient) -> None:
    now = time.time()
    get_db(app).write_batch(
        [], states=[("n1", NodeState(node_id="n1", ts=now, version="1", zone="z", uptime=1,
                                     outbox_depth=9), now)],
        statuses=[("n1", "online", now), ("n2", "offline", now)])
    html = client.get("/").get_data(as_text=True)
    assert 'class="badge online" data-testid="node-status">online' in _row(html, "n1")
    assert '<td data-testid="node-queue-depth">9</td>' in _row(html, "n1")
    assert 'class="badge offline"' in _row(html, "n2")


def test_page_shows_counts_and_latest_events(app: Flask, client: FlaskClient) -> None:
    get_db(app).write_batch([
        ("n1", Event(id="a", seq=1, kind="tap", ts=1.0)),
        ("n1", Event(id="b", seq=2, kind="auth", ts=2.0, data={"ok": True})),
        ("n1", Event(id="c", seq=3, kind="auth", ts=3.0, data={"ok": False})),
        ("n1", Event(id="d", seq=4, kind="delivery", ts=4.0))])
    html = client.get("/").get_data(as_text=True)
    for testid, value in (("count-taps", 1), ("count-auth-ok", 1),
                          ("count-auth-rejected", 1), ("count-deliveries", 1)):
        assert re.search(rf'data-testid="{testid}">{value}<', html), testid
    assert html.count('data-testid="event-row"') == 4


def test_page_with_no_nodes_says_so(client: FlaskClient) -> None:
    assert "No node has reported yet." in client.get("/").get_data(as_text=True)


def test_page_refreshes_itself_from_the_api_without_external_assets(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    assert 'src="/static/hub.js"' in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "no CDN: the hall has no internet"
    js = client.get("/static/hub.js").get_data(as_text=True)
    assert "/api/v1/nodes" in js and "/api/v1/stats" in js and "setTimeout(refresh" in js


def test_event_data_is_escaped(app: Flask, client: FlaskClient) -> None:
    get_db(app).write_batch([("n1", Event(id="x", seq=1, kind="error", ts=1.0,
                                          data={"msg": "<script>alert(1)</script>"}))])
    html = client.get("/").get_data(as_text=True)
    assert "<script>alert(1)" not in html
