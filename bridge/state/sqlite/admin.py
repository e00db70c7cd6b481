"""The state file as the commands see it: listings of events and deliveries, counts, replay and
discard, and retention's trim."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from bridge.model import DeliveryStatus, SourceRow
from bridge.state.base import INSTANCE_TIMEOUT, SCHEDULED_GRACE
from bridge.state.rows import SOURCE_COLUMNS, row_from
from bridge.state.sqlite.connection import Database, chunks

# The stored columns of a source row, read beside the asked-for name (which a row may lack).
_STORED = ", ".join(f"s.{c.strip()}" for c in SOURCE_COLUMNS.split(","))


class SqliteAdmin:
    """bridge.state.base.Admin: the queries of `bridge status`, `events`, `deliveries`,
    `replay`, `discard`, and retention, over one state file."""

    def __init__(self, database: Database):
        self.database = database
        self.conn = database.conn

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
        """Queue deliveries again (replay); returns how many. Attempt history is kept.

        `webhooks`: only deliveries to these (the configured ones: nothing sends to the others).
        """
        queued = 0
        with self.database.write() as conn:
            for part in _id_parts(event_ids):
                where, params = _matching(part, webhook, source)
                if dead:
                    where.append("status = 'dead'")
                if webhooks is not None:
                    where.append(f"webhook IN ({','.join('?' * len(webhooks))})")
                    params.extend(webhooks)
                queued += conn.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, "
                    f"lease_until = NULL, updated_at = ? WHERE {' AND '.join(where)}",
                    (now, now, *params),
                ).rowcount
        return queued

    def discard(
        self,
        now: float,
        *,
        event_ids: Sequence[str] = (),
        webhook: str | None = None,
        source: str | None = None,
    ) -> tuple[int, int]:
        """Give up on pending deliveries: they become dead (replayable, trimmed by retention).

        Returns (discarded, of them in flight). An attempt in flight at that moment still ends:
        if it delivers, the delivery is recorded as delivered; otherwise it stays dead
        (bridge.state.sqlite.outbox).
        """
        discarded = in_flight = 0
        with self.database.write() as conn:
            for part in _id_parts(event_ids):
                where, params = _matching(part, webhook, source)
                where.append("status = 'pending'")
                matching = " AND ".join(where)
                in_flight += conn.execute(
                    f"SELECT count(*) FROM deliveries WHERE {matching} AND lease_until >= ?",
                    (*params, now),
                ).fetchone()[0]
                discarded += conn.execute(
                    "UPDATE deliveries SET status = 'dead', "
                    "last_error = 'discarded (bridge discard)', "
                    f"updated_at = ? WHERE {matching}",
                    (now, *params),
                ).rowcount
        return discarded, in_flight

    def add_deliveries(self, event_id: str, webhooks: Sequence[str], now: float) -> int:
        """Queue an event to webhooks it has no delivery for yet (replay to a new webhook)."""
        with self.database.write() as conn:
            row = conn.execute(
                "SELECT seq, source FROM events WHERE id = ?", (event_id,)
            ).fetchone()
            if row is None:
                return 0
            have = {
                w
                for (w,) in conn.execute(
                    "SELECT webhook FROM deliveries WHERE event_seq = ?", (row[0],)
                )
            }
            new = [w for w in webhooks if w not in have]
            conn.executemany(
                "INSERT INTO deliveries (event_seq, webhook, source, status, next_attempt_at, "
                "created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                [(row[0], w, row[1], now, now, now) for w in new],
            )
            return len(new)

    # --- reading, for the CLI and the console ---------------------------------------------

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
        another instance still schedules; (how many match, the page).

        The names go in as one JSON array (json_each), so the filter, the count and the page
        are all SQL: a console page of 10,000 sources reads one page of rows, not all of them.
        """
        listed = orjson.dumps(list(names)).decode()
        params: list[Any] = [listed]
        listing = "SELECT value AS name, key AS n FROM json_each(?)"
        if scheduled_at is not None:
            # Ordered after every listed name (n = len(names)), then by name.
            listing += (
                " UNION ALL SELECT o.name, ? FROM sources o WHERE o.next_poll_at > ? - "
                "max(?, coalesce(o.next_poll_at - o.last_poll_at, 0)) "
                "AND o.name NOT IN (SELECT value FROM json_each(?))"
            )
            params += [len(names), scheduled_at, SCHEDULED_GRACE, listed]
        where: list[str] = []
        if match:
            where.append("instr(lower(j.name), ?) > 0")
            params.append(match.lower())
        if failing:
            where.append("s.failures > 0")
        if only is not None:
            where.append("j.name = ?")
            params.append(only)
        rest = f"FROM ({listing}) j LEFT JOIN sources s ON s.name = j.name " + (
            f"WHERE {' AND '.join(where)}" if where else ""
        )
        total: int = self.conn.execute(f"SELECT count(*) {rest}", params).fetchone()[0]
        if limit == 0:
            return total, []
        page = self.conn.execute(
            f"SELECT j.name, {_STORED} {rest} ORDER BY j.n, j.name LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset),
        )
        return total, [SourceRow(r[0]) if r[1] is None else row_from(r[1:]) for r in page]

    # --- reading, for the CLI ---------------------------------------------------------------

    def event_ids_known(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids exist."""
        found: set[str] = set()
        for chunk in chunks(event_ids):
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", tuple(chunk))
            found.update(r[0] for r in rows)
        return found

    def events(self, *, source: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Recent events, newest first, with their envelopes parsed."""
        sql = "SELECT id, source, type, key, created_at, body FROM events"
        params: list[Any] = []
        if source:
            sql += " WHERE source = ?"
            params.append(source)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        return [
            {
                "id": r[0],
                "source": r[1],
                "type": r[2],
                "key": r[3],
                "created_at": r[4],
                "event": orjson.loads(r[5]),
            }
            for r in self.conn.execute(sql, params)
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
            "FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE 1 = 1"
        )
        params: list[Any] = []
        if status:
            sql += " AND d.status = ?"
            params.append(status)
        if webhook:
            sql += " AND d.webhook = ?"
            params.append(webhook)
        if source:
            sql += " AND d.source = ?"
            params.append(source)
        sql += " ORDER BY d.id DESC LIMIT ?"
        params.append(limit)
        return list(self.database.db.query(sql, params))

    def delivery_counts(self, webhooks: Iterable[str] = ()) -> dict[str, dict[str, int]]:
        """webhook -> {pending, delivered, dead} counts; the named webhooks appear even at 0."""
        counts = {w: {"pending": 0, "delivered": 0, "dead": 0} for w in webhooks}
        rows = self.conn.execute(
            "SELECT webhook, status, count(*) FROM deliveries GROUP BY webhook, status"
        )
        for webhook, status, n in rows:
            counts.setdefault(webhook, {"pending": 0, "delivered": 0, "dead": 0})[status] = n
        return counts

    def pending_by_webhook(self) -> dict[str, int]:
        """webhook -> deliveries pending for it (through the deliveries_pending index)."""
        rows = self.conn.execute(
            "SELECT webhook, count(*) FROM deliveries WHERE status = 'pending' GROUP BY webhook"
        )
        return dict(rows.fetchall())

    def instances(self, now: float) -> list[dict[str, Any]]:
        """The live instances in the file's registry (a heartbeat within INSTANCE_TIMEOUT),
        oldest first.

        In practice none: a `bridge run` on a state file does not register. It holds the file's
        daemon lock instead (one daemon per file; `status` says whether it runs), and whether a
        lease's owner lives is asked of its pid, so no heartbeat is kept to judge it by. The
        registry is read all the same, so that one kept here would be listed as on PostgreSQL.
        """
        rows = self.conn.execute(
            "SELECT id, host, pid, started_at, heartbeat_at FROM instances "
            "WHERE heartbeat_at >= ? ORDER BY started_at, id",
            (now - INSTANCE_TIMEOUT,),
        )
        return [
            {"id": i, "host": host, "pid": pid, "since": since, "heartbeat": beat}
            for i, host, pid, since, beat in rows
        ]

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        """Every attempt of one delivery, oldest first."""
        return list(
            self.database.db.query(
                "SELECT at, status, error, duration FROM attempts WHERE delivery_id = ? "
                "ORDER BY id",
                [delivery_id],
            )
        )

    # --- retention ---------------------------------------------------------------------------

    def trim(self, before: float, *, batch: int = 5000) -> int:
        """Delete history older than `before`, a batch per transaction; pending work is kept.

        Returns how many rows went. Dead deliveries are kept until past retention, like the rest.
        """
        total = 0
        statements = (
            "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < ? LIMIT ?)",
            "DELETE FROM polls WHERE id IN (SELECT id FROM polls WHERE at < ? LIMIT ?)",
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries "
            "WHERE status != 'pending' AND updated_at < ? LIMIT ?)",
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE created_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq) LIMIT ?)",
        )
        for sql in statements:
            while True:
                with self.database.write() as conn:
                    n = conn.execute(sql, (before, batch)).rowcount
                total += n
                if n < batch:
                    break
        return total


def _id_parts(event_ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """Event ids in parts one statement can take; one empty part when no ids are given."""
    if not event_ids:
        yield ()
    else:
        yield from chunks(event_ids)


def _matching(
    event_ids: Sequence[str], webhook: str | None, source: str | None
) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) on deliveries: of these events, webhook, source."""
    where = ["1 = 1"]
    params: list[Any] = []
    if event_ids:
        marks = ",".join("?" * len(event_ids))
        where.append(f"event_seq IN (SELECT seq FROM events WHERE id IN ({marks}))")
        params.extend(event_ids)
    if webhook:
        where.append("webhook = ?")
        params.append(webhook)
    if source:
        where.append("source = ?")
        params.append(source)
    return where, params
