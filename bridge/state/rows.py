"""What every backend writes for a source row and a batch of polls, as plain values: the source
row to and from its columns, and the rows of a batch's items, events, deliveries and history.
Backend-neutral: the SQL that writes them is each backend's own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.model import FetchState, PollCommit, SourceRow

# The sources table's columns, in the order of row_values() and row_from().
SOURCE_COLUMNS = (
    "name, etag, last_modified, body_hash, url, extra, baselined, last_poll_at, last_result, "
    "last_error, last_change_at, next_poll_at, failures, failing_since, alerted, item_model"
)


def row_values(row: SourceRow, flag: Callable[[bool], Any] = int) -> tuple[Any, ...]:
    """A source row as the values of SOURCE_COLUMNS, in order; `flag` stores a boolean (SQLite
    keeps 0 and 1, PostgreSQL a BOOLEAN)."""
    fs = row.fetch_state
    return (
        row.name,
        fs.etag,
        fs.last_modified,
        fs.body_hash,
        fs.url,
        orjson.dumps(dict(fs.extra)) if fs.extra else None,
        flag(row.baselined),
        row.last_poll_at,
        row.last_result,
        row.last_error,
        row.last_change_at,
        row.next_poll_at,
        row.failures,
        row.failing_since,
        flag(row.alerted),
        row.item_model,
    )


def row_from(r: Sequence[Any]) -> SourceRow:
    """A source row from the values of SOURCE_COLUMNS, in order."""
    return SourceRow(
        name=r[0],
        fetch_state=FetchState(
            etag=r[1],
            last_modified=r[2],
            body_hash=r[3],
            url=r[4],
            extra=orjson.loads(r[5]) if r[5] else {},
        ),
        baselined=bool(r[6]),
        last_poll_at=r[7],
        last_result=r[8],
        last_error=r[9],
        last_change_at=r[10],
        next_poll_at=r[11],
        failures=r[12],
        failing_since=r[13],
        alerted=bool(r[14]),
        item_model=r[15],
    )


@dataclass
class PollRows:
    """The rows one batch of polls writes besides the source rows, each list in commit order."""

    upserts: list[tuple[str, str, str, bytes]]  # source, key, hash, content
    deletes: list[tuple[str, str]]  # source, key
    events: list[tuple[str, str, str, str | None, float, bytes]]  # id, source, type, key, at, body
    deliveries: list[tuple[str, str, float]]  # event id, webhook, at (in the order of events)
    history: list[tuple[str, float, str, float, str | None, int]]  # the polls table's rows


def poll_rows(commits: Sequence[PollCommit]) -> PollRows:
    """The rows of `commits`, in their order (so deliveries take ids in the order of events)."""
    return PollRows(
        upserts=[(c.row.name, *upsert) for c in commits for upsert in c.upserts],
        deletes=[(c.row.name, key) for c in commits for key in c.deletes],
        events=[
            (ev.id, ev.source, ev.type, ev.key, ev.created_at, ev.body)
            for c in commits
            for ev in c.events
        ],
        deliveries=[
            (ev.id, webhook, at)
            for c in commits
            for at in (c.row.last_poll_at or 0.0,)
            for ev in c.events
            for webhook in ev.webhooks
        ],
        history=[
            (
                c.row.name,
                c.row.last_poll_at or 0.0,
                c.result,
                c.duration,
                c.row.last_error,
                len(c.events),
            )
            for c in commits
            if c.history
        ],
    )
