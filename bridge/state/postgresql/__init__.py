"""The PostgreSQL backend: one database shared by any number of instances.

`PostgresState` composes the parts, one per Protocol of bridge/state/base.py, over one pool of
connections (psycopg 3, psycopg_pool).
"""

from __future__ import annotations

from bridge.errors import StateError
from bridge.state.postgresql.admin import PostgresAdmin
from bridge.state.postgresql.connection import Database
from bridge.state.postgresql.coordination import PostgresCoordination, new_instance_id
from bridge.state.postgresql.listen import DeliveryListener, Wake
from bridge.state.postgresql.outbox import PostgresOutbox
from bridge.state.postgresql.snapshots import PostgresSnapshots
from bridge.state.postgresql.transfer import PostgresTransfer


class PostgresState:
    """bridge.state.base.State over a PostgreSQL database (a `postgresql://` URL)."""

    def __init__(self, url: str, *, busy_timeout: float = 5.0):
        self.location = url
        self.threaded = True  # a pool: any thread takes a connection of its own
        instance_id = new_instance_id()
        self.database = Database(url, instance_id, busy_timeout=busy_timeout)
        self.snapshots = PostgresSnapshots(self.database, instance_id)
        self.outbox = PostgresOutbox(self.database)
        self.admin = PostgresAdmin(self.database)
        self.coordination = PostgresCoordination(self.database, instance_id)
        self.snapshots.held_here = self.coordination.holds
        self.coordination.granted = self.snapshots.cache.granted
        self.transfer = PostgresTransfer(self.database)  # bridge copy-state
        self.listener: DeliveryListener | None = None  # watch_deliveries()

    def writable(self) -> bool:
        """Whether the server takes a write now (its own connection, short timeouts)."""
        return self.database.writable()

    def problem(self) -> str | None:
        """The last write failed and none has succeeded since (no round trip: the daemon asks
        every few seconds). A database dropped under it shows as exactly that."""
        return self.database.write_error

    def watch_deliveries(self, wake: Wake) -> None:
        """Call `wake(webhooks)` (from a thread of its own) whenever any instance or command
        commits new pending deliveries, until close(): LISTEN/NOTIFY (listen.py)."""
        if self.listener is not None:
            self.listener.close()
        self.listener = DeliveryListener(self.database, wake)

    def close(self) -> None:
        """Stop listening, release this instance's poll leases, leave the registry, close the
        pool."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        try:
            self.coordination.release_daemon()
            self.coordination.release_all()
        except StateError:  # the server is away: the leases expire, the heartbeat goes stale
            pass
        finally:
            self.database.close()


__all__ = ["PostgresState"]
