"""Old and new code side by side in one run: pass 1 (unchanged `bridge once`) and pass 3 (steady).

    /work/venv/bin/python benchmarks/compare.py                  # old = 473282f, about 4 minutes
    /work/venv/bin/python benchmarks/compare.py --old REV --p1-rounds 5 --p3-rounds 3
    /work/venv/bin/python benchmarks/compare.py --passes 3s --pyspy /tmp/spy   # both at once

Run it with the Python that has the new code (the work tree) installed. The old code is checked
out once with `git worktree add --detach benchmarks/work/old-REV REV` and installed editable into
benchmarks/work/old-REV-venv; both are reused when present. The measurements alternate between
the two interpreters (old, new, old, new ...) in the same minutes, with run.py's own functions,
and the section "Layout refactor: old and new code side by side" of benchmarks/RESULTS.md is
written between its own markers (run.py's generated results are left alone).

Pass "3s" runs the two codes' `bridge run` at the same time instead, against one nginx (one
code's sources under /docs/, the other's under /bare/, swapped each round, so that nginx's log
counts each code's polls), so a minute's drift hits both alike; `--pyspy DIR` also records each
daemon's stacks over the measured intervals (py-spy's raw format, one file per code and round).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    HERE,
    ROOT,
    WORK,
    Nginx,
    Run,
    bridge_config,
    child_env,
    count_lines,
    doc_url,
    ensure_nginx,
    file_size,
    fresh,
    log,
    machine,
    make_docs,
    proc_cpu,
)
from report import replace_section  # noqa: E402
from run import bridge_once, pass_3, statuses  # noqa: E402

START = "<!-- layout comparison: start -->"
END = "<!-- layout comparison: end -->"
TITLE = "## Layout refactor: old and new code side by side"
AFTER = "<!-- generated results: end -->"
CODES = ("old", "new")


def prepare_old(rev: str) -> list[str]:
    """The old code's worktree and editable venv (made once, then reused); its bridge command."""
    tree = WORK / f"old-{rev}"
    venv = WORK / f"old-{rev}-venv"
    python = venv / "bin" / "python"
    if not (tree / "pyproject.toml").exists():
        log(f"git worktree add --detach {tree} {rev}")
        WORK.mkdir(parents=True, exist_ok=True)
        cmd = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev]
        subprocess.run(cmd, check=True, capture_output=True)
    probe = [str(python), "-c", "import bridge, pathlib; print(pathlib.Path(bridge.__file__))"]
    # cwd=WORK, as the measured runs have it: `-c` puts the cwd first on sys.path.
    found = (
        subprocess.run(probe, capture_output=True, text=True, cwd=WORK) if python.exists() else None
    )
    if found is None or found.returncode != 0 or str(tree) not in found.stdout:
        log(f"pip install -e {tree} into {venv}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "-e", str(tree)]
        subprocess.run(pip, check=True, capture_output=True)
    return [str(python), "-m", "bridge"]


def spread(values: list[float]) -> float:
    """(max - min) / median of repeated measures; 0 for fewer than two."""
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / statistics.median(values)


def pass_1(
    nginx: Nginx, cmds: dict[str, list[str]], n: int, rounds: int, per_host: int
) -> dict[str, Any]:
    """Unchanged `bridge once` over n URLs (all 304) for each code, rounds interleaved."""
    urls = [doc_url(nginx, i) for i in range(n)]
    make_docs(n)  # before both first passes: rewriting a document changes its ETag
    cfgs = {
        code: bridge_config(
            fresh(f"cmp-p1-{code}") / "bridge.yaml",
            "p1.db",
            urls,
            nginx.url("/hook"),
            per_host=per_host,
        )
        for code in CODES
    }
    out: dict[str, Any] = {"n": n, "rounds": rounds, "first": {}, "runs": {}, "checks": {}}
    for code in CODES:
        log(f"pass 1: first pass of the {code} code over {n} URLs (baseline)")
        out["first"][code] = bridge_once(cfgs[code], f"cmp-p1-{code}-first", cmds[code])
        out["runs"][code], out["checks"][code] = [], []
    _, offset = statuses(nginx, 0)
    for r in range(rounds):
        for code in CODES:
            log(f"pass 1: round {r + 1}/{rounds}, {code} code")
            run = bridge_once(cfgs[code], f"cmp-p1-{code}-{r}", cmds[code])
            out["runs"][code].append(run)
            counted, offset = statuses(nginx, offset)
            out["checks"][code].append(counted["304"])
    return out


def steady(res: dict[str, Any]) -> dict[str, float]:
    """CPU share, CPU per poll (us) and bridge/bare share of one pass 3 result."""
    s = res.get("steady") or res
    out = {"share": s["share"], "per_poll_us": s["cpu"] / max(1, s["polls"]) * 1e6}
    out["polls"] = s["polls"]
    bare = res.get("bare")
    if bare:
        out["bare_share"] = bare["cpu"] / bare["window"]
        out["vs_bare"] = s["share"] / out["bare_share"]
    return out


def pass_3s(
    nginx: Nginx,
    cmds: dict[str, list[str]],
    n: int,
    every: float,
    duration: float,
    rounds: int,
    per_host: int,
) -> dict[str, Any]:
    """run.py's pass 3 for each code, rounds interleaved (each in fresh folders)."""
    out: dict[str, Any] = {"n": n, "every": every, "duration": duration, "rounds": rounds}
    out["runs"] = {code: [] for code in CODES}
    for r in range(rounds):
        for code in CODES:
            log(f"pass 3: round {r + 1}/{rounds}, {code} code")
            res = pass_3(nginx, n, every, duration, per_host, cmds[code])
            if res.get("exit") not in (0, None):
                log(f"pass 3: {code} code exited {res.get('exit')} after SIGTERM")
            out["runs"][code].append(steady(res))
            log(f"pass 3: {code}: {out['runs'][code][-1]}")
    return out


def pass_3_side(
    nginx: Nginx,
    cmds: dict[str, list[str]],
    n: int,
    every: float,
    intervals: int,
    rounds: int,
    per_host: int,
    pyspy: Path | None,
) -> dict[str, Any]:
    """Both codes' `bridge run` at once: CPU per poll (us) of each over whole intervals."""
    out: dict[str, Any] = {"n": n, "every": every, "intervals": intervals, "rounds": rounds}
    out["runs"] = {code: [] for code in CODES}
    out["polls"] = {code: [] for code in CODES}
    make_docs(n)
    for r in range(rounds):
        # Which code starts first and which location it polls alternate between rounds.
        order = list(CODES) if r % 2 == 0 else list(reversed(CODES))
        where = dict(zip(order, ("docs", "bare"), strict=True))
        cfgs = {}
        for code in order:
            d = fresh(f"cmp-p3s-{code}")
            urls = [nginx.url(f"/{where[code]}/{i}.json") for i in range(n)]
            cfgs[code] = bridge_config(
                d / "bridge.yaml", "p3s.db", urls, nginx.url("/hook"), per_host=per_host,
                every=f"{every:g}s",
            )  # fmt: skip
            log(f"pass 3s: round {r + 1}/{rounds}, baseline of the {code} code (/{where[code]}/)")
            bridge_once(cfgs[code], f"cmp-p3s-{code}-once", cmds[code])
        procs = {
            code: subprocess.Popen(
                [*cmds[code], "--log-level", "warning", "run", "-c", str(cfgs[code])],
                stdout=subprocess.DEVNULL,
                stderr=(WORK / "logs" / f"cmp-p3s-{code}-run.log").open("wb"),
                cwd=WORK,
                env=child_env(),
            )
            for code in order
        }
        spies: list[subprocess.Popen[bytes]] = []
        try:
            # Past every source's first poll in each process (baselined a moment ago, they
            # are due an interval later), then whole intervals.
            time.sleep(2 * every + 2)
            cpu0 = {code: proc_cpu(p.pid) for code, p in procs.items()}
            offsets = {code: count_lines(WORK / f"{where[code]}.log")[1] for code in CODES}
            if pyspy is not None:
                pyspy.mkdir(parents=True, exist_ok=True)
                for code, p in procs.items():
                    spy_cmd = [
                        str(Path(sys.executable).with_name("py-spy")), "record", "--rate", "997",
                        "--format", "raw", "--nonblocking", "--pid", str(p.pid),
                        "--duration", str(int(every * intervals)),
                        "-o", str(pyspy / f"{code}-{r}.raw"),
                    ]  # fmt: skip
                    spies.append(subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL))
            time.sleep(every * intervals)
            cpu1 = {code: proc_cpu(p.pid) for code, p in procs.items()}
            for spy in spies:
                spy.wait()
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                p.wait(30)
        for code in CODES:
            polls, _ = count_lines(WORK / f"{where[code]}.log", offsets[code], b"GET")
            us = (cpu1[code] - cpu0[code]) / max(1, polls) * 1e6
            out["runs"][code].append(us)
            out["polls"][code].append(polls)
            log(f"pass 3s: round {r + 1}: {code}: {polls} polls, {us:.0f} us per poll")
    return out


