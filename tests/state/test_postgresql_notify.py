"""Instances on one PostgreSQL state hear of each other's new deliveries (LISTEN/NOTIFY through
State.watch_deliveries), and `bridge status` lists the live instances (issue 16)."""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from bridge.config import WebhookSpec
from bridge.delivery.dispatcher import Dispatcher
from bridge.http import HttpClient
from bridge.state import State, open_state
from tests.conftest import async_wait_for, bridge_config, http_source, run_cli, webhook
from tests.state.test_contract import enqueue, event, poll

Heard = queue.Queue[set[str] | None]


@pytest.fixture
def pair(postgresql_url: str) -> Iterator[tuple[State, State]]:
    """Two states on one schema: two instances, as far as the server can tell."""
    first, second = open_state(postgresql_url), open_state(postgresql_url)
    yield first, second
    second.close()
    first.close()


def listening(state: State) -> Heard:
    """What `state` hears, once it listens (its first wake, None, says so)."""
    heard: Heard = queue.Queue()
    state.watch_deliveries(heard.put)
    assert heard.get(timeout=10) is None
    return heard


def next_wake(heard: Heard, within: float) -> tuple[set[str] | None, float]:
    """The next wake heard and how long it took (queue.Empty if none within `within` s)."""
    started = time.monotonic()
    names = heard.get(timeout=within)
    return names, time.monotonic() - started


def quiet(heard: Heard, for_seconds: float = 0.3) -> bool:
    """Whether nothing more is heard for a moment."""
    try:
        heard.get(timeout=for_seconds)
    except queue.Empty:
        return True
    return False


def test_a_poll_committed_by_one_state_wakes_the_listener_of_another(pair) -> None:
    listener, writer = pair
    heard = listening(listener)
    enqueue(writer, "s", webhooks=("hook", "other"))
    names, took = next_wake(heard, within=1.0)
    assert names == {"hook", "other"} and took < 1.0
    assert quiet(heard)  # one notification per transaction


def test_a_replay_and_a_delivery_added_to_a_webhook_wake_listeners(pair) -> None:
    listener, writer = pair
    [eid] = enqueue(writer, "s", webhooks=("hook",))
    heard = listening(listener)
    assert writer.admin.add_deliveries(eid, ["late", "hook"], time.time()) == 1
    assert next_wake(heard, within=1.0)[0] == {"late"}
    assert writer.admin.discard(time.time(), event_ids=[eid]) == (2, 0)
    assert quiet(heard)  # discarding queues nothing
    assert writer.admin.requeue(time.time(), event_ids=[eid]) == 2
    assert next_wake(heard, within=1.0)[0] == {"hook", "late"}


@pytest.mark.slow  # waits out a quiet moment
def test_writes_that_queue_nothing_wake_nobody(pair) -> None:
    listener, writer = pair
    heard = listening(listener)
    assert writer.snapshots.commit_polls([poll("s")]) == set()  # a change with no event
    assert writer.admin.requeue(time.time(), event_ids=["evt_missing"]) == 0
    # A poll fenced out by a lease it no longer holds writes nothing, its deliveries included.
    token = writer.coordination.lease_polls(["t"], time.time(), time.time() + 60)["t"]
    assert writer.snapshots.commit_polls([poll("t", event("t", ("hook",)), lease=token + 1)])
    assert quiet(heard, 0.5)


def test_too_many_webhooks_for_a_payload_wake_every_webhook(pair) -> None:
    listener, writer = pair
    [eid] = enqueue(writer, "s", webhooks=("hook",))
    heard = listening(listener)
    many = [f"webhook-{n:05}" for n in range(1000)]  # 14 bytes each: over 8000 in all
    assert writer.admin.add_deliveries(eid, many, time.time()) == 1000
    assert next_wake(heard, within=1.0)[0] is None


@pytest.mark.slow  # waits out a quiet moment
def test_states_in_other_schemas_of_the_database_are_not_woken(pair, postgresql_url) -> None:
    listener, _ = pair
    heard = listening(listener)
    database = postgresql_url.split("?", 1)[0]
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA notify_elsewhere")
    elsewhere = open_state(f"{database}?options=-csearch_path%3Dnotify_elsewhere")
    try:
        enqueue(elsewhere, "s", webhooks=("hook",))
        assert quiet(heard, 0.5)
    finally:
        elsewhere.close()
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("DROP SCHEMA notify_elsewhere CASCADE")


