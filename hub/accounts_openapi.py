"""The accounts part of the OpenAPI document (hub/openapi.py merges it in): /me,
/tokens, /users, /audit. Kept beside hub/accounts_api.py's bounds so that the fuzzer
(tests/test_hub_api_fuzz.py) checks the views against what is written here."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hub.accounts import MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, PERMISSIONS, ROLES, VIA
from hub.accounts_api import DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT, MAX_CURSOR_LEN, MAX_TS

_REF = "#/components/schemas/"
_USERNAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.@-]{0,63}$", "minLength": 1,
             "maxLength": 64}
_TOKEN_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$", "minLength": 1,
               "maxLength": 64}
_TOKEN_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$", "minLength": 16, "maxLength": 16}
_ROLE = {"type": "string", "enum": list(ROLES)}
_SCOPE = {"type": "string", "enum": list(PERMISSIONS)}
_OPT_TIME = {"type": ["number", "null"], "description": "unix seconds"}


def _json_body(ref: str) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": _REF + ref}}}}


def account_paths(guarded: dict[str, Any], error: Callable[[str], dict[str, Any]],
                  ok: Callable[..., dict[str, Any]],
                  query: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The accounts routes, with the answers every guarded route can give."""
    no_params = error("an unknown query parameter, or a body that is not the JSON "
                      "object described (unknown field, wrong type, out of bounds, a "
                      "weak password...); or, with the page's session, no X-CSRFToken "
                      "header")
    conflict = error("conflicts with what exists (a name taken, the last enabled admin)")
    changing = {**guarded, "400": no_params}
    return {
        "/api/v1/me": {"get": {
            "summary": "Who this credential is, and what it may do",
            "operationId": "getMe",
            "responses": {"200": ok("Me"), **guarded}}},
        "/api/v1/tokens": {
            "get": {"summary": "One's own API tokens (revoked ones included; never values)",
                    "operationId": "listTokens",
                    "responses": {"200": ok("TokenList"), **guarded}},
            "post": {"summary": "Create a token of one's own; the answer carries its value, "
                                "shown only this once",
                     "operationId": "createToken",
                     "requestBody": _json_body("NewToken"),
                     "responses": {"201": ok("CreatedToken", "Created"), **changing,
                                   "409": conflict}}},
        "/api/v1/tokens/{token_id}": {"delete": {
            "summary": "Revoke one of one's own tokens (users:admin: anyone's); it stops "
                       "at once",
            "operationId": "revokeToken",
            "parameters": [{"name": "token_id", "in": "path", "required": True,
                            "schema": _TOKEN_ID}],
            "responses": {"200": ok("Token"), **guarded, "404": error("no such token")}}},
        "/api/v1/users": {
            "get": {"summary": "Every account, by user name", "operationId": "listUsers",
                    "responses": {"200": ok("UserList"), **guarded}},
            "post": {"summary": "Create an account", "operationId": "createUser",
                     "requestBody": _json_body("NewUser"),
                     "responses": {"201": ok("User", "Created"), **changing,
                                   "409": conflict}}},
        "/api/v1/users/{username}": {
            "parameters": [{"name": "username", "in": "path", "required": True,
                            "schema": _USERNAME}],
            "get": {"summary": "One account", "operationId": "getUser",
                    "responses": {"200": ok("User"), **guarded,
                                  "404": error("no such user")}},
            "patch": {"summary": "Change a role, disable or enable, change the names",
                      "operationId": "updateUser",
                      "requestBody": _json_body("UserChange"),
                      "responses": {"200": ok("User"), **changing,
                                    "404": error("no such user"), "409": conflict}}},
        "/api/v1/audit": {"get": {
            "summary": "The audit log: every change made through the web, the API or the "
                       "CLI, newest first, paginated by cursor",
            "operationId": "listAudit",
            "parameters": [
                query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_LIMIT,
                                "default": DEFAULT_AUDIT_LIMIT}, "page size"),
                query("cursor", {"type": "string", "minLength": 1,
                                 "maxLength": MAX_CURSOR_LEN},
                      "next_cursor from the previous page, unchanged"),
                query("action", {"type": "string", "pattern": "^[a-z][a-z_.]{0,31}$",
                                 "examples": ["user.create", "user.update",
                                              "user.set_password", "token.create",
                                              "token.revoke"]},
                      "only this action"),
                query("actor", {"type": "string", "minLength": 1, "maxLength": 80},
                      "only changes by this user name (cli:NAME for the command line)"),
            ],
            "responses": {"200": ok("AuditPage"), **guarded}}},
    }


