"""Who polls what on one state file: the single daemon's lock, and poll leases on sources.

The leases are grants, a row for the sources leased at one wake-up (bridge/state/sqlite/
grants.py): a lease is its source and the grant's token, and a poll's commit ends it
(bridge/state/sqlite/snapshots.py).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence

from bridge.state.base import Share
from bridge.state.sqlite.connection import MEMORY, Database
from bridge.state.sqlite.grants import Grants
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
    poll leases in the poll_grants table."""

    def __init__(self, database: Database, instance_id: str, grants: Grants):
        self.database = database
        self.instance_id = instance_id
        self.grants = grants  # shared with the snapshots, whose commits end leases
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
        token = secrets.randbits(63)  # one for the whole wake-up: its grant's
        with self.database.write() as conn:
            granted = self.grants.take(conn, token, names, now, until, _gone)
        self.grants.granted(granted, token, until)
        return dict.fromkeys(granted, token)

    def lease_strays(self, strays: Mapping[str, float], now: float, until: float) -> dict[str, int]:
        """Like lease_polls: a state file has no shards, so no source is a stray."""
        return self.lease_polls(list(strays), now, until)

    def release_polls(self, leases: Mapping[str, int]) -> None:
        """Release leases of polls that will not run (dropped at shutdown)."""
        if not leases:
            return
        by_token: dict[int, list[str]] = {}
        for name, token in leases.items():
            by_token.setdefault(token, []).append(name)
        with self.database.write() as conn:
            self.grants.end(conn, by_token)
        self.grants.ended(by_token)

    def release_all(self) -> None:
        """Release every lease this instance still holds (its state is closing)."""
        if not self._leased:
            return  # a command that only read: it writes nothing
        with self.database.write() as conn:
            self.grants.end_all(conn)
