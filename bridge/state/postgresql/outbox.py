"""The delivery queue on PostgreSQL: claims shared by any number of instances (one delivery per
source in flight, whichever instance holds it) and the attempts' outcomes.

A claim is one transaction of two statements:

1. the due rows are locked with FOR UPDATE SKIP LOCKED inside a MATERIALIZED CTE (as Oban
   does: the planner cannot lock more rows than its LIMIT), the first of each source kept, and
   for each, in id order until `limit`, a transaction-scoped advisory lock on (webhook, source)
   is tried. SKIP LOCKED alone would let two instances claiming at the same moment each take a
   different delivery of one source; the advisory lock lets only one of them claim the source.
2. the leases are written, re-checking that no other delivery of the source holds a live
   lease, and that no older one of the source is claimable (SKIP LOCKED passes over a row
   another claim has locked, so the first row of a source seen in step 1 may not be its
   oldest: taking it would send the source's events out of order). This statement's snapshot
   is taken after the advisory locks are held, so it sees the lease of any claim of the same
   source that committed before: a claimer releases its advisory lock only after its commit
   is visible. A source refused here is claimed by a later look.

Claims and finished attempts are written unseen by generation() (Database.write(seen=False)):
they touch no source row another instance caches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg

from bridge.model import Delivery, Finished
from bridge.state.base import INSTANCE_TIMEOUT
from bridge.state.postgresql.connection import Database

# A delivery's lease is live until it ends, unless its owner is a registered instance that
# stopped beating: a killed instance's deliveries go out again at once, not when their leases
# (the webhook's timeout and a margin) run out. An owner that never registered (`bridge
# deliver`) holds its leases until they end.
_DEAD_OWNER = """EXISTS (SELECT 1 FROM instances i WHERE i.id = {0}.lease_owner
                      AND i.heartbeat_at < %(dead_before)s)"""
_LIVE = "({0}.lease_until >= %(now)s AND NOT " + _DEAD_OWNER + ")"
_FREE = "({0}.lease_until IS NULL OR {0}.lease_until < %(now)s OR " + _DEAD_OWNER + ")"

_LOCKED_DUE = f"""
WITH due AS MATERIALIZED (
    SELECT d.id, d.source FROM deliveries d
    WHERE d.webhook = %(webhook)s AND d.status = 'pending' AND d.next_attempt_at <= %(now)s
      AND {_FREE.format("d")}
      AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.webhook = d.webhook
                      AND o.source = d.source AND {_LIVE.format("o")})
    ORDER BY d.id
    LIMIT %(scan)s
    FOR UPDATE OF d SKIP LOCKED
), firsts AS MATERIALIZED (
    SELECT DISTINCT ON (source) id, source FROM due ORDER BY source, id
)
SELECT id FROM (SELECT id, source FROM firsts ORDER BY id OFFSET 0) f
WHERE pg_try_advisory_xact_lock(hashtext(%(webhook)s), hashtext(f.source))
LIMIT %(limit)s
"""
# OFFSET 0 keeps the (volatile) lock call above the sort: it runs in id order and stops at
# LIMIT, so no source is locked that this claim does not take.

_LEASE = f"""
UPDATE deliveries d SET lease_until = %(until)s, lease_owner = %(owner)s
FROM events e
WHERE d.id = ANY(%(ids)s) AND e.seq = d.event_seq
  AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.webhook = d.webhook
                  AND o.source = d.source AND o.id <> d.id AND {_LIVE.format("o")} OFFSET 0)
  AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.webhook = d.webhook
                  AND p.source = d.source AND p.status = 'pending' AND p.id < d.id
                  AND p.next_attempt_at <= %(now)s AND {_FREE.format("p")} OFFSET 0)
RETURNING d.id, e.id, d.source, d.attempts, e.body
"""
# OFFSET 0 keeps each NOT EXISTS a subplan run per claimed row, on the (webhook, source) indexes.
# Pulled up into anti-joins, they were planned from the estimates of a young table (a prepared
# statement's generic plan keeps them until autovacuum's first ANALYZE): the older-pending check
# then read every due delivery of the webhook and compared it with each claimed one, a cost
# that grew with the backlog and was most of the server's time with every poll a change.

_ANY_DUE = f"""
SELECT 1 FROM deliveries d WHERE d.webhook = %(webhook)s AND d.status = 'pending'
  AND d.next_attempt_at <= %(now)s AND {_FREE.format("d")} LIMIT 1
"""

_NEXT_DUE = f"""
SELECT min(greatest(d.next_attempt_at, coalesce(f.until, 0))) FROM deliveries d
LEFT JOIN (SELECT o.source, max(o.lease_until) AS until FROM deliveries o
           WHERE o.webhook = %(webhook)s AND o.lease_until IS NOT NULL
             AND NOT {_DEAD_OWNER.format("o")} GROUP BY o.source) f
  ON f.source = d.source
