"""What-if for RESULTS.md: `bridge once` delivering from a forked child while it polls.

    python benchmarks/whatif/deliver_beside.py [--rounds 3] [--sources 5000]

Not how `bridge once` works: measured to see how far both cores would take pass 2. It sets up
pass 2 (documents whose one item changes each round), then alternates two variants of `once`,
each a fresh process: `seq` polls everything, then delivers; `fork` loads the config, forks a
child that delivers whatever is due every 20 ms, and polls in the parent. Prints wall seconds,
both processes' CPU, and the deliveries nginx counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (  # noqa: E402
    WORK,
    Nginx,
    bridge_config,
    change_docs,
    child_env,
    count_lines,
    doc_url,
    ensure_nginx,
    fresh,
    make_docs,
)


def once(config_path: str, mode: str) -> None:
    """One `once`-like run in this process; prints its figures."""
    started, cpu = time.perf_counter(), time.process_time()
    from bridge.config import load_config
    from bridge.engine import Engine
    from bridge.http import HttpClient
    from bridge.store import Store

    config = load_config(config_path, os.environ)
    done = Path(config_path).with_suffix(".polled")
    done.unlink(missing_ok=True)

    async def run(poll: bool, deliver: bool) -> None:
        store = Store(config.state)
        try:
            async with HttpClient(per_host=config.per_host) as http:
                engine = Engine(config, store, http)
                if poll:
                    await engine.poll_many([s.name for s in config.sources])
                while deliver:
                    finished = done.exists() or poll  # read before the last look
                    await engine.deliver_due()
                    if finished:
                        break
                    await asyncio.sleep(0.02)
        finally:
            store.close()

    child_cpu = 0.0
    if mode == "fork":
        pid = os.fork()
        if pid == 0:
            asyncio.run(run(poll=False, deliver=True))
            os._exit(0)
        asyncio.run(run(poll=True, deliver=False))
        done.touch()
        _, _, usage = os.wait4(pid, 0)
        child_cpu = usage.ru_utime + usage.ru_stime
    else:
        asyncio.run(run(poll=True, deliver=True))
    wall = time.perf_counter() - started
    own = time.process_time() - cpu
    print(f"{mode}: wall {wall:.2f} s, CPU {own:.2f} s + child {child_cpu:.2f} s")


def main() -> None:
    """Set pass 2 up and alternate the two variants."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sources", type=int, default=5000)
    ap.add_argument("--run", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        once(*args.run)
        return
    d = fresh("deliver-beside")
    nginx = Nginx(ensure_nginx()).start()
    try:
        make_docs(args.sources)
        urls = [doc_url(nginx, i) for i in range(args.sources)]
        cfg = bridge_config(d / "bridge.yaml", "state.db", urls, nginx.url("/hook"), per_host=10)
        env = child_env()
        baseline = [sys.executable, "-m", "bridge", "once", "-q", "-c", str(cfg)]
        subprocess.run(baseline, check=True, capture_output=True, env=env)
        for r in range(args.rounds * 2):
            if r % 2 == 0:  # every round changes one item of every document
                change_docs(args.sources, 2)
            else:
                make_docs(args.sources)
            mode = ("seq", "fork")[r % 2]
            _, offset = count_lines(WORK / "hook.log")
            cmd = [sys.executable, __file__, "--run", str(cfg), mode]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            delivered, _ = count_lines(WORK / "hook.log", offset, b" 204")
            print(f"{out.stdout.strip()}; {delivered} delivered", flush=True)
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()
