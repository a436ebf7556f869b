"""Accounts, personal API tokens and the audit log (hub/accounts.py, hub/auth.py and the
API and pages on them), on SQLite and PostgreSQL: passwords hashed with argon2id and
checked for strength, tokens kept as hashes and cut down to their owner's role on every
request, every change audited with before and after, CSRF refused, sign-in rate
limited. Which role reaches which endpoint: tests/test_hub_roles.py."""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hall.testing.hub import cheap_password_hashing, make_user
from hub import create_app, get_db
from hub.accounts import AccountError, Accounts, Actor
from hub.config import HubConfig
from hub.db import open_db
from tapcast.config import load

PASSWORD = "correct horse battery staple"
CLI = Actor(None, "cli:test", "cli")


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.accounts

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())


@pytest.fixture
def accounts(hub_database: str) -> Iterator[Accounts]:
    db = open_db(hub_database)
    yield Accounts(db.engine)
    db.close()


@pytest.fixture
def app(hub_database: str) -> Iterator[Flask]:
    config = load(HubConfig, data={"hub": {"database": hub_database}}, environ={})
    app = create_app(config)
    yield app
    get_db(app).close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: FlaskClient, username: str, password: str = PASSWORD,
            remote: str = "127.0.0.1") -> int:
    form = client.get("/signin", environ_base={"REMOTE_ADDR": remote}).get_data(as_text=True)
    return client.post("/signin", data={"username": username, "password": password,
                                        "csrf_token": csrf_token(form)},
                       environ_base={"REMOTE_ADDR": remote}).status_code


def signed_in(app: Flask, username: str, role: str) -> tuple[FlaskClient, str]:
    """A browser signed in as a new account, and the CSRF token of its pages."""
    make_user(app.config["TAPCAST"], username, role, password=PASSWORD)
    client = app.test_client()
    assert sign_in(client, username) == 303
    return client, csrf_token(client.get("/").get_data(as_text=True))


# ------------------------------------------------------------------ passwords


def test_a_password_is_kept_as_an_argon2id_hash_only(accounts: Accounts,
                                                     hub_database: str) -> None:
    accounts.create_user(CLI, "alice", "admin", password=PASSWORD)
    with open_db(hub_database) as db:
        stored = db.query("SELECT password_hash FROM users WHERE username = 'alice'")[0]
    assert stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in stored["password_hash"]


@pytest.mark.parametrize("password,why", [
    ("short", "too short"), ("aaaaaaaaaaaaaaaa", "too weak"),
    ("alice-is-my-password", "must not contain the user name"), ("x" * 1025, "too long")])
def test_a_weak_password_is_refused_saying_why(accounts: Accounts, password: str,
                                               why: str) -> None:
    with pytest.raises(AccountError, match=why):
        accounts.create_user(CLI, "alice", "admin", password=password)
    assert accounts.get_user("alice") is None


def test_sign_in_needs_the_right_password_of_an_enabled_account(accounts: Accounts) -> None:
    accounts.create_user(CLI, "alice", "operator", password=PASSWORD)
    assert accounts.authenticate("alice", "wrong password here") is None
    assert accounts.authenticate("nobody", PASSWORD) is None
    user = accounts.authenticate("alice", PASSWORD)
    assert user is not None and user.role == "operator"
    assert accounts.get_user("alice").last_login is not None
    accounts.create_user(CLI, "root", "admin")  # another admin, so alice may be disabled
    accounts.update_user(CLI, "alice", disabled=True)
    assert accounts.authenticate("alice", PASSWORD) is None


def test_an_account_without_a_password_cannot_sign_in_with_any(accounts: Accounts) -> None:
    accounts.create_user(CLI, "robot", "operator")
    assert accounts.authenticate("robot", "") is None
    assert accounts.authenticate("robot", PASSWORD) is None


def test_customer_accounts_are_keyed_by_their_handset_once(accounts: Accounts) -> None:
    accounts.create_user(CLI, "c1", "customer", handset_id="h-7f3a", email="c1@example.org")
    with pytest.raises(AccountError) as taken:
        accounts.create_user(CLI, "c2", "customer", handset_id="h-7f3a")
    assert taken.value.status == 409


def test_a_user_name_is_taken_once(accounts: Accounts) -> None:
    accounts.create_user(CLI, "alice", "operator")
    with pytest.raises(AccountError, match="exists") as taken:
        accounts.create_user(CLI, "alice", "admin")
    assert taken.value.status == 409


