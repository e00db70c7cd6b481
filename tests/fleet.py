"""`bridge run` processes for the tests of several instances on one database and of a database
restart: each with a label of its own ($INSTANCE, which a shared config can send as a header, so
the origin tells who polled), its stderr in a file (a pipe nobody reads would fill up and stall a
chatty daemon), killed with SIGKILL or stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class Run:
    """One `bridge run -c CONFIG` process, labelled `label`."""

    def __init__(self, config: Path, label: str, logs: Path, env: dict[str, str] | None = None):
        self.label = label
        self.log_path = logs / f"{label}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "-c", str(config)],
                env={**os.environ, **(env or {}), "INSTANCE": label},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, and reap it."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful stop); its exit code. One still running after `timeout` is
        killed, and TimeoutExpired raised."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def log(self) -> str:
        return self.log_path.read_text()


def stop_all(runs: list[Run]) -> dict[str, int]:
    """Stop those still running with SIGTERM (killing any that does not stop in time); their
    exit codes by label (-9 for one that had to be killed)."""
    codes = {}
    for run in runs:
        if run.alive():
            try:
                codes[run.label] = run.stop()
            except subprocess.TimeoutExpired:
                codes[run.label] = -9
    return codes
