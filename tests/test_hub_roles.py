"""Every page and endpoint checks the role: a table of what each endpoint needs, checked
against the app's own rules, and one request per endpoint and role (signed in with a
password, CSRF token sent as a person's browser sends it) getting in, a 403, or the
sign-in (401 for the API) as the table says. A new endpoint fails here until it has a
rule and a line in both tables."""
from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hall.testing.hub import cheap_password_hashing, make_user
from hub import create_app, get_db
from hub.accounts import ROLE_PERMISSIONS, ROLES
from hub.accounts import Actor
from hub.auth import PUBLIC, SIGNED_IN, Rule, rule_of
from hub.content import ItemInput
from hub.content_api import library
from hub.config import HubConfig
from hub.migrate import upgrade
from tapcast.protocol.manifest import file_request_sig
from tapcast.protocol.mqtt import stream_key
from tapcast.streamkeys import write_stream_secret
from tapcast.config import load
from tapcast.keys import HubAuthority

PASSWORD = "correct horse battery staple"
#: A 1x1 PNG, as the content endpoints take for a coupon.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000"
                    "000d4944415478da63f8cfc0f01f0005000201a5c7d2a10000000049454e44ae426082")
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
#: The hub's stream secret: node n1's file requests are signed with the key it derives.
STREAM_SECRET = bytes(range(32))
#: A handset's public key (the customer endpoints), and a code session's id.
HANDSET_KEY = "11" * 32
OFFER_ID = "0" * 32


def node_file_query() -> str:
    """Node n1's request for the PNG, signed now (a request is good for ten minutes)."""
    now = int(time.time())
    sig = file_request_sig(stream_key(STREAM_SECRET, "n1"), "n1", PNG_SHA256, now)
    return f"node=n1&ts={now}&sig={sig}"

#: What each endpoint needs: "public", "signed in", or its permissions.
EXPECTED: dict[str, str | frozenset[str]] = {
    "static": "public",
    "auth.signin_form": "public",
    "auth.signin": "public",
    "auth.signout": "signed in",
    "pages.index": "signed in",
    "api.openapi": "public",
    "api.list_nodes": frozenset({"nodes:read"}),
    "api.get_node": frozenset({"nodes:read"}),
    "api.list_events": frozenset({"events:read"}),
    "api.list_incidents": frozenset({"incidents:read"}),
    "api.stats": frozenset({"stats:read"}),
    "accounts_api.me": "signed in",
    "accounts_api.list_tokens": frozenset({"tokens:own"}),
    "accounts_api.create_token": frozenset({"tokens:own"}),
    "accounts_api.revoke_token": frozenset({"tokens:own"}),
    "accounts_api.list_users": frozenset({"users:admin"}),
    "accounts_api.create_user": frozenset({"users:admin"}),
    "accounts_api.get_user": frozenset({"users:admin"}),
    "accounts_api.update_user": frozenset({"users:admin"}),
    "accounts_api.list_audit": frozenset({"audit:read"}),
    "accounts_pages.account": frozenset({"tokens:own"}),
    "accounts_pages.create_token": frozenset({"tokens:own"}),
    "accounts_pages.revoke_token": frozenset({"tokens:own"}),
    "accounts_pages.users": frozenset({"users:admin"}),
    "accounts_pages.create_user": frozenset({"users:admin"}),
    "accounts_pages.update_user": frozenset({"users:admin"}),
    "accounts_pages.audit": frozenset({"audit:read"}),
    "content_api.list_content": frozenset({"content:read"}),
    "content_api.create_content": frozenset({"content:write"}),
    "content_api.get_content": frozenset({"content:read"}),
    "content_api.list_versions": frozenset({"content:read"}),
    "content_api.create_version": frozenset({"content:write"}),
    "content_api.place_content": frozenset({"content:write"}),
    "content_api.retire_content": frozenset({"content:write"}),
    "content_api.upload_file": frozenset({"content:write"}),
    "content_api.get_file": frozenset({"content:read"}),
    "content_api.list_groups": frozenset({"content:read"}),
    "content_api.set_group": frozenset({"content:write"}),
    "content_api.preview": frozenset({"content:read"}),
    "content_pages.content": frozenset({"content:read"}),
    "content_pages.create_content": frozenset({"content:write"}),
    "content_pages.set_group": frozenset({"content:write"}),
    "content_pages.item": frozenset({"content:read"}),
    "content_pages.create_version": frozenset({"content:write"}),
    "content_pages.place": frozenset({"content:write"}),
    "content_pages.retire": frozenset({"content:write"}),
    "node_files.node_file": "public",
    "content_api.content_funnel": frozenset({"content:read"}),
    "content_pages.funnel_csv": frozenset({"content:read"}),
    "content_api.list_campaigns": frozenset({"content:read"}),
    "content_api.create_campaign": frozenset({"content:write"}),
    "content_api.get_campaign": frozenset({"content:read"}),
    "content_api.place_campaign": frozenset({"content:write"}),
    "content_api.set_campaign_items": frozenset({"content:write"}),
    "content_api.retire_campaign": frozenset({"content:write"}),
    "content_api.campaign_funnel": frozenset({"content:read"}),
    "content_pages.campaigns": frozenset({"content:read"}),
    "content_pages.create_campaign": frozenset({"content:write"}),
    "content_pages.campaign": frozenset({"content:read"}),
    "content_pages.place_campaign": frozenset({"content:write"}),
    "content_pages.set_campaign_items": frozenset({"content:write"}),
    "content_pages.retire_campaign": frozenset({"content:write"}),
    "content_pages.campaign_funnel_csv": frozenset({"content:read"}),
    "handsets_api.register": "public",
    "handsets_api.sign_in": "public",
    "handsets_api.present_code": frozenset({"presence:use"}),
    "handsets_api.answer": frozenset({"presence:use"}),
    "handsets_api.get_presence": frozenset({"presence:use"}),
}