WHERE d.webhook = %(webhook)s AND d.status = 'pending'
"""


def _times(now: float) -> dict[str, float]:
    return {"now": now, "dead_before": now - INSTANCE_TIMEOUT}


class PostgresOutbox:
    """bridge.state.base.Outbox over a PostgreSQL database."""

    def __init__(self, database: Database):
        self.database = database

    def claim_due(
        self,
        webhook: str,
        now: float,
        limit: int,
        lease: float,
        finished: Sequence[Finished] = (),
    ) -> list[Delivery]:
        """Lease up to `limit` due deliveries, oldest first, at most one per source in flight
        across every instance; `finished` attempts are recorded first, in the same transaction.
        """
        if finished:
            with self.database.write(seen=False) as conn:
                _write_finished(conn, self.database.owner, finished)
                return _claim(conn, self.database.owner, webhook, now, limit, lease)
        if limit <= 0:
            return []
        # Most looks find nothing due: a plain read then costs no transaction and no locks.
        with self.database.connection() as conn:
            due = conn.execute(
                _ANY_DUE, {"webhook": webhook, **_times(now)}, prepare=False
            ).fetchone()
        if due is None:
            return []
        with self.database.write(seen=False) as conn:
            return _claim(conn, self.database.owner, webhook, now, limit, lease)

    def next_due(self, webhook: str) -> float | None:
        """When the earliest pending delivery of a webhook can be claimed, or None: not before
        it is due, nor while a delivery of its source is in flight (until that lease ends)."""
        with self.database.connection() as conn:
            r = conn.execute(
                _NEXT_DUE, {"webhook": webhook, **_times(time.time())}, prepare=False
            ).fetchone()
        return None if r is None or r[0] is None else float(r[0])

    def finish_attempts(self, finished: Sequence[Finished]) -> None:
        """Record several attempts in one transaction."""
        if finished:
            with self.database.write(seen=False) as conn:
                _write_finished(conn, self.database.owner, finished)


def _claim(
    conn: psycopg.Connection[Any],
    owner: str,
    webhook: str,
    now: float,
    limit: int,
    lease: float,
) -> list[Delivery]:
    if limit <= 0:
        return []
    params = {"webhook": webhook, "scan": limit * 4, "limit": limit, **_times(now)}
    ids = [r[0] for r in conn.execute(_LOCKED_DUE, params, prepare=False).fetchall()]
    if not ids:
        return []
    rows = conn.execute(
        _LEASE, {"until": now + lease, "ids": ids, "owner": owner, **_times(now)}, prepare=False
    ).fetchall()
    return [
        Delivery(did, eid, webhook, source, attempts, bytes(body))
        for did, eid, source, attempts, body in sorted(rows)
    ]


def _write_finished(
    conn: psycopg.Connection[Any], owner: str, finished: Sequence[Finished]
) -> None:
    # Column arrays, one statement each: one round trip however many attempts. Planned at each
    # use (prepare=False), as every statement here that takes arrays or scans the queue: a
    # prepared statement's generic plan is made once, from the estimates of the moment, and on
    # a young queue (never analyzed yet) it kept sequential scans of tables grown since.
    conn.execute(
        "INSERT INTO attempts (delivery_id, at, status, error, duration) "
        "SELECT delivery_id, at, status, error, duration FROM unnest(%s::bigint[], "
        "%s::float8[], %s::int[], %s::text[], %s::float8[]) WITH ORDINALITY "
        "AS a(delivery_id, at, status, error, duration, n) ORDER BY n",
        [
            [f.delivery_id for f in finished],
            [float(f.at) for f in finished],
            [f.http_status for f in finished],
            [f.error for f in finished],
            [float(f.duration) for f in finished],
        ],
        prepare=False,
    )
    ordered = sorted(finished, key=lambda f: f.delivery_id)
    if len({f.delivery_id for f in ordered}) == len(ordered):
        _update_finished(conn, owner, ordered)
    else:  # one statement updates a row once: a delivery finished twice, one per attempt
        for f in ordered:
            _update_finished(conn, owner, [f])


def _update_finished(
    conn: psycopg.Connection[Any], owner: str, ordered: Sequence[Finished]
) -> None:
    ids = [f.delivery_id for f in ordered]
    if len(ids) > 1:
        # The rows locked in id order, as one UPDATE per row did: two transactions finishing
        # the same deliveries (an instance thought dead, `bridge discard`) cannot deadlock.
        conn.execute(
            "SELECT 1 FROM deliveries WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            (ids,),
            prepare=False,
        )
    # A delivery discarded (`bridge discard`) while this attempt was in flight stays dead,
    # with the reason it was discarded, unless the attempt delivered it.
    kept = "d.status = 'dead' AND f.status <> 'delivered'"
    mine = "(d.lease_owner IS NULL OR d.lease_owner = %(owner)s)"
    conn.execute(
        f"UPDATE deliveries d SET status = CASE WHEN {kept} THEN d.status ELSE f.status END, "
        "attempts = d.attempts + 1, "
        # Another instance's lease, taken while this one was thought dead, stays: its attempt
        # is still out, and the source's next delivery waits for it.
        f"lease_until = CASE WHEN {mine} THEN NULL ELSE d.lease_until END, "
        f"lease_owner = CASE WHEN {mine} THEN NULL ELSE d.lease_owner END, "
        "next_attempt_at = coalesce(f.next, d.next_attempt_at), last_status = f.http, "
        f"last_error = CASE WHEN {kept} THEN d.last_error ELSE f.error END, "
        "updated_at = f.at "
        "FROM unnest(%(ids)s::bigint[], %(status)s::text[], %(next)s::float8[], "
        "%(http)s::int[], %(error)s::text[], %(at)s::float8[]) "
        "AS f(id, status, next, http, error, at) WHERE d.id = f.id",
        {
            "ids": ids,
            "status": [str(f.status) for f in ordered],
            "next": [
                None if f.next_attempt_at is None else float(f.next_attempt_at) for f in ordered
            ],
            "http": [f.http_status for f in ordered],
            "error": [f.error for f in ordered],
            "at": [float(f.at) for f in ordered],
            "owner": owner,
        },
        prepare=False,
    )
