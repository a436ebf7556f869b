"""Operator views that stay fast with a big fleet: nodes a page at a time with filters,
conditional requests (ETag / 304) for the page's refreshes, totals from maintained
aggregates. On SQLite and PostgreSQL."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hall.testing.hub import api_token
from hub import create_app, get_db
from hub.config import HubConfig
from tapcast.config import load
from tapcast.protocol.mqtt import Event, NodeState


@pytest.fixture
def app(hub_database: str, tmp_path) -> Iterator[Flask]:  # noqa: ANN001
    config = load(HubConfig, data={"hub": {"database": hub_database, "stale_after": 60.0,
                                           "stream_secret": str(tmp_path / "stream.secret")}},
                  environ={})
    app = create_app(config)
    now = time.time()
    db = get_db(app)
    for i in range(12):
        node = f"n{i:02}"
        db.write(states=[(node, NodeState(node_id=node, ts=now, version=f"v{i % 3}",
                                          zone="hall-a" if i < 8 else "hall-b", uptime=1.0,
                                          outbox_depth=0), now if i != 5 else now - 600)])
    db.write_batch([("n00", Event(id=f"e{s}", seq=s, kind="tap", ts=now, data={}))
                    for s in range(1, 4)])
    yield app
    db.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_token(app.config['TAPCAST'])}"
    return client


def node_ids(page: dict) -> list[str]:
    return [n["node_id"] for n in page["nodes"]]


def test_nodes_come_a_page_at_a_time_and_next_links_reach_the_end(client: FlaskClient) -> None:
    url, seen = "/api/v1/nodes?limit=5", []
    while url:
        page = client.get(url).json
        assert len(page["nodes"]) <= 5
        seen += node_ids(page)
        url = page["next"]
    assert seen == [f"n{i:02}" for i in range(12)]


@pytest.mark.parametrize("query,expected", [
    ("zone=hall-b", ["n08", "n09", "n10", "n11"]),
    ("version=v1&zone=hall-a", ["n01", "n04", "n07"]),
    ("status=offline", ["n05"]),
    ("status=online&zone=hall-b&version=v2", ["n08", "n11"]),
])
def test_nodes_filter_by_zone_version_and_status(client: FlaskClient, query: str,
                                                 expected: list[str]) -> None:
    assert node_ids(client.get(f"/api/v1/nodes?{query}").json) == expected


def test_a_filtered_page_keeps_its_filters_in_the_next_link(client: FlaskClient) -> None:
    page = client.get("/api/v1/nodes?zone=hall-a&limit=3").json
    assert "zone=hall-a" in page["next"]
    assert node_ids(client.get(page["next"]).json) == ["n03", "n04", "n05"]


@pytest.mark.parametrize("query,message", [
    ("status=asleep", "status must be one of online, offline"),
    ("zone=" + "z" * 65, "not a zone a node reports"),
    ("version=%00", "not a version a node reports"),
    ("limit=501", "limit must be between 1 and 500"),
    ("cursor=bm9kZTox", "not one this API returned"),
    ("node_id=n1", "unknown query parameter(s) 'node_id'"),
])
def test_bad_node_query_is_400_saying_what_to_fix(client: FlaskClient, query: str,
                                                  message: str) -> None:
    r = client.get(f"/api/v1/nodes?{query}")
    assert r.status_code == 400 and message in r.json["error"]


def test_stats_count_nodes_online_and_offline(client: FlaskClient) -> None:
    assert client.get("/api/v1/stats").json["nodes"] == {"total": 12, "online": 11,
                                                         "offline": 1}


@pytest.mark.parametrize("path", ["/api/v1/nodes?zone=hall-a", "/api/v1/events?limit=2",
                                  "/api/v1/incidents", "/api/v1/stats"])
def test_an_unchanged_listing_is_a_304_without_a_body(client: FlaskClient, path: str) -> None:
    first = client.get(path)
    assert first.status_code == 200 and first.headers["ETag"]
    again = client.get(path, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.get_data() == b""


def test_a_changed_listing_is_sent_again(app: Flask, client: FlaskClient) -> None:
    first = client.get("/api/v1/events?limit=2")
    get_db(app).write_batch([("n00", Event(id="e4", seq=4, kind="tap", ts=1.0, data={}))])
    again = client.get("/api/v1/events?limit=2", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 200 and again.json["events"][0]["seq"] == 4


def test_the_page_shows_one_page_of_nodes_with_filters_and_totals(client: FlaskClient) -> None:
    html = client.get("/?zone=hall-b&status=online").get_data(as_text=True)
    assert html.count('data-testid="node-row"') == 4
    assert 'data-node-id="n08"' in html and 'data-node-id="n00"' not in html
    assert 'data-testid="nodes-total">12<' in html and 'data-testid="nodes-online">11<' in html
    assert 'value="hall-b"' in html and 'data-testid="filter-clear"' in html


def test_the_page_links_to_the_next_page_of_nodes(app: Flask, client: FlaskClient) -> None:
    db = get_db(app)
    now = time.time()
    db.write(states=[(f"m{i:03}", NodeState(node_id=f"m{i:03}", ts=now, version="v", zone="z",
                                            uptime=1.0, outbox_depth=0), now)
                     for i in range(60)])
    html = client.get("/").get_data(as_text=True)
    assert html.count('data-testid="node-row"') == 50
    assert 'data-testid="nodes-next"' in html
