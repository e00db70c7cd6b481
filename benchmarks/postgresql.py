"""Several instances on PostgreSQL beside one on SQLite (issue 16), side by side in one run.

    /work/venv/bin/python benchmarks/postgresql.py            # the full run, about 20 minutes
    /work/venv/bin/python benchmarks/postgresql.py --quick    # a smoke run, about 5 minutes
    /work/venv/bin/python benchmarks/postgresql.py --passes changed,scale

Needs the PostgreSQL server of --server (postgresql://postgres@127.0.0.1:5432); it makes a
database per state (bench_<random>) and drops it at the end. Documents are served by nginx
(benchmarks/pg_origin.py); configs and logs go to benchmarks/work/postgresql/. The passes:

- once: `bridge once` over N unchanged sources (all 304), SQLite and PostgreSQL rounds
  interleaved; CPU is bridge's rusage plus the PostgreSQL server's CPU for our database.
- steady: one `bridge run` on SQLite and one on PostgreSQL at the same time, the same N
  sources; CPU per unchanged poll over whole intervals after every source's first poll.
- changed: documents that change at every request; 1 instance on SQLite, then 1, 2 and 4 on
  PostgreSQL; events committed per second and each instance's share of the polls.
- scale: CPU per poll with 1, 2 and 4 instances over one set of sources, then with 4
  instances over more and more sources; the largest also gives the lateness of the schedule.

The section between the postgresql markers of benchmarks/RESULTS.md is replaced, and every
figure is kept in benchmarks/work/postgresql/postgresql-results.json.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import pg_fleet  # noqa: E402
import pg_origin  # noqa: E402
import pg_report  # noqa: E402
from harness import HERE, ROOT, doc_url, ensure_nginx, fresh, log, machine, make_docs  # noqa: E402
from pg_server import SERVER, ServerCpu, drop_database, new_database  # noqa: E402

# Everything this benchmark writes (benchmarks/work/postgresql/): other benchmarks use work/ too.
WORK = harness.WORK / "postgresql"


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run (the full one, or --quick)."""

    once_sources: int
    once_rounds: int
    steady_every: float
    steady_rounds: int  # whole intervals measured
    changed_sources: int
    changed_every: float
    changed_warmup: float
    changed_window: float
    scale_every: float
    scale_sources: int  # the instances series
    scale_series: tuple[int, ...]  # the sources series, with 4 instances
    scale_rounds: int  # whole intervals measured
    large_rounds: int  # ... for the largest


# The changed pass offers more polls a second than any case can make (4,000 sources every 2 s:
# 2,000/s): with 2,000 sources, one SQLite instance and two PostgreSQL ones both made every
# poll due, and the ratio between them measured the offered load, not what either can do.
FULL = Plan(5000, 3, 15.0, 4, 4000, 2.0, 15.0, 30.0, 60.0, 10_000, (1000, 10_000, 50_000), 2, 3)
QUICK = Plan(500, 1, 10.0, 2, 2000, 2.0, 8.0, 15.0, 20.0, 2000, (500, 2000, 5000), 1, 2)


class Bench:
    """The origin, the server's CPU and the databases of one run."""

    def __init__(self, origin: pg_origin.Origin, cpu: ServerCpu, server: str):
        self.origin = origin
        self.cpu = cpu
        self.server = server
        self.urls: list[str] = []

    def database(self) -> str:
        """A new database, whose backends count as ours; dropped at the end of the run."""
        url = new_database(self.server)
        self.urls.append(url)
        self.cpu.databases.add(url.rpartition("/")[2])
        return url

    def drop_all(self) -> None:
        """Drop every database this run made."""
        for url in self.urls:
            drop_database(url)


def wait_round(groups: list[set[str]], n: int, since: int, timeout: float) -> float:
    """Wait until the instances of each group have polled n distinct sources since a docs.log
    offset (every source's first poll in the process); the seconds waited."""
    started = time.monotonic()
    seen: list[set[str]] = [set() for _ in groups]
    offset = since
    while time.monotonic() - started < timeout:
        end = pg_origin.log_size()
        for r in pg_origin.requests(offset, end):
            for group, paths in zip(groups, seen, strict=True):
                if r.instance in group:
                    paths.add(r.path)
        offset = end
        if all(len(paths) >= n for paths in seen):
            return time.monotonic() - started
        time.sleep(1.0)
    log(f"not every source was polled within {timeout:.0f}s: {[len(s) for s in seen]} of {n}")
    return time.monotonic() - started


