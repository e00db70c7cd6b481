"""The "Several instances on PostgreSQL" section of benchmarks/RESULTS.md, from one run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from report import ok, replace_section

START, END = "<!-- postgresql: start -->", "<!-- postgresql: end -->"
TITLE = "## Several instances on PostgreSQL (benchmarks/postgresql.py)"


def _per_poll(res: dict[str, Any], labels: list[str] | None = None) -> tuple[float, float, int]:
    """(bridge us, server us) per poll of a window, and its polls, for some labels (all)."""
    labels = labels if labels is not None else list(res["bridge_cpu"])
    polls = sum(res["polls"].get(k, 0) for k in labels)
    bridge = sum(res["bridge_cpu"][k] for k in labels)
    return bridge / max(1, polls) * 1e6, res["pg_cpu"] / max(1, polls) * 1e6, polls


def _late(late: dict[str, Any]) -> str:
    """p50 / p99 / max, or a dash when no source was polled twice in the window."""
    if not late["gaps"]:
        return "-"
    return f"{late['p50']:.2f} / {late['p99']:.2f} / {late['max']:.2f}"


def _due(res: dict[str, Any], every: float) -> float:
    """Polls due in a window: every source once per interval."""
    return max(1.0, float(res["n"] * round(res["seconds"] / every)))


def _shares(polls: dict[str, int], labels: list[str]) -> str:
    total = max(1, sum(polls.get(k, 0) for k in labels))
    return " / ".join(f"{polls.get(k, 0) / total * 100:.0f}%" for k in labels)


def _even(polls: dict[str, int], labels: list[str]) -> bool:
    # Each within +-20% of a fair share: 50 +- 10 % for two instances.
    total = max(1, sum(polls.get(k, 0) for k in labels))
    fair = 1 / len(labels)
    return all(abs(polls.get(k, 0) / total - fair) <= 0.2 * fair for k in labels)


def _once(p: dict[str, Any], lines: list[str], targets: list[str]) -> None:
    kinds = ("sqlite", "postgresql")
    rounds = {k: p["rounds"][k] for k in kinds}

    def med(kind: str, key: str) -> float:
        return float(
            statistics.median(
                r["bridge_cpu"] + r["pg_cpu"] if key == "total" else r[key] for r in rounds[kind]
            )
        )

    lines += [
        f"### 1. `bridge once` over {p['n']} unchanged sources (every answer a 304)",
        "",
        f"Medians of {len(rounds['sqlite'])} interleaved rounds (SQLite, PostgreSQL, ...); a"
        " round is a whole process. CPU = bridge's rusage + the server's CPU for our database.",
        "",
        "| measure | SQLite | PostgreSQL | PostgreSQL / SQLite |",
        "|---|---:|---:|---:|",
    ]
    for label, key in (
        ("CPU s, bridge + server", "total"),
        ("CPU s, bridge alone", "bridge_cpu"),
        ("CPU s, the server", "pg_cpu"),
        ("wall s", "wall"),
    ):
        s, g = med("sqlite", key), med("postgresql", key)
        ratio = f"{g / s:.2f}x" if s else ""
        lines.append(f"| {label} | {s:.3f} | {g:.3f} | {ratio} |")
    seen = {k: "/".join(str(r["304"]) for r in rounds[k]) for k in kinds}
    first = p["first"]
    lines += [
        "",
        f"304s seen by nginx per round: SQLite {seen['sqlite']}, PostgreSQL {seen['postgresql']}."
        f" First passes (baseline, 20 items per source): SQLite {first['sqlite']['wall']:.1f} s"
        f" wall / {first['sqlite']['bridge_cpu']:.1f} s CPU; PostgreSQL"
        f" {first['postgresql']['wall']:.1f} s / {first['postgresql']['bridge_cpu']:.1f} s +"
        f" {first['postgresql']['pg_cpu']:.1f} s of the server.",
        "",
    ]
    x = med("postgresql", "total") / med("sqlite", "total")
    targets.append(
        f"| 1 | `bridge once`, unchanged: CPU (bridge + server) <= 1.5x SQLite | {x:.2f}x |"
        f" {ok(x <= 1.5)} |"
    )


def _steady(s: dict[str, Any], lines: list[str], targets: list[str]) -> None:
    sq = _per_poll(s, ["sqlite"])
    pg = _per_poll(s, ["postgresql"])
    x = (pg[0] + pg[1]) / (sq[0] + sq[1])
    lines += [
        f"### 2. `bridge run`, {s['n']} unchanged sources every {s['every']:g} s, both at once",
        "",
        "One daemon on SQLite and one on PostgreSQL, started together over the same documents,"
        f" measured over the same {s['seconds']:.0f} s (whole intervals, after every source's"
        f" first poll in each process, {s['settle']:.0f} s after start). Load {s['load']}.",
        "",
        "| CPU per poll, us | SQLite | PostgreSQL | PostgreSQL / SQLite |",
        "|---|---:|---:|---:|",
        f"| bridge + server | {sq[0] + sq[1]:.0f} | {pg[0] + pg[1]:.0f} | {x:.2f}x |",
        f"| bridge alone | {sq[0]:.0f} | {pg[0]:.0f} | {pg[0] / sq[0]:.2f}x |",
        f"| the server | 0 | {pg[1]:.0f} | |",
        f"| polls in the window | {sq[2]} | {pg[2]} | |",
        "",
    ]
    targets.append(
        f"| 1 | `bridge run`, unchanged: CPU per poll (bridge + server) <= 1.5x SQLite | {x:.2f}x |"
        f" {ok(x <= 1.5)} |"
    )


def _capped(c: dict[str, Any], r: dict[str, Any]) -> bool:
    """Whether a case of the changed pass made (nearly) every poll due: the figure is then the
    offered load, not what the case can do."""
    polls = sum(r["polls"].get(k, 0) for k in r["bridge_cpu"])
    return polls / r["seconds"] >= 0.95 * c["n"] / c["every"]


def _changed(c: dict[str, Any], lines: list[str], targets: list[str]) -> None:
    runs = c["runs"]
    base = runs["sqlite-1"]
    base_rate = base["events"] / base["seconds"]
    lines += [
        f"### 3. Every poll a change: {c['n']} sources every {c['every']:g} s",
        "",
        f"Each document changes at every request (nginx's $request_id in one of its 20 items),"
        f" and {c['n'] / c['every']:.0f} polls/s are due, meant to be more than any of these can"
        " do, so that the figure is how many they can (a case that made 95 % of the polls due or"
        " more is marked *capped*: it measured the offered load). Changes/s = events committed"
        " per second over the window (after the warm-up); each goes to nginx's `return 204`"
        " sink, signed. Shares: each instance's polls, told apart at the origin by the"
        " X-Instance header.",
        "",
        "| state | instances | changes/s | vs SQLite | delivered/s | polls | shares |"
        " bridge CPU | server CPU | load |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for tag, r in runs.items():
        kind, count = tag.split("-")
        labels = sorted(r["bridge_cpu"])
        rate = r["events"] / r["seconds"]
        polls = sum(r["polls"].get(k, 0) for k in labels)
        capped = " (*capped*)" if _capped(c, r) else ""
        bridge = sum(r["bridge_cpu"].values()) / r["seconds"] * 100
        server = r["pg_cpu"] / r["seconds"] * 100
        lines.append(
            f"| {kind} | {count} | {rate:,.0f}{capped} | {rate / base_rate:.2f}x |"
            f" {r['delivered'] / r['seconds']:,.0f} | {polls} | {_shares(r['polls'], labels)} |"
            f" {bridge:.0f}% | {server:.0f}% | {r['load']} |"
        )
    lines.append("")
    two = runs.get("postgresql-2")
    if two:
        x = two["events"] / two["seconds"] / base_rate
        labels = sorted(two["bridge_cpu"])
        capped = _capped(c, two) or _capped(c, base)  # a ratio of offered loads: no verdict
        verdict = "**not measured** (capped)" if capped else ok(x >= 1.3)
        targets += [
            f"| 2 | 2 instances on PostgreSQL >= 1.3x the changes/s of 1 on SQLite | {x:.2f}x |"
            f" {verdict} |",
            f"| 2 | the work split evenly (2 instances: each 50 +- 10 %) |"
            f" {_shares(two['polls'], labels)} | {ok(_even(two['polls'], labels))} |",
        ]
    four = runs.get("postgresql-4")
    if four:
        labels = sorted(four["bridge_cpu"])
        targets.append(
            f"| 2 | (4 instances: each 25 +- 5 %) | {_shares(four['polls'], labels)} |"
            f" {ok(_even(four['polls'], labels))} |"
        )


def _scale(s: dict[str, Any], lines: list[str], targets: list[str]) -> None:
    lines += [
        f"### 4. Coordination as the work grows: sources every {s['every']:g} s, jitter 0",
        "",
        "Unchanged polls of one-item documents on one PostgreSQL database (baselined first with"
        " `bridge once`); CPU per poll = the daemons' CPU + the server's CPU for our database,"
        " over whole intervals after every source's first poll in the processes. Lateness: at"
        " the origin, the gap between successive requests for one source minus the interval"
        " (a poll may run up to 1 s early, with others due then).",
        "",
        "| series | instances | sources | polls (of those due) | CPU per poll us | bridge us |"
        " server us | vs smallest | CPU, % of a core | shares | lateness p50 / p99 / max s |"
        " load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]

    def rows(series: str, cases: dict[Any, dict[str, Any]]) -> list[float]:
        totals = []
        for r in cases.values():
            bridge, server, polls = _per_poll(r)
            totals.append(bridge + server)
            labels = sorted(r["bridge_cpu"])
            late = r["lateness"]
            due = _due(r, s["every"])
            lines.append(
                f"| {series} | {r['instances']} | {r['n']:,} | {polls} ({polls / due * 100:.0f}%)"
                f" | {bridge + server:.0f} |"
                f" {bridge:.0f} | {server:.0f} | {(bridge + server) / totals[0]:.2f}x |"
                f" {(bridge + server) * polls / 1e4 / r['seconds']:.1f}% |"
                f" {_shares(r['polls'], labels)} | {_late(late)} | {r['load']} |"
            )
        return totals

    by_instances = rows("instances", s["instances"])
    by_sources = rows("sources", s["sources"])
    largest = s["sources"][max(s["sources"], key=int)]
    late = largest["lateness"]
    kept = sum(largest["polls"].values()) / _due(largest, s["every"])
    lines += [
        "",
        f"The largest case, {largest['n']:,} sources over {largest['instances']} instances:"
        f" {kept * 100:.0f}% of the polls due were made; {late['gaps']} gaps measured over"
        f" {largest['seconds']:.0f} s, {late['over_2s']} more"
        f" than 2 s late, {late['missed']} with a whole round missed, {late['twice']} sources"
        " polled by two instances within a tenth of an interval. Baselines (`bridge once`): "
        + ", ".join(
            f"{int(n):,} sources {b['wall']:.0f} s wall" for n, b in s.get("baselines", {}).items()
        )
        + ".",
        "",
    ]
    for name, totals in (("instances (1, 2, 4)", by_instances), ("sources", by_sources)):
        worst = max(totals) / totals[0]
        targets.append(
            f"| 3 | CPU per poll as {name} grow: within 1.2x of the smallest | {worst:.2f}x |"
            f" {ok(worst <= 1.2)} |"
        )
    # Lateness means nothing if the polls were not made: keeping up is part of the target.
    targets.append(
        f"| 3 | {largest['n']:,} sources every {s['every']:g} s over {largest['instances']}"
        f" instances: p99 lateness < 2 s | {late['p99']:.2f} s over {late['gaps']} gaps,"
        f" {kept * 100:.0f}% of the polls due made | {ok(late['p99'] < 2 and kept >= 0.95)} |"
    )


def section(facts: dict[str, str], cmd: str, res: dict[str, Any]) -> str:
    """The section, between its markers."""
    lines = [
        START,
        TITLE,
        "",
        f"Command: `{cmd}` ({res['minutes']:.1f} minutes), code {facts['code']}. Machine:"
        f" {facts['cpu']},"
        f" {facts['cores']} cores; Python {facts['python']}; {facts['os']}; {facts['date']};"
        f" load average {facts['load']}; the load during each window is in its table."
        " PostgreSQL 15 on the same machine, shared with other people's test runs: the server's"
        " CPU counted here is that of our databases' backends and autovacuum workers plus the"
        " server's own helpers (checkpointer, writers), read from /proc/PID/stat.",
        "",
    ]
    targets = ["| issue 16 target | | measured | |", "|---|---|---:|---|"]
    if "once" in res:
        _once(res["once"], lines, targets)
    if "steady" in res:
        _steady(res["steady"], lines, targets)
    if "changed" in res:
        _changed(res["changed"], lines, targets)
    if "scale" in res:
        _scale(res["scale"], lines, targets)
    lines += ["### Targets", "", *targets, "", END]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the section, or add it at the end of RESULTS.md."""
    doc = path.read_text() if path.exists() else "# Benchmark results\n"
    replaced = replace_section(doc, START, END, text)
    path.write_text(replaced if replaced is not None else doc.rstrip("\n") + "\n\n" + text + "\n")
