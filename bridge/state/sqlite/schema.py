"""The state file's schema, and the steps that bring an older file up to it."""

from __future__ import annotations

import sqlite3

# 2: the deliveries_pending index; 3: host_blocks; 4: poll leases on sources, deliveries_leased;
# 5: deliveries_in_flight replaces deliveries_leased (a delivery discarded in flight is in it);
# 6: poll leases move to a table of their own (poll_leases);
# 7: sources.item_model (the fingerprint of the items/key a snapshot was taken under);
#    instances (the registry of Coordination.register/heartbeat)
# 8: confirmations (the changes waiting for `confirm:`)
# 9: poll_grants replaces poll_leases (a row per wake-up's leases, not one per source)
SCHEMA_VERSION = 9

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    etag TEXT,
    last_modified TEXT,
    body_hash TEXT,
    url TEXT,
    extra BLOB,
    baselined INTEGER NOT NULL DEFAULT 0,
    last_poll_at REAL,
    last_result TEXT,
    last_error TEXT,
    last_change_at REAL,
    next_poll_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    failing_since REAL,
    alerted INTEGER NOT NULL DEFAULT 0,
    item_model TEXT
);
-- The sources being polled, a row per wake-up's grant of leases (bridge/state/sqlite/grants.py):
-- taking and ending them writes a row per wake-up, not a page of `sources` or a row per source.
CREATE TABLE IF NOT EXISTS poll_grants (
    token INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL,
    names TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,
    content BLOB NOT NULL,
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
-- Changes waiting for `confirm:`: the candidate content hash of an item ('-': removed) and how
-- many successful polls in a row saw it.
CREATE TABLE IF NOT EXISTS confirmations (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS polls (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    at REAL NOT NULL,
    result TEXT NOT NULL,
    duration REAL,
    error TEXT,
    events INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS polls_at ON polls (at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_source ON events (source, seq);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_seq INTEGER NOT NULL REFERENCES events (seq),
    webhook TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (webhook, status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (webhook, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_seq);
-- Deliveries in flight, for the per-source order check of every claim: a handful of rows.
-- Whatever their status: one discarded (dead) while its attempt is out still holds its source.
CREATE INDEX IF NOT EXISTS deliveries_in_flight ON deliveries (webhook, source)
    WHERE lease_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    at REAL NOT NULL,
    status INTEGER,
    error TEXT,
    duration REAL
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
CREATE INDEX IF NOT EXISTS attempts_at ON attempts (at);
CREATE TABLE IF NOT EXISTS host_blocks (
    host TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Columns added to tables of files made before them: (table, column, definition).
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (("sources", "item_model", "TEXT"),)

# Indexes and tables of older schemas that a newer one replaced. A poll_leases row is a lease of
# a process of an older bridge, which the upgrade stopped: nothing of it is kept.
DROPPED_INDEXES = ("deliveries_leased",)
DROPPED_TABLES = ("poll_leases",)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, inside the caller's write transaction.

    Tables and indexes are created if missing (every statement is IF NOT EXISTS), then the
    columns a file made before them lacks are added, and replaced indexes and tables dropped.
    """
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    for table, column, definition in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    for index in DROPPED_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    for table in DROPPED_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
