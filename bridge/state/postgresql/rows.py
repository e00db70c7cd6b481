"""A source row to and from the values of the sources table's columns (booleans as BOOLEAN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from bridge.model import FetchState, SourceRow

# The sources table's columns, in the order of row_values() and row_from().
SOURCE_COLUMNS = (
    "name, etag, last_modified, body_hash, url, extra, baselined, last_poll_at, last_result, "
    "last_error, last_change_at, next_poll_at, failures, failing_since, alerted, item_model"
)


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
        bool(row.baselined),
        row.last_poll_at,
        row.last_result,
        row.last_error,
        row.last_change_at,
        row.next_poll_at,
        row.failures,
        row.failing_since,
        bool(row.alerted),
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
