"""Admin.instances over every backend: the live part of the instance registry, for `bridge
status` (a heartbeat within INSTANCE_TIMEOUT)."""

from __future__ import annotations

import os
import socket

from bridge.state.base import INSTANCE_TIMEOUT

NOW = 1_700_000_000.0


def test_instances_lists_the_live_ones_oldest_first(state) -> None:
    assert state.admin.instances(NOW) == []
    state.coordination.register(NOW)
    state.coordination.heartbeat(NOW + 4)
    [me] = state.admin.instances(NOW + 5)
    assert me == {
        "id": state.coordination.instance_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": NOW,
        "heartbeat": NOW + 4,
    }
    assert state.admin.instances(NOW + 4 + INSTANCE_TIMEOUT) == [me]  # just in time
    assert state.admin.instances(NOW + 4.5 + INSTANCE_TIMEOUT) == []  # silent too long


def test_instances_lists_every_process_on_the_state(two_states) -> None:
    first, second = two_states
    second.coordination.register(NOW + 1)
    first.coordination.register(NOW)
    ids = [i["id"] for i in first.admin.instances(NOW + 2)]
    assert ids == [first.coordination.instance_id, second.coordination.instance_id]
    assert second.admin.instances(NOW + 2) == first.admin.instances(NOW + 2)
