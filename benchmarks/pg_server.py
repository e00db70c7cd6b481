"""The PostgreSQL server of the benchmarks: databases made and dropped, and the server's own CPU.

The server (postgresql://postgres@127.0.0.1:5432 by default) is shared with other people's test
runs, so two figures are kept: the CPU of every process of the server (the postmaster, its live
children and those it reaped), and ours: the backends and autovacuum workers of the databases
this run made, plus the server's own helpers (checkpointer, writers), which work for every
database. A backend's CPU is read from /proc/PID/stat while it lives; one that exits keeps the
last figure read, so the sampler reads often while short-lived clients (`bridge once`) run.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import psycopg
from harness import TICK

SERVER = "postgresql://postgres@127.0.0.1:5432"
# Children of the postmaster that no client starts: they serve every database.
HELPERS = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical")


def new_database(server: str = SERVER) -> str:
    """A fresh, empty database (bench_<random>); its URL. Drop it with drop_database()."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return f"{server}/{name}"


def drop_database(url: str) -> None:
    """Drop a database made by new_database(), ending its connections."""
    server, _, name = url.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def postmaster(server: str = SERVER) -> int:
    """The pid of the server's postmaster: the parent of a backend of ours."""
    with psycopg.connect(f"{server}/postgres") as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return _stat(int(row[0]))[1]  # read while the backend lives: it exits with the conn


def _stat(pid: int) -> tuple[str, int, float, float]:
    """(state, parent pid, own CPU s, reaped children's CPU s) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    reaped = (int(fields[13]) + int(fields[14])) / TICK
    return fields[0], int(fields[1]), own, reaped


def _children(parent: int) -> dict[int, float]:
    """Live children of `parent` and their CPU seconds so far."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            _, ppid, own, _ = _stat(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone since the listing
        if ppid == parent:
            found[int(entry.name)] = own
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class ServerCpu:
    """CPU seconds of the server's processes, read every `period` seconds in a thread.

    `ours()` and `everything()` are running totals: a window's CPU is the difference of two.
    """

    def __init__(self, databases: set[str], server: str = SERVER, period: float = 0.25):
        self.databases = databases  # names of the databases whose backends count as ours
        self.pid = postmaster(server)
        self.period = period
        self._last: dict[int, float] = {}  # pid of ours -> CPU last read (kept once it exits)
        self._first: dict[int, float] = {}  # pid of ours -> CPU when first seen
        self._kinds: dict[int, bool] = {}  # pid -> whether it is ours (its title, read once)
        self._started = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ServerCpu:
        self._read()
        self._started = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._read()

    def _ours(self, pid: int) -> bool:
        kind = self._kinds.get(pid)
        if kind is None:
            title = _title(pid)
            words = set(title.split())
            kind = bool(words & self.databases) or any(h in title for h in HELPERS)
            if title.startswith("postgres: "):  # not a child that has not set its title yet
                self._kinds[pid] = kind
        return kind

    def _read(self) -> dict[int, float]:
        live = _children(self.pid)
        with self._lock:
            for pid, cpu in live.items():
                if self._ours(pid):
                    # One first seen after the start counts from zero: it started since.
                    self._first.setdefault(pid, 0.0 if self._started else cpu)
                    self._last[pid] = cpu
        return live

    def ours(self) -> float:
        """CPU seconds of our backends and the server's helpers, read now."""
        self._read()
        with self._lock:
            return sum(self._last[pid] - self._first[pid] for pid in self._last)

    def everything(self) -> float:
        """CPU seconds of every process of the server (exact: reaped children count too)."""
        live = _children(self.pid)
        _, _, own, reaped = _stat(self.pid)
        return own + reaped + sum(live.values())

    def fast(self, period: float) -> None:
        """Read every `period` seconds from now on (short-lived clients lose less CPU)."""
        self.period = period
