"""A delivery queued where no wake reaches this process's workers (another process on the state
file, another instance while this one is not listening) still goes out within about a second:
an idle worker looks on its own (bridge/delivery/worker.py IDLE_RECHECK)."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from bridge.config import WebhookSpec
from bridge.delivery.dispatcher import Dispatcher
from bridge.http import HttpClient
from tests.conftest import async_wait_for
from tests.state.test_contract import enqueue


@pytest.mark.slow  # waits out three whole idle pauses, a second each
async def test_a_delivery_another_state_queued_goes_out_within_a_second(
    two_states, receiver
) -> None:
    delivering, other = two_states  # `delivering` never hears of what `other` commits
    spec = WebhookSpec(name="hook", url=receiver.url(), timeout=2.0)
    async with HttpClient() as http:
        dispatcher = Dispatcher({"hook": spec}, delivering.outbox, http, out=io.StringIO())
        dispatcher.start()
        try:
            waits = []
            for n in range(1, 4):
                # Queued just after the worker's last look (it recorded the attempt before):
                # the longest wait there is, a whole idle pause.
                await asyncio.sleep(0.1)
                enqueue(other, f"s{n}", webhooks=("hook",), at=time.time())
                queued = time.monotonic()
                await async_wait_for(lambda n=n: len(receiver.received) == n, timeout=5)
                waits.append(time.monotonic() - queued)
        finally:
            await dispatcher.stop(1.0)
    assert max(waits) < 1.5, waits
    sources = [r.json["source"] for r in receiver.received]
    assert sources == ["s1", "s2", "s3"]
