"""CPU of one unchanged poll at each layer of bridge, against bare aiohttp, in one process.

    python benchmarks/profile.py serve &                 # nginx on port 18471
    python benchmarks/profile.py steady --sources 5000   # once, to write its config and state
    python benchmarks/layers.py [benchmarks/work/profile-state/bridge.yaml] [--rounds 3]

After two passes (so every answer is a 304 and every URL is parsed), it times the same polls
through each layer in turn, 10 at a time, and prints the median CPU microseconds per poll:
bare aiohttp GETs with If-None-Match; `HttpClient.fetch_pages`; the source's `fetch`;
`Engine.poll` (with its bookkeeping and buffered writes); `Engine.poll_many`. The layers are
interleaved round by round, since this machine's speed moves from one minute to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bridge.config import load_config
from bridge.http import HttpClient
from bridge.polling.engine import Engine
from bridge.state import open_state

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


async def per_poll(items: Iterable[T], poll: Callable[[T], Awaitable[Any]], at_once: int) -> float:
    """CPU microseconds per item of `poll` over all items, `at_once` in flight."""
    queue = collections.deque(items)
    count = len(queue)

    async def worker() -> None:
        while queue:
            await poll(queue.popleft())

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(at_once)))
    return (time.process_time() - started) / count * 1e6


async def layers(config_path: Path, rounds: int) -> dict[str, list[float]]:
    """Median-ready samples of each layer's CPU per poll."""
    config = load_config(config_path, os.environ)
    names = [s.name for s in config.sources]
    found: dict[str, list[float]] = collections.defaultdict(list)
    state = open_state(config.state)
    try:
        async with HttpClient(per_host=config.per_host) as http:
            engine = Engine(config, state, http)
            for _ in range(2):  # validators stored, URLs parsed: every later answer is a 304
                await engine.poll_many(names)
            rows = state.snapshots.source_rows()
            sources = engine.sources
            targets = [(sources[n].spec.options["url"], rows[n].fetch_state.etag) for n in names]
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=config.per_host)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def bare(target: tuple[str, str | None]) -> None:
                    url, etag = target
                    headers = {"If-None-Match": etag} if etag else None
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()

                async def pages(target: tuple[str, str | None]) -> None:
                    await http.fetch_pages("GET", target[0], etag=target[1])

                async def fetch(name: str) -> None:
                    await sources[name].fetch(http, rows[name].fetch_state)

                for _ in range(rounds):
                    at_once = config.per_host
                    found["bare aiohttp GET"].append(await per_poll(targets, bare, at_once))
                    found["HttpClient.fetch_pages"].append(await per_poll(targets, pages, at_once))
                    found["Source.fetch"].append(await per_poll(names, fetch, at_once))
                    found["Engine.poll"].append(await per_poll(names, engine.poll, at_once))
                    engine.flush()
                    started = time.process_time()
                    await engine.poll_many(names)
                    found["Engine.poll_many"].append(
                        (time.process_time() - started) / len(names) * 1e6
                    )
    finally:
        state.close()
    return found


def main() -> None:
    """Print each layer's median CPU per poll."""
    ap = argparse.ArgumentParser()
    default = HERE / "work" / "profile-state" / "bridge.yaml"
    ap.add_argument("config", type=Path, nargs="?", default=default)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for layer, samples in asyncio.run(layers(args.config, args.rounds)).items():
        runs = ", ".join(f"{x:.0f}" for x in samples)
        print(f"{layer:24s} {statistics.median(samples):6.1f} us per poll  ({runs})")


if __name__ == "__main__":
    main()
