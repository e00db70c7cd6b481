"""What the store reads and writes, as plain objects: a source's row, a poll's commit, events,
deliveries and attempts; and a source row to and from its column values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.sources.base import FetchState


@dataclass
class SourceRow:
    """What the store knows of one source between polls."""

    name: str
    fetch_state: FetchState = field(default_factory=FetchState)
    baselined: bool = False
    last_poll_at: float | None = None
    last_result: str | None = None
    last_error: str | None = None
    last_change_at: float | None = None
    next_poll_at: float | None = None
    failures: int = 0
    failing_since: float | None = None
    alerted: bool = False

    def copy(self) -> SourceRow:
        """A shallow copy (its FetchState is immutable): a sixth of dataclasses.replace()."""
        row = object.__new__(SourceRow)
        row.__dict__.update(self.__dict__)
        return row


@dataclass(frozen=True)
class NewEvent:
    """An event to insert, with the webhooks it goes to."""

    id: str
    source: str
    type: str
    key: str | None
    created_at: float
    body: bytes
    webhooks: tuple[str, ...]


@dataclass
class PollCommit:
    """Everything one poll writes: the source row, snapshot changes, events. One transaction."""

    row: SourceRow
    result: str  # new | changed | unchanged | error | baseline
    duration: float
    upserts: list[tuple[str, str, bytes]] = field(default_factory=list)  # key, hash, content
    deletes: list[str] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    history: bool = True  # whether to keep a polls row (unchanged polls are not kept)


@dataclass(frozen=True, slots=True)
class Finished:
    """The outcome of one delivery attempt, to record: delivered, pending again, or dead."""

    delivery_id: int
    status: str
    at: float
    duration: float
    http_status: int | None
    error: str | None
    next_attempt_at: float | None = None


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery with its event's id and body."""

    id: int
    event_id: str
    webhook: str
    source: str
    attempts: int
    body: bytes


def row_values(row: SourceRow) -> tuple[Any, ...]:
    """A source row as the values of SOURCE_COLUMNS, in order."""
    fs = row.fetch_state
    return (
        row.name,
        fs.etag,
        fs.last_modified,
        fs.body_hash,
        fs.url,
        orjson.dumps(dict(fs.extra)) if fs.extra else None,
        int(row.baselined),
        row.last_poll_at,
        row.last_result,
        row.last_error,
        row.last_change_at,
        row.next_poll_at,
        row.failures,
        row.failing_since,
        int(row.alerted),
    )


# The sources table's columns, in the order of row_values() and row_from().
SOURCE_COLUMNS = (
    "name, etag, last_modified, body_hash, url, extra, baselined, last_poll_at, last_result, "
    "last_error, last_change_at, next_poll_at, failures, failing_since, alerted"
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
    )
