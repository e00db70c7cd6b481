"""The Prometheus exposition of the daemon's counts, parsed back with prometheus_client's parser."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.service.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_and_a_cumulative_duration_histogram():
    m = Metrics()
    m.poll("api", "unchanged", 0.004, [])
    m.poll("api", "unchanged", 0.005, [])  # on a bound: counted in le="0.005"
    m.poll("api", "changed", 0.3, ["item.changed", "item.added", "item.changed"])
    m.poll("feed", "error", 42.0, [])
    m.delivery_result("hook", "delivered")
    m.delivery_result("hook", "pending")
    m.delivery_result("hook", "delivered")
    m.observe_queue(lambda: {"hook": {"pending": 3, "dead": 1}})
    got = samples(m)

    def v(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert v("bridge_polls_total", source="api", result="unchanged") == 2
    assert v("bridge_polls_total", source="api", result="changed") == 1
    assert v("bridge_polls_total", source="feed", result="error") == 1
    assert v("bridge_events_total", source="api", type="item.changed") == 2
    assert v("bridge_events_total", source="api", type="item.added") == 1
    assert v("bridge_deliveries_total", webhook="hook", result="delivered") == 2
    assert v("bridge_deliveries_total", webhook="hook", result="retry") == 1
    assert v("bridge_delivery_queue", webhook="hook", status="pending") == 3
    assert v("bridge_poll_duration_seconds_bucket", le="0.005") == 2
    assert v("bridge_poll_duration_seconds_bucket", le="0.25") == 2
    assert v("bridge_poll_duration_seconds_bucket", le="0.5") == 3
    assert v("bridge_poll_duration_seconds_bucket", le="10.0") == 3
    assert v("bridge_poll_duration_seconds_bucket", le="+Inf") == 4
    assert v("bridge_poll_duration_seconds_count") == 4
    assert abs(v("bridge_poll_duration_seconds_sum") - 42.309) < 1e-9


def test_a_fresh_process_exposes_empty_families():
    got = samples(Metrics())
    assert got[("bridge_poll_duration_seconds_count", frozenset())] == 0
    assert not any(name == "bridge_polls_total" for name, _ in got)
