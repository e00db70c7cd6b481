"""The storage seam: every read and write of state goes through the Protocols of base.py.

`open_state(location)` picks the backend from the config's `state:`; nothing outside this
package knows which one it got.
"""

from __future__ import annotations

from pathlib import Path

from bridge.errors import StateError
from bridge.state.base import Admin, Coordination, Outbox, Snapshots, State, Touched

__all__ = [
    "Admin",
    "Coordination",
    "Outbox",
    "Snapshots",
    "State",
    "Touched",
    "open_scratch_state",
    "open_state",
    "state_exists",
]


def state_exists(location: str) -> bool:
    """Whether there is a state at `location` already (commands that only read make none)."""
    return Path(location).exists()


def open_state(location: str, *, create: bool = True, busy_timeout: float = 5.0) -> State:
    """Open the state at `location` (a SQLite file's path), creating it if `create`.

    Without `create`, a missing state is a StateError that names it: the commands that only
    read or change the queue never make an empty one.
    `busy_timeout`: how long a write waits for another process's (seconds).
    """
    if not create and not state_exists(location):
        raise StateError(f"{location}: no state file yet (run `bridge once` or `bridge run`)")
    from bridge.state.sqlite import SqliteState

    return SqliteState(location, busy_timeout=busy_timeout)


def open_scratch_state() -> State:
    """A state that vanishes when closed: a dry run's, on a setup that has none yet."""
    from bridge.state.sqlite import MEMORY, SqliteState

    return SqliteState(MEMORY)
