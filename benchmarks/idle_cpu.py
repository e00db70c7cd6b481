"""What an idle `bridge run` costs, CPU a second, on SQLite and PostgreSQL: old code beside new.

    python benchmarks/idle_cpu.py --old a835f57^        # about 8 minutes
    python benchmarks/idle_cpu.py --old REV --rounds 3 --seconds 60

An instance's fixed costs (its heartbeat, its share of the shards, the delivery workers' looks
once a second, the listener) are paid whatever it polls, so they are what the CPU per poll grows
by when instances are added (postgresql.py's scale pass). Each measurement is one daemon over 20
one-item documents polled every 60 s (a poll every 3 s), after a 15 s start: the CPU of the
daemon and, on PostgreSQL, of the server's processes for its database, per second of the window.
The two codes alternate (old, new, old, new ...) in the same minutes; the old one runs from a
clean `git archive REV bridge` put first on PYTHONPATH. The section "Idle daemons" of
benchmarks/RESULTS.md is written between its own markers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import pg_fleet  # noqa: E402
import pg_origin  # noqa: E402
from harness import HERE, ROOT, ensure_nginx, fresh, log, machine  # noqa: E402
from pg_server import SERVER, ServerCpu  # noqa: E402
from postgresql import Bench, small_docs  # noqa: E402
from report import replace_section  # noqa: E402

START = "<!-- idle daemons: start -->"
END = "<!-- idle daemons: end -->"
WORK = harness.WORK / "idle"
SOURCES = 20
WARMUP = 15.0


def archive(rev: str) -> Path:
    """A clean copy of `bridge/` at `rev` (made once, reused)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = WORK / f"code-{sha}"
    if not (tree / "bridge").exists():
        data = subprocess.run(
            ["git", "archive", sha, "bridge"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=BytesIO(data)) as tar:
            tar.extractall(tree, filter="data")
    return tree


def measure(
    code: Path | None,
    state: str,
    urls: list[str],
    hook: str,
    cpu: ServerCpu,
    tag: str,
    seconds: float,
) -> dict[str, float]:
    """One idle daemon of `code` (None: the work tree) on `state`: CPU per second."""
    pg_fleet.CODE = code
    folder = fresh(tag)
    cfg = pg_fleet.config(folder / "bridge.yaml", state, urls, hook, every=60.0, jitter="0s")
    pg_fleet.once(cfg, "base", f"{tag}-first")
    [daemon] = pg_fleet.start(cfg, 1, tag)
    try:
        time.sleep(WARMUP)
        bridge0, server0, t0 = daemon.cpu(), cpu.ours(), time.monotonic()
        time.sleep(seconds)
        bridge1, server1, t1 = daemon.cpu(), cpu.ours(), time.monotonic()
    finally:
        pg_fleet.stop_all([daemon])
    span = t1 - t0
    return {
        "bridge": (bridge1 - bridge0) / span * 1000,
        "server": (server1 - server0) / span * 1000,
    }


Runs = dict[tuple[str, str], list[dict[str, float]]]  # (state, code) -> each round's figures


def section(facts: dict[str, str], cmd: str, old: str, runs: Runs, seconds: float) -> str:
    """The RESULTS.md section, markers included."""
    lines = [
        START,
        "## Idle daemons: CPU a second, SQLite and PostgreSQL (benchmarks/idle_cpu.py)",
        "",
        f"Command: `{cmd}`. Old code: {old}; new code: the work tree. Machine: {facts['cpu']}, "
        f"{facts['cores']} cores; Python {facts['python']}; {facts['os']}; {facts['date']}; "
        f"load average {facts['load']}.",
        "",
        f"One `bridge run` over {SOURCES} one-item documents every 60 s, measured for "
        f"{seconds:g} s after a {WARMUP:g} s start; medians of the rounds, in ms of CPU per "
        "second of the window (bridge: the daemon's rusage; server: PostgreSQL's processes "
        "for its database).",
        "",
        "| state | code | bridge ms/s | server ms/s | rounds (bridge) |",
        "|---|---|---:|---:|---|",
    ]
    for (state, code), got in runs.items():
        bridge = statistics.median(r["bridge"] for r in got)
        server = statistics.median(r["server"] for r in got)
        rounds = " / ".join(f"{r['bridge']:.2f}" for r in got)
        shown = "-" if state == "sqlite" else f"{server:.2f}"
        lines.append(f"| {state} | {code} | {bridge:.2f} | {shown} | {rounds} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    """Parse flags, measure both codes on both states, write the section of RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--old", required=True, help="the old code's revision")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    harness.WORK = WORK
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "docs.log").unlink(missing_ok=True)
    facts = machine()
    old_tree = archive(args.old)
    codes: dict[str, Path | None] = {"old": old_tree, "new": None}
    origin = pg_origin.Origin(ensure_nginx()).start()
    runs: Runs = {}
    try:
        path = small_docs(SOURCES)
        urls = [origin.url(path(i)) for i in range(SOURCES)]
        hook = origin.url("/hook")
        with ServerCpu(set(), SERVER, period=1.0) as cpu:
            bench = Bench(origin, cpu, SERVER)  # its databases' backends count as the server's
            try:
                for n in range(args.rounds):
                    for kind in ("sqlite", "postgresql"):
                        for label, code in codes.items():
                            tag = f"idle-{kind}-{label}-{n}"
                            if kind == "sqlite":
                                state = str(fresh(f"{tag}-state") / "state.db")
                            else:
                                state = bench.database()  # a new one each: the same start
                            got = measure(code, state, urls, hook, cpu, tag, args.seconds)
                            log(f"round {n + 1}: {kind} {label}: {got['bridge']:.2f} ms/s "
                                f"bridge, {got['server']:.2f} ms/s server")  # fmt: skip
                            runs.setdefault((kind, label), []).append(got)
            finally:
                bench.drop_all()
    finally:
        origin.stop()
    cmd = " ".join(["python benchmarks/idle_cpu.py", *sys.argv[1:]])
    text = section(
        facts, cmd, f"{args.old} ({old_tree.name.removeprefix('code-')})", runs, args.seconds
    )
    doc = args.output.read_text() if args.output.exists() else ""
    replaced = replace_section(doc, START, END, text)
    appended = doc.rstrip() + "\n\n" + text + "\n"
    args.output.write_text(replaced if replaced is not None else appended)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