def fmt_list(values: list[float], spec: str) -> str:
    """Values of each round, slash-separated."""
    return " / ".join(format(v, spec) for v in values)


def section(
    facts: dict[str, str],
    cmd: str,
    rev: str,
    p1: dict[str, Any] | None,
    p3: dict[str, Any] | None,
    p3s: dict[str, Any] | None = None,
) -> str:
    """The RESULTS.md section, between its markers."""
    lines = [
        START,
        TITLE,
        "",
        f"Command: `{cmd}`. Old code: {rev} (the flat layout, before the three layout steps);"
        " new code: the work tree. Each code runs from its own editable install with the same"
        " dependencies, and the measurements alternate between them (old, new, old, new ...) in"
        " the same minutes, against the same nginx, with run.py's own pass functions.",
        "",
        f"Machine: {facts['cpu']}, {facts['cores']} cores; Python {facts['python']};"
        f" {facts['os']}; {facts['date']}; load average {facts['load']}.",
        "",
        "| measure | old | new | new / old | old rounds | new rounds |",
        "|---|---:|---:|---:|---|---|",
    ]
    spreads: list[tuple[str, float, float]] = []

    def row(label: str, values: Iterable[list[float]], spec: str, short: str) -> None:
        """One table row (values: the old code's rounds, then the new's): medians, their
        ratio, and each round."""
        old, new = values
        mo, mn = statistics.median(old), statistics.median(new)
        lines.append(
            f"| {label} | {mo:{spec}} | {mn:{spec}} | {mn / mo:.3f} | {fmt_list(old, spec)} |"
            f" {fmt_list(new, spec)} |"
        )
        spreads.append((short, spread(old), spread(new)))

    if p1:
        runs: dict[str, list[Run]] = p1["runs"]
        lab = f"pass 1: `bridge once`, {p1['n']} unchanged sources"
        row(
            f"{lab}, CPU s (median of {p1['rounds']})",
            ([r.cpu for r in runs[c]] for c in CODES),
            ".3f",
            "pass 1 CPU",
        )
        row(f"{lab}, wall s", ([r.wall for r in runs[c]] for c in CODES), ".3f", "pass 1 wall")
    if p3:
        runs3 = p3["runs"]
        lab = f"pass 3: `bridge run`, {p3['n']} sources every {p3['every']:g} s"
        row(
            f"{lab}, CPU share % (median of {p3['rounds']})",
            ([r["share"] * 100 for r in runs3[c]] for c in CODES),
            ".2f",
            "pass 3 CPU share",
        )
        row(
            f"{lab}, CPU per poll us",
            ([r["per_poll_us"] for r in runs3[c]] for c in CODES),
            ".0f",
            "pass 3 CPU per poll",
        )
        if all("vs_bare" in r for c in CODES for r in runs3[c]):
            row(
                "pass 3: bridge share / bare loop's share beside it",
                ([r["vs_bare"] for r in runs3[c]] for c in CODES),
                ".2f",
                "pass 3 bridge / bare",
            )
    if p3s:
        row(
            f"pass 3, both at once: `bridge run`, {p3s['n']} sources every {p3s['every']:g} s,"
            f" CPU per poll us (median of {p3s['rounds']})",
            (p3s["runs"][c] for c in CODES),
            ".0f",
            "pass 3 both at once",
        )
    lines.append("")
    if p1:
        seen = {c: "/".join(str(k) for k in p1["checks"][c]) for c in CODES}
        first = {c: p1["first"][c] for c in CODES}
        lines += [
            f"Pass 1 checks: 304s seen by nginx per round, old {seen['old']}, new {seen['new']};"
            f" first passes (baseline, not compared): old {first['old'].wall:.2f} s wall /"
            f" {first['old'].cpu:.2f} s CPU, new {first['new'].wall:.2f} / {first['new'].cpu:.2f}.",
            "",
        ]
    if p3:
        polls = {c: "/".join(str(int(r["polls"])) for r in p3["runs"][c]) for c in CODES}
        lines += [
            f"Pass 3 window: whole intervals after every source's first poll, {p3['duration']:g}"
            f" s runs; polls counted per round: old {polls['old']}, new {polls['new']}.",
            "",
        ]
    if p3s:
        polls = {c: "/".join(str(k) for k in p3s["polls"][c]) for c in CODES}
        ratios = " / ".join(
            f"{n / o:.2f}" for o, n in zip(p3s["runs"]["old"], p3s["runs"]["new"], strict=True)
        )
        lines += [
            f"Both at once: {p3s['intervals']} whole intervals after every source's first poll;"
            f" polls counted per round: old {polls['old']}, new {polls['new']}; new / old in each"
            f" round: {ratios}.",
            "",
        ]
    if spreads:
        each = "; ".join(f"{s} {o * 100:.0f}% / {n * 100:.0f}%" for s, o, n in spreads)
        lines += [
            f"Noise: the spread between the rounds of one code ((max - min) / median), old / new:"
            f" {each}. A new/old ratio inside that band, with the rounds of the two codes"
            " overlapping, is no measurable difference.",
            "",
        ]
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the comparison section, or add it after run.py's generated results."""
    doc = path.read_text() if path.exists() else "# Benchmark results\n"
    replaced = replace_section(doc, START, END, text)
    if replaced is not None:
        doc = replaced
    elif AFTER in doc:
        head, _, tail = doc.partition(AFTER)
        doc = head + AFTER + "\n\n" + text + "\n" + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)


