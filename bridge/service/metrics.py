"""Prometheus metrics: counts the engine and workers keep, and queue gauges read at scrape time."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _float_to_go_string


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (prometheus-client's own helper, untyped)."""
    return str(_float_to_go_string(value))  # type: ignore[no-untyped-call]


# Upper bounds of bridge_poll_duration_seconds, ending with +Inf: prometheus_client's defaults.
DURATION_BOUNDS: tuple[float, ...] = Histogram.DEFAULT_BUCKETS


class Metrics:
    """One registry per process (tests make their own, so counts never leak between them).

    Counts are plain ints in dicts, turned into metric families when scraped: a poll bumps a
    few ints instead of going through prometheus_client's children, whose lock and method calls
    were a measurable share of the daemon's CPU per poll. Everything runs on the event loop, so
    no lock.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls: Counter[tuple[str, str]] = Counter()  # (source, result)
        self.events: Counter[tuple[str, str]] = Counter()  # (source, event type)
        self.deliveries: Counter[tuple[str, str]] = Counter()  # (webhook, result)
        self.duration_buckets = [0] * len(DURATION_BOUNDS)  # not cumulative: one per bound
        self.duration_sum = 0.0
        self.registry.register(_CountsCollector(self))

    def poll(self, source: str, result: str, duration: float, event_types: Iterable[str]) -> None:
        """Count one poll, its wall time and its events."""
        self.polls[source, result] += 1
        self.duration_buckets[bisect.bisect_left(DURATION_BOUNDS, duration)] += 1
        self.duration_sum += duration
        for type_ in event_types:
            self.events[source, type_] += 1

    def delivery_result(self, webhook: str, result: str) -> None:
        """Count one attempt's outcome."""
        self.deliveries[webhook, result] += 1

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
            "Delivery attempts by outcome (delivered, pending = will retry, dead).",
            ["webhook", "result"],
            m.deliveries,
        )


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
