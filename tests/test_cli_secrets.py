"""The commands that only read or change the queue work without the secrets' variables (the
README's systemd layout keeps them in a root-only env file); the ones that send still need them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bridge.config import load_config
from bridge.errors import ConfigError
from tests.conftest import SECRET, Origin, Receiver, bridge_config, http_source, webhook

pytestmark = pytest.mark.slow  # `bridge` runs in subprocesses

SECRETS = {"HOOK_SECRET": SECRET, "HOOK_TOKEN": "t0ken", "API_KEY": "k3y"}


def run(*args: str, secrets: bool = False) -> tuple[int, str, str]:
    """`bridge ARGS` in a subprocess, with the config's secret variables set or surely unset
    (as a user's shell has them when the daemon's env file is root-only)."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        env={**env, **SECRETS} if secrets else env,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def config(write_config, origin: Origin, receiver: Receiver) -> Path:
    """A config whose webhook `w` is signed with ${HOOK_SECRET}; one event went dead."""
    origin.set("/items", [{"id": 1}])
    receiver.answer(410)  # Gone: the delivery is dead at once
    hooks = {
        "w": webhook(
            receiver.url(),
            "${HOOK_SECRET}",
            headers={"Authorization": "Bearer ${HOOK_TOKEN}"},
            retry=["50ms"],
        )
    }
    source = http_source(
        "api",
        origin.url("/items") + "?key=${API_KEY}",
        items="@",
        key="id",
        on_first_poll="emit",
        webhooks=["w"],
    )
    path = write_config(bridge_config(source, webhooks=hooks))
    _, _, err = run("once", "-c", str(path), secrets=True)
    assert len(receiver.received) == 1, err  # answered 410: the delivery is dead
    return path


def test_queue_commands_need_no_secret(config: Path, receiver: Receiver) -> None:
    path = str(config)
    code, out, err = run("status", "-c", path, "--json")
    assert code == 0, err
    status = orjson.loads(out)
    assert [s["name"] for s in status["sources"]] == ["api"]
    assert [(w["name"], w["dead"]) for w in status["webhooks"]] == [("w", 1)]
    code, out, err = run("events", "-c", path, "--json")
    assert code == 0 and [e["type"] for e in map(orjson.loads, out.splitlines())] == [
        "item.added"
    ], err
    code, out, err = run("deliveries", "-c", path, "--status", "dead")
    assert code == 0 and "w" in out, err
    code, out, err = run("replay", "-c", path, "--dead")
    assert code == 0 and out.startswith("queued 1 delivery again"), err
    code, out, err = run("discard", "-c", path, "--webhook", "w")
    assert code == 0 and out.startswith("discarded 1 delivery"), err
    for args in (("status",), ("deliveries",), ("events",)):
        code, out, err = run(*args, "-c", path)
        assert code == 0, err
        assert "not set" not in out + err and "\r" not in out  # no placeholder is ever shown
    assert len(receiver.received) == 1  # none of them sent anything


def test_commands_that_send_still_need_the_secrets(config: Path) -> None:
    for args in (("once",), ("poll", "api"), ("run",), ("check",)):
        code, out, err = run(*args, "-c", str(config))
        assert code == 2, (args, out, err)
        assert "environment variable HOOK_SECRET is not set" in err, (args, err)
        assert "Traceback" not in err
    code, _, err = run("check", "-c", str(config))
    assert "HOOK_TOKEN" in err and "API_KEY" in err and "3 errors" in err, err


def test_an_unset_variable_outside_a_secret_is_still_an_error(write_config) -> None:
    text = bridge_config(
        http_source("api", "https://x.example", every="${POLL_EVERY}"), state="nothing.db"
    )
    path = write_config(text)
    code, _, err = run("status", "-c", str(path))
    assert code == 2 and "sources[0].every: environment variable POLL_EVERY is not set" in err, err
    assert not (path.parent / "nothing.db").exists()


def test_placeholders_are_never_what_a_sender_gets(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        bridge_config(
            http_source("api", "https://x.example", webhooks=["w"]),
            webhooks={"w": webhook("${HOOK_URL}", "${HOOK_SECRET}")},
        )
    )
    queue = load_config(path, {}, secrets="placeholder")
    assert queue.unset == ("HOOK_URL", "HOOK_SECRET")
    spec = queue.webhooks["w"]
    # line breaks: no HTTP client puts such a value in a request line or a header
    assert "\r\n" in spec.url and all("\r\n" in s for s in spec.secrets)
    with pytest.raises(ConfigError, match="HOOK_URL is not set"):
        load_config(path, {})  # what once, poll and run load
    full = load_config(path, {"HOOK_URL": "https://h.example", "HOOK_SECRET": SECRET})
    assert full.unset == () and full.webhooks["w"].secrets == (SECRET,)
