"""Daemons sharing one PostgreSQL split the sources by shards (Coordination.share): each gets a
fair share, a joining one is given its part, a dead one's shards move on, a daemon leases only
its own shards' sources, and a dead instance's deliveries go out again at once.

SQLite has one daemon per state file: share() is None there, and it schedules everything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.model import Finished, NewEvent, PollCommit, SourceRow
from bridge.state import State, open_state
from bridge.state.base import INSTANCE_TIMEOUT, SHARDS, shard_of

NOW = 1_700_000_000.0


@pytest.fixture
def three(postgresql_url: str) -> Iterator[list[State]]:
    states = [open_state(postgresql_url) for _ in range(3)]
    yield states
    for s in states:
        s.close()


def daemons(states: list[State], now: float) -> None:
    """Register every state as a live `bridge run` at `now`."""
    for s in states:
        s.coordination.register(now)


def test_a_state_file_has_no_shards(tmp_path) -> None:
    state = open_state(str(tmp_path / "state.db"))
    try:
        assert state.coordination.share(NOW, "x") is None
    finally:
        state.close()


def test_shard_of_is_stable_and_spreads_names() -> None:
    assert shard_of("github-releases") == shard_of("github-releases")
    assert shard_of("github-releases") == 35  # CRC-32: the same in every process and version
    counts = [0] * SHARDS
    for i in range(SHARDS * 100):
        counts[shard_of(f"source-{i}")] += 1
    assert min(counts) > 50 and max(counts) < 150


def test_the_first_daemon_takes_every_shard(three) -> None:
    first = three[0]
    daemons([first], NOW)
    share = first.coordination.share(NOW, "x")
    assert share is not None
    assert share.held == frozenset(range(SHARDS)) and not share.surplus


def test_a_joining_daemon_is_given_its_fair_share(three) -> None:
    a, b, c = three
    daemons([a], NOW)
    a.coordination.share(NOW, "x")
    daemons([b, c], NOW + 1)
    # b and c find nothing free: a holds it all until its next beat gives the surplus back.
    assert b.coordination.share(NOW + 1, "x").held == frozenset()
    share = a.coordination.share(NOW + 5, "x")
    assert len(share.held) == SHARDS and len(share.held - share.surplus) in (85, 86)
    a.coordination.give_back(share.surplus)
    held = [a.coordination.share(NOW + 6, "x").held]
    held += [s.coordination.share(NOW + 6, "x").held for s in (b, c)]
    assert sorted(len(h) for h in held) == [85, 85, 86]
    assert frozenset().union(*held) == frozenset(range(SHARDS))
    assert sum(len(h) for h in held) == SHARDS  # disjoint


def test_a_dead_daemons_shards_move_to_the_others(three) -> None:
    a, b, c = three
    daemons([a, b], NOW)
    a.coordination.share(NOW, "x")
    a.coordination.give_back(a.coordination.share(NOW, "x").surplus)
    assert len(b.coordination.share(NOW, "x").held) == SHARDS // 2
    # a stops beating (killed); b goes on, and once a is INSTANCE_TIMEOUT silent takes all.
    later = NOW + INSTANCE_TIMEOUT + 1
    b.coordination.heartbeat(later)
    assert b.coordination.share(later, "x").held == frozenset(range(SHARDS))
    # a, woken up, finds its shards gone: renewing by its old tokens keeps none of them.
    a.coordination.heartbeat(later + 1)
    share = a.coordination.share(later + 1, "x")
    assert len(share.held) == 0  # nothing free: b holds everything until it gives back
    assert len(b.coordination.share(later + 2, "x").surplus) == SHARDS // 2


def test_a_daemon_leases_only_the_sources_of_its_shards(three) -> None:
    a, b, _ = three
    daemons([a, b], NOW)
    a.coordination.give_back(a.coordination.share(NOW, "x").surplus)
    b_held = b.coordination.share(NOW, "x").held
    a_held = a.coordination.share(NOW, "x").held
    names = [f"s{i}" for i in range(200)]
    ours = [n for n in names if shard_of(n) in a_held]
    theirs = [n for n in names if shard_of(n) in b_held]
    assert ours and theirs
    assert set(a.coordination.lease_polls(names, NOW, NOW + 60)) == set(ours)
    assert set(b.coordination.lease_polls(names, NOW, NOW + 60)) == set(theirs)
    # A poll a user asked for (the console's "poll now") goes anywhere, once the lease is free.
    c = open_state(a.location)
    try:
        assert set(c.coordination.lease_polls(theirs, NOW, NOW + 60)) == set()
        extra = "extra-source"
        granted = a.coordination.lease_polls([extra], NOW, NOW + 60, anywhere=True)
        assert set(granted) == {extra}
    finally:
        c.close()


def test_a_stopping_daemon_gives_its_shards_back(three) -> None:
    a, b, _ = three
    daemons([a, b], NOW)
    a.coordination.give_back(a.coordination.share(NOW, "x").surplus)
    b.coordination.share(NOW, "x")
    a.coordination.release_daemon()  # `bridge run` stopping
    b.coordination.heartbeat(NOW + 1)
    assert b.coordination.share(NOW + 1, "x").held == frozenset(range(SHARDS))


def test_a_dead_instances_deliveries_are_claimable_at_once(three) -> None:
    dead, alive, third = three
    daemons([dead, alive], NOW)
    ev = NewEvent("evt_1", "s", "item.added", "k", NOW, b"{}", ("w",))
    row = SourceRow("s", baselined=True, last_poll_at=NOW)
    assert dead.snapshots.commit_polls([PollCommit(row, "changed", 0.1, events=[ev])]) == set()
    [d] = dead.outbox.claim_due("w", NOW, limit=5, lease=3600)
    assert alive.outbox.claim_due("w", NOW + 1, limit=5, lease=60) == []
    later = NOW + INSTANCE_TIMEOUT + 1
    alive.coordination.heartbeat(later)
    [again] = alive.outbox.claim_due("w", later, limit=5, lease=60)
    assert again.event_id == d.event_id
    # The dead one's late result does not free the new holder's lease: the source stays held.
    late = Finished(d.id, "pending", later + 1, 0.1, 500, "late", later + 2)
    dead.outbox.finish_attempts([late])
    assert third.outbox.claim_due("w", later + 3, limit=5, lease=60) == []


def poll_and_commit(state: State, name: str, token: int, at: float) -> None:
    """Commit a poll of `name` at `at` under its lease `token`."""
    row = SourceRow(name, baselined=True, last_poll_at=at)
    assert state.snapshots.commit_polls([PollCommit(row, "changed", 0.1, lease=token)]) == set()


def test_a_stray_is_leased_only_while_nobody_else_polls_it(three) -> None:
    holder, other, _ = three  # `holder` holds every shard; "x" is not in its config
    daemons([holder], NOW)
    holder.coordination.share(NOW, "config-1")
    daemons([other], NOW)
    share = other.coordination.share(NOW, "config-2")
    assert share.held == frozenset() and not share.agreed
    # The holder polled x a moment ago: it is no stray yet.
    poll_and_commit(holder, "x", holder.coordination.lease_polls(["x"], NOW, NOW + 60)["x"], NOW)
    assert other.coordination.lease_strays({"x": 10.0}, NOW + 5, NOW + 60) == {}
    # Nobody polled it for its 10 s: the other instance takes it, and keeps it while it is the
    # last to poll it, however recently.
    token = other.coordination.lease_strays({"x": 10.0}, NOW + 11, NOW + 60)["x"]
    poll_and_commit(other, "x", token, NOW + 11)
    token = other.coordination.lease_strays({"x": 10.0}, NOW + 13, NOW + 60)["x"]
    poll_and_commit(other, "x", token, NOW + 13)
    # The holder has it in its config now and polls it: the other steps back.
    poll_and_commit(
        holder, "x", holder.coordination.lease_polls(["x"], NOW + 14, NOW + 60)["x"], NOW + 14
    )
    assert other.coordination.lease_strays({"x": 10.0}, NOW + 15, NOW + 60) == {}


def test_instances_agree_when_their_configs_name_the_same_sources(three) -> None:
    a, b, _ = three
    daemons([a, b], NOW)
    assert a.coordination.share(NOW, "same").agreed is True  # b has not said yet: NULL
    assert b.coordination.share(NOW, "same").agreed is True
    assert a.coordination.share(NOW + 1, "other").agreed is False
    assert b.coordination.share(NOW + 1, "same").agreed is False
    assert a.coordination.share(NOW + 2, "same").agreed is True
