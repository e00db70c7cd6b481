"""The origin of benchmarks/postgresql.py: harness's nginx, with a log that says who polled when.

Every `bridge` process of a run sends its label as the X-Instance header (the configs' defaults
take it from $BENCH_INSTANCE), and nginx logs the time, that label, the path and the status of
each request to docs.log. From that log alone come each instance's share of the polls and the
gaps between successive polls of one source. /changing/ answers every request with a document
one of whose items is new each time, so every poll of it finds a change.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import harness
import orjson
from harness import ITEMS_PER_DOC, Nginx, doc_item


def _changing_body() -> str:
    # Pass 2's documents: 20 keyed items; item 0's version is nginx's $request_id, new at
    # every request. Braces doubled: the template goes through str.format.
    items: list[dict[str, object]] = [doc_item(0, k, 1) for k in range(ITEMS_PER_DOC)]
    items[0]["version"] = "$request_id"
    return orjson.dumps({"page": 0, "items": items}).decode().replace("{", "{{").replace("}", "}}")


CHANGING = (
    "        location /changing/ {{ access_log {work}/docs.log counted; etag off;"
    " if_modified_since off; return 200 '" + _changing_body() + "'; }}\n"
)
TEMPLATE = harness.NGINX_CONF.replace(
    'log_format counted "$request_method $uri $status";',
    'log_format counted "$msec $http_x_instance $request_method $uri $status";',
).replace("        # The webhook sink.\n", CHANGING + "        # The webhook sink.\n")
assert TEMPLATE != harness.NGINX_CONF and "$msec" in TEMPLATE and "/changing/" in TEMPLATE


class Origin(Nginx):
    """harness.Nginx serving TEMPLATE: harness's locations, the timed log, /changing/."""

    def start(self) -> Origin:
        """Start nginx with TEMPLATE (harness.Nginx.start writes harness.NGINX_CONF)."""
        saved, harness.NGINX_CONF = harness.NGINX_CONF, TEMPLATE
        try:
            super().start()
        finally:
            harness.NGINX_CONF = saved
        return self


@dataclass(frozen=True)
class Request:
    """One line of docs.log."""

    at: float
    instance: str
    path: str
    status: str


def log_path() -> Path:
    """docs.log, in harness.WORK (which a benchmark may point elsewhere)."""
    return harness.WORK / "docs.log"


def log_size() -> int:
    """docs.log's size now: an offset to read from later."""
    return harness.file_size(log_path())


def requests(since: int, until: int | None = None) -> list[Request]:
    """The requests nginx logged between two offsets of docs.log."""
    if not log_path().exists():
        return []
    with log_path().open("rb") as f:
        f.seek(since)
        data = f.read() if until is None else f.read(until - since)
    out = []
    for line in data.decode().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[2] == "GET":
            out.append(Request(float(parts[0]), parts[1], parts[3], parts[4]))
    return out


def shares(reqs: list[Request]) -> dict[str, int]:
    """Requests by instance label."""
    return dict(Counter(r.instance for r in reqs))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class Lateness:
    """Gaps between successive polls of one source at the origin, minus the interval."""

    gaps: int  # how many gaps were measured
    p50: float
    p99: float
    max: float
    over_2s: int  # gaps more than 2 s late
    missed: int  # gaps of two intervals or more: a round with no poll of that source
    sources: int  # sources with at least one gap
    twice: int  # polls of one source by two instances within a tenth of an interval


def lateness(reqs: list[Request], every: float) -> Lateness:
    """Per source, each gap between successive requests minus `every` (seconds)."""
    times: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for r in reqs:
        times[r.path].append((r.at, r.instance))
    late: list[float] = []
    missed = twice = 0
    for seen in times.values():
        seen.sort()
        for (a, who_a), (b, who_b) in zip(seen, seen[1:], strict=False):
            gap = b - a
            if gap < every / 10:
                twice += who_a != who_b
                continue
            missed += gap >= 2 * every
            late.append(gap - every)
    return Lateness(
        gaps=len(late),
        p50=statistics.median(late) if late else 0.0,
        p99=percentile(late, 99),
        max=max(late, default=0.0),
        over_2s=sum(1 for x in late if x > 2),
        missed=missed,
        sources=sum(1 for s in times.values() if len(s) > 1),
        twice=twice,
    )


def hook_count(since: int = 0) -> tuple[int, int]:
    """Deliveries the sink answered (204) after a hook.log offset, and the offset now."""
    return harness.count_lines(harness.WORK / "hook.log", since, b" 204")
