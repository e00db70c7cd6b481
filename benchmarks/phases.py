"""CPU of each phase of one `bridge once` in one process: imports, config, polls, deliveries.

    python benchmarks/profile.py serve &             # nginx with the documents, on port 18471
    python benchmarks/phases.py path/to/bridge.yaml  # e.g. one written by profile.py

Prints `time.process_time()` and wall seconds per phase. To compare two trees, run it with
PYTHONPATH set to each in turn, interleaved, from a directory outside both.
"""

from __future__ import annotations

import time

_cpu, _wall = time.process_time(), time.perf_counter()


def mark(label: str) -> None:
    """Print the CPU and wall seconds since the last mark."""
    global _cpu, _wall
    cpu, wall = time.process_time(), time.perf_counter()
    print(f"{label:14s} cpu {cpu - _cpu:.3f}  wall {wall - _wall:.3f}", flush=True)
    _cpu, _wall = cpu, wall


import asyncio  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from bridge.config import load_config  # noqa: E402
from bridge.delivery.dispatcher import Dispatcher  # noqa: E402
from bridge.http import HttpClient  # noqa: E402
from bridge.polling.engine import Engine  # noqa: E402
from bridge.state import open_state  # noqa: E402

mark("imports")


async def once(config_path: str) -> None:
    """What `bridge once` does, with a mark after each phase."""
    config = load_config(config_path, os.environ)
    mark("load_config")
    state = open_state(config.state)
    try:
        async with HttpClient(per_host=config.per_host) as http:
            engine = Engine(config, state, http)
            await engine.poll_many([s.name for s in config.sources])
            mark("poll_many")
            await Dispatcher(config.webhooks, state.outbox, http).deliver_due()
            mark("deliver")
    finally:
        state.close()


if __name__ == "__main__":
    asyncio.run(once(sys.argv[1]))
    mark("exit")
