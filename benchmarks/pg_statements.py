"""Where the PostgreSQL server's time goes with every poll a change: pg_stat_statements.

    python benchmarks/pg_statements.py                          # the installed bridge
    python benchmarks/pg_statements.py --code /tmp/old --code . # two trees, runs alternated

A private cluster (tests/cluster.py, the server's own binaries) with pg_stat_statements
preloaded; per tree and round, a fresh database, `bridge once` (the baseline), then --instances
`bridge run` daemons on postgresql.py's changed workload (--sources documents that change at
every request, every --every seconds, webhooks to nginx's 204 sink). After --warmup the
statistics are reset; after --window they are read with the events committed meanwhile (the
changes), the daemons' CPU and the cluster's backends' CPU. It prints, per tree, each statement
by total time: calls, mean, rows and shared blocks, and time and calls per change; with two
trees, the ratios of their totals per change. Figures of rounds of one tree are summed. Then
each table's rows written per change (and the share of HOT updates), and each index's scans.

The cluster runs with the tests' settings (fsync and synchronous commits off) unless --durable;
--explain MS has auto_explain log the plans of statements slower than MS (with ANALYZE and
buffers) to benchmarks/work/pg-statements/server.log. Statement times are wall times inside the
server (lock waits and the CPU the server did not get on a busy machine count): compare trees
run in the same invocation, and the server CPU per change beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.cluster

import harness  # noqa: E402
import pg_fleet  # noqa: E402
import pg_origin  # noqa: E402
from harness import ensure_nginx, fresh, log  # noqa: E402
from pg_server import ServerCpu  # noqa: E402

from tests import cluster as clusters  # noqa: E402

# A directory of its own: postgresql.py and pg_profile.py use benchmarks/work/postgresql.
WORK = harness.WORK / "pg-statements"
# pg_stat_statements needs the preload; nested statements (pg_notify's, a function's) count too.
EXTRA = ("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all",
         "pg_stat_statements.max=2000", "max_connections=100")  # fmt: skip

_READ = """
SELECT queryid, calls, total_exec_time, rows, shared_blks_hit + shared_blks_read,
       shared_blks_dirtied, wal_bytes, regexp_replace(query, '\\s+', ' ', 'g')
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s
"""


_TABLES = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY relname
"""
_INDEXES = "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes ORDER BY relname, indexrelname"


def cluster(explain: float | None = None, durable: bool = False) -> clusters.Cluster:
    """A private cluster with pg_stat_statements, started; with `explain` (ms), auto_explain
    logs the plans (analyzed, with buffers) of statements slower than that; `durable`: fsync,
    synchronous commits and full pages, as the shared server has them, not the tests' cluster."""
    bin_dir = clusters.binaries()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb)")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bridge-pgss-"))
    c = clusters.Cluster(bin_dir, root, harness.free_port())
    extra = list(EXTRA)
    if explain is not None:
        extra[0] += ",auto_explain"
        extra += [
            f"auto_explain.log_min_duration={explain:g}",
            "auto_explain.log_analyze=on",
            "auto_explain.log_buffers=on",
            "auto_explain.log_nested_statements=on",
        ]
    if durable:
        extra += ["fsync=on", "synchronous_commit=on", "full_page_writes=on"]
    c._options += " " + " ".join(f"-c {s}" for s in extra)
    c.start()
    return c


def server_cpu(c: clusters.Cluster) -> ServerCpu:
    """The cluster's CPU sampler. pg_server.postmaster reads its backend's /proc entry after
    closing the connection, so that backend may be gone already: a few tries."""
    for _ in range(5):
        try:
            return ServerCpu(set(), c.url().rpartition("/")[0], period=0.5)
        except FileNotFoundError:
            time.sleep(0.1)
    raise RuntimeError("cannot find the cluster's postmaster")


