"""The floor: a bare aiohttp loop doing the same conditional GETs as `bridge`, nothing else.

usage: bare_client.py URLS_FILE ETAGS_FILE CONCURRENCY [EVERY DURATION [SETTLE]]
       bare_client.py URLS_FILE ETAGS_FILE CONCURRENCY --deliver HOOK_URL SECRET

Reads one URL a line, sends If-None-Match with the ETag remembered from the last run, reads
each body, and writes the ETags back only when one changed. With --deliver, each document that
changed (a 200) is also POSTed to HOOK_URL, signed as Standard Webhooks signs it: the floor of
pass 2, two requests per change and nothing else. With EVERY and DURATION it polls
each URL every EVERY seconds (spread evenly) for DURATION seconds, as `bridge run` would, and
prints its requests and CPU seconds counted after SETTLE seconds (by default as run.py once
settled `bridge run`), with its peak RSS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import resource
import sys
import time
from pathlib import Path

import aiohttp
import orjson


async def main(
    urls: list[str],
    etags: dict[str, str],
    concurrency: int,
    hook: tuple[str, str] | None = None,
) -> dict[int, int]:
    """One pass over urls with `concurrency` connections; returns the count of each status.

    With `hook` (URL, whsec_ secret), every 200's body is also POSTed there, signed.
    """
    counts = {200: 0, 304: 0}
    todo = iter(urls)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency)
    key = base64.b64decode(hook[1].removeprefix("whsec_")) if hook else b""
    ids = itertools.count()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def deliver(body: bytes) -> None:
            assert hook is not None
            msg_id, stamp = f"msg_{next(ids)}", str(int(time.time()))
            mac = hmac.digest(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": stamp,
                "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            }
            async with session.post(hook[0], data=body, headers=headers) as resp:
                await resp.read()
                counts[resp.status] = counts.get(resp.status, 0) + 1

        async def worker() -> None:
            for url in todo:
                tag = etags.get(url)
                headers = {"If-None-Match": tag} if tag else None
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    counts[resp.status] = counts.get(resp.status, 0) + 1
                    if resp.status == 200:
                        etags[url] = resp.headers.get("ETag", "")
                if hook is not None and resp.status == 200:
                    await deliver(body)

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
            headers = {"If-None-Match": tag} if tag else None
            async with session.get(url, headers=headers, timeout=timeout) as r:
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
            await asyncio.sleep(1.0)  # in bursts, as bridge.polling.scheduler.SLACK runs polls
        assert cpu0 is not None and t0 is not None
        return count, time.process_time() - cpu0, loop.time() - t0


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[4] != "--deliver":
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
    hook = (sys.argv[5], sys.argv[6]) if sys.argv[4:5] == ["--deliver"] else None
    counts = asyncio.run(main(url_list, known, n, hook))
    if counts[200]:
        etags_file.write_bytes(orjson.dumps(known))
    print(", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
