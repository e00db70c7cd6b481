"""Schedules: first runs after a restart, intervals firing, crontab weekdays as crontab means."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest

from bridge.model import SourceSpec
from bridge.polling.lanes import let_go
from bridge.polling.scheduler import MAX_START_SPREAD, PollFunc, Scheduler, first_run


def spec(name: str = "s", every: float | None = 60.0, cron: str | None = None, jitter=6.0):
    return SourceSpec(
        name=name, kind="http", every=every, cron=cron, jitter=jitter, timeout=10.0, on=None,
        on_first_poll="baseline", alert_after=None, max_bytes=1 << 20, webhooks=(), ignore=(),
    )  # fmt: skip


def test_first_run_after_restart() -> None:
    rng = random.Random(3)
    now = 1_000_000.0
    never = [first_run(spec(), None, now, rng) for _ in range(100)]
    assert all(now <= t <= now + 6.0 for t in never) and max(never) - min(never) > 1
    # Polled 10 s ago with a 60 s interval: next at last poll + interval (+ jitter).
    recent = first_run(spec(), now - 10, now, rng)
    assert now + 50 <= recent <= now + 56
    overdue = first_run(spec(), now - 3600, now, rng)
    assert now <= overdue <= now + 6.0
    # A long jitter never delays the first poll by more than the start spread.
    lazy = [first_run(spec(every=3600, jitter=600), None, now, rng) for _ in range(50)]
    assert max(lazy) <= now + MAX_START_SPREAD


@pytest.mark.slow  # lets the scheduler run for 1.6 s
async def test_interval_jobs_fire_and_cron_uses_crontab_weekdays() -> None:
    polled: list[str] = []

    async def poll(name: str) -> None:
        polled.append(name)

    scheduler = Scheduler(poll, rng=random.Random(1))
    scheduler.start()
    try:
        scheduler.schedule(spec("fast", every=0.2, jitter=0.0), None)
        # Crontab day 1 is Monday (APScheduler's own numbering would make it Tuesday).
        scheduler.schedule(spec("monday", every=None, cron="0 9 * * 1", jitter=0.0), 1.0)
        await asyncio.sleep(1.6)
        assert polled.count("fast") >= 3
        when = datetime.fromtimestamp(scheduler.next_run("monday") or 0, UTC)
        assert (when.weekday(), when.hour, when.minute) == (0, 9, 0)
        scheduler.unschedule("fast")
        assert scheduler.names() == {"monday"}
    finally:
        scheduler.shutdown()


async def run_until_polled(scheduler: Scheduler, names: list[str], polled: list[str]) -> None:
    """Start the scheduler with `names` due at once (every 60 s), until `polled` has as many
    (at most 10 s), then shut it down."""
    scheduler.start()
    try:
        for name in names:
            scheduler.schedule(spec(name, every=60.0, jitter=0.0), None)
        for _ in range(500):
            if len(polled) == len(names):
                break
            await asyncio.sleep(0.02)
    finally:
        scheduler.shutdown()


async def test_lanes_bound_each_hosts_polls_and_run_every_one() -> None:
    running: dict[str | None, int] = {}
    most: dict[str | None, int] = {}
    polled: list[str] = []
    lanes = {**{f"a{i}": "a" for i in range(30)}, **{f"b{i}": "b" for i in range(5)}}

    async def poll(name: str) -> None:
        lane = lanes.get(name)
        running[lane] = running.get(lane, 0) + 1
        most[lane] = max(most.get(lane, 0), running[lane])
        await asyncio.sleep(0.02)
        running[lane] -= 1
        polled.append(name)

    scheduler = Scheduler(poll, lane=lanes.get, lane_width=3, rng=random.Random(2))
    names = [*lanes, "solo0", "solo1", "solo2"]  # no lane: a task each
    await run_until_polled(scheduler, names, polled)
    assert sorted(polled) == sorted(names)  # each once
    assert most["a"] == 3 and most["b"] <= 3  # lane a had more due at once than runners
    assert scheduler.queued == 0 and not scheduler._runners


async def test_a_poll_done_with_its_host_lets_its_lane_start_the_next() -> None:
    # Each poll's request part is bounded by the lane; its state part (after let_go) is not:
    # with 1 runner and 12 polls whose state part outlasts their request, all 12 overlap there.
    requesting, most_requesting, finishing, most_finishing = 0, 0, 0, 0
    polled: list[str] = []

    async def poll(name: str) -> None:
        nonlocal requesting, most_requesting, finishing, most_finishing
        requesting += 1
        most_requesting = max(most_requesting, requesting)
        await asyncio.sleep(0.005)
        requesting -= 1
        let_go()
        let_go()  # a second call changes nothing
        finishing += 1
        most_finishing = max(most_finishing, finishing)
        await asyncio.sleep(0.2)
        finishing -= 1
        polled.append(name)

    scheduler = Scheduler(poll, lane=lambda name: "host", lane_width=1, rng=random.Random(5))
    names = [f"s{i}" for i in range(12)]
    await run_until_polled(scheduler, names, polled)
    assert sorted(polled) == sorted(names)
    assert most_requesting == 1  # the lane's width still bounds the requests
    assert most_finishing > 6  # ... but not the polls' state parts: they overlapped
    assert scheduler.queued == 0 and not scheduler._runners


def blocking_poll() -> tuple[PollFunc, list[str], asyncio.Event]:
    """A poll that records its source in `started`, then waits for `release`."""
    started: list[str] = []
    release = asyncio.Event()

    async def poll(name: str) -> None:
        started.append(name)
        await release.wait()

    return poll, started, release


async def one_running_rest_queued(
    poll: PollFunc, started: list[str], count: int, dropped: list[str] | None = None
) -> Scheduler:
    """A started scheduler with `count` sources due in one lane of one runner: one has started
    (`poll` appends to `started` and blocks), the others wait in the lane's queue. Polls it
    drops (their claims to be given back) go to `dropped`."""
    scheduler = Scheduler(
        poll,
        lane=lambda name: "host",
        lane_width=1,
        drop=(dropped if dropped is not None else []).extend,
        rng=random.Random(count),
    )
    scheduler.start()
    for i in range(count):
        scheduler.schedule(spec(f"s{i}", every=60.0, jitter=0.0), None)
    for _ in range(100):
        if started and scheduler.queued == count - 1:
            break
        await asyncio.sleep(0.05)
    assert len(started) == 1 and scheduler.queued == count - 1
    return scheduler


@pytest.mark.slow  # waits about 0.7 s for the first poll to start
async def test_shutdown_drops_polls_still_queued_in_a_lane() -> None:
    poll, started, release = blocking_poll()
    dropped: list[str] = []
    scheduler = await one_running_rest_queued(poll, started, 5, dropped)
    scheduler.shutdown()
    assert scheduler.queued == 0
    release.set()
    await asyncio.sleep(0.05)
    assert len(started) == 1  # the four that waited never started
    assert sorted(dropped) == sorted({f"s{i}" for i in range(5)} - set(started))  # given back
    assert not scheduler._queues


@pytest.mark.slow  # waits about 0.7 s for the first poll to start
async def test_drop_queued_takes_the_picked_polls_out_of_their_lane_and_gives_them_back() -> None:
    # What a daemon does with the queued polls of shards it gives up (Sharing.rebalance).
    poll, started, release = blocking_poll()
    dropped: list[str] = []
    scheduler = await one_running_rest_queued(poll, started, 7, dropped)
    waiting = {f"s{i}" for i in range(7)} - set(started)
    picked = {name for name in waiting if int(name[1:]) % 2 == 0}
    assert picked and picked != waiting
    assert scheduler.drop_queued(lambda name: name in picked) == len(picked)
    assert sorted(dropped) == sorted(picked)
    assert scheduler.queued == len(waiting) - len(picked)
    release.set()
    for _ in range(100):
        if len(started) == 7 - len(picked):
            break
        await asyncio.sleep(0.02)
    scheduler.shutdown()
    assert set(started) == {f"s{i}" for i in range(7)} - picked  # the rest still ran
    assert not picked & set(started)


async def test_a_poll_that_raises_does_not_stop_its_lane(caplog) -> None:
    polled: list[str] = []

    async def poll(name: str) -> None:
        polled.append(name)
        if name == "bad":
            raise RuntimeError("plugin bug")

    scheduler = Scheduler(poll, lane=lambda name: "host", lane_width=1, rng=random.Random(4))
    scheduler.start()
    try:
        scheduler.schedule(spec("bad", every=60.0, jitter=0.0), None)
        scheduler.schedule(spec("good", every=60.0, jitter=0.0), None)
        for _ in range(100):
            if len(polled) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        scheduler.shutdown()
    assert sorted(polled) == ["bad", "good"]
    assert "poll of bad raised" in caplog.text and "plugin bug" in caplog.text


def test_each_bundled_kind_names_the_host_it_polls(tmp_path) -> None:
    # the daemon's lanes: one per host, as the HTTP client's per-host limit counts requests
    from bridge.config import load_config
    from bridge.polling.engine import make_sources

    path = tmp_path / "bridge.yaml"
    path.write_text(
        "sources:\n"
        "  - {name: h, kind: http, url: 'http://127.0.0.1:8080/a.json'}\n"
        "  - {name: f, kind: feed, url: 'https://Feeds.example/rss'}\n"
        "  - {name: g, kind: github, repo: o/r}\n"
        "  - {name: e, kind: github, repo: o/r, api_url: 'https://ghe.example:8443/api/v3'}\n"
    )
    hosts = {name: s.host for name, s in make_sources(load_config(path, env={})).items()}
    assert hosts == {
        "h": "127.0.0.1:8080",
        "f": "Feeds.example",
        "g": "api.github.com",
        "e": "ghe.example:8443",
    }


async def test_a_cancelled_runner_gives_back_the_polls_it_had_queued() -> None:
    started: list[str] = []

    async def poll(name: str) -> None:
        started.append(name)
        await asyncio.sleep(30)

    dropped: list[str] = []
    scheduler = await one_running_rest_queued(poll, started, 3, dropped)
    try:
        (runner,) = scheduler._tasks
        runner.cancel()
        await asyncio.sleep(0.05)
        # the queued two are given back for their next turn, not left claimed forever
        assert scheduler.queued == 0 and not scheduler._queues
        assert sorted(dropped) == sorted({"s0", "s1", "s2"} - set(started))
    finally:
        scheduler.shutdown()
