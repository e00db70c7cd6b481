"""Where `bridge run`'s steady-state CPU goes: the same polls through each layer, side by side.

    python benchmarks/steady_layers.py                       # 10,000 sources every 60 s, 2 rounds
    python benchmarks/steady_layers.py --layers bare,daemon,daemon@/path/to/other/checkout

Every layer is its own process, and all of them run at the same time, so the machine's drift
from one minute to the next (20-40% here) hits them alike. Each polls every source once per
interval against the same nginx documents (every answer a 304) and reports its CPU
(`time.process_time()`) per poll over whole intervals after a first one. Layers, each adding
one part to the one before:

    bare       benchmarks/bare_client.py's steady loop: aiohttp GETs, no bridge code
    scheduler  bridge's Scheduler (per-host lanes) starting the same bare aiohttp GETs
    client     + bridge's HttpClient.fetch_pages (gates, rate-limit checks, Response)
    source     + the http source's fetch
    engine     + Engine.poll (cached rows, assessment, unchanged polls written every 10 s)
    daemon     the whole Daemon, as `bridge run` runs it (metrics, housekeeping, workers)

`LAYER@PATH` runs a layer with bridge imported from another checkout (PYTHONPATH=PATH), to
compare two versions of the code in the same minutes. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    ROOT,
    Nginx,
    bridge_config,
    child_env,
    doc_url,
    ensure_nginx,
    fresh,
    log,
    make_docs,
)

LAYERS = ("bare", "scheduler", "client", "source", "engine", "daemon")


class GcClock:
    """CPU the cyclic garbage collector takes while on (gc.callbacks around each collection)."""

    def __init__(self) -> None:
        self.on = False
        self.seconds = 0.0
        self.collections = [0, 0, 0]  # by generation
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        elif self.on:
            self.seconds += time.process_time() - self._started
            self.collections[info["generation"]] += 1


GC = GcClock()


class Window:
    """CPU and a poll count between two moments of the event loop's clock."""

    def __init__(self, count: Any, start: float, length: float) -> None:
        loop = asyncio.get_running_loop()
        self.count = count  # () -> polls so far
        self.cpu = self.polls = 0.0
        loop.call_later(start, self._open)
        loop.call_later(start + length, self._close)

    def _open(self) -> None:
        self.cpu, self.polls = -time.process_time(), -self.count()

    def _close(self) -> None:
        self.cpu += time.process_time()
        self.polls += self.count()


async def run_layer(
    layer: str, config_path: str, urls_file: str, every: float, warm: float, length: float
) -> dict[str, Any]:
    """Poll at one layer for warm + length seconds; CPU per poll over the last `length`."""
    got: dict[str, Any] = await _run_layer(layer, config_path, urls_file, every, warm, length)
    got["gc"] = GC.seconds
    got["collections"] = GC.collections
    return got


async def _run_layer(
    layer: str, config_path: str, urls_file: str, every: float, warm: float, length: float
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    loop.call_later(warm, setattr, GC, "on", True)
    loop.call_later(warm + length, setattr, GC, "on", False)
    if layer == "bare":
        import bare_client

        urls = Path(urls_file).read_text().split()
        etags = json.loads(Path(urls_file + ".etags").read_text())
        n, cpu, _ = await bare_client.steady(urls, etags, 10, every, warm + length, settle=warm)
        return {"polls": n, "cpu": cpu}

    from bridge.config import load_config

    config = load_config(config_path, os.environ)
    if layer == "daemon":
        from bridge.service.daemon import Daemon

        daemon = Daemon(config, env=os.environ)
        window = Window(lambda: sum(daemon.metrics.polls.values()), warm, length)
        loop.call_later(warm + length + 0.1, daemon.request_stop)
        await daemon.run()
        return {"polls": window.polls, "cpu": window.cpu}
    return await _partial(layer, config, every, warm, length)


async def _partial(
    layer: str, config: Any, every: float, warm: float, length: float
) -> dict[str, float]:
    # The layers below the daemon, put together by hand as the daemon puts them together.
    import aiohttp

    from bridge.http import HttpClient
    from bridge.polling.engine import Engine
    from bridge.polling.scheduler import Scheduler
    from bridge.state import open_state

    state = open_state(config.state)
    polls = [0]
    try:
        async with (
            HttpClient(per_host=config.per_host) as http,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=config.per_host)
            ) as session,
        ):
            engine = Engine(config, state, http)
            rows = state.snapshots.source_rows()
            sources = engine.sources
            timeout = aiohttp.ClientTimeout(total=10)

            async def bare(name: str) -> None:
                headers = {"If-None-Match": rows[name].fetch_state.etag or ""}
                url = sources[name].spec.options["url"]
                async with session.get(url, headers=headers, timeout=timeout) as resp:
                    await resp.read()

            async def client(name: str) -> None:
                url, etag = sources[name].spec.options["url"], rows[name].fetch_state.etag
                await http.fetch_pages("GET", url, etag=etag)

            async def source(name: str) -> None:
                await sources[name].fetch(http, rows[name].fetch_state)

            async def engine_poll(name: str) -> None:
                await engine.poll(name, next_poll_at=scheduler.next_run(name))

            step = {"scheduler": bare, "client": client, "source": source, "engine": engine_poll}

            async def poll(name: str) -> None:
                await step[layer](name)
                polls[0] += 1

            scheduler = Scheduler(
                poll, lane=lambda name: sources[name].host, lane_width=config.per_host
            )
            for spec in config.sources:
                scheduler.schedule(spec, rows[spec.name].last_poll_at)
            scheduler.start()
            window = Window(lambda: polls[0], warm, length)
            start = time.monotonic()
            flushing = 0.0  # CPU of the writes inside the window
            while (now := time.monotonic()) < start + warm + length + 0.1:
                await asyncio.sleep(min(start + warm + length + 0.1 - now, 10.0))
                cpu = time.process_time()
                engine.flush()  # as the daemon's housekeeping does every 10 s
                if warm < time.monotonic() - start < warm + length:
                    flushing += time.process_time() - cpu
            scheduler.shutdown()
    finally:
        state.close()
    got = {"polls": window.polls, "cpu": window.cpu}
    if layer == "engine":
        got["flush"] = flushing
    return got


