"""The instance registry of Coordination.register/heartbeat, as each backend keeps it (read
here with each backend's own SQL: the Protocols have no reader of it yet)."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from bridge.state import State, open_state
from tests.conftest import wait_for

NOW = 1_700_000_000.0


def check_registry(state: State, rows: Any) -> None:
    """register/heartbeat as seen through `rows()`: (id, host, pid, started_at, heartbeat_at)."""
    me = state.coordination.instance_id
    state.coordination.heartbeat(NOW)  # not registered yet: the heartbeat registers it
    assert rows() == [(me, socket.gethostname(), os.getpid(), NOW, NOW)]
    state.coordination.heartbeat(NOW + 5)
    state.coordination.heartbeat(NOW + 3)  # a late beat never moves it back
    assert rows() == [(me, socket.gethostname(), os.getpid(), NOW, NOW + 5)]
    state.coordination.register(NOW + 10)  # again: the same row, its start kept
    assert rows() == [(me, socket.gethostname(), os.getpid(), NOW, NOW + 10)]


def test_sqlite_keeps_the_registry_in_its_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = open_state(str(path))
    try:
        with sqlite3.connect(path) as conn:

            def rows() -> list[tuple[Any, ...]]:
                return conn.execute("SELECT * FROM instances").fetchall()

            check_registry(state, rows)
    finally:
        state.close()


def test_postgresql_keeps_the_registry_in_its_table(postgresql_url: str) -> None:
    state = open_state(postgresql_url)
    try:
        with psycopg.connect(postgresql_url, autocommit=True) as conn:

            def rows() -> list[tuple[Any, ...]]:
                return conn.execute(
                    "SELECT id, host, pid, started_at, heartbeat_at FROM instances"
                ).fetchall()

            check_registry(state, rows)
    finally:
        state.close()


def test_a_postgresql_daemon_leaves_the_registry_when_its_state_closes(postgresql_url) -> None:
    daemon, other = open_state(postgresql_url), open_state(postgresql_url)
    try:
        daemon.coordination.hold_daemon()
        assert other.coordination.daemon_running()
        daemon.close()
        assert not other.coordination.daemon_running()
    finally:
        other.close()


def test_a_postgresql_daemon_beats_while_it_holds_the_state(postgresql_url, monkeypatch) -> None:
    import bridge.state.postgresql.coordination as coordination

    monkeypatch.setattr(coordination, "HEARTBEAT_INTERVAL", 0.05)  # not 5 s, in a test
    daemon = open_state(postgresql_url)
    try:
        with psycopg.connect(postgresql_url, autocommit=True) as conn:

            def beat() -> float:
                [(at,)] = conn.execute("SELECT heartbeat_at FROM instances").fetchall()
                return float(at)

            daemon.coordination.hold_daemon()
            first = beat()
            wait_for(lambda: beat() > first, timeout=5)
            daemon.coordination.release_daemon()
            assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)
    finally:
        daemon.close()
