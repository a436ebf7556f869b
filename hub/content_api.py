"""JSON API for the content library under /api/v1: items and their versions, files,
targeting and schedules, node groups, and the preview ("what would node X show and
push at time T").

A file is uploaded first (``POST /api/v1/files?kind=...``, the raw bytes as the body;
checked for size and type while it is written, nothing kept when refused), then named by
its sha256 in the item or version that carries it. Bodies are JSON objects decoded by
msgspec into the structs below: an unknown field, a wrong type or a value out of bounds
is a 400 saying which. Every change goes through hub/content.py, which audits it in the
same transaction.
"""
from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from flask import Blueprint, Flask, current_app, jsonify, request, send_file, url_for
from flask.typing import ResponseReturnValue

from hub import get_db
from hub.accounts import Actor
from hub.api import check_params, float_arg, int_arg, node_id_arg
from hub.auth import Principal, current_principal, requires
from hub.content import (KEY_RE, MAX_BODY, MAX_FILE_NAME, MAX_GROUP_NODES, MAX_MERCHANT,
                         MAX_PRICE_CENTS,
                         MAX_TARGETS, MAX_TITLE, ContentError, ContentLibrary, ItemInput,
                         Targets, parse_schedule)
from hub.db import MAX_FUNNEL_DAYS, QueryError, decode_key_cursor, encode_key_cursor
from hub.files import SHA256_RE, FileStore
from hub.schema import CONTENT_KINDS

log = logging.getLogger(__name__)

bp = Blueprint("content_api", __name__, url_prefix="/api/v1")

_LIBRARY = "tapcast.content"
MAX_CONTENT_LIMIT = 200
DEFAULT_CONTENT_LIMIT = 50
MAX_CURSOR_LEN = 200
#: How far from now a preview may look (about 10 years), in seconds.
MAX_PREVIEW_SPAN = 3.2e8
#: Last day a funnel reaches (days since 1970-01-01; event times end in 2242).
MAX_DAY = int(2.0**33 // 86400)
#: Room for a multipart form's other fields around the largest file.
FORM_OVERHEAD = 1_000_000

S = TypeVar("S")

Key = Annotated[str, msgspec.Meta(pattern="^[a-zA-Z0-9_-]{1,64}$")]
Kind = Literal["article", "coupon", "media", "ticket", "goods"]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE)]
Body = Annotated[str, msgspec.Meta(max_length=MAX_BODY)]
Price = Annotated[int, msgspec.Meta(ge=0, le=MAX_PRICE_CENTS)]
Merchant = Annotated[str, msgspec.Meta(max_length=MAX_MERCHANT)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FILE_NAME)]


class TargetsBody(msgspec.Struct, forbid_unknown_fields=True):
    """Where an item goes: everywhere, or these zones, node groups and single nodes."""

    everywhere: bool = False
    zones: Annotated[list[Key], msgspec.Meta(max_length=MAX_TARGETS)] = []
    groups: Annotated[list[Key], msgspec.Meta(max_length=MAX_TARGETS)] = []
    nodes: Annotated[list[Key], msgspec.Meta(max_length=MAX_TARGETS)] = []

    def targets(self) -> Targets:
        return Targets(self.everywhere, tuple(self.zones), tuple(self.groups),
                       tuple(self.nodes))


class NewItem(msgspec.Struct, forbid_unknown_fields=True):
    key: Key
    kind: Kind
    title: Title
    body: Body = ""
    price_cents: Price = 0
    file_sha256: Sha256 | None = None
    file_name: FileName | None = None
    merchant: Merchant = ""
    targets: TargetsBody = msgspec.field(default_factory=TargetsBody)
    schedule: dict[str, Any] | None = None


class NewVersion(msgspec.Struct, forbid_unknown_fields=True):
    """What changes in the next version; what is left out is kept."""

    title: Title | None = None
    body: Body | None = None
    price_cents: Price | None = None
    file_sha256: Sha256 | None = None
    file_name: FileName | None = None
    drop_file: bool = False
    merchant: Merchant | None = None


class Placement(msgspec.Struct, forbid_unknown_fields=True):
    targets: TargetsBody | None = None
    schedule: dict[str, Any] | None = None


