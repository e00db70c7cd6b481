"""When each source is polled: one heap of due times, and lanes of polls per host.

Intervals are kept in one heap driven by one event-loop timer: APScheduler's AsyncIOScheduler
cost as much CPU per job run as the poll's own HTTP request (datetimes, job stores, events, an
executor; benchmarks/RESULTS.md). Crontab lines still go through APScheduler's CronTrigger, which
only computes the next fire time.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.config.units import cron_schedules
from bridge.errors import BridgeError
from bridge.model import SourceSpec
from bridge.polling import lanes

log = logging.getLogger("bridge.polling.scheduler")

PollFunc = Callable[[str], Coroutine[Any, Any, object]]
LaneFunc = Callable[[str], "str | None"]  # a source's lane (the host it polls), or None
# Takes the due sources of one wake-up and returns those that may be polled now, in order: the
# engine's lease (one poll of a source at a time is the state's promise, not the scheduler's).
# It says why it refused those it refused: the scheduler only skips them this turn.
ClaimFunc = Callable[[list[str]], Coroutine[Any, Any, list[str]]]
DropFunc = Callable[[list[str]], None]  # claimed sources whose polls will not run after all

# Overdue sources are spread over at most this many seconds after start: soon enough that a
# user sees the first results at once, spread enough that a restart is not a burst.
MAX_START_SPREAD = 10.0
# Jobs due within this many seconds run together, on one timer wake-up (a job never earlier
# than a tenth of its interval): requests sent in a burst cost aiohttp and the event loop a
# fraction of what the same requests cost one at a time, and one wake-up takes one lease.
SLACK = 1.0


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


class _Job:
    """One source's schedule: its next run (with jitter) and the time it was derived from."""

    __slots__ = ("name", "every", "jitter", "cron", "base", "next_at", "slack")

    def __init__(self, spec: SourceSpec, cron: CronSchedule | None):
        self.name = spec.name
        self.every = spec.every
        self.jitter = spec.jitter
        self.cron = cron  # None for an interval
        self.base = 0.0  # the scheduled time before jitter
        self.next_at = 0.0
        self.slack = min(SLACK, (spec.every or 60.0) / 10)  # how early it may run with others


class CronSchedule:
    """A cron source's schedule in its `tz:` (UTC by default): the union of its CronTriggers."""

    __slots__ = ("triggers", "once")

    def __init__(self, spec: SourceSpec):
        # Imported only when a source has `cron:`; crontab day numbers are converted by config.
        from zoneinfo import ZoneInfo

        from apscheduler.triggers.cron import CronTrigger

        assert spec.cron is not None
        zone = ZoneInfo(spec.tz) if spec.tz else UTC
        schedules = cron_schedules(spec.cron)
        self.triggers = [CronTrigger(**kwargs, timezone=zone) for kwargs in schedules]
        # A line at fixed hours runs once when the clocks go back, as crontab's does; one that
        # runs every hour goes on through the repeated hour.
        self.once = schedules[0]["hour"] != "*"

    def next_after(self, after: float) -> float:
        """The first fire time strictly after `after` (epoch seconds), or inf."""
        return min((self._next(trigger, after) for trigger in self.triggers), default=math.inf)

    def _next(self, trigger: Any, after: float) -> float:
        while True:
            now = datetime.fromtimestamp(after, UTC) + timedelta(microseconds=1)
            when = trigger.get_next_fire_time(None, now)
            if when is None:
                return math.inf
            # the second pass through a wall-clock time (fold=1) that already fired an hour ago
            repeat = when.fold and when.utcoffset() != when.replace(fold=0).utcoffset()
            if not (self.once and repeat):
                return float(when.timestamp())
            after = when.timestamp()


class _Runner:
    """One runner task of a lane; `left`: it gave its place up (lanes.let_go)."""

    __slots__ = ("scheduler", "lane", "queue", "left")

    def __init__(self, scheduler: Scheduler, lane: str, queue: collections.deque[str]):
        self.scheduler = scheduler
        self.lane = lane
        self.queue = queue
        self.left = False

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self.scheduler._left(self)


