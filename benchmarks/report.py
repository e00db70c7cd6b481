"""The generated part of benchmarks/RESULTS.md: tables, ratios and targets from one run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from harness import Run

START, END = "<!-- generated results: start -->", "<!-- generated results: end -->"


def med(runs: list[Run], attr: str) -> float:
    """The median of one measure over repeated runs."""
    return statistics.median(getattr(r, attr) for r in runs)


def ok(met: bool) -> str:
    """A table cell saying whether a target holds."""
    return "met" if met else "**not met**"


def report(facts: dict[str, str], cmd: str, res: dict[str, Any]) -> str:
    """The generated part of RESULTS.md."""
    lines = [
        f"Command: `{cmd}`",
        "",
        f"Machine: {facts['cpu']}, {facts['cores']} cores; Python {facts['python']}; "
        f"{facts['os']}; {facts['date']}; load average {facts['load']}.",
        "",
    ]
    if "startup" in res:
        s = res["startup"]
        lines += [
            "### Start-up",
            "",
            f"- `bridge --help`: {s['help_wall']:.3f} s wall, {s['help_cpu']:.3f} s CPU (median).",
            f"- `python -c 'import` everything `bridge once` loads`: {s['once_imports_wall']:.3f} s"
            f" wall; `-X importtime` cumulative {s['once_imports_self_us'] / 1000:.0f} ms.",
            "",
        ]
    if "p1" in res:
        p = res["p1"]
        runs = p["runs"]
        b, u, a = (
            {k: med(runs[name], k) for k in ("wall", "cpu", "maxrss_mb")}
            for name in ("bridge", "urlwatch", "bare")
        )
        lines += [
            f"### 1. Unchanged pass: {p['n']} `http` sources, second pass, every answer a 304",
            "",
            f"Concurrency: `http: {{per_host: {p['per_host']}}}` for bridge, and {p['per_host']}"
            f" connections for the bare aiohttp loop; urlwatch runs its fixed {p['per_host']}"
            " worker threads (`MAX_WORKERS = 10`), one new connection per request. Medians of"
            f" {p['repeats']} interleaved rounds; each is a whole process (start-up included).",
            "",
            "| client | wall s | CPU s (user+sys) | peak RSS MB | 304s seen by nginx |",
            "|---|---:|---:|---:|---|",
        ]
        for name, m in (("bridge once", b), ("urlwatch", u), ("bare aiohttp loop", a)):
            key = name.split()[0]
            seen = "/".join(str(c["304"]) for c in p["checks"][key])
            lines.append(
                f"| {name} | {m['wall']:.2f} | {m['cpu']:.2f} | {m['maxrss_mb']:.0f} | {seen} |"
            )
        wall_x, cpu_x, bare_ratio = u["wall"] / b["wall"], u["cpu"] / b["cpu"], a["cpu"] / b["cpu"]
        lines += [
            "",
            "| ratio | value | target | |",
            "|---|---:|---:|---|",
            f"| urlwatch wall / bridge wall | {wall_x:.1f}x | >= 10x | {ok(wall_x >= 10)} |",
            f"| urlwatch CPU / bridge CPU | {cpu_x:.1f}x | >= 10x | {ok(cpu_x >= 10)} |",
            f"| bare CPU / bridge CPU | {bare_ratio:.2f} | >= 0.5 | {ok(bare_ratio >= 0.5)} |",
            "",
            "First passes (no validators yet; bridge baselines 20 items per source): bridge "
            f"{p['bridge_first'].wall:.2f} s wall / {p['bridge_first'].cpu:.2f} s CPU, urlwatch "
            f"{p['urlwatch_first'].wall:.2f} / {p['urlwatch_first'].cpu:.2f}, bare "
            f"{p['bare_first'].wall:.2f} / {p['bare_first'].cpu:.2f}.",
            "",
        ]
        c, uc = p["changed_bridge"], p["changed_urlwatch"]
        checks = p["changed_checks"]
        rate = p["n"] / c.wall
        lines += [
            f"### 2. Changed pass: one item changed in each of the {p['n']} documents",
            "",
            "`bridge once`: poll all, detect, commit (each poll's snapshot, events and deliveries"
            " in one transaction; `once` writes up to 2,000 polls per transaction), then deliver"
            " every event, signed, to nginx's `return 204` sink (webhook `concurrency: 10`).",
            "",
            "| client | wall s | CPU s | changes/s end to end | check |",
            "|---|---:|---:|---:|---|",
            f"| bridge once | {c.wall:.2f} | {c.cpu:.2f} | {rate:,.0f} | {checks['200']} fetched,"
            f" {checks['delivered']} delivered (204) |",
            f"| urlwatch (diffs to stdout, no delivery) | {uc.wall:.2f} | {uc.cpu:.2f} |"
            f" {p['n'] / uc.wall:,.0f} | {p['changed_urlwatch_checks']['200']} fetched |",
        ]
        if "changed_bare" in p:  # runs before 2026-11-30 02:00 UTC had no floor
            bc, bchecks = p["changed_bare"], p["changed_bare_checks"]
            lines.append(
                f"| bare aiohttp loop: GET, then POST each changed body signed (the floor) |"
                f" {bc.wall:.2f} | {bc.cpu:.2f} | {p['n'] / bc.wall:,.0f} | {bchecks['200']}"
                f" fetched, {bchecks['delivered']} delivered (204) |"
            )
        target = f"Target: at least 1,500 changes/s end to end: {ok(rate >= 1500)}."
        if "changed_bare" in p:
            bc = p["changed_bare"]
            target += (
                f" The floor, in the same minutes: {p['n'] / bc.wall:,.0f} changes/s;"
                f" bridge takes {c.wall / bc.wall:.2f}x its wall time and {c.cpu / bc.cpu:.2f}x"
                " its CPU."
            )
        lines += ["", target, ""]
    if "p3" in res:
        s = res["p3"]
        expected = s["window"] / s["every"] * s["n"]
        steady = s.get("steady") or s
        since = "after every source's first poll" if "steady" in s else "from the first poll on"
        lines += [
            f"### 3. Steady state: `bridge run`, {s['n']} sources every {s['every']:g} s,"
            f" {s['duration']:g} s",
            "",
            f"The state was baselined first with `bridge once` ({s['baseline'].wall:.1f} s wall,"
            f" {s['baseline'].cpu:.1f} s CPU). Measured from /proc/PID: CPU over the last"
            f" {steady['window']:.0f} s, {since} ({steady['polls']} polls). From the first poll"
            f" on: {s['window']:.0f} s, {s['polls']} polls (about {expected:.0f} expected),"
            f" {s['share'] * 100:.1f}% of a core, {s['cpu'] / max(1, s['polls']) * 1e6:.0f} us"
            f" per poll; before it, {s['startup_cpu']:.1f} s of start-up CPU.",
            "",
            "| measure | value | target | |",
            "|---|---:|---:|---|",
            f"| CPU share of one core | {steady['share'] * 100:.1f}% | <= 5% |"
            f" {ok(steady['share'] <= 0.05)} |",
            f"| peak RSS (VmHWM) | {s['hwm_mb']:.0f} MB | <= 150 MB | {ok(s['hwm_mb'] <= 150)} |",
            f"| CPU per poll | {steady['cpu'] / max(1, steady['polls']) * 1e6:.0f} us | | |",
            "",
            f"RSS at the end {s['rss_mb']:.0f} MB; exit code after SIGTERM {s['exit']}.",
            "",
        ]
        if s.get("bare"):
            bare = s["bare"]
            share = bare["cpu"] / bare["window"]
            per_poll = steady["cpu"] / max(1, steady["polls"])
            lines += [
                "In the same minutes, beside it, the bare aiohttp loop polling the same documents"
                " at the same rate (the floor: no scheduler, diff or state), over its own"
                f" {bare['window']:.0f} s window after one interval: {share * 100:.1f}% of a core,"
                f" {bare['cpu'] / max(1, bare['requests']) * 1e6:.0f} us per request,"
                f" {bare['requests']} requests, peak RSS {bare['hwm_mb']:.0f} MB. bridge / bare"
                f" CPU share: {steady['share'] / share:.2f}; per poll:"
                f" {per_poll / (bare['cpu'] / max(1, bare['requests'])):.2f}.",
                "",
            ]
    if "p4" in res:
        g = res["p4"]
        if "unchanged_median_s" not in g:
            lines += ["### 4. One large document", "", "**failed**: see work/logs/p4.log", ""]
        else:
            u, c = g["unchanged_median_s"], g["changed_median_s"]
            grow = statistics.median(g["state_growth_changed"])
            lines += [
                f"### 4. One large document: 50,000 items, {g['size'] / 1e6:.1f} MB,"
                " no validators (200 with the same bytes each time)",
                "",
                "`Engine.poll` plus the write of its commit, in one process (large_poll.py);"
                f" medians of {len(g['unchanged_s'])} polls each.",
                "",
                "| poll | seconds | target | | state file growth |",
                "|---|---:|---:|---|---:|",
                f"| first (baseline, 50,000 items stored) | {g['baseline_s']:.2f} | | |"
                f" {g['state_after_baseline'] / 1e6:.1f} MB |",
                f"| unchanged | {u:.3f} | <= 0.15 | {ok(u <= 0.15)} |"
                f" {g['state_growth_unchanged']} bytes |",
                f"| 1% changed ({g['changed_events'][0]} item.changed) | {c:.3f} | <= 1.0 |"
                f" {ok(c <= 1.0)} | {grow / 1e3:.0f} kB per poll |",
                "",
            ]
    return "\n".join(lines)


def replace_section(doc: str, start: str, end: str, text: str) -> str | None:
    """`doc` with its part from the `start` marker to the `end` marker replaced by `text` (which
    carries the markers), or None when `doc` lacks either: each benchmark writes its own
    section of RESULTS.md this way, keeping what was written around it."""
    if start not in doc or end not in doc:
        return None
    head, _, rest = doc.partition(start)
    _, _, tail = rest.partition(end)
    return head + text + tail


def write_results(path: Path, generated: str) -> None:
    """Replace the generated part of RESULTS.md, keeping what was written around it."""
    text = path.read_text() if path.exists() else ""
    block = f"{START}\n{generated}\n{END}"
    replaced = replace_section(text, START, END, block)
    text = replaced if replaced is not None else "# Benchmark results\n\n" + block + "\n"
    path.write_text(text)
