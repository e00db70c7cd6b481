"""Delivery end to end: signatures the standardwebhooks package accepts, retries, dead, replay."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from typing import Any

import pytest
from standardwebhooks import Webhook

from bridge.config import WebhookSpec
from bridge.delivery.policy import decide
from bridge.delivery.signing import secret_key, sign
from bridge.polling.engine import Engine
from tests.conftest import (
    SECRET,
    Origin,
    Receiver,
    async_wait_for,
    bridge_config,
    engine_for,
    http_source,
    webhook,
)

SECOND_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


def hook(url: str, **options: Any) -> dict[str, dict[str, Any]]:
    """`webhooks:` of one, `hook`: signed, two quick retries, four at a time; an option given as
    None is left out."""
    defaults = {"secret": SECRET, "retry": ["50ms", "50ms"], "timeout": "2s", "concurrency": 4}
    options = {**defaults, "headers": {"X-Team": "ops"}, **options}
    return {"hook": webhook(url, **{k: v for k, v in options.items() if v is not None})}


def api(origin: Origin, name: str = "api", **options: Any) -> dict[str, Any]:
    """A source of the origin's /items, keyed by id, whose first poll sends everything."""
    defaults = {"items": "@", "key": "id", "on_first_poll": "emit", "webhooks": ["hook"]}
    return http_source(name, origin.url("/items"), **{**defaults, **options})


async def deliver_until_settled(engine: Engine, rounds: int = 20) -> None:
    """Run `once`-style drains until nothing is pending (retries are 50 ms apart)."""
    for _ in range(rounds):
        await engine.deliver_due()
        if not engine.state.admin.deliveries(status="pending"):
            return
        await asyncio.sleep(0.06)


async def test_signature_verifies_with_standardwebhooks(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1, "name": "héllo"}])
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url())))
    async with engine_for(path) as engine:
        [event] = (await engine.poll("api")).events
        await engine.deliver_due()
    [got] = receiver.received
    verified = Webhook(SECRET).verify(got.body, got.headers)
    assert verified == event
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Team"] == "ops"
    assert got.headers["User-Agent"].startswith("bridge/")
    assert "." not in got.headers["webhook-id"]
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5


async def test_several_secrets_each_verify(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    secrets = hook(receiver.url(), secret=[SECRET, SECOND_SECRET])
    path = write_config(bridge_config(api(origin), webhooks=secrets))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
    [got] = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(got.body, got.headers)
    Webhook(SECOND_SECRET).verify(got.body, got.headers)


async def test_a_tampered_body_does_not_verify(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url())))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
    [got] = receiver.received
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(SECRET).verify(got.body.replace(b'"id":1', b'"id":2'), got.headers)


async def test_retries_keep_the_webhook_id(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.answer(500, 502)
    path = write_config(
        bridge_config(api(origin), webhooks=hook(receiver.url(), retry=["50ms"] * 3))
    )
    async with engine_for(path) as engine:
        await engine.poll("api")
        await deliver_until_settled(engine)
        [delivery] = engine.state.admin.deliveries()
    assert len(receiver.received) == 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    for r in receiver.received:
        Webhook(SECRET).verify(r.body, r.headers)


async def test_spent_schedule_is_dead_then_replay_delivers(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.answer(500, 500, 500)
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url())))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await deliver_until_settled(engine)
        [dead] = engine.state.admin.deliveries(status="dead")
        assert dead["attempts"] == 3 and dead["last_error"] == "HTTP 500"
        assert engine.state.admin.requeue(time.time(), dead=True) == 1
        await engine.deliver_due()
        [delivered] = engine.state.admin.deliveries(status="delivered")
        attempts = engine.state.admin.attempts(delivered["id"])
    assert [a["status"] for a in attempts] == [500, 500, 500, 204]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1


async def test_410_is_dead_at_once(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.answer(410)
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url())))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await deliver_until_settled(engine)
        [dead] = engine.state.admin.deliveries(status="dead")
    assert dead["attempts"] == 1 and len(receiver.received) == 1


async def test_a_redirect_is_a_failure_not_followed(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.answer(302)
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url())))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
        [pending] = engine.state.admin.deliveries(status="pending")
    assert pending["last_status"] == 302
    assert len(receiver.received) == 1  # /elsewhere was never requested


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(status: int, origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.answer((status, {"Retry-After": "120"}))
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url())))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
        [pending] = engine.state.admin.deliveries(status="pending")
    wait = pending["next_attempt_at"] - time.time()
    assert 110 < wait <= 121  # not the 50 ms of the schedule