def test_the_last_enabled_admin_can_be_neither_demoted_nor_disabled(accounts: Accounts) -> None:
    accounts.create_user(CLI, "root", "admin")
    for change in ({"role": "operator"}, {"disabled": True}):
        with pytest.raises(AccountError, match="last enabled admin"):
            accounts.update_user(CLI, "root", **change)
    accounts.create_user(CLI, "second", "admin")
    assert accounts.update_user(CLI, "root", role="operator").role == "operator"


# ------------------------------------------------------------------ tokens


def test_a_token_is_kept_as_its_sha256_and_leads_back_to_its_owner(
        accounts: Accounts, hub_database: str) -> None:
    accounts.create_user(CLI, "alice", "operator")
    token, value = accounts.create_token(CLI, "alice", "grafana", "nodes:read,stats:read")
    assert value.startswith("tc1_") and len(value) == 47
    assert token.scopes == ("nodes:read", "stats:read")
    with open_db(hub_database) as db:
        assert value not in str(db.query("SELECT * FROM api_tokens"))
    user, found = accounts.check_token(value)
    assert (user.username, found.id) == ("alice", token.id)
    assert accounts.check_token(value[:-1] + ("A" if value[-1] != "A" else "B")) is None


def test_a_tokens_scopes_stay_within_its_owners_role(accounts: Accounts) -> None:
    accounts.create_user(CLI, "mia", "marketer")
    with pytest.raises(AccountError, match="go beyond what role marketer may do"):
        accounts.create_token(CLI, "mia", "t", ["stats:read", "events:read"])
    with pytest.raises(AccountError, match="unknown scope"):
        accounts.create_token(CLI, "mia", "t", ["stats:write"])
    assert accounts.create_token(CLI, "mia", "t", "all")[0].scopes == (
        "content:read", "content:write", "stats:read", "tokens:own")


