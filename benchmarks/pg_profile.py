"""py-spy profiles of `bridge run` on PostgreSQL, for where postgresql.py's time goes.

    python benchmarks/pg_profile.py changed          # every poll a change (pass 2's setup)
    python benchmarks/pg_profile.py steady           # unchanged polls (pass 3's setup)
    python benchmarks/pg_profile.py steady --sqlite  # the same on SQLite, to compare
    python benchmarks/pg_profile.py idle --instances 4 --sources 1000   # the fixed costs
    python benchmarks/pg_profile.py idle --instances 4 --sources 50000 --warmup 120 --wall

Needs py-spy (`pip install py-spy`). On PostgreSQL it also samples pg_stat_activity every 0.1 s
for the same seconds: what our database's backends were doing (running, or waiting on what).
Samples the first instance for --duration seconds after
--warmup, with py-spy's --idle for `changed` or --wall (wall time: where the event loop waits)
and on-CPU only otherwise; `idle` polls one-item documents every 60 s, jitter 0, as
postgresql.py's scale pass does. It writes benchmarks/work/postgresql/profiles/pg-<what>.txt: each
function's share of the samples of each thread (inclusive, and the top of the stack), from
py-spy's raw stacks.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import pg_fleet  # noqa: E402
import pg_origin  # noqa: E402
from harness import doc_url, ensure_nginx, fresh, log, make_docs  # noqa: E402
from pg_server import drop_database, new_database  # noqa: E402
from postgresql import WORK, small_docs  # noqa: E402


def frame_name(frame: str) -> str:
    """`function (path/to/file.py:12)` -> `function file.py:12`."""
    name, _, where = frame.partition(" (")
    return f"{name} {where.rstrip(')').rsplit('/', 1)[-1]}"


def summary(raw: Path, top: int = 40) -> str:
    """Each thread's samples, and its functions' inclusive and own shares."""
    threads: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = {}
    own: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread, n = frames[0], int(count)
        threads[thread] += n
        seen = {frame_name(f) for f in frames[1:]}
        inclusive.setdefault(thread, Counter()).update(dict.fromkeys(seen, n))
        own.setdefault(thread, Counter())[frame_name(frames[-1])] += n
    total = sum(threads.values())
    out = [f"{total} samples"]
    for thread, n in threads.most_common():
        if n < total * 0.02:
            continue
        out += ["", f"== {thread}: {n} samples ({n / total * 100:.0f}%)", "-- inclusive"]
        out += [f"{c / n * 100:5.1f}% {f}" for f, c in inclusive[thread].most_common(top)]
        out += ["-- own"]
        out += [f"{c / n * 100:5.1f}% {f}" for f, c in own[thread].most_common(15)]
    return "\n".join(out)


class Waits:
    """What our database's backends do, sampled from pg_stat_activity in a thread."""

    def __init__(self, url: str):
        self.url = url
        self.seen: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Waits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        database = self.url.rpartition("/")[2]
        with psycopg.connect(self.url.rpartition("/")[0] + "/postgres", autocommit=True) as conn:
            while not self._stop.wait(0.1):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event, left(query, 50) FROM "
                    "pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                ).fetchall()
                for state, kind, event, query in rows:
                    if state == "active":
                        doing = f"{kind}:{event}" if kind else "on CPU"
                        self.seen[f"active, {doing}: {' '.join(query.split())}"] += 1
                    else:
                        self.seen[f"{state} ({kind}:{event})"] += 1

    def summary(self) -> str:
        """Each state's share of the backends' samples."""
        total = max(1, sum(self.seen.values()))
        lines = [f"pg_stat_activity: {total} backend samples"]
        lines += [f"{n / total * 100:5.1f}% {what}" for what, n in self.seen.most_common(25)]
        return "\n".join(lines)


def main() -> int:
    """Set up, start the daemons, sample the first, write the summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("changed", "steady", "idle"))
    ap.add_argument("--sqlite", action="store_true", help="a SQLite state instead")
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--sources", type=int, default=2000)
    ap.add_argument("--every", type=float, help="interval, s (changed 2, steady 15, idle 60)")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--wall", action="store_true", help="sample waiting threads too (--idle)")
    ap.add_argument("--on-cpu", action="store_true", help="`changed` on-CPU only (no --idle)")
    ap.add_argument("--code", type=Path, help="run bridge from this source tree")
    args = ap.parse_args()
    every = args.every or {"changed": 2.0, "steady": 15.0, "idle": 60.0}[args.what]
    harness.WORK = WORK
    pg_fleet.CODE = args.code.resolve() if args.code else None
    out = WORK / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    tag = f"pg-{args.what}{'-sqlite' if args.sqlite else ''}{'-cpu' if args.on_cpu else ''}"
    d = fresh(f"{tag}-state")
    origin = pg_origin.Origin(ensure_nginx()).start()
    url = None if args.sqlite else new_database()
    try:
        jitter = None
        if args.what == "changed":
            urls = [origin.url(f"/changing/{i}.json") for i in range(args.sources)]
        elif args.what == "idle":
            path = small_docs(args.sources)
            urls = [origin.url(path(i)) for i in range(args.sources)]
            jitter = "0s"
        else:
            make_docs(args.sources)
            urls = [doc_url(origin, i) for i in range(args.sources)]
        state = url or str(d / "state.db")
        hook = origin.url("/hook")
        cfg = pg_fleet.config(d / "bridge.yaml", state, urls, hook, every=every, jitter=jitter)
        log(f"baseline of {args.sources} sources")
        pg_fleet.once(cfg, "base", f"{tag}-first")
        daemons = pg_fleet.start(cfg, args.instances, tag)
        try:
            time.sleep(args.warmup)
            raw = out / f"{tag}.raw"
            spy = ["py-spy", "record", "-p", str(daemons[0].proc.pid), "-r", "100", "--threads"]
            spy += ["-d", f"{args.duration:.0f}", "-f", "raw", "-o", str(raw)]
            if (args.what == "changed" and not args.on_cpu) or args.wall:
                spy.append("--idle")
            log(" ".join(spy))
            waits = Waits(url) if url else None
            if waits is not None:
                with waits:
                    subprocess.run(spy, check=True, capture_output=True)
            else:
                subprocess.run(spy, check=True, capture_output=True)
        finally:
            pg_fleet.stop_all(daemons)
    finally:
        origin.stop()
        if url:
            drop_database(url)
    report = out / f"{tag}.txt"
    waited = waits.summary() + "\n\n" if waits is not None else ""
    report.write_text(waited + summary(raw) + "\n")
    log(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
