"""How long the daemon's event loop is held by the state: SQLite beside PostgreSQL.

Issue 16: "the event loop never blocks on a database round trip for a whole poll's worth of
time". A `bridge run` (in process) polls N unchanged sources at nginx every few seconds while
a probe task asks the loop for a 5 ms sleep again and again: how late each wake-up comes is how
long something held the loop. The engine's big calls to the state (the lease of a wake-up's
sources, the batched write of unchanged polls) are timed on their own, beside the wall time of a
poll (its HTTP request and assessment): on SQLite they run on the loop, on PostgreSQL in a
worker thread (State.threaded).

    python benchmarks/loop_stall.py [--sources 2000] [--every 10] [--seconds 40]

Writes nothing but benchmarks/work/; prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Nginx, bridge_config, doc_url, ensure_nginx, fresh, make_docs
from bridge.config import load_config
from bridge.service.daemon import Daemon

SERVER = "postgresql://postgres@127.0.0.1:5432"
PROBE = 0.005


def timed(calls: list[float], func: Callable[..., Any]) -> Callable[..., Any]:
    """`func`, recording the wall time of each call in `calls`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - start)

    return wrapper


async def measure(config_path: Path, warmup: float, seconds: float) -> dict[str, list[float]]:
    daemon = Daemon(load_config(config_path))
    found: dict[str, list[float]] = {"stall": [], "lease": [], "flush": [], "poll": []}
    run = asyncio.create_task(daemon.run())
    while daemon.engine is None:
        await asyncio.sleep(0.05)
    engine = daemon.engine
    # The state calls themselves, on the loop (SQLite) or in a worker thread (PostgreSQL).
    engine._grant = timed(found["lease"], engine._grant)  # type: ignore[method-assign]
    engine._write_batch = timed(found["flush"], engine._write_batch)  # type: ignore[method-assign]
    poll = engine.poll

    async def timed_poll(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await poll(*args, **kwargs)
        finally:
            found["poll"].append(time.perf_counter() - start)

    engine.poll = timed_poll  # type: ignore[method-assign]
    await asyncio.sleep(warmup)
    for values in found.values():
        values.clear()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        before = loop.time()
        await asyncio.sleep(PROBE)
        found["stall"].append(loop.time() - before - PROBE)
    daemon.request_stop()
    await run
    return found


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<28} (none)"
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name:<28} n={len(ms):<6} median {statistics.median(ms):7.2f} ms  "
        f"p99 {p99:7.2f} ms  max {ms[-1]:7.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--every", type=int, default=10, help="seconds between polls")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured window")
    args = parser.parse_args()
    work = fresh("loop-stall")
    make_docs(args.sources)
    nginx = Nginx(ensure_nginx()).start()
    database = f"bridge_bench_stall_{int(time.time())}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}".encode())
    try:
        urls = [doc_url(nginx, i) for i in range(args.sources)]
        states = {"sqlite": str(work / "state.db"), "postgresql": f"{SERVER}/{database}"}
        for name, state in states.items():
            path = bridge_config(
                work / f"{name}.yaml", state, urls, '"-"', per_host=16, every=f"{args.every}s"
            )
            # First round: the baseline polls (every source's first poll writes its items).
            found = asyncio.run(measure(path, warmup=args.every * 1.5, seconds=args.seconds))
            print(f"--- {name}: {args.sources} sources every {args.every} s")
            print(row("event loop stall (probe)", found["stall"]))
            print(row("lease (a wake-up's sources)", found["lease"]))
            print(row("flush (unchanged polls)", found["flush"]))
            print(row("poll (wall time)", found["poll"]))
    finally:
        nginx.stop()
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)".encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
