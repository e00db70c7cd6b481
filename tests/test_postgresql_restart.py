"""A PostgreSQL restart or outage under a running state (issue 16, SPEC §9).

The state: the pool connects again by itself; a connection the restart ended is not handed out;
while the server is away a read or write fails at once (no wait for the pool) with a one-line
StateError without the password, and the write's failure is the state's problem until a write
succeeds again. A real `bridge run`: it survives (no exit, no traceback), /healthz answers 503
while the server is down and 200 after, nothing committed is lost, a poll that could not be
written is polled again, and what changed at the origin meanwhile is delivered.

The server is the module's own (tests/cluster.py), never the shared one on 127.0.0.1:5432.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bridge.errors import StateError
from bridge.state import State, open_state
from tests.cluster import Cluster, private_cluster
from tests.conftest import (
    SECRET,
    Receiver,
    bridge_config,
    free_port,
    get,
    http_source,
    wait_for,
    webhook,
)
from tests.fleet import Run, stop_all
from tests.tracking import TrackingOrigin

pytestmark = pytest.mark.slow  # a server of its own (initdb), and `bridge run` processes

PASSWORD = "pw-never-shown"  # trust auth: the server ignores it, and nothing may print it


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[Cluster]:
    with private_cluster() as cluster:  # one initdb for the module's tests
        yield cluster


@pytest.fixture
def postgresql_cluster(module_cluster: Cluster) -> Cluster:
    """The module's server, running when the test starts (a test may stop and restart it)."""
    if not module_cluster.running():
        module_cluster.start()
    return module_cluster


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def writes(state: State) -> bool:
    """Whether a write goes through now."""
    try:
        state.coordination.heartbeat(time.time())
    except StateError:
        return False
    return True


def test_after_a_restart_the_next_read_and_write_succeed(postgresql_cluster: Cluster) -> None:
    state = open_state(postgresql_cluster.new_database())
    try:
        state.coordination.register(time.time())
        postgresql_cluster.restart()  # ends the session of every connection the pool holds
        state.coordination.heartbeat(time.time())  # not the dead connection: a new one
        assert state.snapshots.source_rows() == {}
        assert state.problem() is None
    finally:
        state.close()


def test_while_the_server_is_away_each_write_fails_at_once_and_is_the_problem(
    postgresql_cluster: Cluster,
) -> None:
    state = open_state(with_password(postgresql_cluster.new_database()))
    try:
        state.coordination.register(time.time())
        postgresql_cluster.stop()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StateError) as caught:
                state.coordination.heartbeat(time.time())
            # The daemon's event loop makes these: a wait for the pool would stall it.
            assert time.monotonic() - started < 1.0
            message = str(caught.value)
            assert message.startswith(
                f"postgresql://postgres:***@127.0.0.1:{postgresql_cluster.port}/"
            )
            assert PASSWORD not in message and "\n" not in message
        assert state.problem() == message
        with pytest.raises(StateError):
            state.snapshots.source_rows()
        assert not state.writable()

        postgresql_cluster.start()
        wait_for(lambda: writes(state), timeout=10, interval=0.1)
        assert state.problem() is None
        assert state.writable()
    finally:
        state.close()


def test_a_daemon_survives_a_restart_and_delivers_what_changed_meanwhile(
    tmp_path: Path, postgresql_cluster: Cluster
) -> None:
    """Two sources: `steady` (answered at once) and `slow` (each request held 1 s, so that a poll
    is in flight when the server stops: its commit must fail, and it must be polled again)."""
    receiver = Receiver()
    receiver.server.start()
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    runs: list[Run] = []
    with TrackingOrigin() as origin:
        origin.serve("/steady")
        origin.serve("/slow", delay=1.0)
        options = {"items": "@", "key": "id", "every": "1s", "jitter": "0s", "timeout": "5s"}
        sources = [
            http_source(name, origin.url(f"/{name}"), webhooks=["hook"], **options)
            for name in ("steady", "slow")
        ]
        hooks = {"hook": webhook(receiver.url(), "${HOOK_SECRET}", retry=["100ms"] * 20)}
        url = with_password(postgresql_cluster.new_database()).replace(PASSWORD, "${PGPW}")
        path = tmp_path / "bridge.yaml"
        path.write_text(
            bridge_config(*sources, state=url, http={"listen": f"127.0.0.1:{port}"}, webhooks=hooks)
        )
        env = {"PGPW": PASSWORD, "HOOK_SECRET": SECRET}
        try:
            run = Run(path, "daemon", tmp_path, env)
            runs.append(run)

            def versions() -> dict[str, set[int]]:
                got: dict[str, set[int]] = {"steady": set(), "slow": set()}
                for event in receiver.events():
                    got[event["data"]["source"]].add(event["data"]["after"]["v"])
                return got

            # Before: both baselined, a change of each delivered.
            wait_for(lambda: len(origin.record()) >= 4 and get(health)[0] == 200, timeout=20)
            origin.set_version("/steady", 1)
            origin.set_version("/slow", 1)
            wait_for(lambda: versions() == {"steady": {1}, "slow": {1}}, timeout=15)

            # The server stops while a poll of `slow` that sees version 2 is in flight.
            origin.set_version("/slow", 2)
            wait_for(lambda: origin.busy("/slow"), timeout=10, interval=0.01)
            stopped = time.monotonic()
            postgresql_cluster.stop()
            wait_for(lambda: get(health, timeout=5)[0] == 503, timeout=5, interval=0.1)
            seen_503 = time.monotonic() - stopped
            origin.set_version("/steady", 2)  # changed while the server is away
            answers = []
            while time.monotonic() - stopped < 3.0:
                answers.append(get(health, timeout=5)[0])
                time.sleep(0.2)
            assert set(answers) == {503}, answers
            assert run.alive(), run.log()

            postgresql_cluster.start()
            started = time.monotonic()
            wait_for(lambda: get(health, timeout=5)[0] == 200, timeout=20, interval=0.1)
            healthy_after = time.monotonic() - started
            wait_for(lambda: versions() == {"steady": {1, 2}, "slow": {1, 2}}, timeout=20)
            delivered_after = time.monotonic() - started
            print(
                f"503 {seen_503:.2f}s after the stop; 200 {healthy_after:.2f}s and both changes "
                f"delivered {delivered_after:.2f}s after the start"
            )
            assert run.alive(), run.log()

            # Nothing committed was lost: every event stored went out.
            state = open_state(url.replace("${PGPW}", PASSWORD))
            try:
                stored = {e["id"] for e in state.admin.events(limit=1000)}
                counts = state.admin.delivery_counts()
            finally:
                state.close()
            received = {r.headers["webhook-id"] for r in receiver.received}
            assert stored and stored == received
            assert counts["hook"]["pending"] == 0 and counts["hook"]["dead"] == 0
            assert run.stop() == 0
        finally:
            stop_all(runs)
            receiver.server.stop()
    log = run.log()
    assert "Traceback" not in log and PASSWORD not in log, log
    assert "poll slow could not be recorded" in log, log  # the poll in flight at the stop
    assert "writes succeed again" in log, log