def window(bench: Bench, daemons: list[pg_fleet.Daemon], seconds: float) -> dict[str, Any]:
    """CPU of each daemon and of the server, and the requests of each label, over `seconds`."""
    offset = pg_origin.log_size()
    pg0, all0 = bench.cpu.ours(), bench.cpu.everything()
    cpu0 = {d.label: d.cpu() for d in daemons}
    t0 = time.monotonic()
    time.sleep(seconds)
    cpu1 = {d.label: d.cpu() for d in daemons}
    pg1, all1, t1 = bench.cpu.ours(), bench.cpu.everything(), time.monotonic()
    end = pg_origin.log_size()
    reqs = pg_origin.requests(offset, end)
    return {
        "seconds": t1 - t0,
        "polls": pg_origin.shares(reqs),
        "bridge_cpu": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "pg_cpu": pg1 - pg0,
        "server_cpu": all1 - all0,  # every process of the server, other people's too
        "load": pg_fleet.load(),
        "offsets": (offset, end),
        "exited": [d.label for d in daemons if not d.alive()],
    }


# --- pass 1: `bridge once` over unchanged sources ---------------------------------------------


def pass_once(bench: Bench, plan: Plan) -> dict[str, Any]:
    """Unchanged `bridge once`, SQLite and PostgreSQL rounds interleaved."""
    n = plan.once_sources
    urls = [doc_url(bench.origin, i) for i in range(n)]
    hook = bench.origin.url("/hook")
    d = fresh("pg-once")
    states = {"sqlite": str(d / "state.db"), "postgresql": bench.database()}
    cfgs = {k: pg_fleet.config(d / f"{k}.yaml", v, urls, hook, every=60) for k, v in states.items()}
    out: dict[str, Any] = {"n": n, "states": states, "first": {}, "rounds": {k: [] for k in cfgs}}
    bench.cpu.fast(0.02)  # `once`'s backends live about a second
    try:
        for kind, cfg in cfgs.items():
            log(f"once: first pass on {kind}, {n} sources (baseline)")
            out["first"][kind] = measured_once(bench, cfg, kind, f"pg-once-{kind}-first")
        for r in range(plan.once_rounds):
            for kind, cfg in cfgs.items():
                log(f"once: round {r + 1}/{plan.once_rounds}, {kind}")
                out["rounds"][kind].append(measured_once(bench, cfg, kind, f"pg-once-{kind}-{r}"))
    finally:
        bench.cpu.fast(1.0)
    return out


def measured_once(bench: Bench, cfg: Path, label: str, log_name: str) -> dict[str, Any]:
    """One `bridge once`: its wall and CPU, the server's CPU, and the answers nginx gave."""
    offset = pg_origin.log_size()
    pg0, all0 = bench.cpu.ours(), bench.cpu.everything()
    run = pg_fleet.once(cfg, label, log_name)
    time.sleep(0.05)  # the server's last reads of the backend, which has just exited
    pg1, all1 = bench.cpu.ours(), bench.cpu.everything()
    reqs = pg_origin.requests(offset)
    return {
        "wall": run.wall,
        "bridge_cpu": run.cpu,
        # SQLite has no server: what the server's helpers did meanwhile was for someone else.
        "pg_cpu": pg1 - pg0 if label == "postgresql" else 0.0,
        "server_cpu": all1 - all0,
        "code": run.code,
        "304": sum(1 for q in reqs if q.status == "304"),
        "200": sum(1 for q in reqs if q.status == "200"),
    }


# --- pass 3: the steady daemon, SQLite and PostgreSQL at once ---------------------------------


def pass_steady(bench: Bench, plan: Plan, once: dict[str, Any] | None) -> dict[str, Any]:
    """One `bridge run` per backend at the same time over the same sources, unchanged."""
    every = plan.steady_every
    n = plan.once_sources
    d = harness.WORK / "pg-once"
    if once is None:  # run alone: baseline its own states
        d = fresh("pg-steady")
        states = {"sqlite": str(d / "state.db"), "postgresql": bench.database()}
    else:
        states = once["states"]
    urls = [doc_url(bench.origin, i) for i in range(n)]
    hook = bench.origin.url("/hook")
    cfgs = {
        k: pg_fleet.config(d / f"{k}-run.yaml", v, urls, hook, every=every)
        for k, v in states.items()
    }
    if once is None:
        for kind, cfg in cfgs.items():
            log(f"steady: baseline on {kind}")
            pg_fleet.once(cfg, kind, f"pg-steady-{kind}-first")
    log(f"steady: `bridge run` on SQLite and on PostgreSQL, {n} sources every {every:g}s")
    since = pg_origin.log_size()
    daemons = [pg_fleet.Daemon(cfg, kind, f"pg-steady-{kind}") for kind, cfg in cfgs.items()]
    res: dict[str, Any] = {"n": n, "every": every}
    try:
        res["settle"] = wait_round([{"sqlite"}, {"postgresql"}], n, since, 3 * every + 30)
        log(f"steady: every source polled ({res['settle']:.0f}s); measuring {plan.steady_rounds}")
        res.update(window(bench, daemons, plan.steady_rounds * every))
    finally:
        res["exit"] = pg_fleet.stop_all(daemons)
    return res


