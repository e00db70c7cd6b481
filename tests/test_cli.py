"""The `bridge` command as a user runs it: subprocesses against real local servers and files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from tests.conftest import (
    SECRET,
    Origin,
    Receiver,
    bridge_config,
    http_source,
    run_cli,
    wait_for,
    webhook,
)

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # every test runs `bridge` in a subprocess


def hook(receiver: Receiver, name: str = "hook", **options: Any) -> dict[str, dict[str, Any]]:
    """`webhooks:` of one, `hook` unless named, signed with $HOOK_SECRET, one retry."""
    return {name: webhook(receiver.url(), "${HOOK_SECRET}", **{"retry": ["50ms"], **options})}


def api(origin: Origin, **options: Any) -> dict[str, Any]:
    """The source `api`: the origin's /items by id, polled hourly, sent to `hook`."""
    defaults = {"items": "@", "key": "id", "every": "1h", "webhooks": ["hook"]}
    return http_source("api", origin.url("/items"), **{**defaults, **options})


def setup(write_config, origin: Origin, receiver: Receiver) -> Path:
    origin.set("/items", [{"id": 1, "v": 1}])
    return write_config(bridge_config(api(origin), webhooks=hook(receiver)))


ENV = {"HOOK_SECRET": SECRET}


def test_example_config_passes_check() -> None:
    result = run_cli("check", "-c", str(ROOT / "bridge.yaml"))
    assert result.code == 0, result.stderr
    assert "httpx-releases" in result.stdout and "http" in result.stdout


def test_check_redacts_secrets(write_config, origin, receiver) -> None:
    path = setup(write_config, origin, receiver)
    result = run_cli("check", "-c", str(path), env=ENV)
    assert result.code == 0, result.stderr
    assert "api" in result.stdout and "hook" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert SECRET.removeprefix("whsec_") not in result.stdout + result.stderr


def test_check_reports_file_line_key_and_exits_2(write_config) -> None:
    path = write_config("sources:\n  - name: a\n    kind: http\n    url: http://x\n    evry: 5m\n")
    result = run_cli("check", "-c", str(path))
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"bridge: {path}:5: sources[0].evry: unknown key 'evry' (did you mean 'every'?)"
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sort_byy(@, &id)", "unknown function sort_byy()"),
        ("components[?", "it is incomplete"),
        ("sort_by(@, id)", "argument 2 of sort_by() must be an expression reference, as in &field"),
    ],
)
def test_check_refuses_an_expression_polls_cannot_run(
    write_config, expr: str, problem: str
) -> None:
    # these passed `bridge check` and then failed every poll
    path = write_config(
        f"sources:\n  - name: a\n    kind: http\n    url: http://x\n    items: {expr!r}\n"
    )
    result = run_cli("check", "-c", str(path))
    assert result.code == 2, result.stdout
    assert result.stderr.strip().splitlines() == [
        f"bridge: {path}:5: sources[0].items: bad JMESPath expression {expr!r}: {problem}"
    ]


