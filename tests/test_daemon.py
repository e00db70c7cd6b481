"""`bridge run` as a process: reload, graceful stop, isolation, bad state files, and kill -9."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bridge.model import Finished, NewEvent, PollCommit
from bridge.polling.keys import storage_key
from bridge.state import State, open_state
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

ENV = {**os.environ, "HOOK_SECRET": SECRET}

pytestmark = pytest.mark.slow  # every test starts `bridge` processes


def hook(receiver: Receiver, name: str = "hook", **options: Any) -> dict[str, dict[str, Any]]:
    """`webhooks:` of one, `hook` unless named: quick retries, two deliveries at a time."""
    options = {"retry": ["100ms"] * 10, "concurrency": 2, "timeout": "2s", **options}
    return {name: webhook(receiver.url(), "${HOOK_SECRET}", **options)}


def polled(name: str, url: str, **options: Any) -> dict[str, Any]:
    """A source of items keyed by id, polled every second without jitter, sent to `hook`."""
    defaults = {"items": "@", "key": "id", "every": "1s", "jitter": "0s", "timeout": "5s"}
    return http_source(name, url, **{**defaults, "webhooks": ["hook"], **options})


def start(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def state_of(path: Path) -> Iterator[State]:
    """The state file of the config at `path`, opened as another process would."""
    state = open_state(str(path.parent / "state.db"), create=False)
    try:
        yield state
    finally:
        state.close()


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_sighup_reload_adds_removes_and_refuses_bad_config(
    write_config, origin: Origin, receiver: Receiver
) -> None:
    origin.set("/a", [{"id": 1}])
    origin.set("/b", [{"id": 1}])
    path = write_config(
        bridge_config(polled("a", origin.url("/a")), grace="10s", webhooks=hook(receiver))
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        path.write_text(
            bridge_config(polled("b", origin.url("/b")), grace="10s", webhooks=hook(receiver))
        )
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(origin.hits("/b")) >= 2, timeout=15)
        hits_a = len(origin.hits("/a"))
        time.sleep(1.5)
        assert len(origin.hits("/a")) == hits_a  # removed: no longer polled

        path.write_text("sources: [\n")  # broken YAML: refused, the running config stays
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        origin.set("/b", [{"id": 1}, {"id": 2}])
        wait_for(lambda: len(receiver.received) >= 1, timeout=15)
        assert proc.poll() is None
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "reload refused" in err and "bridge.yaml:1" in err
    assert receiver.events()[0]["data"]["source"] == "b"


def test_sigterm_lets_an_inflight_delivery_finish(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    receiver.delay = 1.5
    path = write_config(
        bridge_config(polled("a", origin.url("/a")), grace="10s", webhooks=hook(receiver))
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        origin.set("/a", [{"id": 1}, {"id": 2}])
        wait_for(lambda: receiver.in_flight == 1, timeout=15)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert len(receiver.received) == 1
    status = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    assert status["webhooks"] == [
        {"name": "hook", "configured": True, "pending": 0, "delivered": 1, "dead": 0}
    ]


def test_a_second_signal_exits_at_once_and_loses_nothing(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    receiver.delay = 4
    path = write_config(
        bridge_config(polled("a", origin.url("/a")), grace="20s", webhooks=hook(receiver))
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        origin.set("/a", [{"id": 1}, {"id": 2}])
        wait_for(lambda: receiver.in_flight == 1, timeout=15)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        code, _ = stop(proc)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    # The interrupted delivery is still queued: it goes out once its lease runs out.
    status = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    assert status["webhooks"][0]["pending"] == 1


def test_a_webhook_taken_out_of_the_config_keeps_its_deliveries_and_says_so(
    write_config, origin, receiver
) -> None:
    origin.set("/a", [{"id": 1}])
    retry = ["1s"] + ["100ms"] * 9
    with_hook = bridge_config(
        polled("a", origin.url("/a")), grace="10s", webhooks=hook(receiver, retry=retry)
    )
    path = write_config(with_hook)
    assert run_cli("once", "-c", str(path), env=ENV).code == 0  # the baseline
    origin.set("/a", [{"id": 1}, {"id": 2}])
    receiver.answer(500)
    assert run_cli("once", "-c", str(path), env=ENV).code == 1  # one attempt, refused: exit 1
    assert len(receiver.received) == 1

    # The webhook is renamed: "hook" is gone from the config, its delivery is still waiting.
    renamed = hook(receiver, "other", retry=retry)
    path.write_text(
        bridge_config(
            polled("a", origin.url("/a"), webhooks=["other"]), grace="10s", webhooks=renamed
        )
    )
    status = orjson.loads(run_cli("status", "-c", str(path), "--json", env=ENV).stdout)
    assert status["webhooks"] == [
        {"name": "other", "configured": True, "pending": 0, "delivered": 0, "dead": 0},
        {"name": "hook", "configured": False, "pending": 1, "delivered": 0, "dead": 0},
    ]
    table = run_cli("status", "-c", str(path), env=ENV).stdout
    assert "hook (not in the config)" in table

    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 4, timeout=15)  # running, past the retry
        assert len(receiver.received) == 1  # nothing sends a removed webhook's deliveries
        path.write_text(with_hook)  # back in the config: its queue goes out
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(receiver.received) == 2, timeout=15)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert (
        "webhook hook is not in the config; deliveries pending for it: 1 (kept, they go out if "
        "it is added back; `bridge discard --webhook hook` gives up on them)" in err
    )
    assert [e["data"]["key"] for e in receiver.events()] == [2, 2]


def test_a_hung_source_does_not_delay_others(write_config, origin, receiver) -> None:
    origin.set("/slow", [{"id": 1}], delay=4)
    origin.set("/fast", [{"id": 1}])
    path = write_config(
        bridge_config(
            polled("slow", origin.url("/slow")),
            polled("fast", origin.url("/fast")),
            grace="10s",
            webhooks=hook(receiver),
        )
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/slow")) >= 1, timeout=15)
        seen = len(origin.hits("/fast"))
        wait_for(lambda: len(origin.hits("/fast")) >= seen + 2, timeout=3.5)
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_corrupt_state_file_is_one_line_exit_1(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(
        bridge_config(polled("a", origin.url("/a")), grace="10s", webhooks=hook(receiver))
    )
    state = path.parent / "state.db"
    state.write_bytes(b"this is not a database" * 100)
    for command in (["once"], ["status"], ["run"]):
        result = run_cli(*command, "-c", str(path), env=ENV)
        assert result.code == 1, command
        assert str(state) in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_state_directory_is_one_line(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    text = bridge_config(
        polled("a", origin.url("/a")),
        state="nowhere/state.db",
        grace="10s",
        webhooks=hook(receiver),
    )
    result = run_cli("once", "-c", str(write_config(text)), env=ENV)
    assert result.code == 1 and "nowhere" in result.stderr and "Traceback" not in result.stderr


def renderers_of(pid: int) -> list[int]:
    """Live processes started by `pid` (parent still `pid`) or renderer workers serving it
    (bridge/templates/child.py gets the daemon's pid as its first argument): once `pid` is
    gone, its orphans are someone else's children, so the workers are found by argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("State", "").startswith(("Z", "X")):
            continue  # dead, only not yet reaped
        # python -P -c CODE ROOT PARENT_PID ...: CODE imports bridge.templates.child
        worker = argv[1:3] == [b"-P", b"-c"] and b"bridge.templates.child" in argv[3]
        if fields.get("PPid", "").strip() == str(pid) or (
            worker and argv[5:6] == [str(pid).encode()]
        ):
            found.append(int(entry.name))
    return found


SECRET_A = "whsec_" + base64.b64encode(b"a" * 24).decode()
SECRET_B = "whsec_" + base64.b64encode(b"b" * 24).decode()


def test_kill_9_loses_no_change(write_config, origin: Origin, receiver: Receiver) -> None:
    """Kill the daemon at random moments while the origin changes and deliveries are slow: a
    plain webhook, one with a body template (rendered in worker processes, which must die with
    the daemon) and one signing with two secrets all get every committed event."""
    rng = random.Random(7)
    receivers = {"hook": receiver, "templated": Receiver(), "rotated": Receiver()}
    for r in receivers.values():
        r.delay = 0.15
        if r is not receiver:
            r.server.start()
    names = [f"s{i}" for i in range(3)]
    versions = {n: {k: 0 for k in range(4)} for n in names}

    def publish(name: str) -> None:
        origin.set(f"/{name}", [{"id": k, "v": v} for k, v in versions[name].items()])

    for n in names:
        publish(n)
    sources = [polled(n, origin.url(f"/{n}"), every="300ms", webhooks=[*receivers]) for n in names]
    body = {"type": "{{ type }}", "source": "{{ data.source }}", "v": "{{ data.after.v }}"}
    webhooks = {
        # timeout 1s: a delivery in flight at the last kill waits out its lease (timeout + 30s)
        **hook(receiver, timeout="1s"),
        **hook(receivers["templated"], "templated", timeout="1s", body=body),
        "rotated": {
            **hook(receivers["rotated"], timeout="1s")["hook"],
            "secret": [SECRET_A, SECRET_B],
        },
    }
    path = write_config(bridge_config(*sources, grace="10s", webhooks=webhooks))
    kills = 0
    workers_seen: set[int] = set()
    try:
        for _ in range(8):
            proc = start(path)
            deadline = time.monotonic() + rng.uniform(0.8, 2.0)
            while time.monotonic() < deadline:
                name = rng.choice(names)
                versions[name][rng.randrange(4)] += 1
                publish(name)
                time.sleep(rng.uniform(0.05, 0.3))
            workers_seen.update(renderers_of(proc.pid))
            proc.kill()
            proc.communicate(timeout=10)
            kills += 1
            # The kernel kills the renderer workers (parent-death signal); no orphan is left.
            wait_for(lambda pid=proc.pid: not renderers_of(pid), timeout=5)
        assert workers_seen  # the templated webhook did start renderer workers to kill

        # A last clean run: everything the origin now says is detected and every event delivered.
        for r in receivers.values():
            r.delay = 0
        proc = start(path)
        try:

            def settled() -> bool:
                with state_of(path) as state:
                    counts = state.admin.delivery_counts().values()
                    pending = sum(c["pending"] + c["dead"] for c in counts)  # not delivered
                    stored = {
                        (s, k): item["v"]
                        for s in state.snapshots.source_rows()
                        for k, item in state.snapshots.item_contents(
                            s, list(state.snapshots.item_hashes(s))
                        ).items()
                    }
                wanted = {(n, storage_key(k)): v for n in names for k, v in versions[n].items()}
                return pending == 0 and stored == wanted

            wait_for(settled, timeout=45, interval=0.2)
        finally:
            code, err = stop(proc)
        assert code == 0, err
    finally:
        for r in receivers.values():
            if r is not receiver:
                r.server.stop()

    with state_of(path) as state:
        event_ids = {e["id"] for e in state.admin.events(limit=1_000_000)}
    assert event_ids
    for name, r in receivers.items():
        received = [x.headers["webhook-id"] for x in r.received]
        assert set(received) == event_ids, name  # every committed change went out, to each
        duplicates = len(received) - len(set(received))
        assert duplicates <= kills * 2, name  # only what was in flight at a kill (concurrency 2)
    for x in receiver.received + receivers["templated"].received:
        Webhook(SECRET).verify(x.body, x.headers)
    for x in receivers["rotated"].received:  # signed with each: both old and new key verify
        Webhook(SECRET_A).verify(x.body, x.headers)
        Webhook(SECRET_B).verify(x.body, x.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(x.body, x.headers)
    # The template's body, not the envelope, went to `templated`, rendered over the event.
    by_id = {x.headers["webhook-id"]: x.json for x in receiver.received}
    for x in receivers["templated"].received:
        e = by_id[x.headers["webhook-id"]]
        assert x.json == {
            "type": e["type"],
            "source": e["data"]["source"],
            "v": str(e["data"]["after"]["v"]),
        }
    # The receiver can rebuild the origin's final state from the latest `after` of each key.
    latest: dict[tuple[str, int], int] = {}
    for e in sorted(receiver.events(), key=lambda e: e["timestamp"]):
        latest[(e["data"]["source"], e["data"]["key"])] = e["data"]["after"]["v"]
    changed = {(n, k): v for n in names for k, v in versions[n].items() if v > 0}
    assert {k: latest[k] for k in changed} == changed


def test_kill_9_mid_rendering_leaves_no_renderer(write_config, origin, receiver) -> None:
    """A worker busy with a runaway body template when the daemon is killed dies with it (its
    parent-death signal): an idle one would exit anyway, on its closed stdin."""
    runaway = "{% for a in range(10000) %}{% for b in 'x' * 1000000 %}{% endfor %}{% endfor %}"
    origin.set("/a", [{"id": 1}])
    path = write_config(
        bridge_config(
            polled("a", origin.url("/a"), every="300ms"),
            grace="10s",
            webhooks=hook(receiver, body={"text": runaway}),
        )
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        origin.set("/a", [{"id": 1}, {"id": 2}])  # an event: its rendering never ends in time

        def rendering() -> bool:
            # A worker costs ~0.1 s of CPU to start and none idle: one running with 0.4 s
            # spent is mid-rendering.
            for pid in renderers_of(proc.pid):
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                    if fields[0] == "R" and cpu >= 0.4:
                        return True
            return False

        wait_for(rendering, timeout=30, interval=0.05)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    try:
        wait_for(lambda: not renderers_of(proc.pid), timeout=5)
    finally:  # a survivor would render on for minutes: not past this test
        for pid in renderers_of(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_once_beside_the_daemon_leaves_delivering_to_it(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(
        bridge_config(
            polled("a", origin.url("/a"), every="1h"), grace="10s", webhooks=hook(receiver)
        )
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        origin.set("/a", [{"id": 1}, {"id": 2}])
        result = run_cli("once", "-c", str(path), env=ENV)
        assert result.code == 0, result.stderr
        assert "a `bridge run` is using this state file" in result.stderr
        # The daemon notices the new delivery in the shared state file and sends it, once.
        wait_for(lambda: len(receiver.received) == 1, timeout=10)
        time.sleep(1)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert len(receiver.received) == 1 and receiver.events()[0]["data"]["key"] == 2


def test_retention_trims_old_history_but_keeps_pending(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(
        bridge_config(
            polled("a", origin.url("/a"), every="1h"), grace="10s", webhooks=hook(receiver)
        )
    )
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    old = time.time() - 40 * 86400
    with state_of(path) as state:
        # Three polls of 40 days ago, each with an event to a webhook since removed ("gone"):
        # its delivery was delivered, is dead, is still pending. (trim's polls and attempts,
        # which no listing shows: tests/state/test_sqlite_backend.py)
        row = state.snapshots.source_row("a")
        aged = [
            PollCommit(
                replace(row, last_poll_at=old),
                "changed",
                0.1,
                events=[NewEvent(f"evt_old{i}", "a", "item.added", str(i), old, b"{}", ("gone",))],
            )
            for i in range(3)
        ]
        state.snapshots.commit_polls([*aged, PollCommit(row, "unchanged", 0.1, history=False)])
        for status, http in (("delivered", 204), ("dead", 410)):  # evt_old0, then evt_old1
            [d] = state.outbox.claim_due("gone", time.time(), 1, 60.0)
            state.outbox.finish_attempts([Finished(d.id, status, old, 0.1, http, None)])
        assert [d["status"] for d in state.admin.deliveries()] == ["pending", "dead", "delivered"]
    proc = start(path)
    try:

        def trimmed() -> bool:
            with state_of(path) as state:
                return [e["id"] for e in state.admin.events()] == ["evt_old2"]

        wait_for(trimmed, timeout=15, interval=0.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    with state_of(path) as state:
        assert [d["status"] for d in state.admin.deliveries()] == ["pending"]


def test_read_only_state_file_is_one_line(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    path = write_config(
        bridge_config(polled("a", origin.url("/a")), grace="10s", webhooks=hook(receiver))
    )
    assert run_cli("once", "-c", str(path), env=ENV).code == 0
    state = path.parent / "state.db"
    # As root, permission bits do not stop writes; the immutable attribute does.
    locked = subprocess.run(["chattr", "+i", str(state)], capture_output=True)
    if locked.returncode != 0:
        pytest.skip(f"cannot make the file immutable here: {locked.stderr.decode().strip()}")
    try:
        origin.set("/a", [{"id": 1}, {"id": 2}])
        result = run_cli("once", "-c", str(path), env=ENV)
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert result.code == 1
    assert str(state) in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_http_listen_port_in_use_is_one_line(write_config, origin, receiver) -> None:
    import socket

    origin.set("/a", [{"id": 1}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = bridge_config(
            polled("a", origin.url("/a")),
            grace="10s",
            http={"listen": f"127.0.0.1:{port}"},
            webhooks=hook(receiver),
        )
        result = run_cli("run", "-c", str(write_config(text)), env=ENV, timeout=30)
    assert result.code == 1, result.stderr
    assert f"http.listen 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_sighup_applies_changed_options_and_keeps_state(write_config, origin, receiver) -> None:
    origin.set("/a", [{"id": 1}])
    origin.set("/a2", [{"id": 1}, {"id": 2}])
    path = write_config(
        bridge_config(polled("a", origin.url("/a")), grace="10s", webhooks=hook(receiver))
    )
    proc = start(path)
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        path.write_text(
            bridge_config(polled("a", origin.url("/a2")), grace="10s", webhooks=hook(receiver))
        )
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(receiver.received) >= 1, timeout=15)
        time.sleep(1.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    # The snapshot survived the reload: only the item new at the new URL is an event.
    assert [(e["type"], e["data"]["key"]) for e in receiver.events()] == [("item.added", 2)]
