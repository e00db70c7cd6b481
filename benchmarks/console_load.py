"""What an open console costs the daemon: pass 3 with the console refreshing beside pass 3 without.

    /work/venv/bin/python benchmarks/console_load.py            # 2,500 sources every 15 s
    /work/venv/bin/python benchmarks/console_load.py --sources 10000 --every 60 --window 120

One `bridge run` (as benchmarks/run.py's pass 3 runs it: N sources on nginx, baselined first with
`bridge once`) with http.listen set. Its CPU per poll is measured over windows of whole
intervals, alternately without a console client and with one that fetches what an open console
page refreshes, every 2 s: the sources page's live part, the queue page's, and a page of
/api/sources. Windows alternate in the same process and minutes because this machine is shared
(see RESULTS.md). The section between the console-load markers of RESULTS.md is replaced.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import (  # noqa: E402
    HERE,
    Nginx,
    bridge_config,
    child_env,
    count_lines,
    doc_url,
    ensure_nginx,
    free_port,
    fresh,
    log,
    machine,
    make_docs,
    measure,
    proc_cpu,
)

BRIDGE = [sys.executable, "-m", "bridge"]
START, END = "<!-- console-load:start -->", "<!-- console-load:end -->"
REFRESH = 2.0  # seconds between a console client's rounds of requests
FRAGMENT = {"X-Bridge-Fragment": "1"}


class ConsoleClient(threading.Thread):
    """Fetches the console's refresh requests every REFRESH seconds while `on` is set."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base = base
        self.on = threading.Event()
        self.done = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0

    def run(self) -> None:
        paths = [("/", FRAGMENT), ("/deliveries", FRAGMENT), ("/api/sources?limit=50", {})]
        while not self.done.is_set():
            if not self.on.wait(0.2):
                continue
            started = time.monotonic()
            for path, headers in paths:
                t0 = time.perf_counter()
                try:
                    request = urllib.request.Request(self.base + path, headers=headers)
                    with urllib.request.urlopen(request, timeout=10) as r:
                        r.read()
                    self.latencies.append(time.perf_counter() - t0)
                except OSError:
                    self.failures += 1
            time.sleep(max(0.0, started + REFRESH - time.monotonic()))


