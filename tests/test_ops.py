"""Running bridge for real: /metrics and /healthz of a live daemon, JSON logs, init, demo, status,
the cron line and the systemd unit, each as a user meets them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config.units import cron_to_apscheduler
from tests.conftest import (
    SECRET,
    STDOUT,
    Origin,
    bridge_config,
    free_port,
    get,
    http_source,
    run_cli,
    run_on_a_terminal,
    wait_for,
    webhook,
)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok_Zq8mX2pLr5vN0s"  # a bearer token for the polled API: must never be logged
ENV = {"HOOK_SECRET": SECRET, "API_TOKEN": TOKEN}


def hook(url: str) -> dict[str, dict[str, Any]]:
    """`webhooks:` of one, `hook`, signed with $HOOK_SECRET, three quick retries."""
    return {"hook": webhook(url, "${HOOK_SECRET}", retry=["100ms"] * 3)}


def api_source(url: str, every: str, first: str = "baseline") -> dict[str, Any]:
    """The polled API, `api`, behind the bearer token $API_TOKEN, sending to `hook`."""
    options = {"items": "@", "key": "id", "every": every, "jitter": "0s", "on_first_poll": first}
    return http_source("api", url, auth={"bearer": "${API_TOKEN}"}, **options, webhooks=["hook"])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def start_daemon(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def stop_daemon(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


@pytest.mark.slow
def test_metrics_count_polls_events_and_deliveries(write_config, origin: Origin, receiver):
    port = free_port()
    origin.set("/items", [{"id": 1, "v": 1}])
    listen = {"listen": f"127.0.0.1:{port}"}
    path = write_config(
        bridge_config(
            api_source(origin.url("/items"), "1s"), http=listen, webhooks=hook(receiver.url())
        )
    )
    proc = start_daemon(path)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=15)
        wait_for(lambda: len(origin.hits("/items")) >= 1, timeout=15)
        receiver.answer(500)  # the first attempt fails, the retry 100 ms later succeeds
        origin.set("/items", [{"id": 1, "v": 2}])
        wait_for(lambda: len(receiver.received) >= 2, timeout=15)
        wait_for(lambda: value(scrape(port), "bridge_delivery_queue", webhook="hook",
                               status="delivered") == 1)  # fmt: skip
        origin.set("/items", body=b"down", status=500)
        wait_for(lambda: value(scrape(port), "bridge_polls_total", source="api", result="error"))
        m = scrape(port)
    finally:
        stop_daemon(proc)

    assert value(m, "bridge_polls_total", source="api", result="new") == 1
    assert value(m, "bridge_polls_total", source="api", result="changed") == 1
    assert value(m, "bridge_polls_total", source="api", result="error") >= 1
    polls = sum(v for (name, _), v in m.items() if name == "bridge_polls_total")
    assert value(m, "bridge_poll_duration_seconds_count") == polls
    assert value(m, "bridge_poll_duration_seconds_sum") > 0
    assert value(m, "bridge_events_total", source="api", type="item.changed") == 1
    assert value(m, "bridge_deliveries_total", webhook="hook", result="retry") == 1
    assert value(m, "bridge_deliveries_total", webhook="hook", result="delivered") == 1
    assert value(m, "bridge_delivery_queue", webhook="hook", status="pending") == 0
    assert value(m, "bridge_delivery_queue", webhook="hook", status="dead") == 0


@pytest.mark.slow
def test_json_logs_parse_line_by_line_and_hold_no_secret(write_config, origin, receiver):
    origin.set("/items", [{"id": 1}])
    origin.set("/broken", body=b"oops", status=500)
    broken = http_source("broken", origin.url("/broken"), headers={"X-Key": TOKEN})
    text = bridge_config(
        api_source(origin.url("/items"), "1h", first="emit"), broken, webhooks=hook(receiver.url())
    )
    path = write_config(text)
    receiver.answer(500)
    args = ("--log-format", "json", "--log-level", "debug", "once", "-c", str(path))
    first = run_cli(*args, env=ENV)
    time.sleep(0.15)
    second = run_cli(*args, env=ENV)  # the retry is delivered
    assert first.code == second.code == 1  # `broken` failed
    assert origin.hits("/items")[0]["Authorization"] == f"Bearer {TOKEN}"
    records = []
    for result in (first, second):
        for line in result.stderr.splitlines():  # the command's own summary is JSON too
            records.append(orjson.loads(line))
        everything = result.stdout + result.stderr
        for secret in (SECRET, SECRET.removeprefix("whsec_"), TOKEN):
            assert secret not in everything
    messages = [(r["level"], r["msg"]) for r in records]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert ("info", "poll api: new, 1 events") in messages
    assert any(level == "warning" and "poll broken failed" in m for level, m in messages)
    # a retry is a warning in `once`, where it fails the run (exit 1)
    assert any(level == "warning" and "failed (HTTP 500); retry" in m for level, m in messages)
    assert any(level == "debug" and m.startswith("delivered evt_") for level, m in messages)
    assert any(level == "debug" and m == "poll api: unchanged" for level, m in messages)


@pytest.mark.slow
def test_a_failed_delivery_does_not_log_the_webhook_url(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    port = free_port()  # nothing listens there: connection refused
    url = f"http://127.0.0.1:{port}/services/T000/B000/{TOKEN}"
    path = write_config(
        bridge_config(api_source(origin.url("/items"), "1h", first="emit"), webhooks=hook(url))
    )
    result = run_cli("--log-level", "debug", "once", "-c", str(path), env=ENV)
    listing = run_cli("deliveries", "-c", str(path), env=ENV)
    assert "connection refused" in result.stderr + listing.stdout
    assert TOKEN not in result.stderr + listing.stdout


@pytest.mark.slow
def test_init_writes_a_starter_that_passes_check_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    made = run_cli("init", "-c", str(path))
    assert made.code == 0, made.stderr
    assert "bridge check" in made.stdout
    starter = path.read_text()
    assert starter.startswith("# bridge.yaml") and "webhooks:" in starter
    checked = run_cli("check", "-c", str(path))
    assert checked.code == 0, checked.stderr
    assert "httpx-releases" in checked.stdout

    path.write_text("# mine\n")
    again = run_cli("init", "-c", str(path))
    assert again.code == 2
    assert again.stderr.strip() == (
        f"bridge: {path} already exists; not overwriting it "
        "(move it away, or write elsewhere with -c OTHER.yaml)"
    )
    assert path.read_text() == "# mine\n"


@pytest.mark.slow
def test_demo_prints_verified_changes_and_exits_0() -> None:
    started = time.monotonic()
    result = run_cli("demo", "--duration", "4", timeout=60)
    assert result.code == 0, result.stderr
    assert time.monotonic() - started < 15
    out = result.stdout
    assert re.search(r"item\.changed  status-page  key=\w+  verified evt_[0-9a-f]{32}", out), out
    assert re.search(r'~ /status: "\w+" -> "\w+"', out)
    assert "the status page changes:" in out
    received = int(re.search(r"(\d+) webhooks received, every signature verified", out)[1])
    assert received >= 1 and "rejected" not in out
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_status_shows_relative_times_and_json_keeps_timestamps(write_config, origin, receiver):
    origin.set("/items", [{"id": 1}])
    origin.set("/down", body=b"", status=503)
    down = http_source("down", origin.url("/down"))
    path = write_config(
        bridge_config(api_source(origin.url("/items"), "5m"), down, webhooks=hook(receiver.url()))
    )
    run_cli("once", "-c", str(path), env=ENV)
    table = run_cli("status", "-c", str(path), env=ENV)
    assert table.code == 0, table.stderr
    api = next(line for line in table.stdout.splitlines() if line.startswith("api "))
    assert re.search(r"\b(now|\ds ago)\b", api), table.stdout
    assert "down: HTTP 503" in table.stdout
    assert "no `bridge run` is using this state file" in table.stdout
    doc = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    [api_row] = [s for s in doc["sources"] if s["name"] == "api"]
    assert abs(api_row["last_poll"] - time.time()) < 60


@pytest.mark.slow
def test_the_readme_cron_line_runs_quietly_and_speaks_up_on_failure(write_config, origin):
    readme = (ROOT / "README.md").read_text()
    [line] = re.findall(r"```crontab\n(.+)\n```", readme)
    fields = line.split()
    cron_to_apscheduler(" ".join(fields[:5]))  # a valid schedule
    command = fields[5:]
    assert command[:3] == ["flock", "-n", "/var/lib/bridge/once.lock"]
    bridge_at = command.index("/opt/bridge/bin/bridge")
    args = command[bridge_at + 1 :]
    assert args[:2] == ["once", "-q"]

    origin.set("/items", [{"id": 1}])
    printed = http_source("api", origin.url("/items"), webhooks=["out"])
    path = write_config(bridge_config(printed, state=None, webhooks=STDOUT))
    args[args.index("-c") + 1] = str(path)
    quiet = run_cli(*args)
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", "")
    origin.set("/items", body=b"", status=500)
    loud = run_cli(*args)
    assert loud.code == 1 and "poll api failed: HTTP 500" in loud.stderr


@pytest.mark.slow
def test_once_shows_progress_on_a_terminal(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    sources = [http_source(f"s{i}", origin.url("/items")) for i in range(12)]
    path = write_config(bridge_config(*sources, state=None))
    code, seen = run_on_a_terminal("once", "-c", str(path))
    assert code == 0
    assert b"polling: 12/12 sources" in seen
    assert b"polled 12 sources (12 new); 0 events" in seen


def test_systemd_unit_has_what_a_service_needs() -> None:
    unit = (ROOT / "contrib" / "bridge.service").read_text()
    for line in (
        "Type=notify",
        "ExecStart=/opt/bridge/bin/bridge run -c /etc/bridge/bridge.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "User=bridge",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/bridge",
        "StateDirectory=bridge",
    ):
        assert f"\n{line}\n" in unit, line


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit's directives are checked above")
    unit = (ROOT / "contrib" / "bridge.service").read_text()
    # verify insists that ExecStart exists: point it at this environment's bridge.
    here = Path(sys.executable).parent / "bridge"
    assert here.exists()
    copy = tmp_path / "bridge.service"
    copy.write_text(unit.replace("/opt/bridge/bin/bridge", str(here)))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no "Unknown key" or similar warnings
