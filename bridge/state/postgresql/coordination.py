"""Who polls what on PostgreSQL: the registry of live instances, shards, and poll leases.

Any number of daemons share one database. Each registers a row in `instances` and keeps its
heartbeat fresh from a thread of its own (every HEARTBEAT_INTERVAL); one silent for
INSTANCE_TIMEOUT counts as dead.

Which daemon schedules which source: the sources are split into SHARDS shards (shard_of), and
each daemon holds a fair share of the rows of `shards` (owner, token, until), renewed once per
beat by share(); a shard not renewed for INSTANCE_TIMEOUT is free to the others. A daemon's
scheduler holds only its own shards' sources, in memory, so polling costs no round trip to
find out whose turn it is (docs/ARCHITECTURE.md has the arithmetic).

A poll lease is three columns of the source's row (owner, token, until), as on SQLite, and
fences every poll's commit; it is free when released, expired, or held by a registered
instance that is dead, so a killed instance's sources move on well before their leases end.
An owner that never registered (a `bridge once`) holds its leases until they expire. A daemon
is granted a lease only on a source of a shard it holds.

Every write here is unseen by generation() (Database.write(seen=False)): heartbeats, shards and
leases change nothing of the source rows the other instances cache (the lease columns are not
part of a SourceRow), and counting them made every instance re-read every row once a second.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from bridge.errors import StateError
from bridge.state.base import HEARTBEAT_INTERVAL, INSTANCE_TIMEOUT, SHARDS, Share, shard_of
from bridge.state.postgresql.connection import Database

# A dead instance's row is kept this long (seconds), so that its leases stay judged by it
# until they have surely ended; then the next instance to register removes it.
FORGET_AFTER = 86400.0

_HOST = socket.gethostname()


def new_instance_id() -> str:
    """A lease owner's name: this host and process, and a random part (pids are reused)."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def _grant(wanted: str, allowed: str) -> str:
    """The statement that leases the `wanted` sources (a FROM item `w` with their names) whose
    lease is free and that `allowed` (a condition on `s` and `w`) lets this owner poll."""
    return f"""
WITH w AS ({wanted}),
free AS MATERIALIZED (
    SELECT s.name FROM sources s JOIN w ON w.name = s.name
    WHERE (s.lease_until IS NULL OR s.lease_until < %(now)s
           OR EXISTS (SELECT 1 FROM instances i WHERE i.id = s.lease_owner
                      AND i.heartbeat_at < %(dead_before)s))
      AND {allowed}
    ORDER BY s.name
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE sources s SET lease_owner = %(owner)s, lease_token = s.lease_token + 1,
    lease_until = %(until)s
FROM free WHERE s.name = free.name
RETURNING s.name, s.lease_token
"""


# A daemon: only the sources of its own shards, unless `anywhere` (a poll asked for, `once`).
_GRANT = _grant(
    "SELECT * FROM unnest(%(names)s::text[], %(shards)s::int[]) AS u(name, shard)",
    """(%(anywhere)s OR EXISTS (SELECT 1 FROM shards h WHERE h.shard = w.shard
                                 AND h.owner = %(owner)s AND h.until >= %(now)s))""",
)
# A stray: polled last here (its lease's owner is kept after the commit), or by nobody lately.
_GRANT_STRAYS = _grant(
    "SELECT * FROM unnest(%(names)s::text[], %(after)s::float8[]) AS u(name, after)",
    "(s.lease_owner = %(owner)s OR s.last_poll_at IS NULL OR s.last_poll_at < %(now)s - w.after)",
)
# SKIP LOCKED: a row another instance is leasing (or committing) right now is not ours to take.
# A row changed since this statement's snapshot is re-read before it is locked (PostgreSQL's
# re-check of a locked row's WHERE), so a lease granted a moment ago is seen and refused.