def test_missing_env_var_is_named_without_a_traceback(write_config, origin, receiver) -> None:
    path = setup(write_config, origin, receiver)
    empty = run_cli("check", "-c", str(path), env={"HOOK_SECRET": ""})
    env = {k: v for k, v in os.environ.items() if k != "HOOK_SECRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "check", "-c", str(path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    line = path.read_text().splitlines().index("    secret: ${HOOK_SECRET}") + 1
    assert proc.returncode == 2 and "HOOK_SECRET" in proc.stderr and f":{line}:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert empty.code == 2 and "hook" in empty.stderr  # an empty secret is no secret either


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.code == 2 and "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_once_polls_delivers_and_keeps_state(write_config, origin, receiver) -> None:
    path = setup(write_config, origin, receiver)
    first = run_cli("once", "-c", str(path), env=ENV)
    assert first.code == 0, first.stderr
    assert receiver.received == []  # the first poll is a silent baseline

    origin.set("/items", [{"id": 1, "v": 2}, {"id": 2, "v": 1}])
    second = run_cli("once", "-c", str(path), env=ENV)
    assert second.code == 0, second.stderr
    types = sorted(e["type"] for e in receiver.events())
    assert types == ["item.added", "item.changed"]
    for got in receiver.received:
        Webhook(SECRET).verify(got.body, got.headers)

    third = run_cli("once", "-c", str(path), env=ENV)
    assert third.code == 0 and len(receiver.received) == 2  # nothing changed, nothing sent
    assert origin.hits("/items")[-1].get("If-None-Match")


def test_once_exits_1_when_a_poll_fails_and_keeps_deliveries(write_config, origin, receiver):
    path = setup(write_config, origin, receiver)
    run_cli("once", "-c", str(path), env=ENV)
    origin.set("/items", body=b"broken", status=500)
    result = run_cli("once", "-c", str(path), env=ENV)
    assert result.code == 1
    assert "api" in result.stderr and "HTTP 500" in result.stderr

    # A failing receiver: the delivery stays queued for the next run.
    origin.set("/items", [{"id": 1, "v": 3}])
    receiver.answer(500)
    assert run_cli("once", "-c", str(path), env=ENV).code == 1  # a delivery of this run failed
    pending = run_cli("deliveries", "-c", str(path), "--status", "pending", "--json", env=ENV)
    [row] = pending.lines()
    assert row["attempts"] == 1 and row["last_error"] == "HTTP 500"
    time.sleep(0.1)
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    assert receiver.events()[-1]["type"] == "item.changed"


def test_unknown_source_name_is_usage_error(write_config, origin, receiver) -> None:
    path = setup(write_config, origin, receiver)
    result = run_cli("once", "-c", str(path), "nope", env=ENV)
    assert result.code == 2 and "unknown source 'nope'" in result.stderr


def test_poll_dry_run_prints_and_stores_nothing(write_config, origin, receiver) -> None:
    path = setup(write_config, origin, receiver)
    run_cli("once", "-c", str(path), env=ENV)
    origin.set("/items", [{"id": 1, "v": 2}])
    dry = run_cli("poll", "-c", str(path), "api", "--dry-run", env=ENV)
    assert dry.code == 0, dry.stderr
    [event] = dry.lines()
    assert event["type"] == "item.changed"
    assert receiver.received == []
    real = run_cli("poll", "-c", str(path), "api", env=ENV)
    assert [e["type"] for e in real.lines()] == ["item.changed"]
    assert [e["type"] for e in receiver.events()] == ["item.changed"]


def test_status_events_deliveries_and_replay(write_config, origin, receiver) -> None:
    path = setup(write_config, origin, receiver)
    run_cli("once", "-c", str(path), env=ENV)
    origin.set("/items", [{"id": 1, "v": 2}])
    receiver.answer(500, 500)
    run_cli("once", "-c", str(path), env=ENV)
    time.sleep(0.1)
    run_cli("once", "-c", str(path), env=ENV)  # the second attempt: the schedule is spent

    status = run_cli("status", "-c", str(path), "--json", env=ENV)
    doc = orjson.loads(status.stdout)
    [source] = doc["sources"]
    assert source["name"] == "api" and source["result"] == "unchanged" and source["failures"] == 0
    assert doc["webhooks"] == [
        {"name": "hook", "configured": True, "pending": 0, "delivered": 0, "dead": 1}
    ]
    table = run_cli("status", "-c", str(path), env=ENV)
    assert table.code == 0 and "LAST_POLL" in table.stdout and "DEAD" in table.stdout

    [event] = run_cli("events", "-c", str(path), "--json", env=ENV).lines()
    assert event["type"] == "item.changed" and event["source"] == "api"
    [dead] = run_cli("deliveries", "-c", str(path), "--status", "dead", "--json", env=ENV).lines()
    assert dead["event_id"] == event["id"] and dead["attempts"] == 2

    replay = run_cli("replay", "-c", str(path), event["id"], env=ENV)
    assert replay.code == 0 and "queued 1" in replay.stdout
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {event["id"]} and len(receiver.received) == 3

    bad = run_cli("replay", "-c", str(path), "evt_nope", env=ENV)
    assert bad.code == 2 and "evt_nope" in bad.stderr


def test_discard_gives_up_on_a_removed_webhooks_queue_and_replay_takes_it_back(
    write_config, origin, receiver
) -> None:
    path = setup(write_config, origin, receiver)
    with_hook = path.read_text()
    run_cli("once", "-c", str(path), env=ENV)
    origin.set("/items", [{"id": 1, "v": 2}])
    receiver.answer(500)
    run_cli("once", "-c", str(path), env=ENV)  # one attempt, refused: the delivery waits
    [sent] = receiver.received
    path.write_text(
        bridge_config(api(origin, webhooks=["other"]), webhooks=hook(receiver, "other"))
    )

    table = run_cli("status", "-c", str(path), env=ENV).stdout
    assert "`bridge discard --webhook hook` gives up on them" in table

    unsure = run_cli("discard", "-c", str(path), env=ENV)
    assert unsure.code == 2 and unsure.stderr.count("\n") == 1
    assert "give EVENT_ID..., --webhook or --source" in unsure.stderr
    typo = run_cli("discard", "-c", str(path), "--webhook", "hok", env=ENV)
    assert typo.code == 2 and "unknown webhook 'hok' (known: hook, other)" in typo.stderr
    typo = run_cli("discard", "-c", str(path), "--source", "apj", env=ENV)
    assert typo.code == 2 and "unknown source 'apj' (known: api)" in typo.stderr

    done = run_cli("discard", "-c", str(path), "--webhook", "hook", env=ENV)
    assert done.code == 0, done.stderr
    assert done.stdout.strip() == (
        "discarded 1 delivery; `bridge deliveries --status dead` lists them"
    )
    status = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    assert status["webhooks"][1] == {
        "name": "hook", "configured": False, "pending": 0, "delivered": 0, "dead": 1
    }  # fmt: skip
    [dead] = run_cli(
        "deliveries", "-c", str(path), "--status", "dead", "--webhook", "hook", "--json", env=ENV
    ).lines()
    assert dead["attempts"] == 1 and dead["last_error"] == "discarded (bridge discard)"
    assert "bridge discard" not in run_cli("status", "-c", str(path), env=ENV).stdout
    assert (
        run_cli("deliveries", "-c", str(path), "--webhook", "other", "--json", env=ENV).lines()
        == []
    )
    # A replay of every dead delivery leaves those of a webhook that is not in the config.
    skipped = run_cli("replay", "-c", str(path), "--dead", env=ENV)
    assert skipped.code == 0 and skipped.stdout.startswith("queued 0 deliveries again")

    # Discarded is not lost: with the webhook back, replay sends it, under its first webhook-id.
    path.write_text(with_hook)
    again = run_cli("replay", "-c", str(path), "--dead", "--webhook", "hook", env=ENV)
    assert again.code == 0 and again.stdout.startswith("queued 1 delivery again")
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    assert [r.headers["webhook-id"] for r in receiver.received] == [sent.headers["webhook-id"]] * 2


def test_discard_takes_only_pending_deliveries_and_an_attempt_in_flight_still_ends(
    write_config, origin, receiver
) -> None:
    from bridge.model import Finished
    from bridge.state import open_state

    path = write_config(bridge_config(api(origin), webhooks=hook(receiver, retry=["1h"])))
    origin.set("/items", [{"id": 1, "v": 1}])
    run_cli("once", "-c", str(path), env=ENV)
    origin.set("/items", [{"id": 1, "v": 1}, {"id": 2, "v": 1}])
    run_cli("once", "-c", str(path), env=ENV)  # item 2 added: delivered
    origin.set("/items", [{"id": 1, "v": 1}, {"id": 2, "v": 2}])
    receiver.answer(410)
    run_cli("once", "-c", str(path), env=ENV)  # item 2 changed: 410 Gone, dead at once
    origin.set("/items", [{"id": 1, "v": 2}, {"id": 2, "v": 3}, {"id": 3, "v": 1}])
    receiver.answer(500, 500, 500)
    run_cli("once", "-c", str(path), env=ENV)  # three events: refused, each due again in 1 h
    state = open_state(str(path.parent / "state.db"))
    try:
        # A running sender holds one of them (a lease, as `bridge run` takes one to send it;
        # one per source at a time).
        later = time.time() + 7200
        [first] = state.outbox.claim_due("hook", later, 2, 60.0)
        before = {d["id"]: d for d in state.admin.deliveries()}
        second = max(i for i, d in before.items() if d["status"] == "pending" and i != first.id)
    finally:
        state.close()
    assert sorted(d["status"] for d in before.values()) == ["dead", "delivered", *["pending"] * 3]

    result = run_cli("discard", "-c", str(path), "--source", "api", env=ENV)
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == (
        "discarded 3 deliveries; `bridge deliveries --status dead` lists them; 1 delivery "
        "being sent at this moment will count as delivered if that attempt succeeds"
    )
    state = open_state(str(path.parent / "state.db"))
    try:
        after = {d["id"]: d for d in state.admin.deliveries()}
        for id_, row in before.items():  # what was not pending is as it was
            if row["status"] != "pending":
                assert after[id_] == row
        assert [d["last_error"] for d in after.values() if d["status"] == "pending"] == []
        # Attempts in flight end: one refused (it stays discarded), one delivered (it counts).
        state.outbox.finish_attempts(
            [
                Finished(first.id, "pending", later, 0.1, 500, "HTTP 500", later + 3600),
                Finished(second, "delivered", later, 0.1, 204, None, None),
            ]
        )
        ended = {d["id"]: d for d in state.admin.deliveries()}
    finally:
        state.close()
    assert ended[first.id]["status"] == "dead"
    assert ended[first.id]["last_error"] == "discarded (bridge discard)"
    assert ended[second]["status"] == "delivered"


def test_discard_by_event_id_and_webhook(write_config, origin, receiver) -> None:
    twice = {**hook(receiver, retry=["1h"]), "copy": webhook(receiver.url(), "${HOOK_SECRET}")}
    path = write_config(bridge_config(api(origin, webhooks=["hook", "copy"]), webhooks=twice))
    origin.set("/items", [{"id": 1, "v": 1}])
    run_cli("once", "-c", str(path), env=ENV)
    origin.set("/items", [{"id": 1, "v": 2}, {"id": 2, "v": 1}])
    receiver.answer(500, 500, 500, 500)
    run_cli("once", "-c", str(path), env=ENV)  # two events, to two webhooks each: all refused
    events = {e["type"]: e for e in run_cli("events", "-c", str(path), "--json", env=ENV).lines()}
    changed, added = events["item.changed"], events["item.added"]

    unknown = run_cli("discard", "-c", str(path), "evt_nope", env=ENV)
    assert unknown.code == 2 and "unknown event id 'evt_nope'" in unknown.stderr
    one = run_cli("discard", "-c", str(path), changed["id"], "--webhook", "copy", env=ENV)
    assert one.code == 0 and one.stdout.startswith("discarded 1 delivery;")
    rest = run_cli("discard", "-c", str(path), changed["id"], env=ENV)
    assert rest.code == 0 and rest.stdout.startswith("discarded 1 delivery;")

    rows = run_cli("deliveries", "-c", str(path), "--json", env=ENV).lines()
    statuses = {(r["event_id"], r["webhook"]): r["status"] for r in rows}
    assert statuses == {
        (changed["id"], "hook"): "dead",
        (changed["id"], "copy"): "dead",
        (added["id"], "hook"): "pending",
        (added["id"], "copy"): "pending",
    }


def test_run_delivers_and_stops_on_sigterm(write_config, origin, receiver) -> None:
    origin.set("/items", [{"id": 1}])
    path = write_config(
        bridge_config(api(origin, every="1s", jitter="0s"), webhooks=hook(receiver))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(origin.hits("/items")) >= 1, timeout=15)
        origin.set("/items", [{"id": 1}, {"id": 2}])
        wait_for(lambda: len(receiver.received) >= 1, timeout=15)
        second = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "-c", str(path)],
            env={**os.environ, **ENV}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 1 and "another `bridge run`" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert receiver.events()[0]["data"]["key"] == 2