def test_a_daemon_survives_its_connections_cut_mid_run(
    tmp_path: Path, postgresql_cluster: Cluster
) -> None:
    """The server ends the daemon's connections (pg_terminate_backend, as a proxy or a failover
    does): first while a commit waits inside its transaction (a row lock the test holds), then
    six times in 3 s while the sources change at every poll. The daemon stays up; the poll whose
    commit was cut is polled again; whatever it committed goes out; the last version of each
    source reaches the receiver."""
    receiver = Receiver()
    receiver.server.start()
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    runs: list[Run] = []
    names = ["a", "b", "c"]
    with TrackingOrigin() as origin:
        for name in names:
            origin.serve(f"/{name}")
        options = {"items": "@", "key": "id", "every": "1s", "jitter": "0s", "timeout": "5s"}
        sources = [
            http_source(name, origin.url(f"/{name}"), webhooks=["hook"], **options)
            for name in names
        ]
        hooks = {"hook": webhook(receiver.url(), "${HOOK_SECRET}", retry=["100ms"] * 20)}
        url = postgresql_cluster.new_database()
        path = tmp_path / "bridge.yaml"
        path.write_text(
            bridge_config(*sources, state=url, http={"listen": f"127.0.0.1:{port}"}, webhooks=hooks)
        )

        def last_versions() -> dict[str, int]:
            got = dict.fromkeys(names, 0)
            for event in receiver.events():
                source = event["data"]["source"]
                got[source] = max(got[source], event["data"]["after"]["v"])
            return got

        try:
            run = Run(path, "daemon", tmp_path, {"HOOK_SECRET": SECRET})
            runs.append(run)
            wait_for(lambda: len(origin.record()) >= 3 and get(health)[0] == 200, timeout=20)
            with psycopg.connect(url, autocommit=True) as admin:
                others = (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                # 1. A commit cut while it waits in its transaction: a's stored items are
                # locked here (not its row, which would refuse the poll its lease).
                admin.execute("BEGIN")
                admin.execute("SELECT 1 FROM items WHERE source = 'a' FOR UPDATE")
                origin.set_version("/a", 1)
                wait_for(
                    lambda: (
                        admin.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND wait_event_type = 'Lock'"
                        ).fetchone()
                        == (1,)
                    ),
                    timeout=10,
                    interval=0.05,
                )
                admin.execute(others)
                admin.execute("ROLLBACK")
                wait_for(lambda: last_versions()["a"] == 1, timeout=20)
                # 2. Cut after cut while every source changes.
                cut = 0
                for version in range(2, 8):
                    for name in names:
                        origin.set_version(f"/{name}", version)
                    time.sleep(0.5)
                    cut += len(admin.execute(others).fetchall())
            assert cut >= 6  # the pool's connections and the listener's, each time

            wait_for(lambda: last_versions() == dict.fromkeys(names, 7), timeout=30)
            wait_for(lambda: get(health)[0] == 200, timeout=20)
            assert run.alive(), run.log()
            state = open_state(url)
            try:
                stored = {e["id"] for e in state.admin.events(limit=1000)}
                wait_for(lambda: state.admin.delivery_counts()["hook"]["pending"] == 0, timeout=20)
                counts = state.admin.delivery_counts()
            finally:
                state.close()
            received = {r.headers["webhook-id"] for r in receiver.received}
            assert stored and stored <= received  # every committed event went out
            assert counts["hook"]["dead"] == 0
            assert run.stop() == 0
        finally:
            stop_all(runs)
            receiver.server.stop()
    log = run.log()
    assert "Traceback" not in log, log
    assert "poll a could not be recorded" in log, log  # the commit that was cut
