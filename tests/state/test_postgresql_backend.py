"""What only the PostgreSQL backend promises, or promises under real concurrency: two states
(two instances) claiming and leasing at the same moment from threads, dead instances, the
schema's migration, and errors that never show the password.

Each test gets a fresh schema (tests/state/conftest.py: `postgresql_url`), or a fresh database
where it needs a whole one (`postgresql_database`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from bridge.config import load_config
from bridge.errors import StateError
from bridge.model import Finished, NewEvent, PollCommit, SourceRow
from bridge.state import State, open_state, redact_location, state_exists
from bridge.state.base import INSTANCE_TIMEOUT
from bridge.state.postgresql.schema import SCHEMA_VERSION
from tests.conftest import STDOUT, bridge_config, engine_for, http_source
from tests.state.conftest import POSTGRESQL, drop_database

NOW = 1_700_000_000.0
T = TypeVar("T")


@pytest.fixture
def two(postgresql_url: str) -> Iterator[tuple[State, State]]:
    """Two states on one database: two instances, as far as the database can tell."""
    first, second = open_state(postgresql_url), open_state(postgresql_url)
    yield first, second
    second.close()
    first.close()


def enqueue(state: State, per_source: dict[str, int]) -> None:
    """`n` events of each source, interleaved (s0, s1, ..., s0, s1, ...), each to webhook w."""
    commits = []
    for i in range(max(per_source.values())):
        for source, n in per_source.items():
            if i < n:
                eid = f"evt_{source}_{i}"
                ev = NewEvent(eid, source, "item.added", eid, NOW, b"{}", ("w",))
                row = SourceRow(source, baselined=True, last_poll_at=NOW)
                commits.append(PollCommit(row, "changed", 0.1, events=[ev]))
    assert state.snapshots.commit_polls(commits) == set()


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together by a barrier; their results, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --- per-source order across instances -------------------------------------------------------


def test_states_claiming_side_by_side_never_hold_two_deliveries_of_one_source(
    postgresql_url,
) -> None:
    # Three instances, each a thread that claims, "sends" for 2 ms and records the attempt, as
    # fast as it can: without the per-source lock of the claim, two of them take different
    # deliveries of one source within a few rounds (seen: 12 and 28 overlaps in 160).
    states = [open_state(postgresql_url) for _ in range(3)]
    sources = {f"s{i}": 40 for i in range(4)}
    enqueue(states[0], sources)
    total = sum(sources.values())
    in_flight: dict[str, int] = {}  # source -> the delivery some instance is sending now
    guard = threading.Lock()
    overlaps: list[tuple[str, int, int]] = []
    sent: dict[str, list[int]] = defaultdict(list)

    def work(state: State) -> None:
        while sum(len(ids) for ids in sent.values()) < total:
            claimed = state.outbox.claim_due("w", NOW, 10, 30.0)
            with guard:
                for d in claimed:
                    if d.source in in_flight:
                        overlaps.append((d.source, in_flight[d.source], d.id))
                    in_flight[d.source] = d.id
            time.sleep(0.002)
            with guard:  # out of the books before the commit that frees the source
                for d in claimed:
                    if in_flight.get(d.source) == d.id:
                        del in_flight[d.source]
                    sent[d.source].append(d.id)
            state.outbox.finish_attempts(
                [Finished(d.id, "delivered", NOW, 0.002, 204, None) for d in claimed]
            )

    try:
        at_once([lambda s=s: work(s) for s in states])
        assert overlaps == []
        assert sorted(len(ids) for ids in sent.values()) == sorted(sources.values())
        for ids in sent.values():
            assert ids == sorted(ids)  # each source's deliveries went out oldest first
        assert states[1].admin.delivery_counts() == {
            "w": {"pending": 0, "delivered": total, "dead": 0}
        }
    finally:
        for s in states:
            s.close()


def test_claims_at_once_split_different_sources_between_the_states(two) -> None:
    first, second = two
    enqueue(first, {f"s{i}": 1 for i in range(20)})
    a, b = at_once([lambda s=s: s.outbox.claim_due("w", NOW, 20, 30.0) for s in (first, second)])
    assert {d.id for d in a}.isdisjoint(d.id for d in b)  # no delivery claimed twice
    assert len(a) + len(b) == 20  # and none left behind by the rows the other one locked


# --- poll leases across instances ------------------------------------------------------------


def test_states_leasing_at_once_are_granted_each_source_once(postgresql_url) -> None:
    # Large enough batches that the three statements overlap: without the row locks of the
    # grant (FOR UPDATE SKIP LOCKED), sources are granted twice here.
    states = [open_state(postgresql_url) for _ in range(3)]
    try:
        for round_ in range(4):
            names = [f"r{round_}_s{i}" for i in range(2000)]
            # Stored rows with leases expired by NOW: no insert makes one grant wait for another.
            assert len(states[0].coordination.lease_polls(names, NOW - 100, NOW - 50)) == 2000
            grants = at_once(
                [
                    lambda s=s, asked=names[k:] + names[:k]: s.coordination.lease_polls(
                        asked, NOW, NOW + 60
                    )
                    for k, s in zip((0, 700, 1400), states, strict=True)
                ]
            )
            granted = [name for g in grants for name in g]
            assert len(granted) == len(set(granted))  # nobody granted twice
            assert set(granted) == set(names)
    finally:
        for s in states:
            s.close()


def test_a_dead_instances_leases_are_free_once_its_heartbeat_is_stale(two) -> None:
    dead, alive = two
    dead.coordination.register(NOW)
    stale = dead.coordination.lease_polls(["s"], NOW, NOW + 3600)["s"]
    dead.coordination.heartbeat(NOW + 10)
    assert alive.coordination.lease_polls(["s"], NOW + 10 + INSTANCE_TIMEOUT - 1, NOW + 3600) == {}
    taken = alive.coordination.lease_polls(["s"], NOW + 11 + INSTANCE_TIMEOUT, NOW + 3600)
    assert set(taken) == {"s"}
    # The dead one, woken up, cannot commit under its old lease.
    late = PollCommit(SourceRow("s", baselined=True, last_poll_at=NOW), "changed", 0.1, lease=stale)
    assert dead.snapshots.commit_polls([late]) == {"s"}
    assert alive.snapshots.source_row("s") == SourceRow("s")


def test_a_lease_of_an_owner_that_never_registered_lasts_until_it_expires(two) -> None:
    once, daemon = two  # `bridge once` takes leases without registering
    once.coordination.lease_polls(["s"], NOW, NOW + 100)
    assert daemon.coordination.lease_polls(["s"], NOW + 99, NOW + 200) == {}
    assert set(daemon.coordination.lease_polls(["s"], NOW + 101, NOW + 200)) == {"s"}


def test_several_daemons_hold_one_database_and_see_each_other(two) -> None:
    first, second = two
    assert not first.coordination.daemon_running()
    first.coordination.hold_daemon()
    second.coordination.hold_daemon()  # no StateError: many instances share the database
    assert first.coordination.daemon_running() and second.coordination.daemon_running()
    first.coordination.release_daemon()
    assert not second.coordination.daemon_running()
    second.coordination.release_daemon()


# --- generation --------------------------------------------------------------------------------


def test_generation_ignores_this_states_own_writes(two) -> None:
    first, second = two
    seen = first.snapshots.generation()
    enqueue(first, {"a": 1})
    first.coordination.lease_polls(["b"], NOW, NOW + 60)
    assert first.snapshots.generation() == seen  # its own rows are already in its cache
    enqueue(second, {"c": 1})
    assert first.snapshots.generation() != seen


# --- retention ------------------------------------------------------------------------------


def test_one_instance_trims_at_a_time(postgresql_url) -> None:
    from bridge.state.postgresql.admin import TRIM_LOCK

    state = open_state(postgresql_url)
    try:
        enqueue(state, {"a": 1})
        [d] = state.outbox.claim_due("w", NOW, 1, 30.0)
        state.outbox.finish_attempts([Finished(d.id, "delivered", NOW, 0.01, 204, None)])
        with psycopg.connect(postgresql_url, autocommit=True) as other:  # another's pass
            other.execute("SELECT pg_advisory_lock(%s)", (TRIM_LOCK,))
            assert state.admin.trim(NOW + 10) == 0
            assert len(state.admin.events()) == 1
            other.execute("SELECT pg_advisory_unlock(%s)", (TRIM_LOCK,))
            assert state.admin.trim(NOW + 10) == 4  # event, delivery, attempt, poll
        assert state.admin.events() == [] and state.admin.deliveries() == []
    finally:
        state.close()


# --- the schema --------------------------------------------------------------------------------


def _version(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchall()


def test_an_empty_schema_is_migrated_once_and_reopening_changes_nothing(
    bare_postgresql_url,
) -> None:
    assert not state_exists(bare_postgresql_url)
    with pytest.raises(StateError, match="no bridge state in this database yet"):
        open_state(bare_postgresql_url, create=False)
    state = open_state(bare_postgresql_url)
    enqueue(state, {"a": 2})
    state.close()
    assert state_exists(bare_postgresql_url)
    assert _version(bare_postgresql_url) == [(SCHEMA_VERSION,)]
    again = open_state(bare_postgresql_url, create=False)
    try:
        assert _version(bare_postgresql_url) == [(SCHEMA_VERSION,)]
        assert len(again.admin.events()) == 2
    finally:
        again.close()


def test_instances_starting_at_once_on_an_empty_schema_all_open_it(bare_postgresql_url) -> None:
    states = at_once([lambda: open_state(bare_postgresql_url)] * 4)
    try:
        assert _version(bare_postgresql_url) == [(SCHEMA_VERSION,)]
        enqueue(states[0], {"a": 1})
        assert [len(s.admin.events()) for s in states] == [1, 1, 1, 1]
    finally:
        for s in states:
            s.close()


def test_an_older_schema_is_brought_up_and_keeps_its_rows(postgresql_url) -> None:
    open_state(postgresql_url).close()
    state = open_state(postgresql_url)
    enqueue(state, {"a": 1})
    state.close()
    with psycopg.connect(postgresql_url) as conn:  # as a schema from before these tables
        conn.execute("DROP TABLE instances, writes")
        conn.execute("UPDATE schema_version SET version = 0")
    state = open_state(postgresql_url)
    try:
        assert _version(postgresql_url) == [(SCHEMA_VERSION,)]
        assert [e["source"] for e in state.admin.events()] == ["a"]
        state.coordination.register(NOW)  # the new table is there
        enqueue(state, {"b": 1})
    finally:
        state.close()


def test_a_newer_schema_is_refused(postgresql_url) -> None:
    open_state(postgresql_url).close()
    with psycopg.connect(postgresql_url) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match=f"schema {SCHEMA_VERSION + 1} is newer"):
        open_state(postgresql_url)


# --- errors, health --------------------------------------------------------------------------

PASSWORD = "s3cret-pw"


def _one_line_without_password(message: str) -> None:
    assert "\n" not in message and PASSWORD not in message


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    url = f"postgresql://bob:{PASSWORD}@127.0.0.1:1/bridge"
    with pytest.raises(StateError) as caught:
        open_state(url)
    message = str(caught.value)
    _one_line_without_password(message)
    assert message.startswith("postgresql://bob:***@127.0.0.1:1/bridge: cannot connect: ")
    assert "Connection refused" in message
    with pytest.raises(StateError) as caught:
        state_exists(url)
    _one_line_without_password(str(caught.value))


def test_a_missing_database_is_one_line_without_the_password() -> None:
    server = POSTGRESQL.replace("postgres@", f"postgres:{PASSWORD}@")
    with pytest.raises(StateError) as caught:
        open_state(f"{server}/bridge_no_such_db?password={PASSWORD}")
    message = str(caught.value)
    _one_line_without_password(message)
    assert 'database "bridge_no_such_db" does not exist' in message
    assert "postgres:***@" in message and "password=***" in message


@pytest.mark.slow  # makes and drops a whole database
def test_a_dropped_database_is_not_writable_and_its_failed_write_is_the_problem(
    postgresql_database,
) -> None:
    state = open_state(postgresql_database)
    try:
        assert state.writable() and state.problem() is None
        drop_database(postgresql_database)
        assert state.writable() is False
        with pytest.raises(StateError):
            enqueue(state, {"a": 1})
        problem = state.problem()
        assert problem is not None and problem.startswith(postgresql_database)
    finally:
        state.close()


def test_redact_location_hides_the_password_and_leaves_paths_alone() -> None:
    assert redact_location("postgres://u:p%40ss@db:5432/b?sslmode=require") == (
        "postgres://u:***@db:5432/b?sslmode=require"
    )
    assert redact_location("postgresql://u@db/b?password=x&application_name=a") == (
        "postgresql://u@db/b?password=***&application_name=a"
    )
    assert redact_location("postgresql:///b") == "postgresql:///b"
    assert redact_location("/var/lib/bridge/postgresql:x.db") == "/var/lib/bridge/postgresql:x.db"


def test_a_postgresql_state_in_the_config_is_kept_as_given_with_env_filled_in(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("state: postgresql://bridge:${PGPASSWORD}@db.internal/bridge\nsources: []\n")
    config = load_config(path, {"PGPASSWORD": PASSWORD})
    assert config.state == f"postgresql://bridge:{PASSWORD}@db.internal/bridge"
    path.write_text("state: postgres://db.internal/bridge\nsources: []\n")
    assert load_config(path, {}).state == "postgres://db.internal/bridge"
    path.write_text("state: data/bridge.db\nsources: []\n")
    assert load_config(path, {}).state == str(tmp_path / "data" / "bridge.db")


def test_a_urls_search_path_is_kept_and_the_state_lives_in_that_schema(
    postgresql_database,
) -> None:
    with psycopg.connect(postgresql_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bridge")
    url = f"{postgresql_database}?options=-csearch_path%3Dbridge"
    state = open_state(url)
    try:
        enqueue(state, {"a": 1})
        assert state.writable()
    finally:
        state.close()
    with psycopg.connect(postgresql_database) as conn:
        assert conn.execute("SELECT count(*) FROM bridge.events").fetchone() == (1,)
    assert not state_exists(postgresql_database)  # the public schema holds no state
    assert state_exists(url)


def test_a_url_libpq_cannot_read_is_one_line_without_the_password() -> None:
    with pytest.raises(StateError) as caught:
        open_state(f"postgresql://u:{PASSWORD}@db/bridge?bogus=1")
    assert str(caught.value) == "postgresql://u:***@db/bridge?bogus=1: not a usable PostgreSQL URL"
    with pytest.raises(StateError, match="not a usable PostgreSQL URL"):
        state_exists(f"postgresql://u:{PASSWORD}@db/bridge?bogus=1")


# --- the reads and writes of a changed poll ---------------------------------------------------


def _leased_poll(
    state: State, upserts: list[tuple[str, str, bytes]] = (), deletes: list[str] = ()
) -> dict[str, str]:
    """One poll of source `s` as the engine makes it: leased, its items read, its commit
    fenced by the lease; the hashes it read."""
    [(name, token)] = state.coordination.lease_polls(["s"], time.time(), time.time() + 60).items()
    found = state.snapshots.item_hashes(name)
    row = SourceRow(name, baselined=True, last_poll_at=NOW)
    commit = PollCommit(row, "changed", 0.1, list(upserts), list(deletes), lease=token)
    assert state.snapshots.commit_polls([commit]) == set()
    return found


def _stored(url: str) -> dict[str, Any]:
    fresh = open_state(url)
    try:
        hashes = fresh.snapshots.item_hashes("s")
        return {"hashes": hashes, "contents": fresh.snapshots.item_contents("s", list(hashes))}
    finally:
        fresh.close()


def test_a_small_sources_items_are_kept_for_its_next_lease_here_and_only_that(
    postgresql_url,
) -> None:
    state, other = open_state(postgresql_url), open_state(postgresql_url)
    try:
        snaps = state.snapshots
        items = [(f"k{i}", f"h{i}", b'{"v": %d}' % i) for i in range(3)]
        _leased_poll(state, items)  # the baseline: read without contents, nothing kept
        assert snaps.known_items("s") is None
        _leased_poll(state, [("k1", "h1b", b'{"v": 10}')], ["k2"])  # read with contents
        lease = state.coordination.lease_polls(["s"], time.time(), time.time() + 60)
        known = snaps.known_items("s")
        assert known is not None and dict(known.hashes) == {"k0": "h0", "k1": "h1b"}
        assert _stored(postgresql_url)["hashes"] == dict(known.hashes)
        assert snaps.item_contents("s", ["k1", "k2"]) == {"k1": {"v": 10}}
        state.coordination.release_polls(lease)
        # A lease that ended without a commit: nobody vouches for what happened since.
        assert _leased_poll(state) == {"k0": "h0", "k1": "h1b"}
        lease = state.coordination.lease_polls(["s"], time.time(), time.time() + 60)
        assert snaps.known_items("s") is not None
        state.coordination.release_polls(lease)

        # Another instance's poll: this one's next lease is not the next token, so it reads.
        _leased_poll(other, [("k0", "h0c", b'{"v": 100}')])
        assert _leased_poll(state) == {"k0": "h0c", "k1": "h1b"}
        # A commit under no lease (none in production but a test's) moves the token too.
        row = SourceRow("s", baselined=True, last_poll_at=NOW)
        unleased = PollCommit(row, "changed", 0.1, [("k9", "h9", b"9")])
        assert other.snapshots.commit_polls([unleased]) == set()
        assert _leased_poll(state) == {"k0": "h0c", "k1": "h1b", "k9": "h9"}
    finally:
        other.close()
        state.close()


def test_a_commit_that_fails_or_is_fenced_out_keeps_nothing(postgresql_url) -> None:
    state, other = open_state(postgresql_url), open_state(postgresql_url)
    try:
        snaps = state.snapshots
        _leased_poll(state, [("k0", "h0", b"0")])
        _leased_poll(state)  # now small: read with its contents, and kept
        [token] = state.coordination.lease_polls(["s"], 1.0, 2.0).values()  # ends at once
        assert snaps.known_items("s") is not None
        _leased_poll(other, [("k0", "h0b", b"1")])  # takes the lapsed lease, commits
        row = SourceRow("s", baselined=True, last_poll_at=NOW)
        stale = PollCommit(row, "changed", 0.1, [("k1", "h1", b"2")], lease=token)
        assert snaps.commit_polls([stale]) == {"s"}
        assert snaps.known_items("s") is None

        event = NewEvent("evt_1", "s", "item.added", "k1", NOW, b"{}", ("w",))
        for _ in range(2):  # the second, read with its contents: kept
            [token] = state.coordination.lease_polls(["s"], time.time(), NOW * 2).values()
            snaps.item_hashes("s")
            assert snaps.commit_polls([PollCommit(row, "changed", 0.1, lease=token)]) == set()
        [token] = state.coordination.lease_polls(["s"], time.time(), NOW * 2).values()
        assert snaps.known_items("s") is not None
        snaps.commit_polls([PollCommit(row, "changed", 0.1, events=[event], lease=token)])
        [token] = state.coordination.lease_polls(["s"], time.time(), NOW * 2).values()
        assert snaps.known_items("s") is not None
        # A commit the server refuses (an event id it has): written or not, nothing is kept.
        with pytest.raises(StateError):
            snaps.commit_polls([PollCommit(row, "changed", 0.1, events=[event], lease=token)])
        assert snaps.known_items("s") is None
    finally:
        other.close()
        state.close()


def test_a_large_sources_contents_are_read_apart_from_its_hashes(postgresql_url) -> None:
    state = open_state(postgresql_url)
    try:
        items = [(f"k{i}", f"h{i}", b"%d" % i) for i in range(100)]
        row = SourceRow("big", baselined=True, last_poll_at=NOW)
        state.snapshots.commit_polls([PollCommit(row, "changed", 0.1, upserts=items)])
        for _ in range(2):
            assert len(state.snapshots.item_hashes("big")) == 100
            assert state.snapshots.item_contents("big", ["k7", "k99"]) == {"k7": 7, "k99": 99}
    finally:
        state.close()


def test_attempts_finished_together_are_each_recorded(two) -> None:
    first, _ = two
    enqueue(first, {f"s{i}": 2 for i in range(3)})
    claimed = first.outbox.claim_due("w", NOW, 10, 30.0)
    assert len(claimed) == 3  # one per source
    a, b, c = sorted(claimed, key=lambda d: d.id)
    # Out of id order, one attempt twice (a retry and then its success, reported together).
    first.outbox.finish_attempts(
        [
            Finished(c.id, "delivered", NOW + 1, 0.01, 204, None),
            Finished(a.id, "pending", NOW + 1, 0.01, 500, "HTTP 500", NOW + 60),
            Finished(b.id, "dead", NOW + 1, 0.01, 410, "HTTP 410"),
            Finished(a.id, "delivered", NOW + 2, 0.01, 204, None),
        ]
    )
    with psycopg.connect(first.location) as conn:
        rows = conn.execute(
            "SELECT id, status, attempts, lease_until, last_status, last_error, updated_at "
            "FROM deliveries WHERE id = ANY(%s) ORDER BY id",
            ([a.id, b.id, c.id],),
        ).fetchall()
        attempts = conn.execute("SELECT delivery_id, status FROM attempts ORDER BY id").fetchall()
    assert rows == [
        (a.id, "delivered", 2, None, 204, None, NOW + 2),
        (b.id, "dead", 1, None, 410, "HTTP 410", NOW + 1),
        (c.id, "delivered", 1, None, 204, None, NOW + 1),
    ]
    assert attempts == [(c.id, 204), (a.id, 500), (b.id, 410), (a.id, 204)]
    # Each source's next delivery is claimable again: none of the three holds its source.
    again = first.outbox.claim_due("w", NOW + 100, 10, 30.0)
    assert sorted((d.source, d.id) for d in again) == [("s0", a.id + 3), ("s1", b.id + 3),
                                                        ("s2", c.id + 3)]  # fmt: skip


async def test_polls_of_one_source_by_two_instances_in_turn_diff_against_the_last_commit(
    postgresql_url, origin, write_config
) -> None:
    # Each instance keeps the items its own polls found; polled in turns, each must still
    # compare with what the other committed last, and a run of its own polls with its own.
    source = http_source("s", origin.url("/c"), every="1m", items="@", key="id", webhooks=["out"])
    path = write_config(bridge_config(source, state=postgresql_url, webhooks=STDOUT))
    async with engine_for(path) as first, engine_for(path) as second:
        origin.set("/c", [{"id": 1, "v": 0}])
        assert (await first.poll("s")).result == "new"
        turns = [first, first, second, first, second, second, first]
        for n, engine in enumerate(turns, start=1):
            origin.set("/c", [{"id": 1, "v": n}, {"id": n + 1, "v": 0}])
            result = await engine.poll("s")
            changes = sorted(
                (e["type"], e["data"]["key"], (e["data"]["before"] or {}).get("v"))
                for e in result.events
            )
            expected = [("item.added", n + 1, None), ("item.changed", 1, n - 1)]
            if n > 1:
                expected.append(("item.removed", n, 0))
            assert changes == sorted(expected), (n, changes)
        kept = [e.state.snapshots.known_items("s") is not None for e in (first, second)]
        assert kept == [False, False]  # neither holds a lease now: nothing is vouched for


@pytest.mark.slow  # waits on row locks, a second or so
async def test_a_flush_waits_for_the_changed_polls_committing_then_not_for_later_ones(
    postgresql_url, origin, write_config
) -> None:
    # A daemon gives shards back after a flush (sharing.py). Under a steady stream of changed
    # polls the group writer never runs dry, and a flush that waited for it never ended: a
    # daemon kept the shards of the instances that joined it. Here a row lock held by the test
    # stops each poll's commit in turn at its item.
    sources = [http_source(n, origin.url(f"/{n}"), every="1m", webhooks=["out"]) for n in "ab"]
    path = write_config(bridge_config(*sources, state=postgresql_url, webhooks=STDOUT))
    async with engine_for(path) as engine:
        for name in "ab":
            origin.set(f"/{name}", {"n": 0})
            assert (await engine.poll(name)).result == "new"
            origin.set(f"/{name}", {"n": 1})
        holds = {}
        for name in "ab":  # each source's one item (a document's) locked by a connection
            holds[name] = psycopg.connect(postgresql_url)
            holds[name].execute("SELECT 1 FROM items WHERE source = %s FOR UPDATE", (name,))
        try:
            poll_a = asyncio.create_task(engine.poll("a"))
            await asyncio.sleep(0.3)  # a's commit is under way, waiting for its item
            flush = asyncio.create_task(engine.flush_async())
            poll_b = asyncio.create_task(engine.poll("b"))
            await asyncio.sleep(0.3)  # b's commit is queued behind a's
            assert not flush.done() and not poll_a.done()
            holds["a"].commit()  # a's commit goes through; b's starts, and waits for its item
            await asyncio.wait_for(flush, timeout=5)
            assert (await poll_a).result == "changed"
            assert not poll_b.done()
            holds["b"].commit()
            assert (await asyncio.wait_for(poll_b, timeout=5)).result == "changed"
        finally:
            for conn in holds.values():
                conn.close()


@pytest.mark.slow  # waits on row locks, a second or so
async def test_a_flush_waits_for_the_commit_of_a_poll_cancelled_while_it_is_written(
    postgresql_url, origin, write_config
) -> None:
    # At shutdown polls still running after the grace are cancelled, then the engine flushes
    # before the state closes: a cancelled poll's commit is still written with its group.
    source = http_source("a", origin.url("/a"), every="1m", webhooks=["out"])
    path = write_config(bridge_config(source, state=postgresql_url, webhooks=STDOUT))
    async with engine_for(path) as engine:
        origin.set("/a", {"n": 0})
        assert (await engine.poll("a")).result == "new"
        origin.set("/a", {"n": 1})
        hold = psycopg.connect(postgresql_url)
        try:
            hold.execute("SELECT 1 FROM items WHERE source = 'a' FOR UPDATE")
            poll = asyncio.create_task(engine.poll("a"))
            await asyncio.sleep(0.3)  # its commit is under way, waiting for its item
            poll.cancel()
            flush = asyncio.create_task(engine.flush_async())
            await asyncio.sleep(0.3)
            assert not flush.done()
            hold.commit()
            await asyncio.wait_for(flush, timeout=5)
        finally:
            hold.close()
        assert [e["type"] for e in engine.state.admin.events(source="a")] == ["document.changed"]
