"""What one poll's answer means: the source's next row, the snapshot changes and the events."""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.model import FetchState, NewEvent, PollCommit, SourceRow
from bridge.polling import confirm, diff, keys
from bridge.polling.conditions import Conditions, Draft, Judge
from bridge.sources.base import Fetched, Source
from bridge.state import Snapshots, off_loop

log = logging.getLogger("bridge.polling.assess")

# Who tests `when:` for a caller that brings no judge: the shared renderer, counted nowhere.
_conditions = Conditions()


class SnapshotReads:
    """The reads of a poll's assessment, awaited: made in a worker thread when the state's
    parts may be called from other threads (State.threaded). On PostgreSQL each is a round
    trip, and on the event loop a daemon's changed polls waited there more than anywhere;
    SQLite answers from its own file well within the cost of a thread hop. Items the state
    holds in memory (Snapshots.known_items) take neither."""

    def __init__(self, snapshots: Snapshots, *, threaded: bool = False):
        self.snapshots = snapshots
        self.threaded = threaded

    async def item_hashes(self, source: str) -> dict[str, str]:
        """Snapshots.item_hashes: what the state holds in memory, else read."""
        known = self.snapshots.known_items(source)
        if known is not None:
            return dict(known.hashes)
        return await off_loop(self.threaded, self.snapshots.item_hashes, source)

    async def item_contents(self, source: str, keys: Sequence[str]) -> dict[str, Any]:
        """Snapshots.item_contents: what the state holds in memory, else read."""
        known = self.snapshots.known_items(source)
        if known is not None:
            return known.items(keys)
        return await off_loop(self.threaded, self.snapshots.item_contents, source, keys)

    async def confirmations(self, source: str) -> dict[str, tuple[str, int]]:
        """Snapshots.confirmations."""
        return await off_loop(self.threaded, self.snapshots.confirmations, source)


def iso(ts: float) -> str:
    """An RFC 3339 UTC timestamp with milliseconds, as receivers get it."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    """A unique event id; it becomes `webhook-id`, so it has no `.`."""
    return "evt_" + uuid.uuid4().hex


def event(source: Source, type_: str, data: dict[str, Any], now: float) -> NewEvent:
    """One event of `source`, its body as receivers get it, bound for the source's webhooks."""
    envelope = {"type": type_, "timestamp": iso(now), "data": data}
    try:
        body = orjson.dumps(envelope)
    except orjson.JSONEncodeError:  # an integer past 64 bits, in a key or an item
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    key = data.get("key")
    return NewEvent(
        id=new_event_id(),
        source=source.name,
        type=type_,
        key=key if key is None or isinstance(key, str) else keys.key_text(key),
        created_at=now,
        body=body,
        webhooks=source.spec.webhooks,
    )


@functools.lru_cache(maxsize=4096)
def _fingerprint(model: tuple[str | None, ...]) -> str:
    return diff.content_hash(list(model))


def item_model(source: Source) -> str:
    """The fingerprint of how `source` selects and keys its items (Source.item_model)."""
    return _fingerprint(source.item_model)


def remodelled(row: SourceRow, model: str) -> bool:
    """Whether `row` was last polled under another item model than `model` (item_model of its
    source now; a row from before fingerprints were kept, NULL, takes the current model)."""
    return row.baselined and row.item_model is not None and row.item_model != model


def fetch_state(row: SourceRow, model: str, *, held: bool = False) -> FetchState:
    """What to fetch a source whose item model is `model` with: the row's validators, or none
    when its item model changed, so the answer is read (not a 304, not the same body skipped)
    and a new baseline recorded; nor when changes are `held` for `confirm:`, since a poll that
    sees them again counts."""
    if not held and not remodelled(row, model):
        return row.fetch_state
    return replace(row.fetch_state, etag=None, last_modified=None, body_hash=None)


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


