"""What people who run services expect of `bridge run`: failures visible in `status` at once,
metrics for dashboards and staleness alerts, systemd's notifications and watchdog, a state file
that is removed, replaced or full said out loud, and delivery leases as the README tells them."""

from __future__ import annotations

import asyncio
import io
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from standardwebhooks import Webhook

import bridge
from bridge.delivery.dispatcher import Dispatcher
from bridge.delivery.worker import LEASE_MARGIN
from bridge.service.daemon import HEALTH_INTERVAL
from bridge.service.notify import Notifier
from bridge.state import open_scratch_state, open_state
from tests.conftest import (
    SECRET,
    Origin,
    Receiver,
    bridge_config,
    engine_for,
    http_source,
    run_cli,
    wait_for,
    webhook,
)
from tests.test_ops import ENV, api_source, free_port, get, hook, scrape, start_daemon, value

ROOT = Path(__file__).resolve().parent.parent


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the daemon; its stderr. It must exit 0 and print no traceback."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def status_json(path: Path) -> dict[str, Any]:
    result = run_cli("status", "--json", "-c", str(path), env=ENV)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = orjson.loads(result.stdout)
    return doc


def source_status(path: Path, name: str) -> dict[str, Any]:
    [row] = [s for s in status_json(path)["sources"] if s["name"] == name]
    return row


def failing(url: str, **options: Any) -> dict[str, Any]:
    """`down`, polled every second, sending to `hook`."""
    every = {"every": "1s", "jitter": "0s", "timeout": "2s", "webhooks": ["hook"]}
    return http_source("down", url, **{**every, **options})


# --- 19.10: a failed poll is written at once ----------------------------------------------------


@pytest.mark.slow
def test_a_failed_poll_shows_in_status_at_once(write_config, origin, receiver):
    origin.set("/down", body=b"", status=503)
    down = failing(origin.url("/down"), every="1h")  # no next poll comes to write it either
    path = write_config(bridge_config(down, webhooks=hook(receiver.url())))
    proc = start_daemon(path)
    try:
        wait_for(lambda: len(origin.hits("/down")) == 1, timeout=15)
        # Unchanged polls are written in batches every 10 s; a failure must not wait for one.
        wait_for(lambda: source_status(path, "down")["failures"] == 1, timeout=5)
        row = source_status(path, "down")
    finally:
        stop(proc)
    assert row["last_poll"] is not None
    assert row["result"] == "error" and "503" in row["error"]


# --- 19.12: metrics -----------------------------------------------------------------------------


def scrape_openmetrics(port: int) -> tuple[str, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


@pytest.mark.slow
def test_a_running_daemon_exposes_build_process_staleness_and_retries(
    write_config, origin: Origin, receiver: Receiver
):
    port = free_port()
    origin.set("/items", [{"id": 1, "v": 1}])
    origin.set("/down", body=b"", status=500)
    path = write_config(
        bridge_config(
            api_source(origin.url("/items"), "1s"),
            failing(origin.url("/down")),
            http={"listen": f"127.0.0.1:{port}"},
            webhooks=hook(receiver.url()),
        )
    )
    proc = start_daemon(path)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=15)
        wait_for(lambda: len(origin.hits("/items")) >= 1, timeout=15)
        receiver.answer(500)  # the first attempt fails and is retried 100 ms later
        origin.set("/items", [{"id": 1, "v": 2}])
        wait_for(lambda: len(receiver.received) >= 2, timeout=15)
        delivered = {"webhook": "hook", "result": "delivered"}
        wait_for(lambda: value(scrape(port), "bridge_deliveries_total", **delivered) == 1)
        wait_for(lambda: value(scrape(port), "bridge_polls_total", source="down", result="error"))
        m = scrape(port)
        content_type, om_text = scrape_openmetrics(port)
    finally:
        stop(proc)

    assert value(m, "bridge_build_info", version=bridge.__version__) == 1
    assert value(m, "process_start_time_seconds") > 0  # prometheus-client's process collector
    assert value(m, "process_resident_memory_bytes") > 0
    assert ("python_info", frozenset()) not in m  # labelled by version:
    assert any(name == "python_info" for name, _ in m)  # ... the platform collector's
    last = value(m, "bridge_source_last_success_timestamp_seconds", source="api")
    assert abs(last - time.time()) < 30
    never = [labels for name, labels in m if name == "bridge_source_last_success_timestamp_seconds"]
    assert frozenset({("source", "down")}) not in never  # it never succeeded
    assert value(m, "bridge_deliveries_total", webhook="hook", result="retry") == 1
    assert ("bridge_deliveries_total", frozenset({("webhook", "hook"), ("result", "pending")})) \
        not in m  # fmt: skip

    # Every series the README's alerting rules use is one the daemon serves.
    readme = (ROOT / "README.md").read_text()
    [rules] = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "alert: " in b]
    used = set(re.findall(r"\bbridge_\w+", rules))
    assert "bridge_source_last_success_timestamp_seconds" in used
    assert used <= {name for name, _ in m}, used - {name for name, _ in m}

    assert content_type.startswith("application/openmetrics-text")
    assert om_text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(om_text)}
    assert families["bridge_build"].type == "info"
    assert families["bridge_polls"].type == "counter"
    assert families["bridge_poll_duration_seconds"].type == "histogram"
    [api_last] = [
        s
        for s in families["bridge_source_last_success_timestamp_seconds"].samples
        if s.labels == {"source": "api"}
    ]
    assert abs(api_last.value - last) < 30


