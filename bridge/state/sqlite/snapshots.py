"""Polling's queries on the state file: source rows, item snapshots, rate-limited hosts, and the
commit of polls (fenced by their leases) with their events and pending deliveries."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from bridge.model import PollCommit, SourceRow
from bridge.state.base import Touched
from bridge.state.sqlite.connection import Database, chunks
from bridge.state.sqlite.rows import SOURCE_COLUMNS, row_from, row_values

_N_COLUMNS = len(SOURCE_COLUMNS.split(","))
# An upsert updates the row in place, cheaper than INSERT OR REPLACE's delete and insert.
_UPSERT_SOURCE = (
    f"INSERT INTO sources ({SOURCE_COLUMNS}) VALUES ({', '.join('?' * _N_COLUMNS)}) "
    "ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SOURCE_COLUMNS.split(", ")[1:])
)

# Only a baselined row is touched: one that lost its content meanwhile (removed, or restored
# from a backup, by another process) is written whole instead.
_TOUCH_SOURCE = (
    "UPDATE sources SET last_poll_at = ?, next_poll_at = ?, last_result = ? "
    "WHERE name = ? AND baselined = 1"
)
# Writing a poll ends the lease it ran under: its (source, token) is taken out, and a lease not
# found is one the poll had lost (the fence), in one statement.
_END_LEASES = (
    "DELETE FROM poll_leases WHERE owner = ? AND (name, token) IN "
    "(SELECT value ->> 0, value ->> 1 FROM json_each(?)) RETURNING name"
)


class SqliteSnapshots:
    """bridge.state.base.Snapshots over one state file."""

    def __init__(self, database: Database, owner: str):
        self.database = database
        self.conn = database.conn
        self.owner = owner  # this process's instance id: the owner of the leases it takes

    def source_row(self, name: str) -> SourceRow:
        """The stored row of a source, or a fresh one if it was never polled."""
        r = self.conn.execute(f"SELECT {SOURCE_COLUMNS} FROM sources WHERE name = ?", (name,))
        found = r.fetchone()
        return row_from(found) if found else SourceRow(name=name)

    def source_rows(self) -> dict[str, SourceRow]:
        """Every stored source row by name."""
        rows = self.conn.execute(f"SELECT {SOURCE_COLUMNS} FROM sources").fetchall()
        return {r[0]: row_from(r) for r in rows}

    def generation(self) -> int:
        """SQLite's data_version: it changes when another connection commits."""
        return self.database.data_version()

    def host_blocks(self, now: float) -> dict[str, float]:
        """Hosts still off-limits at `now` (a 429's Retry-After), with until when; also a
        GitHub token's wait, under its budget's key (bridge.http.HttpClient.block)."""
        rows = self.conn.execute("SELECT host, until FROM host_blocks WHERE until > ?", (now,))
        return dict(rows.fetchall())

    def item_hashes(self, source: str) -> dict[str, str]:
        """key -> compared-content hash of every stored item of a source."""
        rows = self.conn.execute("SELECT key, hash FROM items WHERE source = ?", (source,))
        return dict(rows.fetchall())

    def item_contents(self, source: str, keys: Sequence[str]) -> dict[str, Any]:
        """key -> stored item (parsed) for the given keys."""
        found: dict[str, Any] = {}
        for chunk in chunks(keys):
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT key, content FROM items WHERE source = ? AND key IN ({marks})",
                (source, *chunk),
            )
            for key, content in rows:
                found[key] = orjson.loads(content)
        return found

    def commit_polls(
        self,
        commits: Iterable[PollCommit],
        host_blocks: Mapping[str, float] | None = None,
        touched: Sequence[Touched] = (),
    ) -> set[str]:
        """Write polls with their snapshot changes, events and pending deliveries atomically;
        returns the names of the polls fenced out because their lease was no longer current.

        `touched` are rows of which only the poll times and result moved (an unchanged poll of
        a healthy source): a narrow UPDATE writes them at less than half an upsert's cost.
        """
        commits = list(commits)
        with self.database.write() as conn:
            if host_blocks:
                conn.execute("DELETE FROM host_blocks WHERE until < ?", (time.time(),))
                conn.executemany(
                    "INSERT INTO host_blocks (host, until) VALUES (?, ?) ON CONFLICT (host) "
                    "DO UPDATE SET until = max(until, excluded.until)",
                    list(host_blocks.items()),
                )
            leases = [(c.row.name, c.lease) for c in commits]
            leases += [(r.name, t) for r, t in touched]
            refused = self._end_leases(conn, leases)
            if refused:
                commits = [c for c in commits if c.row.name not in refused]
                touched = [(r, t) for r, t in touched if r.name not in refused]
            whole = [c.row for c in commits]
            if touched:
                cur = conn.executemany(
                    _TOUCH_SOURCE,
                    [(r.last_poll_at, r.next_poll_at, r.last_result, r.name) for r, _ in touched],
                )
                if cur.rowcount != len(touched):  # rows that lost their snapshot meanwhile
                    baselined = self._baselined(conn, [r.name for r, _ in touched])
                    whole += [r for r, _ in touched if r.name not in baselined]
            if whole:
                conn.executemany(_UPSERT_SOURCE, [row_values(r) for r in whole])
            written = [c for c in commits if c.upserts or c.deletes or c.events or c.history]
            if written:
                _write_polls(conn, written)
        return refused

    @staticmethod
    def _baselined(conn: sqlite3.Connection, names: Sequence[str]) -> set[str]:
        # Of these sources, those whose row holds a snapshot: the others lost it meanwhile.
        found: set[str] = set()
        for chunk in chunks(names):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT name FROM sources WHERE baselined = 1 AND name IN ({marks})", chunk
            )
            found.update(r[0] for r in rows)
        return found

    def _end_leases(
        self, conn: sqlite3.Connection, leases: Sequence[tuple[str, int | None]]
    ) -> set[str]:
        # End the leases these polls ran under; returns the polls whose lease was gone: another
        # process took the source since (the poll outlived its lease). Polls without a lease
        # are not fenced.
        held = [(name, token) for name, token in leases if token is not None]
        if not held:
            return set()
        rows = conn.execute(_END_LEASES, (self.owner, orjson.dumps(held).decode()))
        ended = {name for (name,) in rows}
        return {name for name, _ in held if name not in ended}


