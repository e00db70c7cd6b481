"""Prometheus metrics: counters the engine and workers bump; queue gauges read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    """One registry per process (tests make their own, so counters never leak between them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "bridge_polls", "Polls by outcome.", ["source", "result"], registry=self.registry
        )
        self.poll_duration = Histogram(
            "bridge_poll_duration_seconds",
            "Wall time of one poll, fetch to commit.",
            registry=self.registry,
        )
        self.events = Counter(
            "bridge_events", "Events detected.", ["source", "type"], registry=self.registry
        )
        self.deliveries = Counter(
            "bridge_deliveries",
            "Delivery attempts by outcome (delivered, pending = will retry, dead).",
            ["webhook", "result"],
            registry=self.registry,
        )
        self._delivery_counters: dict[tuple[str, str], Counter] = {}

    def observe_queue(self, counts: Callable[[], dict[str, dict[str, int]]]) -> None:
        """Expose bridge_delivery_queue{webhook,status}, read from the state file at scrape time."""
        self.registry.register(_QueueCollector(counts))

    def delivery_result(self, webhook: str, result: str) -> None:
        """Count one attempt's outcome."""
        counter = self._delivery_counters.get((webhook, result))
        if counter is None:  # labels() costs more than the increment: children are kept
            counter = self._delivery_counters[webhook, result] = self.deliveries.labels(
                webhook, result
            )
        counter.inc()


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
