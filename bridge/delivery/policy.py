"""The retry policy: what one attempt's answer leads to (delivered, pending again, dead)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.config import WebhookSpec
from bridge.http.headers import parse_retry_after
from bridge.model import DeliveryStatus

# Longest Retry-After we obey; a longer one is cut to this (the receiver is misconfigured).
MAX_RETRY_AFTER = 7 * 86400.0


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
    """The retry policy: 2xx delivered; 410 dead; else retry per schedule, which a 429's or 503's
    Retry-After may lengthen but never shorten."""
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
        # A Retry-After of 0 or a date in the past must not spend the whole schedule at once.
        if after is not None:
            delay = max(delay, min(after, MAX_RETRY_AFTER))
    return Outcome("pending", http_status, error, now + delay)