@pytest.mark.slow  # waits out the first pause before reconnecting
def test_the_listener_survives_its_connection_being_terminated(postgresql_url, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bridge.state.postgresql")
    # With a password in the URL (trust auth ignores it): the lines said must not show it.
    scheme, rest = postgresql_url.split("://", 1)
    user, host = rest.split("@", 1)
    url = f"{scheme}://{user}:s3cret-pw@{host}"
    listener, writer = open_state(url), open_state(url)
    try:
        heard = listening(listener)
        with psycopg.connect(postgresql_url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
            ).fetchall()
        assert ended == [(True,)]
        # Back, it says it may have missed something: every webhook should look.
        assert next_wake(heard, within=5.0)[0] is None
        enqueue(writer, "s", webhooks=("hook",))
        names, took = next_wake(heard, within=1.0)
        assert names == {"hook"} and took < 1.0
    finally:
        writer.close()
        listener.close()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("bridge")]
    assert [level for level, _ in said] == ["WARNING", "INFO"]
    lost, back = (message for _, message in said)
    assert ":***@" in lost and "not listening for new deliveries: " in lost
    assert "listening for new deliveries again" in back
    assert not any("s3cret-pw" in m or "\n" in m for _, m in said)


def test_a_wake_that_fails_does_not_stop_the_listener(pair, caplog) -> None:
    listener, writer = pair
    heard: Heard = queue.Queue()

    def wake(names: set[str] | None) -> None:
        heard.put(names)
        if names is not None and "boom" in names:
            raise RuntimeError("the event loop is closed")

    listener.watch_deliveries(wake)
    assert heard.get(timeout=10) is None
    enqueue(writer, "s", webhooks=("boom",))
    assert next_wake(heard, within=1.0)[0] == {"boom"}
    enqueue(writer, "t", webhooks=("hook",))
    assert next_wake(heard, within=1.0)[0] == {"hook"}
    [said] = [r.getMessage() for r in caplog.records if r.name.startswith("bridge")]
    assert said == "waking the delivery workers failed: the event loop is closed"


@pytest.mark.slow  # waits out a quiet moment
def test_close_stops_the_listener_quickly(pair) -> None:
    listener, writer = pair
    heard = listening(listener)
    started = time.monotonic()
    listener.close()
    # At once: close() ends the thread's wait, not its next look up (listen.STOP_CHECK, 0.5 s).
    assert time.monotonic() - started < 0.3
    enqueue(writer, "s", webhooks=("hook",))
    assert quiet(heard, 0.5)


async def test_workers_woken_through_the_state_send_another_instances_delivery_at_once(
    pair, receiver
) -> None:
    delivering, other = pair
    specs = {name: WebhookSpec(name=name, url=receiver.url(f"/{name}")) for name in ("a", "b")}
    loop = asyncio.get_running_loop()
    async with HttpClient() as http:
        dispatcher = Dispatcher(specs, delivering.outbox, http, out=io.StringIO())
        # As the daemon wires it: the listener's thread hands each wake to the event loop.
        delivering.watch_deliveries(lambda names: loop.call_soon_threadsafe(dispatcher.wake, names))
        dispatcher.start()
        try:
            waits = []
            for n, hooks in enumerate([("a",), ("b",), ("a", "b")], start=1):
                await asyncio.sleep(0.2)  # each worker idle, its next own look a second away
                before = len(receiver.received)
                enqueue(other, f"s{n}", webhooks=hooks, at=time.time())
                queued = time.monotonic()
                await async_wait_for(lambda b=before, h=hooks: len(receiver.received) == b + len(h))
                waits.append(time.monotonic() - queued)
        finally:
            await dispatcher.stop(1.0)
    assert max(waits) < 0.5, waits  # not the idle look's second


# --- bridge status: the live instances -------------------------------------------------------


@pytest.mark.slow  # runs the command three times
def test_status_lists_a_running_instance_until_it_stops(tmp_path: Path, postgresql_url) -> None:
    config = tmp_path / "bridge.yaml"
    hook = {"hook": webhook("http://127.0.0.1:9/hook")}
    source = http_source("api", "http://127.0.0.1:9/items", webhooks=["hook"])
    config.write_text(bridge_config(source, state=postgresql_url, webhooks=hook))
    daemon = open_state(postgresql_url)
    try:
        started = time.time()
        daemon.coordination.hold_daemon()
        me = daemon.coordination.instance_id
        result = run_cli("status", "-c", str(config), "--json")
        assert result.code == 0, result.stderr
        [instance] = orjson.loads(result.stdout)["instances"]
        host, pid, _ = me.split(":")
        assert instance["id"] == me and instance["host"] == host and instance["pid"] == int(pid)
        assert started - 1 <= instance["since"] <= instance["heartbeat"] <= time.time()

        table = run_cli("status", "-c", str(config))
        assert table.code == 0, table.stderr
        lines = table.stdout.splitlines()
        header = lines.index(next(line for line in lines if line.startswith("INSTANCE ")))
        assert lines[header].split() == ["INSTANCE", "HOST", "PID", "SINCE", "HEARTBEAT"]
        assert lines[header + 1].split()[:3] == [me, host, pid]
        assert "no `bridge run`" not in table.stdout

        daemon.coordination.release_daemon()
        after = run_cli("status", "-c", str(config), "--json")
        assert orjson.loads(after.stdout)["instances"] == []
    finally:
        daemon.close()
