"""Prometheus metrics: counts the engine and workers keep, and queue gauges read at scrape time."""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _float_to_go_string

from bridge import __version__


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (prometheus-client's own helper, untyped)."""
    return str(_float_to_go_string(value))  # type: ignore[no-untyped-call]


# Upper bounds of bridge_poll_duration_seconds, ending with +Inf: prometheus_client's defaults.
DURATION_BOUNDS: tuple[float, ...] = Histogram.DEFAULT_BUCKETS
# A poll that did not fail: the basis of bridge_source_last_success_timestamp_seconds.
SUCCESSES = frozenset({"new", "changed", "unchanged"})
# An attempt's outcome as the delivery worker reports it -> its `result` label. A failed attempt
# leaves the delivery pending, but what the counter counts is an attempt to be retried.
DELIVERY_RESULTS = {"delivered": "delivered", "pending": "retry", "dead": "dead"}


class Metrics:
    """One registry per process (tests make their own, so counts never leak between them).

    Counts are plain ints in dicts, turned into metric families when scraped: a poll bumps a
    few ints instead of going through prometheus_client's children, whose lock and method calls
    were a measurable share of the daemon's CPU per poll. Everything runs on the event loop, so
    no lock.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.version = __version__
        self.polls: Counter[tuple[str, str]] = Counter()  # (source, result)
        self.events: Counter[tuple[str, str]] = Counter()  # (source, event type)
        self.deliveries: Counter[tuple[str, str]] = Counter()  # (webhook, result)
        self.when_raised: Counter[str] = Counter()  # source -> events its `when:` raised for
        self.duration_buckets = [0] * len(DURATION_BOUNDS)  # not cumulative: one per bound
        self.duration_sum = 0.0
        self.last_success: dict[str, float] = {}  # source -> Unix time of its last good poll
        # The configured sources, when known: a source taken out of the config leaves
        # last_success, or a staleness alert would fire for it forever.
        self.sources: Callable[[], Collection[str]] | None = None
        self.registry.register(_CountsCollector(self))
        # The process's CPU, memory, open files and start time, and the Python version: what a
        # dashboard of any service shows beside its own series.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def poll(self, source: str, result: str, duration: float, event_types: Iterable[str]) -> None:
        """Count one poll, its wall time and its events."""
        self.polls[source, result] += 1
        self.duration_buckets[bisect.bisect_left(DURATION_BOUNDS, duration)] += 1
        self.duration_sum += duration
        for type_ in event_types:
            self.events[source, type_] += 1
        if result in SUCCESSES:
            self.last_success[source] = self.clock()

    def when_errors(self, source: str, count: int) -> None:
        """Count the events of one poll whose `when:` raised (they were not sent)."""
        self.when_raised[source] += count

    def seed_last_success(self, known: Mapping[str, float]) -> None:
        """Last successes read from the state at start, so a restart does not hide a source
        that has been failing since before it; the polls of this process override them."""
        for source, at in known.items():
            self.last_success.setdefault(source, at)

    def delivery_result(self, webhook: str, result: str) -> None:
        """Count one attempt's outcome (the worker's delivered, pending or dead)."""
        self.deliveries[webhook, DELIVERY_RESULTS.get(result, result)] += 1

    def observe_queue(self, counts: Callable[[], dict[str, dict[str, int]]]) -> None:
        """Expose bridge_delivery_queue{webhook,status}, read from the state file at scrape time."""
        self.registry.register(_QueueCollector(counts))


def _counter(name: str, doc: str, labels: list[str], counts: Counter[tuple[str, str]]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, n in sorted(counts.items()):
        family.add_metric(list(label_values), n)
    return family


class _CountsCollector(Collector):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter("bridge_polls", "Polls by outcome.", ["source", "result"], m.polls)
        cumulative, total = [], 0
        for bound, n in zip(DURATION_BOUNDS, m.duration_buckets, strict=True):
            total += n
            cumulative.append((_go_float(bound), total))
        yield HistogramMetricFamily(
            "bridge_poll_duration_seconds",
            "Wall time of one poll, fetch to commit.",
            buckets=cumulative,
            sum_value=m.duration_sum,
        )
        yield _counter("bridge_events", "Events detected.", ["source", "type"], m.events)
        yield _counter(
            "bridge_deliveries",
            "Delivery attempts by outcome (delivered, retry = failed and will be retried, dead).",
            ["webhook", "result"],
            m.deliveries,
        )
        raised = CounterMetricFamily(
            "bridge_when_errors",
            "Change events whose when: expression raised; they were not sent.",
            labels=["source"],
        )
        for source, n in sorted(m.when_raised.items()):
            raised.add_metric([source], n)
        yield raised
        last = GaugeMetricFamily(
            "bridge_source_last_success_timestamp_seconds",
            "Unix time of the source's last successful poll.",
            labels=["source"],
        )
        configured = m.sources() if m.sources is not None else None
        for source, at in sorted(m.last_success.items()):
            if configured is None or source in configured:
                last.add_metric([source], at)
        yield last
        info = InfoMetricFamily("bridge_build", "The running bridge's version.")
        info.add_metric([], {"version": m.version})
        yield info


class _QueueCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, dict[str, int]]]):
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "bridge_delivery_queue",
            "Deliveries by webhook and status.",
            labels=["webhook", "status"],
        )
        for webhook, by_status in sorted(self.counts().items()):
            for status, n in sorted(by_status.items()):
                gauge.add_metric([webhook, status], n)
        yield gauge
