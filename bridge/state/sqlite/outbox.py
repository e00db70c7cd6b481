"""The delivery queue in the state file: claims (one delivery per source in flight, kept by the
leases in the file) and the attempts' outcomes."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge.model import Delivery, Finished
from bridge.state.sqlite.connection import Database

# `+d.next_attempt_at`: walk deliveries_pending in id order and stop at LIMIT, rather than find
# every due row through deliveries_due and sort them. The NOT EXISTS keeps per-source order
# across processes: nothing of a source is claimed while one of its deliveries is in flight,
# whatever its status (one discarded meanwhile is dead, and its attempt still out).
_DUE = (
    "SELECT d.id, e.id, d.source, d.attempts, e.body FROM deliveries d "
    "JOIN events e ON e.seq = d.event_seq "
    "WHERE d.webhook = ? AND d.status = 'pending' AND +d.next_attempt_at <= ? "
    "AND (d.lease_until IS NULL OR d.lease_until < ?) "
    "AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.webhook = d.webhook "
    "AND o.source = d.source AND o.lease_until >= ?) "
    "ORDER BY d.id LIMIT ?"
)


class SqliteOutbox:
    """bridge.state.base.Outbox over one state file."""

    def __init__(self, database: Database):
        self.database = database
        self.conn = database.conn

    def claim_due(
        self,
        webhook: str,
        now: float,
        limit: int,
        lease: float,
        finished: Sequence[Finished] = (),
    ) -> list[Delivery]:
        """Lease up to `limit` due deliveries, oldest first, at most one per source in flight.

        `finished` attempts are recorded first, in the same transaction.
        """
        if finished:
            with self.database.write() as conn:
                _write_finished(conn, finished)
                return _claim(conn, webhook, now, limit, lease)
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
        with self.database.write() as conn:
            return _claim(conn, webhook, now, limit, lease)

    def next_due(self, webhook: str) -> float | None:
        """When the earliest pending delivery of a webhook can be claimed, or None: not before
        it is due, nor while a delivery of its source is in flight (until that lease ends)."""
        r = self.conn.execute(
            "SELECT min(max(d.next_attempt_at, coalesce(f.until, 0))) FROM deliveries d "
            "LEFT JOIN (SELECT source, max(lease_until) AS until FROM deliveries "
            "WHERE webhook = ? AND lease_until IS NOT NULL GROUP BY source) f "
            "ON f.source = d.source "
            "WHERE d.webhook = ? AND d.status = 'pending'",
            (webhook, webhook),
        ).fetchone()
        return None if r[0] is None else float(r[0])

    def finish_attempts(self, finished: Sequence[Finished]) -> None:
        """Record several attempts in one transaction."""
        if finished:
            with self.database.write() as conn:
                _write_finished(conn, finished)


def _claim(
    conn: sqlite3.Connection, webhook: str, now: float, limit: int, lease: float
) -> list[Delivery]:
    if limit <= 0:
        return []
    rows = conn.execute(_DUE, (webhook, now, now, now, limit * 4)).fetchall()
    claimed: list[Delivery] = []
    taken: set[str] = set()  # within this one claim: the first due delivery of each source
    for did, eid, source, attempts, body in rows:
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


def _write_finished(conn: sqlite3.Connection, finished: Sequence[Finished]) -> None:
    conn.executemany(
        "INSERT INTO attempts (delivery_id, at, status, error, duration) VALUES (?, ?, ?, ?, ?)",
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
