"""The PostgreSQL state: connecting (a psycopg_pool pool), keeping the schema current, and write
transactions that tell the other instances something changed.

Connections are in autocommit; every transaction here is an explicit write(). Each write also
bumps this state's row of `writes`, so that generation() (the sum of the other writers' rows)
changes exactly when another state committed: one row per writer, so no two instances ever
contend for it.

A server that restarts or goes away is survived. The pool reconnects in its own threads,
backing off; a connection the server ended is found before it is used (an idle connection has
nothing to read until the server speaks); and while the server is away a caller does not wait
for the pool: each read or write fails at once with a StateError (the daemon's event loop
makes them), and `write_error` says so until a write succeeds again.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from bridge.errors import StateError
from bridge.state import redact_location
from bridge.state.postgresql.schema import prepare, stored_version

# Seconds to wait for a server before a command gives up (a one-line error, exit 1).
CONNECT_TIMEOUT = 5
# Seconds a caller waits for a connection while the server is away: long enough for the pool
# to hand over one it is making to a server that is back, short enough not to hold the daemon's
# event loop for each poll and claim that fails meanwhile.
OUTAGE_WAIT = 0.2
# How long one of the pool's attempts to connect again goes on (backing off 1 s, 2 s, ...)
# before it gives up and the next caller starts another: short, so that tries stay about 2 s
# apart and the daemon is connected again within seconds of the server's return.
RECONNECT_WINDOW = 5.0
# A server gone without a word (a network cut) is found by TCP keepalives within about 20 s,
# not the system's two hours, and a statement waiting for it then fails. The URL's own
# settings of these win.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


def one_line(exc: BaseException, secret: str | None) -> str:
    """A driver's error as one line, with the password taken out should it appear."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(secret, "***") if secret else text


