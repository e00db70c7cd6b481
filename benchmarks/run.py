"""Benchmarks of `bridge` against urlwatch and a bare aiohttp client, side by side in one run.

    /work/venv/bin/python benchmarks/run.py            # the full run, about 10 minutes
    /work/venv/bin/python benchmarks/run.py --quick    # a smoke run, under 3 minutes

Run it with the Python that has bridge installed. It installs what it needs (nginx with apt-get,
urlwatch into benchmarks/work/urlwatch-venv), serves the documents from nginx on 127.0.0.1, and
writes its tables into benchmarks/RESULTS.md between the generated-results markers.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    HERE,
    SECRET,
    WORK,
    Nginx,
    Run,
    bridge_config,
    change_docs,
    child_env,
    count_lines,
    doc_url,
    ensure_nginx,
    ensure_urlwatch,
    file_size,
    fresh,
    large_items,
    log,
    machine,
    make_docs,
    measure,
    proc_cpu,
    proc_status,
    urlwatch_files,
    urlwatch_version,
    write_large,
)
from report import med, report, write_results  # noqa: E402

BRIDGE = [sys.executable, "-m", "bridge"]


def bridge_once(cfg: Path, tag: str, bridge: list[str] = BRIDGE) -> Run:
    """`bridge once -c cfg`, measured (`bridge`: the command, this interpreter's by default)."""
    return measure([*bridge, "--log-level", "warning", "once", "-c", str(cfg)], log_name=tag)


def statuses(nginx: Nginx, since: int) -> tuple[dict[str, int], int]:
    """Counts of 200 and 304 answers on /docs/ since a docs.log offset, and the new offset."""
    ok, _ = count_lines(WORK / "docs.log", since, b" 200")
    nm, end = count_lines(WORK / "docs.log", since, b" 304")
    return {"200": ok, "304": nm}, end


# --- pass 1 and 2 --------------------------------------------------------------------------------


def pass_1_2(nginx: Nginx, n: int, per_host: int, repeats: int, urlwatch: Path) -> dict[str, Any]:
    """Unchanged pass (all 304) against urlwatch and the bare loop; then the changed pass."""
    d = fresh("p1")
    urls = [doc_url(nginx, i) for i in range(n)]
    cfg = bridge_config(d / "bridge.yaml", "p1.db", urls, nginx.url("/hook"), per_host=per_host)
    (d / "urls.txt").write_text("\n".join(urls) + "\n")
    shutil.rmtree(WORK / "urlwatch", ignore_errors=True)
    uw = urlwatch_files(urls)
    uw_cmd = [
        str(urlwatch),
        "--urls",
        str(uw["urls"]),
        "--config",
        str(uw["config"]),
        "--hooks",
        str(uw["hooks"]),
        "--cache",
        str(uw["cache"]),
    ]
    bare_cmd = [
        sys.executable,
        str(HERE / "bare_client.py"),
        str(d / "urls.txt"),
        str(d / "etags.json"),
        str(per_host),
    ]
    make_docs(n)
    out: dict[str, Any] = {"n": n, "per_host": per_host, "repeats": repeats}
    log(f"pass 1: first passes over {n} URLs (baseline, not compared)")
    out["bridge_first"] = bridge_once(cfg, "p1-bridge-first")
    out["urlwatch_first"] = measure(uw_cmd, log_name="p1-urlwatch-first")
    out["bare_first"] = measure(bare_cmd, log_name="p1-bare-first")
    runs: dict[str, list[Run]] = {"bridge": [], "urlwatch": [], "bare": []}
    checks: dict[str, list[dict[str, int]]] = {k: [] for k in runs}
    _, offset = statuses(nginx, 0)
    for r in range(repeats):
        log(f"pass 1: unchanged passes, round {r + 1}/{repeats}")
        for name, cmd in (
            ("bridge", [*BRIDGE, "--log-level", "warning", "once", "-c", str(cfg)]),
            ("urlwatch", uw_cmd),
            ("bare", bare_cmd),
        ):
            runs[name].append(measure(cmd, log_name=f"p1-{name}-{r}"))
            counted, offset = statuses(nginx, offset)
            checks[name].append(counted)
    out["runs"] = runs
    out["checks"] = checks

    log("pass 2: one item changed in every document")
    change_docs(n, 2)
    _, hook_offset = count_lines(WORK / "hook.log")
    out["changed_bridge"] = bridge_once(cfg, "p2-bridge")
    counted, offset = statuses(nginx, offset)
    delivered, _ = count_lines(WORK / "hook.log", hook_offset, b" 204")
    out["changed_checks"] = {**counted, "delivered": delivered}
    out["changed_urlwatch"] = measure(uw_cmd, log_name="p2-urlwatch")
    out["changed_urlwatch_checks"], offset = statuses(nginx, offset)
    # The floor: its ETags are still the first pass's, so every GET is a 200, and each is
    # POSTed to the sink, signed. Two requests per change, nothing detected or kept.
    _, hook_offset = count_lines(WORK / "hook.log")
    deliver = ["--deliver", nginx.url("/hook"), SECRET]
    out["changed_bare"] = measure([*bare_cmd, *deliver], log_name="p2-bare")
    counted, offset = statuses(nginx, offset)
    delivered, _ = count_lines(WORK / "hook.log", hook_offset, b" 204")
    out["changed_bare_checks"] = {**counted, "delivered": delivered}
    return out


# --- pass 3 --------------------------------------------------------------------------------------


def pass_3(
    nginx: Nginx,
    n: int,
    every: float,
    duration: float,
    per_host: int,
    bridge: list[str] = BRIDGE,
) -> dict[str, Any]:
    """`bridge run` with n sources every `every` seconds: CPU share and peak RSS."""
    d = fresh("p3")
    urls = [doc_url(nginx, i) for i in range(n)]
    make_docs(n)
    cfg = bridge_config(
        d / "bridge.yaml",
        "p3.db",
        urls,
        nginx.url("/hook"),
        per_host=per_host,
        every=f"{every:g}s",
    )
    out: dict[str, Any] = {"n": n, "every": every, "duration": duration}
    log(f"pass 3: baseline of {n} sources with `bridge once`")
    out["baseline"] = bridge_once(cfg, "p3-once", bridge)
    # The bare loop polls the same documents under /bare/ (logged apart), in the same minutes as
    # `bridge run`: this machine is shared, and CPU per poll moved by 20-40% from one minute to
    # the next, so only a comparison in the same window means anything.
    bare_urls = [url.replace("/docs/", "/bare/") for url in urls]
    (d / "urls.txt").write_text("\n".join(bare_urls) + "\n")
    bare = [
        sys.executable,
        str(HERE / "bare_client.py"),
        str(d / "urls.txt"),
        str(d / "etags.json"),
    ]
    measure([*bare, str(per_host)], log_name="p3-bare-first")  # its ETags, before the window
    log(f"pass 3: `bridge run` for {duration:g}s, the bare loop beside it")
    err = (WORK / "logs" / "p3-run.log").open("wb")
    bare_log = (WORK / "logs" / "p3-bare.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [*bridge, "--log-level", "warning", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=err,
        cwd=WORK,
        env=child_env(),
    )
    bare_proc: subprocess.Popen[bytes] | None = None
    try:
        # The window opens with the first poll: sources baselined a moment ago are not due for
        # an interval, and an idle stretch would flatter the CPU share.
        time.sleep(min(10.0, duration / 4))
        _, docs0 = count_lines(WORK / "docs.log")
        while file_size(WORK / "docs.log") == docs0 and time.monotonic() - started < duration / 2:
            time.sleep(0.2)
        cpu0, t0 = proc_cpu(proc.pid), time.monotonic()
        out["startup_cpu"] = cpu0
        out["startup_rss_mb"] = proc_status(proc.pid, "VmRSS")
        _, docs0 = count_lines(WORK / "docs.log")
        # The steady window opens once every source has been polled: a source's first poll in
        # a process also builds its request, metric children and parsed URL, once. It lasts
        # whole intervals: the baseline polled in a burst, so polls come in bursts, and a
        # window with part of one would miscount the rate.
        cpu_s = t_s = docs_s = None
        rounds = int((duration - (time.monotonic() - started)) // every) - 1
        if rounds >= 1:
            # The bare loop settles for one interval too, then measures the same rounds.
            length = f"{(rounds + 1) * every:g}"
            bare_proc = subprocess.Popen(
                [*bare, str(per_host), str(every), length, str(every)],
                stdout=bare_log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
            time.sleep(every)
            cpu_s, t_s = proc_cpu(proc.pid), time.monotonic()
            _, docs_s = count_lines(WORK / "docs.log")
            time.sleep(max(0.0, t_s + rounds * every - time.monotonic()))
        else:
            time.sleep(max(0.0, duration - (time.monotonic() - started)))
        cpu1, t1 = proc_cpu(proc.pid), time.monotonic()
        polls, _ = count_lines(WORK / "docs.log", docs0, b"GET")
        out["window"] = t1 - t0
        out["cpu"] = cpu1 - cpu0
        out["share"] = (cpu1 - cpu0) / (t1 - t0)
        out["polls"] = polls
        if cpu_s is not None and t_s is not None and docs_s is not None:
            steady_polls, _ = count_lines(WORK / "docs.log", docs_s, b"GET")
            out["steady"] = {
                "window": t1 - t_s,
                "cpu": cpu1 - cpu_s,
                "share": (cpu1 - cpu_s) / (t1 - t_s),
                "polls": steady_polls,
            }
        out["hwm_mb"] = proc_status(proc.pid, "VmHWM")
        out["rss_mb"] = proc_status(proc.pid, "VmRSS")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out["exit"] = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out["exit"] = proc.wait()
        err.close()
        if bare_proc is not None:
            try:
                bare_proc.wait(3 * every)
            except subprocess.TimeoutExpired:
                # A hung bare loop gives no result; raising here would hide any earlier error.
                bare_proc.kill()
                bare_proc.wait()
        bare_log.close()
    text = (WORK / "logs" / "p3-bare.log").read_text().strip().splitlines()
    out["bare"] = None
    if bare_proc is not None and bare_proc.returncode == 0 and text:
        out["bare"] = orjson.loads(text[-1])
    return out


# --- pass 4 --------------------------------------------------------------------------------------

LARGE_CONFIG = """state: p4.db
webhooks:
  sink: {{url: "{hook}", secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}}
sources:
  - name: big
    kind: http
    url: {url}
    items: items
    key: id
    webhooks: [sink]
"""


def pass_4(nginx: Nginx, rounds: int) -> dict[str, Any]:
    """One 50,000-item document without validators: unchanged, then 1% changed."""
    d = fresh("p4")
    cfg = d / "bridge.yaml"
    cfg.write_text(LARGE_CONFIG.format(hook=nginx.url("/hook"), url=nginx.url("/large/big.json")))
    size = write_large(large_items())
    log(f"pass 4: one document of {size / 1e6:.1f} MB")
    run = measure(
        [sys.executable, str(HERE / "large_poll.py"), str(cfg), str(rounds)], log_name="p4"
    )
    text = (WORK / "logs" / "p4.log").read_text().strip().splitlines()
    result: dict[str, Any] = orjson.loads(text[-1]) if run.code == 0 else {}
    return {"process": run, "size": size, **result}


# --- start-up ------------------------------------------------------------------------------------


def startup(repeats: int = 5) -> dict[str, Any]:
    """Wall time of `bridge --help`, and the import time of everything `once` loads."""
    helps = [measure([*BRIDGE, "--help"], log_name="startup-help") for _ in range(repeats)]
    code = (
        "import bridge.cli.main, bridge.polling.engine, bridge.http, bridge.state, "
        "bridge.sources.http"
    )
    imports = [
        measure([sys.executable, "-X", "importtime", "-c", code], log_name="startup-imports")
        for _ in range(repeats)
    ]
    total = 0
    for line in (WORK / "logs" / "startup-imports.log").read_text().splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].startswith("import time:") and parts[1].strip().isdigit():
            if not parts[2].startswith("  "):  # top level: the cumulative column counts it all
                total += int(parts[1])
    return {
        "help_wall": med(helps, "wall"),
        "help_cpu": med(helps, "cpu"),
        "once_imports_wall": med(imports, "wall"),
        "once_imports_self_us": total,
    }


def main() -> int:
    """Parse flags, run the passes, write the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer sources, shorter")
    ap.add_argument("--sources", type=int, help="pass 1-2 sources (default 5000; quick 1000)")
    ap.add_argument("--repeats", type=int, help="rounds of pass 1 (default 3; quick 1)")
    ap.add_argument("--per-host", type=int, default=10, help="concurrency of every client")
    ap.add_argument("--steady-sources", type=int, help="pass 3 sources (10000; quick 2500)")
    ap.add_argument("--steady-every", type=float, help="pass 3 interval, s (60; quick 15)")
    ap.add_argument("--duration", type=float, help="pass 3 duration, s (300; quick 45)")
    ap.add_argument("--passes", default="0,1,3,4", help="0 start-up, 1 (with 2), 3, 4")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    quick = args.quick
    n = args.sources or (1000 if quick else 5000)
    repeats = args.repeats or (1 if quick else 3)
    steady_n = args.steady_sources or (2500 if quick else 10000)
    every = args.steady_every or (15.0 if quick else 60.0)
    duration = args.duration or (45.0 if quick else 300.0)
    passes = set(args.passes.split(","))

    # SIGTERM too unwinds through the finally blocks that stop nginx and `bridge run`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    facts = machine()
    WORK.mkdir(parents=True, exist_ok=True)
    nginx = Nginx(ensure_nginx())
    urlwatch = ensure_urlwatch() if "1" in passes else Path()
    for name in ("docs.log", "hook.log"):
        (WORK / name).unlink(missing_ok=True)
    nginx.start()
    log(f"nginx on 127.0.0.1:{nginx.port}")
    res: dict[str, Any] = {}
    try:
        if "0" in passes:
            res["startup"] = startup()
        if "1" in passes:
            log(urlwatch_version(urlwatch))
            res["p1"] = pass_1_2(nginx, n, args.per_host, repeats, urlwatch)
        if "4" in passes:
            res["p4"] = pass_4(nginx, 3 if quick else 5)
        if "3" in passes:
            res["p3"] = pass_3(nginx, steady_n, every, duration, args.per_host)
    finally:
        nginx.stop()
    cmd = " ".join(["python benchmarks/run.py", *sys.argv[1:]])
    generated = report(facts, cmd, res)
    write_results(args.output, generated)
    (WORK / "last-results.json").write_bytes(
        orjson.dumps(res, default=lambda o: o.__dict__, option=orjson.OPT_INDENT_2)
    )
    print(generated)
    log(f"wrote {args.output}; docs.log {file_size(WORK / 'docs.log')} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
