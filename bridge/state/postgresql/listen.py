"""New deliveries heard at once across instances: PostgreSQL's LISTEN/NOTIFY.

A write transaction that queues pending deliveries (a poll's commit, a replay) also sends a
NOTIFY naming their webhooks (notify_deliveries); the server hands it to every listener when,
and only if, the transaction commits. A DeliveryListener owns one connection of its own (a
LISTEN belongs to its session: a pool's connection is shared, and replaced at will), listens
from a daemon thread, and calls `wake(webhooks)` for each notification.

Hearing is best effort. While the listener is cut off (the server restarted, the network
down) notifications are lost, so after each (re)connection it calls wake(None): look at every
webhook. The delivery workers also look on their own at least once a second
(bridge/delivery/worker.py), which covers a connection that died without a word.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from bridge.state.postgresql.connection import CONNECT_TIMEOUT, Database

log = logging.getLogger("bridge.state.postgresql")

# What a wake returns is not used (a lambda that hands it to an event loop returns a Handle).
Wake = Callable[[set[str] | None], object]

# One channel per schema: states kept in several schemas of one database (search_path) do not
# wake each other. A hash keeps the name a plain identifier under 63 bytes whatever the schema.
_CHANNEL = "'bridge_deliveries_' || left(md5(coalesce(current_schema(), '')), 16)"

# A payload must be shorter than 8000 bytes; longer lists are sent as "" (any webhook).
MAX_PAYLOAD = 7999

# How often the listening thread looks up from its wait to see whether it should stop, should
# close() fail to end the wait at once (it shuts the connection's socket down under it).
STOP_CHECK = 2.0

# Seconds between attempts to connect again, doubling from the first to the last: the workers'
# own looks cover the gap, so a server that is down is not hammered.
RETRY_FIRST = 0.5
RETRY_LAST = 10.0


def notify_deliveries(conn: psycopg.Connection[Any], webhooks: Iterable[str]) -> None:
    """Inside a write transaction that queued deliveries to `webhooks`: tell every listener at
    its commit (nothing is sent if it rolls back)."""
    names = sorted(set(webhooks))
    if not names:
        return
    payload = " ".join(names)  # webhook names have no spaces (config: [A-Za-z0-9_.-]+)
    if len(payload.encode()) > MAX_PAYLOAD:
        payload = ""
    conn.execute(f"SELECT pg_notify({_CHANNEL}, %s)".encode(), (payload,))


def webhooks_of(payload: str) -> set[str] | None:
    """The webhooks a notification names; None: any webhook."""
    names = set(payload.split())
    return names or None


class DeliveryListener:
    """LISTENs for new deliveries on a connection of its own, from a daemon thread, until
    close(); calls `wake` (in that thread) for each notification, and wake(None) each time it
    (re)connects."""

    def __init__(self, database: Database, wake: Wake):
        self.database = database
        self.wake = wake
        self._stop = threading.Event()
        self._lost = False  # whether the connection failed since the last LISTEN (said once)
        self._retry = RETRY_FIRST  # the wait before the next attempt to connect
        # While the thread waits for notifications: its own duplicate of the connection's
        # socket, which close() shuts down to end the wait (under _waking, so never once the
        # thread has let the duplicate go).
        self._waiting: socket.socket | None = None
        self._waking = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bridge-listen", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening and close the connection (waits for the thread a moment at most)."""
        self._stop.set()
        with self._waking:
            if self._waiting is not None:
                # The waiting thread sees its connection end and, stopped, returns quietly.
                try:
                    self._waiting.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the server: the wait ends on its own
        # A connection being made may take its whole timeout: the thread, a daemon, then
        # finishes on its own and calls nothing more.
        self._thread.join(STOP_CHECK + CONNECT_TIMEOUT + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    self._listen(conn)
            except psycopg.Error as exc:
                if not self._lost and not self._stop.is_set():
                    problem = self.database.error("not listening for new deliveries", exc)
                    log.warning("%s (webhooks are still looked at every second)", problem)
                self._lost = True
            if self._stop.wait(self._retry):
                return
            self._retry = min(self._retry * 2, RETRY_LAST)

    def _connect(self) -> psycopg.Connection[Any]:
        # The URL as given (its options, a search_path, kept): the channel depends on it.
        # TCP keepalives: the connection only ever reads, so a network cut without a word from
        # the server would leave it waiting for hours; this way it notices within about 20 s.
        return psycopg.connect(
            self.database.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=3,
            keepalives_count=3,
        )

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(f"SELECT {_CHANNEL}".encode()).fetchone()
        assert row is not None
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(row[0])))
        if self._lost:
            log.info("%s: listening for new deliveries again", self.database.display)
        self._lost = False
        self._retry = RETRY_FIRST
        # Whatever was committed before now was not heard (not listening yet, or cut off).
        self._call(None)
        waiting = socket.socket(fileno=os.dup(conn.pgconn.socket))
        with self._waking:
            self._waiting = waiting
        # poll(), not select(): a daemon may hold more than select()'s 1,024 descriptors.
        poller = select.poll()
        poller.register(waiting, select.POLLIN)
        try:
            while not self._stop.is_set():
                # Asleep in poll() until the server sends something: psycopg's own wait
                # (conn.notifies(timeout=...)) looks up every 0.1 s, which was most of an idle
                # daemon's CPU. A server that goes away (or close()) makes the socket readable
                # (or hung up), and reading it then raises an OperationalError.
                readable = poller.poll(STOP_CHECK * 1000)
                if readable and not self._stop.is_set():
                    for note in conn.notifies(timeout=0):  # what has arrived, no more waiting
                        self._call(webhooks_of(note.payload))
        finally:
            with self._waking:
                self._waiting = None
            waiting.close()  # the duplicate only: the connection is closed by its owner

    def _call(self, names: set[str] | None) -> None:
        if self._stop.is_set():
            return
        try:
            self.wake(names)
        except Exception as exc:  # the listener outlives a failing callback: it is best effort
            log.error("waking the delivery workers failed: %s", exc)
