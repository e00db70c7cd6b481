"""The SQLite state file: opening it, its schema and migrations, and write transactions.

One connection, used from one thread (the event loop's). Writes that must not interleave with
another process (a second `bridge once` beside the daemon) use BEGIN IMMEDIATE. The queries are
in bridge/store.py (polling and delivering) and bridge/records.py (the commands, retention).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.errors import StateError

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_VERSION = 3  # 2: the deliveries_pending index; 3: host_blocks

# How long a write waits for another process's transaction (seconds). The daemon's transactions
# last milliseconds; a longer wait means something holds the file, and the user should hear of it.
busy_timeout = 5.0

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
    alerted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS items (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,
    content BLOB NOT NULL,
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
"""


class StateFile:
    """The SQLite state file: one connection, its schema kept current."""

    def __init__(self, path: Path | str):
        """Open (creating and migrating if needed) the state file; ":memory:" for a throwaway."""
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StateError(f"{self.path}: the directory {self.path.parent} does not exist")
        try:
            # Autocommit at the driver level: every transaction here is an explicit write().
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None)
            self.conn = conn
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = wal")
            # WAL with synchronous=NORMAL is durable against process crashes (kill -9), which is
            # the promise; only an OS crash can lose the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot use the state file: {exc}") from exc

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for the CLI's listings."""
        # Imported on first use: polling never needs it, and it costs `bridge once` ~60 ms.
        import sqlite_utils

        return sqlite_utils.Database(self.conn, execute_plugins=False)

    def _migrate(self) -> None:
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: state file schema {version} is newer than this bridge knows"
            )
        if version < SCHEMA_VERSION:
            with self.write():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so it never fails mid-way."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StateError(f"{self.path}: cannot write the state file: {exc}") from exc
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            conn.rollback()
            raise StateError(f"{self.path}: cannot write the state file: {exc}") from exc
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.rollback()
            raise StateError(f"{self.path}: cannot write the state file: {exc}") from exc

    def writable(self) -> bool:
        """Whether a write transaction can start right now (for /healthz); waits at most 1 s.

        On a connection of its own, so that /healthz can ask from a thread: a state file locked
        by another process must not stall the daemon's event loop for that second.
        """
        try:
            conn = sqlite3.connect(str(self.path), timeout=1.0, isolation_level=None)
        except sqlite3.Error:
            return False
        try:
            # Taking the write lock is the test; nothing is written, so the daemon's row cache
            # (which another connection's commit invalidates) stays valid.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap way to notice new deliveries."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])
