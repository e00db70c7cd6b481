"""The hand-over between the scheduler's lanes and the polls they run: a poll done with its
host lets its lane's runner go (let_go) while the poll itself still has its state's part to do.

On PostgreSQL a changed poll's reads and commit take longer than its request; lanes that waited
for them kept the host idle and bounded a daemon's changes per second by the commit's latency,
not by its work. The scheduler sets, in each runner task, what letting go does there.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

# In a lane runner's task: the call that gives its place in the lane to a new runner.
leave: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "leave", default=None
)


def let_go() -> None:
    """The poll running in this task is done with its host: its lane may start the next one.
    Outside a lane (`bridge once`, a poll asked for) it does nothing."""
    done = leave.get()
    if done is not None:
        leave.set(None)
        done()
