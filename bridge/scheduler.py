"""When each source is polled. The only module that imports apscheduler."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bridge.config import cron_to_apscheduler
from bridge.source import SourceSpec

PollFunc = Callable[[str], Awaitable[object]]

# Overdue sources are spread over at most this many seconds after start: soon enough that a
# user sees the first results at once, spread enough that a restart is not a burst.
MAX_START_SPREAD = 10.0


def _trigger(spec: SourceSpec) -> BaseTrigger:
    if spec.cron:
        return CronTrigger(
            **cron_to_apscheduler(spec.cron), jitter=spec.jitter or None, timezone=UTC
        )
    assert spec.every is not None
    return IntervalTrigger(seconds=spec.every, jitter=spec.jitter or None, timezone=UTC)


def first_run(
    spec: SourceSpec, last_poll_at: float | None, now: float, rng: random.Random
) -> float:
    """When to poll a source first after start: its last poll plus its interval.

    A source never polled, or overdue, is polled soon, spread over its jitter clamped to 1-10 s,
    so that a restart does not poll everything at once.
    """
    spread = min(max(spec.jitter, 1.0), MAX_START_SPREAD, spec.every or MAX_START_SPREAD)
    if spec.every is None:
        return now + rng.uniform(0, spread) if last_poll_at is None else 0.0
    if last_poll_at is None or last_poll_at + spec.every <= now:
        return now + rng.uniform(0, spread)
    return last_poll_at + spec.every + rng.uniform(0, spec.jitter)


class Scheduler:
    """Runs `poll(name)` for every scheduled source on its interval or cron schedule."""

    def __init__(self, poll: PollFunc, *, rng: random.Random | None = None):
        self.poll = poll
        self.rng = rng or random.Random()
        self._aps = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    @property
    def running(self) -> bool:
        """Whether the scheduler is started and not shut down."""
        return bool(self._aps.running)

    def start(self) -> None:
        """Start firing jobs (needs a running event loop)."""
        self._aps.start()

    def shutdown(self) -> None:
        """Stop firing jobs; polls already running go on and are awaited by the caller."""
        if self._aps.running:
            self._aps.shutdown(wait=False)

    def schedule(self, spec: SourceSpec, last_poll_at: float | None) -> float | None:
        """Add or replace a source's job; returns its first run time (epoch seconds)."""
        trigger = _trigger(spec)
        first = first_run(spec, last_poll_at, time.time(), self.rng)
        kwargs = {}
        if first:  # cron sources that polled before just follow their cron expression
            kwargs["next_run_time"] = datetime.fromtimestamp(first, UTC)
        job = self._aps.add_job(
            self.poll,
            trigger,
            args=[spec.name],
            id=spec.name,
            name=spec.name,
            replace_existing=True,
            **kwargs,
        )
        return self.next_run(spec.name) if job else None

    def unschedule(self, name: str) -> None:
        """Remove a source's job if it has one."""
        if self._aps.get_job(name) is not None:
            self._aps.remove_job(name)

    def next_run(self, name: str) -> float | None:
        """The next time a source will be polled (epoch seconds), or None."""
        job = self._aps.get_job(name)
        when = getattr(job, "next_run_time", None) if job else None
        return when.timestamp() if when else None

    def names(self) -> set[str]:
        """Sources that have a job."""
        return {job.id for job in self._aps.get_jobs()}
