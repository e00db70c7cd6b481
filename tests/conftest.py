"""Shared fixtures: a controllable origin API and a recording webhook receiver, both real aiohttp
servers on 127.0.0.1 running in a background thread (so subprocess-run CLI tests can reach them
too), and helpers to write configs and run the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import pty
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from hypothesis import settings

from bridge.config import load_config
from bridge.delivery.dispatcher import Dispatcher
from bridge.http import HttpClient
from bridge.polling.engine import Engine
from bridge.state import State, open_state

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# The property tests' examples: 200 each in the full suite; the quick loop (-m "not slow"),
# there for fast feedback, tries 30. `--hypothesis-profile full|quick` chooses either.
settings.register_profile("full", max_examples=200, deadline=None)
settings.register_profile("quick", max_examples=30, deadline=None)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("hypothesis_profile", None) is None:
        quick = config.getoption("markexpr", "") == "not slow"
        settings.load_profile("quick" if quick else "full")


class ThreadedServer:
    """An aiohttp app served on 127.0.0.1:<free port> from its own thread and event loop."""

    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        # A handler still running at stop() (a receiver told to take its time) is cancelled
        # rather than waited for: what it would still do, no test looks at.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Doc:
    """What the origin answers on one path."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    etag: bool = True
    delay: float = 0.0


class Origin:
    """An API whose documents the test sets; honours If-None-Match; records every request."""

    def __init__(self) -> None:
        self.docs: dict[str, Doc] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = ThreadedServer(app)

    def set(
        self,
        path: str,
        doc: Any = None,
        *,
        body: bytes | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
        etag: bool = True,
        delay: float = 0.0,
    ) -> None:
        raw = body if body is not None else orjson.dumps(doc)
        self.docs[path] = Doc(raw, status, headers or {}, etag, delay)

    def url(self, path: str) -> str:
        return self.server.url(path)

    def hits(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path_qs, dict(request.headers)))
        doc = self.docs.get(request.path_qs) or self.docs.get(request.path)
        if doc is None:
            return web.Response(status=404, text="not found")
        if doc.delay:
            await asyncio.sleep(doc.delay)
        headers = dict(doc.headers)
        if doc.etag and doc.status == 200:
            tag = '"' + hashlib.sha1(doc.body).hexdigest()[:16] + '"'
            headers["ETag"] = tag
            if request.headers.get("If-None-Match") == tag:
                return web.Response(status=304, headers=headers)
        return web.Response(
            status=doc.status, body=doc.body, headers=headers, content_type="application/json"
        )


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """A webhook endpoint that records each POST and answers from a script of statuses."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.default_status = 204
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.server = ThreadedServer(app)

    def url(self, path: str = "/hook") -> str:
        return self.server.url(path)

    def answer(self, *statuses: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next POSTs with these statuses (then the default)."""
        for s in statuses:
            self.script.append(s if isinstance(s, tuple) else (s, {}))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.received.append(Received(dict(request.headers), body))
            status, headers = self.script.pop(0) if self.script else (self.default_status, {})
            if 300 <= status < 400:
                headers = {"Location": self.url("/elsewhere"), **headers}
            return web.Response(status=status, headers=headers)
        finally:
            self.in_flight -= 1

    def events(self) -> list[Any]:
        return [r.json for r in self.received]


@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin()
    o.server.start()
    yield o
    o.server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.server.start()
    yield r
    r.server.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a bridge.yaml (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "bridge.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


class _ConfigDumper(yaml.SafeDumper):
    """Indents a list under its key, as configs are written by hand."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def bridge_config(
    *sources: dict[str, Any],
    state: str | None = "state.db",
    webhooks: dict[str, dict[str, Any]] | None = None,
    defaults: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
    **top: Any,
) -> str:
    """A bridge.yaml text of these Python values, keys in the order given: `state`, any other
    top-level keys (`grace=...`), `http`, `defaults`, `webhooks`, then `sources`. A section that
    is None (or no sources) is left out. Short lists and mappings of plain values are written in
    flow style (`webhooks: [hook]`, `headers: {X-Team: ops}`), strings quoted only where YAML
    needs it; `${ENV}` references stay as they are, for the loader to fill in."""
    doc = {"state": state, **top, "http": http, "defaults": defaults, "webhooks": webhooks}
    doc["sources"] = list(sources) or None
    return yaml.dump(
        {k: v for k, v in doc.items() if v is not None},
        Dumper=_ConfigDumper,
        sort_keys=False,
        default_flow_style=None,
        width=10_000,
        allow_unicode=True,
    )


def source(name: str, kind: str, **options: Any) -> dict[str, Any]:
    """One `sources:` entry."""
    return {"name": name, "kind": kind, **options}


def http_source(name: str, url: str, **options: Any) -> dict[str, Any]:
    """One `kind: http` source."""
    return source(name, "http", url=url, **options)


def webhook(url: str, secret: str | list[str] | None = None, **options: Any) -> dict[str, Any]:
    """One `webhooks:` entry; url "-" prints each delivery to stdout."""
    return {"url": url, **({} if secret is None else {"secret": secret}), **options}


STDOUT = {"out": webhook("-")}  # `webhooks: {out: {url: "-"}}`, for sources that send to [out]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def lines(self) -> list[Any]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    """Run `bridge ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll a condition until true or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


async def async_wait_for(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Like wait_for, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


class Pipeline:
    """An engine and a dispatcher over one real state and HTTP client, wired as `bridge once`
    wires them: the engine polls, the dispatcher delivers what the polls committed."""

    def __init__(self, engine: Engine, dispatcher: Dispatcher, state: State):
        self.engine = engine
        self.dispatcher = dispatcher
        self.state = state
        self.poll = engine.poll
        self.poll_many = engine.poll_many
        self.flush = engine.flush
        self.deliver_due = dispatcher.deliver_due
        self.workers = dispatcher.workers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)  # the engine's config, sources and caches


@contextlib.asynccontextmanager
async def engine_for(path: Path, *, busy_timeout: float = 5.0) -> AsyncIterator[Pipeline]:
    """A Pipeline over a real state file and HTTP client, for the config at `path`."""
    config = load_config(path, {})
    state = open_state(config.state, busy_timeout=busy_timeout)
    try:
        async with HttpClient(per_host=config.per_host) as http:
            dispatcher = Dispatcher(config.webhooks, state.outbox, http, out=io.StringIO())
            engine = Engine(config, state, http, committed=dispatcher.wake)
            yield Pipeline(engine, dispatcher, state)
    finally:
        state.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of a GET; (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def run_on_a_terminal(*args: str) -> tuple[int, bytes]:
    """Run `bridge ARGS` with stderr on a pseudo-terminal; its exit code and what it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", *args],
        stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return proc.wait(timeout=60), seen
