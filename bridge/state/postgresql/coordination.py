"""Who polls what on PostgreSQL: the registry of live instances, and poll leases on sources.

Any number of daemons share one database. Each registers a row in `instances` and keeps its
heartbeat fresh from a thread of its own (every HEARTBEAT_INTERVAL); one silent for
INSTANCE_TIMEOUT counts as dead. A poll lease is three columns of the source's row (owner,
token, until), as on SQLite; it is free when released, expired, or held by a registered
instance that is dead, so a killed instance's sources move on well before their leases end.
An owner that never registered (a `bridge once`) holds its leases until they expire.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence

from bridge.errors import StateError
from bridge.state.base import HEARTBEAT_INTERVAL, INSTANCE_TIMEOUT
from bridge.state.postgresql.connection import Database

# A dead instance's row is kept this long (seconds), so that its leases stay judged by it
# until they have surely ended; then the next instance to register removes it.
FORGET_AFTER = 86400.0

_HOST = socket.gethostname()


def new_instance_id() -> str:
    """A lease owner's name: this host and process, and a random part (pids are reused)."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"


_GRANT = """
WITH free AS MATERIALIZED (
    SELECT s.name FROM sources s
    WHERE s.name = ANY(%(names)s)
      AND (s.lease_until IS NULL OR s.lease_until < %(now)s
           OR EXISTS (SELECT 1 FROM instances i WHERE i.id = s.lease_owner
                      AND i.heartbeat_at < %(dead_before)s))
    ORDER BY s.name
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE sources s SET lease_owner = %(owner)s, lease_token = s.lease_token + 1,
    lease_until = %(until)s
FROM free WHERE s.name = free.name
RETURNING s.name, s.lease_token
"""
# SKIP LOCKED: a row another instance is leasing (or committing) right now is not ours to take.
# A row changed since this statement's snapshot is re-read before it is locked (PostgreSQL's
# re-check of a locked row's WHERE), so a lease granted a moment ago is seen and refused.


class PostgresCoordination:
    """bridge.state.base.Coordination over a PostgreSQL database: many daemons, one registry."""

    def __init__(self, database: Database, instance_id: str):
        self.database = database
        self.instance_id = instance_id
        self._leased = False  # whether this instance ever took a lease (close releases them)
        self._registered = False
        self._beating: threading.Event | None = None
        self._beater: threading.Thread | None = None

    # --- the instance registry -----------------------------------------------------------

    def register(self, now: float) -> None:
        """Record this instance (id, host, pid) as live since `now`, and forget instances
        dead for a day."""
        with self.database.write() as conn:
            conn.execute("DELETE FROM instances WHERE heartbeat_at < %s", (now - FORGET_AFTER,))
            conn.execute(
                "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (self.instance_id, _HOST, os.getpid(), now, now),
            )
        self._registered = True

    def heartbeat(self, now: float) -> None:
        """Mark this instance alive at `now` (registering it again if its row was removed)."""
        with self.database.write() as conn:
            found = conn.execute(
                "UPDATE instances SET heartbeat_at = greatest(heartbeat_at, %s) WHERE id = %s",
                (now, self.instance_id),
            ).rowcount
        if not found:
            self.register(now)

    def hold_daemon(self) -> None:
        """Register this `bridge run` and keep its heartbeat going; several may run at once."""
        self.register(time.time())
        self._beating = threading.Event()
        self._beater = threading.Thread(
            target=self._beat, args=(self._beating,), name="bridge-heartbeat", daemon=True
        )
        self._beater.start()

    def _beat(self, stop: threading.Event) -> None:
        # A missed beat (the database away for a moment) is no failure: the next one counts.
        while not stop.wait(HEARTBEAT_INTERVAL):
            try:
                self.heartbeat(time.time())
            except StateError:
                pass

    def release_daemon(self) -> None:
        """Stop the heartbeat and leave the registry (a no-op when not held)."""
        if self._beating is not None and self._beater is not None:
            self._beating.set()
            self._beater.join()
            self._beating = self._beater = None
        if self._registered:
            with self.database.write() as conn:
                conn.execute("DELETE FROM instances WHERE id = %s", (self.instance_id,))
            self._registered = False

    def daemon_running(self) -> bool:
        """Whether another live instance (a `bridge run` with a fresh heartbeat) uses the
        database."""
        with self.database.connection() as conn:
            row = conn.execute(
                "SELECT 1 FROM instances WHERE id <> %s AND heartbeat_at >= %s LIMIT 1",
                (self.instance_id, time.time() - INSTANCE_TIMEOUT),
            ).fetchone()
        return row is not None

    # --- poll leases -----------------------------------------------------------------------

    def lease_polls(self, names: Sequence[str], now: float, until: float) -> dict[str, int]:
        """Lease the sources no live lease holds; returns name -> token of those granted."""
        if not names:
            return {}
        self._leased = True
        wanted = sorted(set(names))  # rows are created and locked in one order: no deadlocks
        with self.database.write() as conn:
            # A source never polled gets its row now, to hold the lease.
            conn.execute(
                "INSERT INTO sources (name) SELECT unnest(%s::text[]) ON CONFLICT (name) "
                "DO NOTHING",
                (wanted,),
            )
            rows = conn.execute(
                _GRANT,
                {
                    "names": wanted,
                    "now": now,
                    "dead_before": now - INSTANCE_TIMEOUT,
                    "owner": self.instance_id,
                    "until": until,
                },
            ).fetchall()
        return {name: int(token) for name, token in rows}

    def release_polls(self, leases: Mapping[str, int]) -> None:
        """Release leases of polls that will not run (dropped at shutdown)."""
        if not leases:
            return
        with self.database.write() as conn:
            conn.execute(
                "UPDATE sources s SET lease_until = NULL "
                "FROM unnest(%s::text[], %s::bigint[]) AS l(name, token) "
                "WHERE s.name = l.name AND s.lease_owner = %s AND s.lease_token = l.token",
                (list(leases), list(leases.values()), self.instance_id),
            )

    def release_all(self) -> None:
        """Release every lease this instance still holds (its state is closing)."""
        if not self._leased:
            return  # a command that only read: it writes nothing
        with self.database.write() as conn:
            conn.execute(
                "UPDATE sources SET lease_until = NULL WHERE lease_owner = %s "
                "AND lease_until IS NOT NULL",
                (self.instance_id,),
            )