#: One request per endpoint: method, URL, and a JSON body or form fields. Changes are
#: harmless to the other cases (unique names, a target account nobody signs in as).
REQUESTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "static": ("GET", "/static/hub.css", None),
    "auth.signin_form": ("GET", "/signin", None),
    "auth.signin": ("POST", "/signin", {"form": "credentials"}),
    "auth.signout": ("POST", "/signout", {"form": {}}),
    "pages.index": ("GET", "/", None),
    "api.openapi": ("GET", "/api/v1/openapi.json", None),
    "api.list_nodes": ("GET", "/api/v1/nodes", None),
    "api.get_node": ("GET", "/api/v1/nodes/n1", None),
    "api.list_events": ("GET", "/api/v1/events", None),
    "api.list_incidents": ("GET", "/api/v1/incidents", None),
    "api.stats": ("GET", "/api/v1/stats", None),
    "accounts_api.me": ("GET", "/api/v1/me", None),
    "accounts_api.list_tokens": ("GET", "/api/v1/tokens", None),
    "accounts_api.create_token": ("POST", "/api/v1/tokens",
                                  {"json": {"name": "unique", "scopes": ["tokens:own"]}}),
    "accounts_api.revoke_token": ("DELETE", "/api/v1/tokens/0123456789abcdef", None),
    "accounts_api.list_users": ("GET", "/api/v1/users", None),
    "accounts_api.create_user": ("POST", "/api/v1/users",
                                 {"json": {"username": "unique", "role": "operator"}}),
    "accounts_api.get_user": ("GET", "/api/v1/users/target", None),
    "accounts_api.update_user": ("PATCH", "/api/v1/users/target",
                                 {"json": {"display_name": "Target"}}),
    "accounts_api.list_audit": ("GET", "/api/v1/audit", None),
    "accounts_pages.account": ("GET", "/account", None),
    "accounts_pages.create_token": ("POST", "/account/tokens",
                                    {"form": {"name": "unique", "scopes": "tokens:own"}}),
    "accounts_pages.revoke_token": ("POST", "/account/tokens/0123456789abcdef/revoke",
                                    {"form": {}}),
    "accounts_pages.users": ("GET", "/users", None),
    "accounts_pages.create_user": ("POST", "/users",
                                   {"form": {"username": "unique", "role": "operator"}}),
    "accounts_pages.update_user": ("POST", "/users/target",
                                   {"form": {"role": "operator"}}),
    "accounts_pages.audit": ("GET", "/audit", None),
    "content_api.list_content": ("GET", "/api/v1/content", None),
    "content_api.create_content": ("POST", "/api/v1/content",
                                   {"json": {"key": "unique", "kind": "article",
                                             "title": "Unique"}}),
    "content_api.get_content": ("GET", "/api/v1/content/target", None),
    "content_api.list_versions": ("GET", "/api/v1/content/target/versions", None),
    "content_api.create_version": ("POST", "/api/v1/content/target/versions",
                                   {"json": {"title": "unique"}}),
    "content_api.place_content": ("PUT", "/api/v1/content/target/placement",
                                  {"json": {"targets": {"zones": ["z1"]}}}),
    "content_api.retire_content": ("POST", "/api/v1/content/gone/retire", None),
    "content_api.upload_file": ("POST", "/api/v1/files?kind=coupon", {"data": PNG}),
    "content_api.get_file": ("GET", f"/api/v1/files/{PNG_SHA256}", None),
    "content_api.list_groups": ("GET", "/api/v1/groups", None),
    "content_api.set_group": ("PUT", "/api/v1/groups/g1", {"json": {"nodes": ["n1"]}}),
    "content_api.preview": ("GET", "/api/v1/preview?node_id=n1", None),
    "content_pages.content": ("GET", "/content", None),
    "content_pages.create_content": ("POST", "/content",
                                     {"form": {"key": "unique", "kind": "article",
                                               "title": "Unique", "share": "1",
                                               "priority": "0", "cap_per": "day"}}),
    "content_pages.set_group": ("POST", "/content/groups",
                                {"form": {"name": "g2", "nodes": "n1"}}),
    "content_pages.item": ("GET", "/content/target", None),
    "content_pages.create_version": ("POST", "/content/target/versions",
                                     {"form": {"title": "unique"}}),
    "content_pages.place": ("POST", "/content/target/placement",
                            {"form": {"zones": "z2", "share": "1", "priority": "0",
                                      "cap_per": "day"}}),
    "content_pages.retire": ("POST", "/content/gone/retire", {"form": {}}),
    "node_files.node_file": ("GET", f"/node/v1/files/{PNG_SHA256}?{{node_file_query}}", None),
    "content_api.content_funnel": ("GET", "/api/v1/content/target/funnel", None),
    "content_pages.funnel_csv": ("GET", "/content/target/funnel.csv", None),
    "content_api.list_campaigns": ("GET", "/api/v1/campaigns", None),
    "content_api.create_campaign": ("POST", "/api/v1/campaigns",
                                    {"json": {"key": "unique", "title": "Unique"}}),
    "content_api.get_campaign": ("GET", "/api/v1/campaigns/spring", None),
    "content_api.place_campaign": ("PUT", "/api/v1/campaigns/spring/placement",
                                   {"json": {"title": "unique"}}),
    "content_api.set_campaign_items": ("PUT", "/api/v1/campaigns/spring/items",
                                       {"json": {"items": ["target"]}}),
    "content_api.retire_campaign": ("POST", "/api/v1/campaigns/autumn/retire", None),
    "content_api.campaign_funnel": ("GET", "/api/v1/campaigns/spring/funnel", None),
    "content_pages.campaigns": ("GET", "/campaigns", None),
    "content_pages.create_campaign": ("POST", "/campaigns",
                                      {"form": {"key": "unique", "title": "Unique",
                                                "share": "1", "priority": "0",
                                                "cap_per": "day"}}),
    "content_pages.campaign": ("GET", "/campaigns/spring", None),
    "content_pages.place_campaign": ("POST", "/campaigns/spring/placement",
                                     {"form": {"zones": "z3", "share": "1", "priority": "0",
                                               "cap_per": "day"}}),
    "content_pages.set_campaign_items": ("POST", "/campaigns/spring/items",
                                         {"form": {"items": "target"}}),
    "content_pages.retire_campaign": ("POST", "/campaigns/autumn/retire", {"form": {}}),
    "content_pages.campaign_funnel_csv": ("GET", "/campaigns/spring/funnel.csv", None),
    "handsets_api.register": ("POST", "/api/v1/handsets",
                              {"json": {"username": "unique", "password": PASSWORD,
                                        "public_key": HANDSET_KEY}}),
    "handsets_api.sign_in": ("POST", "/api/v1/handsets/signin",
                             {"json": {"username": "customer", "password": PASSWORD,
                                       "public_key": HANDSET_KEY}}),
    "handsets_api.present_code": ("POST", "/api/v1/presence", {"json": {"code": "12345678"}}),
    "handsets_api.answer": ("POST", f"/api/v1/presence/{OFFER_ID}/answer",
                            {"json": {"answer": "00"}}),
    "handsets_api.get_presence": ("GET", f"/api/v1/presence/{OFFER_ID}", None),
}

