"""Hostile templates and receivers: a body template that loops, explodes or fails costs one failed
attempt with its reason, never the daemon; Retry-After never makes an attempt come sooner than
the schedule says."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.config import WebhookSpec
from bridge.delivery.policy import MAX_RETRY_AFTER, decide
from bridge.templates import Limits, Renderer, TemplateError, evaluate, render_body
from tests.conftest import (
    SECRET,
    Origin,
    Receiver,
    bridge_config,
    engine_for,
    free_port,
    http_source,
    run_cli,
    wait_for,
    webhook,
)

# Each outer turn walks a 1 MB string: 10^10 steps, far beyond any time limit, and no range()
# budget or size check stops it, so only the renderer's clock can.
RUNAWAY = "{% for a in range(10000) %}{% for b in 'x' * 1000000 %}{% endfor %}{% endfor %}"
NESTED_RANGES = "{% for a in range(10**6) %}{% for b in range(10**6) %}{% endfor %}{% endfor %}"
HUNDRED_MB = "{{ 'x' * 100000000 }}"
FAILING = {"type": "source.failing", "data": {"source": "api", "error": "HTTP 500", "failures": 1}}


def envelope(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the renderer: worker processes bounded in time and size ------------------------------------


@pytest.fixture
def renderer() -> Any:
    r = Renderer(Limits(time=0.5))
    yield r
    r.close()


@pytest.mark.slow  # waits for a rendering process to be killed and replaced
def test_a_runaway_rendering_is_killed_and_its_process_replaced(renderer: Renderer) -> None:
    assert (
        renderer.render_body_sync({"t": "{{ type }}"}, envelope(FAILING))
        == b'{"t":"source.failing"}'
    )
    before = set(renderer.pids())
    assert len(before) == 2
    with pytest.raises(TemplateError, match=r"^body template ran out of time \(500 ms\)$"):
        renderer.render_body_sync({"text": RUNAWAY}, envelope(FAILING))
    killed = before - set(renderer.pids())
    assert len(killed) == 1 and not alive(killed.pop())  # stopped, not left spinning
    assert (
        renderer.render_body_sync({"t": "{{ data.source }}"}, envelope(FAILING)) == b'{"t":"api"}'
    )
    wait_for(lambda: len(renderer.pids()) == 2, timeout=30)  # the pool is whole again


@pytest.mark.slow  # waits out a runaway rendering
async def test_the_event_loop_runs_while_a_rendering_runs_away(renderer: Renderer) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(TemplateError, match="ran out of time"):
            await renderer.render_body({"text": RUNAWAY}, envelope(FAILING))
    finally:
        ticker.cancel()
    assert ticks >= 10  # in-process, the loop would not have turned once in those 0.5 s


def test_closing_the_renderer_stops_its_processes() -> None:
    r = Renderer()
    r.start()
    wait_for(lambda: len(r.pids()) == 2, timeout=30)
    pids = r.pids()
    r.close()
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(TemplateError, match="closed"):
        r.render_body_sync({"t": "x"}, b"{}")


def test_a_hundred_megabyte_string_fails_with_a_size_reason(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match=r"over 1 MB$"):
        renderer.render_body_sync({"text": HUNDRED_MB}, envelope(FAILING))
    # Built in pieces, each small: the output's own limit stops it as it grows.
    pieces = "{% for i in range(5000) %}{{ 'x' * 1000 }}{% endfor %}"
    with pytest.raises(TemplateError, match=r"^body template output over 1 MB$"):
        renderer.render_body_sync({"text": pieces}, envelope(FAILING))
    with pytest.raises(TemplateError, match=r"^body template output over 1 MB$"):
        renderer.render_body_sync({"text": "{{ range(2000)|join('x' * 1000) }}"}, b"{}")


def test_nested_ranges_fail_at_once_on_the_range_budget() -> None:
    started = time.monotonic()
    with pytest.raises(
        TemplateError, match=r"at text: range\(\) over 10000 items in one rendering"
    ):
        render_body({"text": NESTED_RANGES}, envelope(FAILING))
    # The budget is for all of one rendering's range() calls: 200 + 200 x 200 items is over it.
    nested = "{% for a in range(200) %}{% for b in range(200) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match="range"):
        render_body({"text": nested}, b"{}")
    # ... and a template within it renders (100 + 100 x 99 = 10,000 items).
    within = "{% for a in range(100) %}{% for b in range(99) %}{% endfor %}{% endfor %}ok"
    assert render_body({"text": within}, b"{}") == b'{"text":"ok"}'
    assert time.monotonic() - started < 30  # (a bound on the test, not a speed claim)


def test_a_missing_field_renders_empty_as_the_readme_says() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "a field the event lacks renders empty" in " ".join(readme.split())
    template = {"text": "{{ data.source }}: {{ type }} {{ data.after.name }}|{{ data.after }}"}
    # source.failing has no `after` at all; an item.removed has `after: null`.
    assert orjson.loads(render_body(template, envelope(FAILING))) == {
        "text": "api: source.failing |"
    }
    removed = {"type": "item.removed", "data": {"source": "api", "after": None}}
    assert orjson.loads(render_body(template, envelope(removed))) == {
        "text": "api: item.removed |None"
    }


def test_a_template_error_names_where_in_the_body() -> None:
    body = {"attachments": [{"text": "fine"}, {"text": "{{ foo + 1 }}"}]}
    with pytest.raises(TemplateError) as caught:
        render_body(body, b"{}")
    assert str(caught.value) == ("body template failed at attachments[1].text: 'foo' is undefined")


@pytest.mark.slow  # waits out runaway renderings
def test_expressions_go_through_the_same_bounds(renderer: Renderer) -> None:
    when = "type != 'item.changed' or after.price < before.price * 0.9"
    changed = {"type": "item.changed", "before": {"price": 100}, "after": {"price": 80}}
    assert renderer.evaluate_sync(when, changed) is True
    assert renderer.evaluate_sync(when, {**changed, "after": {"price": 95}}) is False
    assert renderer.evaluate_sync(when, {"type": "item.added", "after": {"price": 1}}) is True
    assert renderer.evaluate_sync("after.missing.deeper", changed) is None
    assert evaluate("after.price * 2", changed) == 160  # the same sandbox, in this process
    slow = "((range(10000)|list) * 100)|map('string')|map('upper')|map('lower')|join|length"
    quick = Renderer(Limits(time=0.2))
    try:
        with pytest.raises(TemplateError, match=r"^expression ran out of time \(200 ms\)$"):
            quick.evaluate_sync(slow, {})
        assert quick.evaluate_sync("1 + 1", {}) == 2
    finally:
        quick.close()
    with pytest.raises(TemplateError, match=r"^expression failed: would build a value over 1 MB"):
        renderer.evaluate_sync("'x' * 10**8", {})
    with pytest.raises(TemplateError, match=r"^expression failed: .*undefined"):
        renderer.evaluate_sync("nothing + 1", {})


async def test_async_callers_share_the_pool(renderer: Renderer) -> None:
    bodies = await asyncio.gather(
        *(
            renderer.render_body({"n": "{{ data.n }}"}, envelope({"data": {"n": i}}))
            for i in range(20)
        )
    )
    assert [orjson.loads(b)["n"] for b in bodies] == [str(i) for i in range(20)]


# --- through the real worker -----------------------------------------------------------------


def hook(url: str, **options: Any) -> dict[str, dict[str, Any]]:
    defaults = {"secret": SECRET, "retry": ["50ms", "50ms"], "timeout": "2s", "concurrency": 4}
    return {"hook": webhook(url, **{**defaults, **options})}


def api(origin: Origin, **options: Any) -> dict[str, Any]:
    defaults = {"items": "@", "key": "id", "on_first_poll": "emit", "webhooks": ["hook"]}
    return http_source("api", origin.url("/items"), **{**defaults, **options})


async def settle(engine: Any, rounds: int = 40) -> None:
    for _ in range(rounds):
        await engine.deliver_due()
        if not engine.state.admin.deliveries(status="pending"):
            return
        await asyncio.sleep(0.06)


async def test_a_failing_template_is_a_failed_attempt_then_dead_and_replayable(
    origin: Origin, receiver: Receiver, write_config: Any
) -> None:
    origin.set("/items", [{"id": 1}])
    body = {"text": "{{ foo + 1 }}"}
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url(), body=body)))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
        [pending] = engine.state.admin.deliveries()
        assert pending["status"] == "pending" and pending["attempts"] == 1
        assert pending["last_error"] == "body template failed at text: 'foo' is undefined"
        await settle(engine)
        [dead] = engine.state.admin.deliveries()
        assert dead["status"] == "dead" and dead["attempts"] == 3  # the schedule: 1 + 2 retries
        assert engine.state.admin.requeue(time.time(), dead=True) == 1
        [again] = engine.state.admin.deliveries()
        assert again["status"] == "pending"
    assert receiver.received == []


async def test_a_hundred_megabyte_body_fails_its_attempt_with_a_size_reason(
    origin: Origin, receiver: Receiver, write_config: Any
) -> None:
    origin.set("/items", [{"id": 1}])
    body = {"text": HUNDRED_MB}
    path = write_config(bridge_config(api(origin), webhooks=hook(receiver.url(), body=body)))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
        [pending] = engine.state.admin.deliveries()
    assert pending["attempts"] == 1 and pending["last_error"].endswith("over 1 MB")
    assert receiver.received == []


async def test_a_source_failing_event_renders_its_missing_fields_empty(
    origin: Origin, receiver: Receiver, write_config: Any
) -> None:
    origin.set("/items", {"error": "down"}, status=500)
    body = {"text": "{{ data.source }}: {{ type }} {{ data.after.name }}"}
    source = api(origin, alert_after=1)
    path = write_config(bridge_config(source, webhooks=hook(receiver.url(), body=body)))
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
        [delivered] = engine.state.admin.deliveries()
    assert delivered["status"] == "delivered"
    assert receiver.events() == [{"text": "api: source.failing "}]


# --- Retry-After -----------------------------------------------------------------------------

SPEC = WebhookSpec(name="w", url="http://x", retry=(60.0, 600.0))


@pytest.mark.parametrize("status", [429, 503])
# A date in the past, fixed (a parameter computed from the clock differs between the workers
# of pytest-xdist when their collections straddle a second).
@pytest.mark.parametrize("value", ["0", formatdate(1e9, usegmt=True), "-5", "soon"])
def test_retry_after_never_brings_an_attempt_sooner(status: int, value: str) -> None:
    now = time.time()
    outcome = decide(SPEC, 0, now, http_status=status, headers={"retry-after": value})
    assert outcome.status == "pending"
    assert 48 <= (outcome.next_attempt_at or 0) - now <= 72  # the schedule's 60 s, +-20%


def test_retry_after_may_lengthen_a_wait_up_to_its_cap() -> None:
    longer = decide(SPEC, 0, 0.0, http_status=429, headers={"retry-after": "3600"})
    assert longer.next_attempt_at == 3600
    future = formatdate(time.time() + 7200, usegmt=True)
    dated = decide(SPEC, 0, time.time(), http_status=503, headers={"retry-after": future})
    assert 7100 <= (dated.next_attempt_at or 0) - time.time() <= 7200
    huge = decide(SPEC, 0, 0.0, http_status=429, headers={"retry-after": str(30 * 86400)})
    assert huge.next_attempt_at == MAX_RETRY_AFTER
    # A schedule delay longer than the cap is not cut by a Retry-After.
    patient = WebhookSpec(name="w", url="http://x", retry=(10 * 86400.0,))
    slow = decide(patient, 0, 0.0, http_status=429, headers={"retry-after": "1"})
    assert (slow.next_attempt_at or 0) >= 8 * 86400
    # Only 429 and 503 carry it: a 500's Retry-After is ignored.
    plain = decide(SPEC, 0, 0.0, http_status=500, headers={"retry-after": "3600"})
    assert (plain.next_attempt_at or 0) <= 72


async def test_a_receiver_answering_429_with_retry_after_0_does_not_spend_the_schedule(
    origin: Origin, receiver: Receiver, write_config: Any
) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.answer(*[(429, {"Retry-After": "0"})] * 5)
    path = write_config(
        bridge_config(api(origin), webhooks=hook(receiver.url(), retry=["30s"] * 4))
    )
    async with engine_for(path) as engine:
        await engine.poll("api")
        await engine.deliver_due()
        await engine.deliver_due()
        [pending] = engine.state.admin.deliveries()
    assert len(receiver.received) == 1
    assert pending["status"] == "pending" and pending["attempts"] == 1
    assert pending["next_attempt_at"] - time.time() >= 20  # the schedule's 30 s, -20%


# --- a real daemon -----------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
        return int(resp.status)


def deliveries(path: Path) -> dict[str, list[dict[str, Any]]]:
    result = run_cli("deliveries", "--json", "-c", str(path))
    assert result.code == 0, result.stderr
    by_webhook: dict[str, list[dict[str, Any]]] = {}
    for row in result.lines():
        by_webhook.setdefault(row["webhook"], []).append(row)
    return by_webhook


@pytest.mark.slow  # starts `bridge run` twice and waits out renderings of 1 s
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_runaway_template_never_holds_the_daemon(
    origin: Origin, receiver: Receiver, write_config: Any
) -> None:
    origin.set("/items", [{"id": 1}])
    port = free_port()
    retry = {"retry": ["1s"] * 20, "timeout": "2s"}
    webhooks = {
        "bomb": webhook(receiver.url("/bomb"), SECRET, body={"text": RUNAWAY}, **retry),
        "huge": webhook(receiver.url("/huge"), SECRET, body={"text": HUNDRED_MB}, **retry),
        "plain": webhook(receiver.url("/plain"), SECRET, **retry),
    }
    source = http_source(
        "api",
        origin.url("/items"),
        items="@",
        key="id",
        every="1s",
        jitter="0s",
        on_first_poll="emit",
        webhooks=["bomb", "huge", "plain"],
    )
    path = write_config(
        bridge_config(source, webhooks=webhooks, grace="5s", http={"listen": f"127.0.0.1:{port}"})
    )

    def plain() -> list[Any]:  # the others never get as far as a POST
        return [r for r in receiver.received if "type" in r.json]

    command = [sys.executable, "-m", "bridge", "run", "-c", str(path)]
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(plain()) >= 1, timeout=30)
        origin.set("/items", [{"id": 1}, {"id": 2}])
        wait_for(lambda: len(plain()) >= 2, timeout=15)  # still delivering, bomb or not
        assert healthz(port) == 200
        wait_for(
            lambda: any(
                "ran out of time (1 s)" in (d["last_error"] or "")
                for d in deliveries(path).get("bomb", [])
            ),
            timeout=20,
        )
        wait_for(
            lambda: any(
                (d["last_error"] or "").endswith("over 1 MB") for d in deliveries(path)["huge"]
            ),
            timeout=20,
        )
        renderers = children_of(daemon.pid)
        assert len(renderers) == 2
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
        assert time.monotonic() - started < 5 + 3  # the grace period, and a little
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _, err = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    wait_for(lambda: not any(alive(pid) for pid in renderers), timeout=5)

    # Restarted with the bomb's deliveries still pending, it does not freeze again.
    bomb_attempts = max(d["attempts"] for d in deliveries(path)["bomb"])
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            lambda: max(d["attempts"] for d in deliveries(path)["bomb"]) > bomb_attempts,
            timeout=20,
        )
        assert healthz(port) == 200
        origin.set("/items", [{"id": 1}, {"id": 2}, {"id": 3}])
        wait_for(lambda: len(plain()) >= 3, timeout=15)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, err