class Scheduler:
    """Runs `poll(name)` for every scheduled source on its interval or cron schedule.

    Each wake-up's due sources are claimed together (`claim`); one that is refused (its last
    poll still runs) skips this turn. Runs missed while the process was busy are coalesced.

    Sources with a lane (the host they poll) wait in that lane's queue, first come first served,
    for one of at most `lane_width` runner tasks: the HTTP client lets no more requests at a
    host at once anyway. Thousands of polls due together at one host then cost a few long-lived
    tasks instead of a task and a wait at the host's gate each. A poll done with its host
    (lanes.let_go) hands its place to a new runner and finishes on its own. A source
    without a lane gets a task of its own.
    """

    def __init__(
        self,
        poll: PollFunc,
        *,
        lane: LaneFunc | None = None,
        lane_width: int = 4,
        claim: ClaimFunc | None = None,
        drop: DropFunc | None = None,
        rng: random.Random | None = None,
    ):
        if lane_width < 1:
            raise ValueError("a lane needs at least one runner")
        self.poll = poll
        self.lane = lane
        self.lane_width = lane_width
        self.claim = claim
        self.drop = drop
        self.rng = rng or random.Random()
        self._jobs: dict[str, _Job] = {}
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._tasks: set[asyncio.Task[object]] = set()
        self._queues: dict[str, collections.deque[str]] = {}  # lane -> sources waiting in it
        self._runners: collections.Counter[str] = collections.Counter()  # lane -> runner tasks

    @property
    def running(self) -> bool:
        """Whether the scheduler is started and not shut down."""
        return self._running

    def start(self) -> None:
        """Start firing jobs (needs a running event loop)."""
        asyncio.get_running_loop()
        self._running = True
        self._arm()

    def shutdown(self) -> None:
        """Stop firing jobs; polls already running go on and are awaited by the caller.

        Polls still waiting in a lane are dropped (told to `drop`): they had not started.
        """
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        for queue in self._queues.values():
            self._dropped(queue)

    @property
    def queued(self) -> int:
        """How many due polls wait in lanes for a runner."""
        return sum(len(queue) for queue in self._queues.values())

    def drop_queued(self, which: Callable[[str], bool]) -> int:
        """Take the polls waiting in lanes for a runner out of them, those `which` picks, and
        tell `drop` (their leases go back); returns how many. For sources this process stops
        scheduling: their polls had not started, and the next holder must not find them
        leased for a lease's length."""
        dropped = 0
        for queue in self._queues.values():
            picked = [name for name in queue if which(name)]
            if picked:
                kept = [name for name in queue if not which(name)]
                queue.clear()
                queue.extend(kept)
                self._dropped(collections.deque(picked))
                dropped += len(picked)
        return dropped

    def schedule(self, spec: SourceSpec, last_poll_at: float | None) -> float | None:
        """Add or replace a source's job; returns its first run time (epoch seconds)."""
        job = _Job(spec, CronSchedule(spec) if spec.cron else None)
        now = time.time()
        first = first_run(spec, last_poll_at, now, self.rng)
        if first:
            job.base = job.next_at = first
        else:  # cron sources that polled before just follow their cron expression
            assert job.cron is not None
            job.base = job.cron.next_after(now)
            job.next_at = job.base + self._jitter(job)
        self._jobs[spec.name] = job
        self._push(job)
        return job.next_at if math.isfinite(job.next_at) else None

    def unschedule(self, name: str) -> None:
        """Remove a source's job if it has one."""
        self._jobs.pop(name, None)  # its heap entry is dropped when it comes up

    def next_run(self, name: str) -> float | None:
        """The next time a source will be polled (epoch seconds), or None."""
        job = self._jobs.get(name)
        return job.next_at if job is not None and math.isfinite(job.next_at) else None

    def names(self) -> set[str]:
        """Sources that have a job."""
        return set(self._jobs)

    # --- the timer -------------------------------------------------------------------------

    def _jitter(self, job: _Job) -> float:
        return self.rng.uniform(0, job.jitter) if job.jitter else 0.0

    def _push(self, job: _Job) -> None:
        if not math.isfinite(job.next_at):
            return
        heapq.heappush(self._heap, (job.next_at, next(self._seq), job))
        if self._running and job.next_at < self._timer_at:
            self._arm()

    def _arm(self) -> None:
        heap = self._heap
        while heap and self._jobs.get(heap[0][2].name) is not heap[0][2]:
            heapq.heappop(heap)  # an unscheduled or replaced job
        if not heap or not self._running:
            return
        at = heap[0][0]
        if self._timer is not None:
            if at >= self._timer_at:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - time.time()), self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if not self._running:
            return
        now = time.time()
        heap, jobs = self._heap, self._jobs
        later: list[tuple[float, int, _Job]] = []
        due: list[str] = []
        while heap and heap[0][0] <= now + SLACK:
            entry = heapq.heappop(heap)
            at, _, job = entry
            if jobs.get(job.name) is not job or at != job.next_at:
                continue
            if at > now + job.slack:
                later.append(entry)
                continue
            self._advance(job, now)
            due.append(job.name)
            later.append((job.next_at, next(self._seq), job))
        for entry in later:  # pushed back only now, so that no job runs twice in one wake-up
            heapq.heappush(heap, entry)
        self._arm()
        if due:
            self._start_claimed(due)

    def _start_claimed(self, due: list[str]) -> None:
        if self.claim is None:
            for name in due:
                self._start(name)
        else:  # the claim writes to the state: awaited in a task of its own
            self._spawn(self._claim_then_start(due))

    async def _claim_then_start(self, due: list[str]) -> None:
        assert self.claim is not None
        try:
            granted = await self.claim(due)
        except BridgeError as exc:  # the state failing: these polls wait for their next turn
            log.error("could not claim %d due sources: %s", len(due), exc)
            return
        except Exception:
            log.exception("could not claim %d due sources", len(due))
            return
        if not self._running:  # shut down while claiming: they will not run
            self._dropped(collections.deque(granted))
            return
        for name in granted:
            self._start(name)

    def _advance(self, job: _Job, now: float) -> None:
        if job.cron is not None:
            job.base = job.cron.next_after(max(now, job.base))
        else:
            assert job.every is not None
            job.base += job.every
            if job.base + job.jitter < now:
                # Missed runs (a suspended process, a blocked loop) are coalesced into this one.
                job.base += math.ceil((now - job.base) / job.every) * job.every
        job.next_at = job.base + self._jitter(job)

    def _dropped(self, queue: collections.deque[str]) -> None:
        names = list(queue)
        queue.clear()
        if names and self.drop is not None:
            try:
                self.drop(names)
            except Exception:  # their leases run out instead
                log.exception("could not release %d dropped polls", len(names))

    def _start(self, name: str) -> None:
        lane = self.lane(name) if self.lane is not None else None
        if lane is None:
            self._spawn(self._run(name))
            return
        queue = self._queues.get(lane)
        if queue is None:
            queue = self._queues[lane] = collections.deque()
        queue.append(name)
        self._fill_lane(lane, queue)

    def _fill_lane(self, lane: str, queue: collections.deque[str]) -> None:
        if self._runners[lane] < self.lane_width:
            self._runners[lane] += 1
            self._spawn(self._run_lane(lane, queue))

    def _left(self, runner: _Runner) -> None:
        # A runner's poll let its host go: the lane counts one runner fewer, and takes its next
        # poll in a new one.
        self._runners[runner.lane] -= 1
        if runner.queue and self._running:
            self._fill_lane(runner.lane, runner.queue)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # create_task rather than ensure_future: its type checks cost a poll a few us
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _run_lane(self, lane: str, queue: collections.deque[str]) -> None:
        runner = _Runner(self, lane, queue)
        lanes.leave.set(runner.leave)  # this task's own context: seen by its polls only
        try:
            while queue and self._running and not runner.left:
                await self._run(queue.popleft())
        finally:
            if not runner.left:
                self._runners[lane] -= 1
            if not self._runners[lane]:
                del self._runners[lane]
                # The last runner cancelled with polls still queued: they wait for their next
                # turn rather than stay claimed with no runner to take them.
                self._dropped(queue)
                if self._queues.get(lane) is queue:
                    del self._queues[lane]  # hosts come and go with reloads and redirects

    async def _run(self, name: str) -> None:
        try:
            await self.poll(name)
        except Exception:
            log.exception("poll of %s raised", name)
