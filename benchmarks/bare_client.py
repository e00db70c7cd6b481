"""The floor: a bare aiohttp loop doing the same conditional GETs as `bridge`, nothing else.

usage: bare_client.py URLS_FILE ETAGS_FILE CONCURRENCY [EVERY DURATION [SETTLE]]

Reads one URL a line, sends If-None-Match with the ETag remembered from the last run, reads
each body, and writes the ETags back only when one changed. With EVERY and DURATION it polls
each URL every EVERY seconds (spread evenly) for DURATION seconds, as `bridge run` would, and
prints its requests and CPU seconds counted after SETTLE seconds (by default as run.py once
settled `bridge run`), with its peak RSS.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from pathlib import Path

import aiohttp
import orjson


async def main(urls: list[str], etags: dict[str, str], concurrency: int) -> dict[int, int]:
    """One pass over urls with `concurrency` connections; returns the count of each status."""
    counts = {200: 0, 304: 0}
    todo = iter(urls)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for url in todo:
                tag = etags.get(url)
                headers = {"If-None-Match": tag} if tag else None
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    counts[resp.status] = counts.get(resp.status, 0) + 1
                    if resp.status == 200:
                        etags[url] = resp.headers.get("ETag", "")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def steady(
    urls: list[str],
    etags: dict[str, str],
    concurrency: int,
    every: float,
    duration: float,
    settle: float | None = None,
) -> tuple[int, float, float]:
    """Poll every URL each `every` seconds for `duration`: (requests, CPU s, seconds), counted
    after a settling time, as run.py counts `bridge run`."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    loop = asyncio.get_running_loop()
    start = loop.time()
    if settle is None:
        settle = min(10.0, duration / 4)
    count = 0
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(url: str) -> None:
            nonlocal count
            tag = etags.get(url)
            async with session.get(url, headers={"If-None-Match": tag}, timeout=timeout) as r:
                await r.read()
                count += 1

        n, i = len(urls), 0
        cpu0 = t0 = None
        while (now := loop.time()) < start + duration:
            if cpu0 is None and now >= start + settle:
                cpu0, t0, count = time.process_time(), now, 0
            due = int((now - start) / every * n)  # URLs due so far, spread evenly
            while i < due:
                task = asyncio.create_task(get(urls[i % n]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(1.0)  # in bursts, as bridge.scheduler.SLACK runs polls
        assert cpu0 is not None and t0 is not None
        return count, time.process_time() - cpu0, loop.time() - t0


if __name__ == "__main__":
    if len(sys.argv) > 4:
        url_list = Path(sys.argv[1]).read_text().split()
        known = orjson.loads(Path(sys.argv[2]).read_bytes())
        every, duration = float(sys.argv[4]), float(sys.argv[5])
        settle = float(sys.argv[6]) if len(sys.argv) > 6 else None
        got = asyncio.run(steady(url_list, known, int(sys.argv[3]), every, duration, settle))
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {"requests": got[0], "cpu": got[1], "window": got[2], "hwm_mb": hwm}
        print(orjson.dumps(result).decode())
        sys.exit(0)
    urls_file, etags_file, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    url_list = urls_file.read_text().split()
    known = orjson.loads(etags_file.read_bytes()) if etags_file.exists() else {}
    counts = asyncio.run(main(url_list, known, n))
    if counts[200]:
        etags_file.write_bytes(orjson.dumps(known))
    print(", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
