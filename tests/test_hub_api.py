"""JSON API /api/v1 with Flask's test client over a real SQLite hub database: what it
answers, that it needs a credential, and that no parameter can make it fail."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hall.testing.hub import api_get, api_token
from hub import create_app, get_db
from hub.config import HubConfig
from hub.migrate import upgrade
from tapcast.config import load
from tapcast.protocol.mqtt import Event, NodeState


def ev(seq: int, kind: str = "tap", **data: object) -> Event:
    return Event(id=f"e{seq}", seq=seq, kind=kind, ts=1_700_000_000.0 + seq, data=data)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = load(HubConfig, data={"hub": {"database": str(tmp_path / "hub.db"),
                                           "stale_after": 60.0}}, environ={})
    upgrade(config.hub.database, echo=print)
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
def token(app: Flask) -> str:
    return api_token(app.config["TAPCAST"], "api-test")


@pytest.fixture
def client(app: Flask, token: str) -> FlaskClient:
    """A client that sends the token with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    return app.test_client()


# ------------------------------------------------------------------ credential
# (Roles and scopes: tests/test_hub_roles.py; accounts, tokens, audit:
# tests/test_hub_accounts.py.)


@pytest.mark.parametrize("path", ["/api/v1/nodes", "/api/v1/nodes/n1", "/api/v1/events",
                                  "/api/v1/incidents", "/api/v1/stats"])