def test_a_revoked_or_expired_token_is_refused(accounts: Accounts,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.accounts

    accounts.create_user(CLI, "alice", "operator")
    revoked, value = accounts.create_token(CLI, "alice", "old", "all")
    accounts.revoke_token(CLI, revoked.id)
    assert accounts.check_token(value) is None
    _, value = accounts.create_token(CLI, "alice", "brief", "all",
                                     expires_at=time.time() + 60)
    assert accounts.check_token(value) is not None
    later = time.time() + 61
    monkeypatch.setattr(hub.accounts, "time", SimpleNamespace(time=lambda: later))
    assert accounts.check_token(value) is None


def test_every_hub_process_ends_with_the_same_session_key(hub_database: str) -> None:
    """gunicorn workers starting together race to create it: one wins, all read it."""
    keys: list[bytes] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        with open_db(hub_database) as db:
            barrier.wait()
            keys.append(Accounts(db.engine).shared_secret())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 4 and len(set(keys)) == 1 and len(keys[0]) == 64


# ------------------------------------------------------------------ audit log


def test_every_change_is_audited_with_who_what_when_before_and_after(
        accounts: Accounts) -> None:
    started = time.time()
    accounts.create_user(CLI, "alice", "operator", password=PASSWORD)
    admin = Actor(7, "root", "web", "10.0.0.9")
    accounts.update_user(admin, "alice", role="auditor")
    accounts.set_password(admin, "alice", "another long passphrase")
    token, _ = accounts.create_token(admin, "alice", "t", ["audit:read"])
    accounts.revoke_token(admin, token.id)
    entries = accounts.audit_entries()
    assert [e["action"] for e in entries] == ["token.revoke", "token.create",
                                              "user.set_password", "user.update",
                                              "user.create"]
    create = entries[-1]
    assert (create["actor_name"], create["via"], create["actor_id"]) == ("cli:test", "cli", None)
    assert create["before"] is None and create["after"]["role"] == "operator"
    assert "password_hash" not in create["after"] and create["after"]["has_password"]
    update = entries[-2]
    assert (update["actor_id"], update["actor_name"], update["via"],
            update["remote_addr"]) == (7, "root", "web", "10.0.0.9")
    assert (update["before"]["role"], update["after"]["role"]) == ("operator", "auditor")
    assert (update["target_type"], update["target_id"]) == ("user", "alice")
    assert entries[0]["before"]["revoked_at"] is None and entries[0]["after"]["revoked_at"]
    assert all(started <= e["at"] <= time.time() for e in entries)
    assert all("tc1_" not in str(e) for e in entries)


def test_a_refused_change_leaves_no_audit_entry(accounts: Accounts) -> None:
    accounts.create_user(CLI, "root", "admin")
    with pytest.raises(AccountError):
        accounts.update_user(CLI, "root", disabled=True)
    assert [e["action"] for e in accounts.audit_entries()] == ["user.create"]


# ------------------------------------------------------------------ API


def test_a_demoted_users_tokens_lose_power_at_their_next_request(app: Flask) -> None:
    config = app.config["TAPCAST"]
    make_user(config, "root", "admin")
    make_user(config, "olga", "operator")
    store = Accounts(get_db(app).engine)
    _, value = store.create_token(CLI, "olga", "t", "all")
    client = app.test_client()
    assert client.get("/api/v1/events", headers=bearer(value)).status_code == 200
    store.update_user(CLI, "olga", role="marketer")
    r = client.get("/api/v1/events", headers=bearer(value))
    assert r.status_code == 403 and "role marketer may not" in r.json["error"]
    assert client.get("/api/v1/stats", headers=bearer(value)).status_code == 200
    store.update_user(CLI, "olga", disabled=True)
    assert client.get("/api/v1/stats", headers=bearer(value)).status_code == 401


def test_a_new_password_ends_the_sessions_begun_with_the_old_one(app: Flask) -> None:
    browser, _ = signed_in(app, "olga", "operator")
    other, _ = signed_in(app, "root", "admin")
    assert browser.get("/api/v1/stats").status_code == 200
    Accounts(get_db(app).engine).set_password(CLI, "olga", "another long passphrase")
    r = browser.get("/api/v1/stats")
    assert r.status_code == 401 and "password change" in r.json["error"]
    assert other.get("/api/v1/stats").status_code == 200  # someone else's stays
    assert sign_in(browser, "olga", "another long passphrase") == 303
    assert browser.get("/api/v1/stats").status_code == 200


def test_a_token_reaches_only_its_scopes_and_cannot_mint_wider_ones(app: Flask) -> None:
    make_user(app.config["TAPCAST"], "olga", "operator")
    store = Accounts(get_db(app).engine)
    _, narrow = store.create_token(CLI, "olga", "narrow", ["stats:read", "tokens:own"])
    client = app.test_client()
    assert client.get("/api/v1/stats", headers=bearer(narrow)).status_code == 200
    r = client.get("/api/v1/nodes", headers=bearer(narrow))
    assert r.status_code == 403 and "scopes do not include nodes:read" in r.json["error"]
    r = client.post("/api/v1/tokens", headers=bearer(narrow),
                    json={"name": "wider", "scopes": ["nodes:read"]})
    assert r.status_code == 403 and "beyond this token's own scopes" in r.json["error"]


def test_a_token_made_through_the_api_is_shown_once_and_listed_without_its_value(
        app: Flask) -> None:
    make_user(app.config["TAPCAST"], "olga", "operator")
    _, value = Accounts(get_db(app).engine).create_token(CLI, "olga", "first", "all")
    client = app.test_client()
    r = client.post("/api/v1/tokens", headers=bearer(value),
                    json={"name": "script", "scopes": ["nodes:read"]})
    assert r.status_code == 201 and r.json["token"].startswith("tc1_")
    assert r.headers["Cache-Control"] == "no-store"
    listed = client.get("/api/v1/tokens", headers=bearer(value)).json["tokens"]
    assert [t["name"] for t in listed] == ["first", "script"]
    assert r.json["token"] not in str(listed)
    assert client.get("/api/v1/nodes", headers=bearer(r.json["token"])).status_code == 200
    gone = client.delete(f"/api/v1/tokens/{r.json['id']}", headers=bearer(value))
    assert gone.status_code == 200 and gone.json["revoked_at"] is not None
    assert client.get("/api/v1/nodes", headers=bearer(r.json["token"])).status_code == 401


def test_nobody_revokes_another_users_token_but_an_admin(app: Flask) -> None:
    config = app.config["TAPCAST"]
    for name, role in (("root", "admin"), ("olga", "operator"), ("otto", "operator")):
        make_user(config, name, role)
    store = Accounts(get_db(app).engine)
    victim, _ = store.create_token(CLI, "olga", "t", "all")
    _, otto = store.create_token(CLI, "otto", "t", "all")
    _, root = store.create_token(CLI, "root", "t", "all")
    client = app.test_client()
    assert client.delete(f"/api/v1/tokens/{victim.id}", headers=bearer(otto)).status_code == 404
    assert client.delete(f"/api/v1/tokens/{victim.id}", headers=bearer(root)).status_code == 200


@pytest.mark.parametrize("body,status,message", [
    ({"username": "bob", "role": "operator", "extra": 1}, 400, "unknown field"),
    ({"username": "bob", "role": "boss"}, 400, "is not a role"),
    ({"username": "Bob", "role": "operator"}, 400, "lowercase"),
    ({"username": "bob", "role": "operator", "password": "short"}, 400, "too short"),
    ({"username": "root", "role": "operator"}, 409, "exists"),
    ([], 400, "Expected `object`"),
])
def test_a_bad_user_body_is_refused_saying_why(app: Flask, body: object, status: int,
                                               message: str) -> None:
    make_user(app.config["TAPCAST"], "root", "admin")
    _, token = Accounts(get_db(app).engine).create_token(CLI, "root", "t", "all")
    r = app.test_client().post("/api/v1/users", headers=bearer(token), json=body)
    assert r.status_code == status and message in r.json["error"]


def test_admin_changes_through_the_api_are_audited_as_api_from_their_address(
        app: Flask) -> None:
    make_user(app.config["TAPCAST"], "root", "admin")
    _, token = Accounts(get_db(app).engine).create_token(CLI, "root", "t", "all")
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    auth = bearer(token)
    assert client.post("/api/v1/users", headers=auth, json={
        "username": "bob", "role": "operator", "password": PASSWORD}).status_code == 201
    r = client.patch("/api/v1/users/bob", headers=auth, json={"role": "auditor"})
    assert r.status_code == 200 and r.json["role"] == "auditor"
    assert client.patch("/api/v1/users/bob", headers=auth,
                        json={"disabled": True}).json["disabled"] is True
    entries = client.get("/api/v1/audit?actor=root", headers=auth).json["entries"]
    assert [(e["action"], e["via"], e["remote_addr"]) for e in entries] == [
        ("user.update", "api", "192.0.2.7"), ("user.update", "api", "192.0.2.7"),
        ("user.create", "api", "192.0.2.7")]
    assert (entries[1]["before"]["role"], entries[1]["after"]["role"]) == ("operator",
                                                                           "auditor")
    assert (entries[0]["before"]["disabled"], entries[0]["after"]["disabled"]) == (False, True)


def test_the_audit_log_is_paged_by_cursor_to_the_end(app: Flask) -> None:
    make_user(app.config["TAPCAST"], "root", "admin")
    store = Accounts(get_db(app).engine)
    for i in range(4):
        store.create_user(CLI, f"u{i}", "operator")
    _, token = store.create_token(CLI, "root", "t", ["audit:read"])
    client = app.test_client()
    url, seen = "/api/v1/audit?limit=2&action=user.create", []
    while url:
        page = client.get(url, headers=bearer(token)).json
        seen += [e["target_id"] for e in page["entries"]]
        url = page["next"]
    assert seen == ["u3", "u2", "u1", "u0", "root"]


@pytest.mark.parametrize("query,message", [
    ("limit=0", "limit must be between 1 and 500"), ("limit=x", "limit must be between"),
    ("cursor=bm9kZTox", "not one this API returned for /api/v1/audit"),
    ("action=DROP%20TABLE", "is not an action"), ("who=root", "unknown query parameter"),
    ("limit=1&limit=2", "given more than once"),
])
def test_a_bad_audit_query_is_400_saying_what_to_fix(app: Flask, query: str,
                                                     message: str) -> None:
    make_user(app.config["TAPCAST"], "root", "admin")
    _, token = Accounts(get_db(app).engine).create_token(CLI, "root", "t", "all")
    r = app.test_client().get(f"/api/v1/audit?{query}", headers=bearer(token))
    assert r.status_code == 400 and message in r.json["error"]


def test_me_says_who_and_what_the_credential_may_do(app: Flask) -> None:
    make_user(app.config["TAPCAST"], "mia", "marketer")
    _, token = Accounts(get_db(app).engine).create_token(CLI, "mia", "t", ["stats:read"])
    me = app.test_client().get("/api/v1/me", headers=bearer(token)).json
    assert (me["user"]["username"], me["via"], me["permissions"]) == ("mia", "api",
                                                                      ["stats:read"])


# ------------------------------------------------------------------ CSRF


def test_an_api_change_with_the_session_but_no_csrf_header_is_refused(app: Flask) -> None:
    client, csrf = signed_in(app, "root", "admin")
    body = {"username": "bob", "role": "operator"}
    r = client.post("/api/v1/users", json=body)
    assert r.status_code == 400 and "X-CSRFToken" in r.json["error"]
    assert client.get("/api/v1/users/bob").status_code == 404
    assert client.post("/api/v1/users", json=body,
                       headers={"X-CSRFToken": csrf}).status_code == 201


@pytest.mark.parametrize("path,form", [
    ("/account/tokens", {"name": "t", "scopes": "nodes:read"}),
    ("/users", {"username": "bob", "role": "admin"}),
    ("/users/root", {"role": "operator"}),
])
def test_a_page_form_without_its_csrf_token_changes_nothing(app: Flask, path: str,
                                                            form: dict[str, str]) -> None:
    client, _ = signed_in(app, "root", "admin")
    before = Accounts(get_db(app).engine).audit_entries()
    r = client.post(path, data=form)
    assert r.status_code == 400 and "came from another site" in r.get_data(as_text=True)
    r = client.post(path, data={**form, "csrf_token": "forged"})
    assert r.status_code == 400
    assert Accounts(get_db(app).engine).audit_entries() == before


# ------------------------------------------------------------------ rate limit


def test_failed_sign_ins_are_limited_per_address(app: Flask) -> None:
    make_user(app.config["TAPCAST"], "olga", "operator", password=PASSWORD)
    client = app.test_client()
    for n in range(5):
        assert sign_in(client, f"guess{n}", "wrong password!") == 401
    r_status = sign_in(client, "olga")  # the right password, from the same address
    assert r_status == 429
    assert sign_in(app.test_client(), "olga", remote="192.0.2.1") == 303  # another address


def test_failed_sign_ins_are_limited_per_user_name_across_addresses(app: Flask) -> None:
    make_user(app.config["TAPCAST"], "olga", "operator", password=PASSWORD)
    for n in range(5):
        assert sign_in(app.test_client(), "olga", "wrong password!",
                       remote=f"192.0.2.{n}") == 401
    client = app.test_client()
    form = client.get("/signin", environ_base={"REMOTE_ADDR": "198.51.100.1"})
    r = client.post("/signin", data={"username": "olga", "password": PASSWORD,
                                     "csrf_token": csrf_token(form.get_data(as_text=True))},
                    environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert r.status_code == 429 and "wait a minute" in r.get_data(as_text=True)
    assert r.headers["Retry-After"]


def test_successful_sign_ins_do_not_use_up_the_limit(app: Flask) -> None:
    make_user(app.config["TAPCAST"], "olga", "operator", password=PASSWORD)
    for _ in range(7):
        assert sign_in(app.test_client(), "olga") == 303


# ------------------------------------------------------------------ pages


def test_my_tokens_page_shows_a_new_token_once_and_revokes_it(app: Flask) -> None:
    client, csrf = signed_in(app, "olga", "operator")
    page = client.get("/account").get_data(as_text=True)
    assert 'value="users:admin"' not in page  # only what the role may do is offered
    r = client.post("/account/tokens", data={"name": "laptop", "scopes": ["nodes:read"],
                                             "csrf_token": csrf})
    html = r.get_data(as_text=True)
    value = re.search(r'data-testid="new-token">(tc1_[^<]+)<', html).group(1)
    assert client.get("/api/v1/nodes", headers=bearer(value)).status_code == 200
    again = client.get("/account").get_data(as_text=True)
    assert value not in again and "laptop" in again
    token_id = re.search(r'data-token-id="([0-9a-f]{16})"', again).group(1)
    r = client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert client.get("/api/v1/nodes", headers=bearer(value)).status_code == 401


def test_an_admin_makes_and_demotes_users_on_the_users_page(app: Flask) -> None:
    client, csrf = signed_in(app, "root", "admin")
    r = client.post("/users", data={"username": "bob", "role": "operator",
                                    "password": PASSWORD, "csrf_token": csrf})
    assert r.status_code == 303
    r = client.post("/users/bob", data={"role": "marketer", "csrf_token": csrf})
    assert r.status_code == 303
    html = client.get("/users").get_data(as_text=True)
    assert re.search(r'data-username="bob".*?data-testid="user-role">marketer<', html, re.S)
    actions = [(e["action"], e["via"], e["actor_name"])
               for e in Accounts(get_db(app).engine).audit_entries(actor="root")]
    assert actions == [("user.update", "web", "root"), ("user.create", "web", "root")]


def test_the_audit_page_shows_changes_to_auditors_not_operators(app: Flask) -> None:
    make_user(app.config["TAPCAST"], "bob", "operator")
    auditor, _ = signed_in(app, "ann", "auditor")
    html = auditor.get("/audit").get_data(as_text=True)
    rows = re.findall(r'data-testid="audit-action">([^<]+)<', html)
    assert rows[:2] == ["user.create", "user.create"]
    assert 'data-testid="audit-actor">cli:' in html
    operator, _ = signed_in(app, "olga", "operator")
    r = operator.get("/audit")
    assert r.status_code == 403 and "needs audit:read" in r.get_data(as_text=True)
