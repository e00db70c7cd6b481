"""The dispatcher: owns one delivery worker per webhook. It starts and stops them, drains them
(`bridge once`), replaces them when a reload changes a webhook, and wakes them when polls
commit new deliveries (this process's, or, heard through the state, another's)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

from bridge.config import WebhookSpec
from bridge.delivery.worker import Failure, Observer, WebhookWorker
from bridge.http import HttpClient
from bridge.state import Outbox

log = logging.getLogger("bridge.deliver")


class Dispatcher:
    """The webhook workers of one process, by webhook name."""

    def __init__(
        self,
        webhooks: Mapping[str, WebhookSpec],
        outbox: Outbox,
        http: HttpClient,
        *,
        out: TextIO | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        threaded: bool = False,
    ):
        """`threaded`: the outbox may be called from other threads (State.threaded): the
        workers claim off the event loop."""
        self.outbox = outbox
        self.threaded = threaded
        self.http = http
        self.out = out
        self.observer = observer
        self.clock = clock
        self.workers = {name: self._worker(spec) for name, spec in webhooks.items()}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _worker(self, spec: WebhookSpec) -> WebhookWorker:
        return WebhookWorker(
            spec,
            self.outbox,
            self.http,
            out=self.out,
            observer=self.observer,
            clock=self.clock,
            threaded=self.threaded,
        )

    def wake(self, webhooks: Iterable[str] | None) -> None:
        """New deliveries to these webhooks may be due: their workers look now. None: every
        webhook (the state heard of new deliveries without their webhooks, or may have missed
        some: bridge.state.base.State.watch_deliveries)."""
        for name in self.workers if webhooks is None else webhooks:
            worker = self.workers.get(name)
            if worker is not None:
                worker.wake()

    async def deliver_due(self) -> list[Failure]:
        """Attempt every due delivery once, on every webhook at the same time (`bridge once`);
        returns the attempts that did not succeed."""
        drained = await asyncio.gather(*(w.drain() for w in self.workers.values()))
        return [failure for failures in drained for failure in failures]

    def start(self) -> None:
        """Start every webhook's delivery loop."""
        for name in self.workers:
            self._start(name)

    def _start(self, name: str) -> None:
        self._tasks[name] = asyncio.create_task(self.workers[name].run(), name=f"deliver-{name}")

    async def stop(self, grace: float) -> None:
        """Stop delivering; in-flight attempts get `grace` seconds, then are cancelled (their
        leases keep them queued)."""
        await asyncio.gather(*(w.stop(grace) for w in self.workers.values()))
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def abort(self) -> None:
        """Cancel in-flight attempts now (a second stop signal)."""
        for worker in self.workers.values():
            worker.abort()

    async def replace(self, webhooks: Mapping[str, WebhookSpec], grace: float) -> None:
        """Take a reloaded config's webhooks: a changed one's worker is replaced (the old one
        finishes its attempts within `grace`), a new one starts, a removed one stops. Pending
        deliveries of a removed webhook stay queued; they go out if it comes back."""
        for name in [n for n in self.workers if webhooks.get(n) != self.workers[n].spec]:
            await self._stop_one(name, grace)
        for name, spec in webhooks.items():
            if name not in self.workers:
                self.workers[name] = self._worker(spec)
                self._start(name)

    async def _stop_one(self, name: str, grace: float) -> None:
        worker = self.workers.pop(name)
        await worker.stop(grace)
        task = self._tasks.pop(name, None)
        if task is not None:
            await task
