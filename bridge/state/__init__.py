"""The storage seam: every read and write of state goes through the Protocols of base.py.

`open_state(location)` picks the backend from the config's `state:` (a `postgresql://` or
`postgres://` URL: PostgreSQL; anything else: a SQLite file's path); nothing outside this
package knows which one it got.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from bridge.errors import StateError
from bridge.state.base import Admin, Coordination, Outbox, Snapshots, State, Touched, off_loop

__all__ = [
    "Admin",
    "Coordination",
    "Outbox",
    "Snapshots",
    "State",
    "Touched",
    "off_loop",
    "open_scratch_state",
    "open_state",
    "redact_location",
    "state_exists",
]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str) -> bool:
    """Whether `location` names a PostgreSQL database rather than a SQLite file."""
    return location.lower().startswith(_URL_SCHEMES)


def redact_location(location: str) -> str:
    """`location` fit to print: a URL's password (in its user part or its query) as ***."""
    if not is_url(location):
        return location
    try:
        parts = urlsplit(location)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = parts.query
        pairs = parse_qsl(query)
        if any(k == "password" for k, _ in pairs):
            query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
        if netloc == parts.netloc and query == parts.query:
            return location
        # Not urlunsplit: it drops the `//` of an empty host (postgresql:///db, a local socket).
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:  # not a URL after all (e.g. a bad port): show nothing of it that hides
        return location.split("://", 1)[0] + "://***"


def state_exists(location: str) -> bool:
    """Whether there is a state at `location` already (commands that only read make none):
    a file, or a database with bridge's schema (StateError if the server cannot be reached)."""
    if is_url(location):
        from bridge.state.postgresql.connection import schema_exists

        return schema_exists(location)
    return Path(location).exists()


def open_state(location: str, *, create: bool = True, busy_timeout: float = 5.0) -> State:
    """Open the state at `location` (a SQLite file's path, or a PostgreSQL URL), creating it
    if `create`.

    Without `create`, a missing state is a StateError that names it: the commands that only
    read or change the queue never make an empty one.
    `busy_timeout`: how long a write waits for another process's (seconds).
    """
    if not create and not state_exists(location):
        what = "no bridge state in this database" if is_url(location) else "no state file"
        raise StateError(
            f"{redact_location(location)}: {what} yet (run `bridge once` or `bridge run`)"
        )
    if is_url(location):
        from bridge.state.postgresql import PostgresState

        return PostgresState(location, busy_timeout=busy_timeout)
    from bridge.state.sqlite import SqliteState

    return SqliteState(location, busy_timeout=busy_timeout)


def open_scratch_state() -> State:
    """A state that vanishes when closed: a dry run's, on a setup that has none yet."""
    from bridge.state.sqlite import MEMORY, SqliteState

    return SqliteState(MEMORY)