@pytest.mark.slow
def test_last_success_survives_a_restart_and_forgets_removed_sources(
    write_config, origin: Origin, receiver: Receiver
):
    port = free_port()
    origin.set("/items", [{"id": 1}])
    listen = {"listen": f"127.0.0.1:{port}"}
    api = api_source(origin.url("/items"), "1h")
    path = write_config(bridge_config(api, http=listen, webhooks=hook(receiver.url())))
    run_cli("once", "-c", str(path), env=ENV)  # one success, a while before the daemon starts
    polled_at = source_status(path, "api")["last_poll"]
    origin.set("/items", body=b"", status=500)
    proc = start_daemon(path)  # `api` is not due for an hour: its last success is the stored one
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=15)
        m = scrape(port)
        seeded = value(m, "bridge_source_last_success_timestamp_seconds", source="api")
        path.write_text(bridge_config(state="state.db", http=listen, webhooks=hook(receiver.url())))
        proc.send_signal(signal.SIGHUP)
        last = "bridge_source_last_success_timestamp_seconds"
        wait_for(lambda: not any(name == last for name, _ in scrape(port)))
    finally:
        stop(proc)
    assert abs(seeded - polled_at) < 1


# --- 19.13: systemd -----------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound unix datagram socket, as systemd's; a short path (sun_path holds 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="bridge-notify-")
    address = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    try:
        yield sock, address
    finally:
        sock.close()
        shutil.rmtree(folder)


