"""Two `bridge run` instances on one PostgreSQL state, each with its own config (A polls a1
and a2, B polls b1, both send to the same webhook) and its own console: what A's console shows
of B's work and what its actions can do to it (issue 17)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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
    free_port,
    http_source,
    wait_for,
    webhook,
)
from tests.state.conftest import _drop_session_database, postgresql_url  # noqa: F401 (fixtures)
from tests.test_console_api import OpenApi, _openapi_path

pytestmark = pytest.mark.slow  # starts two `bridge` processes

ENV = {**os.environ, "HOOK_SECRET": SECRET}
NOT_HERE = "source b1 is not in this instance's config: the instance that has it polls it"


def polled(name: str, url: str) -> dict[str, Any]:
    """A source of items keyed by id, polled every second, sent to `hook`."""
    options = {"items": "@", "key": "id", "every": "1s", "jitter": "0s", "webhooks": ["hook"]}
    return http_source(name, url, **options)


class Instance:
    """A `bridge run` of one config, its console on 127.0.0.1:<port>."""

    def __init__(self, path: Path, port: int):
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(path)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON answer) of one console API request."""
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())

    def get(self, path: str) -> Any:
        status, answer = self.call("GET", path)
        assert status == 200, answer
        return answer

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def configs(tmp_path: Path, url: str, hooks: Any, **sources: list[dict[str, Any]]) -> list[Any]:
    """One config per keyword (its sources), all on the state at `url`: (path, console port)."""
    made = []
    for label, listed in sources.items():
        path, port = tmp_path / f"{label}.yaml", free_port()
        http = {"listen": f"127.0.0.1:{port}"}
        path.write_text(bridge_config(*listed, state=url, grace="5s", http=http, webhooks=hooks))
        made.append((path, port))
    return made


@contextlib.contextmanager
def instances(made: list[tuple[Path, int]]) -> Iterator[list[Instance]]:
    """`bridge run` of each (config, console port), stopped cleanly after."""
    started: list[Instance] = []
    try:
        for path, port in made:
            started.append(Instance(path, port))
        for one in started:
            wait_for(one.ready, timeout=30, interval=0.1)
        yield started
    finally:
        stopped = [one.stop() for one in started]
    for code, err in stopped:
        assert code == 0, err


def polled_all(instance: Instance, *names: str) -> bool:
    """Whether the instance's console shows each of these sources polled."""
    rows = {s["name"]: s for s in instance.get("/api/sources")["sources"]}
    return all(rows[n]["last_poll_at"] is not None for n in names)


def test_a_console_shows_and_acts_on_another_instances_sources(
    tmp_path: Path,
    postgresql_url: str,  # noqa: F811 (the fixture imported above)
    origin: Origin,
    receiver: Receiver,
) -> None:
    for name in ("a1", "a2", "b1"):
        origin.set(f"/{name}", [{"id": 1, "name": name}])
    hooks = {"hook": webhook(receiver.url(), "${HOOK_SECRET}", retry=["100ms"], timeout="2s")}
    a1, a2, b1 = (polled(n, origin.url(f"/{n}")) for n in ("a1", "a2", "b1"))
    made = configs(tmp_path, postgresql_url, hooks, a=[a1, a2], b=[b1])
    receiver.default_status = 410  # every first delivery is dead at once: something to replay

    with instances(made) as (a, b):
        # The first poll of each is its baseline; the change after it is what gets sent.
        wait_for(lambda: polled_all(a, "a1", "a2") and polled_all(b, "b1"), timeout=30)
        for name in ("a1", "a2", "b1"):
            origin.set(f"/{name}", [{"id": 1, "name": name}, {"id": 2, "name": name}])

        def dead_of_each() -> bool:
            dead = a.get("/api/deliveries?status=dead")["deliveries"]
            return {d["source"] for d in dead} == {"a1", "a2", "b1"}

        wait_for(dead_of_each, timeout=30, interval=0.2)

        # Events and deliveries: the state's, whoever polled and sent them.
        events = {e["source"]: e for e in a.get("/api/events?limit=100")["events"]}
        assert set(events) == {"a1", "a2", "b1"}
        assert events == {e["source"]: e for e in b.get("/api/events?limit=100")["events"]}
        b1_event = events["b1"]["id"]
        dead = a.get("/api/deliveries?status=dead")["deliveries"]
        assert [d["event_id"] for d in dead if d["source"] == "b1"] == [b1_event]
        [counts] = a.get("/api/deliveries")["webhooks"]
        assert counts["name"] == "hook" and counts["dead"] == 3

        # Sources: each console lists its own config's sources, then those only another has.
        listed = a.get("/api/sources")
        assert [s["name"] for s in listed["sources"]] == ["a1", "a2", "b1"]
        assert [s["configured"] for s in listed["sources"]] == [True, True, False]
        assert (listed["configured"], listed["elsewhere"], listed["total"]) == (2, 1, 3)
        # Each changed once (its polls since may be unchanged: every second, by either instance).
        assert all(s["last_change_at"] is not None for s in listed["sources"])
        assert [s["name"] for s in b.get("/api/sources")["sources"]] == ["b1", "a1", "a2"]
        status, answer = a.call("GET", "/api/sources/b1")
        assert status == 200 and answer["configured"] is False, answer
        assert (answer["kind"], answer["schedule"], answer["webhooks"]) == (None, None, [])
        status, answer = a.call("GET", "/api/sources/nowhere")
        assert (status, answer["error"]) == (404, "unknown source 'nowhere'")

        # Replay on A of B's dead delivery: the shared outbox sends it (A or B) under its id.
        receiver.default_status = 204
        before = len(receiver.received)
        status, answer = a.call("POST", "/api/replay", {"event_ids": [b1_event]})
        assert (status, answer["queued"]) == (200, 1), answer
        wait_for(lambda: len(receiver.received) > before, timeout=15, interval=0.1)
        time.sleep(0.5)  # nothing else was queued: no second send follows
        [again] = receiver.received[before:]
        assert again.headers["webhook-id"] == b1_event
        assert Webhook(SECRET).verify(again.body, again.headers)["data"]["source"] == "b1"
        wait_for(lambda: a.get("/api/deliveries?status=dead")["webhooks"][0]["dead"] == 2)

        # Poll now on A of a source only B has: A cannot poll what it has no config for.
        status, answer = a.call("POST", "/api/sources/b1/poll", {})
        assert (status, answer["error"]) == (404, NOT_HERE)
        status, answer = b.call("POST", "/api/sources/b1/poll", {})
        assert status == 200 and answer["source"] == "b1", answer


