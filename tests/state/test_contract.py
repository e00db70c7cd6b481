"""The contract suite: every promise of bridge/state/base.py, held against every backend.

Only the Protocols are used here (no SQL): a new backend passes this file, or breaks a promise.
`state` is each backend of tests/state/conftest.py; `two_states` is one location opened twice,
two processes as far as leases and claims can tell.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import orjson
import pytest

from bridge.errors import StateError
from bridge.model import (
    Delivery,
    DeliveryStatus,
    FetchState,
    Finished,
    NewEvent,
    PollCommit,
    SourceRow,
)
from bridge.state import State, open_state

NOW = 1_700_000_000.0
_ids = itertools.count(1)


def event(
    source: str = "s",
    webhooks: tuple[str, ...] = ("w",),
    *,
    eid: str | None = None,
    at: float = NOW,
) -> NewEvent:
    eid = eid or f"evt_{next(_ids)}"
    body = orjson.dumps({"id": eid, "source": source})
    return NewEvent(eid, source, "item.added", eid, at, body, webhooks)


def poll(
    name: str = "s",
    *events: NewEvent,
    lease: int | None = None,
    at: float = NOW,
    upserts: tuple[tuple[str, str, bytes], ...] = (),
    deletes: tuple[str, ...] = (),
) -> PollCommit:
    row = SourceRow(name, baselined=True, last_poll_at=at, last_result="changed")
    return PollCommit(row, "changed", 0.1, list(upserts), list(deletes), list(events), lease=lease)


def item(key: str, value: object) -> tuple[str, str, bytes]:
    return key, f"h{value}", orjson.dumps({"key": key, "v": value})


def enqueue(
    state: State, *sources: str, webhooks: tuple[str, ...] = ("w",), at: float = NOW
) -> list[str]:
    """One event per source named, committed in that order, each to `webhooks`; their ids."""
    ids = []
    for source in sources:
        ev = event(source, webhooks, at=at)
        assert state.snapshots.commit_polls([poll(source, ev, at=at)]) == set()
        ids.append(ev.id)
    return ids


def claim(
    state: State,
    now: float = NOW,
    limit: int = 10,
    lease: float = 30.0,
    webhook: str = "w",
    finished: tuple[Finished, ...] = (),
) -> list[Delivery]:
    return state.outbox.claim_due(webhook, now, limit, lease, finished)


def done(
    d: Delivery,
    status: DeliveryStatus = "delivered",
    at: float = NOW + 1,
    http: int | None = 204,
    error: str | None = None,
    next_at: float | None = None,
) -> Finished:
    return Finished(d.id, status, at, 0.05, http, error, next_at)


def settle(
    state: State, status: DeliveryStatus, webhook: str = "w", at: float = NOW + 1
) -> Delivery:
    """Claim the next due delivery of `webhook` and record its attempt as `status`."""
    [d] = claim(state, webhook=webhook, limit=1)
    http, error = (204, None) if status == "delivered" else (500, "HTTP 500")
    state.outbox.finish_attempts([done(d, status, at, http, error)])
    return d


def statuses(state: State) -> list[tuple[str, str, str]]:
    """(event id, webhook, status) of every delivery, oldest first."""
    rows = state.admin.deliveries(limit=10_000)
    return [(r["event_id"], r["webhook"], r["status"]) for r in reversed(rows)]


# --- Snapshots: commit_polls is all or nothing ------------------------------------------------


def test_a_commit_writes_row_items_events_and_one_pending_delivery_per_webhook(state) -> None:
    first, second = event(webhooks=("a", "b")), event(webhooks=("a",))
    commit = poll("s", first, second, upserts=(item("k1", 1), item("k2", 2)))
    assert state.snapshots.commit_polls([commit]) == set()
    assert state.snapshots.source_row("s") == commit.row
    assert state.snapshots.item_hashes("s") == {"k1": "h1", "k2": "h2"}
    assert [e["id"] for e in state.admin.events()] == [second.id, first.id]
    assert sorted(statuses(state)) == sorted(
        [(first.id, "a", "pending"), (first.id, "b", "pending"), (second.id, "a", "pending")]
    )
    assert [eid for eid, _, _ in statuses(state)] == [first.id, first.id, second.id]


def test_deliveries_take_ids_in_the_order_of_their_events(state) -> None:
    events = [event(src, ("w", "x")) for src in ("s1", "s2", "s1", "s3")]
    commits = [poll("s1", events[0], events[2]), poll("s2", events[1]), poll("s3", events[3])]
    state.snapshots.commit_polls(commits)
    in_commit_order = [events[0], events[2], events[1], events[3]]
    rows = sorted(state.admin.deliveries(), key=lambda r: r["id"])
    assert [r["event_id"] for r in rows] == [e.id for e in in_commit_order for _ in "wx"]


def test_a_failed_commit_writes_nothing_of_any_poll_in_it(state) -> None:
    [kept] = enqueue(state, "old")
    fine = poll("a", event("a"), upserts=(item("k", 1),))
    duplicate = poll("b", event("b"), event("b", eid=kept), upserts=(item("k", 2),))
    with pytest.raises(StateError):
        state.snapshots.commit_polls([fine, duplicate])
    for name in ("a", "b"):
        assert state.snapshots.source_row(name) == SourceRow(name)
        assert state.snapshots.item_hashes(name) == {}
    assert [e["id"] for e in state.admin.events()] == [kept]
    assert statuses(state) == [(kept, "w", "pending")]
    assert state.snapshots.commit_polls([fine]) == set()  # and the state still takes writes
    assert state.snapshots.item_hashes("a") == {"k": "h1"}


# --- Snapshots: rows and items round trip ------------------------------------------------------


def test_source_row_round_trips_every_field(state) -> None:
    fetch = FetchState(
        etag='"v1"',
        last_modified="Tue, 01 Oct 2024 10:00:00 GMT",
        body_hash="abc",
        url="https://example.com/moved",
        extra={"cursor": "c2", "seen": [1, 2], "nested": {"a": None}},
    )
    row = SourceRow(
        "s",
        fetch,
        baselined=True,
        last_poll_at=NOW,
        last_result="error",
        last_error="HTTP 500",
        last_change_at=NOW - 60,
        next_poll_at=NOW + 60,
        failures=3,
        failing_since=NOW - 120,
        alerted=True,
    )
    state.snapshots.commit_polls([PollCommit(row, "error", 0.2)])
    assert state.snapshots.source_row("s") == row
    assert state.snapshots.source_rows() == {"s": row}


def test_source_row_of_a_source_never_polled_is_fresh(state) -> None:
    assert state.snapshots.source_row("nope") == SourceRow("nope")
    assert state.snapshots.source_rows() == {}


def test_source_rows_returns_every_stored_row(state) -> None:
    a, b = poll("a"), poll("b", at=NOW + 5)
    state.snapshots.commit_polls([a, b])
    assert state.snapshots.source_rows() == {"a": a.row, "b": b.row}


def test_items_round_trip_and_deletes_remove_them(state) -> None:
    state.snapshots.commit_polls([poll("s", upserts=(item("1", 1), item("2", 2), item("3", 3)))])
    state.snapshots.commit_polls([poll("s", upserts=(item("2", 20),), deletes=("3",))])
    state.snapshots.commit_polls([poll("other", upserts=(item("1", 9),))])
    assert state.snapshots.item_hashes("s") == {"1": "h1", "2": "h20"}
    assert state.snapshots.item_contents("s", ["2", "3", "missing"]) == {"2": {"key": "2", "v": 20}}
    assert state.snapshots.item_contents("other", ["1"]) == {"1": {"key": "1", "v": 9}}


def test_item_contents_takes_more_than_500_keys(state) -> None:
    keys = [f"k{i}" for i in range(1201)]
    state.snapshots.commit_polls([poll("s", upserts=tuple(item(k, i) for i, k in enumerate(keys)))])
    found = state.snapshots.item_contents("s", [*keys, "missing"])
    assert len(found) == 1201 and found["k1200"] == {"key": "k1200", "v": 1200}
    assert len(state.snapshots.item_hashes("s")) == 1201


# --- Snapshots: host blocks -------------------------------------------------------------------


def test_host_blocks_keep_the_later_of_two(state) -> None:
    now = time.time()
    state.snapshots.commit_polls([], host_blocks={"h": now + 100, "g": now + 10})
    state.snapshots.commit_polls([], host_blocks={"h": now + 50, "g": now + 20})
    assert state.snapshots.host_blocks(now) == {"h": now + 100, "g": now + 20}


def test_expired_host_blocks_are_not_returned(state) -> None:
    now = time.time()
    state.snapshots.commit_polls([], host_blocks={"h": now + 10, "gone": now - 1})
    assert state.snapshots.host_blocks(now) == {"h": now + 10}
    assert state.snapshots.host_blocks(now + 11) == {}


# --- Coordination: poll leases ----------------------------------------------------------------


def test_lease_polls_grants_a_source_once(state) -> None:
    granted = state.coordination.lease_polls(["a", "b"], NOW, NOW + 60)
    assert set(granted) == {"a", "b"}
    assert set(state.coordination.lease_polls(["a", "b", "c"], NOW + 1, NOW + 60)) == {"c"}


def test_a_live_lease_is_refused_to_another_state(two_states) -> None:
    first, second = two_states
    assert set(first.coordination.lease_polls(["a"], NOW, NOW + 60)) == {"a"}
    assert second.coordination.lease_polls(["a", "b"], NOW + 1, NOW + 60).keys() == {"b"}


def test_a_commit_under_its_lease_is_written_and_releases_it(two_states) -> None:
    first, second = two_states
    token = first.coordination.lease_polls(["s"], NOW, NOW + 60)["s"]
    commit = poll("s", event(), lease=token, upserts=(item("k", 1),))
    assert first.snapshots.commit_polls([commit]) == set()
    assert second.snapshots.source_row("s") == commit.row
    assert len(second.admin.events()) == 1
    assert set(second.coordination.lease_polls(["s"], NOW + 1, NOW + 60)) == {"s"}


def test_a_touch_under_its_lease_moves_the_times_and_releases_it(state) -> None:
    state.snapshots.commit_polls([poll("s", upserts=(item("k", 1),))])
    stored = state.snapshots.source_row("s")
    token = state.coordination.lease_polls(["s"], NOW + 60, NOW + 120)["s"]
    touched = replace(stored, last_poll_at=NOW + 61, next_poll_at=NOW + 90, last_result="unchanged")
    assert state.snapshots.commit_polls([], touched=[(touched, token)]) == set()
    assert state.snapshots.source_row("s") == touched
    assert state.snapshots.item_hashes("s") == {"k": "h1"}
    assert set(state.coordination.lease_polls(["s"], NOW + 62, NOW + 120)) == {"s"}


def test_one_commit_ends_the_leases_of_several_wake_ups_and_fences_a_lost_one(two_states) -> None:
    first, second = two_states
    early = first.coordination.lease_polls(["a", "b"], NOW, NOW + 10)
    late = first.coordination.lease_polls(["c"], NOW + 1, NOW + 60)
    assert set(second.coordination.lease_polls(["b"], NOW + 11, NOW + 60)) == {"b"}  # ran out
    leases = {**early, **late}  # (lease_polls promises no order)
    commits = [poll(n, lease=leases[n]) for n in ("a", "b", "c")]
    assert first.snapshots.commit_polls(commits) == {"b"}
    assert first.snapshots.source_row("a") == commits[0].row
    assert first.snapshots.source_row("b") != commits[1].row  # outlived its lease: not written
    # c's lease (until NOW + 60) ended with its commit; b is second's now.
    assert set(second.coordination.lease_polls(["a", "b", "c"], NOW + 12, NOW + 60)) == {"a", "c"}


def test_release_polls_frees_the_lease(two_states) -> None:
    first, second = two_states
    leases = first.coordination.lease_polls(["a", "b"], NOW, NOW + 60)
    first.coordination.release_polls({"a": leases["a"]})
    assert set(second.coordination.lease_polls(["a", "b"], NOW + 1, NOW + 60)) == {"a"}


def test_an_expired_lease_is_granted_again_with_a_new_token(state) -> None:
    old = state.coordination.lease_polls(["s"], NOW, NOW + 10)["s"]
    assert state.coordination.lease_polls(["s"], NOW + 5, NOW + 60) == {}
    new = state.coordination.lease_polls(["s"], NOW + 11, NOW + 60)["s"]
    assert new != old


def test_an_expired_lease_is_granted_to_another_state(two_states) -> None:
    first, second = two_states
    first.coordination.lease_polls(["s"], NOW, NOW + 10)
    assert set(second.coordination.lease_polls(["s"], NOW + 11, NOW + 60)) == {"s"}


def test_closing_a_state_releases_its_leases(two_states) -> None:
    first, _ = two_states
    owner = open_state(first.location)
    try:
        assert set(owner.coordination.lease_polls(["a", "b"], NOW, NOW + 60)) == {"a", "b"}
    finally:
        owner.close()
    assert set(first.coordination.lease_polls(["a", "b"], NOW + 1, NOW + 60)) == {"a", "b"}


def test_a_commit_under_a_stale_lease_is_fenced_out_and_writes_nothing(state) -> None:
    stale = state.coordination.lease_polls(["s"], NOW, NOW + 10)["s"]
    current = state.coordination.lease_polls(["s"], NOW + 11, NOW + 60)["s"]
    late = poll("s", event(), lease=stale, upserts=(item("k", 1),))
    assert state.snapshots.commit_polls([late]) == {"s"}
    assert state.snapshots.source_row("s") == SourceRow("s")
    assert state.snapshots.item_hashes("s") == {}
    assert state.admin.events() == [] and state.admin.deliveries() == []
    assert state.snapshots.commit_polls([poll("s", lease=current)]) == set()
    assert set(state.coordination.lease_polls(["s"], NOW + 12, NOW + 60)) == {"s"}


def test_a_poll_fenced_out_by_another_state_writes_nothing_and_keeps_its_lease(
    two_states,
) -> None:
    first, second = two_states
    stale = first.coordination.lease_polls(["s"], NOW, NOW + 10)["s"]
    live = first.coordination.lease_polls(["t"], NOW, NOW + 60)["t"]
    second.coordination.lease_polls(["s"], NOW + 11, NOW + 60)
    late = poll("s", event("s"), lease=stale, upserts=(item("k", 1),))
    on_time = poll("t", event("t"), lease=live)
    assert first.snapshots.commit_polls([late, on_time]) == {"s"}
    assert second.snapshots.source_row("s") == SourceRow("s")
    assert second.snapshots.item_hashes("s") == {}
    assert [e["source"] for e in second.admin.events()] == ["t"]  # the other poll is written
    assert first.coordination.lease_polls(["s"], NOW + 12, NOW + 60) == {}  # second's, still


def test_a_touch_under_a_stale_lease_is_fenced_out(two_states) -> None:
    first, second = two_states
    first.snapshots.commit_polls([poll("s")])
    stored = first.snapshots.source_row("s")
    stale = first.coordination.lease_polls(["s"], NOW + 60, NOW + 70)["s"]
    second.coordination.lease_polls(["s"], NOW + 71, NOW + 120)
    touched = replace(stored, last_poll_at=NOW + 72, next_poll_at=NOW + 100)
    assert first.snapshots.commit_polls([], touched=[(touched, stale)]) == {"s"}
    assert second.snapshots.source_row("s") == stored
    assert first.coordination.lease_polls(["s"], NOW + 73, NOW + 120) == {}


def test_a_commit_without_a_lease_is_not_fenced(state) -> None:
    state.coordination.lease_polls(["s"], NOW, NOW + 60)
    commit = poll("s", event())
    assert state.snapshots.commit_polls([commit]) == set()
    assert state.snapshots.source_row("s") == commit.row


# --- Snapshots: the pending confirmations of `confirm:` --------------------------------------


def held(
    name: str,
    confirmations: dict[str, tuple[str, int]] | None,
    *events: NewEvent,
    lease: int | None = None,
    upserts: tuple[tuple[str, str, bytes], ...] = (),
) -> PollCommit:
    commit = poll(name, *events, lease=lease, upserts=upserts)
    commit.confirmations = confirmations
    return commit


def test_confirmations_are_replaced_per_source_and_kept_when_none(two_states) -> None:
    first, second = two_states
    assert first.snapshots.confirmations("s") == {}
    first.snapshots.commit_polls([held("s", {"a": ("h1", 1), "b": ("-", 2)}), held("t", {})])
    assert second.snapshots.confirmations("s") == {"a": ("h1", 1), "b": ("-", 2)}  # read back
    first.snapshots.commit_polls([held("s", {"a": ("h1", 2)}), held("t", {"x": ("h", 1)})])
    assert second.snapshots.confirmations("s") == {"a": ("h1", 2)}  # b is no longer pending
    first.snapshots.commit_polls([held("s", None)])  # a poll that moved no count
    assert second.snapshots.confirmations("s") == {"a": ("h1", 2)}
    first.snapshots.commit_polls([held("s", {})])
    assert second.snapshots.confirmations("s") == {}
    assert second.snapshots.confirmations("t") == {"x": ("h", 1)}  # one source's, not another's


def test_confirmations_are_written_with_their_poll_or_not_at_all(state) -> None:
    state.snapshots.commit_polls([held("s", {"a": ("h1", 1)})])
    stale = state.coordination.lease_polls(["s"], NOW, NOW + 10)["s"]
    state.coordination.lease_polls(["s"], NOW + 11, NOW + 60)
    late = held("s", {"a": ("h1", 2)}, lease=stale, upserts=(item("k", 1),))
    assert state.snapshots.commit_polls([late]) == {"s"}
    assert state.snapshots.confirmations("s") == {"a": ("h1", 1)}  # fenced out with its poll
    [kept] = enqueue(state, "old")
    duplicate = held("t", {"z": ("h", 1)}, event("t", eid=kept))
    with pytest.raises(StateError):  # the whole commit fails: its confirmations too
        state.snapshots.commit_polls([duplicate])
    assert state.snapshots.confirmations("t") == {}


# --- Outbox: claims keep one delivery per source in flight ------------------------------------


def test_claim_takes_due_deliveries_oldest_first_up_to_limit(state) -> None:
    ids = enqueue(state, "s1", "s2", "s3")
    enqueue(state, "s4", at=NOW + 100)  # not due yet
    claimed = claim(state, limit=2)
    assert [d.event_id for d in claimed] == ids[:2]
    assert claimed[0].source == "s1" and claimed[0].attempts == 0 and claimed[0].webhook == "w"
    assert orjson.loads(claimed[0].body) == {"id": ids[0], "source": "s1"}
    assert [d.event_id for d in claim(state)] == ids[2:]


def test_one_claim_takes_at_most_one_delivery_per_source(state) -> None:
    ids = enqueue(state, "s1", "s1", "s2", "s1", "s2")
    assert [d.event_id for d in claim(state)] == [ids[0], ids[2]]


def test_a_source_in_flight_is_not_claimed_again(state) -> None:
    ids = enqueue(state, "s1", "s1", "s2")
    claim(state, limit=1)
    assert [d.event_id for d in claim(state, NOW + 1)] == [ids[2]]
    assert claim(state, NOW + 2) == []


def test_a_source_in_flight_in_another_state_is_not_claimed(two_states) -> None:
    first, second = two_states
    ids = enqueue(first, "s1", "s1", "s2")
    assert [d.event_id for d in claim(first, limit=1)] == [ids[0]]
    assert [d.event_id for d in claim(second, NOW + 1)] == [ids[2]]
    assert claim(first, NOW + 2) == [] and claim(second, NOW + 2) == []


def test_after_finish_the_next_delivery_of_the_source_is_claimable(two_states) -> None:
    first, second = two_states
    ids = enqueue(first, "s1", "s1")
    [d] = claim(first)
    first.outbox.finish_attempts([done(d)])
    assert [d.event_id for d in claim(second, NOW + 2)] == [ids[1]]


def test_finished_given_to_claim_due_are_recorded_before_it_claims(state) -> None:
    ids = enqueue(state, "s1", "s1")
    [d] = claim(state)
    assert [d.event_id for d in claim(state, NOW + 2, finished=(done(d),))] == [ids[1]]
    assert [r["status"] for r in state.admin.deliveries()] == ["pending", "delivered"]


def test_an_expired_delivery_lease_makes_it_claimable_again(two_states) -> None:
    first, second = two_states
    [eid, _] = enqueue(first, "s1", "s1")
    claim(first, lease=30)
    assert claim(second, NOW + 20) == []
    [again] = claim(second, NOW + 31)
    assert again.event_id == eid


def test_a_retry_is_due_at_its_next_attempt(state) -> None:
    [eid] = enqueue(state, "s1")
    [d] = claim(state)
    state.outbox.finish_attempts([done(d, "pending", NOW + 1, 500, "HTTP 500", NOW + 60)])
    assert claim(state, NOW + 59) == []
    [again] = claim(state, NOW + 60)
    assert (again.event_id, again.attempts) == (eid, 1)


def test_next_due_is_when_the_earliest_pending_delivery_can_be_claimed(state) -> None:
    assert state.outbox.next_due("w") is None
    enqueue(state, "s1", at=NOW + 5)
    enqueue(state, "s2", at=NOW + 9)
    assert state.outbox.next_due("w") == NOW + 5
    [d] = claim(state, NOW + 5, limit=1, lease=30)
    assert state.outbox.next_due("w") == NOW + 9  # s1 is leased until NOW + 35
    state.outbox.finish_attempts([done(d, "pending", NOW + 6, 500, "HTTP 500", NOW + 99)])
    assert state.outbox.next_due("w") == NOW + 9
    assert state.outbox.next_due("other") is None


def test_next_due_waits_for_a_source_in_flight(state) -> None:
    enqueue(state, "s1", "s1")
    claim(state, limit=1, lease=30)
    due = state.outbox.next_due("w")
    assert due is not None and due >= NOW + 30 and claim(state, due - 0.5) == []


def test_a_discarded_delivery_in_flight_still_holds_its_source_back(state) -> None:
    enqueue(state, "s1", "s1")
    [d] = claim(state, lease=30)
    assert state.admin.discard(NOW + 1, event_ids=[d.event_id]) == (1, 1)
    assert claim(state, NOW + 2) == []  # its attempt is still in flight
    state.outbox.finish_attempts([done(d, "pending", NOW + 3, 500, "HTTP 500", NOW + 60)])
    assert len(claim(state, NOW + 4)) == 1


def test_a_failed_attempt_of_a_discarded_delivery_leaves_it_dead_with_the_discard_reason(
    state,
) -> None:
    enqueue(state, "s1", "s2")
    retried, gone = claim(state)
    assert state.admin.discard(NOW + 1) == (2, 2)
    reasons = {r["id"]: r["last_error"] for r in state.admin.deliveries()}
    assert all(reasons.values())
    state.outbox.finish_attempts(
        [
            done(retried, "pending", NOW + 2, 500, "HTTP 500", NOW + 60),
            done(gone, "dead", NOW + 2, 410, "HTTP 410"),
        ]
    )
    after = {r["id"]: (r["status"], r["last_error"]) for r in state.admin.deliveries()}
    assert after == {i: ("dead", reason) for i, reason in reasons.items()}
    assert claim(state, NOW + 61) == []


def test_a_delivered_attempt_of_a_discarded_delivery_makes_it_delivered(state) -> None:
    enqueue(state, "s1")
    [d] = claim(state)
    state.admin.discard(NOW + 1, event_ids=[d.event_id])
    state.outbox.finish_attempts([done(d, "delivered", NOW + 2)])
    [row] = state.admin.deliveries()
    assert (row["status"], row["attempts"]) == ("delivered", 1)


# --- Admin: listings ---------------------------------------------------------------------------


def test_events_are_newest_first_and_filter_by_source(state) -> None:
    ids = enqueue(state, "a", "b", "a")
    events = state.admin.events()
    assert [e["id"] for e in events] == ids[::-1]
    assert events[0] == {
        "id": ids[2],
        "source": "a",
        "type": "item.added",
        "key": ids[2],
        "created_at": NOW,
        "event": {"id": ids[2], "source": "a"},
    }
    assert [e["id"] for e in state.admin.events(source="a")] == [ids[2], ids[0]]
    assert [e["id"] for e in state.admin.events(limit=1)] == [ids[2]]


def test_deliveries_are_newest_first_and_filter_by_status_and_webhook(state) -> None:
    ids = enqueue(state, "a", "b", webhooks=("w", "x"))
    settle(state, "dead", webhook="x")
    everything = state.admin.deliveries()
    assert [r["event_id"] for r in everything] == [ids[1], ids[1], ids[0], ids[0]]
    [dead] = state.admin.deliveries(status="dead")
    assert (dead["event_id"], dead["webhook"], dead["type"]) == (ids[0], "x", "item.added")
    assert (dead["attempts"], dead["last_error"], dead["source"]) == (1, "HTTP 500", "a")
    assert [r["event_id"] for r in state.admin.deliveries(status="pending", webhook="x")] == [
        ids[1]
    ]
    assert len(state.admin.deliveries(webhook="w", limit=1)) == 1


def test_attempts_are_listed_oldest_first(state) -> None:
    enqueue(state, "a")
    [d] = claim(state)
    state.outbox.finish_attempts([done(d, "pending", NOW + 1, 503, "HTTP 503", NOW + 2)])
    claim(state, NOW + 2)
    state.outbox.finish_attempts([done(d, "delivered", NOW + 3)])
    attempts = state.admin.attempts(d.id)
    assert [(a["at"], a["status"], a["error"]) for a in attempts] == [
        (NOW + 1, 503, "HTTP 503"),
        (NOW + 3, 204, None),
    ]
    assert attempts[0]["duration"] == pytest.approx(0.05)


def test_delivery_counts_name_every_webhook_even_at_zero(state) -> None:
    enqueue(state, "a", "b", "c", webhooks=("w",))
    settle(state, "delivered")
    settle(state, "dead")
    assert state.admin.delivery_counts(["w", "quiet"]) == {
        "w": {"pending": 1, "delivered": 1, "dead": 1},
        "quiet": {"pending": 0, "delivered": 0, "dead": 0},
    }
    assert set(state.admin.delivery_counts()) == {"w"}


def test_pending_by_webhook(state) -> None:
    enqueue(state, "a", "b", webhooks=("w", "x"))
    settle(state, "delivered", webhook="x")
    assert state.admin.pending_by_webhook() == {"w": 2, "x": 1}


# --- Admin: queue changes ---------------------------------------------------------------------


def test_requeue_dead_only_keeps_the_event_id_and_attempt_history(state) -> None:
    ids = enqueue(state, "a", "b", "c")
    dead = settle(state, "dead")
    settle(state, "delivered")
    assert state.admin.requeue(NOW + 10, dead=True) == 1
    assert statuses(state) == [
        (ids[0], "w", "pending"),
        (ids[1], "w", "delivered"),
        (ids[2], "w", "pending"),
    ]
    assert len(state.admin.attempts(dead.id)) == 1
    [again] = claim(state, NOW + 10, limit=1)
    assert (again.id, again.event_id) == (dead.id, ids[0])


def test_requeue_by_event_ids(state) -> None:
    ids = enqueue(state, "a", "b", "c")
    for _ in ids:
        settle(state, "delivered")
    assert state.admin.requeue(NOW + 10, event_ids=[ids[0], ids[2], "evt_unknown"]) == 2
    assert [s for _, _, s in statuses(state)] == ["pending", "delivered", "pending"]


def test_requeue_by_webhook_and_source_restricted_to_webhooks(state) -> None:
    enqueue(state, "a", "b", webhooks=("w", "x", "y"))
    for webhook in ("w", "x", "y"):
        settle(state, "dead", webhook)
        settle(state, "dead", webhook)
    assert state.admin.requeue(NOW + 10, webhook="x", source="b") == 1
    assert state.admin.requeue(NOW + 10, source="a", webhooks=["w", "y"]) == 2
    pending = {(r["webhook"], r["source"]) for r in state.admin.deliveries(status="pending")}
    assert pending == {("x", "b"), ("w", "a"), ("y", "a")}
    assert state.admin.requeue(NOW + 10, dead=True, webhooks=[]) == 0


def test_add_deliveries_queues_only_webhooks_without_one(state) -> None:
    [eid] = enqueue(state, "a", webhooks=("w",))
    assert state.admin.add_deliveries(eid, ["w", "x", "y"], NOW + 5) == 2
    assert state.admin.add_deliveries(eid, ["x"], NOW + 6) == 0
    assert state.admin.add_deliveries("evt_unknown", ["x"], NOW + 6) == 0
    assert sorted(state.admin.pending_by_webhook().items()) == [("w", 1), ("x", 1), ("y", 1)]
    [d] = claim(state, NOW + 5, webhook="y")
    assert (d.event_id, d.source) == (eid, "a")


def test_discard_returns_discarded_and_in_flight(state) -> None:
    ids = enqueue(state, "a", "b", "c", webhooks=("w", "x"))
    claim(state, limit=1)  # a's delivery to w is in flight
    settle(state, "delivered", webhook="x")  # a's to x is done: not pending, not discarded
    assert state.admin.discard(NOW + 1, source="a") == (1, 1)
    assert state.admin.discard(NOW + 1, webhook="x", source="b") == (1, 0)
    assert state.admin.discard(NOW + 1, event_ids=[ids[2]]) == (2, 0)
    assert state.admin.delivery_counts() == {
        "w": {"pending": 1, "delivered": 0, "dead": 2},
        "x": {"pending": 0, "delivered": 1, "dead": 2},
    }


def test_event_ids_known_takes_more_than_500_ids(state) -> None:
    events = [event("a") for _ in range(1201)]
    state.snapshots.commit_polls([poll("a", *events)])
    asked = [e.id for e in events] + [f"evt_unknown{i}" for i in range(300)]
    assert state.admin.event_ids_known(asked) == {e.id for e in events}
    assert state.admin.event_ids_known([]) == set()


def test_trim_deletes_old_history_but_keeps_pending_deliveries_and_their_events(state) -> None:
    old = enqueue(state, "a", "b", "c", at=NOW - 1000)
    delivered = settle(state, "delivered", at=NOW - 900)
    settle(state, "dead", at=NOW - 900)
    [recent] = enqueue(state, "d", at=NOW)
    assert state.admin.trim(NOW - 100, batch=1) > 0
    assert [e["id"] for e in state.admin.events()] == [recent, old[2]]
    assert statuses(state) == [(old[2], "w", "pending"), (recent, "w", "pending")]
    assert state.admin.attempts(delivered.id) == []
    assert state.admin.trim(NOW - 100) == 0


# --- generation, health ------------------------------------------------------------------------


def test_generation_stays_equal_without_writes(state) -> None:
    enqueue(state, "a")
    seen = state.snapshots.generation()
    state.snapshots.source_rows()
    state.admin.events()
    assert state.snapshots.generation() == seen


def test_generation_changes_after_another_state_commits(two_states) -> None:
    first, second = two_states
    seen = first.snapshots.generation()
    assert first.snapshots.generation() == seen
    enqueue(second, "a")
    changed = first.snapshots.generation()
    assert changed != seen
    assert first.snapshots.generation() == changed


def test_a_healthy_state_is_writable(state) -> None:
    assert state.writable() is True


# --- Admin.sources: the console's listing, with the sources another instance schedules -------


def scheduled(state: State, name: str, last: float, due: float | None, failures: int = 0) -> None:
    """Store a source row polled at `last`, next due at `due`."""
    row = SourceRow(name, baselined=True, last_poll_at=last, next_poll_at=due, failures=failures)
    assert state.snapshots.commit_polls([PollCommit(row, "unchanged", 0.1, [], [], [])]) == set()


def test_sources_pages_the_names_given_and_those_another_instance_still_schedules(state) -> None:
    scheduled(state, "a", NOW - 60, NOW + 60)  # listed and stored: shown once, in its place
    scheduled(state, "b1", NOW - 60, NOW + 60)  # due ahead
    scheduled(state, "b2", NOW - 360, NOW - 300, failures=2)  # overdue inside the grace
    scheduled(state, "slow", NOW - 7200, NOW - 3000)  # overdue inside its own interval (70 min)
    scheduled(state, "gone", NOW - 3660, NOW - 3600)  # in no config any more: long overdue
    scheduled(state, "never", NOW - 60, None)  # not scheduled at all
    admin = state.admin

    def names(found: tuple[int, list[SourceRow]]) -> tuple[int, list[str]]:
        return found[0], [row.name for row in found[1]]

    # Without scheduled_at: only the names given (bridge status), a fresh row for one unstored.
    assert names(admin.sources(["z", "a"])) == (2, ["z", "a"])
    everything = admin.sources(["z", "a"], scheduled_at=NOW)
    assert names(everything) == (5, ["z", "a", "b1", "b2", "slow"])
    assert everything[1][0] == SourceRow("z")
    assert (everything[1][3].failures, everything[1][3].next_poll_at) == (2, NOW - 300)
    paged = admin.sources(["z", "a"], scheduled_at=NOW, offset=1, limit=2)
    assert names(paged) == (5, ["a", "b1"])
    assert names(admin.sources(["z", "a"], scheduled_at=NOW, match="B")) == (2, ["b1", "b2"])
    assert names(admin.sources(["z", "a"], scheduled_at=NOW, failing=True)) == (1, ["b2"])
    assert admin.sources(["z", "a"], scheduled_at=NOW, limit=0) == (5, [])
    # One by name: a stored row still scheduled, or none (long overdue, or never stored).
    assert names(admin.sources([], scheduled_at=NOW, only="b1")) == (1, ["b1"])
    assert names(admin.sources([], scheduled_at=NOW, only="gone")) == (0, [])
    assert names(admin.sources([], scheduled_at=NOW, only="nowhere")) == (0, [])
    assert names(admin.sources(["z", "a"], only="a")) == (1, ["a"])
    # Later, b1 and b2 are past the grace, slow not yet past its interval; the listed "a" is
    # shown whatever its times.
    later = admin.sources(["a"], scheduled_at=NOW + 1000)
    assert names(later) == (2, ["a", "slow"])


def test_deliveries_filter_by_source(state) -> None:
    ids = enqueue(state, "a", "b", "a", webhooks=("w", "x"))
    of_a = state.admin.deliveries(source="a")
    assert [(r["event_id"], r["webhook"]) for r in of_a] == [
        (ids[2], "x"),
        (ids[2], "w"),
        (ids[0], "x"),
        (ids[0], "w"),
    ]
    assert [r["event_id"] for r in state.admin.deliveries(source="b", webhook="x")] == [ids[1]]
    assert state.admin.deliveries(source="c") == []
