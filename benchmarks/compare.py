"""Old and new code side by side in one run: pass 1 (unchanged `bridge once`) and pass 3 (steady).

    /work/venv/bin/python benchmarks/compare.py                  # old = 473282f, about 4 minutes
    /work/venv/bin/python benchmarks/compare.py --old REV --p1-rounds 5 --p3-rounds 3

Run it with the Python that has the new code (the work tree) installed. The old code is checked
out once with `git worktree add --detach benchmarks/work/old-REV REV` and installed editable into
benchmarks/work/old-REV-venv; both are reused when present. The measurements alternate between
the two interpreters (old, new, old, new ...) in the same minutes, with run.py's own functions,
and the section "Layout refactor: old and new code side by side" of benchmarks/RESULTS.md is
written between its own markers (run.py's generated results are left alone).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
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
    doc_url,
    ensure_nginx,
    file_size,
    fresh,
    log,
    machine,
    make_docs,
)
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


def pass_1(nginx: Nginx, cmds: dict[str, list[str]], n: int, rounds: int, per_host: int) -> dict:
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


def fmt_list(values: list[float], spec: str) -> str:
    """Values of each round, slash-separated."""
    return " / ".join(format(v, spec) for v in values)


def section(facts: dict[str, str], cmd: str, rev: str, p1: dict | None, p3: dict | None) -> str:
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

    def row(label: str, old: list[float], new: list[float], spec: str, short: str) -> None:
        """One table row: medians, their ratio, and each round."""
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
            *([r.cpu for r in runs[c]] for c in CODES),
            ".3f",
            "pass 1 CPU",
        )
        row(f"{lab}, wall s", *([r.wall for r in runs[c]] for c in CODES), ".3f", "pass 1 wall")
    if p3:
        runs3 = p3["runs"]
        lab = f"pass 3: `bridge run`, {p3['n']} sources every {p3['every']:g} s"
        row(
            f"{lab}, CPU share % (median of {p3['rounds']})",
            *([r["share"] * 100 for r in runs3[c]] for c in CODES),
            ".2f",
            "pass 3 CPU share",
        )
        row(
            f"{lab}, CPU per poll us",
            *([r["per_poll_us"] for r in runs3[c]] for c in CODES),
            ".0f",
            "pass 3 CPU per poll",
        )
        if all("vs_bare" in r for c in CODES for r in runs3[c]):
            row(
                "pass 3: bridge share / bare loop's share beside it",
                *([r["vs_bare"] for r in runs3[c]] for c in CODES),
                ".2f",
                "pass 3 bridge / bare",
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
    if START in doc and END in doc:
        head, _, rest = doc.partition(START)
        _, _, tail = rest.partition(END)
        doc = head + text + tail
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
    ap.add_argument("--per-host", type=int, default=10, help="concurrency of every client")
    ap.add_argument("--passes", default="1,3", help="1, 3 or both")
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
    for name in ("docs.log", "hook.log"):
        (WORK / name).unlink(missing_ok=True)
    nginx.start()
    log(f"nginx on 127.0.0.1:{nginx.port}")
    p1 = p3 = None
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
    finally:
        nginx.stop()
    cmd = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])
    text = section(facts, cmd, args.old, p1, p3)
    write_section(args.output, text)
    print(text)
    log(f"wrote {args.output}; docs.log {file_size(WORK / 'docs.log')} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
