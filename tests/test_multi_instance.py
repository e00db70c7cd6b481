"""Several `bridge run` on one PostgreSQL database (issue 16, SPEC §9): real processes with the
same config, a real origin and receiver.

One run, in phases, sharing its processes (each phase's wait is the slow part):

A. Three instances. Every source is polled once per tick, not once per instance (never two polls
   of it within half an interval, over the whole run); never by two at once; the sources are
   spread over the three, and none goes unpolled longer than a move between instances takes;
   one source's events reach the receiver in the order they were created. Then one instance is
   killed with kill -9: its sources are polled by the others, and every event committed before
   the kill is delivered, within max(2 intervals, 30 s) of the kill.
B. Meanwhile, with the receiver slow, a kill -9 loop across the two others (each killed and
   started again) while the origin keeps changing. At the end every committed event was
   delivered at least once, and the duplicates (a webhook-id twice) are no more than what the
   kills can have caught in flight: kills x the webhook's concurrency.

The origin (tests/tracking.py) answers each request with a new version of its one item, so
each poll is a change; it records which instance sent each request (the X-Instance header,
`${INSTANCE}` in the shared config) and the most requests of one path it had in flight.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from bridge.state import open_state
from bridge.state.base import HEARTBEAT_INTERVAL
from tests.conftest import SECRET, Receiver, bridge_config, http_source, wait_for, webhook
from tests.fleet import Run, stop_all
from tests.state.conftest import postgresql_database  # noqa: F401 (a fixture)
from tests.tracking import Hit, TrackingOrigin

pytestmark = pytest.mark.slow  # five `bridge run` processes and a takeover after kill -9

ENV = {"HOOK_SECRET": SECRET}
INTERVAL = 2.0  # every source's `every:`
SOURCES = [f"src{i:02d}" for i in range(16)]
HOLD = 0.3  # each request to the origin is held this long, so overlapping polls would show
CONCURRENCY = 2  # the webhook's requests in flight per instance
TAKEOVER = max(2 * INTERVAL, 30.0)  # SPEC §9: a killed instance's work moves on within this


def config(path: Path, origin: TrackingOrigin, receiver: Receiver, url: str) -> Path:
    options = {
        "items": "@",
        "key": "id",
        "every": f"{INTERVAL:g}s",
        "jitter": "0s",
        "timeout": "5s",
        "headers": {"X-Instance": "${INSTANCE}"},
        "webhooks": ["hook"],
    }
    sources = [http_source(name, origin.url(f"/{name}"), **options) for name in SOURCES]
    hook = webhook(
        receiver.url(),
        "${HOOK_SECRET}",
        retry=["100ms"] * 20,
        concurrency=CONCURRENCY,
        timeout="2s",
        headers={"X-Instance": "${INSTANCE}"},
    )
    # per_host: all sources are on one host; its lane must not delay polls past their tick.
    text = bridge_config(
        *sources, state=url, grace="2s", http={"per_host": 16}, webhooks={"hook": hook}
    )
    path.write_text(text)
    return path


def by_source(hits: list[Hit]) -> dict[str, list[Hit]]:
    polls: dict[str, list[Hit]] = defaultdict(list)
    for hit in hits:
        polls[hit.path.lstrip("/")].append(hit)
    return polls


def evidence(hits: list[Hit], since: float) -> str:
    """Per source, each poll as TICK:INSTANCE (ticks of INTERVAL since `since`); per instance,
    its polls: what a failure shows."""
    lines = []
    for name, polls in sorted(by_source(hits).items()):
        ticks = " ".join(f"{(h.start - since) / INTERVAL:.1f}:{h.instance}" for h in polls)
        lines.append(f"{name}: {ticks}")
    counts = Counter(h.instance for h in hits)
    lines.append("per instance: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def stored_events(url: str) -> dict[str, dict[str, object]]:
    """Every committed event by id, read through the state as any command would."""
    state = open_state(url)
    try:
        return {e["id"]: e for e in state.admin.events(limit=1_000_000)}
    finally:
        state.close()


def pending(url: str) -> int:
    state = open_state(url)
    try:
        return sum(c["pending"] for c in state.admin.delivery_counts().values())
    finally:
        state.close()


def test_three_instances_share_the_sources_and_survive_kill_9(
    tmp_path: Path,
    postgresql_database: str,  # noqa: F811 (the fixture imported above)
) -> None:
    url = postgresql_database
    receiver = Receiver()
    receiver.server.start()
    runs: dict[str, Run] = {}
    timings: dict[str, float] = {}
    try:
        with TrackingOrigin() as origin:
            for name in SOURCES:
                origin.serve(f"/{name}", moving=True, delay=HOLD)
            # A slow receiver: deliveries wait in the queue and are in flight at each kill.
            receiver.delay = 0.3
            path = config(tmp_path / "bridge.yaml", origin, receiver, url)
            started = time.time()
            for label in ("i1", "i2", "i3"):
                runs[label] = Run(path, label, tmp_path, ENV)

            # --- A: the three share the work --------------------------------------------------
            # Shards move at the instances' beats until each holds its share: wait until the
            # last two ticks saw every source polled, by all three instances.
            def last_ticks() -> list[Hit]:
                return [h for h in origin.record() if h.start >= time.time() - 2 * INTERVAL - 1]

            def shared() -> bool:
                window = last_ticks()
                return {h.instance for h in window} == {"i1", "i2", "i3"} and len(
                    by_source(window)
                ) == len(SOURCES)

            try:
                wait_for(shared, timeout=40, interval=0.2)
            except AssertionError:
                raise AssertionError(
                    f"the three never shared the sources\n{evidence(origin.record(), started)}"
                ) from None
            timings["sharing"] = time.time() - started
            owner = {name: polls[-1].instance for name, polls in by_source(last_ticks()).items()}
            spread = Counter(owner.values())

            # --- the kill -9 of one, and (B) a kill -9 loop across the other two --------------
            victim = max(spread, key=lambda label: spread[label])  # the one with most sources
            its_sources = {name for name, label in owner.items() if label == victim}
            committed_before = set(stored_events(url))
            runs[victim].kill()
            killed_at = time.time()
            kills = 1
            # Before the kill, no source went unpolled for longer than a move between instances
            # takes (the giver's last tick, a beat, the taker's first tick).
            for name, polls in by_source(origin.record()).items():
                gap = max(
                    (b.start - a.start for a, b in zip(polls, polls[1:], strict=False)), default=0.0
                )
                assert gap <= 2 * INTERVAL + HEARTBEAT_INTERVAL, (
                    f"{name} not polled for {gap:.1f}s\n{evidence(origin.record(), started)}"
                )
                timings["longest gap before the kill"] = max(
                    gap, timings.get("longest gap before the kill", 0.0)
                )

            # A: the victim's sources polled by others, its deliveries made, within TAKEOVER
            # (watched from the kill on, through B's loop).
            def polled_again() -> bool:
                after = {h.path.lstrip("/") for h in origin.record() if h.start > killed_at}
                return its_sources <= after

            def delivered_before_kill() -> bool:
                return committed_before <= {r.headers["webhook-id"] for r in receiver.received}

            checks = {"polled again": polled_again, "delivered": delivered_before_kill}

            def watch(until: float) -> None:
                # Until then (or until every check passed), note when each first passed.
                while checks and time.time() < min(until, killed_at + TAKEOVER):
                    for what, check in list(checks.items()):
                        if check():
                            timings[what] = time.time() - killed_at
                            del checks[what]
                    time.sleep(0.2)

            others = [label for label in ("i1", "i2", "i3") if label != victim]
            loop = [(others[0], f"{others[0]}b"), (others[1], f"{others[1]}b")]
            loop.append((loop[0][1], f"{others[0]}c"))
            for old, new in loop:
                step = time.time() + 2.0
                watch(step)
                time.sleep(max(0.0, step - time.time()))
                runs[old].kill()
                last_kill = time.time()
                kills += 1
                runs[new] = Run(path, new, tmp_path, ENV)
            origin.freeze()  # no more changes: the queue can drain
            watch(killed_at + TAKEOVER)
            hits = origin.record()
            assert "polled again" in timings, (
                f"{victim}'s sources {sorted(its_sources)} not polled within {TAKEOVER:.0f}s "
                f"of its kill\n{evidence(hits, started)}"
            )
            assert "delivered" in timings, (
                f"{len(committed_before - {r.headers['webhook-id'] for r in receiver.received})}"
                f" events committed before the kill not delivered within {TAKEOVER:.0f}s"
            )

            # B: once the last kill's leases are free, everything committed goes out.
            def drained() -> bool:
                received = {r.headers["webhook-id"] for r in receiver.received}
                return pending(url) == 0 and set(stored_events(url)) <= received

            wait_for(drained, timeout=45, interval=0.5)
            timings["drained after the last kill"] = time.time() - last_kill
            hits = origin.record()
            most_in_flight = dict(origin.most_in_flight)
    finally:
        codes = stop_all(list(runs.values()))
        receiver.server.stop()
    events = stored_events(url)
    received = [r.headers["webhook-id"] for r in receiver.received]
    duplicates = len(received) - len(set(received))
    sent_by = Counter(r.headers.get("X-Instance", "?") for r in receiver.received)
    gaps = {
        name: min(
            (b.start - a.start for a, b in zip(polls, polls[1:], strict=False)), default=INTERVAL
        )
        for name, polls in by_source(hits).items()
    }
    print(
        f"kills {kills}; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + f"; sources at the kill {dict(spread)}; shortest gap between two polls of a source "
        f"{min(gaps.values()):.2f}s; events {len(events)}, deliveries {len(received)}, "
        f"duplicates {duplicates}; deliveries per instance {dict(sorted(sent_by.items()))}"
    )

    # No source was polled by two at once, and none more than once per tick.
    assert set(most_in_flight.values()) == {1}, most_in_flight
    for name, gap in gaps.items():
        assert gap >= INTERVAL / 2, f"{name} polled twice in a tick\n{evidence(hits, started)}"

    # Every committed event was delivered at least once; the duplicates were in flight at kills.
    assert set(received) == set(events)
    assert duplicates <= kills * CONCURRENCY, (duplicates, kills)
    # One source's events arrived in the order they were created (each poll saw a new version).
    firsts: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for r in receiver.received:
        if r.headers["webhook-id"] not in seen:
            seen.add(r.headers["webhook-id"])
            firsts[r.json["data"]["source"]].append(r.json["data"]["after"]["v"])
    for name, versions in firsts.items():
        assert versions == sorted(set(versions)), (name, versions)

    assert codes and set(codes.values()) == {0}, codes  # the live ones stopped cleanly
    for label, run in runs.items():
        assert "Traceback" not in run.log(), (label, run.log())
