"""What the console needs of the daemon, and the queries the API and the pages share."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge.config import Config
from bridge.polling.engine import PollResult
from bridge.service.console.views import source_view, webhook_views
from bridge.state import State

PAGE = 50  # sources on a console page, and the API's default
MAX_LIMIT = 500  # the most rows one API answer holds: every query stays short


class ApiError(Exception):
    """A request refused with a status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Console:
    """The daemon's parts the console uses; every call runs on the daemon's event loop."""

    config: Callable[[], Config]  # the running config (it changes on reload)
    state: State
    poll: Callable[[str], Awaitable[PollResult]]  # poll a source now, as the scheduler would
    wake: Callable[[Iterable[str]], None]  # tell the webhooks' workers to look for due work
    listen_host: str

    def sources(
        self, *, match: str | None, failing: bool, offset: int, limit: int
    ) -> dict[str, Any]:
        """A page of the configured sources, then of those only another instance's config has
        (still scheduled in the state), paged and filtered by the state's query."""
        config = self.config()
        names = [spec.name for spec in config.sources]
        admin, now = self.state.admin, time.time()
        total, rows = admin.sources(
            names, match=match, failing=failing, offset=offset, limit=limit, scheduled_at=now
        )
        failing_total, _ = admin.sources(names, failing=True, limit=0, scheduled_at=now)
        listed, _ = admin.sources(names, limit=0, scheduled_at=now)
        specs = {spec.name: spec for spec in config.sources} if rows else {}
        return {
            "total": total,
            "offset": offset,
            "limit": limit,
            "configured": len(names),
            "elsewhere": listed - len(names),
            "failing": failing_total,
            "sources": [source_view(specs.get(row.name), row) for row in rows],
        }

    def source(self, name: str) -> dict[str, Any]:
        """One configured source, or one only another instance's config has (still scheduled
        in the state: `configured` false); ApiError 404 if there is neither of that name."""
        spec = self.config().source(name)
        if spec is not None:
            _, rows = self.state.admin.sources([name])
            return source_view(spec, rows[0])
        _, rows = self.state.admin.sources([], scheduled_at=time.time(), only=name)
        if not rows:
            raise ApiError(404, f"unknown source {name!r}")
        return source_view(None, rows[0])

    def webhooks(self) -> list[dict[str, Any]]:
        """Each webhook with its pending, delivered and dead counts."""
        config = self.config()
        return webhook_views(config, self.state.admin.delivery_counts(config.webhooks))
