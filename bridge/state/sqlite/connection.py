"""The SQLite state file: opening it, keeping its schema current, and write transactions.

One connection, used from one thread (the event loop's). Writes that must not interleave with
another process (a `bridge once` beside the daemon) take the write lock at once (BEGIN
IMMEDIATE), so a transaction never fails half-way for want of it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.errors import StateError
from bridge.state.sqlite.schema import SCHEMA_VERSION, migrate

if TYPE_CHECKING:
    import sqlite_utils

MEMORY = ":memory:"


class Database:
    """One connection to the state file, its schema kept current."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0):
        """Open (creating and migrating if needed) the file at `path`; MEMORY for a throwaway.

        `busy_timeout`: how long a write waits for another process's transaction (seconds).
        The daemon's transactions last milliseconds; a longer wait means something holds the
        file, and the user should hear of it.
        """
        self.path = path
        if path != MEMORY and not Path(path).parent.is_dir():
            raise StateError(f"{path}: the directory {Path(path).parent} does not exist")
        try:
            # Autocommit at the driver level: every transaction here is an explicit write().
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            self.conn = conn
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = wal")
            # WAL with synchronous=NORMAL is durable against process crashes (kill -9), which is
            # the promise; only an OS crash can lose the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot use the state file: {exc}") from exc
        # Which file the connection holds open: one removed or replaced under it keeps taking
        # writes that nobody will read again, so problem() compares it with what the path names.
        self._identity = _identity(path)
        self._write_error: str | None = None  # the last write's failure, until one succeeds

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for the commands' listings."""
        # Imported on first use: polling never needs it, and it costs `bridge once` start-up.
        import sqlite_utils

        return sqlite_utils.Database(self.conn, execute_plugins=False)

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: state file schema {version} is newer than this bridge knows"
            )
        if version < SCHEMA_VERSION:
            with self.write() as conn:
                migrate(conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so it never fails mid-way."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._failed(exc) from exc
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            conn.rollback()
            raise self._failed(exc) from exc
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.rollback()
            raise self._failed(exc) from exc
        self._write_error = None

    def _failed(self, exc: sqlite3.Error) -> StateError:
        self._write_error = str(exc)
        return StateError(f"{self.path}: cannot write the state file: {exc}")

    def problem(self) -> str | None:
        """Why this connection's writes are lost or failing, or None (see State.problem)."""
        if self.path != MEMORY:
            try:
                now = _identity(self.path)
            except OSError as exc:
                return f"state file {self.path}: {exc.strerror or exc}"
            if now is None or now != self._identity:
                return (
                    f"state file {self.path} was removed or replaced while running; restart bridge"
                )
        if self._write_error is not None:
            return f"state file {self.path}: writes failing: {self._write_error}"
        return None

    def writable(self) -> bool:
        """Whether a write transaction can start right now (for /healthz); waits at most 1 s.

        On a connection of its own, so that /healthz can ask from a thread: a state file locked
        by another process must not stall the daemon's event loop for that second.
        """
        if self.path == MEMORY:
            return True
        try:
            # mode=rw: a probe must never create the file (a removed one would come back empty).
            uri = Path(self.path).absolute().as_uri() + "?mode=rw"
            conn = sqlite3.connect(uri, timeout=1.0, isolation_level=None, uri=True)
        except sqlite3.Error:
            return False
        try:
            # Taking the write lock is the test; nothing is written, so the daemon's row cache
            # (which another connection's commit invalidates) stays valid.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap way to notice their writes."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None for MEMORY or a path that names nothing."""
    if path == MEMORY:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def chunks(seq: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """`seq` in slices of at most `size`: SQLite caps the parameters of one statement."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
