"""The content library: items with immutable versions, their files, where they go
(targeting) and when (schedule), node groups, and what a node would show.

Why versions: a node, a report or a customer's inbox names an item by (key, version),
so what a customer received can always be shown as it was. An edit never changes a
version; it writes the next one and makes it current. Where an item goes and when is
the item's (not a version's): moving a coupon to another zone does not change the coupon.

Every change is checked here (the API, the pages and ``tapcast content import`` all come
through this class), written in one transaction with its audit entry, and refused with a
ContentError that says what is wrong and what to do.
"""
from __future__ import annotations

import logging
import re
import secrets
import time
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from tapcast.protocol.mqtt import MAX_TS
from tapcast.schedule import Schedule, ScheduleError, active, decode_schedule, display_loop, \
    push_order

from hub.accounts import Actor, audit
from hub.dbengine import writer
from hub.files import FileError, FileStore, StoredFile
from hub.schema import (CONTENT_KINDS, campaign_targets, campaigns, content_files,
                        content_items, content_targets, content_versions, node_groups, nodes,
                        settings)

log = logging.getLogger(__name__)

__all__ = ["ContentLibrary", "ContentError", "ItemInput", "Targets", "FILE_TYPES",
           "import_directory", "ImportReport", "KEY_RE"]

KEY_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TITLE = 200
MAX_BODY = 20_000
MAX_MERCHANT = 64  # hub.schema content_versions.merchant
#: Dearest single item, in cents: micro-payments, not a shop.
MAX_PRICE_CENTS = 100_000
MAX_TARGETS = 500
MAX_GROUP_NODES = 10_000
MAX_FILE_NAME = 255

IMAGES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WebP"}
AUDIO = {"audio/mpeg": "MP3", "audio/ogg": "Ogg", "audio/mp4": "M4A"}
VIDEO = {"video/mp4": "MP4", "video/webm": "WebM"}
DOCUMENTS = {"application/pdf": "PDF", "application/epub+zip": "EPUB"}
BUNDLES = {"application/zip": "ZIP (a game or a bundle)"}
#: The file types each kind of item may carry (sniffed from the bytes, never the name).
#: A ticket carries none: its code is made per delivery.
FILE_TYPES: dict[str, dict[str, str]] = {
    "article": IMAGES,
    "coupon": IMAGES,
    "media": {**IMAGES, **AUDIO, **VIDEO, **DOCUMENTS},
    "ticket": {},
    "goods": {**AUDIO, **VIDEO, **DOCUMENTS, **BUNDLES, **IMAGES},
}
#: Kinds that are nothing without their file.
FILE_REQUIRED = frozenset({"media"})
#: The ``settings`` row every library change rewrites (hub/manifests.py watches it).
REVISION_KEY = "content.revision"
#: Library files' ``featured = true``: shown and pushed before the rest.
FEATURED_PRIORITY = 10


