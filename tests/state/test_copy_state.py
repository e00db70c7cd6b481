"""`bridge copy-state`: a state copied from any backend into an empty one of any backend keeps
what a daemon needs (snapshots, validators, schedules, events with their ids, pending and dead
deliveries), writes all or nothing, refuses a target that holds a state, and after a copy the
queue goes out under the same `webhook-id`s with no re-baseline.

The copied state is compared through the Protocols (what polling and the commands read); raw
SQL (allowed here, in tests/state) only checks what they do not show: leases cleared."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from bridge.errors import StateError
from bridge.model import FetchState, Finished, NewEvent, PollCommit, SourceRow
from bridge.state import State, open_state
from bridge.state.copy import NotEmpty, copy_state
from tests.conftest import (
    SECRET,
    bridge_config,
    free_port,
    http_source,
    run_cli,
    run_on_a_terminal,
    webhook,
)

NOW = 1_700_000_000.0
FUTURE = 4_000_000_000.0
_ids = itertools.count(1)

PASSWORD = "s3cret-pw"
ENV = {"BRIDGE_TEST_PW": PASSWORD}


def with_password(url: str) -> str:
    """The test server's URL with a password from $BRIDGE_TEST_PW (trust auth ignores it)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:${{BRIDGE_TEST_PW}}@{host}"


def event(source: str, *webhooks: str) -> NewEvent:
    eid = f"msg_{next(_ids)}"
    body = orjson.dumps({"type": "item.added", "data": {"source": source, "key": eid}})
    return NewEvent(eid, source, "item.added", eid, NOW, body, webhooks)


def commit(
    state: State,
    row: SourceRow,
    *events: NewEvent,
    host_blocks: dict[str, float] | None = None,
    **extra: Any,
) -> None:
    polled = PollCommit(row, "changed", 0.1, events=list(events), **extra)
    assert state.snapshots.commit_polls([polled], host_blocks) == set()


ANSWERS = {"delivered": (204, None), "dead": (410, "HTTP 410"), "pending": (500, "HTTP 500")}


def attempt(state: State, webhook: str, now: float, outcome: str, **finish: Any) -> str:
    """Claim the first due delivery of `webhook`; record its attempt (unless 'in flight')."""
    [d] = state.outbox.claim_due(webhook, now, 1, 30.0)
    if outcome != "in flight":
        http, error = ANSWERS[outcome]
        state.outbox.finish_attempts(
            [Finished(d.id, outcome, now + 0.5, 0.05, http, error, **finish)]  # type: ignore[arg-type]
        )
    return d.event_id


def build(state: State) -> dict[str, str]:
    """A state with a bit of everything a copy must keep (and some it must not); which event
    each kind of delivery belongs to."""
    a = SourceRow(
        "a", FetchState(etag='"v1"', last_modified="Tue, 01 Oct 2024 10:00:00 GMT",
                        body_hash="bh", url="https://moved.example/a", extra={"poll_interval": 60}),
        baselined=True, last_poll_at=NOW, last_result="changed", last_change_at=NOW,
        next_poll_at=NOW + 300, item_model="fp1",
    )  # fmt: skip
    b = SourceRow(
        "b", baselined=True, last_poll_at=NOW, last_result="error", last_error="HTTP 503",
        next_poll_at=NOW + 60, failures=3, failing_since=NOW - 600, alerted=True,
    )  # fmt: skip
    c = SourceRow("c", baselined=True, last_poll_at=NOW, last_result="changed", next_poll_at=NOW)
    upserts = [("k1", "h1", b'{"id":"k1"}'), ("k2", "h2", '{"id":"k2","name":"\u00e9"}'.encode())]
    ea1, ea2, eb1, ec1 = event("a", "w"), event("a", "w"), event("b", "w"), event("c", "w", "v")
    commit(state, a, ea1, upserts=upserts, confirmations={"k3": ("h3", 2), "k1": ("-", 1)})
    commit(state, b, eb1, host_blocks={"api.example": FUTURE, "github:budget": FUTURE})
    commit(state, c, ec1)
    commit(state, a, ea2)
    kinds = {
        "delivered": attempt(state, "w", NOW, "delivered"),  # a's first
        "dead": attempt(state, "w", NOW, "dead"),  # b's
        "retrying": attempt(state, "w", NOW, "pending", next_attempt_at=NOW + 60),  # c's to w
        "in flight": attempt(state, "w", NOW + 1, "in flight"),  # a's second
    }
    assert state.coordination.lease_polls(["a", "c"], NOW, FUTURE)  # poll leases held
    return kinds