WHO = ("anonymous", *ROLES)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One hub for the module: an account per role (named as the role) with PASSWORD,
    a node, and the account the changes are aimed at."""
    import hub.accounts

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub.accounts, "HASHER", cheap_password_hashing())
        path = tmp_path_factory.mktemp("roles") / "hub.db"
        write_stream_secret(path.parent, STREAM_SECRET)
        HubAuthority.generate().save(path.parent)  # issues the customers' certificates
        config = load(HubConfig, data={"hub": {"database": str(path),
                                               "files": str(path.parent / "files"),
                                               "signing_key": str(path.parent / "hub.key"),
                                               "stream_secret": str(path.parent /
                                                                    "stream.secret")}},
                      environ={})
        upgrade(config.hub.database, echo=print)
        app = create_app(config)
        for role in ROLES:
            make_user(config, role, role, password=PASSWORD)
        make_user(config, "target", "operator")
        get_db(app).write_batch([], statuses=[("n1", "online", time.time())])
        lib, cli = library(app), Actor.cli()
        png = lib.store_file(io.BytesIO(PNG), "coupon")
        for key in ("target", "gone"):
            lib.create(cli, key, "coupon", ItemInput("Target", "", 0, png, "t.png"))
        for key in ("spring", "autumn"):
            lib.create_campaign(cli, key, key.title())
        yield app
        get_db(app).close()


def endpoints(app: Flask) -> set[str]:
    return {rule.endpoint for rule in app.url_map.iter_rules()}


def shown(rule: Rule | None) -> str | frozenset[str] | None:
    if rule is None:
        return None
    if rule is PUBLIC:
        return "public"
    if rule is SIGNED_IN:
        return "signed in"
    return rule.permissions


def test_every_endpoint_has_an_access_rule(app: Flask) -> None:
    missing = sorted(e for e in endpoints(app) if rule_of(app, e) is None)
    assert missing == [], f"endpoints without @public, @signed_in or @requires: {missing}"


def test_every_endpoint_is_in_the_tables_with_the_rule_it_has(app: Flask) -> None:
    assert endpoints(app) == set(EXPECTED), "add the new endpoint to EXPECTED and REQUESTS"
    assert set(REQUESTS) == set(EXPECTED)
    assert {e: shown(rule_of(app, e)) for e in EXPECTED} == EXPECTED


def test_an_endpoint_without_a_rule_is_refused(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    config = load(HubConfig, data={"hub": {"database": str(tmp_path / "hub.db")}}, environ={})
    upgrade(config.hub.database, echo=print)
    app = create_app(config)
    app.add_url_rule("/api/v1/forgotten", "forgotten", lambda: {"secret": 1})
    try:
        r = app.test_client().get("/api/v1/forgotten")
        assert r.status_code == 403 and "no access rule" in r.json["error"]
        assert "'forgotten' has no access rule" in caplog.text
    finally:
        get_db(app).close()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def browser(app: Flask, who: str) -> tuple[FlaskClient, str]:
    """A client signed in as ``who`` (or not), and the CSRF token its pages carry."""
    client = app.test_client()
    form = client.get("/signin").get_data(as_text=True)
    if who == "anonymous":
        return client, csrf_token(form)
    r = client.post("/signin", data={"username": who, "password": PASSWORD,
                                     "csrf_token": csrf_token(form)})
    assert r.status_code == 303, r.get_data(as_text=True)
    return client, csrf_token(client.get("/").get_data(as_text=True))


def expected(endpoint: str, who: str) -> str:
    need = EXPECTED[endpoint]
    if need == "public":
        return "in"
    if who == "anonymous":
        return "sign in"
    if need == "signed in":
        return "in"
    assert isinstance(need, frozenset)
    return "in" if need <= ROLE_PERMISSIONS[who] else "forbidden"


def outcome(response: Any) -> str:
    """What a request met: the sign-in (401, or the form / a redirect to it), a 403, or
    the endpoint itself (anything else, never a 5xx)."""
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code == 401 and response.is_json:
        return "sign in"
    if response.status_code == 303 and response.headers["Location"].startswith("/signin"):
        return "sign in"
    if b'data-testid="signin-form"' in response.get_data() \
            and response.request.path != "/signin":
        return "sign in"
    if response.status_code == 403:
        return "forbidden"
    return "in"


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("endpoint", sorted(REQUESTS))
def test_each_role_gets_what_the_table_says(app: Flask, endpoint: str, who: str) -> None:
    client, csrf = browser(app, who)
    method, url, payload = REQUESTS[endpoint]
    kwargs: dict[str, Any] = {"headers": {"X-CSRFToken": csrf}}  # what the page's scripts send
    unique = f"{who}-{endpoint.replace('.', '-').replace('_', '-')}"[:60]
    if payload and "data" in payload:
        kwargs["data"] = payload["data"]
    elif payload and "json" in payload:
        kwargs["json"] = {k: unique if v == "unique" else v for k, v in payload["json"].items()}
    elif payload and "form" in payload:
        if payload["form"] == "credentials":
            fields = {"username": "operator" if who == "anonymous" else who,
                      "password": PASSWORD}
        else:
            fields = {k: unique if v == "unique" else v for k, v in payload["form"].items()}
        kwargs["data"] = {**fields, "csrf_token": csrf}
    url = url.replace("{node_file_query}", node_file_query())
    response = client.open(url, method=method, **kwargs)
    assert outcome(response) == expected(endpoint, who), \
        f"{who} {method} {url}: {response.status_code} {response.get_data(as_text=True)[:300]}"
    if outcome(response) == "sign in" and url.startswith("/api/"):
        assert response.status_code == 401
