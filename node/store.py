"""The node's local information store: the content bound to this node's place.

Taps are served from here, never from the hub, so a node keeps serving when its uplink
is down (offline-first). SQLite through sqlite-utils; one file under the node's data dir.
"""
from __future__ import annotations

import hashlib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

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

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body.encode()).hexdigest()


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


class ContentStore:
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite_utils.Database(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.table("items").create(
            {"id": str, "title": str, "kind": str, "body": str, "price_cents": int,
             "media_url": str, "featured": int},
            pk="id", if_not_exists=True)

    def replace_all(self, items: list[Item]) -> None:
        """Swap the whole set in one transaction: a tap sees the old set or the new one."""
        with self.db.conn:
            self.db.execute("DELETE FROM items")
            self.db.table("items").insert_all(
                ({**item.__dict__, "featured": int(item.featured)} for item in items))

    def items(self) -> list[Item]:
        return [self._item(row) for row in self.db.table("items").rows_where(order_by="featured desc, id")]

    def get(self, item_id: str) -> Item | None:
        rows = list(self.db.table("items").rows_where("id = ?", [item_id]))
        return self._item(rows[0]) if rows else None

    def featured(self) -> Item | None:
        items = self.items()
        return items[0] if items else None

    @staticmethod
    def _item(row: dict[str, Any]) -> Item:
        return Item(**{**row, "featured": bool(row["featured"])})