# --- pass 2: every poll a change ---------------------------------------------------------------


def pass_changed(bench: Bench, plan: Plan) -> dict[str, Any]:
    """1 instance on SQLite, then 1, 2 and 4 on PostgreSQL, polling documents that change."""
    n, every = plan.changed_sources, plan.changed_every
    urls = [bench.origin.url(f"/changing/{i}.json") for i in range(n)]
    out: dict[str, Any] = {"n": n, "every": every, "runs": {}}
    for kind, count in (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 4)):
        tag = f"{kind}-{count}"
        d = fresh(f"pg-changed-{tag}")
        state = str(d / "state.db") if kind == "sqlite" else bench.database()
        cfg = pg_fleet.config(
            d / "bridge.yaml", state, urls, bench.origin.url("/hook"), every=every
        )
        log(f"changed: {count} on {kind}: baseline, then {plan.changed_warmup:g}s warm-up")
        pg_fleet.once(cfg, "base", f"pg-changed-{tag}-first")
        reader = open_state_of(state)
        daemons = pg_fleet.start(cfg, count, f"pg-changed-{tag}")
        res: dict[str, Any] = {}
        try:
            time.sleep(plan.changed_warmup)
            events0, delivered0 = committed(reader)
            hook0, _ = pg_origin.hook_count()
            res.update(window(bench, daemons, plan.changed_window))
            events1, delivered1 = committed(reader)
            hook1, _ = pg_origin.hook_count()
        finally:
            res["exit"] = pg_fleet.stop_all(daemons)
            reader.close()
        res["events"] = events1 - events0
        res["delivered"] = delivered1 - delivered0
        res["sink_204"] = hook1 - hook0
        res["shards"] = [d.log_lines("schedules")[-1:] for d in daemons]
        out["runs"][tag] = res
        log(f"changed: {tag}: {res['events'] / res['seconds']:.0f} events/s, {res['polls']}")
    return out


def open_state_of(location: str) -> Any:
    """The state of a run, opened here with the code the daemons run (--code puts it first)."""
    from bridge.state import open_state

    return open_state(location)


def committed(state: Any) -> tuple[int, int]:
    """(events committed, deliveries delivered) so far: one delivery per event here."""
    counts = state.admin.delivery_counts(["sink"]).get("sink", {})
    return sum(counts.values()), counts.get("delivered", 0)


# --- pass 4: coordination as the work grows ----------------------------------------------------


def small_docs(n: int) -> Callable[[int], str]:
    """n one-item documents under /docs/small/ (a cheap baseline: polls measured are 304s)."""
    folder = harness.WORK / "www" / "docs" / "small"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i}.json"
        if not path.exists():
            path.write_bytes(orjson.dumps({"items": [{"id": 0, "name": f"small-{i}"}]}))
    return lambda i: f"/docs/small/{i}.json"


def scale_case(
    bench: Bench, plan: Plan, cfg: Path, n: int, count: int, rounds: int, tag: str
) -> dict[str, Any]:
    """`count` daemons on a baselined state: CPU per poll over whole rounds after the first."""
    since = pg_origin.log_size()
    daemons = pg_fleet.start(cfg, count, tag)
    every = plan.scale_every
    res: dict[str, Any] = {}
    try:
        res["settle"] = wait_round([{d.label for d in daemons}], n, since, every + 60)
        log(f"scale: {tag}: every source polled ({res['settle']:.0f}s); measuring {rounds}")
        res.update(window(bench, daemons, rounds * every))
    finally:
        res["exit"] = pg_fleet.stop_all(daemons)
    res["shards"] = [d.log_lines("schedules")[-1:] for d in daemons]
    reqs = pg_origin.requests(*res.pop("offsets"))
    res["lateness"] = asdict(pg_origin.lateness(reqs, every))
    res["n"], res["instances"] = n, count
    return res


