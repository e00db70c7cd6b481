"""Profile one benchmark pass of `bridge` (pyinstrument for `once`, py-spy for `run`).

    python benchmarks/profile.py unchanged   # pass 1: the second `bridge once` (all 304)
    python benchmarks/profile.py changed     # pass 2: one item changed in every document
    python benchmarks/profile.py steady      # pass 3: `bridge run`, sampled by py-spy
    python benchmarks/profile.py serve       # only serve (on --port) until Ctrl-C, to try things

Needs `pip install pyinstrument py-spy` in the same environment (not project dependencies).
Writes benchmarks/work/profiles/<what>.txt (pyinstrument) or steady.raw (py-spy's folded stacks).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    WORK,
    Nginx,
    bridge_config,
    change_docs,
    doc_url,
    ensure_nginx,
    fresh,
    log,
    make_docs,
)

BRIDGE = ["-m", "bridge", "--log-level", "warning"]


def main() -> int:
    """Set a pass up, then profile it."""
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("unchanged", "changed", "steady", "serve"))
    ap.add_argument("--port", type=int, default=18471, help="nginx's port (fixed: configs keep)")
    ap.add_argument("--sources", type=int, default=5000)
    ap.add_argument("--every", type=float, default=60.0)
    ap.add_argument("--duration", type=float, default=60.0)
    args = ap.parse_args()
    if args.what == "serve":
        nginx = Nginx(ensure_nginx(), args.port).start()
        log(f"serving on {nginx.url('/')}; configs in {WORK / 'profile-state'}")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # nginx is stopped on any exit
        try:
            nginx.proc.wait()  # type: ignore[union-attr]
        except KeyboardInterrupt:
            pass
        finally:
            nginx.stop()
        return 0
    out = WORK / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    d = fresh("profile-state")
    nginx = Nginx(ensure_nginx(), args.port).start()
    try:
        make_docs(args.sources)
        urls = [doc_url(nginx, i) for i in range(args.sources)]
        cfg = bridge_config(
            d / "bridge.yaml",
            "state.db",
            urls,
            nginx.url("/hook"),
            per_host=10,
            every=f"{args.every:g}s",
        )
        once = [sys.executable, *BRIDGE, "once", "-c", str(cfg)]
        log("baseline pass")
        subprocess.run(once, check=True, capture_output=True)
        if args.what == "changed":
            change_docs(args.sources, 2)
        if args.what in ("unchanged", "changed"):
            report = out / f"{args.what}.txt"
            profiler = [sys.executable, "-m", "pyinstrument", "-i", "0.0005", "-o", str(report)]
            cmd = [*profiler, *once[1:]]
            subprocess.run(cmd, check=True)
            log(f"wrote {report}")
            return 0
        run = [sys.executable, *BRIDGE, "run", "-c", str(cfg)]
        proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Past start-up and every source's first poll (which builds its request, metric children
        # and parsed URL once): the steady state only.
        time.sleep(args.every + 20.0)
        dest = out / "steady.raw"
        spy = ["py-spy", "record", "-p", str(proc.pid), "-d", f"{args.duration:.0f}", "-r", "200"]
        subprocess.run([*spy, "-f", "raw", "-o", str(dest)], check=True)
        log(f"wrote {dest} (folded stacks)")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
