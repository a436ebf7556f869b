"""OpenAPI 3.1 description of /api/v1 (served at /api/v1/openapi.json).

Kept next to the views and checked by tests (every route has a path here), so that the
document and the code cannot drift apart unnoticed.
"""
from __future__ import annotations

from typing import Any

from tapcast.keys import MAX_ID_LEN

from tapcast.protocol.mqtt import KIND_PATTERN

from hub.api import (DEFAULT_EVENTS_LIMIT, DEFAULT_INCIDENTS_LIMIT, DEFAULT_NODES_LIMIT,
                     EVENT_KINDS, INCIDENT_KINDS, MAX_CURSOR_LEN, MAX_INT, MAX_KIND_LEN,
                     MAX_LABEL_LEN, MAX_NUMBER_LEN, MAX_TS)
from hub.db import MAX_EVENTS_LIMIT, MAX_NODES_LIMIT, NODE_STATUSES
from hub.accounts_openapi import account_paths, account_schemas
from hub.content_openapi import content_paths, content_schemas
from hub.handsets_openapi import handset_paths, handset_schemas
from hub.auth import HOW_TO_GET_ONE


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


#: Listings answer with an ETag and honour If-None-Match (the page's refreshes).
_NOT_MODIFIED = {"304": {"description": "unchanged since the ETag sent in If-None-Match"}}
_LABEL = {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_LEN}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_NODE_ID = {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$", "minLength": 1,
            "maxLength": MAX_ID_LEN}
#: Any kind of this shape is stored (a newer node's kinds too); these are today's.
_KIND = {"type": "string", "pattern": KIND_PATTERN, "minLength": 1, "maxLength": MAX_KIND_LEN,
         "examples": list(EVENT_KINDS),
         "description": f"an event kind; this version's nodes write {', '.join(EVENT_KINDS)}"}
_CURSOR = {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_LEN}

#: Every route but the document itself: the responses a credential check can give, and
#: the 400 that an unknown or repeated query parameter gives anywhere.
_GUARDED = {
    "400": _error("a parameter is wrong (unknown, repeated, malformed or out of "
                  "bounds); the message says which and what to fix"),
    "401": {"description": f"no valid credential: send 'Authorization: Bearer <token>'; "
                           f"{HOW_TO_GET_ONE}",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                             "description": 'Bearer realm="tapcast-hub"'}},
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}},
    "403": _error("the credential's role (or the token's scopes) does not include the "
                  "permission this route needs (docs/api.md, Roles)"),
}


_COUNTS = {
    "type": "object",
    "properties": {
        "total": {"type": "integer"},
        "by_kind": {"type": "object", "additionalProperties": {"type": "integer"}},
        "auth_ok": {"type": "integer"},
        "auth_rejected": {"type": "integer"},
    },
}

