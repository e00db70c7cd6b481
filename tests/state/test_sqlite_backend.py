"""What only the SQLite backend does, or only its file shows: a file locked by another process,
SQLite's cap on a statement's variables, a row deleted behind the engine's back, an expired host
block, the history rows no Protocol lists. Raw SQL on the state file is allowed here (and in
test_sqlite_migrations.py), nowhere else in tests/."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bridge.model import Finished, NewEvent, PollCommit, SourceRow
from bridge.state import open_state
from tests.conftest import (
    SECRET,
    STDOUT,
    Origin,
    Receiver,
    async_wait_for,
    bridge_config,
    engine_for,
    free_port,
    get,
    http_source,
    run_cli,
    wait_for,
    webhook,
)

ENV = {"HOOK_SECRET": SECRET}


def hooked(origin: Origin, receiver: Receiver, http: Any = None, **options: Any) -> str:
    """A config of one source, `api` (the items of /items by id, polled hourly), sent to `hook`."""
    defaults = {"items": "@", "key": "id", "every": "1h", "jitter": "0s", "webhooks": ["hook"]}
    api = http_source("api", origin.url("/items"), **{**defaults, **options})
    hook = webhook(receiver.url(), SECRET, retry=["50ms", "50ms"], timeout="2s")
    return bridge_config(api, webhooks={"hook": hook}, http=http)


# --- a state file another process holds ------------------------------------------------------


@pytest.mark.slow
def test_locked_state_file_is_one_line(write_config, origin, receiver) -> None:
    origin.set("/items", [{"id": 1}])
    path = write_config(hooked(origin, receiver))
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    holder = sqlite3.connect(path.parent / "state.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run_cli("once", "-c", str(path), env={**ENV, "BRIDGE_BUSY_TIMEOUT": "0.2"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.code == 1 and "state.db" in result.stderr and "locked" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # holds the state file for 0.8 s
async def test_a_worker_survives_a_locked_state_file(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    path = write_config(hooked(origin, receiver, on_first_poll="emit"))
    async with engine_for(path, busy_timeout=0.2) as engine:
        await engine.poll("api")
        holder = sqlite3.connect(engine.state.location, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        engine.dispatcher.start()
        try:
            await asyncio.sleep(0.8)  # the worker's claims fail while the file is held
            assert receiver.received == []
            holder.execute("ROLLBACK")
            await async_wait_for(lambda: len(receiver.received) == 1, timeout=5)
        finally:
            holder.close()
            await engine.dispatcher.stop(grace=1)


@pytest.mark.slow
def test_healthz_is_503_while_the_state_file_cannot_be_written(write_config, origin, receiver):
    port = free_port()
    origin.set("/items", [{"id": 1}])
    path = write_config(hooked(origin, receiver, http={"listen": f"127.0.0.1:{port}"}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    health = f"http://127.0.0.1:{port}/healthz"
    try:
        wait_for(lambda: len(origin.hits("/items")) >= 1, timeout=15)  # no poll while locked
        wait_for(lambda: get(health)[0] == 200, timeout=15)
        # As root, chmod would not stop a write; another connection holding the write lock does.
        holder = sqlite3.connect(path.parent / "state.db", isolation_level=None, timeout=10)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with ThreadPoolExecutor(1) as pool:
                probe = pool.submit(get, health)
                time.sleep(0.2)
                # The probe waits in a thread: the daemon's event loop still answers meanwhile.
                metrics_at = time.monotonic()
                assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
                metrics_took = time.monotonic() - metrics_at
                status, text = probe.result()
            took = time.monotonic() - started
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert status == 503 and text.startswith("unhealthy: "), text
        assert 0.8 < took < 3.0  # the check gives up after about a second
        assert metrics_took < 0.5
        assert get(health) == (200, "ok\n")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# --- SQLite's own limits ----------------------------------------------------------------------


async def test_discard_and_replay_take_more_event_ids_than_one_statement(
    origin, receiver, write_config
) -> None:
    origin.set("/items", [{"id": i} for i in range(1200)])  # three parts of up to 500 ids
    path = write_config(hooked(origin, receiver, on_first_poll="emit"))
    async with engine_for(path) as engine:
        await engine.poll("api")  # 1,200 item.added, pending, nothing sent yet
        ids = [e["id"] for e in engine.state.admin.events(limit=2000)]
        # SQLite's own cap (32,766 variables) made small, so that 1,200 ids are over it.
        engine.state.database.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 600)
        assert len(ids) == 1200
        assert engine.state.admin.discard(time.time(), event_ids=ids[:1100]) == (1100, 0)
        counts = engine.state.admin.delivery_counts()["hook"]
        assert (counts["dead"], counts["pending"]) == (1100, 100)
        assert engine.state.admin.requeue(time.time(), event_ids=ids, dead=True) == 1100
        assert engine.state.admin.delivery_counts()["hook"]["pending"] == 1200
    assert receiver.received == []


# --- rows changed behind the engine's back --------------------------------------------------


def components(*pairs: tuple[int, str]) -> dict[str, object]:
    return {"components": [{"id": i, "status": s, "updated_at": "t0"} for i, s in pairs]}


async def test_unchanged_polls_write_their_times_and_a_lost_row_comes_back_whole(
    origin: Origin, write_config, monkeypatch
) -> None:
    monkeypatch.setattr(
        "bridge.polling.engine.ROWS_RECHECK", 3600.0
    )  # the engine keeps its cached row
    origin.set("/c", components((1, "ok")))
    api = http_source(
        "api", origin.url("/c"), every="1m", webhooks=["out"], items="components", key="id"
    )
    path = write_config(bridge_config(api, webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        engine.flush()
        first = engine.state.snapshots.source_row("api")
        await engine.poll("api", next_poll_at=first.last_poll_at + 60)  # a 304: times only
        engine.flush()
        touched = engine.state.snapshots.source_row("api")
        # another process removed the row (as a state file restored from a backup might)
        other = sqlite3.connect(path.parent / "state.db", isolation_level=None)
        other.execute("DELETE FROM sources WHERE name = 'api'")
        other.close()
        await engine.poll("api")
        engine.flush()
        rewritten = engine.state.snapshots.source_row("api")
    assert touched.last_poll_at > first.last_poll_at
    assert touched.next_poll_at == first.last_poll_at + 60
    assert touched.fetch_state == first.fetch_state and touched.baselined
    assert rewritten.baselined and rewritten.fetch_state.etag == first.fetch_state.etag
    assert rewritten.last_result == "unchanged"


@pytest.mark.slow
def test_a_429_keeps_the_next_once_off_the_host_until_it_said(write_config, origin) -> None:
    # cron runs `once` a minute apart: the host's Retry-After must outlive the process
    origin.set("/items", body=b"slow down", status=429, headers={"Retry-After": "3600"})
    path = write_config(bridge_config(http_source("api", origin.url("/items"))))
    first = run_cli("once", "-c", str(path), env=ENV)
    assert first.code == 1 and "HTTP 429" in first.stderr
    assert len(origin.hits("/items")) == 1

    second = run_cli("once", "-c", str(path), env=ENV)
    host = f"127.0.0.1:{origin.server.port}"
    assert second.code == 1 and f"rate limited by {host}: waiting until" in second.stderr
    assert len(origin.hits("/items")) == 1  # not asked again

    # once the wait is over (no Protocol ends a block early: the file is changed), it is polled
    with sqlite3.connect(path.parent / "state.db") as conn:
        assert conn.execute("SELECT host FROM host_blocks").fetchall() == [(host,)]
        conn.execute("UPDATE host_blocks SET until = 0")
    conn.close()
    origin.set("/items", [{"id": 1}])
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    assert len(origin.hits("/items")) == 2


# --- history no Protocol lists ----------------------------------------------------------------


def test_trim_deletes_old_polls_and_attempts(tmp_path: Path) -> None:
    # Admin.trim's polls and attempts, which no listing shows: retention must not keep them.
    now = time.time()
    old = now - 40 * 86400
    state = open_state(str(tmp_path / "state.db"))
    try:
        aged = NewEvent("evt_old", "a", "item.added", "1", old, b"{}", ("w",))
        row = SourceRow("a", baselined=True, last_poll_at=old)
        state.snapshots.commit_polls([PollCommit(row, "changed", 0.1, events=[aged])])
        [d] = state.outbox.claim_due("w", now, 1, 30.0)
        state.outbox.finish_attempts([Finished(d.id, "delivered", old, 0.1, 204, None)])
        recent = SourceRow("a", baselined=True, last_poll_at=now)
        state.snapshots.commit_polls([PollCommit(recent, "unchanged", 0.1)])
        state.admin.trim(now - 30 * 86400)
    finally:
        state.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT at FROM polls").fetchall() == [(now,)]
        assert conn.execute("SELECT count(*) FROM attempts").fetchone() == (0,)
    conn.close()


def test_a_lease_of_a_process_that_is_gone_is_free_at_once(tmp_path: Path) -> None:
    # Its `until` is far off, but the pid that held it has exited: a state file's processes all
    # run on its machine, so the lease is taken over at once, under the wake-up's one token.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    state = open_state(str(tmp_path / "state.db"))
    try:
        now = time.time()
        with sqlite3.connect(tmp_path / "state.db") as conn:
            conn.execute(
                "INSERT INTO poll_grants (token, owner, until, names) VALUES (7, ?, ?, ?)",
                (f"{os.uname().nodename}:{gone}:0000", now + 3600, '["held", "other"]'),
            )
        granted = state.coordination.lease_polls(["free", "held"], now, now + 60)
        assert granted.keys() == {"free", "held"}
        assert granted["held"] == granted["free"] != 7
        with sqlite3.connect(tmp_path / "state.db") as conn:  # the gone grant keeps the rest
            left = conn.execute("SELECT names FROM poll_grants WHERE token = 7").fetchall()
        assert left == [('["other"]',)]
    finally:
        state.close()
