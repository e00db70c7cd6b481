"""State files written by earlier releases: opened, migrated in place, nothing else touched."""

from __future__ import annotations

import sqlite3
import time

from bridge.state import open_state
from bridge.state.sqlite.schema import SCHEMA_VERSION

# The sources table as schema 3 had it (before poll leases).
SOURCES_V3 = """
CREATE TABLE sources (
    name TEXT PRIMARY KEY, etag TEXT, last_modified TEXT, body_hash TEXT, url TEXT, extra BLOB,
    baselined INTEGER NOT NULL DEFAULT 0, last_poll_at REAL, last_result TEXT, last_error TEXT,
    last_change_at REAL, next_poll_at REAL, failures INTEGER NOT NULL DEFAULT 0,
    failing_since REAL, alerted INTEGER NOT NULL DEFAULT 0
)
"""


def test_a_file_of_schema_2_gains_host_blocks_and_poll_leases(tmp_path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute(SOURCES_V3)
        conn.execute("INSERT INTO sources (name, etag, baselined) VALUES ('a', '\"v1\"', 1)")
        conn.execute("PRAGMA user_version = 2")
    state = open_state(str(path))
    try:
        assert state.snapshots.source_rows()["a"].fetch_state.etag == '"v1"'
        assert state.snapshots.host_blocks(0.0) == {}
        now = time.time()
        assert set(state.coordination.lease_polls(["a"], now, now + 60)) == {"a"}
    finally:
        state.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_file_of_schema_4_trades_deliveries_leased_for_deliveries_in_flight(tmp_path) -> None:
    path = tmp_path / "state.db"
    open_state(str(path)).close()
    with sqlite3.connect(path) as conn:  # as schema 4 left it
        conn.execute("DROP INDEX deliveries_in_flight")
        conn.execute(
            "CREATE INDEX deliveries_leased ON deliveries (webhook, source) "
            "WHERE status = 'pending' AND lease_until IS NOT NULL"
        )
        conn.execute("PRAGMA user_version = 4")
    open_state(str(path)).close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {name for (name,) in rows}
    assert "deliveries_in_flight" in indexes and "deliveries_leased" not in indexes


def test_a_file_of_schema_8_trades_poll_leases_for_poll_grants(tmp_path) -> None:
    path = tmp_path / "state.db"
    open_state(str(path)).close()
    with sqlite3.connect(path) as conn:  # as schema 8 left it, a lease of an older process in it
        conn.execute("DROP TABLE poll_grants")
        conn.execute(
            "CREATE TABLE poll_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "token INTEGER NOT NULL, until REAL NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO poll_leases VALUES ('a', 'old:1:0000', 7, ?)", (time.time() + 60,)
        )
        conn.execute("PRAGMA user_version = 8")
    state = open_state(str(path))
    try:
        now = time.time()
        assert set(state.coordination.lease_polls(["a"], now, now + 60)) == {"a"}
    finally:
        state.close()
    with sqlite3.connect(path) as conn:
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "poll_grants" in tables and "poll_leases" not in tables


def test_a_file_of_a_newer_schema_is_refused(tmp_path) -> None:
    import pytest

    from bridge.errors import StateError

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer than this bridge knows"):
        open_state(str(path))
