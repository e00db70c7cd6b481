"""The SQLite backend: one state file (WAL), its schema, its queries, and the single-daemon lock.

`SqliteState` composes the parts, one per Protocol of bridge/state/base.py, over one connection.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.errors import StateError
from bridge.state.sqlite.admin import SqliteAdmin
from bridge.state.sqlite.connection import MEMORY, Database
from bridge.state.sqlite.coordination import SqliteCoordination, new_instance_id
from bridge.state.sqlite.grants import Grants
from bridge.state.sqlite.outbox import SqliteOutbox
from bridge.state.sqlite.snapshots import SqliteSnapshots
from bridge.state.sqlite.transfer import SqliteTransfer


class SqliteState:
    """bridge.state.base.State over one SQLite file (or MEMORY, a throwaway)."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0):
        self.location = path
        self.threaded = False  # one connection, of the thread that opened it
        self.database = Database(path, busy_timeout=busy_timeout)
        instance_id = new_instance_id()
        grants = Grants(instance_id)  # the poll leases: taken by coordination, ended by commits
        self.snapshots = SqliteSnapshots(self.database, grants)
        self.outbox = SqliteOutbox(self.database)
        self.admin = SqliteAdmin(self.database)
        self.coordination = SqliteCoordination(self.database, instance_id, grants)
        self.transfer = SqliteTransfer(self.database)  # bridge copy-state

    def writable(self) -> bool:
        """Whether the file takes a write now (its own connection; waits at most 1 s)."""
        return self.database.writable()

    def problem(self) -> str | None:
        """The file removed or replaced under the connection, or the last write failed."""
        return self.database.problem()

    def watch_deliveries(self, wake: Callable[[set[str] | None], object]) -> None:
        """Nothing to watch: one daemon per state file, which wakes its own workers as it
        commits; what a command queues (`bridge replay`) the workers find within a second."""

    def close(self) -> None:
        """Release this instance's poll leases and close the connection; the daemon lock goes
        with the process, or with release_daemon()."""
        try:
            self.coordination.release_all()
        except StateError:  # the file is failing: the leases end with this process anyway
            pass
        finally:
            self.database.close()


__all__ = ["MEMORY", "SqliteState"]