def window(pid: int, seconds: float) -> dict[str, float]:
    """The daemon's CPU and the polls nginx saw over `seconds`."""
    docs = harness.WORK / "docs.log"
    _, docs0 = count_lines(docs)
    cpu0, t0 = proc_cpu(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = proc_cpu(pid), time.monotonic()
    polls, _ = count_lines(docs, docs0, b"GET")
    return {"cpu": cpu1 - cpu0, "wall": t1 - t0, "polls": polls}


def run(n: int, every: float, length: float, rounds: int, per_host: int) -> dict[str, object]:
    """Baseline n sources, then alternate windows without and with the console client."""
    # Its own nginx, documents and logs, under benchmarks/work/console-load: run.py's pass 3
    # may be running beside it (the harness reads WORK at each call).
    harness.WORK = HERE / "work" / "console-load"
    nginx = Nginx(ensure_nginx()).start()
    proc: subprocess.Popen[bytes] | None = None
    client: ConsoleClient | None = None
    try:
        d = fresh("console")
        make_docs(n)
        urls = [doc_url(nginx, i) for i in range(n)]
        cfg = bridge_config(
            d / "bridge.yaml", "console.db", urls, nginx.url("/hook"), per_host=per_host,
            every=f"{every:g}s",
        )  # fmt: skip
        port = free_port()
        text = cfg.read_text().replace(
            f"http: {{per_host: {per_host}}}",
            f"http: {{per_host: {per_host}, listen: '127.0.0.1:{port}'}}",
        )
        cfg.write_text(text)
        log(f"console load: baseline of {n} sources with `bridge once`")
        measure([*BRIDGE, "once", "-q", "-c", str(cfg)], log_name="console-once")
        err = (harness.WORK / "logs" / "console-run.log").open("wb")
        proc = subprocess.Popen(
            [*BRIDGE, "--log-level", "warning", "run", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=harness.WORK,
            env=child_env(),
        )
        client = ConsoleClient(f"http://127.0.0.1:{port}")
        client.start()
        # Settle: the first polls of a process build their requests; wait one whole interval.
        log(f"console load: `bridge run`, settling for {every + 5:g}s")
        time.sleep(every + 5)
        without: list[dict[str, float]] = []
        with_console: list[dict[str, float]] = []
        for i in range(rounds):
            log(f"console load: round {i + 1}/{rounds}, {length:g}s without the console")
            without.append(window(proc.pid, length))
            client.on.set()
            log(f"console load: round {i + 1}/{rounds}, {length:g}s with it refreshing")
            with_console.append(window(proc.pid, length))
            client.on.clear()
        return {
            "n": n,
            "every": every,
            "length": length,
            "rounds": rounds,
            "without": without,
            "with": with_console,
            "latencies": client.latencies,
            "failures": client.failures,
        }
    finally:
        if client is not None:
            client.done.set()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        nginx.stop()


def per_poll(windows: list[dict[str, float]]) -> float:
    """CPU milliseconds per poll over windows."""
    polls = sum(w["polls"] for w in windows)
    return 1000 * sum(w["cpu"] for w in windows) / polls if polls else float("nan")


def report(res: dict[str, object]) -> str:
    """The RESULTS.md section."""
    without, with_ = res["without"], res["with"]
    assert isinstance(without, list) and isinstance(with_, list)
    latencies = res["latencies"]
    assert isinstance(latencies, list)
    a, b = per_poll(without), per_poll(with_)
    share = [sum(w["cpu"] for w in ws) / sum(w["wall"] for w in ws) for ws in (without, with_)]
    polls = [sum(w["polls"] for w in ws) for ws in (without, with_)]
    lat = sorted(latencies)
    p95 = lat[int(0.95 * (len(lat) - 1))] if lat else float("nan")
    m = machine()
    return "\n".join(
        [
            "## The console open beside pass 3 (benchmarks/console_load.py)",
            "",
            f"{m['date']}, {m['cpu']}, {m['cores']} cores, load {m['load']}.",
            f"One `bridge run` of {res['n']} sources every {res['every']:g}s; {res['rounds']} "
            f"round(s) of a {res['length']:g}s window without, then one with, a console "
            f"client that fetches the sources page's and the queue page's live parts and a page of "
            f"/api/sources every {REFRESH:g}s.",
            "",
            "| | polls | CPU share | CPU ms per poll |",
            "|---|---:|---:|---:|",
            f"| without the console | {polls[0]} | {share[0]:.1%} | {a:.3f} |",
            f"| console refreshing | {polls[1]} | {share[1]:.1%} | {b:.3f} |",
            f"| ratio (with / without) | | | **{b / a:.2f}** |",
            "",
            f"Console requests: {len(lat)} answered, {res['failures']} failed; median "
            f"{1000 * statistics.median(lat) if lat else float('nan'):.1f} ms, p95 "
            f"{1000 * p95:.1f} ms. The console added {share[1] - share[0]:+.1%} of a core "
            f"(a real open page asks for one live part every 3 s, a third of this load).",
            "",
            f"`python benchmarks/console_load.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        ]
    )


def write(section: str) -> None:
    """Replace the console-load section of RESULTS.md (appended the first time)."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{START}\n{section}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    """Run and write the section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=2500)
    ap.add_argument("--every", type=float, default=15.0, help="poll interval, s")
    ap.add_argument("--window", type=float, default=45.0, help="each window, s (whole intervals)")
    ap.add_argument("--rounds", type=int, default=1, help="pairs of windows")
    ap.add_argument("--per-host", type=int, default=10)
    args = ap.parse_args()
    res = run(args.sources, args.every, args.window, args.rounds, args.per_host)
    section = report(res)
    print(section)
    write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
