"""`confirm: N`: a change is sent only once N successful polls in a row have seen it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.state import open_state
from tests.conftest import STDOUT, Origin, bridge_config, engine_for, http_source, run_cli


def status(**components: str) -> dict[str, object]:
    """The flapping status page: components by id with their status."""
    return {"components": [{"id": c, "status": s} for c, s in components.items()]}


def config(origin: Origin, confirm: int = 3) -> str:
    return bridge_config(
        http_source("status", origin.url("/status"), items="components", key="id",
                    confirm=confirm, webhooks=["out"]),
        webhooks=STDOUT,
    )  # fmt: skip


def kinds(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["type"], e["data"]["key"]) for e in events]  # type: ignore[index]


async def test_a_flip_flop_within_n_polls_sends_nothing(origin: Origin, write_config) -> None:
    origin.set("/status", status(api="ok", web="ok"))
    async with engine_for(write_config(config(origin))) as engine:
        assert (await engine.poll("status")).result == "new"
        sent = []
        for page in (
            status(api="down", web="ok"),  # api: 1
            status(api="ok", web="ok"),  # back: forgotten
            status(api="down", web="ok"),  # 1 again
            status(api="down", web="ok"),  # 2
            status(api="ok", web="ok"),  # back before the third
            status(api="ok", web="ok", db="ok"),  # db added: 1
            status(api="ok", web="ok", db="ok"),  # 2
            status(api="ok", web="ok"),  # db gone again
            status(api="ok"),  # web gone: 1
            status(api="ok", web="ok"),  # web back
        ):
            origin.set("/status", page)
            sent += (await engine.poll("status")).events
        assert sent == []
        assert engine.state.admin.events(source="status") == []
        assert engine.state.snapshots.confirmations("status") == {}
        assert sorted(engine.state.snapshots.item_hashes("status")) == ["api", "web"]


async def test_a_change_seen_n_times_in_a_row_is_sent_once_from_the_confirmed_state(
    origin: Origin, write_config
) -> None:
    origin.set("/status", status(api="ok", web="ok"))
    async with engine_for(write_config(config(origin))) as engine:
        await engine.poll("status")
        origin.set("/status", status(api="down", web="ok"))
        assert (await engine.poll("status")).events == []
        origin.set("/status", status(api="degraded", web="ok"))  # another value: starts at 1
        assert (await engine.poll("status")).events == []
        assert (await engine.poll("status")).events == []  # the same answer (a 304): 2
        [event] = (await engine.poll("status")).events  # 3
        assert event["type"] == "item.changed"
        assert event["data"]["before"] == {"id": "api", "status": "ok"}  # the confirmed item
        assert event["data"]["after"] == {"id": "api", "status": "degraded"}
        assert (await engine.poll("status")).events == []  # sent once
        # a removal and an addition are confirmed the same way
        origin.set("/status", status(api="degraded", db="ok"))
        assert (await engine.poll("status")).events == []
        assert (await engine.poll("status")).events == []
        third = (await engine.poll("status")).events
        assert sorted(kinds(third)) == [("item.added", "db"), ("item.removed", "web")]
        assert [e for e in third if e["type"] == "item.removed"][0]["data"]["before"] == {
            "id": "web", "status": "ok"
        }  # fmt: skip
        assert engine.state.snapshots.confirmations("status") == {}


async def test_a_failed_poll_neither_counts_nor_resets(origin: Origin, write_config) -> None:
    origin.set("/status", status(api="ok"))
    async with engine_for(write_config(config(origin))) as engine:
        await engine.poll("status")
        origin.set("/status", status(api="down"))
        await engine.poll("status")  # 1
        [(_, seen)] = engine.state.snapshots.confirmations("status").values()
        assert seen == 1
        origin.set("/status", {"error": "boom"}, status=500)
        assert (await engine.poll("status")).result == "error"
        [(_, seen)] = engine.state.snapshots.confirmations("status").values()
        assert seen == 1  # not reset, not counted
        origin.set("/status", status(api="down"))
        assert (await engine.poll("status")).events == []  # 2
        [event] = (await engine.poll("status")).events  # 3: the failed poll did not count
        assert event["data"]["after"]["status"] == "down"


@pytest.mark.slow
def test_a_restart_between_polls_keeps_the_count(origin: Origin, write_config) -> None:
    # Each `bridge once` is a process of its own: the count lives in the state.
    origin.set("/status", status(api="ok"))
    path: Path = write_config(config(origin))

    def once() -> None:
        result = run_cli("once", "-c", str(path))
        assert result.code == 0, result.stderr

    def events() -> list[tuple[object, object]]:
        state = open_state(str(path.parent / "state.db"))
        try:
            return [(e["type"], e["key"]) for e in state.admin.events(source="status")]
        finally:
            state.close()

    once()  # the baseline
    origin.set("/status", status(api="down"))
    once()
    once()
    assert events() == []
    once()  # the third process in a row to see it
    assert events() == [("item.changed", "api")]
    once()
    assert events() == [("item.changed", "api")]
