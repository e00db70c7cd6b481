"""Who polls what on one state file: the single daemon's lock, and poll leases on sources.

A lease is three columns of the source's row (owner, token, until). It is granted only while
no live lease holds the source, and the poll's commit is written only under the lease's token
(bridge/state/sqlite/snapshots.py), which also releases it. The owner names this process
(`host:pid:random`), so that the lease of a process that died (kill -9) is free at once, rather
than when it runs out: every process on a SQLite file runs on the file's machine.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping, Sequence

from bridge.state.sqlite.connection import MEMORY, Database, chunks
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
    poll leases in the sources table."""

    def __init__(self, database: Database, instance_id: str):
        self.database = database
        self.instance_id = instance_id
        self._lock = DaemonLock(database.path) if database.path != MEMORY else None
        self._leased = False  # whether this instance ever took a lease (close releases them)

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

    def lease_polls(self, names: Sequence[str], now: float, until: float) -> dict[str, int]:
        """Lease the sources no live lease holds; returns name -> token of those granted."""
        if not names:
            return {}
        granted: dict[str, int] = {}
        self._leased = True
        with self.database.write() as conn:
            # A source never polled gets its row now, to hold the lease.
            conn.executemany(
                "INSERT INTO sources (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                [(n,) for n in names],
            )
            held: dict[str, str] = {}
            for chunk in chunks(names):
                marks = ",".join("?" * len(chunk))
                held.update(
                    conn.execute(
                        f"SELECT name, lease_owner FROM sources WHERE name IN ({marks}) "
                        "AND lease_until >= ?",
                        (*chunk, now),
                    ).fetchall()
                )
            free = [n for n in names if n not in held or _gone(held[n])]
            conn.executemany(
                "UPDATE sources SET lease_owner = ?, lease_token = lease_token + 1, "
                "lease_until = ? WHERE name = ?",
                [(self.instance_id, until, n) for n in free],
            )
            for chunk in chunks(free):
                marks = ",".join("?" * len(chunk))
                granted.update(
                    conn.execute(
                        f"SELECT name, lease_token FROM sources WHERE name IN ({marks})", chunk
                    ).fetchall()
                )
        return granted

    def release_polls(self, leases: Mapping[str, int]) -> None:
        """Release leases of polls that will not run (dropped at shutdown)."""
        if not leases:
            return
        with self.database.write() as conn:
            conn.executemany(
                "UPDATE sources SET lease_until = NULL "
                "WHERE name = ? AND lease_owner = ? AND lease_token = ?",
                [(n, self.instance_id, t) for n, t in leases.items()],
            )

    def release_all(self) -> None:
        """Release every lease this instance still holds (its state is closing)."""
        if not self._leased:
            return  # a command that only read: it writes nothing
        with self.database.write() as conn:
            conn.execute(
                "UPDATE sources SET lease_until = NULL WHERE lease_owner = ? "
                "AND lease_until IS NOT NULL",
                (self.instance_id,),
            )
