"""Both codes' `bridge run` at once, each over its own copy of nginx's documents (every answer a
304), for the counters of a steady poll: callgrind_steady.py and opcodes_steady.py.

The old code's sources are under /docs/ and the new code's under /bare/, so that nginx's logs
count each code's polls apart (`polls_since`).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import bridge_once, prepare_old  # noqa: E402
from harness import (  # noqa: E402
    WORK,
    Nginx,
    bridge_config,
    child_env,
    count_lines,
    ensure_nginx,
    fresh,
    log,
    make_docs,
)

WHERE = {"old": "docs", "new": "bare"}


def arguments(doc: str, *, settle: float, top: int) -> argparse.Namespace:
    """The options both counters take: the old revision, the load, and what is listed."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--old", default="473282f", help="the old code's revision (default 473282f)")
    ap.add_argument("--sources", type=int, default=1000)
    ap.add_argument("--every", type=float, default=15.0, help="interval, s")
    ap.add_argument("--settle", type=float, default=settle, help="s before counting starts")
    ap.add_argument("--top", type=int, default=top, help="functions listed")
    return ap.parse_args()


def commands(old: str) -> dict[str, list[str]]:
    """How to run each code: the old revision from its own worktree and venv, the new one with
    this Python (the one that has the work tree installed)."""
    return {"old": prepare_old(old), "new": [sys.executable, "-m", "bridge"]}


@contextlib.contextmanager
def daemons(
    cmds: dict[str, list[str]],
    *,
    sources: int,
    every: float,
    tag: str,
    wrap: Callable[[str], list[str]] = lambda code: [],
    env: Callable[[str], dict[str, str]] = lambda code: child_env(),
    wait: float = 60.0,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Start each code's daemon after a baseline `bridge once`, under `wrap(code)` (a command
    prefix, such as valgrind's) with `env(code)`; stopped (SIGTERM, then `wait` s) on leaving."""
    make_docs(sources)
    for name in ("docs.log", "bare.log", "hook.log"):
        (WORK / name).unlink(missing_ok=True)
    nginx = Nginx(ensure_nginx()).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for code, cmd in cmds.items():
            urls = [nginx.url(f"/{WHERE[code]}/{i}.json") for i in range(sources)]
            cfg = bridge_config(
                fresh(f"{tag}-{code}") / "bridge.yaml", f"{tag}.db", urls, nginx.url("/hook"),
                per_host=10, every=f"{every:g}s",
            )  # fmt: skip
            log(f"{code}: baseline (`bridge once`)")
            bridge_once(cfg, f"{tag}-{code}-once", cmd)
            procs[code] = subprocess.Popen(
                [*wrap(code), *cmd, "--log-level", "warning", "run", "-c", str(cfg)],
                stdout=subprocess.DEVNULL,
                stderr=(WORK / "logs" / f"{tag}-{code}-run.log").open("wb"),
                cwd=WORK,
                env=env(code),
            )
        yield procs
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(wait)
        nginx.stop()


def poll_marks() -> dict[str, int]:
    """Where each code's nginx log ends now, for `polls_since`."""
    return {code: count_lines(WORK / f"{where}.log")[1] for code, where in WHERE.items()}


def polls_since(marks: dict[str, int]) -> dict[str, int]:
    """Each code's polls since `poll_marks()` gave `marks`."""
    return {code: count_lines(WORK / f"{WHERE[code]}.log", marks[code])[0] for code in WHERE}