def readable(state: State) -> dict[str, Any]:
    """Everything polling and the commands can read of a state."""
    snap = state.snapshots
    rows = snap.source_rows()
    deliveries = state.admin.deliveries(limit=10_000)
    return {
        "rows": rows,
        "items": {n: snap.item_hashes(n) for n in rows},
        "contents": {n: snap.item_contents(n, sorted(snap.item_hashes(n))) for n in rows},
        "confirmations": {n: snap.confirmations(n) for n in rows},
        "blocks": snap.host_blocks(NOW),
        "events": state.admin.events(limit=10_000),
        "deliveries": deliveries,
        "attempts": {d["id"]: state.admin.attempts(d["id"]) for d in deliveries},
        "counts": state.admin.delivery_counts(),
    }


def without_delivered(before: dict[str, Any]) -> dict[str, Any]:
    """What a copy of `before` reads: its delivered deliveries (and their attempts) left out."""
    kept = [d for d in before["deliveries"] if d["status"] != "delivered"]
    counts = {w: {**n, "delivered": 0} for w, n in before["counts"].items()}
    attempts = {d["id"]: before["attempts"][d["id"]] for d in kept}
    return {**before, "deliveries": kept, "counts": counts, "attempts": attempts}


@pytest.fixture
def sqlite_state(tmp_path: Path) -> Iterator[State]:
    state = open_state(str(tmp_path / "from.db"))
    yield state
    state.close()


def target(kind: str, tmp_path: Path, postgresql_url: str) -> State:
    return open_state(postgresql_url if kind == "postgresql" else str(tmp_path / "to.db"))


# --- what is copied -----------------------------------------------------------------------------


def test_a_round_trip_through_postgresql_keeps_every_copied_row(
    sqlite_state, tmp_path, postgresql_url
) -> None:
    kinds = build(sqlite_state)
    before = readable(sqlite_state)
    middle = open_state(postgresql_url)
    back = open_state(str(tmp_path / "back.db"))
    try:
        there = copy_state(sqlite_state, middle)
        again = copy_state(middle, back)
        expected = without_delivered(before)
        assert readable(middle) == expected
        assert readable(back) == expected
    finally:
        middle.close()
        back.close()
    assert there.rows == again.rows
    assert there.rows == {
        "sources": 3, "items": 2, "confirmations": 2, "host_blocks": 2, "events": 4,
        "deliveries": 4, "attempts": 2,
    }  # fmt: skip
    assert (there.pending, there.dead) == (3, 1)
    # Every event is copied, its delivered delivery is not; the others keep their attempts.
    assert {e["id"] for e in expected["events"]} >= set(kinds.values())
    by_event = {d["event_id"]: d for d in expected["deliveries"] if d["webhook"] == "w"}
    assert kinds["delivered"] not in by_event
    assert by_event[kinds["dead"]]["status"] == "dead"
    assert by_event[kinds["retrying"]]["attempts"] == 1
    assert by_event[kinds["retrying"]]["next_attempt_at"] == NOW + 60


