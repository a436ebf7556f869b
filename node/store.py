"""The node's local information store: the content bound to this node's place.

Taps are served from here, never from the hub, so a node keeps serving when its uplink
is down (offline-first). SQLite through sqlite-utils; one file under the node's data dir.

Content comes from the hub's signed manifest (node.sync applies it with
``apply_manifest``: items, running serial, time zone and the manifest itself in one
transaction) or, on a node that never applied one, is seeded from a library TOML file.
Items with a schedule are served only while it is active, in the manifest's time zone,
in push order; seeded items have none and are always served, featured first.
"""
from __future__ import annotations

import hashlib
import logging
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import sqlite_utils

from tapcast.protocol.manifest import Manifest, ManifestItem, encode_manifest
from tapcast.schedule import (Schedule, ScheduleError, active, cap_allows, decode_schedule,
                              display_loop, push_order)

log = logging.getLogger(__name__)

KINDS = ("article", "coupon", "media", "ticket", "goods")
#: Library fields only the hub's import uses (content/library.toml says what they are).
HUB_ONLY_FIELDS = ("file", "groups", "nodes", "schedule")


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    kind: str
    body: str
    price_cents: int = 0
    media_url: str | None = None
    featured: bool = False
    # From a manifest: the item's version, its file (kept under the node's files dir by
    # this sha256) and its schedule. A seeded item has none of these.
    version: int = 0
    file_sha256: str | None = None
    media_type: str | None = None
    schedule: Schedule | None = field(default=None, hash=False)
    merchant: str = ""  # who offers it (phones may block merchants)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body.encode()).hexdigest()

    @classmethod
    def of_manifest(cls, item: ManifestItem) -> Item:
        file = item.file
        return cls(item.key, item.title, item.kind, item.body, item.price_cents,
                   featured=item.schedule.priority > 0, version=item.version,
                   file_sha256=file.sha256 if file is not None else None,
                   media_type=file.media_type if file is not None else None,
                   schedule=item.schedule, merchant=item.merchant)


class ContentError(ValueError):
    """The content library is malformed; the message names the item and field."""


