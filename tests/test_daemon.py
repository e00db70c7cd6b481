"""`bridge run` as a process: reload, graceful stop, isolation, bad state files, and kill -9."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from standardwebhooks import Webhook

from tests.conftest import SECRET, Origin, Receiver, run_cli, wait_for

ENV = {**os.environ, "HOOK_SECRET": SECRET}

HEAD = """
state: state.db
grace: {grace}
webhooks:
  hook:
    url: {hook}
    secret: ${{HOOK_SECRET}}
    retry: [100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms]
    concurrency: 2
    timeout: 2s
sources:
"""

SOURCE = """
  - name: {name}
    kind: http
    url: {url}
    items: "@"
    key: id
    every: {every}
    jitter: 0s
    timeout: 5s
    webhooks: [hook]
"""


def config(receiver: Receiver, sources: list[tuple[str, str]], every: str = "1s", grace="10s"):
    text = HEAD.format(hook=receiver.url(), grace=grace)
    return text + "".join(SOURCE.format(name=n, url=u, every=every) for n, u in sources)


def start(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_sighup_reload_adds_removes_and_refuses_bad_config(
    write_config, origin: Origin, receiver: Receiver
) -> None:
    origin.set("/a", [{"id": 1}])
    origin.set("/b", [{"id": 1}])
    path = write_config(config(receiver, [("a", origin.url("/a"))]))
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        path.write_text(config(receiver, [("b", origin.url("/b"))]))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(origin.hits("/b")) >= 2, timeout=15)
        hits_a = len(origin.hits("/a"))
        time.sleep(1.5)
        assert len(origin.hits("/a")) == hits_a  # removed: no longer polled

        path.write_text("sources: [\n")  # broken YAML: refused, the running config stays
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        origin.set("/b", [{"id": 1}, {"id": 2}])
        wait_for(lambda: len(receiver.received) >= 1, timeout=15)
        assert proc.poll() is None
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "reload refused" in err and "bridge.yaml:1" in err
    assert receiver.events()[0]["data"]["source"] == "b"


def test_sigterm_lets_an_inflight_delivery_finish(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    receiver.delay = 1.5
    path = write_config(config(receiver, [("a", origin.url("/a"))]))
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        origin.set("/a", [{"id": 1}, {"id": 2}])
        wait_for(lambda: receiver.in_flight == 1, timeout=15)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert len(receiver.received) == 1
    status = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    assert status["webhooks"] == [
        {"name": "hook", "configured": True, "pending": 0, "delivered": 1, "dead": 0}
    ]


def test_a_second_signal_exits_at_once_and_loses_nothing(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    receiver.delay = 4
    path = write_config(config(receiver, [("a", origin.url("/a"))], grace="20s"))
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        origin.set("/a", [{"id": 1}, {"id": 2}])
        wait_for(lambda: receiver.in_flight == 1, timeout=15)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        code, _ = stop(proc)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    # The interrupted delivery is still queued: it goes out once its lease runs out.
    status = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    assert status["webhooks"][0]["pending"] == 1


def test_a_webhook_taken_out_of_the_config_keeps_its_deliveries_and_says_so(
    write_config, origin, receiver
) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(config(receiver, [("a", origin.url("/a"))]).replace("[100ms,", "[1s,"))
    with_hook = path.read_text()
    assert run_cli("once", "-c", str(path), env=ENV).code == 0  # the baseline
    origin.set("/a", [{"id": 1}, {"id": 2}])
    receiver.answer(500)
    assert run_cli("once", "-c", str(path), env=ENV).code == 0  # one attempt, refused
    assert len(receiver.received) == 1

    # The webhook is renamed: "hook" is gone from the config, its delivery is still waiting.
    path.write_text(with_hook.replace("  hook:", "  other:").replace("[hook]", "[other]"))
    status = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    assert status["webhooks"] == [
        {"name": "other", "configured": True, "pending": 0, "delivered": 0, "dead": 0},
        {"name": "hook", "configured": False, "pending": 1, "delivered": 0, "dead": 0},
    ]
    table = run_cli("status", "-c", str(path), env=ENV).stdout
    assert "hook (not in the config)" in table

    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 4, timeout=15)  # running, past the retry
        assert len(receiver.received) == 1  # nothing sends a removed webhook's deliveries
        path.write_text(with_hook)  # back in the config: its queue goes out
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(receiver.received) == 2, timeout=15)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert (
        "webhook hook is not in the config; deliveries pending for it: 1 (kept, they go out if "
        "it is added back; `bridge discard --webhook hook` gives up on them)" in err
    )
    assert [e["data"]["key"] for e in receiver.events()] == ["2", "2"]


def test_a_hung_source_does_not_delay_others(write_config, origin, receiver) -> None:
    origin.set("/slow", [{"id": 1}], delay=4)
    origin.set("/fast", [{"id": 1}])
    path = write_config(
        config(receiver, [("slow", origin.url("/slow")), ("fast", origin.url("/fast"))])
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/slow")) >= 1, timeout=15)
        seen = len(origin.hits("/fast"))
        wait_for(lambda: len(origin.hits("/fast")) >= seen + 2, timeout=3.5)
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_corrupt_state_file_is_one_line_exit_1(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(config(receiver, [("a", origin.url("/a"))]))
    state = path.parent / "state.db"
    state.write_bytes(b"this is not a database" * 100)
    for command in (["once"], ["status"], ["run"]):
        result = run_cli(*command, "-c", str(path), env=ENV)
        assert result.code == 1, command
        assert str(state) in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_state_directory_is_one_line(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    text = config(receiver, [("a", origin.url("/a"))]).replace(
        "state: state.db", "state: nowhere/state.db"
    )
    result = run_cli("once", "-c", str(write_config(text)), env=ENV)
    assert result.code == 1 and "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_locked_state_file_is_one_line(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(config(receiver, [("a", origin.url("/a"))]))
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


def test_kill_9_loses_no_change(write_config, origin: Origin, receiver: Receiver) -> None:
    """Kill the daemon at random moments while the origin changes and deliveries are slow."""
    rng = random.Random(7)
    receiver.delay = 0.15
    names = [f"s{i}" for i in range(3)]
    versions = {n: {k: 0 for k in range(4)} for n in names}

    def publish(name: str) -> None:
        origin.set(f"/{name}", [{"id": k, "v": v} for k, v in versions[name].items()])

    for n in names:
        publish(n)
    path = write_config(config(receiver, [(n, origin.url(f"/{n}")) for n in names], every="300ms"))
    kills = 0
    for _ in range(8):
        proc = start(path)
        deadline = time.monotonic() + rng.uniform(0.8, 2.0)
        while time.monotonic() < deadline:
            name = rng.choice(names)
            versions[name][rng.randrange(4)] += 1
            publish(name)
            time.sleep(rng.uniform(0.05, 0.3))
        proc.kill()
        proc.communicate(timeout=10)
        kills += 1

    # A last clean run: everything the origin now says is detected and every event delivered.
    receiver.delay = 0
    proc = start(path)
    try:
        db = path.parent / "state.db"

        def settled() -> bool:
            with sqlite3.connect(db) as conn:
                (pending,) = conn.execute(
                    "SELECT count(*) FROM deliveries WHERE status != 'delivered'"
                ).fetchone()
                rows = conn.execute("SELECT source, key, content FROM items").fetchall()
            stored = {(s, k): orjson.loads(c)["v"] for s, k, c in rows}
            wanted = {(n, str(k)): v for n in names for k, v in versions[n].items()}
            return pending == 0 and stored == wanted

        wait_for(settled, timeout=40, interval=0.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err

    with sqlite3.connect(path.parent / "state.db") as conn:
        event_ids = {r[0] for r in conn.execute("SELECT id FROM events")}
    received = [r.headers["webhook-id"] for r in receiver.received]
    for r in receiver.received:
        Webhook(SECRET).verify(r.body, r.headers)
    assert event_ids and set(received) == event_ids  # every committed change went out
    duplicates = len(received) - len(set(received))
    assert duplicates <= kills * 2  # only what was in flight at a kill (concurrency 2)
    # The receiver can rebuild the origin's final state from the latest `after` of each key.
    latest: dict[tuple[str, str], int] = {}
    for e in sorted(receiver.events(), key=lambda e: e["timestamp"]):
        latest[(e["data"]["source"], e["data"]["key"])] = e["data"]["after"]["v"]
    changed = {(n, str(k)): v for n in names for k, v in versions[n].items() if v > 0}
    assert {k: latest[k] for k in changed} == changed


def test_once_beside_the_daemon_leaves_delivering_to_it(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(config(receiver, [("a", origin.url("/a"))], every="1h"))
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        origin.set("/a", [{"id": 1}, {"id": 2}])
        result = run_cli("once", "-c", str(path), env=ENV)
        assert result.code == 0, result.stderr
        assert "a `bridge run` is using this state file" in result.stderr
        # The daemon notices the new delivery in the shared state file and sends it, once.
        wait_for(lambda: len(receiver.received) == 1, timeout=10)
        time.sleep(1)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert len(receiver.received) == 1 and receiver.events()[0]["data"]["key"] == "2"


def test_retention_trims_old_history_but_keeps_pending(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(config(receiver, [("a", origin.url("/a"))], every="1h"))
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    db = path.parent / "state.db"
    old = time.time() - 40 * 86400
    with sqlite3.connect(db) as conn:
        for i, status in enumerate(["delivered", "dead", "pending"]):
            conn.execute(
                "INSERT INTO events (id, source, type, key, created_at, body) "
                "VALUES (?, 'a', 'item.added', ?, ?, '{}')",
                (f"evt_old{i}", str(i), old),
            )
            conn.execute(
                "INSERT INTO deliveries (event_seq, webhook, source, status, attempts, "
                "next_attempt_at, created_at, updated_at) VALUES ((SELECT seq FROM events "
                "WHERE id = ?), 'gone', 'a', ?, 1, ?, ?, ?)",
                (f"evt_old{i}", status, old, old, old),
            )
            conn.execute(
                "INSERT INTO polls (source, at, result) VALUES ('a', ?, 'changed')", (old,)
            )
    proc = start(path)
    try:

        def trimmed() -> bool:
            with sqlite3.connect(db) as conn:
                return [r[0] for r in conn.execute("SELECT id FROM events")] == ["evt_old2"]

        wait_for(trimmed, timeout=15, interval=0.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM deliveries").fetchall() == [("pending",)]
        assert conn.execute("SELECT count(*) FROM polls WHERE at < ?", (old + 1,)).fetchone() == (
            0,
        )


def test_read_only_state_file_is_one_line(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(config(receiver, [("a", origin.url("/a"))]))
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    state = path.parent / "state.db"
    # As root, permission bits do not stop writes; the immutable attribute does.
    locked = subprocess.run(["chattr", "+i", str(state)], capture_output=True)
    if locked.returncode != 0:
        pytest.skip(f"cannot make the file immutable here: {locked.stderr.decode().strip()}")
    try:
        origin.set("/a", [{"id": 1}, {"id": 2}])
        result = run_cli("once", "-c", str(path), env=ENV)
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert result.code == 1
    assert str(state) in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_http_listen_port_in_use_is_one_line(write_config, origin, receiver) -> None:
    import socket

    origin.set("/a", [{"id": 1}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = config(receiver, [("a", origin.url("/a"))]).replace(
            "state: state.db", f"state: state.db\nhttp:\n  listen: 127.0.0.1:{port}"
        )
        result = run_cli("run", "-c", str(write_config(text)), env=ENV, timeout=30)
    assert result.code == 1, result.stderr
    assert f"http.listen 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_sighup_applies_changed_options_and_keeps_state(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    origin.set("/a2", [{"id": 1}, {"id": 2}])
    path = write_config(config(receiver, [("a", origin.url("/a"))]))
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        path.write_text(config(receiver, [("a", origin.url("/a2"))]))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(receiver.received) >= 1, timeout=15)
        time.sleep(1.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    # The snapshot survived the reload: only the item new at the new URL is an event.
    assert [(e["type"], e["data"]["key"]) for e in receiver.events()] == [("item.added", "2")]