def receive(sock: socket.socket, until: str, timeout: float = 15) -> list[tuple[float, str]]:
    """Datagrams (arrival time, text) up to and including the first that holds `until`."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            text = sock.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no {until!r} in {got}") from None
        got.append((time.monotonic(), text))
        if until in text.splitlines():
            return got


@pytest.mark.slow
def test_the_daemon_tells_systemd_ready_watchdog_and_stopping(
    write_config, origin, receiver, notify_socket
):
    sock, address = notify_socket
    port = free_port()
    origin.set("/items", [{"id": 1}])
    path = write_config(
        bridge_config(
            api_source(origin.url("/items"), "1s"),
            http={"listen": f"127.0.0.1:{port}"},
            webhooks=hook(receiver.url()),
        )
    )
    env = {**os.environ, **ENV, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        before_ready = receive(sock, "READY=1")
        # Ready means ready: the endpoints answer and the state file is there.
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert (path.parent / "state.db").exists()
        ready = before_ready[-1][1].splitlines()
        assert "STATUS=running: 1 sources" in ready
        pings = [at for at, text in receive(sock, "WATCHDOG=1") if text == "WATCHDOG=1"]
        for _ in range(3):
            pings += [at for at, text in receive(sock, "WATCHDOG=1") if text == "WATCHDOG=1"]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert all(gap < 0.4 for gap in gaps), gaps  # half of WATCHDOG_USEC, not the whole
        proc.send_signal(signal.SIGTERM)
        receive(sock, "STOPPING=1")
        _, err = proc.communicate(timeout=30)
    finally:
        err = stop(proc)  # only if the test failed before: systemd sends SIGTERM once
    assert "cannot notify" not in err


@pytest.mark.slow  # waits for real time
async def test_watchdog_pings_come_from_the_event_loop_and_stop_while_it_stalls() -> None:
    name = f"bridge-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)  # the abstract namespace: NOTIFY_SOCKET=@name
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "100000"})
    arrivals: list[float] = []

    def drain() -> None:
        while True:
            try:
                assert sock.recv(64) == b"WATCHDOG=1"
            except BlockingIOError:
                return
            arrivals.append(time.monotonic())

    pinger = asyncio.create_task(notifier.keep_alive())
    try:
        await asyncio.sleep(0.3)
        drain()
        assert len(arrivals) >= 3
        stalled_at = time.monotonic()
        time.sleep(0.6)  # the event loop stalls: no ping may go out meanwhile
        await asyncio.sleep(0.2)
        drain()
    finally:
        pinger.cancel()
        notifier.close()
        sock.close()
    during = [at for at in arrivals if stalled_at < at < stalled_at + 0.55]
    assert during == []
    assert arrivals[-1] > stalled_at + 0.55  # and they resume with the loop


def test_outside_systemd_notifying_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog is None
    notifier.send("READY=1")  # nothing to send to: nothing happens, nothing raises
    other_pid = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog is None  # meant for another process


def test_the_systemd_unit_waits_for_ready_and_has_a_watchdog() -> None:
    unit = (ROOT / "contrib" / "bridge.service").read_text()
    lines = unit.splitlines()
    assert "Type=notify" in lines and "Type=exec" not in lines
    [watchdog] = [line for line in lines if line.startswith("WatchdogSec=")]
    assert watchdog.removeprefix("WatchdogSec=").rstrip("s").isdigit()
    assert "AF_UNIX" in next(line for line in lines if line.startswith("RestrictAddressFamilies="))


# --- 15.13: the state file's health -------------------------------------------------------------


def daemon_with_health(write_config, origin: Origin, receiver: Receiver) -> tuple[Path, int]:
    port = free_port()
    origin.set("/items", [{"id": 1}])
    origin.set("/down", body=b"", status=500)  # polls that fail are written at once: writes
    path = write_config(
        bridge_config(
            api_source(origin.url("/items"), "1s"),
            failing(origin.url("/down")),
            http={"listen": f"127.0.0.1:{port}"},
            webhooks=hook(receiver.url()),
        )
    )
    return path, port


@pytest.mark.slow
@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_state_file_removed_or_replaced_turns_healthz_503_and_says_so(
    write_config, origin, receiver, how: str
):
    path, port = daemon_with_health(write_config, origin, receiver)
    state_file = path.parent / "state.db"
    health = f"http://127.0.0.1:{port}/healthz"
    proc = start_daemon(path)
    try:
        wait_for(lambda: get(health) == (200, "ok\n"), timeout=15)
        if how == "removed":
            state_file.unlink()
        else:  # a restore from a backup over the running daemon's file
            shutil.copy(state_file, path.parent / "copy.db")
            os.replace(path.parent / "copy.db", state_file)
        changed = time.monotonic()
        wait_for(lambda: get(health)[0] == 503, timeout=10)
        assert time.monotonic() - changed < 10
        status, text = get(health)
        time.sleep(HEALTH_INTERVAL + 0.5)  # a check of the state's health or more: it is said
        assert (how == "removed") != state_file.exists()  # the probe made no new file
    finally:
        err = stop(proc)
    line = f"state file {state_file} was removed or replaced while running; restart bridge"
    assert (status, text) == (503, f"unhealthy: {line}\n")
    assert err.count(line) == 1, err  # said once, not at every check


@pytest.mark.slow
def test_failing_writes_turn_healthz_503_until_they_succeed_again(write_config, origin, receiver):
    path, port = daemon_with_health(write_config, origin, receiver)
    health = f"http://127.0.0.1:{port}/healthz"
    proc = start_daemon(path)
    try:
        wait_for(lambda: get(health) == (200, "ok\n"), timeout=15)
        # A full disk, for this process only: no file of it may grow past 1 byte. (Python
        # ignores SIGXFSZ, so a write fails with EFBIG, which SQLite reports as an I/O error.)
        # The write lock is still free, so the old probe (take the lock) said ok throughout.
        soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, hard))
        wait_for(lambda: get(health)[0] == 503, timeout=10)
        time.sleep(HEALTH_INTERVAL + 1)  # every write keeps failing: the daemon says so
        status, text = get(health)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
        wait_for(lambda: get(health) == (200, "ok\n"), timeout=10)
        time.sleep(HEALTH_INTERVAL + 0.5)
    finally:
        err = stop(proc)
    assert status == 503
    assert text.startswith(f"unhealthy: state file {path.parent / 'state.db'}: writes failing: ")
    assert text.endswith(": writes failing: disk I/O error\n")
    assert err.count("writes failing: disk I/O error") == 1, err
    assert "writes succeed again" in err


def test_the_state_says_when_its_file_is_removed_or_replaced(tmp_path: Path) -> None:
    location = str(tmp_path / "state.db")
    state = open_state(location)
    other = open_state(str(tmp_path / "other.db"))
    scratch = open_scratch_state()
    try:
        assert state.problem() is None and scratch.problem() is None
        os.rename(location, tmp_path / "moved.db")
        expected = f"state file {location} was removed or replaced while running; restart bridge"
        assert state.problem() == expected
        assert not state.writable()
        assert not Path(location).exists()  # neither question made a file
        os.replace(tmp_path / "other.db", location)  # another file under the same name
        assert state.problem() == expected
        os.replace(location, tmp_path / "other.db")
        os.rename(tmp_path / "moved.db", location)  # the same file back
        assert state.problem() is None
    finally:
        for s in (state, other, scratch):
            s.close()


@pytest.mark.slow  # runs each command
@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("events",),
        ("deliveries",),
        ("replay", "evt_0123456789abcdef0123456789abcdef"),
        ("replay", "--dead"),
        ("discard", "--source", "api"),
    ],
    ids=" ".join,
)
def test_read_only_commands_never_create_a_state_file(write_config, tmp_path, args) -> None:
    path = write_config(bridge_config(http_source("api", "http://127.0.0.1:9/items")))
    result = run_cli(*args, "-c", str(path))
    assert result.code == 1, result
    [line] = result.stderr.splitlines()
    assert str(tmp_path / "state.db") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge.yaml"]


# --- 15.14: a delivery's lease ------------------------------------------------------------------


async def test_a_delivery_in_flight_is_leased_for_the_timeout_plus_30_seconds(
    write_config, origin, receiver
) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "its lease, the webhook timeout plus 30 s" in readme
    assert LEASE_MARGIN == 30
    origin.set("/items", [{"id": 1}])
    receiver.delay = 3.0  # the attempt is still out when another process looks
    hooks = {"hook": webhook(receiver.url(), SECRET, timeout="5s")}
    source = http_source("api", origin.url("/items"), items="@", key="id", webhooks=["hook"])
    path = write_config(bridge_config(source, webhooks=hooks, defaults={"on_first_poll": "emit"}))
    at = time.time() + 1000  # the worker's clock; the event is due long before it
    async with engine_for(path) as pipeline:
        await pipeline.poll("api")
        dispatcher = Dispatcher(
            pipeline.engine.config.webhooks,
            pipeline.state.outbox,
            pipeline.engine.http,
            out=io.StringIO(),
            clock=lambda: at,
        )
        dispatcher.start()
        other = open_state(pipeline.state.location)  # another process's view of the file
        try:
            await asyncio.wait_for(_until(lambda: receiver.in_flight == 1), 10)
            assert other.outbox.claim_due("hook", at + 5 + 29, 1, 60.0) == []
            [taken] = other.outbox.claim_due("hook", at + 5 + 31, 1, 60.0)
        finally:
            dispatcher.abort()
            await dispatcher.stop(0)
            other.close()
    assert taken.source == "api"


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


# --- 19.14: `bridge listen` checks signatures with standardwebhooks itself ------------------------


def signed_request(body: bytes, secret: str) -> dict[str, str]:
    from datetime import UTC, datetime

    at = datetime.now(UTC)
    return {
        "webhook-id": "evt_listen1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign("evt_listen1", at, body.decode()),
    }


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_listen_verifies_with_standardwebhooks_not_with_bridges_own_signing(tmp_path) -> None:
    # A copy of bridge whose own signing is broken: `listen` must still accept what the
    # reference implementation signs, and refuse what it does not.
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "bridge", copy / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    signing = copy / "bridge" / "delivery" / "signing.py"
    signing.write_text(
        signing.read_text() + "\n\ndef sign(*args, **kwargs):\n    return 'v1,AAAA'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(copy), "BRIDGE_LISTEN_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "listen", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("POST webhooks to ", 1)[1].split()[0]
        body = b'{"type":"item.added","data":{"source":"s","key":"k","after":{"a":1}}}'
        assert post(url + "hook", body, signed_request(body, SECRET)) == 204
        other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
        assert post(url + "hook", body, signed_request(body, other)) == 401
        garbled = {**signed_request(body, SECRET), "webhook-signature": "v1"}
        assert post(url + "hook", body, garbled) == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "verified evt_listen1" in out
    assert out.count("rejected POST /hook") == 2
    assert "Traceback" not in err
