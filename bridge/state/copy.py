"""`bridge copy-state`: a whole state copied into an empty one, of the same backend or another.

What a daemon needs to carry on where the old state left off is copied: the source rows (their
validators, schedules, failure and alert state), the items' snapshots, the changes waiting for
`confirm:`, rate-limit blocks, every event (with its id, the `webhook-id`), and the pending and
dead deliveries with their attempts. Not copied: delivered deliveries (history), poll history,
poll leases (a copy starts with none held), and the registry of instances. The backends read and
write the rows (bridge/state/<backend>/transfer.py); this module names them and runs the copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from bridge.errors import StateError
from bridge.state import redact_location
from bridge.state.base import Rows, State
from bridge.state.rows import SOURCE_COLUMNS

# The copied tables and their columns, in the order they are written: an event before its
# deliveries, a delivery before its attempts.
TABLES: dict[str, tuple[str, ...]] = {
    "sources": tuple(c.strip() for c in SOURCE_COLUMNS.split(",")),
    "items": ("source", "key", "hash", "content"),
    "confirmations": ("source", "key", "hash", "seen"),
    "host_blocks": ("host", "until"),
    "events": ("seq", "id", "source", "type", "key", "created_at", "body"),
    "deliveries": (
        "id", "event_seq", "webhook", "source", "status", "attempts", "next_attempt_at",
        "last_status", "last_error", "created_at", "updated_at",
    ),
    "attempts": ("id", "delivery_id", "at", "status", "error", "duration"),
}  # fmt: skip

# What is read of each table, in SQL both backends take. Only the deliveries a daemon still has
# work for (pending) or a user may replay (dead) are copied, and only their attempts.
_KEPT = "status IN ('pending', 'dead')"
EXPORTS = {
    "sources": f"SELECT {SOURCE_COLUMNS} FROM sources ORDER BY name",
    "items": "SELECT source, key, hash, content FROM items",
    "confirmations": "SELECT source, key, hash, seen FROM confirmations",
    "host_blocks": "SELECT host, until FROM host_blocks",
    "events": "SELECT seq, id, source, type, key, created_at, body FROM events ORDER BY seq",
    "deliveries": f"SELECT {', '.join(TABLES['deliveries'])} FROM deliveries "
    f"WHERE {_KEPT} ORDER BY id",
    "attempts": "SELECT id, delivery_id, at, status, error, duration FROM attempts "
    f"WHERE delivery_id IN (SELECT id FROM deliveries WHERE {_KEPT}) ORDER BY id",
}
# The tables a copy's target must have no row in.
GUARDED = ("sources", "events", "deliveries")


class NotEmpty(StateError):
    """The target of a copy already holds a state (a usage error: exit 2, not a failure)."""


def not_empty(location: str, tables: Iterable[str]) -> NotEmpty:
    """The error for a target whose `tables` (of GUARDED) hold rows, naming it (no password)."""
    held = list(tables)
    listed = ", ".join(held[:-1]) + " and " + held[-1] if len(held) > 1 else held[0]
    return NotEmpty(
        f"{redact_location(location)}: not empty (it holds {listed}); "
        "copy-state copies only into an empty state"
    )


@dataclass
class Copied:
    """What a copy wrote: rows per table, and the deliveries by status."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    pending: int = 0
    dead: int = 0

    def summary(self) -> str:
        """One line of counts, for people."""
        n = self.rows

        def many(count: int, one: str, more: str = "") -> str:
            return f"{count:,} {one if count == 1 else more or one + 's'}"

        return (
            f"{many(n['sources'], 'source')} ({many(n['items'], 'item')}, "
            f"{many(n['confirmations'], 'change')} awaiting confirm), "
            f"{many(n['events'], 'event')}, "
            f"{many(n['deliveries'], 'delivery', 'deliveries')} "
            f"({self.pending:,} pending, {self.dead:,} dead) with "
            f"{many(n['attempts'], 'attempt')}, {many(n['host_blocks'], 'host block')}"
        )


def copy_state(
    src: State, dst: State, *, progress: Callable[[Copied], None] | None = None
) -> Copied:
    """Copy everything of `src` that a daemon needs into `dst`, in one transaction of `dst`
    (nothing is written if anything fails), read from `src` as one consistent snapshot.

    NotEmpty when `dst` holds a source, event or delivery. `progress` is called after each
    batch with the counts so far.
    """
    copied = Copied()
    source, target = src.transfer, dst.transfer

    def counted(batches: Iterable[Rows]) -> Iterator[Rows]:
        for table, rows in batches:
            copied.rows[table] += len(rows)
            if table == "deliveries":
                dead = sum(1 for r in rows if r["status"] == "dead")
                copied.dead += dead
                copied.pending += len(rows) - dead
            yield table, rows
            if progress is not None:
                progress(copied)

    batches = iter(source.export_rows())
    try:
        target.import_rows(counted(batches))
    finally:
        # However the import ended: the source's read transaction ends now, not when the
        # iterator is collected.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return copied
