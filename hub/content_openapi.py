"""OpenAPI paths and schemas of the content routes (hub/content_api.py). The request
bodies' schemas come from the msgspec structs that decode them (and the schedule's from
tapcast.schedule), so the document cannot describe a body the code does not take."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from tapcast.schedule import Schedule

from hub.content_api import (DEFAULT_CONTENT_LIMIT, MAX_CONTENT_LIMIT, MAX_CURSOR_LEN,
                             CampaignItems, CampaignPlacement, GroupBody, NewCampaign, NewItem,
                             NewVersion, Placement, TargetsBody)
from hub.schema import CONTENT_KINDS, FUNNEL_STAGES

_REF = "#/components/schemas/"
_KEY = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SCHEDULE = {"anyOf": [{"$ref": _REF + "Schedule"}, {"type": "null"}],
             "description": "when the item runs (docs/content.md, Schedules); null or "
                            "left out: always, priority 0, share 1, no cap"}


def _json_body(ref: str) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": _REF + ref}}}}


def content_paths(guarded: dict[str, Any], error: Callable[[str], dict[str, Any]],
                  ok: Callable[..., dict[str, Any]],
                  query: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    bad = error("an unknown query parameter, or a body that is not the JSON object "
                "described (unknown field, wrong type, out of bounds, a schedule that "
                "does not hold); or, with the page's session, no X-CSRFToken header")
    missing = error("no such content item (or file)")
    conflict = error("conflicts with what exists (a key taken, a retired item)")
    changing = {**guarded, "400": bad}
    key_param = {"name": "key", "in": "path", "required": True, "schema": _KEY}
    return {
        "/api/v1/content": {
            "get": {"summary": "The content library by key, a page at a time",
                    "operationId": "listContent",
                    "parameters": [
                        query("kind", {"type": "string", "enum": list(CONTENT_KINDS)},
                              "only this kind"),
                        query("state", {"type": "string", "enum": ["live", "retired"]},
                              "only live or only retired items"),
                        query("limit", {"type": "integer", "minimum": 1,
                                        "maximum": MAX_CONTENT_LIMIT,
                                        "default": DEFAULT_CONTENT_LIMIT}, "page size"),
                        query("cursor", {"type": "string", "minLength": 1,
                                         "maxLength": MAX_CURSOR_LEN},
                              "next_cursor from the previous page, unchanged")],
                    "responses": {"200": ok("ContentList"), **guarded}},
            "post": {"summary": "A new item at version 1 (upload its file first)",
                     "operationId": "createContent",
                     "requestBody": _json_body("NewItem"),
                     "responses": {"201": ok("ContentItem", "Created"), **changing,
                                   "404": error("no such file: upload it first"),
                                   "409": conflict,
                                   "415": error("that kind of item cannot carry that type "
                                                "of file")}}},
        "/api/v1/content/{key}": {
            "parameters": [key_param],
            "get": {"summary": "One item, with its current version",
                    "operationId": "getContent",
                    "responses": {"200": ok("ContentItem"), **guarded, "404": missing}}},
        "/api/v1/content/{key}/versions": {
            "parameters": [key_param],
            "get": {"summary": "Every version of an item, newest first",
                    "operationId": "listContentVersions",
                    "responses": {"200": ok("VersionList"), **guarded, "404": missing}},
            "post": {"summary": "The next version (what the body leaves out is kept); it "
                                "becomes current",
                     "operationId": "createContentVersion",
                     "requestBody": _json_body("NewVersion"),
                     "responses": {"201": ok("ContentItem", "Created"), **changing,
                                   "404": missing, "409": conflict,
                                   "415": error("that kind of item cannot carry that type "
                                                "of file")}}},
        "/api/v1/content/{key}/placement": {
            "parameters": [key_param],
            "put": {"summary": "Where the item goes (targets) and when (schedule); no new "
                               "version",
                    "operationId": "placeContent",
                    "requestBody": _json_body("Placement"),
                    "responses": {"200": ok("ContentItem"), **changing, "404": missing,
                                  "409": conflict}}},
        "/api/v1/content/{key}/retire": {
            "parameters": [key_param],
            "post": {"summary": "No node gets the item any more (it stays in the library)",
                     "operationId": "retireContent",
                     "responses": {"200": ok("ContentItem"), **guarded, "404": missing}}},
        "/api/v1/content/{key}/funnel": {
            "parameters": [key_param],
            "get": {"summary": "An item's funnel: impressions, taps, deliveries, requests "
                               "and opens per day (UTC), and the nodes that delivered it "
                               "most",
                    "operationId": "getContentFunnel",
                    "parameters": [
                        query("since", {"type": "string", "format": "date"},
                              "first day (default: 29 days before until)"),
                        query("until", {"type": "string", "format": "date"},
                              "last day (default: today)")],
                    "responses": {"200": ok("Funnel"), **guarded, "404": missing}}},
        "/api/v1/campaigns": {
            "get": {"summary": "Campaigns, by key", "operationId": "listCampaigns",
                    "responses": {"200": ok("CampaignList"), **guarded}},
            "post": {"summary": "A campaign: a title, where and when, and the items it "
                                "places (their own targets and schedule wait meanwhile)",
                     "operationId": "createCampaign",
                     "requestBody": _json_body("NewCampaign"),
                     "responses": {"201": ok("Campaign", "Created"), **changing,
                                   "404": missing, "409": conflict}}},
        "/api/v1/campaigns/{key}": {
            "parameters": [key_param],
            "get": {"summary": "One campaign", "operationId": "getCampaign",
                    "responses": {"200": ok("Campaign"), **guarded,
                                  "404": error("no such campaign")}}},
        "/api/v1/campaigns/{key}/placement": {
            "parameters": [key_param],
            "put": {"summary": "A campaign's title, where it goes and when (its items "
                               "follow)",
                    "operationId": "placeCampaign",
                    "requestBody": _json_body("CampaignPlacement"),
                    "responses": {"200": ok("Campaign"), **changing,
                                  "404": error("no such campaign"), "409": conflict}}},
        "/api/v1/campaigns/{key}/items": {
            "parameters": [key_param],
            "put": {"summary": "The items the campaign places, exactly (an item is in one "
                               "campaign at most)",
                    "operationId": "setCampaignItems",
                    "requestBody": _json_body("CampaignItems"),
                    "responses": {"200": ok("Campaign"), **changing,
                                  "404": error("no such campaign or item"),
                                  "409": conflict}}},
        "/api/v1/campaigns/{key}/retire": {
            "parameters": [key_param],
            "post": {"summary": "Its items reach no node any more",
                     "operationId": "retireCampaign",
                     "responses": {"200": ok("Campaign"), **guarded,
                                   "404": error("no such campaign")}}},
        "/api/v1/campaigns/{key}/funnel": {
            "parameters": [key_param],
            "get": {"summary": "The funnel of the campaign's items together",
                    "operationId": "getCampaignFunnel",
                    "parameters": [
                        query("since", {"type": "string", "format": "date"}, "first day"),
                        query("until", {"type": "string", "format": "date"}, "last day")],
                    "responses": {"200": ok("Funnel"), **guarded,
                                  "404": error("no such campaign")}}},
        "/api/v1/files": {
            "post": {"summary": "Upload a file for an item of a kind: the raw bytes as the "
                                "body. Its type is read from the bytes; refused whole when "
                                "too big or of a type that kind does not take",
                     "operationId": "uploadFile",
                     "parameters": [{"name": "kind", "in": "query", "required": True,
                                     "schema": {"type": "string",
                                                "enum": list(CONTENT_KINDS)},
                                     "description": "the kind of item the file is for"}],
                     "requestBody": {"required": True, "content": {
                         "application/octet-stream": {"schema": {"type": "string",
                                                                 "format": "binary"}}}},
                     "responses": {"201": ok("StoredFile", "Created"), **guarded,
                                   "413": error("larger than [hub] max_file_mb"),
                                   "415": error("a type this kind of item does not take")}}},
        "/api/v1/files/{sha256}": {
            "parameters": [{"name": "sha256", "in": "path", "required": True,
                            "schema": _SHA}],
            "get": {"summary": "A file by its sha256; Range requests resume a cut download",
                    "operationId": "getFile",
                    "responses": {
                        "200": {"description": "the file's bytes, of its media type",
                                "content": {"*/*": {"schema": {"type": "string",
                                                               "format": "binary"}}}},
                        "206": {"description": "the range asked for",
                                "content": {"*/*": {"schema": {"type": "string",
                                                               "format": "binary"}}}},
                        "304": {"description": "unchanged (If-None-Match)"},
                        "416": {"description": "a range outside the file"},
                        **guarded, "404": error("no such file")}}},
        "/api/v1/groups": {
            "get": {"summary": "Node groups and their nodes", "operationId": "listGroups",
                    "responses": {"200": ok("GroupList"), **guarded}}},
        "/api/v1/groups/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": _KEY}],
            "put": {"summary": "The group is exactly these nodes from now on (an empty "
                               "list removes it)",
                    "operationId": "setGroup",
                    "requestBody": _json_body("GroupBody"),
                    "responses": {"200": ok("Group"), **changing}}},
        "/api/v1/preview": {
            "get": {"summary": "What a node would show in its display loop and push after "
                               "a tap, at a given time",
                    "operationId": "previewNode",
                    "parameters": [
                        {"name": "node_id", "in": "query", "required": True,
                         "schema": _KEY, "description": "the node"},
                        query("at", {"type": "number", "minimum": 0},
                              "unix seconds (default: now)"),
                        query("tz", {"type": "string", "minLength": 1, "maxLength": 64},
                              "IANA time zone (default: the one the node reported, else [hub] timezone)"),
                        query("zone", _KEY, "the node's zone, when the hub has not heard "
                                            "it yet")],
                    "responses": {"200": ok("Preview"), **guarded}}},
    }


def content_schemas() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components(
        [NewItem, NewVersion, Placement, GroupBody, TargetsBody, Schedule, NewCampaign,
         CampaignPlacement, CampaignItems],
        ref_template=_REF + "{name}")
    for name in ("NewItem", "Placement", "NewCampaign", "CampaignPlacement"):
        components[name]["properties"]["schedule"] = _SCHEDULE
    file = {"type": ["object", "null"], "required": ["sha256", "size", "media_type", "name"],
            "properties": {"sha256": _SHA, "size": {"type": "integer"},
                           "media_type": {"type": "string"}, "name": {"type": "string"}}}
    version = {"type": "object",
               "required": ["version", "title", "body", "price_cents", "merchant", "file",
                            "created_by", "created_at"],
               "properties": {"version": {"type": "integer", "minimum": 1},
                              "title": {"type": "string"}, "body": {"type": "string"},
                              "price_cents": {"type": "integer"}, "file": file,
                              "merchant": {"type": "string", "maxLength": 64,
                                           "description": "who offers it (\"\": none); "
                                                          "phones may block a merchant"},
                              "created_by": {"type": "string"},
                              "created_at": {"type": "number"}}}
    targets = {"type": "object", "required": ["everywhere", "zones", "groups", "nodes"],
               "properties": {"everywhere": {"type": "boolean"},
                              **{k: {"type": "array", "items": {"type": "string"}}
                                 for k in ("zones", "groups", "nodes")}}}
    item = {"type": "object",
            "required": ["key", "kind", "current", "version", "targets", "schedule",
                         "campaign", "created_at", "updated_at", "retired_at"],
            "properties": {"key": _KEY, "kind": {"type": "string",
                                                 "enum": list(CONTENT_KINDS)},
                           "current": {"type": "integer",
                                       "description": "the version nodes get"},
                           "version": {"$ref": _REF + "ContentVersion"},
                           "targets": targets, "schedule": {"$ref": _REF + "Schedule"},
                           "campaign": {"type": ["string", "null"], "description":
                                        "the campaign placing it (its targets and "
                                        "schedule apply), or null"},
                           "created_at": {"type": "number"},
                           "updated_at": {"type": "number"},
                           "retired_at": {"type": ["number", "null"]}}}
    strings = {"type": "array", "items": {"type": "string"}}
    counts = {"type": "object", "required": list(FUNNEL_STAGES),
              "properties": {st: {"type": "integer", "minimum": 0} for st in FUNNEL_STAGES}}
    return {
        **components,
        "ContentVersion": version,
        "ContentItem": item,
        "ContentList": {"type": "object", "required": ["items", "next_cursor", "next"],
                        "properties": {"items": {"type": "array",
                                                 "items": {"$ref": _REF + "ContentItem"}},
                                       "next_cursor": {"type": ["string", "null"]},
                                       "next": {"type": ["string", "null"]}}},
        "Campaign": {"type": "object",
                     "required": ["key", "title", "targets", "schedule", "items",
                                  "created_at", "updated_at", "retired_at"],
                     "properties": {"key": _KEY, "title": {"type": "string"},
                                    "targets": targets,
                                    "schedule": {"$ref": _REF + "Schedule"},
                                    "items": strings, "created_at": {"type": "number"},
                                    "updated_at": {"type": "number"},
                                    "retired_at": {"type": ["number", "null"]}}},
        "CampaignList": {"type": "object", "required": ["campaigns"],
                         "properties": {"campaigns": {"type": "array", "items": {
                             "$ref": _REF + "Campaign"}}}},
        "VersionList": {"type": "object", "required": ["versions"],
                        "properties": {"versions": {"type": "array", "items": {
                            "$ref": _REF + "ContentVersion"}}}},
        "StoredFile": {"type": "object", "required": ["sha256", "size", "media_type"],
                       "properties": {"sha256": _SHA, "size": {"type": "integer"},
                                      "media_type": {"type": "string"}}},
        "Group": {"type": "object", "required": ["name", "nodes"],
                  "properties": {"name": {"type": "string"}, "nodes": strings}},
        "GroupList": {"type": "object", "required": ["groups"],
                      "properties": {"groups": {"type": "array",
                                                "items": {"$ref": _REF + "Group"}}}},
        "Funnel": {"type": "object",
                   "required": ["items", "stages", "totals", "by_day", "by_node"],
                   "properties": {
                       "items": strings, "stages": strings,
                       "totals": counts,
                       "by_day": {"type": "array", "items": {
                           "allOf": [counts, {"type": "object", "required": ["day"],
                                              "properties": {"day": {"type": "string"}}}]}},
                       "by_node": {"type": "array", "items": {
                           "allOf": [counts, {"type": "object", "required": ["node_id"],
                                              "properties": {"node_id": {
                                                  "type": "string"}}}]}}}},
        "Preview": {"type": "object",
                    "required": ["node_id", "at", "tz", "targeted", "active", "loop", "push"],
                    "properties": {"node_id": {"type": "string"}, "at": {"type": "number"},
                                   "tz": {"type": "string"},
                                   "targeted": {**strings, "description":
                                                "live items aimed at the node, any time"},
                                   "active": {**strings, "description":
                                              "of those, the ones whose schedule runs at "
                                              "that time"},
                                   "loop": {**strings, "description":
                                            "the display loop's next slots"},
                                   "push": {**strings, "description":
                                            "what a tap gets, in order"}}},
    }