def one_run(
    c: clusters.Cluster,
    origin: pg_origin.Origin,
    code: Path | None,
    args: argparse.Namespace,
    cpu: ServerCpu,
) -> dict[str, Any]:
    """One tree's daemons on a fresh database: statements, changes, CPU over the window."""
    pg_fleet.CODE = code
    url = c.new_database()
    name = url.rpartition("/")[2]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    tag = f"pgss-{(code.name if code else 'installed')}"
    d = fresh(tag)
    urls = [origin.url(f"/changing/{i}.json") for i in range(args.sources)]
    cfg = pg_fleet.config(d / "bridge.yaml", url, urls, origin.url("/hook"), every=args.every)
    log(f"{tag}: baseline of {args.sources} sources")
    pg_fleet.once(cfg, "base", f"{tag}-first")
    cpu.databases.add(name)
    daemons = pg_fleet.start(cfg, args.instances, tag)
    try:
        time.sleep(args.warmup)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
            conn.execute("SELECT pg_stat_reset()")  # this database's table and index counts
            events0 = conn.execute("SELECT count(*) FROM events").fetchone()
            done0 = conn.execute(
                "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
            ).fetchone()
            pg0, b0, t0 = cpu.ours(), [x.cpu() for x in daemons], time.monotonic()
            time.sleep(args.window)
            rows = conn.execute(_READ, (name,)).fetchall()
            time.sleep(0.6)  # backends report their table counts up to 0.5 s late
            tables = conn.execute(_TABLES).fetchall()
            indexes = conn.execute(_INDEXES).fetchall()
            pg1, b1, t1 = cpu.ours(), [x.cpu() for x in daemons], time.monotonic()
            events1 = conn.execute("SELECT count(*) FROM events").fetchone()
            done1 = conn.execute(
                "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
            ).fetchone()
    finally:
        pg_fleet.stop_all(daemons)
    assert events0 and events1 and done0 and done1
    return {
        "seconds": t1 - t0,
        "changes": events1[0] - events0[0],
        "delivered": done1[0] - done0[0],
        "pg_cpu": pg1 - pg0,
        "bridge_cpu": sum(b1) - sum(b0),
        "load": pg_fleet.load(),
        "statements": rows,
        "tables": tables,
        "indexes": indexes,
    }


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one tree summed; statements keyed by their text."""
    out: dict[str, Any] = {k: sum(r[k] for r in runs) for k in
                           ("seconds", "changes", "delivered", "pg_cpu", "bridge_cpu")}  # fmt: skip
    out["loads"] = [r["load"] for r in runs]
    stmts: dict[str, list[float]] = defaultdict(lambda: [0.0] * 6)
    for r in runs:
        for _qid, calls, total, nrows, blks, dirtied, wal, text in r["statements"]:
            s = stmts[text]
            for i, v in enumerate((calls, total, nrows, blks, dirtied, float(wal or 0))):
                s[i] += float(v)
    out["statements"] = dict(stmts)
    tables: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in runs:
        for rel, *counts in r["tables"]:
            tables[rel] = [a + b for a, b in zip(tables[rel], counts, strict=True)]
    out["tables"] = dict(tables)
    scans: dict[str, int] = defaultdict(int)
    for r in runs:
        for index, n in r["indexes"]:
            scans[index] += n
    out["indexes"] = dict(scans)
    return out


def report(label: str, m: dict[str, Any], top: int) -> str:
    """One tree's figures and its statements by total time."""
    n = max(1, m["changes"])
    total = sum(s[1] for s in m["statements"].values())
    lines = [
        f"== {label}: {m['changes']} changes in {m['seconds']:.0f}s "
        f"({m['changes'] / m['seconds']:.0f}/s), {m['delivered']} delivered; loads {m['loads']}",
        f"   per change: statements {total / n:.3f} ms, server CPU {m['pg_cpu'] / n * 1e3:.3f} ms"
        f" (backends, helpers), bridge CPU {m['bridge_cpu'] / n * 1e3:.3f} ms",
        f"   {'total ms':>9} {'share':>5} {'ms/chg':>7} {'calls/chg':>9} {'mean ms':>8} "
        f"{'rows/call':>9} {'blks/call':>9} {'wal B/chg':>9}  statement",
    ]
    ranked = sorted(m["statements"].items(), key=lambda kv: -kv[1][1])
    for text, (calls, t, nrows, blks, _dirtied, wal) in ranked[:top]:
        c = max(1.0, calls)
        lines.append(
            f"   {t:9.0f} {t / max(total, 1e-9) * 100:4.0f}% {t / n:7.4f} {calls / n:9.3f} "
            f"{t / c:8.4f} {nrows / c:9.1f} {blks / c:9.1f} {wal / n:9.0f}  {text[:150]}"
        )
    lines.append("   rows per change: " + "; ".join(
        f"{rel} ins {i / n:.2f} upd {u / n:.2f} (HOT {h / max(u, 1) * 100:.0f}%) del {d / n:.2f}"
        for rel, (i, u, h, d) in sorted(m["tables"].items())))  # fmt: skip
    lines.append("   index scans: " + ", ".join(f"{k} {v}" for k, v in m["indexes"].items()))
    return "\n".join(lines)


def main() -> int:
    """Set up the cluster and origin, run each tree --rounds times (alternated), print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--code", type=Path, action="append", help="a source tree (repeatable)")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--sources", type=int, default=2000)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--durable", action="store_true", help="fsync and synchronous commits on")
    ap.add_argument("--explain", type=float, help="log plans slower than this (ms) to a file")
    args = ap.parse_args()
    harness.WORK = WORK
    WORK.mkdir(parents=True, exist_ok=True)
    trees: list[Path | None] = [p.resolve() for p in args.code] if args.code else [None]
    log(f"machine: {harness.machine()}")
    c = cluster(args.explain, args.durable)
    origin = pg_origin.Origin(ensure_nginx()).start()
    runs: dict[int, list[dict[str, Any]]] = defaultdict(list)
    try:
        with server_cpu(c) as cpu:
            for r in range(args.rounds):
                for i, tree in enumerate(trees):
                    log(f"round {r + 1}/{args.rounds}: {tree or 'installed bridge'}")
                    runs[i].append(one_run(c, origin, tree, args, cpu))
    finally:
        origin.stop()
        if args.explain is not None and c.log.exists():
            (WORK / "server.log").write_bytes(c.log.read_bytes())
            log(f"plans in {WORK / 'server.log'}")
        c.destroy()
    summed = {i: merged(rs) for i, rs in runs.items()}
    for i, tree in enumerate(trees):
        print(report(str(tree or "installed bridge"), summed[i], args.top), "\n")
    if len(trees) > 1:
        a, b = summed[0], summed[len(trees) - 1]

        def per(m: dict[str, Any], key: str) -> float:
            return float(m[key]) / max(1, int(m["changes"]))

        sa = sum(s[1] for s in a["statements"].values()) / max(1, a["changes"])
        sb = sum(s[1] for s in b["statements"].values()) / max(1, b["changes"])
        rate = b["changes"] / b["seconds"] / (a["changes"] / a["seconds"])
        print(
            f"last / first: changes/s {rate:.3f}x,"
            f" statement time per change {sb / sa:.3f}x, server CPU per change "
            f"{per(b, 'pg_cpu') / per(a, 'pg_cpu'):.3f}x, bridge CPU per change "
            f"{per(b, 'bridge_cpu') / per(a, 'bridge_cpu'):.3f}x; load now {os.getloadavg()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
