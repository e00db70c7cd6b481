"""Times for people: an absolute UTC time, and friendly relative ones ("2m ago", "in 3m").
Shared by the command's tables and the console's pages."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def when(ts: float | None) -> str:
    """An absolute UTC time, or "-"."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def span(seconds: float) -> str:
    """A rough length of time in its largest unit: 42s, 3m, 5h, 2d."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def relative(ts: float | None, now: float | None = None, *, past: str | None = None) -> str:
    """Like "2m ago", "in 3m", "now" or "-"; `past` replaces "... ago" (for a due next poll)."""
    if ts is None:
        return "-"
    delta = ts - (time.time() if now is None else now)
    if abs(delta) < 1:
        return "now"
    if delta > 0:
        return f"in {span(delta)}"
    return past if past is not None else f"{span(delta)} ago"
