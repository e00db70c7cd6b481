"""The backends the contract suite runs over: one place to add one (a PostgreSQL one: one entry).

`state` runs a test over every backend; `two_states` opens one location twice (two processes on
one state, as far as leases and claims can tell) and runs only over the backends that can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.state import State, open_scratch_state, open_state


@dataclass(frozen=True)
class Backend:
    """How to open a state of one backend for a test."""

    name: str
    # Opens a state in the test's tmp_path; called twice with the same path, the same state.
    open: Callable[[Path], State]
    # Whether a second open() is a second connection (process) on the same state.
    shared: bool


def _sqlite_file(tmp_path: Path) -> State:
    return open_state(str(tmp_path / "state.db"))


def _sqlite_memory(tmp_path: Path) -> State:
    return open_scratch_state()


BACKENDS = [
    Backend("sqlite-file", _sqlite_file, shared=True),
    Backend("sqlite-memory", _sqlite_memory, shared=False),
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    opened = request.param.open(tmp_path)
    yield opened
    opened.close()


@pytest.fixture(params=[b for b in BACKENDS if b.shared], ids=lambda b: b.name)
def two_states(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[State, State]]:
    first = request.param.open(tmp_path)
    second = request.param.open(tmp_path)
    yield first, second
    second.close()
    first.close()
