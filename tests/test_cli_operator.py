"""The operator's experience of the `bridge` command (issue 19): what cron mails, what every line
of stderr is under --log-format json, the progress line on a terminal, where the config is
found, the `bridge-push` name, unknown names, shell completion and the first poll's baseline.
Every test runs the real program in a subprocess against real local servers and files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
import pytest

from bridge.cli.main import main
from tests.conftest import (
    STDOUT,
    CliResult,
    Origin,
    bridge_config,
    http_source,
    run_cli,
    run_on_a_terminal,
    webhook,
)

pytestmark = pytest.mark.slow  # nearly every test runs `bridge` in a subprocess

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def refused_url() -> str:
    """A webhook URL where nothing listens: every delivery fails with `connection refused`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def api(origin: Origin, **options: Any) -> dict[str, Any]:
    """The source `api`: the origin's /items by id."""
    return http_source("api", origin.url("/items"), **{"items": "@", "key": "id", **options})


def bridge(
    *args: str, cwd: Path, env: dict[str, str] | None = None, program: str | None = None
) -> CliResult:
    """Run the installed program (`bridge` unless named) in `cwd`, with exactly `env` added to
    a copy of this environment from which the config variables are removed."""
    base = {k: v for k, v in os.environ.items() if k not in ("BRIDGE_CONFIG", "XDG_CONFIG_HOME")}
    proc = subprocess.run(
        [str(BIN / (program or "bridge")), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=60,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed as JSON (fails the test on one that is not)."""
    return [orjson.loads(line) for line in text.splitlines()]


# --- item 2: `once -q` speaks up, and exits 1, when a delivery of this run fails -------------


def test_once_quiet_names_each_failed_delivery_and_exits_1(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    hooks = {"down": webhook(refused_url(), retry=["50ms"])}
    path = write_config(bridge_config(api(origin, webhooks=["down"]), webhooks=hooks))
    assert run_cli("once", "-q", "-c", str(path)) == CliResult(0, "", "")  # the baseline

    origin.set("/items", [{"id": 1}, {"id": 2}])
    queued = run_cli("once", "-q", "-c", str(path))
    [event] = run_cli("events", "-c", str(path), "--json").lines()
    assert queued.code == 1 and queued.stdout == ""
    [line] = queued.stderr.splitlines()
    assert f"delivery of {event['id']} to down failed (" in line and "connection refused" in line
    [pending] = run_cli("deliveries", "-c", str(path), "--status", "pending", "--json").lines()
    assert pending["event_id"] == event["id"]

    # The second and last attempt: the delivery goes dead, and the run says so, exit 1.
    time.sleep(0.1)
    dead = run_cli("once", "-q", "-c", str(path))
    assert dead.code == 1
    [line] = dead.stderr.splitlines()
    assert f"delivery of {event['id']} to down is dead after 2 attempts" in line
    assert "connection refused" in line

    # Nothing changed and nothing is due: silent, exit 0, as cron wants it.
    assert run_cli("once", "-q", "-c", str(path)) == CliResult(0, "", "")


def test_once_without_q_tallies_failed_deliveries(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    hooks = {"down": webhook(refused_url(), retry=["1h"])}
    path = write_config(bridge_config(api(origin, webhooks=["down"]), webhooks=hooks))
    run_cli("once", "-c", str(path))
    origin.set("/items", [{"id": 2}])
    result = run_cli("once", "-c", str(path))
    assert result.code == 1
    assert result.stderr.splitlines()[-1] == (
        "bridge: polled 1 sources (1 changed); 2 events; "
        "2 deliveries failed (2 queued for the next run)"
    )


# --- item 3: every line of stderr is JSON under --log-format json ----------------------------


def test_every_stderr_line_is_json_with_its_fields(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    origin.set("/broken", body=b"oops", status=500)
    hooks = {"down": webhook(refused_url(), retry=["1h"])}
    broken = http_source("broken", origin.url("/broken"))
    path = write_config(
        bridge_config(api(origin, webhooks=["down"], on_first_poll="emit"), broken, webhooks=hooks)
    )
    result = run_cli("--log-format", "json", "once", "-c", str(path))
    assert result.code == 1
    records = json_lines(result.stderr)
    [poll] = [r for r in records if r["msg"].startswith("poll broken failed")]
    assert (poll["level"], poll["source"]) == ("warning", "broken")
    assert poll["error"].startswith("HTTP 500")
    [delivery] = [r for r in records if "webhook" in r]
    assert delivery["webhook"] == "down" and delivery["event_id"].startswith("evt_")
    assert "connection refused" in delivery["error"]
    [first] = [r for r in records if r.get("source") == "api" and r["logger"] == "bridge.cli"]
    assert "first poll sent 1 events" in first["msg"]
    assert records[-1]["msg"].startswith("polled 2 sources (1 error, 1 new); 1 events")
    assert {"ts", "level", "logger", "msg"} <= set(records[-1])

    # The commands' error lines too: a bad config, a missing one, a usage error.
    path.write_text("sources: 3\n")
    for args in (["check", "-c", str(path)], ["status", "-c", "/nonexistent/b.yaml"]):
        bad = run_cli("--log-format", "json", *args)
        [record] = json_lines(bad.stderr)
        assert bad.code == 2 and record["level"] == "error" and record["error"] == record["msg"]
    usage = run_cli("--log-format", "json", "once", "--bogus")
    [record] = json_lines(usage.stderr)
    assert usage.code == 2 and "--bogus" in record["msg"]


# --- item 4: the progress line is cleared before a log line; a line has its event's time -----


def rendered(raw: bytes) -> list[str]:
    """What a terminal shows for `raw`: \\r goes back to the line's start, ESC[K erases to its
    end, other text overwrites from the cursor."""
    lines = []
    for chunk in raw.decode().replace("\r\n", "\n").split("\n"):
        line: list[str] = []
        cursor = 0
        for piece in re.split(r"(\r|\x1b\[K)", chunk):
            if piece == "\r":
                cursor = 0
            elif piece == "\x1b[K":
                del line[cursor:]
            else:
                line[cursor : cursor + len(piece)] = piece
                cursor += len(piece)
        lines.append("".join(line))
    return lines


def test_a_log_line_never_lands_on_the_progress_line(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    origin.set("/broken", body=b"oops", status=500)
    sources = [http_source(f"s{i}", origin.url("/items")) for i in range(11)]
    sources.append(http_source("broken", origin.url("/broken")))
    path = write_config(bridge_config(*sources, state=None))
    code, seen = run_on_a_terminal("once", "-c", str(path))
    assert code == 1
    assert b"polling: 12/12 sources, 1 failed" in seen  # the progress was drawn
    lines = [line for line in rendered(seen) if line]
    [failed] = [line for line in lines if "poll broken failed" in line]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING poll broken failed: HTTP 500\b.*", failed
    )
    assert lines[-1].startswith("bridge: polled 12 sources (1 error, 11 new)")
    # More than ten first polls say it in one line, not one each.
    assert [line for line in lines if "first time" in line or "baseline" in line] == [
        "bridge: 11 sources polled for the first time: baselines recorded (11 items); "
        "changes from now on are sent"
    ]
    assert not any("polling:" in line for line in lines)  # cleared at the end


def test_a_poll_logged_with_its_batch_carries_its_own_time(write_config, origin) -> None:
    # `fast` answers at once, `slow` after 3 s; once writes both polls in one batch at the end,
    # and logs each then: `fast`'s line must still say when `fast` was polled.
    origin.set("/fast", [{"id": 1}])
    origin.set("/slow", [{"id": 1}], delay=3.0)
    fast = http_source("fast", origin.url("/fast"), items="@", key="id", on_first_poll="emit")
    slow = http_source("slow", origin.url("/slow"))
    path = write_config(bridge_config(fast, slow))
    result = run_cli("--log-format", "json", "once", "-c", str(path))
    assert result.code == 0, result.stderr
    records = json_lines(result.stderr)
    [polled] = [r for r in records if r["msg"] == "poll fast: new, 1 events"]
    summary = records[-1]
    assert summary["msg"].startswith("polled 2 sources")

    def ts(record: dict[str, Any]) -> float:
        return datetime.fromisoformat(record["ts"]).timestamp()

    assert ts(summary) - ts(polled) >= 1.5


# --- item 5: -c before the command, where the config is found, -h, help, --log-level --------


def test_config_before_the_command_and_the_commands_own_winning(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    good = write_config(bridge_config(api(origin)))
    other = write_config(bridge_config(http_source("other", origin.url("/items"))), "other.yaml")
    before = run_cli("-c", str(good), "check")
    assert before.code == 0 and "api" in before.stdout, before.stderr
    both = run_cli("-c", str(good), "check", "-c", str(other))
    assert both.code == 0 and "other" in both.stdout and "api " not in both.stdout


def test_config_is_found_where_the_spec_says(tmp_path: Path, origin) -> None:
    origin.set("/items", [{"id": 1}])

    def config(where: Path, name: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        path = where / "bridge.yaml"
        path.write_text(bridge_config(http_source(name, origin.url("/items")), state=None))
        return path

    def sources(cwd: Path, env: dict[str, str]) -> str:
        result = bridge("check", cwd=cwd, env=env)
        assert result.code == 0, result.stderr
        return result.stdout.splitlines()[1].split()[0]

    home = tmp_path / "home"
    empty = tmp_path / "empty"
    empty.mkdir()
    config(home / ".config" / "bridge", "in-home")
    assert sources(empty, {"HOME": str(home)}) == "in-home"  # ~/.config/bridge/bridge.yaml
    config(tmp_path / "xdg" / "bridge", "in-xdg")
    xdg = {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert sources(empty, xdg) == "in-xdg"
    here = tmp_path / "here"
    config(here, "in-cwd")
    assert sources(here, xdg) == "in-cwd"  # ./bridge.yaml first
    named = config(tmp_path / "named", "in-env")
    assert sources(here, {**xdg, "BRIDGE_CONFIG": str(named)}) == "in-env"

    if Path("/etc/bridge/bridge.yaml").exists():
        pytest.skip("this machine has an /etc/bridge/bridge.yaml")
    missing = bridge("status", cwd=empty, env={"HOME": str(tmp_path / "nobody")})
    assert missing.code == 2
    [line] = missing.stderr.splitlines()
    nobody = tmp_path / "nobody" / ".config" / "bridge" / "bridge.yaml"
    assert line == (
        f"bridge: no config file: looked for ./bridge.yaml, {nobody}, /etc/bridge/bridge.yaml "
        "(and $BRIDGE_CONFIG is not set); `bridge init` writes a starter ./bridge.yaml, "
        "or name one with -c FILE"
    )


def _commands() -> list[str]:
    group = main
    assert isinstance(group, click.Group)
    return sorted(group.commands)


@pytest.mark.parametrize("command", ["", *_commands()])
def test_dash_h_is_help_everywhere(command: str) -> None:
    args = [command, "-h"] if command else ["-h"]
    result = run_cli(*[a for a in args if a])
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"Usage: bridge {command}".rstrip())


@pytest.mark.parametrize("command", ["", *_commands()])
def test_every_option_has_help(command: str) -> None:
    # The tree as click builds it from bridge.cli.main; this walk needs no subprocess.
    group = main
    assert isinstance(group, click.Group)
    cmd = group if not command else group.commands[command]
    missing = [
        p.opts[0]
        for p in cmd.params
        if isinstance(p, click.Option) and not (p.help and p.help.strip())
    ]
    assert missing == [], f"bridge {command}: options without help: {missing}"


def test_log_level_takes_any_case(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}])
    path = write_config(bridge_config(api(origin)))
    result = run_cli("--log-level", "DEBUG", "once", "-c", str(path))
    assert result.code == 0, result.stderr
    assert "DEBUG" in result.stderr  # debug lines are shown


def test_listen_takes_a_config_and_verifies_with_its_webhooks_secrets(write_config) -> None:
    import urllib.error
    import urllib.request

    from standardwebhooks import Webhook

    from tests.conftest import SECRET

    hooks = {"local": webhook("http://127.0.0.1:9/hook", "${HOOK_SECRET}")}
    path = write_config(bridge_config(http_source("a", "http://x"), webhooks=hooks))
    env = {**os.environ, "HOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "-c", str(path), "listen", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", first)
        assert url, first
        assert "verifying Standard Webhooks signatures with 1 secret" in proc.stdout.readline()
        body = b'{"type":"item.added","data":{"source":"a","key":"1","after":{}}}'
        now = datetime.now()
        signature = Webhook(SECRET).sign("evt_1", now, body.decode())
        headers = {
            "webhook-id": "evt_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        }
        request = urllib.request.Request(url[1] + "hook", body, headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 204
        headers["webhook-signature"] = "v1,AAAA"
        bad = urllib.request.Request(url[1] + "hook", body, headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=10)
        refused.value.close()
        assert refused.value.code == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


# --- item 6: `bridge-push`, for where iproute2's `bridge` comes first on PATH ----------------


def test_bridge_push_runs_and_names_itself(write_config, origin, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = bridge("--version", cwd=elsewhere, program="bridge-push")
    assert version.code == 0 and version.stdout.startswith("bridge-push, version "), version
    helped = bridge("once", "-h", cwd=elsewhere, program="bridge-push")
    assert helped.stdout.startswith("Usage: bridge-push once ")
    origin.set("/items", [{"id": 1}])
    path = write_config(bridge_config(api(origin)))
    checked = bridge("check", "-c", str(path), cwd=elsewhere, program="bridge-push")
    assert checked.code == 0 and "api" in checked.stdout
    if not Path("/etc/bridge/bridge.yaml").exists():
        env = {"HOME": str(elsewhere)}
        missing = bridge("status", cwd=elsewhere, program="bridge-push", env=env)
        assert missing.code == 2 and "`bridge-push init` writes" in missing.stderr
    readme = (ROOT / "README.md").read_text()
    install = readme[: readme.index("## Configuration")]
    assert "bridge-push" in install


# --- item 9: an unknown source or webhook name is an error everywhere ------------------------


def test_unknown_names_are_errors_and_names_only_the_state_knows_count(
    write_config, origin
) -> None:
    origin.set("/items", [{"id": 1}])
    hooks = {"out": webhook("-"), "old": webhook("-")}
    old = http_source(
        "gone", origin.url("/items"), items="@", key="id", webhooks=["old"], on_first_poll="emit"
    )
    path = write_config(
        bridge_config(api(origin, webhooks=["out"], on_first_poll="emit"), old, webhooks=hooks)
    )
    assert run_cli("once", "-c", str(path)).code == 0
    nope = run_cli("events", "-c", str(path), "--source", "nope")
    assert nope.code == 2
    assert nope.stderr.strip() == "bridge: unknown source 'nope' (known: api, gone)"
    nope = run_cli("deliveries", "-c", str(path), "--webhook", "nope")
    assert nope.code == 2
    assert nope.stderr.strip() == "bridge: unknown webhook 'nope' (known: old, out)"

    # Taken out of the config, `gone` and `old` are still known to the state file.
    path.write_text(bridge_config(api(origin, webhooks=["out"]), webhooks=STDOUT))
    [event] = run_cli("events", "-c", str(path), "--source", "gone", "--json").lines()
    assert event["source"] == "gone"
    [delivery] = run_cli("deliveries", "-c", str(path), "--webhook", "old", "--json").lines()
    assert delivery["webhook"] == "old"
    nope = run_cli("events", "-c", str(path), "--source", "nope")
    assert nope.stderr.strip() == "bridge: unknown source 'nope' (known: api, gone)"


# --- item 15: shell completion of names from the config --------------------------------------


def complete(words: str, cwd: Path, program: str = "bridge") -> CliResult:
    """What the shell gets for Tab after `words` (bash): the real program, completion env."""
    var = f"_{program.replace('-', '_').upper()}_COMPLETE"
    env = {var: "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
    return bridge(cwd=cwd, env=env, program=program)


def test_completion_offers_the_configs_names(write_config, origin, tmp_path: Path) -> None:
    origin.set("/items", [{"id": 1}])
    web = http_source("web", origin.url("/items"))
    hooks = {"ops": webhook("-"), "chat": webhook("-")}
    path = write_config(
        bridge_config(api(origin), web, http_source("db", "http://x"), webhooks=hooks)
    )

    def names(result: CliResult) -> list[str]:
        assert result.code == 0 and result.stderr == "", result
        return [line.removeprefix("plain,") for line in result.stdout.splitlines()]

    assert names(complete(f"bridge once -c {path} ", tmp_path)) == ["api", "web", "db"]
    assert names(complete(f"bridge once -c {path} api ", tmp_path)) == ["web", "db"]
    assert names(complete(f"bridge -c {path} poll w", tmp_path)) == ["web"]
    assert names(complete(f"bridge events -c {path} --source d", tmp_path)) == ["db"]
    assert names(complete(f"bridge deliveries -c {path} --webhook ", tmp_path)) == ["ops", "chat"]
    assert names(complete(f"bridge -c {path} replay --dead --webhook c", tmp_path)) == ["chat"]
    assert names(complete(f"bridge-push once -c {path} a", tmp_path, "bridge-push")) == ["api"]
    # The config found as without -c (here ./bridge.yaml)
    assert names(complete("bridge once d", path.parent)) == ["db"]


def test_completion_never_prints_an_error(write_config, tmp_path: Path) -> None:
    broken = write_config("sources: [\n")
    for words in (
        f"bridge once -c {broken} ",
        f"bridge once -c {tmp_path / 'missing.yaml'} ",
        "bridge once ",  # ./bridge.yaml is the broken one
    ):
        result = complete(words, tmp_path)
        assert (result.code, result.stdout.strip(), result.stderr) == (0, "", ""), words
    # The names need no secret: an unset variable completes them all the same.
    unset = write_config(
        bridge_config(http_source("a", "http://x"), webhooks={"w": webhook("-", "${UNSET_X}")}),
        "unset.yaml",
    )
    result = complete(f"bridge once -c {unset} ", tmp_path)
    assert (result.code, result.stdout.strip(), result.stderr) == (0, "plain,a", "")


# --- item 17: the first poll says it recorded a baseline --------------------------------------


def test_the_first_poll_says_it_recorded_a_baseline(write_config, origin) -> None:
    origin.set("/items", [{"id": 1}, {"id": 2}, {"id": 3}])
    doc = http_source("doc", origin.url("/items"))
    emit = http_source("emit", origin.url("/items"), items="@", key="id", on_first_poll="emit")
    path = write_config(bridge_config(api(origin), doc, emit))
    first = run_cli("once", "-c", str(path))
    assert first.code == 0, first.stderr
    lines = first.stderr.splitlines()
    assert "bridge: api: baseline recorded (3 items); changes from now on are sent" in lines
    assert "bridge: doc: baseline recorded (the document); changes from now on are sent" in lines
    assert (
        "bridge: emit: first poll sent 3 events for 3 items (on_first_poll: emit); "
        "changes from now on are sent"
    ) in lines
    again = run_cli("once", "-c", str(path))
    assert "baseline" not in again.stderr and "first poll" not in again.stderr

    quiet = write_config(bridge_config(api(origin), state="quiet.db"), "quiet.yaml")
    assert run_cli("once", "-q", "-c", str(quiet)) == CliResult(0, "", "")

    polled = write_config(bridge_config(api(origin), state="polled.db"), "polled.yaml")
    dry = run_cli("poll", "-c", str(polled), "api", "--dry-run")
    assert dry.stderr.strip() == (
        "bridge: api: first poll: a real one records a baseline (3 items) and sends changes "
        "after it (dry run: nothing stored or sent)"
    )
    real = run_cli("poll", "-c", str(polled), "api")
    assert real.stderr.strip() == (
        "bridge: api: baseline recorded (3 items); changes from now on are sent"
    )
