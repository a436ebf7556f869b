"""/api/v1 fuzzed from its own OpenAPI document (schemathesis, against the Flask app
over WSGI): for requests that fit the document and requests that do not, no answer is
a 5xx, and every answer matches what the document declares (status, body schema,
content type). Bounded to a few seconds for `make test`; raise FUZZ_EXAMPLES for a
longer run."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from hall.testing.hub import api_token
from hub import create_app, get_db
from hub.config import HubConfig
from hub.migrate import upgrade
from tapcast.config import load
from tapcast.keys import HubAuthority
from tapcast.protocol.mqtt import Event, NodeState

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    HubAuthority.generate().save(tmp_path)  # issues the customers' certificates
    config = load(HubConfig, data={"hub": {"database": str(tmp_path / "hub.db"),
                                           "files": str(tmp_path / "files"),
                                           "signing_key": str(tmp_path / "hub.key")}},
                  environ={})
    upgrade(config.hub.database, echo=print)
    app = create_app(config)
    now = time.time()
    get_db(app).write_batch(
        [("n1", Event(id=f"e{s}", seq=s, kind="tap", ts=1_700_000_000.0 + s))
         for s in range(1, 8)],
        states=[("n1", NodeState(node_id="n1", ts=now, version="1", zone="z", uptime=1.0,
                                 outbox_depth=0), now)],
        statuses=[("n1", "online", now)], seen={"n1": now})
    # Events of a kind this version does not know, and a "lost" incident (seqs 8 and 9:
    # the node holds nothing below 10), so the answers carry them too.
    get_db(app).write_batch([("n1", Event(id="e10", seq=10, kind="refund", ts=1.7e9))],
                            low=10)
    yield app
    get_db(app).close()


@pytest.fixture
def token(app: Flask) -> str:
    return api_token(app.config["TAPCAST"], "fuzz")


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users the fuzzer creates get argon2 hashes; cheap ones keep the run short."""
    import hub.accounts
    from hall.testing.hub import cheap_password_hashing

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())


#: Every operation that needs the credential (the document itself is public and fixed),
#: fuzzed with an admin's token: the changes it makes stay in the test's database.
OPERATIONS = [("/api/v1/nodes", "GET"), ("/api/v1/nodes/{node_id}", "GET"),
              ("/api/v1/events", "GET"), ("/api/v1/incidents", "GET"),
              ("/api/v1/stats", "GET"), ("/api/v1/me", "GET"), ("/api/v1/tokens", "GET"),
              ("/api/v1/tokens", "POST"), ("/api/v1/tokens/{token_id}", "DELETE"),
              ("/api/v1/users", "GET"), ("/api/v1/users", "POST"),
              ("/api/v1/users/{username}", "GET"), ("/api/v1/users/{username}", "PATCH"),
              ("/api/v1/audit", "GET"), ("/api/v1/content", "GET"),
              ("/api/v1/content", "POST"), ("/api/v1/content/{key}", "GET"),
              ("/api/v1/content/{key}/versions", "GET"),
              ("/api/v1/content/{key}/versions", "POST"),
              ("/api/v1/content/{key}/placement", "PUT"),
              ("/api/v1/content/{key}/retire", "POST"), ("/api/v1/files", "POST"),
              ("/api/v1/files/{sha256}", "GET"), ("/api/v1/groups", "GET"),
              ("/api/v1/groups/{name}", "PUT"), ("/api/v1/preview", "GET"),
              ("/api/v1/content/{key}/funnel", "GET"), ("/api/v1/campaigns", "GET"),
              ("/api/v1/campaigns", "POST"), ("/api/v1/campaigns/{key}", "GET"),
              ("/api/v1/campaigns/{key}/placement", "PUT"),
              ("/api/v1/campaigns/{key}/items", "PUT"),
              ("/api/v1/campaigns/{key}/retire", "POST"),
              ("/api/v1/campaigns/{key}/funnel", "GET"),
              ("/api/v1/handsets", "POST"), ("/api/v1/handsets/signin", "POST"),
              ("/api/v1/presence", "POST"), ("/api/v1/presence/{offer_id}/answer", "POST"),
              ("/api/v1/presence/{offer_id}", "GET")]


def test_every_operation_of_the_document_is_fuzzed(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").json
    documented = {(path, method.upper()) for path, item in doc["paths"].items()
                  for method in item if method != "parameters"}
    assert documented - {("/api/v1/openapi.json", "GET")} == set(OPERATIONS)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
@pytest.mark.parametrize("path,method", OPERATIONS)
def test_no_generated_request_gets_a_server_error(app: Flask, token: str, path: str,
                                                  method: str, mode: GenerationMode) -> None:
    """Positive: values the document allows; negative: values it forbids (which must be
    a 400 or 404, never a 5xx). call_and_validate runs schemathesis's checks, the first
    being not_a_server_error; ignored_auth also replays the request without the token
    and expects a 401. positive_data_acceptance is left out: some values the document
    cannot express are still refused with a 400 (a cursor this API did not return,
    since_seq without node_id)."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    # A body too large to read is refused before it is parsed (413, documented where a
    # route has such a bound): a rejection of negative data like any 4xx schemathesis
    # expects; its default list leaves 413 out.
    rejection = schema.config.checks.negative_data_rejection
    if "413" not in rejection.expected_statuses:
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"},
                               excluded_checks=[positive_data_acceptance])

    check()