def account_schemas() -> dict[str, Any]:
    user_props = {
        "id": {"type": "integer"}, "username": {"type": "string"}, "role": _ROLE,
        "display_name": {"type": ["string", "null"]}, "email": {"type": ["string", "null"]},
        "handset_id": {"type": ["string", "null"],
                       "description": "a customer's handset (they sign in with its key)"},
        "has_password": {"type": "boolean"}, "disabled": {"type": "boolean"},
        "created_at": {"type": "number"}, "last_login": _OPT_TIME}
    token_props = {
        "id": {"type": "string", "description": "public handle (revoke with it)"},
        "name": {"type": "string"}, "user": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "number"}, "last_used": _OPT_TIME, "expires_at": _OPT_TIME,
        "revoked_at": _OPT_TIME}
    audit_props = {
        "id": {"type": "integer"}, "at": {"type": "number"},
        "actor_id": {"type": ["integer", "null"]}, "actor_name": {"type": "string"},
        "via": {"type": "string", "enum": list(VIA)}, "action": {"type": "string"},
        "target_type": {"type": "string"}, "target_id": {"type": "string"},
        "before": {"type": ["object", "null"]}, "after": {"type": ["object", "null"]},
        "remote_addr": {"type": ["string", "null"]}}
    page = {"next_cursor": {"type": ["string", "null"]},
            "next": {"type": ["string", "null"], "description": "URL of the next page"}}
    return {
        "User": {"type": "object", "properties": user_props, "required": list(user_props)},
        "UserList": {"type": "object", "required": ["users"], "properties": {
            "users": {"type": "array", "items": {"$ref": _REF + "User"}}}},
        "Token": {"type": "object", "properties": token_props,
                  "required": list(token_props)},
        "CreatedToken": {"allOf": [{"$ref": _REF + "Token"}, {
            "type": "object", "required": ["token"],
            "properties": {"token": {"type": "string", "description": "the value, shown "
                                                                        "only this once"}}}]},
        "TokenList": {"type": "object", "required": ["tokens"], "properties": {
            "tokens": {"type": "array", "items": {"$ref": _REF + "Token"}}}},
        "Me": {"type": "object", "required": ["user", "via", "token", "permissions"],
               "properties": {
                   "user": {"$ref": _REF + "User"},
                   "via": {"type": "string", "enum": ["web", "api"]},
                   "token": {"anyOf": [{"$ref": _REF + "Token"}, {"type": "null"}]},
                   "permissions": {"type": "array", "items": _SCOPE}}},
        "AuditEntry": {"type": "object", "properties": audit_props,
                       "required": list(audit_props)},
        "AuditPage": {"type": "object", "required": ["entries", *page], "properties": {
            "entries": {"type": "array", "items": {"$ref": _REF + "AuditEntry"}}, **page}},
        "NewToken": {"type": "object", "additionalProperties": False,
                     "required": ["name", "scopes"], "properties": {
                         "name": _TOKEN_NAME,
                         "scopes": {"type": "array", "items": _SCOPE, "minItems": 1,
                                    "maxItems": len(PERMISSIONS),
                                    "description": "within what the owner's role (and the "
                                                   "credential making it) may do"},
                         "expires_at": {"type": ["number", "null"], "exclusiveMinimum": 0,
                                        "maximum": MAX_TS,
                                        "description": "unix seconds, in the future; "
                                                       "null: never"}}},
        "NewUser": {"type": "object", "additionalProperties": False,
                    "required": ["username", "role"], "properties": {
                        "username": _USERNAME, "role": _ROLE,
                        "password": {"type": ["string", "null"], "minLength": MIN_PASSWORD_LEN,
                                     "maxLength": MAX_PASSWORD_LEN,
                                     "description": "null: no password sign-in (tokens "
                                                    "only); else not containing the user "
                                                    "name nor a few characters repeated"},
                        "display_name": {"type": ["string", "null"], "maxLength": 128},
                        "email": {"type": ["string", "null"], "maxLength": 254}}},
        "UserChange": {"type": "object", "additionalProperties": False, "properties": {
            "role": {"type": ["string", "null"], "enum": [*ROLES, None]},
            "disabled": {"type": ["boolean", "null"]},
            "display_name": {"type": ["string", "null"], "maxLength": 128},
            "email": {"type": ["string", "null"], "maxLength": 254}}},
    }
