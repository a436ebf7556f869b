-- The hub database schema version 2 (issue 6, sqlite-utils, before migrations),
-- as hub/db.py created it: tests/test_hub_migrations.py converts a file of it.
CREATE TABLE IF NOT EXISTS nodes (
    node_id    TEXT PRIMARY KEY,
    status     TEXT,              -- last reported 'online' / 'offline' (retained + will)
    status_at  REAL,
    last_seen  REAL,              -- unix time anything live was last heard from the node
    state      TEXT,              -- last NodeState as JSON
    zone       TEXT,
    version    TEXT,
    epoch      TEXT,              -- the node's current outbox epoch (newest stream)
    acked_seq  INTEGER NOT NULL DEFAULT 0   -- of that epoch
);
CREATE TABLE IF NOT EXISTS streams (
    node_id    TEXT NOT NULL,
    epoch      TEXT NOT NULL,
    acked_seq  INTEGER NOT NULL DEFAULT 0,  -- every seq <= it is stored or known lost
    lost       INTEGER NOT NULL DEFAULT 0,  -- seqs the hub will never get
    first_seen REAL NOT NULL,
    PRIMARY KEY (node_id, epoch)
);
CREATE TABLE IF NOT EXISTS events (
    node_id  TEXT NOT NULL,
    epoch    TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    id       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    ts       REAL NOT NULL,
    data     TEXT NOT NULL,       -- JSON object
    received REAL NOT NULL,
    UNIQUE (node_id, epoch, seq)
);
CREATE INDEX IF NOT EXISTS events_by_node ON events (node_id);
CREATE TABLE IF NOT EXISTS event_counts (
    node_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    n       INTEGER NOT NULL,
    ok      INTEGER NOT NULL,     -- how many had data.ok = true (auth verdicts)
    PRIMARY KEY (node_id, kind)
);
CREATE TABLE IF NOT EXISTS incidents (
    id       INTEGER PRIMARY KEY,
    node_id  TEXT NOT NULL,
    epoch    TEXT,
    kind     TEXT NOT NULL,       -- lost, conflict, quarantined, new_epoch
    count    INTEGER NOT NULL,    -- events concerned
    detail   TEXT NOT NULL,
    at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id       INTEGER PRIMARY KEY,
    node_id  TEXT NOT NULL,
    epoch    TEXT,
    first    INTEGER,
    last     INTEGER,
    reason   TEXT NOT NULL,
    digest   TEXT NOT NULL UNIQUE,  -- sha256 of the payload: a re-send is kept once
    payload  BLOB NOT NULL,         -- verbatim, as it came off the broker
    received REAL NOT NULL
);
