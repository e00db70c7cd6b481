"""Polling's queries on the state file: source rows, item snapshots, rate-limited hosts, and the
commit of polls (fenced by their leases) with their events and pending deliveries."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from bridge.model import KnownItems, PollCommit, SourceRow
from bridge.state.base import Touched
from bridge.state.rows import SOURCE_COLUMNS, poll_rows, row_from, row_values
from bridge.state.sqlite.connection import Database, chunks
from bridge.state.sqlite.grants import Grants

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


class SqliteSnapshots:
    """bridge.state.base.Snapshots over one state file."""

    def __init__(self, database: Database, grants: Grants):
        self.database = database
        self.conn = database.conn
        self.grants = grants  # the poll leases this process takes: a commit ends its poll's

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

    def known_items(self, source: str) -> KnownItems | None:
        """None: the file answers item_hashes and item_contents in place, faster than a copy
        kept in memory could be kept current with what other processes commit to it."""
        return None

    def confirmations(self, source: str) -> dict[str, tuple[str, int]]:
        """key -> (candidate hash, polls that saw it) of the source's changes awaiting confirm."""
        rows = self.conn.execute(
            "SELECT key, hash, seen FROM confirmations WHERE source = ?", (source,)
        )
        return {key: (h, seen) for key, h, seen in rows}

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
            # The sources of the polls that ran under a lease, by its token (a wake-up's)
            leased: dict[int, list[str]] = {}
            for c in commits:
                if c.lease is not None:
                    leased.setdefault(c.lease, []).append(c.row.name)
            for r, t in touched:
                if t is not None:
                    leased.setdefault(t, []).append(r.name)
            # Writing a poll ends its lease; a poll whose lease was gone (another process took
            # the source since: the poll outlived its lease) is fenced out.
            refused = self.grants.end(conn, leased)
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
            held = [c for c in commits if c.confirmations is not None]
            if held:
                conn.executemany(
                    "DELETE FROM confirmations WHERE source = ?", [(c.row.name,) for c in held]
                )
                conn.executemany(
                    "INSERT INTO confirmations (source, key, hash, seen) VALUES (?, ?, ?, ?)",
                    [
                        (c.row.name, key, h, seen)
                        for c in held
                        for key, (h, seen) in (c.confirmations or {}).items()
                    ],
                )
        self.grants.ended(leased)
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


def _write_polls(conn: sqlite3.Connection, commits: list[PollCommit]) -> None:
    # One statement of each kind for the whole batch (`once` writes up to 2,000 polls at a
    # time): a statement per poll cost more than the rows it wrote. Row order is kept, so
    # deliveries still take ids in the order of their events.
    rows = poll_rows(commits)
    if rows.upserts:
        conn.executemany(
            "INSERT INTO items (source, key, hash, content) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (source, key) DO UPDATE SET hash = excluded.hash, "
            "content = excluded.content",
            rows.upserts,
        )
    if rows.deletes:
        conn.executemany("DELETE FROM items WHERE source = ? AND key = ?", rows.deletes)
    if rows.events:
        conn.executemany(
            "INSERT INTO events (id, source, type, key, created_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows.events,
        )
        conn.executemany(
            "INSERT INTO deliveries (event_seq, webhook, source, status, next_attempt_at, "
            "created_at, updated_at) "
            "SELECT seq, ?, source, 'pending', ?, ?, ? FROM events WHERE id = ?",
            [(webhook, at, at, at, event_id) for event_id, webhook, at in rows.deliveries],
        )
    if rows.history:
        conn.executemany(
            "INSERT INTO polls (source, at, result, duration, error, events) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows.history,
        )