class NewCampaign(msgspec.Struct, forbid_unknown_fields=True):
    key: Key
    title: Title
    targets: TargetsBody = msgspec.field(default_factory=TargetsBody)
    schedule: dict[str, Any] | None = None
    items: Annotated[list[Key], msgspec.Meta(max_length=MAX_TARGETS)] = []


class CampaignPlacement(msgspec.Struct, forbid_unknown_fields=True):
    title: Title | None = None
    targets: TargetsBody | None = None
    schedule: dict[str, Any] | None = None


class CampaignItems(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[Key], msgspec.Meta(max_length=MAX_TARGETS)]


class GroupBody(msgspec.Struct, forbid_unknown_fields=True):
    nodes: Annotated[list[Key], msgspec.Meta(max_length=MAX_GROUP_NODES)]


def init_app(app: Flask) -> ContentLibrary:
    """Attach the content library (the database's engine, ``[hub] files``) to ``app``
    and bound request bodies by ``[hub] max_file_mb``."""
    config = app.config["TAPCAST"]
    max_file = config.hub.max_file_mb * 1_000_000
    library = ContentLibrary(get_db(app).engine, FileStore(config.hub.files),
                             max_file_size=max_file)
    app.extensions[_LIBRARY] = library
    app.config["MAX_CONTENT_LENGTH"] = max_file + FORM_OVERHEAD
    return library


def library(app: Flask | None = None) -> ContentLibrary:
    return (app or current_app).extensions[_LIBRARY]


def _actor() -> Actor:
    principal = current_principal()
    assert isinstance(principal, Principal)  # the gate let only a signed-in user in
    return principal.actor()


def _body(kind: type[S]) -> S:
    try:
        return msgspec.json.decode(request.get_data(cache=False), type=kind)
    except msgspec.DecodeError as exc:
        raise ContentError(f"body: {exc} (send a JSON object)") from None




def path_key(key: str, what: str = "content item") -> str:
    """A key from a URL path: 404 for anything that is not a key (never cut short: a
    longer key is another one; a NUL would not even reach PostgreSQL)."""
    if not KEY_RE.fullmatch(key):
        raise ContentError(f"no {what} {key[:64]!r}", 404)
    return key




@bp.errorhandler(ContentError)
def content_error(exc: ContentError) -> ResponseReturnValue:
    return jsonify({"error": str(exc)}), exc.status


# ------------------------------------------------------------------ items


@bp.get("/content")
@requires("content:read")
def list_content() -> ResponseReturnValue:
    """The library by key, a page at a time; filters kind and state (live, retired)."""
    check_params(("kind", "state", "limit", "cursor"))
    args = request.args
    kind = args.get("kind")
    if kind is not None and kind not in CONTENT_KINDS:
        raise ContentError(f"kind must be one of {', '.join(CONTENT_KINDS)}")
    state = args.get("state")
    if state is not None and state not in ("live", "retired"):
        raise ContentError("state must be live or retired")
    limit = int_arg("limit", 1, MAX_CONTENT_LIMIT) or DEFAULT_CONTENT_LIMIT
    after = None
    cursor = args.get("cursor")
    if cursor is not None:
        try:
            if not cursor or len(cursor) > MAX_CURSOR_LEN:
                raise QueryError(cursor)
            after = decode_key_cursor(cursor, "content")
        except QueryError:
            raise ContentError(f"cursor {cursor[:40]!r} is not one this API returned for "
                               "/api/v1/content; pass next_cursor from a previous page "
                               "unchanged") from None
    items = library().list(kind=kind, state=state, after=after, limit=limit + 1)
    next_cursor = next_url = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = encode_key_cursor("content", items[-1]["key"])
        rest = {k: v for k, v in args.items() if k != "cursor"}
        next_url = url_for("content_api.list_content", **rest, cursor=next_cursor)
    return jsonify({"items": items, "next_cursor": next_cursor, "next": next_url})


@bp.post("/content")
@requires("content:write")
def create_content() -> ResponseReturnValue:
    """A new item at version 1 (its file uploaded before, named by sha256)."""
    check_params(())
    body = _body(NewItem)
    lib = library()
    file = lib.file(body.file_sha256) if body.file_sha256 else None
    schedule = parse_schedule(body.schedule) if body.schedule is not None else None
    item = lib.create(_actor(), body.key, body.kind,
                      ItemInput(body.title, body.body, body.price_cents, file,
                                body.file_name, merchant=body.merchant),
                      targets=body.targets.targets(), schedule=schedule)
    return jsonify(item), 201