def pass_scale(bench: Bench, plan: Plan) -> dict[str, Any]:
    """1, 2 and 4 instances over scale_sources; then 4 over each of scale_series."""
    out: dict[str, Any] = {"every": plan.scale_every, "instances": {}, "sources": {}}
    path = small_docs(max(plan.scale_series))
    hook = bench.origin.url("/hook")

    def baselined(n: int) -> Path:
        d = fresh(f"pg-scale-{n}")
        urls = [bench.origin.url(path(i)) for i in range(n)]
        cfg = pg_fleet.config(
            d / "bridge.yaml", bench.database(), urls, hook, every=plan.scale_every, jitter="0s"
        )
        log(f"scale: baseline of {n} sources")
        run = pg_fleet.once(cfg, "base", f"pg-scale-{n}-first")
        out.setdefault("baselines", {})[n] = {"wall": run.wall, "cpu": run.cpu}
        return cfg

    n = plan.scale_sources
    cfg = baselined(n)
    for count in (1, 2, 4):
        out["instances"][count] = scale_case(
            bench, plan, cfg, n, count, plan.scale_rounds, f"pg-scale-{n}x{count}"
        )
    for n in plan.scale_series:
        if n == plan.scale_sources:
            out["sources"][n] = out["instances"][4]
            continue
        rounds = plan.large_rounds if n == max(plan.scale_series) else plan.scale_rounds
        out["sources"][n] = scale_case(bench, plan, baselined(n), n, 4, rounds, f"pg-scale-{n}x4")
    return out


def code_version(tree: Path | None) -> str:
    """Which code ran: the commit, and whether bridge/ had uncommitted changes."""
    if tree is not None:
        return f"the copy of bridge/ in {tree}"
    git = ["git", "-C", str(ROOT)]
    rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    diff = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "bridge"], capture_output=True)
    return rev.stdout.strip() + (" with uncommitted changes in bridge/" if diff.returncode else "")


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    """Parse flags, run the passes, write the section of RESULTS.md."""
    global WORK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer sources, shorter")
    ap.add_argument("--passes", default="once,steady,changed,scale", help="which passes")
    ap.add_argument("--server", default=SERVER, help=f"the PostgreSQL server ({SERVER})")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--code", type=Path, help="run bridge from this source tree (a what-if)")
    ap.add_argument("--work", type=Path, help=f"its files here, not {WORK} (two runs at once)")
    ap.add_argument("--changed-sources", type=int, help="the changed pass's sources (its plan's)")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    if args.changed_sources:
        plan = replace(plan, changed_sources=args.changed_sources)
    passes = set(args.passes.split(","))
    unknown = passes - {"once", "steady", "changed", "scale"}
    if unknown:
        ap.error(f"unknown passes: {', '.join(sorted(unknown))}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwinds through the finally blocks
    pg_fleet.CODE = args.code.resolve() if args.code else None
    if pg_fleet.CODE is not None:
        sys.path.insert(0, str(pg_fleet.CODE))
    facts = {**machine(), "code": code_version(args.code)}
    WORK = args.work.resolve() if args.work else WORK
    harness.WORK = WORK  # nginx, logs and configs of its own, beside other benchmarks' runs
    WORK.mkdir(parents=True, exist_ok=True)
    for name in ("docs.log", "hook.log"):
        (WORK / name).unlink(missing_ok=True)
    make_docs(plan.once_sources)
    origin = pg_origin.Origin(ensure_nginx()).start()
    log(f"nginx on 127.0.0.1:{origin.port}; PostgreSQL {args.server}")
    res: dict[str, Any] = {"plan": asdict(plan), "loads": []}
    started = time.monotonic()
    try:
        with ServerCpu(set(), args.server, period=1.0) as cpu:
            bench = Bench(origin, cpu, args.server)
            try:
                if "once" in passes:
                    res["once"] = pass_once(bench, plan)
                if "steady" in passes:
                    res["steady"] = pass_steady(bench, plan, res.get("once"))
                if "changed" in passes:
                    res["changed"] = pass_changed(bench, plan)
                if "scale" in passes:
                    res["scale"] = pass_scale(bench, plan)
            finally:
                bench.drop_all()
    finally:
        origin.stop()
    res["minutes"] = (time.monotonic() - started) / 60
    (WORK / "postgresql-results.json").write_bytes(
        orjson.dumps(res, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    cmd = " ".join(["python benchmarks/postgresql.py", *sys.argv[1:]])
    text = pg_report.section(facts, cmd, res)
    pg_report.write_section(args.output, text)
    print(text)
    log(f"wrote {args.output} and {WORK / 'postgresql-results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