def test_retry_schedule_has_jitter_within_20_percent() -> None:
    spec = WebhookSpec(name="w", url="http://x", retry=(100.0, 200.0))
    rng = random.Random(1)
    delays = [
        decide(spec, 0, 0.0, http_status=500, rng=rng).next_attempt_at or 0 for _ in range(200)
    ]
    assert min(delays) >= 80 and max(delays) <= 120 and max(delays) - min(delays) > 20
    second = decide(spec, 1, 0.0, http_status=None, error="refused", rng=rng)
    assert second.status == "pending" and 160 <= (second.next_attempt_at or 0) <= 240
    assert decide(spec, 2, 0.0, http_status=500).status == "dead"


def test_sign_matches_the_reference_implementation() -> None:
    body = b'{"type":"item.added"}'
    header = sign([SECRET], "evt_1", 1700000000, body)
    expected = Webhook(SECRET).sign("evt_1", _datetime(1700000000), body.decode())
    assert header == expected


def _datetime(ts: int):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


@pytest.mark.slow  # deliveries that take 0.2 s, three rounds of two
async def test_concurrency_is_bounded_per_endpoint(origin, receiver, write_config) -> None:
    sources = [api(origin, f"api{i}") for i in range(6)]
    webhooks = hook(receiver.url(), retry=["1s"], concurrency=2)
    path = write_config(bridge_config(*sources, webhooks=webhooks))
    origin.set("/items", [{"id": 1}])
    receiver.delay = 0.2
    async with engine_for(path) as engine:
        await engine.poll_many([s.name for s in engine.config.sources])
        await engine.deliver_due()
    assert len(receiver.received) == 6
    assert receiver.max_in_flight == 2


async def test_events_of_one_source_go_out_in_order(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": i} for i in range(8)])
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url())))
    receiver.delay = 0.02
    async with engine_for(path) as engine:
        [*events] = (await engine.poll("api")).events
        await engine.deliver_due()
    assert receiver.max_in_flight == 1  # one source: one at a time, so in order
    assert [e["data"]["key"] for e in receiver.events()] == [e["data"]["key"] for e in events]


@pytest.mark.slow  # waits out a 1.5 s delivery
async def test_a_hung_endpoint_does_not_delay_another(origin, receiver, write_config) -> None:
    slow = Receiver()
    slow.delay = 1.5
    slow.server.start()
    try:
        webhooks = {
            **hook(receiver.url(), retry=["1s"], concurrency=1),
            "slow": webhook(slow.url(), timeout="5s"),
        }
        path = write_config(
            bridge_config(api(origin, webhooks=["slow", "hook"]), webhooks=webhooks)
        )
        origin.set("/items", [{"id": 1}])
        async with engine_for(path) as engine:
            await engine.poll("api")
            engine.dispatcher.start()
            started = time.monotonic()
            await async_wait_for(lambda: len(receiver.received) == 1, timeout=5)
            fast_took = time.monotonic() - started
            await async_wait_for(lambda: len(slow.received) == 1, timeout=5)
            await engine.dispatcher.stop(grace=1)
        assert fast_took < 1.0
    finally:
        slow.server.stop()


async def test_templated_body_is_sent_signed(origin, receiver, write_config) -> None:
    origin.set("/items", [{"id": 1, "name": "v1.0"}])
    body = {
        "text": "{{ data.source }}: {{ type }} {{ data.after.name }}",
        "tags": ["bridge", "{{ data.key }}"],
    }
    templated = hook(receiver.url(), retry=["1s"], concurrency=1, headers=None, body=body)
    path = write_config(bridge_config(api(origin), webhooks=templated))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
        [stored] = engine.state.admin.events()
    [got] = receiver.received
    assert Webhook(SECRET).verify(got.body, got.headers) == {
        "text": "api: item.added v1.0",
        "tags": ["bridge", "1"],
    }
    # The body carries no id, but the header still names the event.
    assert got.headers["webhook-id"] == stored["id"]


async def test_stdout_webhook_prints_json_lines(origin, write_config) -> None:
    origin.set("/items", [{"id": 1}])
    stdout = hook("-", retry=["1s"], concurrency=1)
    path = write_config(bridge_config(api(origin), webhooks=stdout))
    async with engine_for(path) as engine:
        out = io.StringIO()
        engine.workers["hook"].out = out
        [event] = (await engine.poll("api")).events
        await engine.deliver_due()
        assert engine.state.admin.deliveries()[0]["status"] == "delivered"
    import orjson

    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == [event]


def test_secret_without_base64_padding_works() -> None:
    padded = "whsec_" + base64.b64encode(b"0123456789abcdefghij").decode()
    assert padded.endswith("=")
    assert secret_key(padded.rstrip("=")) == secret_key(padded) == b"0123456789abcdefghij"
