"""The per-host gate: a bound on concurrency, first come first served, and no slot lost to a
cancellation."""

from __future__ import annotations

import asyncio

import pytest

from bridge.http.gate import Gate


async def test_never_more_than_its_slots_at_once_and_first_come_first_served():
    gate = Gate(3)
    inside = peak = 0
    order: list[int] = []

    async def request(i: int) -> None:
        nonlocal inside, peak
        async with gate:
            order.append(i)
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001 * (i % 4))
            inside -= 1

    await asyncio.gather(*(request(i) for i in range(50)))
    assert peak == 3
    assert order == list(range(50))  # the waiters got their slots in the order they came
    assert gate.waiting == 0
    # every slot came back: three more enter at once
    await asyncio.wait_for(asyncio.gather(*(request(i) for i in range(3))), 1)


async def test_a_cancelled_waiter_loses_no_slot():
    gate = Gate(1)
    release = asyncio.Event()

    async def holder() -> None:
        async with gate:
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(holder()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[1].cancel()
    release.set()
    await first
    await asyncio.wait_for(asyncio.gather(waiters[0], waiters[2]), 1)
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    # the one slot is free again
    await asyncio.wait_for(holder(), 1)


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on():
    gate = Gate(1)
    entered: list[str] = []

    async def holder(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate:
            entered.append(name)
            if hold is not None:
                await hold.wait()

    hold = asyncio.Event()
    first = asyncio.create_task(holder("first", hold))
    await asyncio.sleep(0)
    second = asyncio.create_task(holder("second"))
    third = asyncio.create_task(holder("third"))
    await asyncio.sleep(0)
    hold.set()
    await asyncio.sleep(0)  # first leaves: its slot is handed to second's waiter...
    second.cancel()  # ...and second is cancelled before it could run
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.wait_for(third, 1)
    assert entered == ["first", "third"]
    await asyncio.wait_for(holder("fourth"), 1)  # and the slot is free again


def test_a_gate_needs_a_slot():
    with pytest.raises(ValueError):
        Gate(0)
