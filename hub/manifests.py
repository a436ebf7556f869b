"""Per-node content manifests: built from the library, signed with the hub's key,
published retained on each node's manifest topic (docs/content.md, "Manifests and
sync").

Why the ingest process publishes them: it holds the hub's MQTT connection, and a
retained message needs nothing more than one publish. The web process never talks MQTT;
a change made there reaches the nodes through the database: every check (``tick``,
every ``interval`` seconds) rebuilds the manifests of all known nodes from one snapshot
of the library (a few queries, whatever the number of nodes), and publishes only those
whose body changed or that near their expiry. Which manifest each node was sent, and
its digest, is kept in ``manifests``; a restart republishes nothing that is unchanged.

Serials: max(previous + 1, the time in milliseconds), so they only grow, even after the
hub's database is restored from an older backup (a node refuses a serial below the one
it runs: "stale").
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import Engine, select

from tapcast.keys import HubAuthority
from tapcast.protocol.manifest import (MANIFEST_KIND, MAX_ITEMS, Manifest, ManifestFile,
                                       ManifestItem, encode_manifest, manifest_topic)
from tapcast.schedule import decode_schedule
from tapcast.signed import MAX_BODY, sign_object

from hub.config import HubConfig
from hub.dbengine import writer
from hub.schema import (campaign_targets, campaigns, content_files, content_items,
                        content_targets, content_versions, manifests, node_groups, nodes,
                        settings)

log = logging.getLogger(__name__)

__all__ = ["ManifestPublisher", "Snapshot", "files_url", "MANIFEST_LIFETIME"]

#: How long a signed manifest is valid; it is signed again at half of it.
MANIFEST_LIFETIME = 7 * 86400.0
#: Seconds between two looks at the library for changes.
INTERVAL = 2.0

Publish = Callable[[str, bytes], bool]


def files_url(config: HubConfig) -> str:
    """Where nodes fetch files: ``[hub] public_url``, else the address hub web
    listens on."""
    if config.hub.public_url:
        return config.hub.public_url.rstrip("/")
    host = config.hub.host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{config.hub.port}"


@dataclass(frozen=True)
class Snapshot:
    """The live library at one moment: items with their current version, and who each
    one targets."""

    items: dict[str, ManifestItem]
    targets: dict[tuple[str, str], list[str]]  # (type, value) -> item keys
    groups: dict[str, list[str]]  # node id -> its groups

    @classmethod
    def load(cls, engine: Engine) -> Snapshot:
        """Items in a live campaign take the campaign's targets and schedule; those in
        a retired one reach no node."""
        with engine.connect() as conn:
            rows = conn.execute(
                select(content_items.c.key, content_items.c.kind, content_items.c.schedule,
                       content_items.c.campaign,
                       content_versions.c.version, content_versions.c.title,
                       content_versions.c.body, content_versions.c.price_cents,
                       content_versions.c.file_sha256, content_versions.c.file_name,
                       content_versions.c.merchant,
                       content_files.c.size, content_files.c.media_type)
                .join(content_versions, (content_versions.c.key == content_items.c.key)
                      & (content_versions.c.version == content_items.c.current))
                .outerjoin(content_files,
                           content_files.c.sha256 == content_versions.c.file_sha256)
                .where(content_items.c.retired_at.is_(None))).all()
            target_rows = conn.execute(select(content_targets)).all()
            group_rows = conn.execute(select(node_groups.c.node_id, node_groups.c.name)).all()
            live_campaigns = {r.key: r.schedule for r in conn.execute(
                select(campaigns.c.key, campaigns.c.schedule)
                .where(campaigns.c.retired_at.is_(None)))}
            campaign_rows = conn.execute(select(campaign_targets)).all()
        items = {}
        members: dict[str, list[str]] = {}  # live campaign -> its items
        for r in rows:
            if r.campaign is not None:
                if r.campaign not in live_campaigns:
                    continue  # its campaign is retired
                members.setdefault(r.campaign, []).append(r.key)
            file = None
            if r.file_sha256 is not None:
                file = ManifestFile(r.file_sha256, r.size, r.media_type, r.file_name or "file")
            schedule = live_campaigns[r.campaign] if r.campaign is not None else r.schedule
            items[r.key] = ManifestItem(r.key, r.version, r.kind, r.title, r.body,
                                        r.price_cents, file, decode_schedule(schedule),
                                        r.merchant)
        placed_by_campaign = {k for keys in members.values() for k in keys}
        targets: dict[tuple[str, str], list[str]] = {}
        for key, kind, value in target_rows:
            if key in items and key not in placed_by_campaign:
                targets.setdefault((kind, value), []).append(key)
        for campaign, kind, value in campaign_rows:
            for key in members.get(campaign, []):
                targets.setdefault((kind, value), []).append(key)
        groups: dict[str, list[str]] = {}
        for node_id, name in group_rows:
            groups.setdefault(node_id, []).append(name)
        return cls(items, targets, groups)

    def for_node(self, node_id: str, zone: str | None) -> list[ManifestItem]:
        wanted = [("all", "*"), ("node", node_id)]
        wanted += [("group", g) for g in self.groups.get(node_id, [])]
        if zone:
            wanted.append(("zone", zone))
        keys = sorted({k for w in wanted for k in self.targets.get(w, [])})  # no repeats
        return [self.items[k] for k in keys]


def node_timezone(state: str | None, default: str) -> tuple[str, str]:
    """(the time zone to use, the one reported): what a node reported in its state
    (``[node] timezone``) when the hub knows it too, else ``default``."""
    from zoneinfo import ZoneInfo

    reported = ""
    try:
        value = msgspec.json.decode(state).get("tz") if state else ""
        reported = value if isinstance(value, str) else ""
        if reported:
            ZoneInfo(reported)
            return reported, reported
    except (msgspec.DecodeError, AttributeError, KeyError, ValueError, OSError):
        pass
    return default, reported


class ManifestPublisher:
    """Builds, signs and publishes the manifests of every node the hub knows."""

    def __init__(self, config: HubConfig, engine: Engine, authority: HubAuthority,
                 publish: Publish, *, lifetime: float = MANIFEST_LIFETIME) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self.authority = authority
        self.publish = publish
        self.lifetime = lifetime
        self.tz = config.hub.timezone
        self.files_url = files_url(config)
        self.published = 0
        self._revision: str | None = None  # the library's, when every node was last looked at
        self._built: dict[str, tuple[str | None, str]] = {}  # node -> (zone, tz) built with
        self._warned: dict[str, str] = {}  # node -> unknown time zone already logged

    def tick(self, now: float | None = None) -> int:
        """Publish the manifests that changed or near their expiry; how many. A node
        whose zone and time zone are as when its manifest was last built, while the
        library's revision has not moved, is not built again: with nothing changed a
        check costs two queries and a look at each node's row."""
        from hub.content import REVISION_KEY

        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            revision = conn.execute(select(settings.c.value)
                                    .where(settings.c.key == REVISION_KEY)).scalar()
            known = conn.execute(select(nodes.c.node_id, nodes.c.zone, nodes.c.state)).all()
            sent = {r.node_id: r for r in conn.execute(select(manifests)).all()}
        snapshot: Snapshot | None = None
        records: list[dict[str, Any]] = []
        try:
            for node_id, zone, state in known:
                tz = self._timezone(node_id, state)
                last = sent.get(node_id)
                fresh = last is not None and last.expires - now > self.lifetime / 2
                if fresh and revision == self._revision \
                        and self._built.get(node_id) == (zone, tz):
                    continue
                if snapshot is None:
                    snapshot = Snapshot.load(self.engine)
                try:
                    record = self._publish_one(node_id, zone, tz, snapshot, last, fresh, now)
                except ValueError as exc:  # this node's set cannot be sent: the others can
                    self._built.pop(node_id, None)
                    log.error("no manifest for node %s: %s", node_id, exc)
                    continue
                if record is not None:
                    records.append(record)
        finally:
            self._record(records)  # what went out is on record, whatever stopped the rest
        self._revision = revision
        self.published += len(records)
        return len(records)

    def _publish_one(self, node_id: str, zone: str | None, tz: str, snapshot: Snapshot,
                     last: Any, fresh: bool, now: float) -> dict[str, Any] | None:
        """Build, sign and publish one node's manifest; what to record, or None when
        it was unchanged or the broker did not take it. ValueError: too big to send."""
        items = snapshot.for_node(node_id, zone)
        if len(items) > MAX_ITEMS:
            raise ValueError(f"{len(items)} items are aimed at it, a node takes "
                             f"{MAX_ITEMS}: aim fewer at it")
        manifest = Manifest(node_id, tz, self.files_url, items)
        body = encode_manifest(manifest)
        if len(body) > MAX_BODY:
            raise ValueError(f"its manifest is {len(body)} bytes, over {MAX_BODY}: shorten "
                             "the texts aimed at it")
        digest = hashlib.sha256(body).hexdigest()
        if fresh and last is not None and last.digest == digest:
            self._built[node_id] = (zone, tz)
            return None
        serial = max((last.serial + 1) if last is not None else 0, int(now * 1000))
        expires = now + self.lifetime
        signed = sign_object(self.authority, MANIFEST_KIND, node_id, serial, body,
                             expires=expires, issued=now)
        if not self.publish(manifest_topic(node_id), signed):
            log.warning("could not publish the manifest of %s (broker away); trying "
                        "again at the next check", node_id)
            self._built.pop(node_id, None)  # so the next check builds it again
            return None
        self._built[node_id] = (zone, tz)
        log.info("published manifest %d for %s (%d items)", serial, node_id, len(items))
        return {"node_id": node_id, "serial": serial, "digest": digest,
                "expires": int(expires), "published_at": now, "items": len(items),
                "new": last is None}

    def _timezone(self, node_id: str, state: str | None) -> str:
        tz, reported = node_timezone(state, self.tz)
        if reported and reported != tz and self._warned.get(node_id) != reported:
            self._warned[node_id] = reported
            log.warning("node %s reported time zone %r, which this hub does not know; its "
                        "manifests use %s", node_id, reported[:64], tz)
        return tz

    def _record(self, records: list[dict[str, Any]]) -> None:
        """What was published, in one transaction (a node missed here, by a crash
        between publishing and this, is published again with a higher serial)."""
        if not records:
            return
        with self._writer.begin() as conn:
            for r in records:
                values = {k: v for k, v in r.items() if k not in ("node_id", "new")}
                if r["new"]:
                    conn.execute(manifests.insert().values(node_id=r["node_id"], **values))
                else:
                    conn.execute(manifests.update().where(
                        manifests.c.node_id == r["node_id"]).values(**values))

    def run(self, stop: threading.Event, interval: float = INTERVAL) -> None:
        """Check every ``interval`` seconds until ``stop``; a failed check is logged
        and tried again (the database or the broker may be back by then)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the ingest must outlive a bad check
                log.exception("manifest check failed; trying again in %.0f s", interval)
            stop.wait(interval)


def start_publisher(config: HubConfig, engine: Engine, publish: Publish,
                    ) -> Callable[[], None] | None:
    """The publisher in a thread, or None (logged) when the hub has no signing key;
    returns what stops it."""
    from tapcast.keys import KeyFileError

    try:
        authority = HubAuthority.load_key_file(config.hub.signing_key)
    except (KeyFileError, OSError, ValueError) as exc:
        log.warning("content manifests are not published: %s ([hub] signing_key: the "
                    "hub.key `tapcast keys init-hub` wrote)", exc)
        return None
    publisher = ManifestPublisher(config, engine, authority, publish)
    stop = threading.Event()
    thread = threading.Thread(target=publisher.run, args=(stop,), name="manifests",
                              daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(10)

    return stopper