def load_library(path: Path, zone: str) -> list[Item]:
    """Items of a library TOML file (content/library.toml) bound to ``zone`` or to "*"."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ContentError(f"{path}: cannot read content library: {exc}") from None
    items: list[Item] = []
    for n, raw in enumerate(doc.get("item", []), 1):
        zones = raw.pop("zones", ["*"])
        for hub_only in HUB_ONLY_FIELDS:  # the hub's import reads these; a node seeds without
            raw.pop(hub_only, None)
        try:
            item = Item(**raw)
        except TypeError as exc:
            raise ContentError(f"{path}: item #{n} ({raw.get('id', '?')}): {exc}") from None
        if item.kind not in KINDS:
            raise ContentError(f"{path}: item {item.id!r}: kind {item.kind!r} is not one of {KINDS}")
        if "*" in zones or zone in zones:
            items.append(item)
    return items


#: Columns a manifest added to ``items``; added to a table made by an older node.
_MANIFEST_COLUMNS = {"version": int, "file_sha256": str, "media_type": str, "schedule": str,
                     "merchant": str}
#: Zone for items without a schedule (seeded): they are active at every moment anyway.
_NO_TZ = "UTC"
#: How long deliveries are remembered for caps: the longest cap period (a week) and a day.
CAP_MEMORY = 8 * 86400.0


class ContentStore:
    """``clock``: the time schedules are evaluated at when no ``at`` is given (the
    daemon passes its best time: a Pi without a real-time clock may boot days off)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.db = sqlite_utils.Database(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        items = self.db.table("items")
        items.create(
            {"id": str, "title": str, "kind": str, "body": str, "price_cents": int,
             "media_url": str, "featured": int, **_MANIFEST_COLUMNS},
            pk="id", if_not_exists=True)
        have = items.columns_dict
        for name, kind in _MANIFEST_COLUMNS.items():
            if name not in have:
                items.add_column(name, kind)
        self.db.table("meta").create({"key": str, "value": str}, pk="key",
                                     if_not_exists=True)
        # What each handset got, for frequency caps (kept CAP_MEMORY; a week at most
        # is ever asked for).
        self.db.table("deliveries").create({"handset_id": str, "item_id": str, "at": float},
                                           if_not_exists=True)
        self.db.execute("CREATE INDEX IF NOT EXISTS deliveries_by_handset "
                        "ON deliveries (handset_id, item_id, at)")

    def replace_all(self, items: list[Item]) -> None:
        """Swap the whole set in one transaction: a tap sees the old set or the new one."""
        with self.db.atomic():
            self._replace(items)

    def apply_manifest(self, serial: int, manifest: Manifest) -> None:
        """Run ``manifest`` (signed with ``serial``): its items, its serial, its time
        zone and its JSON in one transaction, so a crash leaves the old set or the new
        one, never a mix, and a restart knows what it runs."""
        meta = {"serial": str(serial), "tz": manifest.tz,
                "manifest": encode_manifest(manifest).decode()}
        with self.db.atomic():
            self._replace([Item.of_manifest(i) for i in manifest.items])
            self.db.table("meta").upsert_all(
                ({"key": k, "value": v} for k, v in meta.items()), pk="key")

    def _replace(self, items: list[Item]) -> None:
        self.db.execute("DELETE FROM items")
        self.db.table("items").insert_all(self._row(item) for item in items)

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def content_serial(self) -> int:
        """The serial of the manifest the node runs; 0 when it never applied one."""
        return int(self._meta("serial") or 0)

    def tz(self) -> str:
        """The time zone of the manifest the node runs (its schedules' zone)."""
        return self._meta("tz") or _NO_TZ

    def manifest_json(self) -> str | None:
        """The body of the manifest the node runs, as JSON; None when none was applied."""
        return self._meta("manifest")

    def file_hashes(self) -> set[str]:
        """The sha256 of every file the current set names."""
        return {r[0] for r in self.db.execute(
            "SELECT file_sha256 FROM items WHERE file_sha256 IS NOT NULL")}

    def items(self, at: float | None = None) -> list[Item]:
        """The items to serve at ``at`` (default: now by ``clock``): those whose schedule
        is active then, in push order (priority, then id); an item without a schedule
        counts as active, with priority 1 when featured."""
        every = [i for i in map(self._item, self.db.table("items").rows_where()) if i]
        entries = [(i.id, i.schedule if i.schedule is not None
                    else Schedule(priority=1 if i.featured else 0)) for i in every]
        by_id = {i.id: i for i in every}
        when = self.clock() if at is None else at
        return [by_id[key] for key in push_order(entries, when, self.tz())]

    def get(self, item_id: str, at: float | None = None) -> Item | None:
        """The item, unless there is none of that id or it is outside its schedule."""
        rows = list(self.db.table("items").rows_where("id = ?", [item_id]))
        item = self._item(rows[0]) if rows else None
        if item is None or item.schedule is None:
            return item
        return item if active(item.schedule, self.clock() if at is None else at,
                              self.tz()) else None

    def loop(self, slots: int, at: float | None = None) -> list[Item]:
        """The display loop's next ``slots`` items at ``at``: every active item, each
        as often as its share of voice says (tapcast.schedule.display_loop)."""
        every = [i for i in map(self._item, self.db.table("items").rows_where()) if i]
        entries = [(i.id, i.schedule if i.schedule is not None
                    else Schedule(priority=1 if i.featured else 0)) for i in every]
        by_id = {i.id: i for i in every}
        when = self.clock() if at is None else at
        return [by_id[key] for key in display_loop(entries, when, self.tz(), slots)]

    def cap_allows(self, handset_id: str, item: Item, at: float | None = None) -> bool:
        """Whether ``handset_id`` may get ``item`` now under the item's frequency cap."""
        if item.schedule is None or item.schedule.cap is None:
            return True
        when = self.clock() if at is None else at
        times = [r[0] for r in self.db.execute(
            "SELECT at FROM deliveries WHERE handset_id = ? AND item_id = ? AND at > ?",
            [handset_id, item.id, when - CAP_MEMORY])]
        return cap_allows(item.schedule.cap, times, when, self.tz())

    def delivered(self, handset_id: str, item_id: str, at: float | None = None) -> None:
        """Remember a delivery (for caps); what is older than CAP_MEMORY goes."""
        when = self.clock() if at is None else at
        with self.db.atomic():
            self.db.execute("INSERT INTO deliveries (handset_id, item_id, at) VALUES (?, ?, ?)",
                            [handset_id, item_id, when])
            self.db.execute("DELETE FROM deliveries WHERE at < ?", [when - CAP_MEMORY])

    def featured(self, at: float | None = None) -> Item | None:
        items = self.items(at)
        return items[0] if items else None

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _row(item: Item) -> dict[str, Any]:
        schedule = None if item.schedule is None else msgspec.json.encode(item.schedule).decode()
        return {**item.__dict__, "featured": int(item.featured), "schedule": schedule}

    @staticmethod
    def _item(row: dict[str, Any]) -> Item | None:
        """The item of a row; None (logged) when its stored schedule does not decode:
        apply_manifest wrote it checked, so only a damaged file gets here, and a tap
        must not crash on it."""
        schedule = None
        if row.get("schedule") is not None:
            try:
                schedule = decode_schedule(row["schedule"])
            except ScheduleError as exc:
                log.error("item %s: stored schedule unreadable (%s); not serving it",
                          row["id"], exc)
                return None
        return Item(**{**row, "featured": bool(row["featured"]),
                       "version": row.get("version") or 0, "schedule": schedule,
                       "merchant": row.get("merchant") or ""})
