"""The real `bridge` command on `state: postgresql://...`: the commands work, several `bridge
run` share one database, and no output ever shows the password (given through ${ENV})."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import orjson
import pytest

from tests.conftest import bridge_config, http_source, run_cli, wait_for, webhook

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-pw"
ENV = {"BRIDGE_TEST_PW": PASSWORD, "HOOK_SECRET": "whsec_" + "A" * 32}


def with_password(url: str) -> str:
    """The test server's URL with a password from $BRIDGE_TEST_PW (trust auth ignores it)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:${{BRIDGE_TEST_PW}}@{host}"


def config_on(write_config, url: str, origin, receiver):
    source = http_source("api", origin.url("/items"), items="@", key="id", webhooks=["hook"])
    hook = {"hook": webhook(receiver.url(), "${HOOK_SECRET}", retry=["50ms"])}
    return write_config(bridge_config(source, state=url, webhooks=hook))


def test_once_status_and_events_work_on_postgresql(
    write_config, origin, receiver, postgresql_url
) -> None:
    path = config_on(write_config, with_password(postgresql_url), origin, receiver)
    origin.set("/items", [{"id": 1}])
    first = run_cli("once", "-c", str(path), env=ENV)
    assert first.code == 0, first.stderr
    origin.set("/items", [{"id": 1}, {"id": 2}])
    second = run_cli("once", "-c", str(path), env=ENV)
    assert second.code == 0, second.stderr
    assert [e["type"] for e in receiver.events()] == ["item.added"]
    assert receiver.events()[0]["data"]["key"] == 2
    status = run_cli("status", "-c", str(path), "--json", env=ENV)
    doc = orjson.loads(status.stdout)
    assert [s["name"] for s in doc["sources"]] == ["api"]
    assert doc["webhooks"][0]["delivered"] == 1
    [event] = run_cli("events", "-c", str(path), "--json", env=ENV).lines()
    assert event["type"] == "item.added"
    for result in (first, second, status):
        assert PASSWORD not in result.stdout + result.stderr


def test_an_unreachable_database_is_exit_1_and_one_line_without_the_password(
    write_config, origin, receiver
) -> None:
    url = with_password("postgresql://bob@127.0.0.1:1/bridge")
    path = config_on(write_config, url, origin, receiver)
    for command in ("status", "once"):
        result = run_cli(command, "-c", str(path), env=ENV)
        assert result.code == 1
        [line] = result.stderr.splitlines()
        assert "postgresql://bob:***@127.0.0.1:1/bridge: cannot connect" in line
        assert PASSWORD not in result.stdout + result.stderr and "Traceback" not in line


def test_two_runs_share_one_database_and_log_it_without_the_password(
    write_config, origin, receiver, postgresql_url
) -> None:
    path = config_on(write_config, with_password(postgresql_url), origin, receiver)
    origin.set("/items", [{"id": 1}])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(path)],
            env={**os.environ, **ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        wait_for(lambda: len(origin.hits("/items")) >= 1, timeout=15)
        running = run_cli("status", "-c", str(path), "--json", env=ENV)
        assert running.code == 0, running.stderr
    finally:
        outputs = []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            outputs.append(proc.communicate(timeout=20))
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err  # neither refused: several instances are allowed
        assert "running: 1 sources" in err and "postgres:***@" in err
        assert PASSWORD not in out + err and "Traceback" not in err
