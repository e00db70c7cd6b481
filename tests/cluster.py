"""A PostgreSQL server of a test's own, to stop, start and restart at will: the shared server on
127.0.0.1:5432 serves every other test and must never go down under them.

The cluster is made with the server's own binaries (initdb, pg_ctl) in a fresh directory under
the system's temporary directory, listening on 127.0.0.1:<a free port> with trust auth for user
`postgres`. initdb refuses to run as root, so as root the binaries run as the `postgres` user
(runuser), in a directory it owns; pytest's tmp_path is no use there, its parents being
root's alone. The binaries are $BRIDGE_TEST_PG_BIN, else the newest /usr/lib/postgresql/*/bin
(Debian's layout, as on every machine of this project). Without them the tests skip, except
under CI, where they fail: there they must run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port

# Written to the cluster's data: its durability on a machine crash is of no interest here.
SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=60")


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    given = os.environ.get("BRIDGE_TEST_PG_BIN")
    if given:
        return Path(given)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


class Cluster:
    """One PostgreSQL server in a directory of its own; `url(db)` reaches a database of it."""

    def __init__(self, bin_dir: Path, root: Path, port: int):
        self.bin_dir = bin_dir
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log = root / "server.log"
        sockets = root / "sockets"  # a Unix socket of its own: not the shared server's /run dir
        sockets.mkdir()
        self._chown(root, sockets)
        self._options = " ".join(
            [f"-p {port}", f"-k {sockets}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {setting}" for setting in SETTINGS]
        )
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip

    def _chown(self, *paths: Path) -> None:
        if os.getuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in paths:
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if os.getuid() == 0:  # initdb and postgres refuse root
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)}: {done.stdout}{done.stderr}")

    def _ctl(self, action: str, *args: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                  *args)  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        self._ctl("start", "-o", self._options)

    def stop(self) -> None:
        """Stop the server (fast: every session is ended at once, as a restart ends them)."""
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        """Stop and start again, waiting until it takes connections."""
        self._ctl("restart", "-m", "fast", "-o", self._options)

    def running(self) -> bool:
        """Whether the server is up."""
        try:
            self._ctl("status")
        except RuntimeError:
            return False
        return True

    def url(self, database: str = "postgres") -> str:
        """The URL of one of its databases (trust auth: no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database of this server; its URL."""
        name = f"bridge_test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server at once and remove its directory."""
        if self.running():
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A new cluster, started; destroyed after. Skips without the binaries (fails under CI)."""
    bin_dir = binaries()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        reason = f"no PostgreSQL server binaries (initdb) in {bin_dir or '/usr/lib/postgresql'}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} under CI")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="bridge-cluster-"))
    try:
        cluster = Cluster(bin_dir, root, free_port())
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        cluster.destroy()
