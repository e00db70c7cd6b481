"""A webhook's `rate:`: a receiver never gets more than so many requests a second, whatever the
backlog; the backlog waits in the outbox, and `bridge status` says when it will drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bridge.config import load_config
from bridge.config.units import Rate, parse_rate
from bridge.delivery.worker import StartWindow
from bridge.errors import ConfigError
from tests.conftest import (
    Origin,
    ThreadedServer,
    async_wait_for,
    bridge_config,
    engine_for,
    http_source,
    run_cli,
    webhook,
)


class CountingReceiver:
    """Records when each POST arrived, and which event it carried."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.ids: set[str] = set()
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.server = ThreadedServer(app)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        await request.read()
        self.ids.add(request.headers["webhook-id"])
        return web.Response(status=204)

    def busiest_second(self) -> int:
        """The most requests that arrived within any one second (a sliding window)."""
        times, most, first = sorted(self.arrivals), 0, 0
        for last, at in enumerate(times):
            while times[first] <= at - 1.0:
                first += 1
            most = max(most, last - first + 1)
        return most


@pytest.fixture
def counting() -> Iterator[CountingReceiver]:
    receiver = CountingReceiver()
    receiver.server.start()
    yield receiver
    receiver.server.stop()


def backlog_config(origin: Origin, hook_url: str, count: int, rate: str) -> str:
    """A source whose first poll emits `count` events for the webhook `hook`."""
    origin.set("/items", {"items": [{"id": i} for i in range(count)]})
    src = http_source(
        "many",
        origin.url("/items"),
        items="items",
        key="id",
        on_first_poll="emit",
        webhooks=["hook"],
    )
    return bridge_config(src, webhooks={"hook": webhook(hook_url, rate=rate, concurrency=8)})


# Requests started within one second of each other can arrive a little further apart, and
# the other way round: at most the requests in flight (concurrency) cross a second's edge.
SLACK = 8


@pytest.mark.slow
async def test_a_backlog_of_1000_is_delivered_at_the_rate(
    origin: Origin, counting: CountingReceiver, write_config
) -> None:
    path = write_config(backlog_config(origin, counting.server.url("/hook"), 1000, "200/s"))
    async with engine_for(path) as pipe:
        result = await pipe.poll("many")
        assert len(result.events) == 1000
        assert pipe.state.admin.pending_by_webhook() == {"hook": 1000}
        pipe.dispatcher.start()
        try:
            await async_wait_for(lambda: len(counting.ids) == 1000, timeout=30)
            await async_wait_for(lambda: not pipe.state.admin.pending_by_webhook(), timeout=5)
        finally:
            await pipe.dispatcher.stop(1.0)
    assert len(counting.arrivals) == 1000  # each once: none claimed and then dropped
    assert counting.busiest_second() <= 200 + SLACK
    # 1000 at 200 a second need at least four seconds after the first 200 went out
    assert counting.arrivals[-1] - counting.arrivals[0] >= 3.9


@pytest.mark.slow
async def test_once_drains_at_the_rate_too(
    origin: Origin, counting: CountingReceiver, write_config
) -> None:
    path = write_config(backlog_config(origin, counting.server.url("/hook"), 250, "100/s"))
    async with engine_for(path) as pipe:
        await pipe.poll("many")
        failures = await pipe.deliver_due()  # what `bridge once` does
        assert failures == []
        assert not pipe.state.admin.pending_by_webhook()
    assert len(counting.ids) == len(counting.arrivals) == 250
    assert counting.busiest_second() <= 100 + SLACK
    assert counting.arrivals[-1] - counting.arrivals[0] >= 1.9


@pytest.mark.slow
async def test_the_worker_claims_no_more_than_the_rate_allows(
    origin: Origin, counting: CountingReceiver, write_config
) -> None:
    # A minute's rate of 30: the first claims take 30, the rest stay pending in the outbox.
    path = write_config(backlog_config(origin, counting.server.url("/hook"), 100, "30/m"))
    async with engine_for(path) as pipe:
        await pipe.poll("many")
        pipe.dispatcher.start()
        try:
            await async_wait_for(lambda: len(counting.ids) == 30, timeout=10)
            await asyncio.sleep(0.3)  # time for any claim beyond the rate to show
            assert len(counting.arrivals) == 30
            await async_wait_for(lambda: pipe.state.admin.pending_by_webhook() == {"hook": 70})
        finally:
            await pipe.dispatcher.stop(1.0)


def test_start_window_counts_starts_in_the_last_period() -> None:
    now = [100.0]
    window = StartWindow(Rate(3, 1.0), clock=lambda: now[0])
    assert (window.allowance(), window.wait()) == (3, 0.0)
    window.started(2)
    now[0] = 100.5
    window.started(1)
    assert window.allowance() == 0
    assert window.wait() == pytest.approx(0.5)  # when the first two leave the window
    now[0] = 101.0
    assert window.allowance() == 2
    now[0] = 101.5
    assert window.allowance() == 3


def test_rate_values() -> None:
    assert parse_rate("10/s") == Rate(10, 1.0)
    assert str(parse_rate("600/m")) == "600/m"
    assert parse_rate("600/m").per_second == 10.0
    for bad in ("10", "0/s", "1.5/s", "10/h", "fast"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_rate_config(tmp_path: Path) -> None:
    src = http_source("s", "http://127.0.0.1:1/x", webhooks=["hook"])
    path = tmp_path / "bridge.yaml"
    path.write_text(bridge_config(src, webhooks={"hook": webhook("-", rate="10/s")}))
    assert load_config(path, env={}).webhooks["hook"].rate == Rate(10, 1.0)
    path.write_text(bridge_config(src, webhooks={"hook": webhook("-")}))
    assert load_config(path, env={}).webhooks["hook"].rate is None
    path.write_text(bridge_config(src, webhooks={"hook": webhook("-", rate="10 per second")}))
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "rate:" in t)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}:{line}: webhooks.hook.rate: must be a count per second or minute such as "
        "10/s or 600/m, not '10 per second'"
    )


@pytest.mark.slow
async def test_status_shows_the_backlog_and_when_it_drains(
    origin: Origin, counting: CountingReceiver, write_config
) -> None:
    path = write_config(backlog_config(origin, counting.server.url("/hook"), 1000, "10/s"))
    async with engine_for(path) as pipe:
        await pipe.poll("many")  # committed, not delivered: the dispatcher is not started
    result = run_cli("status", "-c", str(path))
    assert result.code == 0, result.stderr
    assert "  hook: 1,000 pending; at 10/s drained in about 1m40s" in result.stdout.splitlines()
    assert counting.arrivals == []
