"""Event stream: nodes, streams, events, event counts and totals, incidents,
quarantine, and the indexes the operator views page and filter on.

Also adopts a hub database written before migrations (SQLite, ``PRAGMA user_version``
2, the issue-6 schema made by sqlite-utils): its tables are kept, ``events`` is rebuilt
with the explicit ``pos`` column (its old rowids, so storage order and API cursors stay
valid) and the indexes are renamed. A version-1 file (before outbox epochs) cannot be
adopted: hub.migrate refuses it before this runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Float(precision=53)


def _legacy_sqlite() -> bool:
    bind = op.get_bind()
    return bind.dialect.name == "sqlite" and sa.inspect(bind).has_table("events")


def upgrade() -> None:
    if _legacy_sqlite():
        _adopt_legacy()
        return
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16)),
        sa.Column("status_at", Time),
        sa.Column("last_seen", Time),
        sa.Column("state", sa.Text),
        sa.Column("zone", sa.String(64)),
        sa.Column("version", sa.String(64)),
        sa.Column("epoch", sa.String(64)),
        sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("node_id", name="pk_nodes"),
    )
    _view_indexes()
    op.create_table(
        "streams",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lost", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("high", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("first_seen", Time, nullable=False),
        sa.PrimaryKeyConstraint("node_id", "epoch", name="pk_streams"),
    )
    _create_events("events")
    _event_indexes()
    op.create_table(
        "event_counts",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("ok", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("node_id", "kind", name="pk_event_counts"),
    )
    _create_kind_totals()
    op.create_table(
        "incidents",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.String(64)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
    )
    op.create_index("ix_incidents_node_id_id", "incidents", ["node_id", "id"])
    op.create_table(
        "quarantine",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.String(64)),
        sa.Column("first", sa.BigInteger),
        sa.Column("last", sa.BigInteger),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("received", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
        sa.UniqueConstraint("digest", name="uq_quarantine_digest"),
    )


def _view_indexes() -> None:
    op.create_index("ix_nodes_zone_node_id", "nodes", ["zone", "node_id"])
    op.create_index("ix_nodes_version_node_id", "nodes", ["version", "node_id"])
    op.create_index("ix_nodes_last_seen", "nodes", ["last_seen"])


def _event_indexes() -> None:
    op.create_index("ix_events_node_id_pos", "events", ["node_id", "pos"])
    op.create_index("ix_events_kind_pos", "events", ["kind", "pos"])
    op.create_index("ix_events_received", "events", ["received"])


def _create_kind_totals() -> None:
    op.create_table(
        "kind_totals",
        sa.Column("shard", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("ok", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("shard", "kind", name="pk_kind_totals"),
    )


def _create_events(name: str) -> None:
    op.create_table(
        name,
        sa.Column("pos", BigId, autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ts", Time, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("received", Time, nullable=False),
        # Named as in hub.schema even while built under a temporary name (SQLite keeps
        # a constraint's name across a rename, and these names are only labels there).
        sa.PrimaryKeyConstraint("pos", name="pk_events"),
        sa.UniqueConstraint("node_id", "epoch", "seq", name="uq_events_node_id_epoch_seq"),
    )


def _adopt_legacy() -> None:
    """The issue-6 SQLite file: same tables but for ``events`` (implicit rowid) and the
    index names. Rebuild ``events`` keeping each row's rowid as its ``pos``."""
    op.execute("DROP INDEX IF EXISTS events_by_node")
    _create_events("events_adopted")
    op.execute("INSERT INTO events_adopted (pos, node_id, epoch, seq, id, kind, ts, data, "
               "received) SELECT rowid, node_id, epoch, seq, id, kind, ts, data, received "
               "FROM events")
    op.drop_table("events")
    op.rename_table("events_adopted", "events")
    _event_indexes()
    _view_indexes()
    op.create_index("ix_incidents_node_id_id", "incidents", ["node_id", "id"])
    # streams.high: the highest seq stored per stream
    with op.batch_alter_table("streams") as batch:
        batch.add_column(sa.Column("high", sa.BigInteger, nullable=False, server_default="0"))
    op.execute("UPDATE streams SET high = coalesce((SELECT max(seq) FROM events AS e WHERE "
               "e.node_id = streams.node_id AND e.epoch = streams.epoch), 0)")
    # The fleet's totals, from the per-node counts, all in shard 0 (any shard will do:
    # readers sum the shards).
    _create_kind_totals()
    op.execute("INSERT INTO kind_totals (shard, kind, n, ok) "
               "SELECT 0, kind, sum(n), sum(ok) FROM event_counts GROUP BY kind")
    op.execute("PRAGMA user_version = 0")  # from now on Alembic's version table says it


def downgrade() -> None:
    for table in ("quarantine", "incidents", "kind_totals", "event_counts", "events",
                  "streams", "nodes"):
        op.drop_table(table)