class ContentError(ValueError):
    """A change the library refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Targets:
    """Where an item goes: everywhere, or the union of these zones, groups and nodes.
    Nothing at all: it is in the library but no node gets it (a draft)."""

    everywhere: bool = False
    zones: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()

    def rows(self) -> list[tuple[str, str]]:
        if self.everywhere:
            return [("all", "*")]
        return ([("zone", z) for z in self.zones] + [("group", g) for g in self.groups]
                + [("node", n) for n in self.nodes])

    def public(self) -> dict[str, Any]:
        return {"everywhere": self.everywhere, "zones": list(self.zones),
                "groups": list(self.groups), "nodes": list(self.nodes)}

    @classmethod
    def of(cls, rows: Iterable[tuple[str, str]]) -> Targets:
        by: dict[str, list[str]] = {"zone": [], "group": [], "node": []}
        everywhere = False
        for kind, value in rows:
            if kind == "all":
                everywhere = True
            else:
                by[kind].append(value)
        return cls(everywhere, *(tuple(sorted(by[k])) for k in ("zone", "group", "node")))

    def checked(self) -> Targets:
        for what, values in (("zone", self.zones), ("group", self.groups),
                             ("node", self.nodes)):
            for v in values:
                if not KEY_RE.fullmatch(v):
                    raise ContentError(f"{what} {v[:80]!r} is not a valid name: use letters, "
                                       "digits, '-' and '_' (at most 64)")
        if self.everywhere and (self.zones or self.groups or self.nodes):
            raise ContentError("targets: every node, or zones, groups and nodes, not both")
        if len(self.rows()) > MAX_TARGETS:
            raise ContentError(f"at most {MAX_TARGETS} targets per item: use a node group")
        return Targets(self.everywhere, *(tuple(sorted(set(v))) for v in
                                          (self.zones, self.groups, self.nodes)))


@dataclass
class ItemInput:
    """What a marketer gives for a new item or a new version (None: keep as it is)."""

    title: str | None = None
    body: str | None = None
    price_cents: int | None = None
    file: StoredFile | None = None
    file_name: str | None = None
    drop_file: bool = False  # a new version without the current one's file
    merchant: str | None = None  # who offers it ("": none named); phones may block one


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    revised: list[str] = field(default_factory=list)
    placed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _check_key(key: str, what: str = "item key") -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ContentError(f"{what} {str(key)[:80]!r} is not valid: use letters, digits, "
                           "'-' and '_' (1 to 64)")
    return key


def _check_kind(kind: str) -> str:
    if kind not in CONTENT_KINDS:
        raise ContentError(f"kind {str(kind)[:40]!r} is not one of {', '.join(CONTENT_KINDS)}")
    return kind


def checked_file_name(name: str | None) -> str:
    """The name a file is shown and downloaded by: its last path part, without
    control characters; ContentError when nothing is left."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not base or len(base) > MAX_FILE_NAME or any(ord(c) < 32 or c == "\x7f" for c in base) \
            or base in (".", ".."):
        raise ContentError(f"file name {str(name)[:80]!r}: give a plain name such as "
                           "coupon.png (at most 255 characters, no control characters)")
    return base


def _file_name_of(item: ItemInput) -> str | None:
    if item.file is None:
        if item.file_name is not None:
            raise ContentError("file_name is the name of a new file: give file_sha256 with it")
        return None
    return checked_file_name(item.file_name or "file")


