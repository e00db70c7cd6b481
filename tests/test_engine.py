"""Polling end to end against a real origin and real SQLite: SPEC §4 events, failed polls."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import jsonpatch
import pytest

from bridge.polling.engine import Engine
from bridge.polling.keys import storage_key
from tests.conftest import STDOUT, Origin, bridge_config, engine_for, http_source

COMPONENTS = {"items": "components", "key": "id"}  # the items under "components", by id


def api(url: str, **options: Any) -> dict[str, Any]:
    """The source every test polls, `api`, printing its events to stdout."""
    return http_source("api", url, every="1m", webhooks=["out"], **options)


def items(*pairs: tuple[int, str]) -> dict[str, object]:
    return {"components": [{"id": i, "status": s, "updated_at": "t0"} for i, s in pairs]}


async def test_item_added_changed_removed(origin: Origin, write_config) -> None:
    origin.set("/c", items((1, "ok"), (2, "ok")))
    path = write_config(bridge_config(api(origin.url("/c"), **COMPONENTS), webhooks=STDOUT))
    async with engine_for(path) as engine:
        first = await engine.poll("api")
        assert (first.result, first.events) == ("new", [])  # a silent baseline

        origin.set("/c", items((1, "degraded"), (3, "ok")))
        second = await engine.poll("api")
        assert second.result == "changed"
        by_type = {e["type"]: e for e in second.events}
        assert sorted(by_type) == ["item.added", "item.changed", "item.removed"]

        added = by_type["item.added"]["data"]
        assert added == {
            "source": "api", "key": 3, "before": None,
            "after": {"id": 3, "status": "ok", "updated_at": "t0"}, "changes": None,
        }  # fmt: skip
        changed = by_type["item.changed"]["data"]
        assert changed["key"] == 1  # the key as JSON gave it
        assert changed["before"]["status"] == "ok" and changed["after"]["status"] == "degraded"
        assert changed["changes"] == [{"op": "replace", "path": "/status", "value": "degraded"}]
        assert jsonpatch.apply_patch(changed["before"], changed["changes"]) == changed["after"]
        removed = by_type["item.removed"]["data"]
        assert removed["key"] == 2 and removed["after"] is None
        assert removed["before"] == {"id": 2, "status": "ok", "updated_at": "t0"}
        assert by_type["item.changed"]["timestamp"].endswith("Z")

        # The events are in the outbox, one delivery each for the source's webhook.
        assert [d["status"] for d in engine.state.admin.deliveries()] == ["pending"] * 3


async def test_document_changed_without_items(origin: Origin, write_config) -> None:
    origin.set("/doc", {"version": "1.0", "notes": "a"})
    path = write_config(bridge_config(api(origin.url("/doc")), webhooks=STDOUT))
    async with engine_for(path) as engine:
        assert (await engine.poll("api")).events == []
        origin.set("/doc", {"version": "1.1", "notes": "a"})
        result = await engine.poll("api")
    [event] = result.events
    assert event["type"] == "document.changed"
    assert event["data"]["key"] is None
    assert event["data"]["before"] == {"version": "1.0", "notes": "a"}
    assert event["data"]["changes"] == [{"op": "replace", "path": "/version", "value": "1.1"}]


async def test_on_first_poll_emit_sends_everything(origin: Origin, write_config) -> None:
    origin.set("/c", items((1, "ok"), (2, "ok")))
    extra = {**COMPONENTS, "on_first_poll": "emit"}
    path = write_config(bridge_config(api(origin.url("/c"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        result = await engine.poll("api")
    assert [(e["type"], e["data"]["key"]) for e in result.events] == [
        ("item.added", 1),
        ("item.added", 2),
    ]


async def test_ignored_fields_never_cause_an_event(origin: Origin, write_config) -> None:
    origin.set("/c", items((1, "ok")))
    extra = {**COMPONENTS, "ignore": ["updated_at"]}
    path = write_config(bridge_config(api(origin.url("/c"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        origin.set("/c", {"components": [{"id": 1, "status": "ok", "updated_at": "t1"}]})
        quiet = await engine.poll("api")
        assert (quiet.result, quiet.events) == ("unchanged", [])
        origin.set("/c", {"components": [{"id": 1, "status": "down", "updated_at": "t2"}]})
        loud = await engine.poll("api")
    [event] = loud.events
    # The patch lists the change that caused the event, not the ignored field.
    assert event["data"]["changes"] == [{"op": "replace", "path": "/status", "value": "down"}]


async def test_on_filters_the_kinds_sent_but_the_snapshot_follows(origin, write_config) -> None:
    origin.set("/c", items((1, "ok"), (2, "ok")))
    extra = {**COMPONENTS, "on": ["added"]}
    path = write_config(bridge_config(api(origin.url("/c"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        origin.set("/c", items((1, "down"), (3, "ok")))
        result = await engine.poll("api")
        assert [e["type"] for e in result.events] == ["item.added"]
        assert set(engine.state.snapshots.item_hashes("api")) == {storage_key(1), storage_key(3)}


async def test_key_absent_uses_content(origin: Origin, write_config) -> None:
    origin.set("/l", ["a", "b"])
    path = write_config(bridge_config(api(origin.url("/l"), items="@"), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        origin.set("/l", ["a", "c"])
        result = await engine.poll("api")
    kinds = sorted((e["type"], e["data"]["after"] or e["data"]["before"]) for e in result.events)
    assert kinds == [("item.added", "c"), ("item.removed", "b")]


async def test_conditional_request_and_304(origin: Origin, write_config) -> None:
    origin.set("/c", items((1, "ok")))
    path = write_config(bridge_config(api(origin.url("/c"), **COMPONENTS), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        result = await engine.poll("api")
        engine.flush()
        row = engine.state.snapshots.source_row("api")
    assert result.result == "unchanged"
    first, second = origin.hits("/c")
    assert "If-None-Match" not in first
    assert second["If-None-Match"] == row.fetch_state.etag
    assert row.last_result == "unchanged"


async def test_a_recovery_is_written_whole_when_a_quicker_unchanged_poll_follows_it(
    origin: Origin, write_config
) -> None:
    # Two polls between writes (a source polled every few seconds): the first, recovering from a
    # failure, resets the failure count; the second only moves times. Both must reach the file.
    origin.set("/c", items((1, "ok")))
    path = write_config(bridge_config(api(origin.url("/c"), **COMPONENTS), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        origin.set("/c", body=b"{}", status=500)
        await engine.poll("api")
        engine.flush()
        failing = engine.state.snapshots.source_row("api")
        origin.set("/c", items((1, "ok")))
        recovered = await engine.poll("api")
        again = await engine.poll("api", next_poll_at=12345.0)
        engine.flush()
        row = engine.state.snapshots.source_row("api")
    assert failing.failures == 1 and failing.last_error is not None
    assert (recovered.result, again.result) == ("unchanged", "unchanged")
    assert row.failures == 0 and row.failing_since is None and row.last_error is None
    assert row.last_result == "unchanged" and row.next_poll_at == 12345.0


@contextlib.asynccontextmanager
async def cached_rows_engine(origin: Origin, write_config, monkeypatch) -> AsyncIterator[Engine]:
    """An engine whose one source ("api") is baselined, its cached rows never re-read."""
    monkeypatch.setattr("bridge.polling.engine.ROWS_RECHECK", 3600.0)
    origin.set("/c", items((1, "ok")))
    path = write_config(bridge_config(api(origin.url("/c"), **COMPONENTS), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        yield engine


async def test_unchanged_polls_keep_no_row_until_written(
    origin: Origin, write_config, monkeypatch
) -> None:
    # What a daemon holds between writes for its usual poll: times, no PollCommit or row copy.
    async with cached_rows_engine(origin, write_config, monkeypatch) as engine:
        await engine.poll("api", next_poll_at=777.0)
        held = engine._touched["api"]
        assert not engine._buffer and held[1:3] == (777.0, "unchanged")
        engine.flush()
        assert not engine._touched
        row = engine.state.snapshots.source_row("api")
    assert (row.last_poll_at, row.next_poll_at, row.last_result) == held[:3]


async def test_a_poll_changes_its_own_copy_of_the_row_and_a_dry_run_keeps_nothing(
    origin: Origin, write_config, monkeypatch
) -> None:
    # Polls read the cached row without copying it; only a poll that changes more than its
    # times copies it, so the row as written stays as it was until the new one is.
    async with cached_rows_engine(origin, write_config, monkeypatch) as engine:
        engine.flush()
        written = engine._rows["api"] if engine._rows else None
        assert written is not None and written.failures == 0
        dry = await engine.poll("api", dry_run=True)
        assert dry.result == "unchanged" and not engine._touched and not engine._buffer
        origin.set("/c", body=b"{}", status=500)
        failed = await engine.poll("api")
        # A failed poll is written at once (`bridge status` shows it), from its own copy.
        assert failed.result == "error" and "api" not in engine._buffer
        assert written.failures == 0 and written.last_error is None
        assert engine._rows is not None and engine._rows["api"] is not written
        assert engine._rows["api"].failures == 1
        assert engine.state.snapshots.source_row("api").failures == 1


async def test_last_modified_is_stored_and_sent(origin: Origin, write_config) -> None:
    stamp = "Wed, 21 Oct 2026 07:28:00 GMT"
    origin.set("/c", items((1, "ok")), etag=False, headers={"Last-Modified": stamp})
    path = write_config(bridge_config(api(origin.url("/c"), **COMPONENTS), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        # Same bytes without validators matching: unchanged by hash, without parsing.
        result = await engine.poll("api")
    assert result.result == "unchanged"
    assert origin.hits("/c")[1]["If-Modified-Since"] == stamp


FAILURES = {
    "status 500": dict(body=b'{"error": true}', status=500),
    "invalid json": dict(body=b"{not json"),
    "items finds nothing": dict(body=b'{"other": []}'),
    "items not a list": dict(body=b'{"components": {"id": 1}}'),
    "over max_bytes": dict(body=b'{"components": [' + b'{"id": 9},' * 20000 + b'{"id": 1}]}'),
    "timeout": dict(body=b'{"components": []}', delay=3.0),
}


@pytest.mark.parametrize(
    "case",
    # a timeout waits out the source's 1 s and the origin's 3 s answer
    [pytest.param(c, marks=pytest.mark.slow) if c == "timeout" else c for c in sorted(FAILURES)],
)
async def test_a_failed_poll_emits_nothing_and_keeps_the_snapshot(
    case: str, origin: Origin, write_config
) -> None:
    origin.set("/c", items((1, "ok"), (2, "ok")))
    extra = {**COMPONENTS, "max_bytes": "64KB", "timeout": "1s"}
    path = write_config(bridge_config(api(origin.url("/c"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        before = engine.state.snapshots.item_hashes("api")
        origin.set("/c", **FAILURES[case])  # type: ignore[arg-type]
        failed = await engine.poll("api")
        assert failed.result == "error" and failed.events == []
        assert failed.error
        assert engine.state.snapshots.item_hashes("api") == before
        assert engine.state.admin.deliveries() == []
        # Recovery to the same items: still nothing, no flood of removals and additions.
        origin.set("/c", items((1, "ok"), (2, "ok")))
        recovered = await engine.poll("api")
        assert recovered.events == [] and recovered.result == "unchanged"


async def test_connection_refused_is_a_failed_poll(write_config) -> None:
    path = write_config(
        bridge_config(api("http://127.0.0.1:9/nothing", items="components"), webhooks=STDOUT)
    )
    async with engine_for(path) as engine:
        result = await engine.poll("api")
        engine.flush()
        row = engine.state.snapshots.source_row("api")
    assert result.result == "error" and "127.0.0.1:9" in (result.error or "")
    assert row.failures == 1 and row.last_error == result.error


async def test_an_empty_list_is_a_real_answer(origin: Origin, write_config) -> None:
    origin.set("/c", items((1, "ok")))
    path = write_config(bridge_config(api(origin.url("/c"), **COMPONENTS), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        origin.set("/c", {"components": []})
        result = await engine.poll("api")
    assert [e["type"] for e in result.events] == ["item.removed"]


async def test_partial_pages_never_look_like_removals(origin: Origin, write_config) -> None:
    def page(n: int, ids: list[int], last: bool = False) -> None:
        link = {} if last else {"Link": f'<{origin.url(f"/p{n + 1}")}>; rel="next"'}
        origin.set(f"/p{n}", [{"id": i} for i in ids], headers=link)

    page(1, [1, 2])
    page(2, [3, 4])
    page(3, [5], last=True)
    extra = {"items": "@", "key": "id", "paginate": "link", "max_pages": 3}
    path = write_config(bridge_config(api(origin.url("/p1"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("api")
        stored = engine.state.snapshots.item_hashes("api")
        assert set(stored) == {storage_key(i) for i in range(1, 6)}
    # Now only two pages may be read: item 5 is out of the window, not removed.
    path = write_config(
        bridge_config(api(origin.url("/p1"), **{**extra, "max_pages": 2}), webhooks=STDOUT)
    )
    page(1, [0, 1])  # a new item pushes the list along
    async with engine_for(path) as engine:
        result = await engine.poll("api")
    assert [(e["type"], e["data"]["key"]) for e in result.events] == [("item.added", 0)]


async def test_alert_after_sends_failing_once_then_recovered(origin: Origin, write_config) -> None:
    origin.set("/c", items((1, "ok")))
    path = write_config(
        bridge_config(api(origin.url("/c"), **COMPONENTS, alert_after=2), webhooks=STDOUT)
    )
    async with engine_for(path) as engine:
        await engine.poll("api")
        origin.set("/c", body=b"oops", status=503)
        results = [await engine.poll("api") for _ in range(4)]
        origin.set("/c", items((1, "ok")))
        back = await engine.poll("api")
        again = await engine.poll("api")
    types = [[e["type"] for e in r.events] for r in results]
    assert types == [[], ["source.failing"], [], []]
    failing = results[1].events[0]["data"]
    assert failing["failures"] == 2 and "503" in failing["error"] and failing["since"]
    [recovered] = back.events
    assert recovered["type"] == "source.recovered" and recovered["data"]["failures"] == 4
    assert again.events == []


async def test_dry_run_stores_nothing(origin: Origin, write_config) -> None:
    origin.set("/c", items((1, "ok")))
    extra = {**COMPONENTS, "on_first_poll": "emit"}
    path = write_config(bridge_config(api(origin.url("/c"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        result = await engine.poll("api", dry_run=True)
        assert [e["type"] for e in result.events] == ["item.added"]
        engine.flush()
        assert engine.state.snapshots.item_hashes("api") == {}
        assert engine.state.admin.events() == [] and engine.state.snapshots.source_rows() == {}


async def test_request_options_reach_the_origin(origin: Origin, write_config) -> None:
    origin.set("/q?page=2", [{"id": 1}])
    extra = {
        "items": "@", "key": "id", "method": "POST", "params": {"page": 2},
        "json": {"query": "open"}, "headers": {"X-Api": "v1"}, "auth": {"bearer": "tok-123"},
    }  # fmt: skip
    path = write_config(bridge_config(api(origin.url("/q"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        assert (await engine.poll("api")).result == "new"
    [headers] = origin.hits("/q?page=2")
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["X-Api"] == "v1" and headers["Content-Type"] == "application/json"


async def test_basic_auth_reaches_the_origin(origin: Origin, write_config) -> None:
    origin.set("/b", [{"id": 1}])
    extra = {"items": "@", "auth": {"basic": {"username": "ann", "password": "s3cret"}}}
    path = write_config(bridge_config(api(origin.url("/b"), **extra), webhooks=STDOUT))
    async with engine_for(path) as engine:
        assert (await engine.poll("api")).result == "new"
    [headers] = origin.hits("/b")
    assert headers["Authorization"] == "Basic YW5uOnMzY3JldA=="