def test_a_copy_holds_no_lease_a_daemon_held(sqlite_state, tmp_path, postgresql_url) -> None:
    kinds = build(sqlite_state)
    # In the original, a's second delivery is in flight and a and c are being polled.
    assert sqlite_state.outbox.claim_due("w", NOW + 2, 10, 30.0) == []
    assert sqlite_state.coordination.lease_polls(["a", "c"], NOW + 2, FUTURE) == {}
    for kind in ("postgresql", "sqlite"):
        copy = target(kind, tmp_path, postgresql_url)
        try:
            copy_state(sqlite_state, copy)
            [claimed] = copy.outbox.claim_due("w", NOW + 2, 10, 30.0)
            assert claimed.event_id == kinds["in flight"]
            assert set(copy.coordination.lease_polls(["a", "b", "c"], NOW + 2, FUTURE)) == {
                "a", "b", "c"
            }  # fmt: skip
        finally:
            copy.close()
    with sqlite3.connect(tmp_path / "to.db") as conn:
        assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_ids_made_after_a_copy_come_after_the_copied_ones(
    kind, sqlite_state, tmp_path, postgresql_url
) -> None:
    build(sqlite_state)
    copied_ids = {d["id"] for d in sqlite_state.admin.deliveries()}
    copy = target(kind, tmp_path, postgresql_url)
    try:
        copy_state(sqlite_state, copy)
        later = event("c", "w")
        commit(copy, SourceRow("c", baselined=True, last_poll_at=NOW + 5), later)
        newest = copy.admin.deliveries()[0]
        assert newest["event_id"] == later.id and newest["id"] > max(copied_ids)
        assert copy.admin.events(limit=1)[0]["id"] == later.id
        # A replayed delivery's attempt gets an attempt id after the copied ones too.
        delivery = copy.outbox.claim_due("w", FUTURE, 10, 30.0)
        copy.outbox.finish_attempts(
            [Finished(d.id, "delivered", FUTURE, 0.1, 204, None) for d in delivery]
        )
        assert all(copy.admin.attempts(d.id)[-1]["at"] == FUTURE for d in delivery)
    finally:
        copy.close()


def test_an_export_is_one_snapshot_whatever_is_committed_meanwhile(two_states) -> None:
    first, second = two_states
    for name in ("a", "b", "c"):
        commit(first, SourceRow(name, baselined=True, last_poll_at=NOW), event(name, "w"))
    rows = iter(first.transfer.export_rows(batch=1))
    table, [one] = next(rows)  # the read has begun
    commit(second, SourceRow("d", baselined=True, last_poll_at=NOW), event("d", "w"))
    second.admin.discard(NOW, source="a")
    read: dict[str, list[dict[str, Any]]] = {table: [one]}
    for name, batch in rows:
        assert len(batch) == 1
        read.setdefault(name, []).extend(batch)
    assert [r["name"] for r in read["sources"]] == ["a", "b", "c"]
    assert [r["source"] for r in read["events"]] == ["a", "b", "c"]
    assert [r["status"] for r in read["deliveries"]] == ["pending"] * 3
    # The export's transaction ended with it: a writer is not held back.
    commit(first, SourceRow("e", baselined=True, last_poll_at=NOW))


# --- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
@pytest.mark.parametrize("holding", ["a source", "an event and its delivery"])
def test_a_target_holding_a_state_is_refused_and_keeps_it(
    kind, holding, sqlite_state, tmp_path, postgresql_url
) -> None:
    build(sqlite_state)
    copy = target(kind, tmp_path, postgresql_url)
    try:
        if holding == "a source":
            commit(copy, SourceRow("mine", baselined=True, last_poll_at=NOW))
        else:
            commit(copy, SourceRow("mine", last_poll_at=NOW), event("mine", "w"))
        before = readable(copy)
        with pytest.raises(NotEmpty, match="not empty .it holds sources"):
            copy_state(sqlite_state, copy)
        assert readable(copy) == before
    finally:
        copy.close()