def check_merchant(merchant: str) -> str:
    """A merchant's name as items carry it: short printable text ("" for none)."""
    if not isinstance(merchant, str) or len(merchant) > MAX_MERCHANT:
        raise ContentError(f"merchant: text of at most {MAX_MERCHANT} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in merchant) or merchant != merchant.strip():
        raise ContentError("merchant: no control characters, no spaces around it")
    return merchant


def check_text(title: str, body: str, price_cents: int) -> None:
    """The text of an item (or a campaign's title), as create and revise check it."""
    if not title.strip():
        raise ContentError("title: give the item a title")
    if len(title) > MAX_TITLE:
        raise ContentError(f"title: at most {MAX_TITLE} characters, got {len(title)}")
    if len(body) > MAX_BODY:
        raise ContentError(f"body: at most {MAX_BODY} characters, got {len(body)}")
    if "\x00" in title or "\x00" in body:
        raise ContentError("title and body may not contain NUL characters")
    if not isinstance(price_cents, int) or not 0 <= price_cents <= MAX_PRICE_CENTS:
        raise ContentError(f"price_cents: a whole number from 0 to {MAX_PRICE_CENTS}")


class ContentLibrary:
    """The content tables behind ``engine`` and the files in ``files``."""

    def __init__(self, engine: Engine, files: FileStore, *, max_file_size: int) -> None:
        self.engine = engine
        self.files = files
        self.max_file_size = max_file_size
        self._writer = writer(engine)
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql"
                        else sqlite.insert)

    # ------------------------------------------------------------------ files

    def store_file(self, stream: BinaryIO, kind: str, *, name: str = "file") -> StoredFile:
        """Keep an upload for an item of ``kind``: checked for size and type while it is
        written, nothing kept when refused (ContentError)."""
        allowed = FILE_TYPES[_check_kind(kind)]
        if not allowed:
            raise ContentError(f"a {kind} item carries no file (its code is made for each "
                               "customer); leave the file empty")
        try:
            stored = self.files.put(stream, max_size=self.max_file_size, allowed=allowed,
                                    what=name)
        except FileError as exc:
            raise ContentError(str(exc), exc.status) from None
        with self._writer.begin() as conn:
            self._put_file_row(conn, stored, time.time())
        log.info("stored file %s (%d bytes, %s)", stored.sha256, stored.size,
                 stored.media_type)
        return stored

    def file(self, sha256: str) -> StoredFile:
        """A file the library holds (uploaded before), by its hash; ContentError 404."""
        with self.engine.connect() as conn:
            row = conn.execute(select(content_files).where(
                content_files.c.sha256 == sha256)).first()
        if row is None or not self.files.exists(sha256):
            raise ContentError(f"no file {sha256[:64]!r} in the library: upload it first "
                               "(POST /api/v1/files)", 404)
        return StoredFile(row.sha256, row.size, row.media_type)

    # ------------------------------------------------------------------ changes

    @contextmanager
    def _change(self) -> Iterator[Connection]:
        """A write transaction that also moves the library's revision on (the manifest
        publisher rebuilds nothing while it stays put); a unique constraint hit is a 409."""
        try:
            with self._writer.begin() as conn:
                yield conn
                revision = secrets.token_hex(8)
                conn.execute(self._insert(settings).values(key=REVISION_KEY, value=revision)
                             .on_conflict_do_update(index_elements=["key"],
                                                    set_={"value": revision}))
        except IntegrityError as exc:
            raise ContentError(f"conflicts with what exists: "
                               f"{str(exc.orig).splitlines()[0]}", 409) from None

    def create(self, actor: Actor, key: str, kind: str, item: ItemInput, *,
               targets: Targets = Targets(), schedule: Schedule | None = None
               ) -> dict[str, Any]:
        """A new item at version 1."""
        _check_key(key)
        _check_kind(kind)
        title, body, price = item.title or "", item.body or "", item.price_cents or 0
        check_text(title, body, price)
        merchant = check_merchant(item.merchant or "")
        self._check_file(kind, item.file)
        name = _file_name_of(item)
        targets = targets.checked()
        schedule = _checked_schedule(schedule or Schedule())
        now = time.time()
        with self._change() as conn:
            if conn.execute(select(content_items.c.key).where(
                    content_items.c.key == key)).first() is not None:
                raise ContentError(f"an item {key!r} exists already: edit it (a new version) "
                                   "or pick another key", 409)
            self._put_file_row(conn, item.file, now)
            conn.execute(insert(content_items).values(
                key=key, kind=kind, current=1, schedule=_encode(schedule), created_at=now,
                updated_at=now, retired_at=None))
            self._put_version(conn, actor, key, 1, title, body, price, item.file, name, now,
                              merchant)
            self._put_targets(conn, key, targets)
            after = self._get(conn, key)
            audit(conn, actor, "content.create", "content", key, None, after)
        log.info("%s created content %s (%s)", actor.name, key, kind)
        return after

    def revise(self, actor: Actor, key: str, item: ItemInput) -> dict[str, Any]:
        """The next version of ``key`` (what is not given is kept), made current."""
        _file_name_of(item)  # a name without a file says nothing: refused before all else
        now = time.time()
        with self._change() as conn:
            before = self._get(conn, key, lock=True)
            if before["retired_at"] is not None:
                raise ContentError(f"{key!r} is retired; make a new item instead", 409)
            cur = before["version"]
            title = cur["title"] if item.title is None else item.title
            body = cur["body"] if item.body is None else item.body
            price = cur["price_cents"] if item.price_cents is None else item.price_cents
            check_text(title, body, price)
            merchant = check_merchant(cur["merchant"] if item.merchant is None
                                      else item.merchant)
            kept = cur["file"]
            if item.file is not None:
                file, file_name = item.file, _file_name_of(item)
            elif item.drop_file or kept is None:
                file, file_name = None, None
            else:
                file = StoredFile(kept["sha256"], kept["size"], kept["media_type"])
                file_name = kept["name"]
            self._check_file(before["kind"], file)
            if (title, body, price, file and file.sha256, file_name, merchant) == (
                    cur["title"], cur["body"], cur["price_cents"],
                    kept and kept["sha256"], kept and kept["name"], cur["merchant"]):
                raise ContentError("nothing changed: a new version needs a new title, text, "
                                   "price, merchant or file")
            version = before["current"] + 1
            self._put_file_row(conn, file, now)
            self._put_version(conn, actor, key, version, title, body, price, file, file_name,
                              now, merchant)
            conn.execute(update(content_items).where(content_items.c.key == key)
                         .values(current=version, updated_at=now))
            after = self._get(conn, key)
            audit(conn, actor, "content.revise", "content", key, before, after)
        return after

    def place(self, actor: Actor, key: str, *, targets: Targets | None = None,
              schedule: Schedule | None = None) -> dict[str, Any]:
        """Change where ``key`` goes and when (no new version: the content is the same)."""
        if targets is None and schedule is None:
            raise ContentError("nothing to change: give targets, a schedule or both")
        now = time.time()
        with self._change() as conn:
            before = self._get(conn, key, lock=True)
            if before["retired_at"] is not None:
                raise ContentError(f"{key!r} is retired; make a new item instead", 409)
            values: dict[str, Any] = {"updated_at": now}
            if schedule is not None:
                values["schedule"] = _encode(_checked_schedule(schedule))
            conn.execute(update(content_items).where(content_items.c.key == key)
                         .values(**values))
            if targets is not None:
                conn.execute(delete(content_targets).where(content_targets.c.key == key))
                self._put_targets(conn, key, targets.checked())
            after = self._get(conn, key)
            audit(conn, actor, "content.place", "content", key, before, after)
        return after

    def retire(self, actor: Actor, key: str) -> dict[str, Any]:
        """No node gets ``key`` any more; it stays in the library (reports name it)."""
        now = time.time()
        current = self.get(key)
        if current["retired_at"] is not None:
            return current  # retired already: nothing written, nothing to republish
        with self._change() as conn:
            before = self._get(conn, key, lock=True)
            conn.execute(update(content_items).where(content_items.c.key == key)
                         .values(retired_at=now, updated_at=now))
            after = self._get(conn, key)
            audit(conn, actor, "content.retire", "content", key, before, after)
        return after

    def set_group(self, actor: Actor, name: str, node_ids: Iterable[str]) -> dict[str, Any]:
        """Node group ``name`` is exactly ``node_ids`` from now on (empty: no group)."""
        _check_key(name, "group name")
        members = sorted(set(node_ids))
        if len(members) > MAX_GROUP_NODES:
            raise ContentError(f"at most {MAX_GROUP_NODES} nodes in a group")
        for n in members:
            _check_key(n, "node id")
        with self._change() as conn:
            before = self._group(conn, name)
            conn.execute(delete(node_groups).where(node_groups.c.name == name))
            if members:
                conn.execute(insert(node_groups), [{"name": name, "node_id": n}
                                                   for n in members])
            after = {"name": name, "nodes": members}
            audit(conn, actor, "group.set", "group", name,
                  before if before["nodes"] else None, after)
        return after

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._get(conn, key)

    def versions(self, key: str) -> list[dict[str, Any]]:
        """Every version of ``key``, newest first."""
        with self.engine.connect() as conn:
            self._get(conn, key)
            rows = conn.execute(_version_query().where(content_versions.c.key == key)
                                .order_by(content_versions.c.version.desc())).all()
        return [_version(r._mapping) for r in rows]

    def list(self, *, kind: str | None = None, state: str | None = None,
             after: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Items by key, a page at a time (``after``: the last key of the previous page);
        ``state``: "live" or "retired"."""
        q = (select(content_items.c.key).order_by(content_items.c.key).limit(limit))
        if kind is not None:
            q = q.where(content_items.c.kind == _check_kind(kind))
        if state == "live":
            q = q.where(content_items.c.retired_at.is_(None))
        elif state == "retired":
            q = q.where(content_items.c.retired_at.is_not(None))
        elif state is not None:
            raise ContentError("state must be live or retired")
        if after is not None:
            q = q.where(content_items.c.key > after)
        with self.engine.connect() as conn:
            return [self._get(conn, k) for k in conn.execute(q).scalars()]

    def groups(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(node_groups.c.name, node_groups.c.node_id)
                                .order_by(node_groups.c.name, node_groups.c.node_id)).all()
        out: dict[str, list[str]] = {}
        for name, node_id in rows:
            out.setdefault(name, []).append(node_id)
        return [{"name": k, "nodes": v} for k, v in out.items()]

    def for_node(self, node_id: str, *, zone: str | None = None) -> list[dict[str, Any]]:
        """The live items aimed at ``node_id`` (by itself, its zone, its groups, or
        everywhere; or through their live campaign), whatever the time: what its
        manifest lists. ``zone``: the node's zone when the hub has not heard it yet
        (else the one it reported). The same rule as the manifests (one Snapshot)."""
        with self.engine.connect() as conn:
            return [self._get(conn, i.key) for i in self._aimed(conn, node_id, zone)[0]]

    def _aimed(self, conn: Connection, node_id: str, zone: str | None
               ) -> tuple[list[Any], str | None]:
        from hub.manifests import Snapshot

        _check_key(node_id, "node id")
        reported = conn.execute(select(nodes.c.zone).where(nodes.c.node_id == node_id)
                                ).scalar()
        zone = reported or zone
        return Snapshot.load(self.engine).for_node(node_id, zone), zone

    def node_timezone(self, node_id: str, default: str) -> str:
        """The time zone ``node_id`` reported (``[node] timezone``), else ``default``."""
        from hub.manifests import node_timezone

        with self.engine.connect() as conn:
            state = conn.execute(select(nodes.c.state).where(nodes.c.node_id == node_id)
                                 ).scalar()
        return node_timezone(state, default)[0]

    def preview(self, node_id: str, at: float, tz: str, *, zone: str | None = None,
                slots: int = 12) -> dict[str, Any]:
        """What ``node_id`` would show (the display loop's next ``slots``) and push after
        a tap at time ``at`` in time zone ``tz``."""
        check_timezone(tz)
        if not 0 <= at <= MAX_TS:
            raise ContentError("at: a time from 1970 to 2242")
        if zone is not None:
            _check_key(zone, "zone")
        with self.engine.connect() as conn:
            items, _ = self._aimed(conn, node_id, zone)
        entries = [(i.key, i.schedule) for i in items]
        return {"node_id": node_id, "at": at, "tz": tz,
                "targeted": [key for key, _ in entries],
                "active": [key for key, s in entries if active(s, at, tz)],
                "loop": display_loop(entries, at, tz, slots),
                "push": push_order(entries, at, tz)}

    # ------------------------------------------------------------------ campaigns

    def create_campaign(self, actor: Actor, key: str, title: str, *,
                        targets: Targets = Targets(), schedule: Schedule | None = None,
                        items: Iterable[str] = ()) -> dict[str, Any]:
        """A campaign placing ``items`` (checked first: all of it is made, or none)."""
        _check_key(key, "campaign key")
        check_text(title, "", 0)
        targets = targets.checked()
        schedule = _checked_schedule(schedule or Schedule())
        now = time.time()
        with self._change() as conn:
            if conn.execute(select(campaigns.c.key).where(campaigns.c.key == key)
                            ).first() is not None:
                raise ContentError(f"a campaign {key!r} exists already", 409)
            conn.execute(insert(campaigns).values(key=key, title=title,
                                                  schedule=_encode(schedule),
                                                  created_at=now, updated_at=now))
            self._put_campaign_targets(conn, key, targets)
            self._assign_items(conn, key, items, now)
            after = self._campaign(conn, key)
            audit(conn, actor, "campaign.create", "campaign", key, None, after)
        return after

    def place_campaign(self, actor: Actor, key: str, *, title: str | None = None,
                       targets: Targets | None = None, schedule: Schedule | None = None
                       ) -> dict[str, Any]:
        """Change a campaign's title, where it goes and when (its items follow)."""
        now = time.time()
        with self._change() as conn:
            before = self._campaign(conn, key, lock=True)
            if before["retired_at"] is not None:
                raise ContentError(f"campaign {key!r} is retired; make a new one", 409)
            values: dict[str, Any] = {"updated_at": now}
            if title is not None:
                check_text(title, "", 0)
                values["title"] = title
            if schedule is not None:
                values["schedule"] = _encode(_checked_schedule(schedule))
            conn.execute(update(campaigns).where(campaigns.c.key == key).values(**values))
            if targets is not None:
                conn.execute(delete(campaign_targets).where(campaign_targets.c.key == key))
                self._put_campaign_targets(conn, key, targets.checked())
            self._touch_members(conn, key, now)
            after = self._campaign(conn, key)
            audit(conn, actor, "campaign.place", "campaign", key, before, after)
        return after

    def set_campaign_items(self, actor: Actor, key: str, item_keys: Iterable[str]
                           ) -> dict[str, Any]:
        """The campaign places exactly these items from now on; the ones it leaves go
        back to their own targets and schedule. An item is in one campaign at most."""
        now = time.time()
        with self._change() as conn:
            before = self._campaign(conn, key, lock=True)
            item_keys = sorted(set(item_keys))
            if before["retired_at"] is not None and not set(item_keys) <= set(before["items"]):
                raise ContentError(f"campaign {key!r} is retired: items may leave it, not "
                                   "join it; make a new campaign", 409)
            self._assign_items(conn, key, item_keys, now)
            after = self._campaign(conn, key)
            audit(conn, actor, "campaign.items", "campaign", key, before, after)
        return after

    def _assign_items(self, conn: Connection, key: str, item_keys: Iterable[str],
                      now: float) -> None:
        wanted = sorted(set(item_keys))
        if len(wanted) > MAX_TARGETS:
            raise ContentError(f"at most {MAX_TARGETS} items in a campaign")
        for item_key in wanted:
            item = self._get(conn, _check_key(item_key), lock=True)
            if item["retired_at"] is not None and item["campaign"] != key:
                raise ContentError(f"item {item_key!r} is retired", 409)
            if item["campaign"] not in (None, key):
                raise ContentError(f"item {item_key!r} is in campaign "
                                   f"{item['campaign']!r}: take it out there first", 409)
        conn.execute(update(content_items).where(
            content_items.c.campaign == key, content_items.c.key.not_in(wanted))
            .values(campaign=None, updated_at=now))
        if wanted:
            conn.execute(update(content_items).where(content_items.c.key.in_(wanted))
                         .values(campaign=key, updated_at=now))

    def retire_campaign(self, actor: Actor, key: str) -> dict[str, Any]:
        """Its items reach no node any more, until they are taken out of it
        (``set_campaign_items`` with fewer items); retiring twice changes nothing."""
        now = time.time()
        current = self.get_campaign(key)
        if current["retired_at"] is not None:
            return current
        with self._change() as conn:
            before = self._campaign(conn, key, lock=True)
            conn.execute(update(campaigns).where(campaigns.c.key == key)
                         .values(retired_at=now, updated_at=now))
            self._touch_members(conn, key, now)
            after = self._campaign(conn, key)
            audit(conn, actor, "campaign.retire", "campaign", key, before, after)
        return after

    def get_campaign(self, key: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._campaign(conn, key)

    def list_campaigns(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            keys = list(conn.execute(select(campaigns.c.key).order_by(campaigns.c.key))
                        .scalars())
            return [self._campaign(conn, k) for k in keys]

    def _campaign(self, conn: Connection, key: str, *, lock: bool = False) -> dict[str, Any]:
        q = select(campaigns).where(campaigns.c.key == key)
        if lock and self.engine.dialect.name == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise ContentError(f"no campaign {str(key)[:80]!r}", 404)
        targets = Targets.of(conn.execute(
            select(campaign_targets.c.target_type, campaign_targets.c.value)
            .where(campaign_targets.c.key == key)).all())
        items = list(conn.execute(select(content_items.c.key).where(
            content_items.c.campaign == key).order_by(content_items.c.key)).scalars())
        return {"key": key, "title": row.title, "targets": targets.public(),
                "schedule": msgspec.json.decode(row.schedule), "items": items,
                "created_at": row.created_at, "updated_at": row.updated_at,
                "retired_at": row.retired_at}

    @staticmethod
    def _put_campaign_targets(conn: Connection, key: str, targets: Targets) -> None:
        rows = targets.rows()
        if rows:
            conn.execute(insert(campaign_targets), [
                {"key": key, "target_type": t, "value": v} for t, v in rows])

    @staticmethod
    def _touch_members(conn: Connection, key: str, now: float) -> None:
        conn.execute(update(content_items).where(content_items.c.campaign == key)
                     .values(updated_at=now))

    # ------------------------------------------------------------------ internals

    def _check_file(self, kind: str, file: StoredFile | None) -> None:
        if file is None:
            if kind in FILE_REQUIRED:
                raise ContentError(f"a {kind} item needs its file: upload one "
                                   f"({', '.join(sorted(set(FILE_TYPES[kind].values())))})")
            return
        allowed = FILE_TYPES[kind]
        if file.media_type not in allowed:
            raise ContentError(f"a {kind} item cannot carry a {file.media_type} file"
                               + (f"; it takes {', '.join(sorted(set(allowed.values())))}"
                                  if allowed else ""), 415)

    def _put_file_row(self, conn: Connection, file: StoredFile | None, now: float) -> None:
        if file is None:
            return
        if not self.files.exists(file.sha256):
            raise ContentError(f"file {file.sha256} is not in the hub's file store", 409)
        conn.execute(self._insert(content_files).values(
            sha256=file.sha256, size=file.size, media_type=file.media_type, created_at=now
        ).on_conflict_do_nothing(index_elements=["sha256"]))

    @staticmethod
    def _put_version(conn: Connection, actor: Actor, key: str, version: int, title: str,
                     body: str, price: int, file: StoredFile | None, file_name: str | None,
                     now: float, merchant: str = "") -> None:
        conn.execute(insert(content_versions).values(
            key=key, version=version, title=title, body=body, price_cents=price,
            merchant=merchant,
            file_sha256=file and file.sha256,
            file_name=file and file_name,
            created_by=actor.name[:80], created_at=now))

    @staticmethod
    def _put_targets(conn: Connection, key: str, targets: Targets) -> None:
        rows = targets.rows()
        if rows:
            conn.execute(insert(content_targets), [
                {"key": key, "target_type": t, "value": v} for t, v in rows])

    def _get(self, conn: Connection, key: str, *, lock: bool = False) -> dict[str, Any]:
        q = select(content_items).where(content_items.c.key == key)
        if lock and self.engine.dialect.name == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise ContentError(f"no content item {str(key)[:80]!r}", 404)
        item = dict(row._mapping)
        version = conn.execute(_version_query().where(
            content_versions.c.key == key,
            content_versions.c.version == item["current"])).one()
        targets = Targets.of(conn.execute(
            select(content_targets.c.target_type, content_targets.c.value)
            .where(content_targets.c.key == key)).all())
        return {"key": key, "kind": item["kind"], "current": item["current"],
                "version": _version(version._mapping), "targets": targets.public(),
                "schedule": msgspec.json.decode(item["schedule"]),
                "campaign": item["campaign"],
                "created_at": item["created_at"], "updated_at": item["updated_at"],
                "retired_at": item["retired_at"]}

    @staticmethod
    def _group(conn: Connection, name: str) -> dict[str, Any]:
        return {"name": name, "nodes": list(conn.execute(
            select(node_groups.c.node_id).where(node_groups.c.name == name)
            .order_by(node_groups.c.node_id)).scalars())}


def _version_query() -> Any:
    return (select(content_versions, content_files.c.size, content_files.c.media_type)
            .outerjoin(content_files,
                       content_files.c.sha256 == content_versions.c.file_sha256))


def _version(m: Any) -> dict[str, Any]:
    file = None
    if m["file_sha256"] is not None:
        file = {"sha256": m["file_sha256"], "size": m["size"], "media_type": m["media_type"],
                "name": m["file_name"]}
    return {"version": m["version"], "title": m["title"], "body": m["body"],
            "price_cents": m["price_cents"], "merchant": m["merchant"], "file": file,
            "created_by": m["created_by"],
            "created_at": m["created_at"]}


def check_timezone(tz: str) -> str:
    """An IANA time zone name the system knows (Europe/Berlin); ContentError if not."""
    try:
        if not 1 <= len(tz) <= 64:
            raise ValueError("too long")
        ZoneInfo(tz)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise ContentError(f"time zone {tz[:64]!r} is not one this hub knows: use an IANA "
                           "name such as Europe/Berlin or UTC") from None
    return tz


def _checked_schedule(schedule: Schedule) -> Schedule:
    try:
        return decode_schedule(msgspec.json.encode(schedule))
    except ScheduleError as exc:
        raise ContentError(f"schedule: {exc}") from None


def _encode(schedule: Schedule) -> str:
    return msgspec.json.encode(schedule).decode()


def parse_schedule(data: Any) -> Schedule:
    """A schedule from a request or a library file; ContentError saying what is wrong."""
    try:
        return decode_schedule(data)
    except ScheduleError as exc:
        raise ContentError(f"schedule: {exc}") from None


# ------------------------------------------------------------------ library import

LIBRARY_FILE = "library.toml"


class _LibraryItem(msgspec.Struct, forbid_unknown_fields=True):
    """One ``[[item]]`` of a library file (content/library.toml documents the fields)."""

    id: str
    title: str
    kind: str
    body: str = ""
    zones: list[str] | None = None  # left out, with no groups or nodes: everywhere
    groups: list[str] = []
    nodes: list[str] = []
    price_cents: int = 0
    merchant: str = ""
    featured: bool = False
    file: str | None = None  # relative to the library's directory
    media_url: str | None = None  # nodes' own seed format; the hub ignores it
    schedule: dict[str, Any] | None = None


def _check_library_file(library: ContentLibrary, kind: str, path: Path) -> None:
    """A library file's size and type, as an upload would find them, before anything is
    written."""
    from hub.files import SNIFF_BYTES, sniff

    allowed = FILE_TYPES[kind]
    if not allowed:
        raise ContentError(f"a {kind} item carries no file; leave out 'file'")
    size = path.stat().st_size
    if not 0 < size <= library.max_file_size:
        raise ContentError(f"file {path.name}: {size} bytes; a file is 1 byte to "
                           f"{library.max_file_size} bytes")
    with path.open("rb") as f:
        found = sniff(f.read(SNIFF_BYTES))
    if found not in allowed:
        raise ContentError(f"file {path.name} is {found or 'of a type the hub does not know'}"
                           f"; a {kind} item takes {', '.join(sorted(set(allowed.values())))}")


def import_directory(library: ContentLibrary, directory: str | Path, actor: Actor,
                     ) -> ImportReport:
    """Bring ``directory``/library.toml into the library through the same checks as an
    upload: new keys are created, changed content becomes a new version, changed
    targeting or schedule is placed, the rest is left alone (importing twice changes
    nothing). Every item is checked before anything is written: its fields, its file's
    type and size, and what the library holds under its key."""
    root = Path(directory).resolve()
    path = root / LIBRARY_FILE
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ContentError(f"{path}: cannot read the library: {exc}") from None
    raw_items = doc.get("item", [])
    if not isinstance(raw_items, list):
        raise ContentError(f"{path}: 'item' must be an array of tables ([[item]])")
    planned = []
    for n, raw in enumerate(raw_items, 1):
        try:
            entry = msgspec.convert(raw, _LibraryItem)
            _check_key(entry.id)
            _check_kind(entry.kind)
            check_text(entry.title, entry.body, entry.price_cents)
            check_merchant(entry.merchant)
            schedule = parse_schedule(entry.schedule or {})
            if entry.featured:
                schedule = msgspec.structs.replace(schedule, priority=max(
                    schedule.priority, FEATURED_PRIORITY))
            zones = (["*"] if entry.zones is None and not (entry.groups or entry.nodes)
                     else entry.zones or [])
            everywhere = "*" in zones
            targets = Targets(everywhere, tuple(z for z in zones if z != "*"),
                              tuple(entry.groups), tuple(entry.nodes)).checked()
            file_path = None
            if entry.file is not None:
                file_path = (root / entry.file).resolve()
                if root not in file_path.parents or not file_path.is_file():
                    raise ContentError(f"file {entry.file!r} is not a file inside {root}")
                _check_library_file(library, entry.kind, file_path)
            try:  # what the library holds under this key must be able to take it
                existing = library.get(entry.id)
            except ContentError as exc:
                if exc.status != 404:
                    raise
            else:
                if existing["kind"] != entry.kind:
                    raise ContentError(f"it is a {existing['kind']} in the library, not a "
                                       f"{entry.kind}; give it another id")
                if existing["retired_at"] is not None:
                    raise ContentError("it is retired in the library; give it another id")
        except (msgspec.ValidationError, ContentError) as exc:
            name = raw.get("id", "?") if isinstance(raw, dict) else "?"
            raise ContentError(f"{path}: item #{n} ({str(name)[:64]}): {exc}") from None
        planned.append((entry, schedule, targets, file_path))
    report = ImportReport()
    for entry, schedule, targets, file_path in planned:
        file = None
        if file_path is not None:
            with file_path.open("rb") as stream:
                try:
                    file = library.store_file(stream, entry.kind, name=file_path.name)
                except ContentError as exc:
                    raise ContentError(f"{path}: item {entry.id}: {exc}") from None
        given = ItemInput(entry.title, entry.body, entry.price_cents, file,
                          file_path.name if file_path else None, drop_file=file is None,
                          merchant=entry.merchant)
        try:
            existing = library.get(entry.id)
        except ContentError as exc:
            if exc.status != 404:
                raise
            library.create(actor, entry.id, entry.kind, given, targets=targets,
                           schedule=schedule)
            report.created.append(entry.id)
            continue
        changed = False
        cur = existing["version"]
        if (cur["title"], cur["body"], cur["price_cents"],
                cur["file"] and cur["file"]["sha256"], cur["merchant"]) != (
                entry.title, entry.body, entry.price_cents, file and file.sha256,
                entry.merchant):
            library.revise(actor, entry.id, given)
            report.revised.append(entry.id)
            changed = True
        if (existing["targets"] != targets.public()
                or existing["schedule"] != msgspec.to_builtins(schedule)):
            library.place(actor, entry.id, targets=targets, schedule=schedule)
            report.placed.append(entry.id)
            changed = True
        if not changed:
            report.unchanged.append(entry.id)
    return report