def test_a_console_lists_sources_only_another_instance_polls(
    tmp_path: Path,
    postgresql_url: str,  # noqa: F811 (the fixture imported above)
    origin: Origin,
    receiver: Receiver,
) -> None:
    for name in ("a1", "b1"):
        origin.set(f"/{name}", [{"id": 1}])
    hooks = {"hook": webhook(receiver.url(), "${HOOK_SECRET}", timeout="2s")}
    a1, b1 = (polled(n, origin.url(f"/{n}")) for n in ("a1", "b1"))
    made = configs(tmp_path, postgresql_url, hooks, a=[a1], b=[b1])
    with instances(made) as (a, b):
        wait_for(lambda: polled_all(a, "a1") and polled_all(b, "b1"), timeout=30)
        for name in ("a1", "b1"):
            origin.set(f"/{name}", [{"id": 1}, {"id": 2}])
        wait_for(lambda: len(receiver.received) == 2, timeout=30, interval=0.2)
        listed = a.get("/api/sources")
        assert {s["name"] for s in listed["sources"]} == {"a1", "b1"}
        assert a.call("GET", "/api/sources/b1")[0] == 200
        # The answers about a source not configured here are the documented ones.
        api = OpenApi(orjson.loads(Path(_openapi_path()).read_bytes()))
        api.check("/api/sources", "get", 200, listed)
        api.check("/api/sources/{name}", "get", *a.call("GET", "/api/sources/b1"))
        api.check("/api/deliveries", "get", 200, a.get("/api/deliveries?source=b1"))
        api.check("/api/sources/{name}/poll", "post", *a.call("POST", "/api/sources/b1/poll", {}))
        assert [e["source"] for e in a.get("/api/events?source=b1")["events"]] == ["b1"]
        [delivered] = a.get("/api/deliveries?source=b1")["deliveries"]
        assert (delivered["source"], delivered["status"]) == ("b1", "delivered")
        status, answer = a.call("POST", "/api/discard", {"source": "b1"})
        assert (status, answer["discarded"]) == (200, 0), answer
        status, answer = a.call("POST", "/api/sources/b1/poll", {})
        assert (status, answer["error"]) == (404, NOT_HERE)
        html = urllib.request.urlopen(f"http://127.0.0.1:{a.port}/", timeout=10).read().decode()
        assert "only another instance polls" in html and 'data-source="b1"' in html
        page = urllib.request.urlopen(f"http://127.0.0.1:{a.port}/sources/b1", timeout=10).read()
        assert b"Not in this instance's config" in page and b"Poll now" not in page