def test_a_copy_that_fails_writes_nothing_and_names_the_target(
    sqlite_state, tmp_path, postgresql_url
) -> None:
    build(sqlite_state)
    # A delivery whose event is gone: a SQLite file (no foreign keys) can hold one,
    # PostgreSQL refuses it, at the last table but one.
    with sqlite3.connect(tmp_path / "from.db") as conn:
        conn.execute(
            "INSERT INTO deliveries (event_seq, webhook, source, status, next_attempt_at, "
            "created_at, updated_at) VALUES (999, 'w', 'a', 'pending', 0, 0, 0)"
        )
    url = postgresql_url.replace("postgres@", "postgres:hunter2@")
    copy = open_state(url)
    try:
        with pytest.raises(StateError) as failed:
            copy_state(sqlite_state, copy)
        message = str(failed.value)
        assert message.startswith("postgresql://postgres:***@") and "hunter2" not in message
        assert "deliveries" in message and "\n" not in message
        assert readable(copy)["rows"] == {} and readable(copy)["events"] == []
        copy_state(open_state(str(tmp_path / "to.db")), copy)  # still empty: a copy goes in
    finally:
        copy.close()
    # The source's read ended: its file takes writes again at once.
    commit(sqlite_state, SourceRow("z", last_poll_at=NOW))


# --- the command --------------------------------------------------------------------------------


@pytest.mark.slow
def test_after_a_copy_the_queue_goes_out_with_its_webhook_ids_and_no_rebaseline(
    write_config, origin, receiver, tmp_path, postgresql_url
) -> None:
    def config(state: str, url: str, name: str) -> Path:
        source = http_source("api", origin.url("/items"), items="@", key="id", webhooks=["hook"])
        hook = {"hook": webhook(url, SECRET, retry=["50ms", "50ms", "50ms"])}
        return write_config(bridge_config(source, state=state, webhooks=hook), name)

    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    on_sqlite = config("one.db", down, "one.yaml")
    origin.set("/items", [{"id": 1, "v": 1}, {"id": 2, "v": 1}, {"id": 3, "v": 1}])
    assert run_cli("once", "-c", str(on_sqlite)).code == 0  # the baseline
    origin.set("/items", [{"id": 1, "v": 1}, {"id": 2, "v": 2}, {"id": 3, "v": 1}, {"id": 4}])
    failed = run_cli("once", "-c", str(on_sqlite))
    assert failed.code == 1 and "2 queued for the next run" in failed.stderr, failed.stderr
    listed = run_cli("events", "-c", str(on_sqlite), "--json").lines()  # newest first
    events = {e["type"]: e["id"] for e in listed}
    assert set(events) == {"item.added", "item.changed"}

    url = with_password(postgresql_url)
    copied = run_cli("copy-state", str(tmp_path / "one.db"), url, env=ENV)
    assert copied.code == 0, copied.stderr
    [line] = copied.stdout.splitlines()
    assert line.startswith("copied 1 source (4 items, 0 changes awaiting confirm), 2 events, ")
    assert "2 deliveries (2 pending, 0 dead) with 2 attempts" in line
    assert ":***@" in line and PASSWORD not in copied.stdout + copied.stderr

    on_postgresql = config(url, receiver.url(), "many.yaml")
    polled = len(origin.hits("/items"))
    sent = run_cli("once", "-c", str(on_postgresql), env=ENV)
    assert sent.code == 0, sent.stderr
    # Polled with the copied validators: unchanged, nothing new to send, no baseline again.
    [conditional] = origin.hits("/items")[polled:]
    assert "If-None-Match" in conditional
    assert "baseline" not in sent.stderr
    got = {r.json["type"]: r.headers["webhook-id"] for r in receiver.received}
    assert got == events and len(receiver.received) == 2
    # In the order they were detected, as before the copy.
    assert [r.headers["webhook-id"] for r in receiver.received] == [e["id"] for e in listed[::-1]]


@pytest.mark.slow
def test_the_command_refuses_a_target_holding_a_state_in_one_line(
    sqlite_state, tmp_path, postgresql_url
) -> None:
    build(sqlite_state)
    source, url, other = str(tmp_path / "from.db"), with_password(postgresql_url), "other.db"
    for to, shown in ((url, "postgresql://postgres:***@"), (str(tmp_path / other), other)):
        assert run_cli("copy-state", source, to, env=ENV).code == 0
        again = run_cli("copy-state", source, to, env=ENV)
        assert again.code == 2 and again.stdout == ""
        [line] = again.stderr.splitlines()
        assert line.startswith("bridge: ") and shown in line
        assert line.endswith(": not empty (it holds sources, events and deliveries); "
                             "copy-state copies only into an empty state")  # fmt: skip
        assert PASSWORD not in line
    itself = run_cli("copy-state", source, str(tmp_path / "." / "from.db"))
    assert (itself.code, itself.stderr) == (2, "bridge: FROM and TO are the same state\n")


