"""Customers from the handset app (hub/handsets.py, hub/handsets_api.py), on SQLite and
PostgreSQL through Flask's test client: register, sign in again with a new key, wrong
passwords and the rate limit, the certificate the hub issues, and a customer's token
kept out of the staff API. The code path's own tests are in tests/test_presence.py."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from hall.testing.hub import cheap_password_hashing
from hub import create_app, get_db
from hub.auth import auth_counts
from hub.config import HubConfig
from tapcast.config import load
from tapcast.keys import KIND_HANDSET, Certificate, HubAuthority, public_key_bytes

PASSWORD = "a long walk by the river"


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.accounts

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())


@pytest.fixture
def authority(tmp_path: Path) -> HubAuthority:
    authority = HubAuthority.generate()
    authority.save(tmp_path / "keys")
    return authority


@pytest.fixture
def app(hub_database: str, tmp_path: Path, authority: HubAuthority) -> Iterator[Flask]:
    config = load(HubConfig, data={"hub": {
        "database": hub_database, "files": str(tmp_path / "files"),
        "signing_key": str(tmp_path / "keys" / "hub.key")}}, environ={})
    app = create_app(config)
    yield app
    get_db(app).close()


def new_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, public_key_bytes(key).hex()


def register(client: FlaskClient, username: str = "alice", password: str = PASSWORD,
             public_key: str | None = None) -> dict:
    r = client.post("/api/v1/handsets", json={
        "username": username, "password": password,
        "public_key": public_key or new_key()[1]})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def test_register_issues_a_certificate_for_the_phones_key_and_a_token(
        app: Flask, authority: HubAuthority) -> None:
    client = app.test_client()
    key, pub = new_key()
    before = time.time()
    issued = register(client, public_key=pub)
    cert = Certificate.decode(bytes.fromhex(issued["certificate"]))
    cert.verify(authority.public_key_bytes, time.time(), KIND_HANDSET)  # raises if not
    assert cert.subject_id == issued["handset_id"] and issued["handset_id"].startswith("h")
    assert cert.public_key == public_key_bytes(key)
    assert issued["hub_public_keys"] == [authority.public_key_bytes.hex()]
    assert issued["certificate_expires_at"] > before + 300 * 86400
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {issued['token']}"})
    assert me.status_code == 200
    assert me.json["user"]["role"] == "customer"
    assert me.json["user"]["handset_id"] == issued["handset_id"]
    assert me.json["permissions"] == ["presence:use"]
    assert me.json["token"]["scopes"] == ["presence:use"]


def test_a_certificate_from_another_hub_key_does_not_verify(app: Flask) -> None:
    issued = register(app.test_client())
    cert = Certificate.decode(bytes.fromhex(issued["certificate"]))
    assert cert.check(HubAuthority.generate().public_key_bytes, time.time(),
                      KIND_HANDSET) == "unknown_key_id"


def test_sign_in_with_a_new_key_gives_a_new_handset_and_ends_the_old_one(
        app: Flask, authority: HubAuthority) -> None:
    client = app.test_client()
    first = register(client)
    key, pub = new_key()
    r = client.post("/api/v1/handsets/signin", json={"username": "alice",
                                                     "password": PASSWORD, "public_key": pub})
    assert r.status_code == 200, r.get_json()
    second = r.get_json()
    assert second["handset_id"] != first["handset_id"]
    cert = Certificate.decode(bytes.fromhex(second["certificate"]))
    cert.verify(authority.public_key_bytes, time.time(), KIND_HANDSET)
    assert cert.subject_id == second["handset_id"] and cert.public_key == public_key_bytes(key)
    old = client.get("/api/v1/me", headers={"Authorization": f"Bearer {first['token']}"})
    assert old.status_code == 401  # the old phone's token was revoked with its handset
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {second['token']}"})
    assert me.json["user"]["handset_id"] == second["handset_id"]
    from hub.auth import accounts

    with app.app_context():
        entries = accounts().audit_entries(action="handset.issue")
    assert [e["after"]["handset_id"] for e in entries] == [second["handset_id"],
                                                            first["handset_id"]]
    assert entries[0]["after"]["replaced"] == [first["handset_id"]]


def test_a_wrong_password_is_a_401_counted_and_issues_nothing(app: Flask) -> None:
    client = app.test_client()
    first = register(client)
    before = auth_counts()["login_failures"]
    for name, password in (("alice", "not the password at all"), ("nobody", PASSWORD)):
        r = client.post("/api/v1/handsets/signin", json={
            "username": name, "password": password, "public_key": new_key()[1]})
        assert r.status_code == 401 and r.json["error"] == "wrong user name or password"
    assert auth_counts()["login_failures"] == before + 2
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {first['token']}"})
    assert me.json["user"]["handset_id"] == first["handset_id"]  # unchanged


def test_failed_sign_ins_are_rate_limited_per_user_name(app: Flask) -> None:
    client = app.test_client()
    register(client)
    codes = [client.post("/api/v1/handsets/signin", json={
        "username": "alice", "password": f"wrong password {i}", "public_key": new_key()[1]},
        environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    # the right password from yet another address is still refused for the name
    r = client.post("/api/v1/handsets/signin", json={
        "username": "alice", "password": PASSWORD, "public_key": new_key()[1]},
        environ_base={"REMOTE_ADDR": "10.0.1.1"})
    assert r.status_code == 429 and "too many" in r.json["error"]


@pytest.mark.parametrize("body,why", [
    ({"username": "Bob!", "password": PASSWORD}, "user name"),
    ({"username": "bob", "password": "short"}, "too short"),
    ({"username": "bob", "password": "bob is my password ok"}, "user name"),
    ({"username": "bob", "password": PASSWORD, "public_key": "zz"}, "public_key"),
    ({"username": "bob", "password": PASSWORD, "extra": 1}, "extra"),
])
def test_bad_registrations_are_400s_that_say_why(app: Flask, body: dict, why: str) -> None:
    body = {"public_key": new_key()[1], **body}
    r = app.test_client().post("/api/v1/handsets", json=body)
    assert r.status_code == 400 and why in r.json["error"], r.json


def test_a_taken_user_name_is_a_409(app: Flask) -> None:
    client = app.test_client()
    register(client)
    r = client.post("/api/v1/handsets", json={"username": "alice", "password": PASSWORD,
                                               "public_key": new_key()[1]})
    assert r.status_code == 409


def test_a_staff_account_gets_no_handset(app: Flask) -> None:
    from hall.testing.hub import make_user

    make_user(app.config["TAPCAST"], "olga", "operator", password=PASSWORD)
    r = app.test_client().post("/api/v1/handsets/signin", json={
        "username": "olga", "password": PASSWORD, "public_key": new_key()[1]})
    assert r.status_code == 403 and "customer" in r.json["error"]


@pytest.mark.parametrize("method,url", [
    ("GET", "/api/v1/nodes"), ("GET", "/api/v1/events"), ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/users"), ("GET", "/api/v1/tokens"), ("GET", "/api/v1/content"),
    ("POST", "/api/v1/tokens"), ("GET", "/api/v1/audit")])
def test_a_customer_token_cannot_call_staff_endpoints(app: Flask, method: str,
                                                      url: str) -> None:
    issued = register(app.test_client())
    r = app.test_client().open(url, method=method, json={} if method == "POST" else None,
                               headers={"Authorization": f"Bearer {issued['token']}"})
    assert r.status_code == 403, (url, r.status_code, r.get_json())


def test_registering_needs_the_hubs_signing_key(hub_database: str, tmp_path: Path) -> None:
    config = load(HubConfig, data={"hub": {
        "database": hub_database, "files": str(tmp_path / "files"),
        "signing_key": str(tmp_path / "missing" / "hub.key")}}, environ={})
    app = create_app(config)
    try:
        r = app.test_client().post("/api/v1/handsets", json={
            "username": "carol", "password": PASSWORD, "public_key": new_key()[1]})
        assert r.status_code == 503 and "signing key" in r.json["error"]
    finally:
        get_db(app).close()


def test_wrong_codes_are_404s_counted_and_rate_limited_per_account(app: Flask) -> None:
    client = app.test_client()
    alice, bob = register(client, "alice"), register(client, "bob")
    before = auth_counts()["auth_failures"]

    def present(who: dict, code: str) -> int:
        return client.post("/api/v1/presence", json={"code": code}, headers={
            "Authorization": f"Bearer {who['token']}"}).status_code

    assert [present(alice, f"{n:08d}") for n in range(12)] == [404] * 10 + [429, 429]
    assert auth_counts()["auth_failures"] >= before + 10
    assert present(bob, "00000001") == 404  # per account: bob is not held back
    r = client.post("/api/v1/presence", json={"code": "12"}, headers={
        "Authorization": f"Bearer {bob['token']}"})
    assert r.status_code == 400 and "8 digits" in r.json["error"]
    r = client.get("/api/v1/presence/" + "0" * 32, headers={
        "Authorization": f"Bearer {bob['token']}"})
    assert r.status_code == 404


def test_the_apps_hub_client_registers_signs_in_again_and_keeps_its_token(
        tmp_path: Path) -> None:
    """handset_app/hubclient.py against a hub web over real HTTP (no broker needed)."""
    from hall.testing.hub import hub_config, serve
    from handset_app.hubclient import HubClient, HubError

    server = serve(hub_config(tmp_path / "hub.db", "mqtt://127.0.0.1:1"), start_ingest=False)
    try:
        authority = server.authority
        client = HubClient(server.url)
        first = client.register("dora", PASSWORD)
        Certificate.decode(first.cert).verify(first.hub_keyring, time.time(), KIND_HANDSET)
        assert first.hub_public_key == authority.public_key_bytes
        client.save(tmp_path / "phone")
        assert (tmp_path / "phone" / "hub.json").stat().st_mode & 0o777 == 0o600
        again = HubClient.load(tmp_path / "phone")
        assert again is not None and (again.url, again.token) == (client.url, client.token)
        old_token = client.token
        second = client.sign_in("dora", PASSWORD)  # "reset identity": a fresh key
        assert second.handset_id != first.handset_id and client.token != old_token
        assert public_key_bytes(second.private_key) != public_key_bytes(first.private_key)
        with pytest.raises(HubError) as wrong:
            client.sign_in("dora", "not the password, sorry")
        assert wrong.value.status == 401 and "wrong user name or password" in str(wrong.value)
        with pytest.raises(HubError) as taken:
            HubClient(server.url).register("dora", PASSWORD)
        assert taken.value.status == 409
        stale = HubClient(server.url, token=old_token)
        with pytest.raises(HubError) as revoked:
            stale.present_code("12345678", first)
        assert revoked.value.status == 401
        with pytest.raises(HubError) as away:
            HubClient("http://127.0.0.1:1").register("erin", PASSWORD)
        assert away.value.status == 0 and "cannot reach the hub" in str(away.value)
    finally:
        server.shutdown()
