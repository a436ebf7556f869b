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

from sqlalchemy import (BigInteger, Column, Float, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, UniqueConstraint)

__all__ = ["metadata", "nodes", "streams", "events", "event_counts", "incidents",
           "quarantine", "BigId", "Time"]

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
)

streams = Table(
    "streams", metadata,
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Column("epoch", String(EPOCH_LEN), primary_key=True),
    Column("acked_seq", BigInteger, nullable=False, server_default="0"),  # all <= it: stored or lost
    Column("lost", BigInteger, nullable=False, server_default="0"),  # seqs the hub will never get
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
)

event_counts = Table(
    "event_counts", metadata,
    Column("node_id", String(NODE_ID_LEN), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("ok", BigInteger, nullable=False),  # how many had data.ok = true (auth verdicts)
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
