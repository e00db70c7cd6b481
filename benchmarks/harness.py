"""Benchmark plumbing: nginx, urlwatch's virtual environment, test documents, measured processes."""

from __future__ import annotations

import datetime
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
TICK = os.sysconf("SC_CLK_TCK")


def fresh(name: str) -> Path:
    """An empty directory under benchmarks/work."""
    d = WORK / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def log(msg: str) -> None:
    """Progress on stderr, with the time since start."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


# --- installing what the run needs ---------------------------------------------------------------


def ensure_nginx() -> str:
    """The nginx binary, installed with apt-get when missing (apt-get update first if needed)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if found:
        return found
    log("nginx missing: apt-get install nginx")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "nginx"]
    if os.geteuid() != 0:
        cmd.insert(0, "sudo")
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        update = ["apt-get", "update"] if os.geteuid() == 0 else ["sudo", "apt-get", "update"]
        subprocess.run(update, env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_urlwatch() -> Path:
    """urlwatch in its own virtual environment under benchmarks/work; returns its script."""
    venv = WORK / "urlwatch-venv"
    script = venv / "bin" / "urlwatch"
    if not script.exists():
        log("installing urlwatch into benchmarks/work/urlwatch-venv")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", "urlwatch"]
        subprocess.run(pip, check=True, capture_output=True)
    return script


def urlwatch_version(script: Path) -> str:
    """`urlwatch --version`."""
    return subprocess.run([str(script), "--version"], capture_output=True, text=True).stdout.strip()


# --- nginx ---------------------------------------------------------------------------------------

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    types {{ application/json json; }}
    default_type application/json;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    log_format counted "$request_method $uri $status";
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {work}/www;
        # The polled documents: nginx sends an ETag and answers If-None-Match with 304.
        # `before`: a client's If-Modified-Since of its last check (urlwatch) counts too.
        location /docs/ {{ access_log {work}/docs.log counted; if_modified_since before; }}
        # The same documents for the bare loop, logged apart: it runs beside `bridge run`.
        location /bare/ {{
            alias {work}/www/docs/;
            access_log {work}/bare.log counted;
            if_modified_since before;
        }}
        # The large document without validators: every poll is a 200 with the same bytes.
        location /large/ {{ etag off; if_modified_since off; }}
        # The webhook sink.
        location = /hook {{ access_log {work}/hook.log counted; return 204; }}
    }}
}}
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx on 127.0.0.1:<free port>, with every path it writes under benchmarks/work."""

    def __init__(self, binary: str, port: int | None = None):
        self.binary = binary
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        """An absolute URL on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Nginx:
        """Write the config and start nginx in the foreground (as our child)."""
        (WORK / "nginx-tmp").mkdir(parents=True, exist_ok=True)
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = WORK / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, work=WORK, port=self.port))
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(WORK), "-c", str(conf), "-e", str(WORK / "nginx-error.log")],
            stdout=subprocess.DEVNULL,
            stderr=open(WORK / "nginx-stderr.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((WORK / "nginx-stderr.log").read_text()) from None
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        """Stop nginx."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def count_lines(path: Path, since: int = 0, needle: bytes = b"") -> tuple[int, int]:
    """(lines containing needle after byte offset `since`, the file's size now)."""
    if not path.exists():
        return 0, 0
    with path.open("rb") as f:
        f.seek(since)
        data = f.read()
    return sum(1 for line in data.splitlines() if needle in line), since + len(data)


def file_size(path: Path) -> int:
    """Size in bytes, 0 when absent."""
    return path.stat().st_size if path.exists() else 0


# --- documents -----------------------------------------------------------------------------------

ITEMS_PER_DOC = 20


def doc_item(doc: int, k: int, version: int) -> dict[str, object]:
    """One item of a small document."""
    return {
        "id": k,
        "name": f"component-{doc}-{k}",
        "status": "operational",
        "version": version,
        "group": f"group-{k % 4}",
        "updated_at": "2026-11-29T19:30:00Z",
    }


def write_doc(doc: int, changed: int | None = None, version: int = 1) -> None:
    """Document `doc` (20 keyed items); item `changed` gets `version + 1`."""
    items = [
        doc_item(doc, k, version + 1 if k == changed else version) for k in range(ITEMS_PER_DOC)
    ]
    path = WORK / "www" / "docs" / f"{doc}.json"
    # Write then rename: nginx never serves a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"page": doc, "items": items}))
    tmp.replace(path)


def make_docs(n: int) -> None:
    """Documents 0..n-1 in their first version."""
    (WORK / "www" / "docs").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_doc(i)


def change_docs(n: int, round_: int) -> None:
    """Change one item of each of documents 0..n-1 (a different item each round)."""
    for i in range(n):
        write_doc(i, changed=(i + round_) % ITEMS_PER_DOC)


def doc_url(nginx: Nginx, i: int) -> str:
    """The URL of document i."""
    return nginx.url(f"/docs/{i}.json")


LARGE_ITEMS = 50_000


def large_items() -> list[dict[str, object]]:
    """50,000 items of about 165 bytes each."""
    return [
        {
            "id": k,
            "name": f"package-{k:05d}",
            "state": "published",
            "downloads": k * 7,
            "owner": {"login": f"user{k % 997}", "id": k % 997},
            "tags": ["stable", f"series-{k % 13}"],
            "updated_at": "2026-11-29T19:30:00Z",
        }
        for k in range(LARGE_ITEMS)
    ]


def change_some(items: list[dict[str, object]], fraction: float, seed: int) -> None:
    """Change `fraction` of the items in place (a new download count)."""
    for k in random.Random(seed).sample(range(len(items)), int(len(items) * fraction)):
        items[k]["downloads"] = int(items[k]["downloads"]) + 1  # type: ignore[call-overload]


def write_large(items: list[dict[str, object]]) -> int:
    """Write the large document; returns its size in bytes."""
    path = WORK / "www" / "large" / "big.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = orjson.dumps({"items": items})
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(body)
    tmp.replace(path)
    return len(body)


# --- configs -------------------------------------------------------------------------------------

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def bridge_config(
    path: Path,
    state: str,
    urls: list[str],
    hook: str,
    *,
    per_host: int,
    every: str = "5m",
    concurrency: int = 10,
) -> Path:
    """A bridge.yaml with one keyed `http` source per URL, all sending to the sink."""
    lines = [
        f"state: {state}",
        f"http: {{per_host: {per_host}}}",
        "defaults:",
        f"  every: {every}",
        "webhooks:",
        "  sink:",
        f"    url: {hook}",
        f"    secret: {SECRET}",
        f"    concurrency: {concurrency}",
        "sources:",
    ]
    for i, url in enumerate(urls):
        lines += [
            f"  - name: s{i:05d}",
            "    kind: http",
            f"    url: {url}",
            "    items: items",
            "    key: id",
            "    webhooks: [sink]",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def urlwatch_files(urls: list[str]) -> dict[str, Path]:
    """urlwatch's job list, config, hooks and cache paths (its own files under work/urlwatch)."""
    d = WORK / "urlwatch"
    d.mkdir(parents=True, exist_ok=True)
    jobs = d / "urls.yaml"
    jobs.write_text("\n---\n".join(f"name: u{i}\nurl: {u}" for i, u in enumerate(urls)) + "\n")
    hooks = d / "hooks.py"
    hooks.write_text("")
    return {"urls": jobs, "config": d / "urlwatch.yaml", "hooks": hooks, "cache": d / "cache.db"}


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured child process: wall, user and system CPU seconds, peak RSS, exit code."""

    wall: float
    user: float
    sys: float
    maxrss_mb: float
    code: int

    @property
    def cpu(self) -> float:
        """User plus system seconds."""
        return self.user + self.sys


def child_env() -> dict[str, str]:
    """Our environment for the measured programs, with bytecode caching on as installs have it.

    (PYTHONDONTWRITEBYTECODE=1 would make every run of an editable install compile its modules.)
    """
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(cmd: list[str], *, log_name: str, env: dict[str, str] | None = None) -> Run:
    """Run cmd to completion; its own rusage (wait4), not our process's or nginx's."""
    out = WORK / "logs" / f"{log_name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env or child_env(), cwd=WORK
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = out.read_text(errors="replace")[-2000:]
        log(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n{tail}")
    return Run(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_status(pid: int, key: str) -> float:
    """A kB field of /proc/PID/status (VmHWM, VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, str]:
    """CPU model, cores, Python, OS, date: the facts RESULTS.md starts with."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min, at start)",
    }
