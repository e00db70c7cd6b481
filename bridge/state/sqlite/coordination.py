"""Who polls what on one state file: the single daemon's lock, and poll leases on sources.

A lease is a row of poll_leases (source, owner, token, until); the sources leased at one wake-up
share their token, which names the grant together with the source. It is granted only while no live
lease holds the source, and the poll's commit is written only while that row is still its own
(bridge/state/sqlite/snapshots.py); the commit deletes it. The owner names this process
(`host:pid:random`), so that the lease of a process that died (kill -9) is free at once, rather
than when it runs out: every process on a SQLite file runs on the file's machine.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence

import orjson

from bridge.state.base import Share
from bridge.state.sqlite.connection import MEMORY, Database
from bridge.state.sqlite.lock import DaemonLock, daemon_running

_HOST = socket.gethostname()


def new_instance_id() -> str:
    """A lease owner's name: this host and process, and a random part (pids are reused)."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def _gone(owner: str) -> bool:
    """Whether the process named by a lease owner has ended (on this host, as a file's are)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class SqliteCoordination:
    """bridge.state.base.Coordination over one state file: a flock for the one daemon, and
    poll leases in the poll_leases table."""

    def __init__(self, database: Database, instance_id: str):
        self.database = database
        self.instance_id = instance_id
        self._lock = DaemonLock(database.path) if database.path != MEMORY else None
        self._leased = False  # whether this instance ever took a lease (close releases them)

    def register(self, now: float) -> None:
        """Record this instance in the file's registry, live since `now`. On SQLite the
        registry only informs: whether a lease's owner is alive is asked of its pid."""
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (self.instance_id, _HOST, os.getpid(), now, now),
            )

    def heartbeat(self, now: float) -> None:
        """Mark this instance alive at `now` in the file's registry (registering it if not)."""
        with self.database.write() as conn:
            found = conn.execute(
                "UPDATE instances SET heartbeat_at = max(heartbeat_at, ?) WHERE id = ?",
                (now, self.instance_id),
            ).rowcount
        if not found:
            self.register(now)

    def hold_daemon(self) -> None:
        """Take the state file's daemon lock, or StateError naming the holder's pid."""
        if self._lock is not None:
            self._lock.acquire()

    def release_daemon(self) -> None:
        """Drop the daemon lock."""
        if self._lock is not None:
            self._lock.release()

    def daemon_running(self) -> bool:
        """Whether another process's `bridge run` holds this file's daemon lock."""
        if self._lock is None or self._lock.held:
            return False
        return daemon_running(self.database.path)

    def share(self, now: float, sources: str) -> Share | None:
        """None: one daemon per state file (its lock), and it schedules every source."""
        return None

    def give_back(self, shards: Iterable[int]) -> None:
        """Nothing to give back: a state file has no shards."""

    def lease_polls(
        self, names: Sequence[str], now: float, until: float, *, anywhere: bool = False
    ) -> dict[str, int]:
        """Lease the sources no live lease holds; returns name -> token of those granted
        (`anywhere` changes nothing: a state file's one daemon schedules every source)."""
        if not names:
            return {}
        self._leased = True
        # One token for the whole wake-up: a lease is its (source, token), and a grant is
        # counted by changes() rather than read back row by row (RETURNING cost more than the
        # rows it inserted).
        token = secrets.randbits(63)
        listed = orjson.dumps(list(names)).decode()
        with self.database.write() as conn:
            # One statement for the whole wake-up: a free or expired lease is taken, a live one
            # left alone. (`WHERE true` lets SQLite parse the upsert after a SELECT.)
            taken = conn.execute(
                "INSERT INTO poll_leases (name, owner, token, until) "
                "SELECT value, ?, ?, ? FROM json_each(?) WHERE true "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                "token = excluded.token, until = excluded.until "
                "WHERE poll_leases.until < ?",
                (self.instance_id, token, until, listed, now),
            ).rowcount
            if taken == len(names):
                return dict.fromkeys(names, token)
            # Some were refused: read who holds each of them (this grant, or a live lease, free
            # only if the process holding it is gone).
            granted: dict[str, int] = {}
            holders = conn.execute(
                "SELECT name, owner, token FROM poll_leases "
                "WHERE name IN (SELECT value FROM json_each(?))",
                (listed,),
            ).fetchall()
            for name, owner, held in holders:
                if owner == self.instance_id and held == token:
                    granted[name] = token
                elif owner != self.instance_id and _gone(owner):
                    taken = conn.execute(
                        "UPDATE poll_leases SET owner = ?, token = ?, until = ? "
                        "WHERE name = ? AND owner = ?",
                        (self.instance_id, token, until, name, owner),
                    ).rowcount
                    if taken:
                        granted[name] = token
        return granted

    def lease_strays(self, strays: Mapping[str, float], now: float, until: float) -> dict[str, int]:
        """Like lease_polls: a state file has no shards, so no source is a stray."""
        return self.lease_polls(list(strays), now, until)

    def release_polls(self, leases: Mapping[str, int]) -> None:
        """Release leases of polls that will not run (dropped at shutdown)."""
        if not leases:
            return
        with self.database.write() as conn:
            conn.executemany(
                "DELETE FROM poll_leases WHERE name = ? AND owner = ? AND token = ?",
                [(n, self.instance_id, t) for n, t in leases.items()],
            )

    def release_all(self) -> None:
        """Release every lease this instance still holds (its state is closing)."""
        if not self._leased:
            return  # a command that only read: it writes nothing
        with self.database.write() as conn:
            conn.execute("DELETE FROM poll_leases WHERE owner = ?", (self.instance_id,))
