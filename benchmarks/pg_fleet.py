"""`bridge` processes of benchmarks/postgresql.py: configs, labelled daemons, their CPU.

One config serves every instance of a run: its defaults send $BENCH_INSTANCE as the X-Instance
header, so nginx's log tells which instance made each request (benchmarks/pg_origin.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import harness
from harness import Run, bridge_config, child_env, measure, proc_cpu

BRIDGE = [sys.executable, "-m", "bridge"]
# A source tree to run bridge from instead of the installed one (postgresql.py --code): first
# on PYTHONPATH, it comes before the editable install's finder.
CODE: Path | None = None
HEADER = "  headers:\n    X-Instance: ${BENCH_INSTANCE}\n"


def config(
    path: Path,
    state: str,
    urls: list[str],
    hook: str,
    *,
    every: float,
    per_host: int = 10,
    jitter: str | None = None,
) -> Path:
    """harness.bridge_config's file, its defaults also sending the instance's label (and
    `jitter:` when given)."""
    bridge_config(path, state, urls, hook, per_host=per_host, every=f"{every:g}s")
    extra = HEADER + (f"  jitter: {jitter}\n" if jitter is not None else "")
    text = path.read_text()
    assert "\ndefaults:\n" in text
    path.write_text(text.replace("\ndefaults:\n", "\ndefaults:\n" + extra, 1))
    return path


def env_for(label: str) -> dict[str, str]:
    """The measured programs' environment, with their label."""
    env = {**child_env(), "BENCH_INSTANCE": label}
    if CODE is not None:
        env["PYTHONPATH"] = str(CODE)
    return env


def once(cfg: Path, label: str, log_name: str) -> Run:
    """`bridge once -c cfg`, measured (its own rusage)."""
    cmd = [*BRIDGE, "--log-level", "warning", "once", "-c", str(cfg)]
    return measure(cmd, log_name=log_name, env=env_for(label))


class Daemon:
    """One `bridge run -c cfg` labelled `label`, its log (level info) under work/logs."""

    def __init__(self, cfg: Path, label: str, log_name: str):
        self.label = label
        self.log_path = harness.WORK / "logs" / f"{log_name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*BRIDGE, "--log-level", "info", "run", "-c", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=harness.WORK,
                env=env_for(label),
            )

    def cpu(self) -> float:
        """CPU seconds used so far (0 once it has exited)."""
        try:
            return proc_cpu(self.proc.pid)
        except OSError:
            return 0.0

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 60, *, signalled: bool = False) -> int:
        """SIGTERM (unless `signalled` already: a second one means "exit at once"), then its
        exit code (killed, -9, if it outlives `timeout`)."""
        if self.alive() and not signalled:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_lines(self, needle: str) -> list[str]:
        """Lines of its log that contain `needle`."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if needle in line]


def start(cfg: Path, count: int, tag: str) -> list[Daemon]:
    """`count` daemons on one config, labelled p1..pN."""
    return [Daemon(cfg, f"p{i + 1}", f"{tag}-p{i + 1}") for i in range(count)]


def stop_all(daemons: list[Daemon]) -> list[int]:
    """Stop them all at once (SIGTERM to each first), then their exit codes."""
    for d in daemons:
        if d.alive():
            d.proc.send_signal(signal.SIGTERM)
    return [d.stop(signalled=True) for d in daemons]


def total_cpu(daemons: list[Daemon]) -> float:
    """CPU seconds of the daemons so far."""
    return sum(d.cpu() for d in daemons)


def load() -> str:
    """The load average now (1/5/15 min)."""
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"
