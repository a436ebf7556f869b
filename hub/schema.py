"""The hub's tables, as SQLAlchemy Core metadata: one definition for SQLite and
PostgreSQL, which Alembic's migrations (hub/migrations) bring a database up to.

Why the types are what they are:

* Seqs, counts and positions are BigInteger: a node's seq is bounded at 2^53 - 1
  (tapcast.protocol.mqtt.MAX_SEQ), past PostgreSQL's 32-bit INTEGER. On SQLite an
  autoincrementing key must be spelled INTEGER PRIMARY KEY (the rowid), hence the
  variant.
* Times are unix seconds as double precision (Float(53)), as the wire carries them.
* Event data is JSON *text* as validated by the ingest (one parse: never re-parsed by
  the database's own JSON reader, which disagrees on duplicate keys and big integers).
* ``events.pos`` is the storage order the API lists by (newest first) and pages with:
  an explicit column, not SQLite's implicit rowid, so PostgreSQL has it too.

Changing a table here means a new revision under hub/migrations/versions (``alembic
revision --autogenerate`` with ``-x url=...`` against a database at head shows the
difference); tests/test_hub_migrations.py fails when the two disagree.
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, Column, Float, ForeignKey, Index,
                        Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint,
                        false)

__all__ = ["metadata", "nodes", "streams", "events", "event_counts", "kind_totals",
           "KIND_TOTAL_SHARDS", "incidents", "quarantine", "BigId", "Time", "content_files",
           "content_items", "content_versions", "content_targets", "campaigns",
           "campaign_targets", "node_groups", "manifests", "funnel_daily", "funnel_totals", "FUNNEL_STAGES",
           "handset_opens"]

# Stable constraint and index names, so migrations can name what they alter.
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

#: An autoincrementing 64-bit key (SQLite: the rowid alias INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: Unix seconds, double precision on both databases.
Time = Float(precision=53)

NODE_ID_LEN = 64  # tapcast.keys.MAX_ID_LEN
EPOCH_LEN = 64

nodes = Table(
    "nodes", metadata,
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Column("status", String(16)),  # last reported 'online'/'offline' (retained + will)
    Column("status_at", Time),
    Column("last_seen", Time),  # when anything live was last heard from the node
    Column("state", Text),  # last NodeState as JSON
    Column("zone", String(64)),
    Column("version", String(64)),
    Column("epoch", String(EPOCH_LEN)),  # the node's current outbox epoch (newest stream)
    Column("acked_seq", BigInteger, nullable=False, server_default="0"),  # of that epoch
    # the operator views filter by these and page by node_id
    Index(None, "zone", "node_id"),
    Index(None, "version", "node_id"),
    Index(None, "last_seen"),
)

streams = Table(
    "streams", metadata,
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Column("epoch", String(EPOCH_LEN), primary_key=True),
    Column("acked_seq", BigInteger, nullable=False, server_default="0"),  # all <= it: stored or lost
    Column("lost", BigInteger, nullable=False, server_default="0"),  # seqs the hub will never get
    # the highest seq stored: past acked_seq only when seqs arrived out of order, and
    # then the writer walks the index from acked_seq (else it need not look)
    Column("high", BigInteger, nullable=False, server_default="0"),
    Column("first_seen", Time, nullable=False),
)

events = Table(
    "events", metadata,
    Column("pos", BigId, primary_key=True, autoincrement=True),
    Column("node_id", String(NODE_ID_LEN), nullable=False),
    Column("epoch", String(EPOCH_LEN), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("ts", Time, nullable=False),
    Column("data", Text, nullable=False),  # JSON object, as validated
    Column("received", Time, nullable=False),
    UniqueConstraint("node_id", "epoch", "seq"),
    Index(None, "node_id", "pos"),  # one node's events, newest first
    Index(None, "kind", "pos"),  # one kind's events, newest first
    # No index on received (revision 0006): time filters search pos (hub/db.py).
)

event_counts = Table(
    "event_counts", metadata,
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("ok", BigInteger, nullable=False),  # how many had data.ok = true (auth verdicts)
)

#: Event totals per kind for the whole fleet, maintained in the ingest's transaction so
#: /api/v1/stats reads a few rows instead of summing per node. Spread over SHARDS rows
#: per kind (by node id) so concurrent ingest workers rarely wait on one hot row.
KIND_TOTAL_SHARDS = 16
kind_totals = Table(
    "kind_totals", metadata,
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(32), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("ok", BigInteger, nullable=False),
)

incidents = Table(
    "incidents", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("node_id", String(NODE_ID_LEN), nullable=False),
    Column("epoch", String(EPOCH_LEN)),
    Column("kind", String(16), nullable=False),  # lost, conflict, quarantined, new_epoch
    Column("count", BigInteger, nullable=False),  # events concerned
    Column("detail", Text, nullable=False),
    Column("at", Time, nullable=False),
    Index(None, "node_id", "id"),
)

quarantine = Table(
    "quarantine", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("node_id", String(NODE_ID_LEN), nullable=False),
    Column("epoch", String(EPOCH_LEN)),
    Column("first", BigInteger),
    Column("last", BigInteger),
    Column("reason", Text, nullable=False),
    Column("digest", String(64), nullable=False, unique=True),  # sha256: a re-send kept once
    Column("payload", LargeBinary, nullable=False),  # verbatim, as it came off the broker
    Column("received", Time, nullable=False),
)

# --- accounts, roles, API tokens, audit log: below this line (revision 0002) ---
#
# Accounts: who may sign in and with which role (hub/accounts.py has the roles and what
# each may do). Why they are shaped so:
#
# * ``users`` holds every kind of account, staff and customers alike: the handset app
#   will register customers, who may have no password and authenticate by their handset
#   key instead (``handset_id``, the pseudonymous id in the handset's hub-signed
#   certificate; unique, NULL for staff). ``password_hash`` is an argon2id string.
#   Accounts are disabled, never deleted, so the audit log's actor ids stay meaningful.
# * ``api_tokens`` keeps only a token's sha256 (the value is shown once); ``id`` is the
#   public handle used to list and revoke it. ``scopes`` is a space-separated subset of
#   the owner's role's permissions, intersected again with the role on every request.
# * ``audit_log`` is append-only: who (id and name as they were), through what (web,
#   api, cli), what, on which target, the target before and after as JSON text.
# * ``settings`` holds values every hub process must share, such as the session-signing
#   key (created once by whichever process comes first: INSERT ... ON CONFLICT DO
#   NOTHING, then read back).

USERNAME_LEN = 64

users = Table(
    "users", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("username", String(USERNAME_LEN), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(255)),  # argon2id; NULL: no password sign-in
    Column("handset_id", String(NODE_ID_LEN), unique=True),  # customers: their handset
    Column("display_name", String(128)),
    Column("email", String(254)),
    Column("created_at", Time, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("last_login", Time),
    CheckConstraint("role IN ('admin', 'operator', 'marketer', 'auditor', 'customer')",
                    name="role"),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", String(32), primary_key=True),  # public handle, random
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),  # hex digest of the value
    Column("scopes", Text, nullable=False),  # space-separated permissions
    Column("created_at", Time, nullable=False),
    Column("last_used", Time),  # updated at most once a minute
    Column("expires_at", Time),  # NULL: does not expire
    Column("revoked_at", Time),  # NULL: not revoked
    UniqueConstraint("user_id", "name"),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("actor_id", BigInteger),  # NULL for the CLI (whoever runs it on the hub box)
    Column("actor_name", String(USERNAME_LEN + 16), nullable=False),
    Column("via", String(8), nullable=False),  # web, api, cli
    Column("action", String(32), nullable=False),
    Column("target_type", String(16), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("before", Text),  # JSON object, NULL when created
    Column("after", Text),  # JSON object
    Column("remote_addr", String(64)),
)

settings = Table(
    "settings", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


# ------------------------------------------------------------------ content (issue 8)
#
# * A file is kept once, under its sha256 (the bytes live in the hub's file directory,
#   hub/files.py; the row says how big it is and what type it was checked to be).
# * An item is a stable key (what nodes and reports name it by) with versions. A version
#   is immutable once written: an edit is a new version, and ``current`` names the one
#   nodes get. Targeting and the schedule belong to the item, not to a version: moving
#   a coupon to another zone does not change the coupon.
# * ``content_targets`` says where an item goes: a zone, a node group, one node, or
#   everywhere ("all", value "*"); indexed by target so "what goes to zone X" is a
#   range, not a scan.

CONTENT_KEY_LEN = 64
CONTENT_KINDS = ("article", "coupon", "media", "ticket", "goods")
TARGET_TYPES = ("all", "zone", "group", "node")

content_files = Table(
    "content_files", metadata,
    Column("sha256", String(64), primary_key=True),  # hex digest of the bytes
    Column("size", BigInteger, nullable=False),
    Column("media_type", String(100), nullable=False),  # as sniffed from the bytes
    Column("created_at", Time, nullable=False),
)

#: A campaign places several items together: while an item is in a live campaign, the
#: campaign's targets and schedule are the item's (its own are kept for when it leaves);
#: a retired campaign's items reach no node. The funnel sums its items.
campaigns = Table(
    "campaigns", metadata,
    Column("key", String(CONTENT_KEY_LEN), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("schedule", Text, nullable=False),  # JSON, tapcast.schedule.Schedule
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    Column("retired_at", Time),
)

campaign_targets = Table(
    "campaign_targets", metadata,
    Column("key", String(CONTENT_KEY_LEN), ForeignKey("campaigns.key"), primary_key=True),
    Column("target_type", String(8), primary_key=True),
    Column("value", String(64), primary_key=True),
    Index(None, "target_type", "value"),
    CheckConstraint("target_type IN ('all', 'zone', 'group', 'node')", name="target_type"),
)

content_items = Table(
    "content_items", metadata,
    Column("key", String(CONTENT_KEY_LEN), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("current", Integer, nullable=False),  # the version nodes get
    Column("schedule", Text, nullable=False),  # JSON, tapcast.schedule.Schedule
    # the campaign that places it (NULL: its own targets and schedule)
    Column("campaign", String(CONTENT_KEY_LEN), ForeignKey("campaigns.key"), index=True),
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    Column("retired_at", Time),  # NULL: live; else no node gets it any more
    CheckConstraint("kind IN ('article', 'coupon', 'media', 'ticket', 'goods')", name="kind"),
)

content_versions = Table(
    "content_versions", metadata,
    Column("key", String(CONTENT_KEY_LEN), ForeignKey("content_items.key"),
           primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("price_cents", Integer, nullable=False),  # 0: free
    Column("file_sha256", String(64), ForeignKey("content_files.sha256"), index=True),
    Column("file_name", String(255)),  # as uploaded (shown, and the download's name)
    # who offers it ("" none): phones refuse items of merchants their customer blocked
    Column("merchant", String(64), nullable=False, server_default=""),
    Column("created_by", String(USERNAME_LEN + 16), nullable=False),
    Column("created_at", Time, nullable=False),
)

content_targets = Table(
    "content_targets", metadata,
    Column("key", String(CONTENT_KEY_LEN), ForeignKey("content_items.key"),
           primary_key=True),
    Column("target_type", String(8), primary_key=True),
    Column("value", String(64), primary_key=True),
    Index(None, "target_type", "value"),
    CheckConstraint("target_type IN ('all', 'zone', 'group', 'node')", name="target_type"),
)

node_groups = Table(
    "node_groups", metadata,
    Column("name", String(64), primary_key=True),
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Index(None, "node_id"),
)

#: The manifest last published to each node (hub/manifests.py): its serial, a digest of
#: its body (unchanged: not published again) and when it expires (signed again at half).
manifests = Table(
    "manifests", metadata,
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Column("serial", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("items", Integer, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("published_at", Time, nullable=False),
)

#: The funnel, counted as events arrive (in the ingest's transaction, like
#: ``event_counts``), so a report reads a few rows per day instead of scanning events:
#: per item, day (UTC, of the event's own time) and node, how many of each stage.
#: ``item_key`` "*" holds what belongs to no item (taps).
#: ``refused``: a handset's consent refused the item (docs/handset.md); ``open``: counted
#: once per (handset, counter) of its signed open record (``handset_opens``).
FUNNEL_STAGES = ("impression", "tap", "delivery", "request", "open", "refused")
funnel_daily = Table(
    "funnel_daily", metadata,
    Column("item_key", String(CONTENT_KEY_LEN), primary_key=True),
    Column("day", Integer, primary_key=True, autoincrement=False),  # days since 1970-01-01
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Column("stage", String(16), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

#: The same per item and day for all nodes together: what the funnel's totals and daily
#: chart read (a row per day and stage, however many nodes carried the item).
funnel_totals = Table(
    "funnel_totals", metadata,
    Column("item_key", String(CONTENT_KEY_LEN), primary_key=True),
    Column("day", Integer, primary_key=True, autoincrement=False),
    Column("stage", String(16), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# ------------------------------------------------- handset opens (issue 9, revision 0004)

#: Opens handsets reported (a handset-signed record, docs/handset.md): one row per
#: (handset, the phone's own counter), so a record delivered twice (its ack was lost, or
#: it went through two nodes) is counted in the funnel once.
handset_opens = Table(
    "handset_opens", metadata,
    Column("handset_id", String(NODE_ID_LEN), primary_key=True),
    Column("counter", BigInteger, primary_key=True, autoincrement=False),
    Column("item_key", String(CONTENT_KEY_LEN), nullable=False),
    Column("node_id", String(NODE_ID_LEN), nullable=False),
    Column("received", Time, nullable=False),
)

# ------------------------------ handsets and presence codes (issue 9, revision 0005)
#
# * ``handsets``: every handset certificate the hub issued to a customer account (hub/
#   handsets.py). The account's current one has ``replaced_at`` NULL and is named by
#   ``users.handset_id``; signing in again (a new phone, "reset identity") issues a new
#   pseudonymous id and marks the old row replaced, so the old id is no longer the
#   account's (and can be listed for revocation). ``token_id`` is the bearer token the
#   app got with it (revoked when the handset is replaced).
# * ``presence_offers``: the codes nodes show, as they offered them (hub/presence.py,
#   docs/protocol.md "Without NFC"), and what became of each: found by ``code_hash``,
#   claimed by one account, its answer relayed to the node by the ingest (``state``
#   "answered" is what the ingest polls), the node's verdict. Rows are deleted an hour
#   after they expire.

PRESENCE_STATES = ("open", "claimed", "answered", "relayed", "confirmed", "refused")

handsets = Table(
    "handsets", metadata,
    Column("handset_id", String(NODE_ID_LEN), primary_key=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False, index=True),
    Column("public_key", String(64), nullable=False),  # raw Ed25519, hex
    Column("issued_at", Time, nullable=False),
    Column("expires_at", Time, nullable=False),
    Column("replaced_at", Time),  # NULL: the account's current handset
    Column("token_id", String(32)),  # api_tokens.id issued with it
)

presence_offers = Table(
    "presence_offers", metadata,
    Column("offer_id", String(32), primary_key=True),  # the node's, random hex
    Column("node_id", String(NODE_ID_LEN), nullable=False),
    Column("code_hash", String(64), nullable=False),  # tapcast.protocol.presence.code_hash
    Column("hello", Text, nullable=False),  # the node HELLO, hex
    Column("received", Time, nullable=False),
    Column("expires", Time, nullable=False),  # received + the offer's ttl (hub clock)
    Column("state", String(16), nullable=False),
    Column("user_id", BigInteger),  # who claimed it
    Column("handset_id", String(NODE_ID_LEN)),  # their handset when they claimed it
    Column("claimed_at", Time),
    Column("answer", Text),  # the handset's answer, hex (kept until relayed)
    Column("answered_at", Time),
    Column("reason", String(32)),  # the node's verdict
    Column("confirm", String(64)),  # the CONFIRM MAC, hex, when confirmed
    Column("done_at", Time),
    Index(None, "code_hash"),
    Index(None, "state"),
    Index(None, "expires"),
    CheckConstraint("state IN ('open', 'claimed', 'answered', 'relayed', 'confirmed', "
                    "'refused')", name="state"),
)