def test_without_a_token_every_route_is_401_saying_how_to_get_one(anonymous: FlaskClient,
                                                                  path: str) -> None:
    r = anonymous.get(path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="tapcast-hub"'
    assert "Authorization: Bearer" in r.json["error"]
    assert "tapcast hub token create" in r.json["error"]


@pytest.mark.parametrize("header", ["Bearer tc1_not-a-token", "Bearer ", "Basic dXNlcjpwdw==",
                                    "tc1_abc", "Bearer " + "x" * 10_000])
def test_a_wrong_or_malformed_token_is_401_invalid_token(anonymous: FlaskClient,
                                                        header: str) -> None:
    r = anonymous.get("/api/v1/nodes", headers={"Authorization": header})
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert "nodes" not in r.json


def test_a_good_token_is_200(anonymous: FlaskClient, token: str) -> None:
    r = anonymous.get("/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and len(r.json["nodes"]) == 2


def test_a_revoked_token_is_401_at_its_next_request(app: Flask, anonymous: FlaskClient) -> None:
    token = api_token(app.config["TAPCAST"], "leaver")
    auth = {"Authorization": f"Bearer {token}"}
    assert anonymous.get("/api/v1/stats", headers=auth).status_code == 200
    mine = anonymous.get("/api/v1/tokens", headers=auth).json["tokens"]
    leaver = next(t["id"] for t in mine if t["name"] == "leaver")
    assert anonymous.delete(f"/api/v1/tokens/{leaver}", headers=auth).status_code == 200
    assert anonymous.get("/api/v1/stats", headers=auth).status_code == 401


def test_the_openapi_document_needs_no_token(anonymous: FlaskClient) -> None:
    assert anonymous.get("/api/v1/openapi.json").status_code == 200


def test_refusals_are_counted_in_stats_and_logged_without_the_token(
        anonymous: FlaskClient, client: FlaskClient, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.auth
    from tapcast.ratelog import RateLimitedLog

    # A limiter no earlier test has used, so the first refusal here must be logged.
    monkeypatch.setattr(hub.auth, "_refusal_log", RateLimitedLog(hub.auth.log, 60.0))
    before = client.get("/api/v1/stats").json["api"]["auth_failures"]
    for _ in range(5):
        anonymous.get("/api/v1/nodes", headers={"Authorization": "Bearer tc1_secret-guess"})
    assert client.get("/api/v1/stats").json["api"]["auth_failures"] == before + 5
    refusals = [r for r in caplog.records if "without a valid credential" in r.message]
    assert len(refusals) <= 1  # at most one line a minute, however many were refused
    assert len(refusals) == 1 and "wrong, expired or revoked token" in refusals[0].message
    assert "tc1_secret-guess" not in caplog.text


def test_the_database_keeps_only_token_hashes_and_nothing_sits_beside_it(
        app: Flask, token: str, tmp_path: Path) -> None:
    rows = get_db(app).query("SELECT sha256, scopes FROM api_tokens")
    assert rows and all(token not in str(row) for row in rows)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("hub.db")) == []


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
    ("since=1", [("n2", 2), ("n2", 1), ("n1", 3), ("n1", 2), ("n1", 1)]),
    ("until=1", []),
    ("kind=tap&since=1&until=99999999999", [("n2", 1), ("n1", 1)]),
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
    ("limit=99999999999999999999999", "limit must be an integer"),
    ("limit=1_0", "limit must be an integer"),
    ("limit=%D9%A1", "limit must be an integer"),  # an Arabic-Indic digit one
    ("limit=1&limit=2", "limit given more than once"),
    ("node_id=n1&since_seq=9223372036854775808", "since_seq must be between 0 and "
                                                 "9223372036854775807"),
    ("node_id=n1&since_seq=" + "9" * 5000, "since_seq must be an integer"),
    ("since=1e400", "finite"),
    ("since=-1", "since must be between 0 and 1e+11"),
    ("until=" + "1" * 100, "until must be a number"),
    ("cursor=" + "A" * 1000, "not one this API returned"),
    ("cursor=" + "c2VxOjk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "not one this API returned"),
    ("node_id=n1&cursor=c2VxOjk5OTk5OTk5OTk5OTk5OTk5OTk", "not one this API returned"),
    ("node_id=n%00", "not a node id"),
    ("node_id=" + "n" * 65, "not a node id: use 1..64"),
    ("kind=" + "k" * 100_000, "not an event kind"),
    ("x%00y=1", "unknown query parameter(s)"),
    ("limit=501", "limit must be between 1 and 500"),
    ("limit=ten", "limit must be an integer"),
    ("kind=Purchase", "not an event kind: use 1..32 lowercase letters"),
    ("kind=1tap", "not an event kind"),
    ("kind=tap-ok", "not an event kind"),
    ("kind=tap%0A", "not an event kind"),
    ("kind=", "not an event kind"),
    ("kind=" + "k" * 33, "not an event kind"),
    ("since_seq=3", "since_seq needs node_id"),
    ("node_id=n1&since_seq=-1", "since_seq must be between 0 and"),
    ("since=yesterday", "since must be a number"),
    ("until=nan", "until must be a number"),
    ("since_ts=1", "unknown query parameter(s) 'since_ts'"),
    ("cursor=!!!", "not one this API returned"),
    ("node=n1", "unknown query parameter(s) 'node'; accepted: node_id, kind"),
    ("node_id=a/b", "not a node id"),
])
def test_bad_event_query_is_400_saying_what_to_fix(client: FlaskClient, query: str,
                                                   message: str) -> None:
    r = client.get(f"/api/v1/events?{query}")
    assert r.status_code == 400
    assert message in r.json["error"]
    assert len(r.json["error"]) < 300  # a huge value is quoted cut short


@pytest.mark.parametrize("node_id", ["n" * 65, "n%00", "%F0%9F%98%80", "a" * 5000])
def test_bad_node_id_in_the_path_is_400(client: FlaskClient, node_id: str) -> None:
    r = client.get(f"/api/v1/nodes/{node_id}")
    assert r.status_code == 400 and "not a node id" in r.json["error"]


def test_largest_seq_sqlite_holds_is_accepted(client: FlaskClient) -> None:
    r = client.get(f"/api/v1/events?node_id=n1&since_seq={2**63 - 1}")
    assert r.status_code == 200 and r.json["events"] == []


def test_stats_counts_kinds_auth_verdicts_and_nodes(client: FlaskClient) -> None:
    stats = client.get("/api/v1/stats").json
    assert stats["events"] == {"total": 5, "by_kind": {"auth": 2, "delivery": 1, "tap": 2},
                               "auth_ok": 1, "auth_rejected": 1}
    assert stats["nodes"] == {"total": 2, "online": 1, "offline": 1}
    assert stats["ingest"] is None  # app built without ingest
    assert stats["incidents"] == {"lost": 0, "conflict": 0, "quarantined": 0,
                                  "new_epoch": 0, "quarantined_batches": 0}


# ----------------------------------------------------------- event kinds


def test_a_well_formed_kind_no_node_wrote_lists_nothing(client: FlaskClient) -> None:
    r = client.get("/api/v1/events?kind=purchase")
    assert r.status_code == 200 and r.json["events"] == []


def test_events_of_a_newer_nodes_unknown_kind_are_listed_by_that_kind(
        app: Flask, client: FlaskClient) -> None:
    get_db(app).write_batch([("n1", ev(4, "refund", amount=3))])
    events = client.get("/api/v1/events?kind=refund").json["events"]
    assert [(e["node_id"], e["seq"], e["kind"], e["epoch"]) for e in events] == \
        [("n1", 4, "refund", "e0")]
    assert client.get("/api/v1/stats").json["events"]["by_kind"]["refund"] == 1


# ------------------------------------------------------------- incidents


def lose(app: Flask, node_id: str, seq: int) -> None:
    """The node sends ``seq`` saying it holds nothing older (``low=seq``): every seq
    between the hub's ack and it is lost for good, a real "lost" incident."""
    get_db(app).write_batch([(node_id, ev(seq))], low=seq)


def test_no_incidents_is_an_empty_list(client: FlaskClient) -> None:
    page = client.get("/api/v1/incidents").json
    assert page == {"incidents": [], "next_cursor": None, "next": None}


def test_a_hole_the_node_no_longer_holds_is_a_lost_incident_in_the_api(
        app: Flask, client: FlaskClient) -> None:
    lose(app, "n1", 6)  # n1 acked 3: seqs 4 and 5 will never come
    (incident,) = client.get("/api/v1/incidents").json["incidents"]
    assert (incident["node_id"], incident["epoch"], incident["kind"], incident["count"]) == \
        ("n1", "e0", "lost", 2)
    assert "4..5" in incident["detail"] and incident["at"] > 0
    stats = client.get("/api/v1/stats").json["incidents"]
    assert stats["lost"] == 1 and stats["conflict"] == 0 and stats["quarantined_batches"] == 0


def test_incidents_newest_first_and_filtered_by_node(app: Flask, client: FlaskClient) -> None:
    lose(app, "n1", 6)
    lose(app, "n2", 5)
    lose(app, "n1", 9)
    listed = client.get("/api/v1/incidents").json["incidents"]
    assert [(i["node_id"], i["count"]) for i in listed] == [("n1", 2), ("n2", 2), ("n1", 2)]
    assert listed[0]["id"] > listed[1]["id"] > listed[2]["id"]
    n1 = client.get("/api/v1/incidents?node_id=n1").json["incidents"]
    assert [i["id"] for i in n1] == [listed[0]["id"], listed[2]["id"]]
    assert client.get("/api/v1/incidents?node_id=ghost").json["incidents"] == []
    assert client.get("/api/v1/stats").json["incidents"]["lost"] == 3


@pytest.mark.parametrize("node_filter", ["", "node_id=n1&"])
def test_incident_pagination_follows_next_links_to_the_end(
        app: Flask, client: FlaskClient, node_filter: str) -> None:
    for seq in (6, 9, 12, 15):
        lose(app, "n1", seq)
    url, seen, pages = f"/api/v1/incidents?{node_filter}limit=2", [], 0
    while url:
        page = client.get(url).json
        seen += [i["id"] for i in page["incidents"]]
        url, pages = page["next"], pages + 1
        assert url is None or f"{node_filter}limit=2&cursor=" in url
    assert len(seen) == 4 == len(set(seen)) and seen == sorted(seen, reverse=True)
    assert pages == 2  # the last full page says there is no more: no empty page after it


@pytest.mark.parametrize("query,message", [
    ("limit=0", "limit must be between 1 and 500"),
    ("limit=501", "limit must be between 1 and 500"),
    ("limit=ten", "limit must be an integer"),
    ("limit=99999999999999999999999", "limit must be an integer"),
    ("limit=1&limit=2", "limit given more than once"),
    ("node_id=bad.id", "not a node id"),
    ("node_id=" + "n" * 65, "not a node id"),
    ("cursor=", "not one this API returned"),
    ("cursor=!!!", "not one this API returned"),
    ("cursor=" + "A" * 1000, "not one this API returned"),
    ("cursor=c2VxOjQy", "not one this API returned for /api/v1/incidents"),  # an events cursor
    ("cursor=aW5jaWRlbnQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk", "not one this API returned"),  # 2^64+
    ("kind=lost", "unknown query parameter(s) 'kind'; accepted: node_id, limit, cursor"),
])
def test_bad_incident_query_is_400_saying_what_to_fix(client: FlaskClient, query: str,
                                                      message: str) -> None:
    r = client.get(f"/api/v1/incidents?{query}")
    assert r.status_code == 400
    assert message in r.json["error"]
    assert len(r.json["error"]) < 300


def test_unknown_api_path_is_json_404(client: FlaskClient) -> None:
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and "error" in r.json


def test_openapi_document_describes_every_api_route(app: Flask, client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    operations = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(rule)), method.lower())
                  for rule in app.url_map.iter_rules() if str(rule).startswith("/api/v1")
                  for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert {path for path, _ in operations} == set(doc["paths"])
    assert operations == {(path, method) for path, item in doc["paths"].items()
                          for method in item if method != "parameters"}
    params = {p["name"] for p in doc["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert params == {"node_id", "kind", "since_seq", "since", "until", "limit", "cursor"}
    params = {p["name"] for p in doc["paths"]["/api/v1/nodes"]["get"]["parameters"]}
    assert params == {"zone", "version", "status", "limit", "cursor"}
    params = {p["name"] for p in doc["paths"]["/api/v1/incidents"]["get"]["parameters"]}
    assert params == {"node_id", "limit", "cursor"}


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


def test_serve_runs_ingest_and_api_until_shutdown(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    import urllib.request

    from hall.testing.hub import hub_config, serve
    from hall.testing.mqtt import NodePublisher, make_batch

    config = hub_config(tmp_path / "served.db", mosquitto.url)
    hub = serve(config, wait_ingest=10)
    try:
        pub = NodePublisher(mosquitto.url, config.hub.stream_secret)
        pub.publish_batch(make_batch("n9", [1, 2]))
        pub.close()
        from hub import get_ingest
        ingest = get_ingest(hub.app)
        assert ingest is not None and ingest.wait_stored(2, 10)
        stats = hub.get("/api/v1/stats")
        assert stats["events"]["total"] == 2 and stats["ingest"]["stored"] == 2
    finally:
        hub.shutdown()
    assert hub.wait(0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{hub.url}/api/v1/stats", timeout=2)


def test_served_requests_do_not_leak_database_connections(tmp_path: Path) -> None:
    import os

    from hall.testing.hub import serve

    db_path = tmp_path / "leak.db"
    config = load(HubConfig, data={"hub": {"database": str(db_path), "port": 0}}, environ={})
    upgrade(str(db_path), echo=print)
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
            api_get(f"{hub.url}/api/v1/nodes", hub.token)
        assert open_fds() <= before + 3  # at most one connection (db, wal, shm) left over
    finally:
        hub.shutdown()
