"""What-ifs for RESULTS.md: `bridge once` of pass 2 over both cores, in two ways.

    python benchmarks/whatif/both_cores.py [--modes seq,fork,shard] [--rounds 3] [--sources 5000]

Not how `bridge once` works: measured to see how far both cores would take pass 2. It sets up
pass 2 (documents whose one item changes each run), then alternates the variants of `once`
named in --modes, each a fresh process:
- `seq` polls everything, then delivers (what `bridge once` does);
- `fork` loads the config, forks a child that delivers whatever is due every 20 ms, and polls in
  the parent;
- `shard` loads the config, then forks two children; each polls every second source, then
  delivers what is due. To stay as polite as one process, each child gets half the per-host
  limit and half the webhook's concurrency. The children share the queue, and its leases keep
  them from sending one delivery twice; nothing keeps one source's deliveries in order across
  them, which a real design would have to add.
Prints wall seconds, the CPU of the process and of its children, and the deliveries nginx
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402

SHARDS = 2


def once(config_path: str, mode: str) -> None:
    """One `once`-like run in this process (and its children); prints its figures."""
    started, cpu = time.perf_counter(), time.process_time()
    from bridge.config import load_config
    from bridge.delivery.dispatcher import Dispatcher
    from bridge.http import HttpClient
    from bridge.polling.engine import Engine
    from bridge.state import open_state

    config = load_config(config_path, os.environ)
    names = [s.name for s in config.sources]
    done = Path(config_path).with_suffix(".polled")  # `fork`: the parent's polls are committed
    done.unlink(missing_ok=True)

    async def run(
        names: list[str], per_host: int, *, deliver: bool = True, until_done: bool = False
    ) -> None:
        state = open_state(config.state)
        try:
            async with HttpClient(per_host=per_host) as http:
                engine = Engine(config, state, http)
                await engine.poll_many(names)
                while until_done and not done.exists():
                    await Dispatcher(config.webhooks, state.outbox, http).deliver_due()
                    await asyncio.sleep(0.02)
                if deliver:
                    await Dispatcher(config.webhooks, state.outbox, http).deliver_due()
        finally:
            state.close()

    children: list[int] = []
    if mode == "fork":
        pid = os.fork()
        if pid == 0:
            asyncio.run(run([], config.per_host, until_done=True))
            os._exit(0)
        children.append(pid)
        asyncio.run(run(names, config.per_host, deliver=False))
        done.touch()
    elif mode == "shard":
        hooks = {
            name: dataclasses.replace(hook, concurrency=max(1, hook.concurrency // SHARDS))
            for name, hook in config.webhooks.items()
        }
        config = dataclasses.replace(config, webhooks=hooks)
        for i in range(SHARDS):
            pid = os.fork()
            if pid == 0:
                asyncio.run(run(names[i::SHARDS], max(1, config.per_host // SHARDS)))
                os._exit(0)
            children.append(pid)
    else:
        asyncio.run(run(names, config.per_host))
    children_cpu = 0.0
    for pid in children:
        _, _, usage = os.wait4(pid, 0)
        children_cpu += usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - started
    own = time.process_time() - cpu
    print(f"{mode}: wall {wall:.2f} s, CPU {own:.2f} s + children {children_cpu:.2f} s")


def main() -> None:
    """Set pass 2 up and alternate the variants."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="seq,fork,shard", help="comma-separated: seq, fork, shard")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sources", type=int, default=5000)
    ap.add_argument("--run", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        once(*args.run)
        return
    modes = args.modes.split(",")
    d = harness.fresh("both-cores")
    nginx = harness.Nginx(harness.ensure_nginx()).start()
    try:
        harness.make_docs(args.sources)
        urls = [harness.doc_url(nginx, i) for i in range(args.sources)]
        hook = nginx.url("/hook")
        cfg = harness.bridge_config(d / "bridge.yaml", "state.db", urls, hook, per_host=10)
        env = harness.child_env()
        baseline = [sys.executable, "-m", "bridge", "once", "-q", "-c", str(cfg)]
        subprocess.run(baseline, check=True, capture_output=True, env=env)
        for r in range(args.rounds * len(modes)):
            if r % 2 == 0:  # every run changes one item of every document
                harness.change_docs(args.sources, 2)
            else:
                harness.make_docs(args.sources)
            mode = modes[r % len(modes)]
            _, offset = harness.count_lines(harness.WORK / "hook.log")
            cmd = [sys.executable, __file__, "--run", str(cfg), mode]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            delivered, _ = harness.count_lines(harness.WORK / "hook.log", offset, b" 204")
            print(f"{out.stdout.strip()}; {delivered} delivered", flush=True)
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()
