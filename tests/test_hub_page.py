"""Operator page "/": sign-in with an API token, then nodes, counts and latest events,
server-rendered then polled."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hall.testing.hub import api_token
from hub import create_app, get_db
from hub.config import HubConfig
from hub.tokens import token_store
from hub.migrate import upgrade
from tapcast.config import load
from tapcast.protocol.mqtt import Event, NodeState


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = load(HubConfig, data={"hub": {"database": str(tmp_path / "hub.db")}}, environ={})
    upgrade(config.hub.database, echo=print)
    app = create_app(config)
    yield app
    get_db(app).close()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def sign_in(client: FlaskClient, token: str) -> object:
    """What a person does: open /, paste the token, press Sign in."""
    form = client.get("/").get_data(as_text=True)
    return client.post("/signin", data={"token": token, "csrf_token": csrf_token(form)})


@pytest.fixture
def token(app: Flask) -> str:
    return api_token(app.config["TAPCAST"], "operator")


@pytest.fixture
def client(app: Flask, token: str) -> FlaskClient:
    """A browser that has signed in."""
    client = app.test_client()
    assert sign_in(client, token).status_code == 303
    return client


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    return app.test_client()


# -------------------------------------------------------------------- sign-in


def test_page_without_a_session_shows_the_sign_in_form_not_the_data(
        app: Flask, anonymous: FlaskClient) -> None:
    get_db(app).write_batch([], statuses=[("secret-node", "online", time.time())])
    r = anonymous.get("/")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and 'data-testid="signin-form"' in html
    assert "secret-node" not in html and 'data-testid="nodes-table"' not in html
    assert "tapcast hub token create" in html


def test_signing_in_shows_the_page_and_lets_its_fetches_use_the_api(
        anonymous: FlaskClient, token: str) -> None:
    r = sign_in(anonymous, token)
    assert r.status_code == 303 and r.headers["Location"] == "/"
    html = anonymous.get("/").get_data(as_text=True)
    assert 'data-testid="nodes-table"' in html
    assert 'data-testid="signed-in-as">operator<' in html
    assert anonymous.get("/api/v1/stats").status_code == 200  # the session, no header


def test_session_cookie_is_signed_http_only_and_holds_no_token(anonymous: FlaskClient,
                                                               token: str) -> None:
    cookie = sign_in(anonymous, token).headers["Set-Cookie"]
    assert cookie.startswith("tapcast_session=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and token not in cookie


def test_a_wrong_token_at_sign_in_is_refused_and_counted(anonymous: FlaskClient,
                                                         token: str) -> None:
    r = sign_in(anonymous, "tc1_guess")
    assert r.status_code == 401
    assert "not valid here" in r.get_data(as_text=True)
    assert 'data-testid="nodes-table"' not in anonymous.get("/").get_data(as_text=True)
    stats = anonymous.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
    assert stats.json["api"]["auth_failures"] >= 1


def test_opening_signin_by_address_leads_to_the_form(anonymous: FlaskClient) -> None:
    r = anonymous.get("/signin")
    assert r.status_code == 303 and r.headers["Location"] == "/"


def test_sign_in_without_the_forms_csrf_token_is_refused(anonymous: FlaskClient,
                                                         token: str) -> None:
    r = anonymous.post("/signin", data={"token": token})
    assert r.status_code == 400 and "sign in again" in r.get_data(as_text=True)
    assert anonymous.get("/api/v1/stats").status_code == 401


def test_sign_out_ends_the_session(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    r = client.post("/signout", data={"csrf_token": csrf_token(html)})
    assert r.status_code == 303
    assert 'data-testid="signin-form"' in client.get("/").get_data(as_text=True)
    assert client.get("/api/v1/nodes").status_code == 401


def test_revoking_the_token_ends_its_sessions(app: Flask, client: FlaskClient) -> None:
    token_store(app.config["TAPCAST"].hub.database).revoke("operator")
    assert 'data-testid="signin-form"' in client.get("/").get_data(as_text=True)
    assert client.get("/api/v1/nodes").status_code == 401


def test_every_worker_of_one_hub_accepts_the_same_session(app: Flask,
                                                          client: FlaskClient) -> None:
    """gunicorn workers each build their own app: they share the session key file."""
    other = create_app(app.config["TAPCAST"])
    try:
        assert other.secret_key == app.secret_key
        cookie = client.get_cookie("tapcast_session")
        assert cookie is not None
        browser = other.test_client()
        browser.set_cookie("tapcast_session", cookie.value)
        assert browser.get("/api/v1/nodes").status_code == 200
    finally:
        get_db(other).close()


def test_session_key_file_is_private(app: Flask) -> None:
    from pathlib import Path

    key = Path(app.config["TAPCAST"].hub.database + ".secret")
    assert key.stat().st_mode & 0o777 == 0o600


# ----------------------------------------------------------------------- page


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
    assert "/api/v1/incidents" in js
    # The fetch budget: one request per section, four per refresh, each conditional.
    assert len(re.findall(r'getJson\((nodesUrl\(\)|"/api/v1/)', js)) == 4
    assert "If-None-Match" in js


def test_page_without_incidents_says_so_and_raises_no_flag(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    assert 'data-testid="incidents-table"' in html
    assert 'data-testid="no-incidents"' in html and "No incidents." in html
    assert 'data-testid="incident-row"' not in html
    assert re.search(r'data-testid="incidents-flag"[^>]* hidden>', html)
    assert 'class="alert"' not in html
    for testid in ("incidents-lost", "incidents-conflict", "incidents-quarantined",
                   "incidents-new-epoch", "incidents-quarantined-batches"):
        assert re.search(rf'data-testid="{testid}">0<', html), testid


def test_page_lists_incidents_with_totals_and_flags_them(app: Flask,
                                                         client: FlaskClient) -> None:
    db = get_db(app)
    db.write_batch([("n1", Event(id=f"e{s}", seq=s, kind="tap", ts=float(s)))
                    for s in (1, 2)])
    # n1 now holds nothing below 7: seqs 3..6 will never reach the hub.
    db.write_batch([("n1", Event(id="e7", seq=7, kind="tap", ts=7.0))], low=7)
    html = client.get("/").get_data(as_text=True)
    row = re.search(r'<tr data-testid="incident-row" data-kind="lost"[^>]*>(.*?)</tr>',
                    html, re.S)
    assert row, "no row for the lost incident"
    assert '<td class="mono" data-testid="incident-node">n1</td>' in row.group(1)
    assert '<td data-testid="incident-count">4</td>' in row.group(1)
    assert "3..6" in row.group(1)
    assert 'data-testid="no-incidents"' not in html
    assert re.search(r'data-testid="incidents-lost">1<', html)
    flag = re.search(r'<a [^>]*data-testid="incidents-flag"([^>]*)>(.*?)</a>', html, re.S)
    assert flag and "hidden" not in flag.group(1)
    assert re.sub(r"<[^>]+>", "", flag.group(2)).strip() == "1 incident"
    assert 'id="incidents" data-testid="incidents" class="alert"' in html


def test_event_data_is_escaped(app: Flask, client: FlaskClient) -> None:
    get_db(app).write_batch([("n1", Event(id="x", seq=1, kind="error", ts=1.0,
                                          data={"msg": "<script>alert(1)</script>"}))])
    html = client.get("/").get_data(as_text=True)
    assert "<script>alert(1)" not in html