@bp.get("/content/<key>")
@requires("content:read")
def get_content(key: str) -> ResponseReturnValue:
    check_params(())
    return jsonify(library().get(path_key(key)))


@bp.get("/content/<key>/versions")
@requires("content:read")
def list_versions(key: str) -> ResponseReturnValue:
    """Every version, newest first (versions never change once written)."""
    check_params(())
    return jsonify({"versions": library().versions(path_key(key))})


@bp.post("/content/<key>/versions")
@requires("content:write")
def create_version(key: str) -> ResponseReturnValue:
    """The next version: what the body leaves out is kept from the current one."""
    check_params(())
    body = _body(NewVersion)
    lib = library()
    file = lib.file(body.file_sha256) if body.file_sha256 else None
    item = lib.revise(_actor(), path_key(key), ItemInput(
        body.title, body.body, body.price_cents, file, body.file_name,
        drop_file=body.drop_file, merchant=body.merchant))
    return jsonify(item), 201


@bp.put("/content/<key>/placement")
@requires("content:write")
def place_content(key: str) -> ResponseReturnValue:
    """Where the item goes and when; the content (and its version) stays as it is."""
    check_params(())
    body = _body(Placement)
    schedule = parse_schedule(body.schedule) if body.schedule is not None else None
    targets = body.targets.targets() if body.targets is not None else None
    return jsonify(library().place(_actor(), path_key(key), targets=targets, schedule=schedule))


@bp.post("/content/<key>/retire")
@requires("content:write")
def retire_content(key: str) -> ResponseReturnValue:
    """No node gets the item any more; it stays in the library, as reports name it."""
    check_params(())
    return jsonify(library().retire(_actor(), path_key(key)))