def main() -> int:
    """Parse flags, prepare the old code, run both passes interleaved, write the section."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--old", default="473282f", help="the old code's revision (default 473282f)")
    ap.add_argument("--sources", type=int, default=1000, help="pass 1 sources (1000)")
    ap.add_argument("--p1-rounds", type=int, default=2, help="pass 1 rounds per code (2)")
    ap.add_argument("--steady-sources", type=int, default=2500, help="pass 3 sources (2500)")
    ap.add_argument("--steady-every", type=float, default=15.0, help="pass 3 interval, s (15)")
    ap.add_argument("--duration", type=float, default=45.0, help="pass 3 duration, s (45)")
    ap.add_argument("--p3-rounds", type=int, default=2, help="pass 3 rounds per code (2)")
    ap.add_argument("--side-intervals", type=int, default=4, help="pass 3s: measured intervals (4)")
    ap.add_argument("--side-rounds", type=int, default=4, help="pass 3s rounds (4)")
    ap.add_argument("--pyspy", type=Path, help="pass 3s: write py-spy stacks of each daemon here")
    ap.add_argument("--per-host", type=int, default=10, help="concurrency of every client")
    ap.add_argument(
        "--passes", default="1,3", help="1, 3, 3s (both codes at once), comma-separated"
    )
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    passes = set(args.passes.split(","))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    facts = machine()
    cmds = {"old": prepare_old(args.old), "new": [sys.executable, "-m", "bridge"]}
    for code, cmd in cmds.items():
        where = [cmd[0], "-c", "import bridge; print(bridge.__file__)"]
        found = subprocess.run(where, capture_output=True, text=True, cwd=WORK).stdout.strip()
        log(f"{code} code: {found}")
    nginx = Nginx(ensure_nginx())
    for name in ("docs.log", "bare.log", "hook.log"):
        (WORK / name).unlink(missing_ok=True)
    nginx.start()
    log(f"nginx on 127.0.0.1:{nginx.port}")
    p1 = p3 = p3s = None
    try:
        if "1" in passes:
            p1 = pass_1(nginx, cmds, args.sources, args.p1_rounds, args.per_host)
        if "3" in passes:
            p3 = pass_3s(
                nginx,
                cmds,
                args.steady_sources,
                args.steady_every,
                args.duration,
                args.p3_rounds,
                args.per_host,
            )
        if "3s" in passes:
            p3s = pass_3_side(
                nginx,
                cmds,
                args.steady_sources,
                args.steady_every,
                args.side_intervals,
                args.side_rounds,
                args.per_host,
                args.pyspy,
            )
    finally:
        nginx.stop()
    command = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])
    text = section(facts, command, args.old, p1, p3, p3s)
    write_section(args.output, text)
    print(text)
    log(f"wrote {args.output}; docs.log {file_size(WORK / 'docs.log')} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