_NODE_PROPS = {
    "node_id": {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$"},
    "status": {"enum": ["online", "offline"],
               "description": "offline when the node said so or was not heard from for "
                              "hub.stale_after seconds"},
    "reported_status": {"type": ["string", "null"],
                        "description": "last status message (retained / last will)"},
    "last_seen": {"type": ["number", "null"], "description": "unix seconds"},
    "zone": {"type": ["string", "null"]},
    "version": {"type": ["string", "null"]},
    "outbox_depth": {"type": ["integer", "null"],
                     "description": "events queued on the node, from its last state"},
    "acked_seq": {"type": "integer",
                  "description": "highest contiguous event seq stored (sent as EventAck)"},
    "events": {"$ref": "#/components/schemas/Counts"},
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tapcast hub API", "version": "1",
                 "description": "Operator API: nodes, events, incidents and "
                                "counters; accounts, personal tokens and the audit "
                                "log."},
        "paths": {
            "/api/v1/nodes": {"get": {
                "summary": "Nodes that have reported, by id, paginated by cursor",
                "operationId": "listNodes",
                "parameters": [
                    _query("zone", _LABEL, "only nodes in this zone"),
                    _query("version", _LABEL, "only nodes reporting this software version"),
                    _query("status", {"enum": list(NODE_STATUSES)},
                           "only nodes online (heard within hub.stale_after and not "
                           "reported offline), or only the others"),
                    _query("limit", {"type": "integer", "minimum": 1,
                                     "maximum": MAX_NODES_LIMIT,
                                     "default": DEFAULT_NODES_LIMIT}, "page size"),
                    _query("cursor", _CURSOR, "next_cursor from the previous page, unchanged"),
                ],
                "responses": {"200": _ok("NodeList"), **_NOT_MODIFIED, **_GUARDED}}},
            "/api/v1/nodes/{node_id}": {"get": {
                "summary": "One node, with its last state snapshot",
                "operationId": "getNode",
                "parameters": [{"name": "node_id", "in": "path", "required": True,
                                "schema": _NODE_ID}],
                "responses": {"200": _ok("NodeDetail"), **_GUARDED,
                              "404": _error("no such node")}}},
            "/api/v1/events": {"get": {
                "summary": "Events, newest stored first, paginated by cursor",
                "operationId": "listEvents",
                "parameters": [
                    _query("node_id", _NODE_ID, "only this node"),
                    _query("kind", _KIND, "only this kind (any well-formed kind: a "
                           "newer node's kinds are stored and listed too)"),
                    _query("since_seq", {"type": "integer", "minimum": 0,
                                         "maximum": MAX_INT},
                           "only seq > this (needs node_id)"),
                    _query("since", {"type": "number", "minimum": 0, "maximum": MAX_TS},
                           "only events the hub stored after this (unix seconds, the hub's "
                           f"clock); decimal text of at most {MAX_NUMBER_LEN} characters"),
                    _query("until", {"type": "number", "minimum": 0, "maximum": MAX_TS},
                           "only events the hub stored at or before this (unix seconds, "
                           "the hub's clock)"),
                    _query("limit", {"type": "integer", "minimum": 1,
                                     "maximum": MAX_EVENTS_LIMIT,
                                     "default": DEFAULT_EVENTS_LIMIT}, "page size"),
                    _query("cursor", _CURSOR, "next_cursor from the previous page, unchanged"),
                ],
                "responses": {"200": _ok("EventPage"), **_NOT_MODIFIED, **_GUARDED}}},
            "/api/v1/incidents": {"get": {
                "summary": "Incidents of the event stream (events lost for good, conflicts, "
                           "quarantined batches, new outbox epochs), newest first, paginated "
                           "by cursor",
                "operationId": "listIncidents",
                "parameters": [
                    _query("node_id", _NODE_ID, "only this node"),
                    _query("limit", {"type": "integer", "minimum": 1,
                                     "maximum": MAX_EVENTS_LIMIT,
                                     "default": DEFAULT_INCIDENTS_LIMIT}, "page size"),
                    _query("cursor", _CURSOR, "next_cursor from the previous page, unchanged"),
                ],
                "responses": {"200": _ok("IncidentPage"), **_NOT_MODIFIED, **_GUARDED}}},
            "/api/v1/stats": {"get": {
                "summary": "Event counts per kind, node counts, incident totals, ingest "
                           "counters",
                "operationId": "getStats",
                "responses": {"200": _ok("Stats"), **_NOT_MODIFIED, **_GUARDED}}},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document",
                "operationId": "getOpenApi",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document",
                                      "content": {"application/json": {}}}}}},
            **account_paths(_GUARDED, _error, _ok, _query),
            **content_paths(_GUARDED, _error, _ok, _query),
            **handset_paths(_GUARDED, _error, _ok, _query),
        },
        "security": [{"bearerToken": []}, {"operatorSession": []}],
        "components": {"securitySchemes": {
            "bearerToken": {"type": "http", "scheme": "bearer",
                            "description": "a personal API token (its owner's role, cut "
                                           f"down to its scopes): {HOW_TO_GET_ONE}"},
            "operatorSession": {"type": "apiKey", "in": "cookie", "name": "tapcast_session",
                                "description": "the operator page's session, set by "
                                               "signing in at / with a user name and "
                                               "password; a state-changing request "
                                               "with it also needs the X-CSRFToken "
                                               "header"},
        }, "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Counts": _COUNTS,
            "Node": {"type": "object", "properties": _NODE_PROPS,
                     "required": list(_NODE_PROPS)},
            "NodeDetail": {"allOf": [{"$ref": "#/components/schemas/Node"}, {
                "type": "object",
                "properties": {"state": {"type": ["object", "null"],
                                         "description": "last NodeState (docs/mqtt.md)"}}}]},
            "NodeList": {"type": "object", "properties": {
                "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                "next_cursor": {"type": ["string", "null"]},
                "next": {"type": ["string", "null"], "description": "URL of the next page"}}},
            "Event": {"type": "object", "properties": {
                "node_id": {"type": "string"}, "seq": {"type": "integer"},
                "epoch": {"type": "string",
                          "description": "the node's outbox epoch (seqs restart at 1 in a "
                                         "new one)"},
                "id": {"type": "string"},
                "kind": {"type": "string", "pattern": KIND_PATTERN},
                "ts": {"type": "number"}, "data": {"type": "object"},
                "received": {"type": "number", "description": "when the hub stored it"}}},
            "EventPage": {"type": "object", "properties": {
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                "next_cursor": {"type": ["string", "null"]},
                "next": {"type": ["string", "null"], "description": "URL of the next page"}}},
            "Incident": {"type": "object",
                         "required": ["id", "node_id", "epoch", "kind", "count", "detail",
                                      "at"],
                         "properties": {
                "id": {"type": "integer", "description": "grows with each incident"},
                "node_id": {"type": "string"},
                "epoch": {"type": ["string", "null"],
                          "description": "outbox epoch concerned (null for a quarantined "
                                         "batch without a readable header)"},
                "kind": {"type": "string", "examples": list(INCIDENT_KINDS),
                         "description": "lost: seqs that will never reach the hub; conflict: "
                                        "a (node, epoch, seq) re-used with another event id; "
                                        "quarantined: an authentic batch the hub cannot "
                                        "decode, kept verbatim; new_epoch: the node started "
                                        "a new outbox (a wiped data dir)"},
                "count": {"type": "integer", "description": "events concerned"},
                "detail": {"type": "string"},
                "at": {"type": "number", "description": "when the hub recorded it"}}},
            "IncidentPage": {"type": "object", "properties": {
                "incidents": {"type": "array",
                              "items": {"$ref": "#/components/schemas/Incident"}},
                "next_cursor": {"type": ["string", "null"]},
                "next": {"type": ["string", "null"], "description": "URL of the next page"}}},
            "Stats": {"type": "object", "properties": {
                "events": {"$ref": "#/components/schemas/Counts"},
                "nodes": {"type": "object", "properties": {
                    "total": {"type": "integer"}, "online": {"type": "integer"},
                    "offline": {"type": "integer"}}},
                "incidents": {"type": "object",
                              "properties": {k: {"type": "integer"}
                                             for k in (*INCIDENT_KINDS, "quarantined_batches")},
                              "additionalProperties": {"type": "integer"},
                              "description": "incidents per kind (0 when none), and "
                                             "quarantined_batches: batches kept in "
                                             "quarantine"},
                "ingest": {"type": ["object", "null"],
                           "additionalProperties": {"type": "integer"},
                           "description": "null when the app runs without ingest"},
                "api": {"type": "object", "properties": {
                    "auth_failures": {"type": "integer", "description":
                                      "requests refused for want of a valid credential "
                                      "(failed sign-ins included) since hub web started "
                                      "(all its workers)"},
                    "login_failures": {"type": "integer", "description":
                                       "failed sign-ins (wrong user name or password) "
                                       "since hub web started (all its workers)"}}}}},
            **account_schemas(),
            **content_schemas(),
            **handset_schemas(),
        }},
    }
