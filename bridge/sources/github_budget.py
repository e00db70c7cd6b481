"""The rate limit budget of one GitHub token on one API, shared by every source that uses it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.http import host_key

WINDOW = 3600.0  # GitHub's primary rate limit window: a reset is never further away than this
LOW_BUDGET = 0.10  # below this share of the limit left, polls are spread out until the reset


@dataclass
class Budget:
    """The rate limit state of one token on one GitHub API, shared by every source using it."""

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None  # when the window resets (time.time), at most an hour ahead
    raw_reset: str | None = None
    blocked_until: float = 0.0
    reason: str = ""
    strikes: int = 0  # secondary rate limit answers in a row
    users: dict[str, float] = field(default_factory=dict)  # source name -> its last poll
    # What the HTTP client keeps this token's waits under, for the state file: with a space,
    # so it is never a real host's key.
    key: str = ""

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        """Take x-ratelimit-limit/-remaining/-reset from an answer of the `core` resource."""
        if headers.get("X-RateLimit-Resource", "core") != "core":
            return
        try:
            limit = int(headers["X-RateLimit-Limit"])
            remaining = int(headers["X-RateLimit-Remaining"])
            raw_reset = headers["X-RateLimit-Reset"]
            reset = float(raw_reset)
        except (KeyError, TypeError, ValueError):
            return
        if not math.isfinite(reset):
            return  # "nan" or "inf": no time a window resets at
        if raw_reset == self.raw_reset and self.remaining is not None:
            # Answers to concurrent polls arrive in any order; within one window, count down.
            remaining = min(remaining, self.remaining)
        self.limit, self.remaining, self.raw_reset = limit, remaining, raw_reset
        self.reset = min(reset, now + WINDOW)

    def sharing(self, now: float) -> int:
        """How many sources polled with this token in the last hour (at least 1)."""
        return sum(1 for last in self.users.values() if now - last < WINDOW) or 1

    def wait(self, now: float, last_request: float | None) -> float:
        """Seconds a source that last spent a request at `last_request` should still hold off."""
        limit, remaining, reset = self.limit, self.remaining, self.reset
        if limit is None or remaining is None or reset is None or reset <= now:
            return 0.0
        if remaining >= limit * LOW_BUDGET:
            return 0.0
        if remaining <= 0:
            return reset - now
        if last_request is None:
            return 0.0
        gap = (reset - now) * self.sharing(now) / remaining
        return max(0.0, last_request + gap - now)

    def block(self, until: float, reason: str) -> None:
        """No request with this token before `until`."""
        if until > self.blocked_until:
            self.blocked_until, self.reason = until, reason


_budgets: dict[tuple[str, str], Budget] = {}


def budget_for(api_url: str, token: str | None, *, installation: str | None = None) -> Budget:
    """The one Budget of (api_url, token), or of a GitHub App's installation (GitHub limits an
    installation, so its budget outlives each of its hourly tokens); tokens are told apart by
    a hash, never kept."""
    if installation is not None:
        who, kind = installation, "github-installation"
    else:
        who = hashlib.sha256(token.encode()).hexdigest()[:16] if token else "anonymous"
        kind = "github-token"
    api = api_url.rstrip("/")
    budget = _budgets.get((api, f"{kind}:{who}"))
    if budget is None:
        budget = _budgets[api, f"{kind}:{who}"] = Budget(key=f"{host_key(api)} {kind}:{who}")
    return budget
