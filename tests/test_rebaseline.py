"""A changed item model re-baselines silently (issue 19, item 8), and state files of earlier
versions keep their snapshots across an upgrade: integer keys they stored as text are carried
over (issue 15, item 8), and a row from before item models takes the current one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.model import PollCommit, SourceRow
from bridge.polling.diff import canonical, content_hash
from bridge.polling.keys import storage_key
from bridge.state import open_state
from tests.conftest import (
    Origin,
    Receiver,
    bridge_config,
    engine_for,
    http_source,
    run_cli,
    webhook,
)

LINE = "source api: items/key changed since the last poll: recorded a new baseline, no events sent"


def components(*pairs: tuple[int, str]) -> dict[str, Any]:
    return {"components": [{"id": i, "name": f"c{i}", "status": s} for i, s in pairs]}


@pytest.mark.slow
def test_a_changed_items_or_key_records_a_new_baseline_and_says_so(
    origin: Origin, receiver: Receiver, tmp_path: Path
) -> None:
    origin.set("/c", components((1, "ok"), (2, "ok")))
    config = tmp_path / "bridge.yaml"
    hooks = {"hook": webhook(receiver.url())}

    def poll_with(**options: Any) -> tuple[str, int]:
        config.write_text(
            bridge_config(http_source("api", origin.url("/c"), webhooks=["hook"], **options),
                          webhooks=hooks)
        )  # fmt: skip
        before = len(receiver.received)
        result = run_cli("once", "-c", str(config))
        assert result.code == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr, len(receiver.received) - before

    # The whole document first (no items:), as the source's earlier life had it.
    err, sent = poll_with()
    assert sent == 0 and "items/key changed" not in err
    # Items and key appear: the answer is the same (a 304 to our ETag), yet it is read again.
    err, sent = poll_with(items="components", key="id")
    assert sent == 0 and err.count("items/key changed") == 1 and LINE in err
    # The new baseline is the one later polls diff against.
    origin.set("/c", components((1, "ok"), (2, "down")))
    err, sent = poll_with(items="components", key="id")
    assert sent == 1 and "items/key changed" not in err
    [changed] = receiver.events()
    assert (changed["type"], changed["data"]["key"]) == ("item.changed", 2)
    # Another key for the same items: keys of the old model must not come back as removals.
    err, sent = poll_with(items="components", key="name")
    assert sent == 0 and err.count("items/key changed") == 1 and LINE in err
    origin.set("/c", components((1, "ok")))
    err, sent = poll_with(items="components", key="name")
    assert sent == 1 and "items/key changed" not in err
    assert [(e["type"], e["data"]["key"]) for e in receiver.events()[1:]] == [
        ("item.removed", "c2")
    ]


async def test_ignore_changing_is_no_new_baseline_and_sends_no_empty_changes(
    origin: Origin, write_config
) -> None:
    origin.set("/c", {"components": [{"id": 1, "seen": "t0"}, {"id": 2, "seen": "t0", "v": 1}]})
    options: dict[str, Any] = {"items": "components", "key": "id", "webhooks": ["hook"]}
    hooks = {"hook": webhook("http://127.0.0.1:9/unused")}
    path = write_config(
        bridge_config(http_source("api", origin.url("/c"), **options), webhooks=hooks)
    )
    async with engine_for(path) as engine:
        await engine.poll("api")
    path = write_config(
        bridge_config(
            http_source("api", origin.url("/c"), ignore=["seen"], **options), webhooks=hooks
        )
    )
    origin.set("/c", {"components": [{"id": 1, "seen": "t1"}, {"id": 2, "seen": "t1", "v": 2}]})
    async with engine_for(path) as engine:
        result = await engine.poll("api")
        again = await engine.poll("api")
    # Item 1 differs only in a field now ignored: nothing to send. Item 2 really changed.
    assert [(e["type"], e["data"]["key"], e["data"]["changes"]) for e in result.events] == [
        ("item.changed", 2, [{"op": "replace", "path": "/v", "value": 2}])
    ]
    assert (again.result, again.events) == ("unchanged", [])


def write_as_an_older_version(state_path: Path, items: dict[str, Any]) -> None:
    """A source's row and items as a state file of an earlier version holds them: integer keys
    as their digits, and no item model in the row."""
    state = open_state(str(state_path))
    try:
        row = SourceRow(name="api", baselined=True, last_poll_at=1.0, last_result="new")
        upserts = [(key, content_hash(item), canonical(item)) for key, item in items.items()]
        state.snapshots.commit_polls(
            [PollCommit(row=row, result="new", duration=0.0, upserts=upserts)]
        )
        assert state.snapshots.source_row("api").item_model is None
    finally:
        state.close()


async def test_integer_keys_an_older_version_stored_as_text_are_carried_over(
    origin: Origin, write_config, tmp_path: Path
) -> None:
    old = {"1": {"id": 1, "v": "a"}, "2": {"id": 2, "v": "b"}, "true": {"id": True, "v": "t"},
           "x": {"id": "x", "v": "s"}}  # fmt: skip
    write_as_an_older_version(tmp_path / "state.db", old)
    now = [{"id": 1, "v": "a"}, {"id": 2, "v": "B"}, {"id": True, "v": "t"}, {"id": "x", "v": "s"},
           {"id": 3, "v": "new"}]  # fmt: skip
    origin.set("/k", now)
    options = {"items": "@", "key": "id", "on": ["added", "changed", "removed"]}
    path = write_config(
        bridge_config(
            http_source("api", origin.url("/k"), webhooks=["hook"], **options),
            webhooks={"hook": webhook("http://127.0.0.1:9/unused")},
        )
    )
    async with engine_for(path) as engine:
        upgraded = await engine.poll("api")
        origin.set("/k", [*now, {"id": "1", "v": "str"}])
        later = await engine.poll("api")
        stored = engine.state.snapshots.item_hashes("api")
        row = engine.state.snapshots.source_row("api")
    # No storm of removed and added: the one real change and the one new item.
    assert [(e["type"], e["data"]["key"]) for e in upgraded.events] == [
        ("item.added", 3),
        ("item.changed", 2),
    ]
    changed = upgraded.events[1]["data"]
    assert changed["before"] == {"id": 2, "v": "b"}
    assert changed["changes"] == [{"op": "replace", "path": "/v", "value": "B"}]
    # The string "1" is an item of its own now, beside the integer 1.
    assert [(e["type"], e["data"]["key"]) for e in later.events] == [("item.added", "1")]
    assert set(stored) == {storage_key(k) for k in (1, 2, True, "x", 3, "1")}
    assert row.item_model is not None  # the row took the current model, silently


async def test_a_row_from_before_item_models_takes_the_current_one(
    origin: Origin, write_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_as_an_older_version(tmp_path / "state.db", {"a": {"id": "a", "v": 1}})
    origin.set("/k", [{"id": "a", "v": 1}])
    path = write_config(
        bridge_config(
            http_source("api", origin.url("/k"), items="@", key="id", webhooks=["hook"]),
            webhooks={"hook": webhook("http://127.0.0.1:9/unused")},
        )
    )
    async with engine_for(path) as engine:
        first = await engine.poll("api")
        engine.flush()
        row = engine.state.snapshots.source_row("api")
    assert (first.result, first.events) == ("unchanged", [])
    assert row.item_model is not None
    assert "items/key changed" not in caplog.text
