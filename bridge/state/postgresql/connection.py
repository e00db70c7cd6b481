"""The PostgreSQL state: connecting (a psycopg_pool pool), keeping the schema current, and write
transactions that tell the other instances something changed.

Connections are in autocommit; every transaction here is an explicit write(). Each write also
bumps this state's row of `writes`, so that generation() (the sum of the other writers' rows)
changes exactly when another state committed: one row per writer, so no two instances ever
contend for it.
"""

from __future__ import annotations

import contextlib
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
        self._kwargs: dict[str, Any] = {
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
            timeout=max(busy_timeout, 1.0),
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
        try:
            conn = self.pool.getconn()
        except PoolTimeout as exc:
            raise self.error("no connection to the database", exc) from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise self.error("cannot read the state", exc) from None
        finally:
            self.pool.putconn(conn)

    @contextlib.contextmanager
    def write(self) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction; on any failure nothing of it is written."""
        try:
            with self.connection() as conn:
                try:
                    conn.execute(self._bump)
                    yield conn
                    conn.execute("COMMIT")
                except psycopg.Error as exc:
                    _rollback(conn)
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


def _rollback(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:  # the connection is broken: the pool discards it
        pass
