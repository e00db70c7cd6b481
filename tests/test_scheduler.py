"""Schedules: first runs after a restart, intervals firing, crontab weekdays as crontab means."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

from bridge.scheduler import MAX_START_SPREAD, Scheduler, first_run
from bridge.source import SourceSpec


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
