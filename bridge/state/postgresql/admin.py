"""PostgreSQL as the commands see it: listings of sources, events, deliveries and live instances,
counts, replay and discard (a replay wakes every instance's workers: listen.py), and retention's
trim."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from bridge.model import DeliveryStatus, SourceRow
from bridge.state.base import INSTANCE_TIMEOUT, SCHEDULED_GRACE
from bridge.state.postgresql.connection import Database
from bridge.state.postgresql.listen import notify_deliveries
from bridge.state.rows import SOURCE_COLUMNS, row_from

# The stored columns of a source row, read beside the asked-for name (which a row may lack).
_STORED = ", ".join(f"s.{c.strip()}" for c in SOURCE_COLUMNS.split(","))

# pg_try_advisory_lock's single-key space: one retention pass at a time across instances.
TRIM_LOCK = 0x6272_6964_6765_0002  # "bridge", 2


class PostgresAdmin:
    """bridge.state.base.Admin over a PostgreSQL database."""

    def __init__(self, database: Database):
        self.database = database

    # --- queue changes -----------------------------------------------------------------------

    def requeue(
        self,
        now: float,
        *,
        event_ids: Sequence[str] = (),
        dead: bool = False,
        webhook: str | None = None,
        source: str | None = None,
        webhooks: Sequence[str] | None = None,
    ) -> int:
        """Queue deliveries again (replay); returns how many. Attempt history is kept."""
        where, params = _matching(event_ids, webhook, source)
        if dead:
            where.append("status = 'dead'")
        if webhooks is not None:
            where.append("webhook = ANY(%s)")
            params.append(list(webhooks))
        with self.database.write() as conn:
            # One row back however many are queued: their count and their webhooks (to wake).
            row = conn.execute(
                "WITH queued AS (UPDATE deliveries SET status = 'pending', attempts = 0, "
                "next_attempt_at = %s, lease_until = NULL, updated_at = %s "
                f"WHERE {' AND '.join(where)} RETURNING webhook) "
                "SELECT count(*), coalesce(array_agg(DISTINCT webhook), '{}') FROM queued",
                (now, now, *params),
            ).fetchone()
            assert row is not None
            notify_deliveries(conn, row[1])
        return int(row[0])

    def discard(
        self,
        now: float,
        *,
        event_ids: Sequence[str] = (),
        webhook: str | None = None,
        source: str | None = None,
    ) -> tuple[int, int]:
        """Matching pending deliveries become dead; returns (discarded, of them in flight).
        An attempt in flight still ends: delivered, it is recorded so (outbox.py)."""
        where, params = _matching(event_ids, webhook, source)
        where.append("status = 'pending'")
        with self.database.write() as conn:
            rows = conn.execute(
                "UPDATE deliveries SET status = 'dead', "
                "last_error = 'discarded (bridge discard)', "
                f"updated_at = %s WHERE {' AND '.join(where)} "
                "RETURNING lease_until IS NOT NULL AND lease_until >= %s",
                (now, *params, now),
            ).fetchall()
        return len(rows), sum(1 for (flying,) in rows if flying)

    def add_deliveries(self, event_id: str, webhooks: Sequence[str], now: float) -> int:
        """Queue an event to webhooks it has no delivery for yet (replay to a new webhook)."""
        with self.database.write() as conn:
            added = [
                webhook
                for (webhook,) in conn.execute(
                    "INSERT INTO deliveries (event_seq, webhook, source, status, "
                    "next_attempt_at, created_at, updated_at) "
                    "SELECT e.seq, w.webhook, e.source, 'pending', %s, %s, %s "
                    "FROM events e, unnest(%s::text[]) WITH ORDINALITY AS w(webhook, n) "
                    "WHERE e.id = %s AND NOT EXISTS (SELECT 1 FROM deliveries d "
                    "WHERE d.event_seq = e.seq AND d.webhook = w.webhook) ORDER BY w.n "
                    "RETURNING webhook",
                    (now, now, now, list(dict.fromkeys(webhooks)), event_id),
                ).fetchall()
            ]
            notify_deliveries(conn, added)
        return len(added)

    # --- reading, for the CLI and the console ------------------------------------------------

    def sources(
        self,
        names: Sequence[str],
        *,
        match: str | None = None,
        failing: bool = False,
        offset: int = 0,
        limit: int | None = None,
        scheduled_at: float | None = None,
        only: str | None = None,
    ) -> tuple[int, list[SourceRow]]:
        """A page of the rows of `names`, in their order, then (`scheduled_at`) the stored rows
        another instance still schedules; (how many match, the page)."""
        params: list[Any] = [list(names)]
        listing = "SELECT name, n FROM unnest(%s::text[]) WITH ORDINALITY AS l(name, n)"
        if scheduled_at is not None:
            # Ordered after every listed name (n = len(names) + 1), then by name.
            listing += (
                " UNION ALL SELECT o.name, %s FROM sources o WHERE o.next_poll_at > %s - "
                "GREATEST(%s, coalesce(o.next_poll_at - o.last_poll_at, 0)) "
                "AND o.name NOT IN (SELECT unnest(%s::text[]))"  # a hashed subplan
            )
            params += [len(names) + 1, scheduled_at, SCHEDULED_GRACE, list(names)]
        where: list[str] = []
        if match:
            where.append("strpos(lower(j.name), %s) > 0")
            params.append(match.lower())
        if failing:
            where.append("s.failures > 0")
        if only is not None:
            where.append("j.name = %s")
            params.append(only)
        rest = f"FROM ({listing}) j LEFT JOIN sources s ON s.name = j.name " + (
            f"WHERE {' AND '.join(where)}" if where else ""
        )
        with self.database.connection() as conn:
            row = conn.execute(f"SELECT count(*) {rest}", params).fetchone()
            total = int(row[0]) if row else 0
            if limit == 0:
                return total, []
            page = conn.execute(
                f"SELECT j.name, {_STORED} {rest} ORDER BY j.n, j.name LIMIT %s OFFSET %s",
                (*params, limit, offset),
            ).fetchall()
        return total, [SourceRow(r[0]) if r[1] is None else row_from(r[1:]) for r in page]

    def event_ids_known(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids exist."""
        if not event_ids:
            return set()
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT id FROM events WHERE id = ANY(%s)", (list(event_ids),)
            ).fetchall()
        return {r[0] for r in rows}

    def events(self, *, source: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Recent events, newest first, with their envelopes parsed."""
        sql = "SELECT id, source, type, key, created_at, body FROM events"
        params: list[Any] = []
        if source:
            sql += " WHERE source = %s"
            params.append(source)
        sql += " ORDER BY seq DESC LIMIT %s"
        params.append(limit)
        with self.database.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            {
                "id": r[0],
                "source": r[1],
                "type": r[2],
                "key": r[3],
                "created_at": r[4],
                "event": orjson.loads(r[5]),
            }
            for r in rows
        ]

    def deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        webhook: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Deliveries, newest first, with attempt counts and the last error."""
        sql = (
            "SELECT d.id, e.id AS event_id, d.webhook, d.source, e.type, d.status, d.attempts, "
            "d.next_attempt_at, d.last_status, d.last_error, d.updated_at "
            "FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE TRUE"
        )
        params: list[Any] = []
        if status:
            sql += " AND d.status = %s"
            params.append(status)
        if webhook:
            sql += " AND d.webhook = %s"
            params.append(webhook)
        if source:
            sql += " AND d.source = %s"
            params.append(source)
        sql += " ORDER BY d.id DESC LIMIT %s"
        params.append(limit)
        return self._dicts(sql, params)

    def delivery_counts(self, webhooks: Iterable[str] = ()) -> dict[str, dict[str, int]]:
        """webhook -> {pending, delivered, dead} counts; the named webhooks appear even at 0."""
        counts = {w: {"pending": 0, "delivered": 0, "dead": 0} for w in webhooks}
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT webhook, status, count(*) FROM deliveries GROUP BY webhook, status"
            ).fetchall()
        for webhook, status, n in rows:
            counts.setdefault(webhook, {"pending": 0, "delivered": 0, "dead": 0})[status] = n
        return counts

    def pending_by_webhook(self) -> dict[str, int]:
        """webhook -> deliveries pending for it (through the deliveries_pending index)."""
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT webhook, count(*) FROM deliveries WHERE status = 'pending' GROUP BY webhook"
            ).fetchall()
        return {webhook: n for webhook, n in rows}

    def instances(self, now: float) -> list[dict[str, Any]]:
        """The live instances (a heartbeat within INSTANCE_TIMEOUT), oldest first."""
        return self._dicts(
            "SELECT id, host, pid, started_at AS since, heartbeat_at AS heartbeat "
            "FROM instances WHERE heartbeat_at >= %s ORDER BY started_at, id",
            [now - INSTANCE_TIMEOUT],
        )

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        """Every attempt of one delivery, oldest first."""
        return self._dicts(
            "SELECT at, status, error, duration FROM attempts WHERE delivery_id = %s ORDER BY id",
            [delivery_id],
        )

    def _dicts(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self.database.connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(sql.encode(), params).fetchall()

    # --- retention ---------------------------------------------------------------------------

    def trim(self, before: float, *, batch: int = 5000) -> int:
        """Delete history older than `before`, a batch per transaction; pending work is kept.

        One instance trims at a time (an advisory lock, held on one pool connection for the
        pass); another that finds it taken skips its pass and returns 0.
        """
        statements = (
            "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < %s LIMIT %s)",
            "DELETE FROM polls WHERE id IN (SELECT id FROM polls WHERE at < %s LIMIT %s)",
            # Their attempts go with them (ON DELETE CASCADE).
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries "
            "WHERE status <> 'pending' AND updated_at < %s LIMIT %s)",
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE created_at < %s "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq) LIMIT %s)",
        )
        total = 0
        with self.database.connection() as lock:
            row = lock.execute("SELECT pg_try_advisory_lock(%s)", (TRIM_LOCK,)).fetchone()
            if not row or not row[0]:
                return 0
            try:
                for sql in statements:
                    while True:
                        with self.database.write() as conn:
                            n = conn.execute(sql.encode(), (before, batch)).rowcount
                        total += n
                        if n < batch:
                            break
                self._fold_writes(before)
            finally:
                try:
                    lock.execute("SELECT pg_advisory_unlock(%s)", (TRIM_LOCK,))
                except psycopg.Error:  # the connection broke: the lock went with its session
                    pass
        return total

    def _fold_writes(self, before: float) -> None:
        # Writers silent since `before` (ended processes) are folded into one row: the sum that
        # generation() reads stays the same, and the table stays small.
        with self.database.write() as conn:
            conn.execute(
                "WITH gone AS (DELETE FROM writes WHERE at < %s AND owner <> '' RETURNING n) "
                "INSERT INTO writes (owner, n, at) SELECT '', sum(n), %s FROM gone "
                "HAVING count(*) > 0 ON CONFLICT (owner) DO UPDATE SET n = writes.n + excluded.n",
                (before, before),
            )


def _matching(
    event_ids: Sequence[str], webhook: str | None, source: str | None
) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) on deliveries: of these events, webhook, source."""
    where = ["TRUE"]
    params: list[Any] = []
    if event_ids:
        where.append("event_seq IN (SELECT seq FROM events WHERE id = ANY(%s))")
        params.append(list(event_ids))
    if webhook:
        where.append("webhook = %s")
        params.append(webhook)
    if source:
        where.append("source = %s")
        params.append(source)
    return where, params