def _write_polls(conn: sqlite3.Connection, commits: list[PollCommit]) -> None:
    # One statement of each kind for the whole batch (`once` writes up to 2,000 polls at a
    # time): a statement per poll cost more than the rows it wrote. Row order is kept, so
    # deliveries still take ids in the order of their events.
    upserts = [(c.row.name, *upsert) for c in commits for upsert in c.upserts]
    if upserts:
        conn.executemany(
            "INSERT INTO items (source, key, hash, content) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (source, key) DO UPDATE SET hash = excluded.hash, "
            "content = excluded.content",
            upserts,
        )
    deletes = [(c.row.name, key) for c in commits for key in c.deletes]
    if deletes:
        conn.executemany("DELETE FROM items WHERE source = ? AND key = ?", deletes)
    events = [ev for c in commits for ev in c.events]
    if events:
        conn.executemany(
            "INSERT INTO events (id, source, type, key, created_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(ev.id, ev.source, ev.type, ev.key, ev.created_at, ev.body) for ev in events],
        )
        conn.executemany(
            "INSERT INTO deliveries (event_seq, webhook, source, status, next_attempt_at, "
            "created_at, updated_at) "
            "SELECT seq, ?, source, 'pending', ?, ?, ? FROM events WHERE id = ?",
            [
                (webhook, at, at, at, ev.id)
                for c in commits
                for at in (c.row.last_poll_at or 0.0,)
                for ev in c.events
                for webhook in ev.webhooks
            ],
        )
    history = [
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
    ]
    if history:
        conn.executemany(
            "INSERT INTO polls (source, at, result, duration, error, events) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            history,
        )