@pytest.mark.slow
def test_the_command_refuses_a_missing_from_without_making_it(
    tmp_path, bare_postgresql_url
) -> None:
    missing = tmp_path / "nowhere.db"
    result = run_cli("copy-state", str(missing), str(tmp_path / "to.db"))
    assert result.code == 2
    assert result.stderr == f"bridge: {missing}: no such state file\n"
    assert not missing.exists() and not (tmp_path / "to.db").exists()
    (tmp_path / "folder.db").mkdir()
    assert run_cli("copy-state", str(tmp_path / "folder.db"), str(tmp_path / "to.db")).code == 2
    # A database without bridge's tables is no state either, and gets none.
    empty = run_cli(
        "copy-state", with_password(bare_postgresql_url), str(tmp_path / "to.db"), env=ENV
    )
    assert empty.code == 2 and "no bridge state in this database" in empty.stderr
    assert PASSWORD not in empty.stderr
    with psycopg.connect(bare_postgresql_url) as conn:
        assert conn.execute("SELECT to_regclass('sources')").fetchone() == (None,)


@pytest.mark.slow
def test_the_command_never_shows_a_password(sqlite_state, tmp_path) -> None:
    build(sqlite_state)
    source = str(tmp_path / "from.db")
    unreachable = "postgresql://bob:${BRIDGE_TEST_PW}@127.0.0.1:1/bridge"
    failed = run_cli("copy-state", source, unreachable, env=ENV)
    assert failed.code == 1
    [line] = failed.stderr.splitlines()
    assert "postgresql://bob:***@127.0.0.1:1/bridge: cannot connect" in line
    assert PASSWORD not in failed.stdout + failed.stderr
    unset = run_cli("copy-state", source, unreachable)
    assert unset.code == 2
    assert unset.stderr == "bridge: TO: environment variable BRIDGE_TEST_PW is not set\n"


@pytest.mark.slow
def test_the_command_copies_a_live_file_into_a_new_one_and_says_it_was_live(
    sqlite_state, tmp_path
) -> None:
    build(sqlite_state)
    before = without_delivered(readable(sqlite_state))
    sqlite_state.coordination.hold_daemon()  # as a `bridge run` on it would
    result = run_cli("copy-state", str(tmp_path / "from.db"), str(tmp_path / "new.db"))
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("copied 3 sources (2 items, 2 changes awaiting confirm)")
    [warning] = result.stderr.splitlines()
    assert "from.db: a `bridge run` is using it" in warning and "new.db" in warning
    copy = open_state(str(tmp_path / "new.db"), create=False)
    try:
        assert readable(copy) == before
    finally:
        copy.close()
    sqlite_state.coordination.release_daemon()
    code, shown = run_on_a_terminal("copy-state", str(tmp_path / "from.db"), str(tmp_path / "2.db"))
    assert code == 0 and b"copying: " in shown  # progress, on a terminal


@pytest.mark.slow
def test_a_copy_that_fails_leaves_no_new_file_behind(tmp_path) -> None:
    damaged = tmp_path / "damaged.db"
    state = open_state(str(damaged))
    items = [(f"k{i}", f"h{i}", orjson.dumps({"id": i, "name": "x" * 200})) for i in range(3000)]
    commit(state, SourceRow("s", baselined=True), event("s", "w"), upserts=items)
    state.close()
    size = damaged.stat().st_size
    with damaged.open("r+b") as f:  # pages of items overwritten: it opens, and fails to read
        f.seek(size // 2)
        f.write(b"\xff" * 32768)
    result = run_cli("copy-state", str(damaged), str(tmp_path / "new.db"))
    assert result.code == 1
    assert result.stderr == (
        f"bridge: {damaged}: cannot read the state file: database disk image is malformed\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.db"]
