"""OpenAPI paths and schemas of the handset app's routes (hub/handsets_api.py):
registering, signing in again, and the code path without NFC. Bounds come from the
views' own structs, so the fuzzer (tests/test_hub_api_fuzz.py) checks one against the
other."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hub.accounts import MAX_PASSWORD_LEN
from hub.handsets_api import OFFER_ID_RE
from hub.schema import PRESENCE_STATES

_REF = "#/components/schemas/"
_HEX = {"type": "string", "pattern": "^([0-9a-f]{2})*$"}
_OFFER_ID = {"type": "string", "pattern": f"^{OFFER_ID_RE}$"}


def _json_body(ref: str) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": _REF + ref}}}}


def handset_paths(guarded: dict[str, Any], error: Callable[[str], dict[str, Any]],
                  ok: Callable[..., dict[str, Any]],
                  query: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    bad = error("an unknown query parameter, or a body that is not the JSON object "
                "described (unknown field, wrong type, out of bounds, a weak password, "
                "a user name that is not one, not an Ed25519 key)")
    limited = error("too many attempts: wait, then try again (sign-in: 5 failures a "
                    "minute per address and per user name; registering: 20 an hour per "
                    "address; 10 sign-ins an hour per user name; codes: 10 failures a "
                    "minute per account and 60 per address)")
    no_key = error("this hub has no signing key ([hub] signing_key), so it cannot issue "
                   "handset certificates")
    too_big = error("a body over 16 KiB (hub/handsets_api.py MAX_BODY)")
    public = {"400": bad, "413": too_big, "429": limited, "503": no_key}
    offer_param = {"name": "offer_id", "in": "path", "required": True, "schema": _OFFER_ID}
    missing = error("no such code session of this account")
    return {
        "/api/v1/handsets": {"post": {
            "summary": "Register a customer from the handset app: a customer account, a "
                       "new pseudonymous handset id, the hub-signed certificate for the "
                       "phone's key, and the app's token (scope presence:use)",
            "operationId": "registerHandset",
            "security": [],
            "requestBody": _json_body("HandsetRequest"),
            "responses": {"201": ok("IssuedHandset", "Created"), **public,
                          "409": error("the user name is taken")}}},
        "/api/v1/handsets/signin": {"post": {
            "summary": "Sign in again from the handset app (a new phone, or after reset "
                       "identity) with a new key: a new handset id, certificate and "
                       "token; the previous handset is no longer the account's",
            "operationId": "signInHandset",
            "security": [],
            "requestBody": _json_body("HandsetRequest"),
            "responses": {"200": ok("IssuedHandset"), **public,
                          "401": error("wrong user name or password"),
                          "403": error("a staff account: handsets are for customers")}}},
        "/api/v1/presence": {"post": {
            "summary": "Present a display's code (digits or its tapcast:code/ URI): "
                       "claims the code's offer and gives the node's HELLO to answer",
            "operationId": "presentCode",
            "requestBody": _json_body("CodeRequest"),
            "responses": {"201": ok("CodeSession", "Created"), **guarded,
                          "400": bad, "413": too_big,
                          "404": error("no display shows this code now (wrong or "
                                       "expired)"),
                          "409": error("the code was used already, or this account has "
                                       "no handset"),
                          "429": limited}}},
        "/api/v1/presence/{offer_id}/answer": {"post": {
            "summary": "The handset's answer to the node's HELLO (the NFC exchange's "
                       "answer bytes, hex); the hub relays it to the node",
            "operationId": "answerCode",
            "parameters": [offer_param],
            "requestBody": _json_body("AnswerRequest"),
            "responses": {"202": ok("CodeSession", "Accepted: relayed to the node"),
                          **guarded, "400": bad, "404": missing, "413": too_big,
                          "409": error("answered already, or the code expired")}}},
        "/api/v1/presence/{offer_id}": {"get": {
            "summary": "How a code session goes: the node's verdict, and its CONFIRM MAC "
                       "once it accepted the answer",
            "operationId": "getCodeSession",
            "parameters": [offer_param],
            "responses": {"200": ok("CodeSession"), **guarded, "404": missing}}},
    }


def handset_schemas() -> dict[str, Any]:
    return {
        "HandsetRequest": {"type": "object", "additionalProperties": False,
                           "required": ["username", "password", "public_key"],
                           "properties": {
                               "username": {"type": "string", "minLength": 1,
                                            "maxLength": 64,
                                            "description": "lowercase letters, digits, "
                                                           "'_', '.', '@', '-'"},
                               "password": {"type": "string", "minLength": 1,
                                            "maxLength": MAX_PASSWORD_LEN,
                                            "description": "at least 12 characters, not "
                                                           "containing the user name"},
                               "public_key": {"type": "string",
                                              "pattern": "^[0-9a-f]{64}$",
                                              "description": "the handset's raw Ed25519 "
                                                             "public key, hex"}}},
        "IssuedHandset": {"type": "object", "required": [
            "username", "handset_id", "certificate", "certificate_expires_at",
            "hub_public_keys", "token", "token_expires_at"], "properties": {
                "username": {"type": "string"},
                "handset_id": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                "certificate": {**_HEX, "description": "the handset certificate "
                                                       "(docs/protocol.md), hex"},
                "certificate_expires_at": {"type": "number"},
                "hub_public_keys": {"type": "array", "items": _HEX,
                                    "description": "the hub keys to trust, current first"},
                "token": {"type": "string", "description": "the app's bearer token "
                                                           "(scope presence:use)"},
                "token_expires_at": {"type": "number"}}},
        "CodeRequest": {"type": "object", "additionalProperties": False,
                        "required": ["code"], "properties": {
                            "code": {"type": "string", "minLength": 1, "maxLength": 64}}},
        "AnswerRequest": {"type": "object", "additionalProperties": False,
                          "required": ["answer"], "properties": {
                              "answer": {"type": "string", "minLength": 2,
                                         "maxLength": 4096}}},
        "CodeSession": {"type": "object", "required": [
            "id", "node_id", "state", "hello", "expires_at", "reason", "confirm"],
            "properties": {
                "id": _OFFER_ID, "node_id": {"type": "string"},
                "state": {"enum": [s for s in PRESENCE_STATES if s != "open"] + ["expired"]},
                "hello": {**_HEX, "description": "the node's HELLO (docs/protocol.md)"},
                "expires_at": {"type": "number", "description": "unix seconds, the hub's "
                                                                "clock"},
                "reason": {"type": ["string", "null"],
                           "description": "the node's verdict once it came"},
                "confirm": {"type": ["string", "null"],
                            "description": "the node's CONFIRM MAC (hex) when confirmed"}}},
    }
