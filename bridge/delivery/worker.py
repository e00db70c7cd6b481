"""Signing (Standard Webhooks), one delivery attempt, the retry policy, and the delivery workers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from bridge import __version__
from bridge.config import WebhookSpec
from bridge.errors import BridgeError, DeliveryError
from bridge.http import HttpClient
from bridge.http.headers import parse_retry_after
from bridge.model import Delivery, DeliveryStatus, Finished
from bridge.state.sqlite.store import Store

log = logging.getLogger("bridge.delivery.worker")

# Longest Retry-After we obey; beyond it the receiver is misconfigured and the schedule decides.
MAX_RETRY_AFTER = 7 * 86400.0
# A lease outlives the request timeout by this much; after a crash the delivery is retried then.
LEASE_MARGIN = 5.0
# How often an idle worker looks for deliveries queued by another process (`bridge replay`).
IDLE_RECHECK = 2.0


@functools.lru_cache(maxsize=256)  # decoded once, not on every attempt
def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (padding optional, as people copy them)."""
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64>` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(secret_key(s), signed, "sha256")).decode()
        for s in secrets
    )


def request_headers(spec: WebhookSpec, msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """Every header of one attempt: the configured ones, then the Standard Webhooks ones."""
    timestamp = int(now)
    headers = {str(k): str(v) for k, v in spec.headers.items()}
    headers.update(
        {
            "content-type": "application/json",
            "user-agent": f"bridge/{__version__}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
    )
    if spec.secrets:
        headers["webhook-signature"] = sign(spec.secrets, msg_id, timestamp, body)
    return headers


@dataclass(frozen=True)
class Outcome:
    """What one attempt leads to: delivered, pending again (with when), or dead."""

    status: DeliveryStatus
    http_status: int | None
    error: str | None
    next_attempt_at: float | None = None


def decide(
    spec: WebhookSpec,
    attempts_before: int,
    now: float,
    *,
    http_status: int | None,
    headers: Mapping[str, str] | None = None,
    error: str | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """The retry policy: 2xx delivered; 410 dead; else retry per schedule, honouring Retry-After."""
    if http_status is not None and 200 <= http_status < 300:
        return Outcome("delivered", http_status, None)
    if error is None:
        error = f"HTTP {http_status}"
    if http_status == 410:
        return Outcome("dead", http_status, error + " (gone: not retried)")
    attempt = attempts_before + 1
    if attempt > len(spec.retry):
        return Outcome("dead", http_status, error)
    delay = spec.retry[attempt - 1] * (rng or random).uniform(0.8, 1.2)
    if http_status in (429, 503) and headers is not None:
        after = parse_retry_after(headers.get("retry-after"), now)
        if after is not None:
            delay = min(after, MAX_RETRY_AFTER)
    return Outcome("pending", http_status, error, now + delay)


Observer = Callable[[str, str], None]  # (webhook, result) for metrics


class WebhookWorker:
    """Delivers one webhook's queue with bounded concurrency; one slow endpoint blocks no other."""

    def __init__(
        self,
        spec: WebhookSpec,
        store: Store,
        http: HttpClient,
        *,
        out: TextIO | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.spec = spec
        self.store = store
        self.http = http
        self.out = out or sys.stdout
        self.observer = observer
        self.clock = clock
        self._inflight: dict[asyncio.Task[None], str] = {}  # task -> source
        # Attempts done but not yet recorded: written with the next claim, in its transaction.
        # Until then a delivery is still pending in the file, so a crash sends it again.
        self._finished: list[Finished] = []
        self._wake = asyncio.Event()
        self._stopping = False

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
            self.store.finish_attempts(finished)

    def _fill(self) -> int:
        free = self.spec.concurrency - len(self._inflight)
        if self._stopping:
            self.flush()
            return 0
        # Under load, slots are refilled by halves: one claim (a transaction) starts several
        # attempts rather than one each, and records the finished ones with it.
        if free <= 0 or (self._inflight and free < max(1, self.spec.concurrency // 2)):
            return 0
        now = self.clock()
        with self._taking_finished() as finished:
            claimed = self.store.claim_due(
                self.spec.name,
                now,
                free,
                self.spec.timeout + LEASE_MARGIN,
                set(self._inflight.values()),
                finished,
            )
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery))
            self._inflight[task] = delivery.source
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed: %s", task.exception())
        self._wake.set()

    async def _attempt(self, delivery: Delivery) -> None:
        spec = self.spec
        started = self.clock()
        if spec.body is not None:
            # Imported here: Jinja2 costs `bridge once` start-up time, and most webhooks need none.
            from bridge.templates import render_body

            body = render_body(spec.body, delivery.body)
        else:
            body = delivery.body
        if spec.url == "-":
            self.out.write(body.decode() + "\n")
            self.out.flush()
            outcome = Outcome("delivered", None, None)
        else:
            headers = request_headers(spec, delivery.event_id, body, started)
            try:
                resp = await self.http.post(spec.url, body, headers, timeout=spec.timeout)
            except DeliveryError as exc:
                outcome = decide(
                    spec, delivery.attempts, self.clock(), http_status=None, error=str(exc)
                )
            else:
                outcome = decide(
                    spec,
                    delivery.attempts,
                    self.clock(),
                    http_status=resp.status,
                    headers=resp.headers,
                )
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
        if outcome.status == "delivered":
            log.debug("delivered %s to %s", delivery.event_id, spec.name)
        elif outcome.status == "dead":
            log.warning(
                "delivery of %s to %s is dead after %d attempts: %s",
                delivery.event_id,
                spec.name,
                delivery.attempts + 1,
                outcome.error,
            )
        else:
            log.info(
                "delivery of %s to %s failed (%s); retry in %.0fs",
                delivery.event_id,
                spec.name,
                outcome.error,
                (outcome.next_attempt_at or finished) - finished,
            )

    def _sleep_time(self) -> float:
        due = self.store.next_due(self.spec.name)
        if due is None:
            return IDLE_RECHECK
        return min(max(due - self.clock(), 0.01), IDLE_RECHECK)

    async def run(self) -> None:
        """Deliver until stop() is called."""
        while not self._stopping:
            self._wake.clear()
            try:
                started = self._fill()
                # With attempts in flight, each one finishing wakes this loop: no need to poll.
                pause = IDLE_RECHECK if self._inflight and not started else self._sleep_time()
            except BridgeError as exc:
                # The state file is locked or failing: say so and try again, never stop delivering.
                log.error("webhook %s: %s", self.spec.name, exc)
                pause = IDLE_RECHECK
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except TimeoutError:
                pass

    async def drain(self) -> None:
        """Attempt every delivery that is due now once, then return (for `bridge once`)."""
        while True:
            self._wake.clear()
            started = self._fill()
            if not self._inflight:
                self.flush()
                return
            if started == 0:
                await self._wake.wait()

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