async def assess(
    reads: SnapshotReads,
    source: Source,
    row: SourceRow,
    fetched: Fetched,
    now: float,
    *,
    judge: Judge | None = None,
) -> PollCommit:
    """A successful poll: its items compared with the stored snapshot, and what to commit.
    Changes are held until `confirm:` polls saw them; `judge` tests the change events against
    `when:` (default: in the shared renderer) before they are built into the commit."""
    if fetched.unchanged:
        events = recovered(source, row, now)
        if row.item_model is None:  # a row from before item models: it takes the current one
            row.item_model = item_model(source)
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
        entries = diff.index_items(
            selected, source.key_expr, source.ignore, key_by_content=source.key_by_content
        )
    old = await reads.item_hashes(source.name)
    model = item_model(source)
    if remodelled(row, model):
        return rebaseline(source, row, fetched, entries, old, now)
    row.item_model = model
    found = diff.compare(old, entries, complete=fetched.complete)
    # Keys an earlier version stored under other text (an integer 1 as "1"): moved silently.
    moved = keys.carried_over(old, entries, found.added) if found.added and old else {}
    if moved:
        found = _with_moves(found, old, entries, moved)
    first = not row.baselined
    commit = PollCommit(row=row, result="new" if first else "changed", duration=0.0)
    if source.spec.confirm > 1 and not first:  # a baseline has nothing to confirm against
        found, commit.confirmations = confirm.hold(
            await reads.confirmations(source.name),
            found,
            entries,
            needed=source.spec.confirm,
            complete=fetched.complete,
            exempt=moved,
        )
    stored = (*found.added, *found.changed, *(k for k in moved if k not in found.changed))
    commit.upserts = [(k, entries[k].hash, diff.canonical(entries[k].item)) for k in stored]
    commit.deletes = [*found.removed, *moved.values()]
    commit.events = recovered(source, row, now)
    if not first or source.spec.on_first_poll == "emit":
        drafts = await change_drafts(reads, source, entries, found, moved)
        if source.spec.when is not None and drafts:
            drafts = await (judge or _conditions.sift)(source, drafts)
        commit.events += [event(source, type_, data, now) for type_, data in drafts]
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


def rebaseline(
    source: Source,
    row: SourceRow,
    fetched: Fetched,
    entries: dict[str, diff.Entry],
    old: Mapping[str, str],
    now: float,
) -> PollCommit:
    """A poll of a source whose items/key changed since its snapshot was taken (re-added under
    an old name, say): the new items replace the old ones silently, as a first poll's would.
    Comparing them would send every old item as removed, under keys of the old model."""
    log.warning(
        "source %s: items/key changed since the last poll: recorded a new baseline, no events sent",
        source.name,
        extra={"source": source.name},
    )
    commit = PollCommit(row=row, result="new", duration=0.0)
    commit.upserts = [(k, e.hash, diff.canonical(e.item)) for k, e in entries.items()]
    commit.deletes = [k for k in old if k not in entries]  # a partial answer's too: old model
    commit.events = recovered(source, row, now)
    if source.spec.confirm > 1:
        commit.confirmations = {}  # held changes of the old model mean nothing now
    row.item_model = item_model(source)
    row.fetch_state = fetched.state
    row.baselined = True
    row.last_poll_at = now
    row.last_result = "new"
    return commit


def _with_moves(
    found: diff.Diff, old: Mapping[str, str], entries: dict[str, diff.Entry], moved: dict[str, str]
) -> diff.Diff:
    # The diff with moved keys compared against the item they were stored as.
    changed_before = set(found.changed)
    changed = [
        k
        for k, entry in entries.items()
        if k in changed_before or (k in moved and old[moved[k]] != entry.hash)
    ]
    gone = set(moved.values())
    added = [k for k in found.added if k not in moved]
    return diff.Diff(added, changed, [k for k in found.removed if k not in gone])


async def change_drafts(
    reads: SnapshotReads,
    source: Source,
    entries: dict[str, diff.Entry],
    found: diff.Diff,
    moved: Mapping[str, str] | None = None,
) -> list[Draft]:
    """The events of the changes `found`, for the kinds the source is `on`, as (type, data) not
    yet built (`when:` sees them first); `moved`: keys whose stored item is under another key
    (keys.carried_over)."""
    on = source.on
    wanted_before = [
        *(found.changed if "changed" in on else ()),
        *(found.removed if "removed" in on else ()),
    ]
    before: dict[str, Any] = {}
    if wanted_before and moved:
        stored_as = {moved.get(k, k): k for k in wanted_before}
        contents = await reads.item_contents(source.name, list(stored_as))
        before = {stored_as[k]: v for k, v in contents.items()}
    elif wanted_before:
        before = await reads.item_contents(source.name, wanted_before)
    document = source.items_expr is None
    events: list[Draft] = []

    def data(key: str, b: Any, a: Any, changes: Any) -> dict[str, Any]:
        return {
            "source": source.name,
            "key": None if document else keys.key_value(key),
            "before": b,
            "after": a,
            "changes": changes,
        }

    if "added" in on:
        for key in found.added:
            type_ = "document.changed" if document else "item.added"
            events.append((type_, data(key, None, entries[key].item, None)))
    if "changed" in on:
        for key in found.changed:
            b, a = before.get(key), entries[key].item
            changes = diff.json_patch(b, a, source.ignore)
            if not changes and b is not None:
                # Only ignored fields differ from the stored item (`ignore:` grew since it was
                # stored): its new hash is stored, and nothing a receiver could see is sent.
                continue
            type_ = "document.changed" if document else "item.changed"
            events.append((type_, data(key, b, a, changes)))
    if "removed" in on:
        for key in found.removed:
            events.append(("item.removed", data(key, before.get(key), None, None)))
    return events
