"""Operator page "/": sign-in with user name and password, then nodes, counts and latest events,
server-rendered then polled."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hall.testing.hub import api_token, cheap_password_hashing, make_user
from hub import create_app, get_db
from hub.config import HubConfig
from hub.migrate import upgrade
from tapcast.config import load
from tapcast.protocol.mqtt import Event, NodeState


PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.accounts

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())


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


def sign_in(client: FlaskClient, username: str, password: str = PASSWORD) -> object:
    """What a person does: open /, type user name and password, press Sign in."""
    form = client.get("/").get_data(as_text=True)
    return client.post("/signin", data={"username": username, "password": password,
                                        "csrf_token": csrf_token(form)})


@pytest.fixture
def operator(app: Flask) -> str:
    """An operator account with PASSWORD."""
    make_user(app.config["TAPCAST"], "olga", "operator", password=PASSWORD)
    return "olga"


@pytest.fixture
def client(app: Flask, operator: str) -> FlaskClient:
    """A browser that has signed in as an operator."""
    client = app.test_client()
    assert sign_in(client, operator).status_code == 303
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
    assert 'data-testid="signin-username"' in html and 'data-testid="signin-password"' in html
    assert "secret-node" not in html and 'data-testid="nodes-table"' not in html
    assert "tapcast hub user create" in html


def test_signing_in_shows_the_page_with_user_and_role_and_its_fetches_use_the_api(
        anonymous: FlaskClient, operator: str) -> None:
    r = sign_in(anonymous, operator)
    assert r.status_code == 303 and r.headers["Location"] == "/"
    html = anonymous.get("/").get_data(as_text=True)
    assert 'data-testid="nodes-table"' in html
    assert 'data-testid="signed-in-as">olga<' in html
    assert 'data-testid="signed-in-role">operator<' in html
    assert anonymous.get("/api/v1/stats").status_code == 200  # the session, no header


def test_session_cookie_is_signed_http_only_and_holds_no_password(anonymous: FlaskClient,
                                                                  operator: str) -> None:
    cookie = sign_in(anonymous, operator).headers["Set-Cookie"]
    assert cookie.startswith("tapcast_session=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and PASSWORD not in cookie


@pytest.mark.parametrize("username,password", [("olga", "wrong password!"),
                                               ("nobody", PASSWORD), ("OLGA", PASSWORD)])
def test_a_wrong_user_name_or_password_is_refused_and_counted(
        app: Flask, anonymous: FlaskClient, operator: str, username: str,
        password: str) -> None:
    token = api_token(app.config["TAPCAST"])
    before = anonymous.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"}
                           ).json["api"]
    r = sign_in(anonymous, username, password)
    assert r.status_code == 401
    assert "Wrong user name or password." in r.get_data(as_text=True)
    assert 'data-testid="nodes-table"' not in anonymous.get("/").get_data(as_text=True)
    after = anonymous.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"}
                          ).json["api"]
    assert after["login_failures"] == before["login_failures"] + 1
    assert after["auth_failures"] >= before["auth_failures"] + 1


def test_a_disabled_account_cannot_sign_in(app: Flask, anonymous: FlaskClient,
                                           operator: str) -> None:
    from hub.accounts import Actor
    from hub.auth import accounts

    accounts(app).update_user(Actor.cli(), operator, disabled=True)
    assert sign_in(anonymous, operator).status_code == 401


def test_opening_signin_by_address_shows_the_form(anonymous: FlaskClient) -> None:
    r = anonymous.get("/signin")
    assert r.status_code == 200 and 'data-testid="signin-form"' in r.get_data(as_text=True)


def test_a_page_opened_without_a_session_signs_in_then_goes_there(
        app: Flask, anonymous: FlaskClient) -> None:
    make_user(app.config["TAPCAST"], "ada", "admin", password=PASSWORD)
    r = anonymous.get("/users")
    assert r.status_code == 303 and r.headers["Location"] == "/signin?next=/users"
    form = anonymous.get(r.headers["Location"]).get_data(as_text=True)
    r = anonymous.post("/signin?next=/users", data={
        "username": "ada", "password": PASSWORD, "csrf_token": csrf_token(form)})
    assert r.status_code == 303 and r.headers["Location"] == "/users"


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_sign_in_never_redirects_to_another_site(app: Flask, anonymous: FlaskClient,
                                                 operator: str, target: str) -> None:
    form = anonymous.get("/").get_data(as_text=True)
    r = anonymous.post("/signin", query_string={"next": target}, data={
        "username": operator, "password": PASSWORD, "csrf_token": csrf_token(form)})
    assert r.status_code == 303 and r.headers["Location"] == "/"


def test_sign_in_without_the_forms_csrf_token_is_refused(anonymous: FlaskClient,
                                                         operator: str) -> None:
    r = anonymous.post("/signin", data={"username": operator, "password": PASSWORD})
    assert r.status_code == 400 and "sign in again" in r.get_data(as_text=True)
    assert anonymous.get("/api/v1/stats").status_code == 401


def test_sign_out_ends_the_session(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    r = client.post("/signout", data={"csrf_token": csrf_token(html)})
    assert r.status_code == 303
    assert 'data-testid="signin-form"' in client.get("/").get_data(as_text=True)
    assert client.get("/api/v1/nodes").status_code == 401


def test_sign_out_without_the_csrf_token_is_refused_and_keeps_the_session(
        client: FlaskClient) -> None:
    assert client.post("/signout").status_code == 400
    assert client.get("/api/v1/nodes").status_code == 200


def test_disabling_the_account_ends_its_sessions(app: Flask, client: FlaskClient,
                                                 operator: str) -> None:
    from hub.accounts import Actor
    from hub.auth import accounts

    accounts(app).update_user(Actor.cli(), operator, disabled=True)
    assert 'data-testid="signin-form"' in client.get("/").get_data(as_text=True)
    assert client.get("/api/v1/nodes").status_code == 401


def test_every_worker_of_one_hub_accepts_the_same_session(app: Flask,
                                                          client: FlaskClient) -> None:
    """gunicorn workers each build their own app: they share the session key, a row of
    the hub database."""
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


def test_a_role_without_the_operator_page_sees_what_it_may_do(
        app: Flask, anonymous: FlaskClient) -> None:
    get_db(app).write_batch([], statuses=[("secret-node", "online", time.time())])
    make_user(app.config["TAPCAST"], "mia", "marketer", password=PASSWORD)
    sign_in(anonymous, "mia")
    html = anonymous.get("/").get_data(as_text=True)
    assert 'data-testid="signed-in-role">marketer<' in html
    assert 'data-permission="stats:read"' in html and 'data-permission="events:read"' not in html
    assert "secret-node" not in html and 'data-testid="nodes-table"' not in html


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
