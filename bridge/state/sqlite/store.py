"""The queries of polling and delivering: snapshots, poll state, rate-limited hosts, and the
claims and attempts of the events/deliveries outbox.

The commands' queries (listings, counts, replay, discard) and retention are bridge/records.py;
the file itself (connection, schema, transactions) is bridge/statefile.py; the objects these
queries take and give are in bridge/rows.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from bridge.model import Delivery, Finished, PollCommit, SourceRow
from bridge.state.sqlite.records import Records, chunks
from bridge.state.sqlite.rows import SOURCE_COLUMNS, row_from, row_values

# An upsert updates the row in place: a third of the cost of INSERT OR REPLACE's delete and insert.
_UPSERT_SOURCE = (
    f"INSERT INTO sources ({SOURCE_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
    "ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SOURCE_COLUMNS.split(", ")[1:])
)

_TOUCH_SOURCE = (
    "UPDATE sources SET last_poll_at = ?, next_poll_at = ?, last_result = ? WHERE name = ?"
)


class Store(Records):
    """The engine's and the delivery workers' queries (the commands' are in Records)."""

    # --- sources and snapshots -------------------------------------------------------------

    def source_row(self, name: str) -> SourceRow:
        """The stored row of a source, or a fresh one if it was never polled."""
        r = self.conn.execute(f"SELECT {SOURCE_COLUMNS} FROM sources WHERE name = ?", (name,))
        found = r.fetchone()
        return row_from(found) if found else SourceRow(name=name)

    def source_rows(self) -> dict[str, SourceRow]:
        """Every stored source row by name."""
        rows = self.conn.execute(f"SELECT {SOURCE_COLUMNS} FROM sources").fetchall()
        return {r[0]: row_from(r) for r in rows}

    def host_blocks(self, now: float) -> dict[str, float]:
        """Hosts still off-limits at `now` (a 429's Retry-After), with until when; also a
        GitHub token's wait, under its budget's key (bridge.http.client.HttpClient.block)."""
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
        touched: Sequence[SourceRow] = (),
    ) -> None:
        """Write polls with their snapshot changes, events and pending deliveries atomically.

        `host_blocks` (host -> time.time() until which it asked to be left alone) are kept too.
        `touched` are rows of which only the poll times and result moved (an unchanged poll of
        a healthy source): a narrow UPDATE writes them at less than half an upsert's cost.
        """
        commits = list(commits)
        whole = [c.row for c in commits]
        with self.write() as conn:
            if host_blocks:
                conn.execute("DELETE FROM host_blocks WHERE until < ?", (time.time(),))
                conn.executemany(
                    "INSERT INTO host_blocks (host, until) VALUES (?, ?) ON CONFLICT (host) "
                    "DO UPDATE SET until = max(until, excluded.until)",
                    list(host_blocks.items()),
                )
            if touched:
                cur = conn.executemany(
                    _TOUCH_SOURCE,
                    [(r.last_poll_at, r.next_poll_at, r.last_result, r.name) for r in touched],
                )
                if cur.rowcount != len(touched):  # a row went missing meanwhile: write them whole
                    whole += touched
            if whole:
                conn.executemany(_UPSERT_SOURCE, [row_values(r) for r in whole])
            written = [c for c in commits if c.upserts or c.deletes or c.events or c.history]
            if written:
                self._write_polls(conn, written)

    def _write_polls(self, conn: sqlite3.Connection, commits: list[PollCommit]) -> None:
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

    # --- deliveries ------------------------------------------------------------------------

    def claim_due(
        self,
        webhook: str,
        now: float,
        limit: int,
        lease: float,
        busy_sources: set[str],
        finished: Sequence[Finished] = (),
    ) -> list[Delivery]:
        """Lease up to `limit` due deliveries, oldest first, at most one per source in flight.

        `finished` attempts are recorded first, in the same transaction.
        """
        if finished:
            with self.write() as conn:
                self._write_finished(conn, finished)
                return self._claim(conn, webhook, now, limit, lease, busy_sources)
        if limit <= 0:
            return []
        # Most looks find nothing due: a plain read then costs no write lock on the file.
        due = self.conn.execute(
            "SELECT 1 FROM deliveries WHERE webhook = ? AND status = 'pending' "
            "AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?) LIMIT 1",
            (webhook, now, now),
        ).fetchone()
        if due is None:
            return []
        with self.write() as conn:
            return self._claim(conn, webhook, now, limit, lease, busy_sources)

    def _claim(
        self,
        conn: sqlite3.Connection,
        webhook: str,
        now: float,
        limit: int,
        lease: float,
        busy_sources: set[str],
    ) -> list[Delivery]:
        if limit <= 0:
            return []
        # `+next_attempt_at`: walk deliveries_pending in id order and stop at LIMIT, rather
        # than find every due row through deliveries_due and sort them (2 ms at 5,000).
        rows = conn.execute(
            "SELECT d.id, e.id, d.source, d.attempts, e.body FROM deliveries d "
            "JOIN events e ON e.seq = d.event_seq "
            "WHERE d.webhook = ? AND d.status = 'pending' AND +d.next_attempt_at <= ? "
            "AND (d.lease_until IS NULL OR d.lease_until < ?) ORDER BY d.id LIMIT ?",
            (webhook, now, now, limit * 4 + len(busy_sources)),
        ).fetchall()
        claimed: list[Delivery] = []
        taken = set(busy_sources)
        for did, eid, source, attempts, body in rows:
            # Ordering per source is kept by never sending two of one source's events at once.
            if source in taken:
                continue
            taken.add(source)
            claimed.append(Delivery(did, eid, webhook, source, attempts, body))
            if len(claimed) == limit:
                break
        conn.executemany(
            "UPDATE deliveries SET lease_until = ? WHERE id = ?",
            [(now + lease, d.id) for d in claimed],
        )
        return claimed

    def next_due(self, webhook: str) -> float | None:
        """When the earliest pending delivery of a webhook is due, or None."""
        r = self.conn.execute(
            "SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM deliveries "
            "WHERE webhook = ? AND status = 'pending'",
            (webhook,),
        ).fetchone()
        return r[0]

    def finish_attempts(self, finished: Sequence[Finished]) -> None:
        """Record several attempts in one transaction."""
        if finished:
            with self.write() as conn:
                self._write_finished(conn, finished)

    @staticmethod
    def _write_finished(conn: sqlite3.Connection, finished: Sequence[Finished]) -> None:
        conn.executemany(
            "INSERT INTO attempts (delivery_id, at, status, error, duration) "
            "VALUES (?, ?, ?, ?, ?)",
            [(f.delivery_id, f.at, f.http_status, f.error, f.duration) for f in finished],
        )
        # A delivery discarded (`bridge discard`) while this attempt was in flight stays dead,
        # with the reason it was discarded, unless the attempt delivered it.
        kept = "status = 'dead' AND ? != 'delivered'"
        conn.executemany(
            f"UPDATE deliveries SET status = CASE WHEN {kept} THEN status ELSE ? END, "
            "attempts = attempts + 1, lease_until = NULL, "
            "next_attempt_at = coalesce(?, next_attempt_at), last_status = ?, "
            f"last_error = CASE WHEN {kept} THEN last_error ELSE ? END, "
            "updated_at = ? WHERE id = ?",
            [
                (
                    f.status,
                    f.status,
                    f.next_attempt_at,
                    f.http_status,
                    f.status,
                    f.error,
                    f.at,
                    f.delivery_id,
                )
                for f in finished
            ],
        )
