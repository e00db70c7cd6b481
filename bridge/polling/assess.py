"""What one poll's answer means: the source's next row, the snapshot changes and the events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.model import NewEvent, PollCommit, SourceRow
from bridge.polling import diff
from bridge.sources.base import Fetched, Source
from bridge.state import Snapshots


def iso(ts: float) -> str:
    """An RFC 3339 UTC timestamp with milliseconds, as receivers get it."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    """A unique event id; it becomes `webhook-id`, so it has no `.`."""
    return "evt_" + uuid.uuid4().hex


def event(source: Source, type_: str, data: dict[str, Any], now: float) -> NewEvent:
    """One event of `source`, its body as receivers get it, bound for the source's webhooks."""
    body = orjson.dumps({"type": type_, "timestamp": iso(now), "data": data})
    return NewEvent(
        id=new_event_id(),
        source=source.name,
        type=type_,
        key=data.get("key"),
        created_at=now,
        body=body,
        webhooks=source.spec.webhooks,
    )


def failed(source: Source, row: SourceRow, error: str, now: float) -> PollCommit:
    """A failed poll: counted on `row`, and `source.failing` once `alert_after` is reached."""
    # The snapshot and validators stay as they were: a failed poll never looks like removals.
    row.last_poll_at = now
    row.last_result = "error"
    row.last_error = error
    row.failures += 1
    row.failing_since = row.failing_since or now
    events = []
    alert_after = source.spec.alert_after
    if alert_after and row.failures >= alert_after and not row.alerted:
        row.alerted = True
        data = {
            "source": source.name,
            "error": error,
            "failures": row.failures,
            "since": iso(row.failing_since),
        }
        events.append(event(source, "source.failing", data, now))
    return PollCommit(row=row, result="error", duration=0.0, events=events)


def recovered(source: Source, row: SourceRow, now: float) -> list[NewEvent]:
    """Clear `row`'s failures; `source.recovered` if `source.failing` was sent."""
    events = []
    if row.alerted:
        data = {
            "source": source.name,
            "error": row.last_error,
            "failures": row.failures,
            "since": iso(row.failing_since or now),
        }
        events.append(event(source, "source.recovered", data, now))
    row.failures = 0
    row.failing_since = None
    row.alerted = False
    row.last_error = None
    return events


def assess(
    snapshots: Snapshots, source: Source, row: SourceRow, fetched: Fetched, now: float
) -> PollCommit:
    """A successful poll: its items compared with the stored snapshot, and what to commit."""
    if fetched.unchanged:
        events = recovered(source, row, now)
        row.fetch_state = fetched.state
        row.last_poll_at = now
        row.last_result = "unchanged"
        # History keeps the polls that changed something or failed.
        return PollCommit(
            row=row,
            result="unchanged",
            duration=0.0,
            events=events,
            history=bool(events),
        )
    selected = diff.select(fetched.pages, source.items_expr)
    if source.items_expr is None:
        entries = {"": diff.document_entry(selected, source.ignore)}
    else:
        entries = diff.index_items(selected, source.key_expr, source.ignore)
    old = snapshots.item_hashes(source.name)
    found = diff.compare(old, entries, complete=fetched.complete)
    first = not row.baselined
    commit = PollCommit(row=row, result="new" if first else "changed", duration=0.0)
    commit.upserts = [
        (k, entries[k].hash, diff.canonical(entries[k].item))
        for k in (*found.added, *found.changed)
    ]
    commit.deletes = list(found.removed)
    commit.events = recovered(source, row, now)
    if not first or source.spec.on_first_poll == "emit":
        commit.events += change_events(snapshots, source, entries, found, now)
    if not first and not (found.added or found.changed or found.removed):
        commit.result = "unchanged"
        commit.history = bool(commit.events)
    row.fetch_state = fetched.state
    row.baselined = True
    row.last_poll_at = now
    row.last_result = commit.result
    if found.added or found.changed or found.removed:
        row.last_change_at = now
    return commit


def change_events(
    snapshots: Snapshots,
    source: Source,
    entries: dict[str, diff.Entry],
    found: diff.Diff,
    now: float,
) -> list[NewEvent]:
    """The events of the changes `found`, for the kinds the source is `on`."""
    on = source.on
    wanted_before = [
        *(found.changed if "changed" in on else ()),
        *(found.removed if "removed" in on else ()),
    ]
    before = snapshots.item_contents(source.name, wanted_before) if wanted_before else {}
    document = source.items_expr is None
    events = []

    def data(key: str, b: Any, a: Any, changes: Any) -> dict[str, Any]:
        return {
            "source": source.name,
            "key": None if document else key,
            "before": b,
            "after": a,
            "changes": changes,
        }

    if "added" in on:
        for key in found.added:
            type_ = "document.changed" if document else "item.added"
            events.append(event(source, type_, data(key, None, entries[key].item, None), now))
    if "changed" in on:
        for key in found.changed:
            b, a = before.get(key), entries[key].item
            changes = diff.json_patch(b, a, source.ignore)
            type_ = "document.changed" if document else "item.changed"
            events.append(event(source, type_, data(key, b, a, changes), now))
    if "removed" in on:
        for key in found.removed:
            events.append(
                event(source, "item.removed", data(key, before.get(key), None, None), now)
            )
    return events
