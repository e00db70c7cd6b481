"""Pass 4 in one process: poll one 50,000-item document, unchanged and with 1% of items changed.

usage: large_poll.py CONFIG ROUNDS

Times `Engine.poll` plus the flush of its commit, as the daemon runs it. Between changed polls
it rewrites the document itself (outside the timing). Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import change_some, large_items, write_large  # noqa: E402

from bridge.config import load_config  # noqa: E402
from bridge.http import HttpClient  # noqa: E402
from bridge.polling.engine import Engine  # noqa: E402
from bridge.state import open_state  # noqa: E402


def state_bytes(path: Path) -> int:
    """The state file's size once its WAL is checkpointed into it."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.stat().st_size


async def main(config_path: str, rounds: int) -> dict[str, object]:
    """Baseline, unchanged polls, then 1%-changed polls; seconds and state growth."""
    config = load_config(config_path, os.environ)
    state = open_state(config.state)
    out: dict[str, object] = {}
    async with HttpClient(per_host=config.per_host) as http:
        engine = Engine(config, state, http)

        async def poll() -> tuple[float, str, int]:
            started = time.perf_counter()
            result = await engine.poll("big")
            engine.flush()
            return time.perf_counter() - started, result.result, len(result.events)

        seconds, result, _ = await poll()
        assert result == "new", result
        out["baseline_s"] = seconds
        out["state_after_baseline"] = state_bytes(config.state)
        unchanged = []
        for _ in range(rounds):
            seconds, result, _ = await poll()
            assert result == "unchanged", result
            unchanged.append(seconds)
        out["unchanged_s"] = unchanged
        out["unchanged_median_s"] = statistics.median(unchanged)
        before = state_bytes(config.state)
        out["state_growth_unchanged"] = before - out["state_after_baseline"]  # type: ignore[operator]
        changed, growth, events = [], [], []
        items = large_items()
        for r in range(1, rounds + 1):
            change_some(items, 0.01, r)
            out["document_bytes"] = write_large(items)
            seconds, result, n = await poll()
            assert result == "changed", result
            changed.append(seconds)
            events.append(n)
            after = state_bytes(config.state)
            growth.append(after - before)
            before = after
        out["changed_s"] = changed
        out["changed_median_s"] = statistics.median(changed)
        out["changed_events"] = events
        out["state_growth_changed"] = growth
    state.close()
    return out


if __name__ == "__main__":
    print(orjson.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))).decode())