class Database:
    """A pool of connections to one PostgreSQL database, its schema kept current."""

    def __init__(self, url: str, owner: str, *, busy_timeout: float = 5.0):
        """Connect to `url` (creating or migrating the schema if needed) as writer `owner`.

        `busy_timeout`: how long a statement waits for a lock another instance holds, and how
        long a caller waits for a free connection (seconds).
        """
        self.url = url
        self.display = redact_location(url)
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:  # not a URL libpq can read: say so, without its text
            raise StateError(f"{self.display}: not a usable PostgreSQL URL") from None
        self._secret = _text(params.get("password"))
        # The URL's own options (a search_path, say) are kept; ours come after them.
        self._options = _text(params.get("options")) or ""
        self.owner = owner
        self.write_error: str | None = None  # the last write's failure, until one succeeds
        # Whether the server was lost (a connection it ended, none to be had) and no connection
        # has been handed out since: callers then fail at once instead of waiting.
        self._lost = False
        self._wait = max(busy_timeout, 1.0)
        self._kwargs: dict[str, Any] = {
            **{key: value for key, value in KEEPALIVES.items() if key not in params},
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "options": f"{self._options} -c lock_timeout={int(busy_timeout * 1000)}".strip(),
        }
        # The first connection is made here, not by the pool's threads: its failure (no server,
        # a bad password, no database) is the error the user sees, at once.
        try:
            first = psycopg.connect(url, **self._kwargs)
        except psycopg.Error as exc:
            raise self.error("cannot connect", exc) from None
        with first:
            try:
                prepare(first, self.display)
            except psycopg.Error as exc:
                raise self.error("cannot set up the schema", exc) from None
        self._bump = sql.SQL(
            "BEGIN; INSERT INTO writes (owner, n, at) VALUES ({}, 1, extract(epoch FROM now())) "
            "ON CONFLICT (owner) DO UPDATE SET n = writes.n + 1, at = excluded.at"
        ).format(sql.Literal(owner))
        self.pool = ConnectionPool(
            url,
            kwargs=self._kwargs,
            min_size=1,
            max_size=4,
            timeout=self._wait,
            reconnect_timeout=RECONNECT_WINDOW,
            open=False,
            name="bridge-state",
        )
        self.pool.open(wait=False)

    def error(self, doing: str, exc: BaseException) -> StateError:
        """A StateError naming the database (password removed) and what failed, in one line."""
        return StateError(f"{self.display}: {doing}: {one_line(exc, self._secret)}")

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool, for reads (autocommit: each statement its own snapshot)."""
        conn = self._getconn()
        try:
            yield conn
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._lost = True  # the server went away mid-statement
            raise self.error("cannot read the state", exc) from None
        finally:
            self.pool.putconn(conn)

    def _getconn(self) -> psycopg.Connection[Any]:
        # Each connection the server ended (a restart ends them all) is given back, for the pool
        # to replace, until a sound one comes: at most one per connection the pool holds.
        for _ in range(self.pool.max_size + 1):
            try:
                conn = self.pool.getconn(timeout=OUTAGE_WAIT if self._lost else self._wait)
            except PoolTimeout as exc:
                if self._lost:
                    raise StateError(
                        f"{self.display}: no connection to the database (the server went "
                        "away; connecting again)"
                    ) from None
                raise self.error("no connection to the database", exc) from None
            if _sound(conn):
                self._lost = False
                return conn
            self._lost = True
            self.pool.putconn(conn)
        raise StateError(f"{self.display}: no connection to the database (the server went away)")

    @contextlib.contextmanager
    def write(self, *, seen: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction; on any failure nothing of it is written.

        `seen`: counted in generation(), so that other states drop what they cached. False for
        a write no other state has cached (a daemon's polls of the shards it holds).
        """
        try:
            with self.connection() as conn:
                try:
                    conn.execute(self._bump if seen else b"BEGIN")
                    yield conn
                    conn.execute("COMMIT")
                except psycopg.Error as exc:
                    _rollback(conn)
                    if conn.broken or conn.closed:
                        self._lost = True  # the server went away mid-transaction
                    raise self.error("cannot write the state", exc) from None
                except BaseException:
                    _rollback(conn)
                    raise
        except StateError as exc:
            self.write_error = str(exc)
            raise
        self.write_error = None

    def generation(self) -> int:
        """How many write transactions the other writers have committed: one statement."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(n), 0) FROM writes WHERE owner <> %s", (self.owner,)
            ).fetchone()
        return int(row[0]) if row else 0

    def writable(self) -> bool:
        """Whether a write transaction can be made right now (for /healthz).

        On a connection of its own, with short timeouts: a server that is gone or stuck must not
        hold /healthz (or a pool connection the daemon needs). A stuck statement waits 1 s; a
        server that does not answer at all, 2 s (libpq's shortest connect timeout).
        """
        try:
            with psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=1,
                options=f"{self._options} -c statement_timeout=1000 -c lock_timeout=1000",
            ) as conn:
                # A write that is rolled back: it proves the server takes writes (not a read-only
                # standby) without changing anything the instances would notice.
                conn.execute("BEGIN")
                conn.execute("SELECT txid_current()")
                conn.execute("ROLLBACK")
            return True
        except psycopg.Error:
            return False

    def close(self) -> None:
        """Close the pool and its connections."""
        self.pool.close()


def schema_exists(url: str) -> bool:
    """Whether the database at `url` holds bridge's schema; StateError if it cannot be reached."""
    try:
        secret = _text(psycopg.conninfo.conninfo_to_dict(url).get("password"))
    except psycopg.Error:
        raise StateError(f"{redact_location(url)}: not a usable PostgreSQL URL") from None
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            return stored_version(conn) > 0
    except psycopg.Error as exc:
        raise StateError(
            f"{redact_location(url)}: cannot connect: {one_line(exc, secret)}"
        ) from None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _sound(conn: psycopg.Connection[Any]) -> bool:
    """Whether a connection taken from the pool still reaches its server. An idle connection
    has nothing to read unless the server spoke on its own: it does when it ends the session
    (a shutdown, a restart, a terminated backend), or for a notice. Only then is it asked, with
    an empty statement; a sound idle one costs one poll() of its socket, not a round trip."""
    if conn.closed or conn.broken:
        return False
    idle = select.poll()
    idle.register(conn.fileno(), select.POLLIN)
    if not idle.poll(0):
        return True
    try:
        conn.execute("")
    except psycopg.Error:
        return False
    return True


def _rollback(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:  # the connection is broken: the pool discards it
        pass