def funnel_range(args: Any) -> tuple[int, int]:
    """Days (since 1970-01-01, UTC) of ``since``..``until`` (YYYY-MM-DD, inclusive),
    the last 30 days by default; ContentError naming what is wrong."""
    import datetime as dt

    def day(name: str) -> int | None:
        raw = args.get(name)
        if raw is None:
            return None
        try:
            if len(raw) != 10:
                raise ValueError(raw)
            return (dt.date.fromisoformat(raw) - dt.date(1970, 1, 1)).days
        except ValueError:
            raise ContentError(f"{name}: a date such as 2026-12-01, got {raw[:20]!r}") \
                from None

    today = int(time.time() // 86400)
    for name in ("since", "until"):
        value = day(name)
        if value is not None and not 0 <= value <= MAX_DAY:
            raise ContentError(f"{name}: a date from 1970-01-01 to "
                               f"{dt.date.fromordinal(dt.date(1970, 1, 1).toordinal() + MAX_DAY)}")
    until = day("until")
    until = today if until is None else until
    since = day("since")
    since = until - 29 if since is None else since
    if not 0 <= until - since < MAX_FUNNEL_DAYS:
        raise ContentError(f"since must be on or before until, at most {MAX_FUNNEL_DAYS} "
                           "days apart")
    return since, until


@bp.get("/content/<key>/funnel")
@requires("content:read")
def content_funnel(key: str) -> ResponseReturnValue:
    """Impressions, taps, deliveries, requests and opens of an item, per day and for
    the nodes that delivered it most (``since``/``until``: YYYY-MM-DD, UTC days)."""
    check_params(("since", "until"))
    lib = library()
    lib.get(path_key(key))  # 404 for an item that is not in the library
    since, until = funnel_range(request.args)
    return jsonify(get_db().funnel(key, since, until))


# ------------------------------------------------------------------ campaigns


@bp.get("/campaigns")
@requires("content:read")
def list_campaigns() -> ResponseReturnValue:
    check_params(())
    return jsonify({"campaigns": library().list_campaigns()})


@bp.post("/campaigns")
@requires("content:write")
def create_campaign() -> ResponseReturnValue:
    """A campaign: a title, where and when, and the items it places."""
    check_params(())
    body = _body(NewCampaign)
    schedule = parse_schedule(body.schedule) if body.schedule is not None else None
    campaign = library().create_campaign(_actor(), body.key, body.title,
                                         targets=body.targets.targets(), schedule=schedule,
                                         items=body.items)
    return jsonify(campaign), 201


@bp.get("/campaigns/<key>")
@requires("content:read")
def get_campaign(key: str) -> ResponseReturnValue:
    check_params(())
    return jsonify(library().get_campaign(path_key(key, "campaign")))


@bp.put("/campaigns/<key>/placement")
@requires("content:write")
def place_campaign(key: str) -> ResponseReturnValue:
    check_params(())
    body = _body(CampaignPlacement)
    schedule = parse_schedule(body.schedule) if body.schedule is not None else None
    targets = body.targets.targets() if body.targets is not None else None
    return jsonify(library().place_campaign(_actor(), path_key(key, "campaign"), title=body.title,
                                            targets=targets, schedule=schedule))


@bp.put("/campaigns/<key>/items")
@requires("content:write")
def set_campaign_items(key: str) -> ResponseReturnValue:
    """The campaign places exactly these items from now on."""
    check_params(())
    body = _body(CampaignItems)
    return jsonify(library().set_campaign_items(_actor(), path_key(key, "campaign"), body.items))


@bp.post("/campaigns/<key>/retire")
@requires("content:write")
def retire_campaign(key: str) -> ResponseReturnValue:
    check_params(())
    return jsonify(library().retire_campaign(_actor(), path_key(key, "campaign")))


@bp.get("/campaigns/<key>/funnel")
@requires("content:read")
def campaign_funnel(key: str) -> ResponseReturnValue:
    """The funnel of the campaign's items together (``since``/``until`` as for an
    item's)."""
    check_params(("since", "until"))
    campaign = library().get_campaign(path_key(key, "campaign"))
    since, until = funnel_range(request.args)
    return jsonify(get_db().funnel(campaign["items"], since, until))


# ------------------------------------------------------------------ files


@bp.post("/files")
@requires("content:write")
def upload_file() -> ResponseReturnValue:
    """The raw request body kept as a file for an item of ``kind``: its type is read
    from its bytes, and it is refused whole when too big or of a type that kind does
    not take."""
    check_params(("kind",))
    kind = request.args.get("kind")
    if kind not in CONTENT_KINDS:
        raise ContentError(f"kind: say which kind of item the file is for, one of "
                           f"{', '.join(CONTENT_KINDS)}")
    stored = library().store_file(request.stream, kind)
    return jsonify({"sha256": stored.sha256, "size": stored.size,
                    "media_type": stored.media_type}), 201


@bp.get("/files/<sha256>")
@requires("content:read")
def get_file(sha256: str) -> ResponseReturnValue:
    """A file by its hash; Range requests resume a download cut halfway."""
    check_params(())
    if not SHA256_RE.fullmatch(sha256):
        raise ContentError(f"no file {sha256[:64]!r}: a file is named by its sha256 in "
                           "hex", 404)
    lib = library()
    stored = lib.file(sha256)
    return send_file(lib.files.path(sha256).resolve(), mimetype=stored.media_type,
                     conditional=True, etag=sha256, max_age=31_536_000)


# ------------------------------------------------------------------ groups, preview


@bp.get("/groups")
@requires("content:read")
def list_groups() -> ResponseReturnValue:
    check_params(())
    return jsonify({"groups": library().groups()})


@bp.put("/groups/<name>")
@requires("content:write")
def set_group(name: str) -> ResponseReturnValue:
    """The group is exactly these nodes from now on (an empty list removes it)."""
    check_params(())
    body = _body(GroupBody)
    return jsonify(library().set_group(_actor(), name, body.nodes))  # a bad name: 400


@bp.get("/preview")
@requires("content:read")
def preview() -> ResponseReturnValue:
    """What node ``node_id`` would show in its loop and push after a tap at ``at``
    (default now), in time zone ``tz`` (default: the one the node reported, else
    ``[hub] timezone``)."""
    check_params(("node_id", "at", "tz", "zone"))
    args = request.args
    node_id = node_id_arg(args.get("node_id"))
    if node_id is None:
        raise ContentError("node_id: say which node to preview")
    at = float_arg("at", 0.0, time.time() + MAX_PREVIEW_SPAN)
    tz = args.get("tz")
    if tz is None:
        tz = library().node_timezone(node_id, current_app.config["TAPCAST"].hub.timezone)
    zone = args.get("zone")
    return jsonify(library().preview(node_id, time.time() if at is None else at, tz,
                                     zone=zone))