class PostgresCoordination:
    """bridge.state.base.Coordination over a PostgreSQL database: many daemons, one registry."""

    def __init__(self, database: Database, instance_id: str):
        self.database = database
        self.instance_id = instance_id
        self._leased = False  # whether this instance ever took a lease (close releases them)
        self._sharing = False  # whether this instance takes part in share()
        self._shards: dict[int, int] = {}  # the shards held: shard -> token
        self._held: frozenset[int] = frozenset()  # the same, for holds() from other threads
        self._registered = False
        # Told every lease granted, name -> token (set by PostgresState: the item cache of
        # its snapshots, which a lease's token vouches for).
        self.granted: Callable[[Mapping[str, int]], None] = lambda tokens: None
        self._beating: threading.Event | None = None
        self._beater: threading.Thread | None = None

    # --- the instance registry -----------------------------------------------------------

    def register(self, now: float) -> None:
        """Record this instance (id, host, pid) as live since `now`, and forget instances
        dead for a day."""
        with self.database.write(seen=False) as conn:
            conn.execute("DELETE FROM instances WHERE heartbeat_at < %s", (now - FORGET_AFTER,))
            conn.execute(
                "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (self.instance_id, _HOST, os.getpid(), now, now),
            )
        self._registered = True

    def heartbeat(self, now: float) -> None:
        """Mark this instance alive at `now` (registering it again if its row was removed),
        and keep the shards it holds: those still its own and not lapsed.

        The shards are renewed here, in the heartbeat's thread, as well as by share() on the
        event loop's beat: a loop saturated by a burst of polls (an instance that started
        alone, took every shard and found every source due) beat late, its shards lapsed,
        and the others took them while it still had their polls queued. A process paused or
        cut off renews nothing, so its shards still lapse.
        """
        with self.database.write(seen=False) as conn:
            found = conn.execute(
                "UPDATE instances SET heartbeat_at = greatest(heartbeat_at, %s) WHERE id = %s",
                (now, self.instance_id),
            ).rowcount
            if self._sharing:
                conn.execute(
                    "UPDATE shards SET until = greatest(until, %s) WHERE owner = %s "
                    "AND until >= %s",
                    (now + INSTANCE_TIMEOUT, self.instance_id, now),
                )
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
        """Stop the heartbeat, give back the shards and leave the registry (a no-op when not
        held)."""
        if self._beating is not None and self._beater is not None:
            self._beating.set()
            self._beater.join()
            self._beating = self._beater = None
        if self._shards:
            self.give_back(list(self._shards))
        if self._registered:
            with self.database.write(seen=False) as conn:
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

    # --- shards ----------------------------------------------------------------------------

    def share(self, now: float, sources: str) -> Share:
        """Renew the shards held here, and take free ones up to this instance's fair share."""
        self._sharing = True
        until = now + INSTANCE_TIMEOUT
        with self.database.write(seen=False) as conn:
            conn.execute(
                "UPDATE instances SET sources = %s WHERE id = %s", (sources, self.instance_id)
            )
            instances = conn.execute(
                "SELECT id, sources FROM instances WHERE heartbeat_at >= %s OR id = %s ORDER BY id",
                (now - INSTANCE_TIMEOUT, self.instance_id),
            ).fetchall()
            live = [row[0] for row in instances]
            # One that has not said yet (it is starting) is not counted as differing.
            agreed = all(row[1] in (None, sources) for row in instances)
            rank = live.index(self.instance_id)
            fair = SHARDS // len(live) + (rank < SHARDS % len(live))
            # Renewed only while still ours: one that lapsed and was taken is lost here.
            kept = conn.execute(
                "UPDATE shards h SET until = %s FROM unnest(%s::int[], %s::bigint[]) AS m(shard, "
                "token) WHERE h.shard = m.shard AND h.owner = %s AND h.token = m.token "
                "RETURNING h.shard, h.token",
                (until, list(self._shards), list(self._shards.values()), self.instance_id),
            ).fetchall()
            held = {int(shard): int(token) for shard, token in kept}
            if len(held) < fair:
                taken = conn.execute(
                    "WITH free AS MATERIALIZED (SELECT shard FROM shards WHERE owner IS NULL "
                    "OR until IS NULL OR until < %s ORDER BY shard LIMIT %s "
                    "FOR UPDATE SKIP LOCKED) "
                    "UPDATE shards h SET owner = %s, token = h.token + 1, until = %s "
                    "FROM free WHERE h.shard = free.shard RETURNING h.shard, h.token",
                    (now, fair - len(held), self.instance_id, until),
                ).fetchall()
                held.update((int(shard), int(token)) for shard, token in taken)
        self._shards = held
        self._held = frozenset(held)
        # The highest shards go back first: those a joining instance takes from the low end
        # are the free ones, so two instances rebalancing at once do not trade the same ones.
        surplus = frozenset(sorted(held)[fair:]) if len(held) > fair else frozenset()
        return Share(frozenset(held), surplus, agreed)

    def holds(self, names: Iterable[str]) -> bool:
        """Whether this daemon holds the shards of all these sources (as of its last beat)."""
        held = self._held
        return self._sharing and all(shard_of(name) in held for name in names)

    def give_back(self, shards: Iterable[int]) -> None:
        """Release shards held here: free to the others at their next beat."""
        mine = [s for s in shards if s in self._shards]
        if not mine:
            return
        with self.database.write(seen=False) as conn:
            conn.execute(
                "UPDATE shards h SET owner = NULL, until = NULL FROM unnest(%s::int[], "
                "%s::bigint[]) AS m(shard, token) WHERE h.shard = m.shard AND h.owner = %s "
                "AND h.token = m.token",
                (mine, [self._shards[s] for s in mine], self.instance_id),
            )
        for shard in mine:
            del self._shards[shard]
        self._held = frozenset(self._shards)

    # --- poll leases -----------------------------------------------------------------------

    def lease_polls(
        self, names: Sequence[str], now: float, until: float, *, anywhere: bool = False
    ) -> dict[str, int]:
        """Lease the sources no live lease holds (and, for a daemon taking part in share(),
        of the shards it holds unless `anywhere`); returns name -> token of those granted."""
        wanted = sorted(set(names))
        return self._lease(
            _GRANT,
            wanted,
            {"shards": [shard_of(n) for n in wanted], "anywhere": anywhere or not self._sharing},
            now,
            until,
        )

    def _lease(
        self, grant: str, wanted: list[str], params: dict[str, object], now: float, until: float
    ) -> dict[str, int]:
        # `wanted` sorted: rows are created and locked in one order, so no deadlocks.
        if not wanted:
            return {}
        self._leased = True
        with self.database.write(seen=False) as conn:
            # A source never polled gets its row now, to hold the lease. Only names without
            # a row reach the INSERT: one that conflicts waits for the row's lock, which a
            # group commit holds (17-40 ms per wake-up, measured), though the grant below
            # skips locked rows anyway.
            conn.execute(
                "INSERT INTO sources (name) SELECT n FROM unnest(%s::text[]) AS u(n) "
                "WHERE NOT EXISTS (SELECT 1 FROM sources s WHERE s.name = u.n) "
                "ON CONFLICT (name) DO NOTHING",
                (wanted,),
            )
            rows = conn.execute(
                grant,
                {
                    **params,
                    "names": wanted,
                    "now": now,
                    "dead_before": now - INSTANCE_TIMEOUT,
                    "owner": self.instance_id,
                    "until": until,
                },
            ).fetchall()
        granted = {name: int(token) for name, token in rows}
        self.granted(granted)
        return granted

    def lease_strays(self, strays: Mapping[str, float], now: float, until: float) -> dict[str, int]:
        """Lease sources whose shard's holder lacks them: those polled last here or by nobody
        for their seconds."""
        wanted = sorted(strays)
        return self._lease(
            _GRANT_STRAYS, wanted, {"after": [strays[n] for n in wanted]}, now, until
        )

    def release_polls(self, leases: Mapping[str, int]) -> None:
        """Release leases of polls that will not run (dropped at shutdown)."""
        if not leases:
            return
        with self.database.write(seen=False) as conn:
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
        with self.database.write(seen=False) as conn:
            conn.execute(
                "UPDATE sources SET lease_until = NULL WHERE lease_owner = %s "
                "AND lease_until IS NOT NULL",
                (self.instance_id,),
            )