def main() -> int:
    """Set up the documents and one config per layer, run the layers side by side, report."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default=",".join(LAYERS), help="comma-separated LAYER[@PATH]")
    ap.add_argument("--sources", type=int, default=10_000)
    ap.add_argument("--every", type=float, default=60.0)
    ap.add_argument("--intervals", type=int, default=2, help="measured, after a settling one")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("LAYER", "CONFIG", "URLS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    warm = args.every + 15.0  # past every source's first poll in the process
    length = args.every * args.intervals
    if args.child:
        layer, config, urls = args.child
        got = asyncio.run(run_layer(layer, config, urls, args.every, warm, length))
        print(json.dumps(got))
        return 0

    runs = [r.partition("@") for r in args.layers.split(",")]
    for layer, _, _ in runs:
        if layer not in LAYERS:
            ap.error(f"unknown layer {layer!r}: one of {', '.join(LAYERS)}")
    d = fresh("steady-layers")
    nginx = Nginx(ensure_nginx()).start()
    found: dict[str, list[float]] = collections.defaultdict(list)
    flushes: dict[str, list[float]] = collections.defaultdict(list)  # engine: the writes' share
    collecting: dict[str, list[float]] = collections.defaultdict(list)  # the GC's share
    generations: dict[str, list[list[int]]] = collections.defaultdict(list)
    try:
        make_docs(args.sources)
        urls = [doc_url(nginx, i) for i in range(args.sources)]
        (d / "urls").write_text("\n".join(urls))
        configs, envs = {}, {}
        for i, (layer, _, tree) in enumerate(runs):
            name = f"{layer}@{tree}" if tree else layer
            envs[name] = dict(child_env(), PYTHONPATH=tree or str(ROOT))
            configs[name] = bridge_config(
                d / f"layer{i}.yaml",
                f"layer{i}.db",
                urls,
                nginx.url("/hook"),
                per_host=10,
                every=f"{args.every:g}s",
            )
            # A first pass stores every ETag: from then on every answer is a 304.
            once = [sys.executable, "-m", "bridge", "--log-level", "warning", "once", "-q"]
            subprocess.run([*once, "-c", str(configs[name])], check=True, env=envs[name], cwd=d)
        with sqlite3.connect(d / "layer0.db") as db:
            etags = dict(db.execute("SELECT name, etag FROM sources"))
        known = {url: etags[spec] for url, spec in zip(urls, sorted(etags), strict=True)}
        (d / "urls.etags").write_text(json.dumps(known))
        for r in range(args.rounds):
            log(
                f"round {r + 1} of {args.rounds}: {len(configs)} layers side by side, "
                f"{warm + length:.0f} s"
            )
            procs = {
                name: subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--every",
                        str(args.every),
                        "--intervals",
                        str(args.intervals),
                        "--child",
                        name.partition("@")[0],
                        str(configs[name]),
                        str(d / "urls"),
                    ],
                    env=envs[name],
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=d,
                )
                for name in configs
            }
            for name, proc in procs.items():
                out, _ = proc.communicate()
                got = json.loads(out.strip().splitlines()[-1])
                found[name].append(got["cpu"] / max(got["polls"], 1) * 1e6)
                collecting[name].append(got["gc"] / max(got["polls"], 1) * 1e6)
                generations[name].append(got["collections"])
                if "flush" in got:
                    flushes[name].append(got["flush"] / max(got["polls"], 1) * 1e6)
    finally:
        nginx.stop()
    report(found, args.every, args.sources)
    for name, samples in collecting.items():
        counts = "; ".join("/".join(map(str, n)) for n in generations[name])
        print(
            f"{name}: the cyclic GC, {statistics.median(samples):.1f} us per poll of it"
            f" (collections of generations 0/1/2 in each round: {counts})"
        )
    for name, samples in flushes.items():
        print(
            f"{name}: writing unchanged polls every 10 s, "
            f"{statistics.median(samples):.1f} us per poll of it"
        )
    return 0


def report(found: dict[str, list[float]], every: float, sources: int) -> None:
    """One line per layer: median us per poll, share of a core, and the ratio to `bare`."""
    base = found.get("bare")
    print(f"{'layer':34s} {'us/poll':>8s} {'share':>6s}  rounds            / bare")
    for name, samples in found.items():
        us = statistics.median(samples)
        share = us * 1e-6 * sources / every * 100
        ratios = [a / b for a, b in zip(samples, base, strict=True)] if base else []
        rounds = ", ".join(f"{x:.0f}" for x in samples)
        ratio = f"{statistics.median(ratios):.2f}" if ratios else ""
        print(f"{name:34s} {us:8.0f} {share:5.1f}%  {rounds:16s}  {ratio}")


if __name__ == "__main__":
    sys.exit(main())
