"""JSON API /api/v1 with Flask's test client over a real SQLite hub database."""
from __future__ import annotations

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


def ev(seq: int, kind: str = "tap", **data: object) -> Event:
    return Event(id=f"e{seq}", seq=seq, kind=kind, ts=1_700_000_000.0 + seq, data=data)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = load(HubConfig, data={"hub": {"database": str(tmp_path / "hub.db"),
                                           "stale_after": 60.0}}, environ={})
    app = create_app(config)
    db = get_db(app)
    now = time.time()
    db.write_batch(
        [("n1", ev(1, "tap")), ("n1", ev(2, "auth", ok=True)), ("n1", ev(3, "delivery")),
         ("n2", ev(1, "tap")), ("n2", ev(2, "auth", ok=False, reason="revoked"))],
        states=[("n1", NodeState(node_id="n1", ts=now, version="1.0", zone="hall-a",
                                 uptime=10.0, outbox_depth=4), now)],
        statuses=[("n1", "online", now), ("n2", "offline", now)],
        seen={"n1": now})
    yield app
    db.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_nodes_lists_every_node_with_status_queue_depth_and_counts(client: FlaskClient) -> None:
    nodes = {n["node_id"]: n for n in client.get("/api/v1/nodes").json["nodes"]}
    assert set(nodes) == {"n1", "n2"}
    n1 = nodes["n1"]
    assert (n1["status"], n1["zone"], n1["version"], n1["outbox_depth"]) == \
        ("online", "hall-a", "1.0", 4)
    assert n1["events"]["total"] == 3 and n1["acked_seq"] == 3
    assert nodes["n2"]["status"] == "offline"
    assert "state" not in n1


def test_one_node_includes_its_state(client: FlaskClient) -> None:
    node = client.get("/api/v1/nodes/n1").json
    assert node["node_id"] == "n1" and node["state"]["uptime"] == 10.0


def test_unknown_node_is_404_json(client: FlaskClient) -> None:
    r = client.get("/api/v1/nodes/ghost")
    assert r.status_code == 404 and "ghost" in r.json["error"]


def test_invalid_node_id_in_path_is_400(client: FlaskClient) -> None:
    r = client.get("/api/v1/nodes/bad.id")
    assert r.status_code == 400 and "not a node id" in r.json["error"]


def test_events_newest_first(client: FlaskClient) -> None:
    events = client.get("/api/v1/events").json["events"]
    assert [(e["node_id"], e["seq"]) for e in events][:2] == [("n2", 2), ("n2", 1)]
    assert len(events) == 5


@pytest.mark.parametrize("query,expected", [
    ("node_id=n1", [("n1", 3), ("n1", 2), ("n1", 1)]),
    ("kind=auth", [("n2", 2), ("n1", 2)]),
    ("node_id=n1&since_seq=1", [("n1", 3), ("n1", 2)]),
    ("since_ts=1700000002.5", [("n1", 3)]),
])
def test_events_filters(client: FlaskClient, query: str, expected: list) -> None:
    events = client.get(f"/api/v1/events?{query}").json["events"]
    assert [(e["node_id"], e["seq"]) for e in events] == expected


def test_events_pagination_follows_next_links_to_the_end(client: FlaskClient) -> None:
    url, seen = "/api/v1/events?limit=2", []
    while url:
        page = client.get(url).json
        seen += [(e["node_id"], e["seq"]) for e in page["events"]]
        url = page["next"]
    assert len(seen) == 5 == len(set(seen))


@pytest.mark.parametrize("query,message", [
    ("limit=0", "limit must be between 1 and 500"),
    ("limit=501", "limit must be between 1 and 500"),
    ("limit=ten", "limit must be an integer"),
    ("kind=purchase", "not an event kind"),
    ("since_seq=3", "since_seq needs node_id"),
    ("node_id=n1&since_seq=-1", "since_seq must be >= 0"),
    ("since_ts=yesterday", "since_ts must be a number"),
    ("since_ts=nan", "finite"),
    ("cursor=!!!", "not one this API returned"),
    ("node=n1", "unknown query parameter(s) node"),
    ("node_id=a/b", "not a node id"),
])
def test_bad_event_query_is_400_saying_what_to_fix(client: FlaskClient, query: str,
                                                   message: str) -> None:
    r = client.get(f"/api/v1/events?{query}")
    assert r.status_code == 400
    assert message in r.json["error"]


def test_stats_counts_kinds_auth_verdicts_and_nodes(client: FlaskClient) -> None:
    stats = client.get("/api/v1/stats").json
    assert stats["events"] == {"total": 5, "by_kind": {"auth": 2, "delivery": 1, "tap": 2},
                               "auth_ok": 1, "auth_rejected": 1}
    assert stats["nodes"] == {"total": 2, "online": 1, "offline": 1}
    assert stats["ingest"] is None  # app built without ingest


def test_unknown_api_path_is_json_404(client: FlaskClient) -> None:
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and "error" in r.json


def test_openapi_document_describes_every_api_route(app: Flask, client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    routes = {str(rule).replace("<node_id>", "{node_id}") for rule in app.url_map.iter_rules()
              if str(rule).startswith("/api/v1")}
    assert routes == set(doc["paths"])
    params = {p["name"] for p in doc["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert params == {"node_id", "kind", "since_seq", "since_ts", "limit", "cursor"}


def test_openapi_schema_refs_all_resolve(client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    schemas = doc["components"]["schemas"]
    assert refs and all(r.removeprefix("#/components/schemas/") in schemas for r in refs)


def test_init_db_command_reports_the_database(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "hub.db" in result.output


def test_serve_runs_ingest_and_api_until_shutdown(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    import json
    import urllib.request

    from hall.testing.hub import serve
    from tapcast.mqttclient import make_client
    from tapcast.protocol.mqtt import EventBatch, encode, events_topic

    config = load(HubConfig, data={"hub": {"database": str(tmp_path / "served.db"), "port": 0},
                                   "mqtt": {"broker": mosquitto.url}}, environ={})
    hub = serve(config, wait_ingest=10)
    try:
        pub = make_client("test-node")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        pub.publish(events_topic("n9"), encode(EventBatch(node_id="n9", events=[ev(1), ev(2)])),
                    qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        from hub import get_ingest
        ingest = get_ingest(hub.app)
        assert ingest is not None and ingest.wait_stored(2, 10)
        with urllib.request.urlopen(f"{hub.url}/api/v1/stats", timeout=10) as r:
            stats = json.load(r)
        assert stats["events"]["total"] == 2 and stats["ingest"]["stored"] == 2
    finally:
        hub.shutdown()
    assert hub.wait(0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{hub.url}/api/v1/stats", timeout=2)


def test_served_requests_do_not_leak_database_connections(tmp_path: Path) -> None:
    import os
    import urllib.request

    from hall.testing.hub import serve

    db_path = tmp_path / "leak.db"
    config = load(HubConfig, data={"hub": {"database": str(db_path), "port": 0}}, environ={})
    hub = serve(config, start_ingest=False)

    def open_fds() -> int:
        fds = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds += os.readlink(f"/proc/self/fd/{fd}").startswith(str(db_path))
            except OSError:
                pass
        return fds

    try:
        before = open_fds()
        for _ in range(30):  # each request runs on a fresh server thread
            urllib.request.urlopen(f"{hub.url}/api/v1/nodes", timeout=10).close()
        assert open_fds() <= before + 3  # at most one connection (db, wal, shm) left over
    finally:
        hub.shutdown()
