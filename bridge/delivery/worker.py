"""One webhook's delivery worker: claims due deliveries, attempts them with bounded
concurrency, and records the outcomes. The dispatcher (dispatcher.py) owns the workers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypeVar

from bridge.config import WebhookSpec
from bridge.config.units import Rate
from bridge.delivery.policy import Outcome, decide
from bridge.delivery.signing import request_headers
from bridge.errors import BridgeError, DeliveryError
from bridge.http import HttpClient
from bridge.model import Delivery, Finished
from bridge.state import Outbox, off_loop

if TYPE_CHECKING:  # bridge.templates imports Jinja2, which most webhooks never need
    from bridge.templates import Renderer

log = logging.getLogger("bridge.deliver")

# A lease outlives the request timeout by this much; after a crash the delivery is retried then.
# The margin covers what comes after the answer: the attempt is recorded with the next claim, a
# write that may wait out the state file's busy timeout (5 s) behind another process. A lease
# that ran out first would let another process send a delivered event again (README: 30 s).
LEASE_MARGIN = 30.0
# How often an idle worker looks for deliveries queued where no wake reached it: by another
# process on a state file (`bridge replay`), or by another instance while this one's state was
# not listening (bridge.state.base.State.watch_deliveries). A look is one small read (when
# the next delivery is due), and a claim only when that is now.
IDLE_RECHECK = 1.0


Observer = Callable[[str, str], None]  # (webhook, result) for metrics
T = TypeVar("T")


class StartWindow:
    """A webhook's `rate:`: at most `requests` attempts started in any `per` seconds.

    A sliding window of the last starts rather than a token bucket: a full bucket lets a burst
    of its size and then its refill through in one second, twice the rate; a window never does.
    """

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.clock = clock
        self._starts: collections.deque[float] = collections.deque()

    def allowance(self) -> int:
        """How many attempts may start now."""
        starts, since = self._starts, self.clock() - self.rate.per
        while starts and starts[0] <= since:
            starts.popleft()
        return self.rate.requests - len(starts)

    def wait(self) -> float:
        """Seconds until the next attempt may start (0 when one may now)."""
        if self.allowance() > 0:
            return 0.0
        return max(self._starts[0] + self.rate.per - self.clock(), 0.001)

    def started(self, count: int) -> None:
        """Record `count` attempts started now."""
        now = self.clock()
        self._starts.extend(itertools.repeat(now, count))


@dataclass(frozen=True)
class Failure:
    """An attempt of a `drain` that did not succeed: the delivery stays pending, or is dead."""

    webhook: str
    event_id: str
    status: Literal["pending", "dead"]
    error: str | None
    next_attempt_at: float | None


class WebhookWorker:
    """Delivers one webhook's queue with bounded concurrency; one slow endpoint blocks no other."""

    def __init__(
        self,
        spec: WebhookSpec,
        outbox: Outbox,
        http: HttpClient,
        *,
        out: TextIO | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        renderer: Renderer | None = None,
        threaded: bool = False,
    ):
        """`threaded`: the outbox may be called from other threads (State.threaded), and its
        claims and looks are then made off the event loop."""
        self.spec = spec
        self.threaded = threaded
        self.outbox = outbox
        self.http = http
        self.out = out or sys.stdout
        self.observer = observer
        self.clock = clock
        self.renderer = renderer
        if spec.body is not None and renderer is None:
            from bridge.templates import shared_renderer

            self.renderer = shared_renderer()
        if self.renderer is not None:
            self.renderer.start()  # warm worker processes before the first delivery
        # One rendering of this webhook at a time: a runaway template holds one of the
        # renderer's processes, never all of them, so other webhooks' bodies still render.
        self._render_lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[None]] = set()
        # Attempts done but not yet recorded: written with the next claim, in its transaction.
        # Until then a delivery is still pending in the file, so a crash sends it again.
        self._finished: list[Finished] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._failures: list[Failure] | None = None  # collected while draining
        # `rate:` limits claims, so that the backlog waits in the outbox, not in memory
        self._window = StartWindow(spec.rate) if spec.rate is not None else None
        self._rate_wait: float | None = None  # set when the rate, not the queue, held claims

    def wake(self) -> None:
        """New deliveries may be due: look now."""
        self._wake.set()

    @contextlib.contextmanager
    def _taking_finished(self) -> Iterator[list[Finished]]:
        """The attempts finished since the last write; put back first if writing them fails."""
        finished, self._finished = self._finished, []
        try:
            yield finished
        except BaseException:
            self._finished[:0] = finished
            raise

    def flush(self) -> None:
        """Record the attempts that finished since the last claim."""
        with self._taking_finished() as finished:
            self.outbox.finish_attempts(finished)

    async def _flush_async(self) -> None:
        # flush(), its list taken here in the loop's thread: attempts finishing meanwhile go
        # to the next one, never to a list another thread is writing out.
        with self._taking_finished() as finished:
            await self._call(self.outbox.finish_attempts, finished)

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        # On PostgreSQL a claim is a transaction of several round trips: made in a worker
        # thread, it never holds the event loop (and the polls on it) while it waits.
        return await off_loop(self.threaded, func, *args)

    async def _fill(self) -> int:
        free = self.spec.concurrency - len(self._inflight)
        self._rate_wait = None
        if self._stopping:
            await self._flush_async()
            return 0
        # Under load, slots are refilled by halves: one claim (a transaction) starts several
        # attempts rather than one each, and records the finished ones with it.
        if free <= 0 or (self._inflight and free < max(1, self.spec.concurrency // 2)):
            return 0
        if self._window is not None:
            allowed = self._window.allowance()
            if allowed <= 0:
                # no claim to record them with for a while: the outcomes are written now
                if self._finished:
                    await self._flush_async()
                self._rate_wait = self._window.wait()
                return 0
            free = min(free, allowed)
        now = self.clock()
        with self._taking_finished() as finished:
            claimed = await self._call(
                self.outbox.claim_due,
                self.spec.name,
                now,
                free,
                self.spec.timeout + LEASE_MARGIN,
                finished,
            )
        if self._window is not None and claimed:
            self._window.started(len(claimed))
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery))
            self._inflight.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed: %s", task.exception())
        self._wake.set()

    async def _send(self, delivery: Delivery, started: float) -> Outcome:
        """One attempt: render the body if templated, POST it, and what the answer leads to."""
        spec = self.spec
        body = delivery.body
        if spec.body is not None and self.renderer is not None:
            from bridge.templates import TemplateError

            try:
                async with self._render_lock:
                    body = await self.renderer.render_body(spec.body, delivery.body)
            except TemplateError as exc:  # a failed attempt like any other: the schedule applies
                return decide(
                    spec, delivery.attempts, self.clock(), http_status=None, error=str(exc)
                )
        if spec.url == "-":
            self.out.write(body.decode() + "\n")
            self.out.flush()
            return Outcome("delivered", None, None)
        headers = request_headers(spec, delivery.event_id, body, started)
        try:
            resp = await self.http.post(spec.url, body, headers, timeout=spec.timeout)
        except DeliveryError as exc:
            return decide(spec, delivery.attempts, self.clock(), http_status=None, error=str(exc))
        return decide(
            spec, delivery.attempts, self.clock(), http_status=resp.status, headers=resp.headers
        )

    async def _attempt(self, delivery: Delivery) -> None:
        spec = self.spec
        started = self.clock()
        outcome = await self._send(delivery, started)
        finished = self.clock()
        self._finished.append(
            Finished(
                delivery.id,
                outcome.status,
                finished,
                finished - started,
                outcome.http_status,
                outcome.error,
                outcome.next_attempt_at,
            )
        )
        if self.observer:
            self.observer(spec.name, outcome.status)
        fields = {"webhook": spec.name, "event_id": delivery.event_id, "error": outcome.error}
        if outcome.status == "delivered":
            log.debug("delivered %s to %s", delivery.event_id, spec.name, extra=fields)
            return
        if self._failures is not None:
            self._failures.append(
                Failure(
                    spec.name,
                    delivery.event_id,
                    outcome.status,
                    outcome.error,
                    outcome.next_attempt_at,
                )
            )
        if outcome.status == "dead":
            log.warning(
                "delivery of %s to %s is dead after %d attempts: %s",
                delivery.event_id,
                spec.name,
                delivery.attempts + 1,
                outcome.error,
                extra=fields,
            )
        else:
            # A retry is routine for the daemon; for `bridge once` (draining) it is a failure of
            # the run, which exits 1 and must say why even under -q.
            log.log(
                logging.WARNING if self._failures is not None else logging.INFO,
                "delivery of %s to %s failed (%s); retry in %.0fs",
                delivery.event_id,
                spec.name,
                outcome.error,
                (outcome.next_attempt_at or finished) - finished,
                extra=fields,
            )

    async def _sleep_time(self) -> float:
        """Seconds until the next delivery can be claimed (0: now), at most IDLE_RECHECK."""
        due = await self._call(self.outbox.next_due, self.spec.name)
        if due is None:
            return IDLE_RECHECK
        return min(max(due - self.clock(), 0.0), IDLE_RECHECK)

    async def run(self) -> None:
        """Deliver until stop() is called."""
        claim = True  # the first look claims at once
        while not self._stopping:
            self._wake.clear()
            try:
                if claim:
                    await self._fill()
                # With attempts in flight, each one finishing wakes this loop: no need to ask
                # when the next is due (on PostgreSQL a look over every pending delivery of the
                # webhook, the server's costliest statement while a backlog drains). A retry of
                # another source then waits at most IDLE_RECHECK.
                pause = IDLE_RECHECK if self._inflight else await self._sleep_time()
                if pause == 0.0 and not claim:
                    claim = True  # the look of an idle pause found one due: claim it now
                    continue
                pause = max(pause, 0.01)
                if self._rate_wait is not None:
                    pause = min(pause, self._rate_wait)
            except BridgeError as exc:
                # The state file is locked or failing: say so and try again, never stop delivering.
                log.error("webhook %s: %s", self.spec.name, exc)
                pause = IDLE_RECHECK
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
                claim = True
            except TimeoutError:
                # An idle pause's end (the look that covers a wake that never came: another
                # process's delivery on a state file, a NOTIFY lost) asks when the next delivery
                # is due before claiming: one round trip, not a claim's read and then that.
                claim = bool(self._inflight) or self._rate_wait is not None

    async def drain(self) -> list[Failure]:
        """Attempt every delivery that is due now once, then return the attempts that did not
        succeed (for `bridge once`)."""
        failures: list[Failure] = []
        self._failures = failures
        try:
            while True:
                self._wake.clear()
                started = await self._fill()
                if not self._inflight and self._rate_wait is None:
                    self.flush()
                    return failures
                if started == 0:
                    with contextlib.suppress(TimeoutError):  # `rate:` holds the rest back
                        await asyncio.wait_for(self._wake.wait(), self._rate_wait)
        finally:
            self._failures = None

    def abort(self) -> None:
        """Cancel in-flight attempts now (a second stop signal); their leases keep them queued."""
        self._stopping = True
        for task in self._inflight:
            task.cancel()

    async def stop(self, grace: float) -> None:
        """Stop claiming; give in-flight attempts `grace` seconds, then cancel them.

        A cancelled attempt keeps its lease and is sent again when it runs out: at least once.
        """
        self._stopping = True
        self._wake.set()
        tasks = list(self._inflight)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        try:
            self.flush()
        except BridgeError as exc:  # those deliveries stay pending and are sent again
            log.error("webhook %s: %s", self.spec.name, exc)
