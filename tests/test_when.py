"""`when:`: an expression over each change event; false (or raising): neither stored nor sent."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bridge.config import load_config
from bridge.delivery.dispatcher import Dispatcher
from bridge.http import HttpClient
from bridge.polling.conditions import Conditions
from bridge.polling.engine import Engine
from bridge.service.metrics import Metrics
from bridge.sources.registry import load
from bridge.state import open_state
from bridge.templates import Limits, Renderer
from tests.conftest import (
    SECRET,
    Origin,
    Receiver,
    bridge_config,
    engine_for,
    http_source,
    run_cli,
    webhook,
)

DROP = "type != 'item.changed' or after.price < before.price * 0.9"


def shop(*prices: tuple[str, float], stock: int = 1) -> dict[str, object]:
    """The fake shop's answer: items by sku with their price."""
    return {"items": [{"sku": sku, "price": p, "stock": stock} for sku, p in prices]}


def config(origin: Origin, receiver: Receiver, when: str) -> str:
    return bridge_config(
        http_source("shop", origin.url("/items"), items="items", key="sku", when=when,
                    webhooks=["hook"]),
        webhooks={"hook": webhook(receiver.url(), SECRET)},
    )  # fmt: skip


async def test_only_drops_of_ten_percent_are_delivered(
    origin: Origin, receiver: Receiver, write_config
) -> None:
    origin.set("/items", shop(("a", 100.0), ("b", 100.0), ("c", 100.0)))
    path = write_config(config(origin, receiver, DROP))
    async with engine_for(path) as engine:
        assert (await engine.poll("shop")).result == "new"
        # a: -20 %, b: -5 %, c: +10 %, d: new (not an item.changed: passes the condition)
        origin.set("/items", shop(("a", 80.0), ("b", 95.0), ("c", 110.0), ("d", 5.0)))
        polled = await engine.poll("shop")
        assert polled.result == "changed"
        await engine.deliver_due()
        got = [(e["type"], e["data"]["key"]) for e in receiver.events()]
        assert got == [("item.added", "d"), ("item.changed", "a")]
        # the events the condition refused were not stored either
        stored = [(e["type"], e["key"]) for e in engine.state.admin.events(source="shop")]
        assert sorted(stored) == [("item.added", "d"), ("item.changed", "a")]
        # ... but the snapshot moved on: b's next drop is measured from 95, not from 100
        assert engine.state.snapshots.item_contents("shop", ["b"])["b"]["price"] == 95.0
        origin.set("/items", shop(("a", 80.0), ("b", 90.0), ("c", 110.0), ("d", 5.0)))
        await engine.poll("shop")  # 95 -> 90 is a drop of 5 %: nothing
        origin.set("/items", shop(("a", 80.0), ("b", 80.0), ("c", 110.0), ("d", 5.0)))
        await engine.poll("shop")  # 90 -> 80: 11 %
        await engine.deliver_due()
    assert [(e["type"], e["data"]["key"]) for e in receiver.events()][2:] == [("item.changed", "b")]
    assert receiver.events()[2]["data"]["before"]["price"] == 90.0


async def test_a_raising_expression_counts_as_false_with_one_warning_and_a_metric(
    origin: Origin, receiver: Receiver, write_config, caplog: pytest.LogCaptureFixture
) -> None:
    origin.set("/items", {"items": [{"sku": s, "price": 10, "stock": 1} for s in "abc"]})
    when = "after.price / after.stock < 100"  # raises where stock is 0
    path = write_config(config(origin, receiver, when))
    metrics = Metrics()
    cfg = load_config(path, {})
    state = open_state(cfg.state)
    try:
        async with HttpClient() as http:
            dispatcher = Dispatcher(cfg.webhooks, state.outbox, http, out=io.StringIO())
            engine = Engine(cfg, state, http, metrics=metrics)
            await engine.poll("shop")
            origin.set(
                "/items",
                {"items": [{"sku": "a", "price": 11, "stock": 0},
                           {"sku": "b", "price": 12, "stock": 0},
                           {"sku": "c", "price": 13, "stock": 1}]},
            )  # fmt: skip
            with caplog.at_level(logging.WARNING, logger="bridge.polling"):
                polled = await engine.poll("shop")
            await dispatcher.deliver_due()
    finally:
        state.close()
    assert [e["data"]["key"] for e in polled.events] == ["c"]
    assert [e["data"]["key"] for e in receiver.events()] == ["c"]
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.polling.conditions"]
    assert lines == [
        f"source shop: when: {when} raised for 2 events "
        "(first: item.changed a: division by zero); they were not sent"
    ]
    scraped = generate_latest(metrics.registry).decode()
    assert 'bridge_when_errors_total{source="shop"} 2.0' in scraped


@pytest.mark.slow
async def test_a_runaway_expression_costs_its_time_limit_not_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A sound expression would take about a second here; the renderer's limit stops it.
    path = tmp_path / "bridge.yaml"
    slow = "(('ab' * 400000)|list|sort|join|length) > 0"
    path.write_text(bridge_config(http_source("shop", "http://127.0.0.1:9/", when=slow)))
    spec = load_config(path, {}).sources[0]
    renderer = Renderer(Limits(time=0.1), processes=1)
    try:
        conditions = Conditions(renderer)
        drafts = [("item.changed", {"source": "shop", "key": "a", "after": {}})]
        with caplog.at_level(logging.WARNING, logger="bridge.polling"):
            assert await conditions.sift(load("http")(spec), drafts) == []
        assert "expression ran out of time (100 ms)); it was not sent" in caplog.text
        # the worker was replaced, and the next poll's expressions run again
        sound = load("http")(replace(spec, when="true"))
        assert await conditions.sift(sound, drafts) == drafts
    finally:
        renderer.close()


@pytest.mark.slow  # runs `bridge check`
def test_check_reports_a_syntax_error_as_file_line(write_config) -> None:
    text = bridge_config(
        http_source("shop", "http://x/items", items="items", key="sku", when="after.price <"),
        state=None,
    )
    path = write_config(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "when:" in t)
    result = run_cli("check", "-c", str(path))
    assert result.code == 2, result.stdout
    [problem] = result.stderr.strip().splitlines()
    assert problem.startswith(f"bridge: {path}:{line}: sources[0].when: invalid expression: ")
    assert "Traceback" not in result.stderr


def test_when_and_confirm_are_allowed_under_defaults(write_config) -> None:
    path = write_config(
        bridge_config(
            http_source("a", "http://x/a"),
            http_source("b", "http://x/b", when="true", confirm=1),
            defaults={"when": "type != 'item.removed'", "confirm": 3},
        )
    )
    a, b = load_config(path, {}).sources
    assert (a.when, a.confirm) == ("type != 'item.removed'", 3)
    assert (b.when, b.confirm) == ("true", 1)
