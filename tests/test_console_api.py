"""The console's JSON API against a running `bridge run`: every endpoint checked against the
OpenAPI document it serves, the token and loopback rules, POST-only JSON changes, and a replay
that reaches the receiver under the event's original webhook-id. No answer holds a secret."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from jsonschema import Draft202012Validator

from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.model import PollCommit, SourceRow
from bridge.state import open_state
from tests.conftest import (
    SECRET,
    Origin,
    Receiver,
    async_wait_for,
    bridge_config,
    free_port,
    http_source,
    run_cli,
    webhook,
)

TOKEN = "console-token-4f9a1c"
URL_PASSWORD = "hunter2pw"
URL_KEY = "sekritkey"
ENV = {**os.environ, "HOOK_SECRET": SECRET}


def polled(name: str, url: str, **options: Any) -> dict[str, Any]:
    """A source of items keyed by id, polled every 2 s without jitter, sent to `hook`."""
    defaults = {"items": "@", "key": "id", "every": "2s", "jitter": "0s", "timeout": "5s"}
    return http_source(name, url, **{**defaults, "webhooks": ["hook"], **options})


def hook(receiver: Receiver, **options: Any) -> dict[str, dict[str, Any]]:
    options = {"retry": ["100ms"], "timeout": "2s", **options}
    return {"hook": webhook(receiver.url(), "${HOOK_SECRET}", **options)}


class Daemon:
    """A `bridge run` subprocess serving the console on 127.0.0.1:<port>."""

    def __init__(self, path: Path, port: int):
        self.path = path
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(path)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err = ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()[1]
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.url("/healthz")) as r:
                    if r.status == 200:
                        return
            time.sleep(0.1)
        raise AssertionError("the daemon did not answer /healthz")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, self.err = self.proc.communicate(timeout=30)
        return self.proc.returncode


@contextlib.asynccontextmanager
async def running(
    write_config: Any, *sources: dict[str, Any], listen: str = "127.0.0.1", **config: Any
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    port = free_port()
    http = {"listen": f"{listen}:{port}", **config.pop("http", {})}
    path = write_config(bridge_config(*sources, http=http, **config))
    daemon = Daemon(path, port)
    try:
        # unsafe: the jar keeps cookies of an IP address (127.0.0.1), as a browser does
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await daemon.ready(session)
            yield daemon, session
    finally:
        code = daemon.stop()
    assert code == 0, daemon.err
    assert "Traceback" not in daemon.err, daemon.err


class OpenApi:
    """The served OpenAPI document, checking real answers against its schemas."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.checked: set[tuple[str, str]] = set()

    def check(self, path: str, method: str, status: int, body: Any) -> None:
        responses = self.doc["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method} {path}: {status} is not documented"
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        validator = Draft202012Validator({**schema, "components": self.doc["components"]})
        validator.validate(body)
        if status < 300:
            self.checked.add((path, method))

    def operations(self) -> set[tuple[str, str]]:
        return {(p, m) for p, ops in self.doc["paths"].items() for m in ops}


async def call(
    session: aiohttp.ClientSession,
    daemon: Daemon,
    api: OpenApi,
    method: str,
    path: str,
    documented: str | None = None,
    *,
    status: int = 200,
    **kwargs: Any,
) -> Any:
    """One API request: its status as expected, its body JSON that the document allows."""
    async with session.request(method, daemon.url(path), **kwargs) as r:
        text = await r.text()
        assert r.status == status, text
        assert r.content_type == "application/json"
    body = orjson.loads(text)
    api.check(documented or path.partition("?")[0], method.lower(), status, body)
    return body


def no_secret(text: str) -> None:
    for secret in (SECRET, SECRET.removeprefix("whsec_"), URL_PASSWORD, URL_KEY, TOKEN):
        assert secret not in text


# --- the query layer -------------------------------------------------------------------------


def test_source_listing_is_paged_and_filtered_by_the_state(tmp_path: Path) -> None:
    state = open_state(str(tmp_path / "state.db"))
    try:
        stored = [
            SourceRow("beta", last_poll_at=1.0, last_result="unchanged"),
            SourceRow("alpha-2", last_poll_at=2.0, last_result="error", failures=3),
            SourceRow("gone", last_poll_at=3.0),  # stored, but not asked for
        ]
        state.snapshots.commit_polls([PollCommit(row, "unchanged", 0.1) for row in stored])
        names = ["alpha-1", "beta", "alpha-2", "gamma"]
        admin = state.admin
        total, page = admin.sources(names)
        assert total == 4 and [r.name for r in page] == names  # in the order asked
        assert page[0] == SourceRow("alpha-1")  # never stored: a fresh row
        assert page[2].failures == 3 and page[2].last_result == "error"
        total, page = admin.sources(names, offset=1, limit=2)
        assert total == 4 and [r.name for r in page] == ["beta", "alpha-2"]
        total, page = admin.sources(names, match="ALPHA")
        assert total == 2 and [r.name for r in page] == ["alpha-1", "alpha-2"]
        total, page = admin.sources(names, failing=True)
        assert total == 1 and [r.name for r in page] == ["alpha-2"]
        assert admin.sources(names, match="alpha", limit=0) == (2, [])
    finally:
        state.close()


def test_http_token_is_a_secret_of_the_config(write_config: Any) -> None:
    path = write_config(bridge_config(http={"listen": "127.0.0.1:9464", "token": "${TOK}"}))
    config = load_config(path, {"TOK": TOKEN})
    assert config.token == TOKEN and TOKEN not in repr(config)
    bad = write_config(bridge_config(http={"listen": "127.0.0.1:9464", "token": "two words"}))
    with pytest.raises(ConfigError) as caught:
        load_config(bad, {})
    assert "http.token" in str(caught.value) and "words" not in str(caught.value)


@pytest.mark.slow
def test_bridge_check_never_shows_the_token(write_config: Any) -> None:
    path = write_config(bridge_config(http={"listen": "0.0.0.0:9464", "token": TOKEN}))
    result = run_cli("check", "-c", str(path))
    assert result.code == 0 and "ok" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


# --- the API against a running daemon -----------------------------------------------------


@pytest.mark.slow
async def test_every_endpoint_answers_as_its_openapi_document_says(
    write_config: Any, origin: Origin, receiver: Receiver
) -> None:
    origin.set("/items", [{"id": 1, "name": "one", "tags": ["a"]}])
    origin.set("/broken", {"error": "down"}, status=500)
    host_port = origin.url("/items").removeprefix("http://")
    good_url = f"http://user:{URL_PASSWORD}@{host_port}?api_key={URL_KEY}"
    sources = [polled("good", good_url), polled("broken", origin.url("/broken"))]
    async with running(write_config, *sources, webhooks=hook(receiver)) as (daemon, session):
        async with session.get(daemon.url("/api/openapi.json")) as r:
            assert r.status == 200
            api = OpenApi(await r.json())
        assert api.doc["openapi"].startswith("3.")

        async def listed() -> dict[str, Any]:
            return await call(session, daemon, api, "GET", "/api/sources")

        deadline = time.monotonic() + 15
        while not all(s["last_poll_at"] for s in (await listed())["sources"]):
            assert time.monotonic() < deadline, "the sources were never polled"
            time.sleep(0.2)
        page = await listed()
        assert page["total"] == page["configured"] == 2 and page["failing"] == 1
        by_name = {s["name"]: s for s in page["sources"]}
        assert by_name["good"]["url"] == f"http://{host_port}?…"  # the display form
        assert by_name["broken"]["failing"] and "500" in by_name["broken"]["last_error"]

        one = await call(session, daemon, api, "GET", "/api/sources?limit=1&offset=1")
        assert [s["name"] for s in one["sources"]] == ["broken"] and one["total"] == 2
        failing = await call(session, daemon, api, "GET", "/api/sources?failing=true")
        assert [s["name"] for s in failing["sources"]] == ["broken"]
        matched = await call(session, daemon, api, "GET", "/api/sources?q=GOO")
        assert [s["name"] for s in matched["sources"]] == ["good"]
        single = await call(session, daemon, api, "GET", "/api/sources/good", "/api/sources/{name}")
        assert single["kind"] == "http" and single["schedule"] == "every 2s"

        # a change, polled now from the API, becomes an event with its JSON Patch
        origin.set("/items", [{"id": 1, "name": "uno", "tags": ["a"]}])
        polled_now = await call(
            session,
            daemon,
            api,
            "POST",
            "/api/sources/good/poll",
            "/api/sources/{name}/poll",
            json={},
        )
        assert polled_now["result"] == "changed" and polled_now["events"] == 1
        events = (await call(session, daemon, api, "GET", "/api/events?source=good&limit=5"))[
            "events"
        ]
        assert events[0]["type"] == "item.changed"
        data = events[0]["event"]["data"]
        assert data["changes"] == [{"op": "replace", "path": "/name", "value": "uno"}]
        assert data["before"]["name"] == "one" and data["after"]["name"] == "uno"
        await async_wait_for(lambda: len(receiver.received) == 1, timeout=10)

        async def recorded() -> None:
            # The receiver has its POST a moment before the daemon writes the attempt down.
            deadline = time.monotonic() + 10
            path = "/api/deliveries?status=pending"
            while (await call(session, daemon, api, "GET", path))["deliveries"]:
                assert time.monotonic() < deadline, "a delivery received was never recorded"
                time.sleep(0.05)

        await recorded()
        deliveries = await call(session, daemon, api, "GET", "/api/deliveries?webhook=hook")
        assert deliveries["webhooks"][0]["name"] == "hook"
        assert deliveries["webhooks"][0]["origin"] == receiver.url("/").rstrip("/")
        delivered = await call(session, daemon, api, "GET", "/api/deliveries?status=delivered")
        assert delivered["deliveries"][0]["event_id"] == events[0]["id"]

        replayed = await call(
            session, daemon, api, "POST", "/api/replay", json={"event_ids": [events[0]["id"]]}
        )
        assert replayed["queued"] == 1
        await async_wait_for(lambda: len(receiver.received) == 2, timeout=10)
        assert receiver.received[1].headers["webhook-id"] == events[0]["id"]
        await recorded()
        discarded = await call(
            session, daemon, api, "POST", "/api/discard", json={"source": "good"}
        )
        assert discarded["discarded"] == 0  # nothing is pending

        # errors: JSON, one line, the right status
        for method, path, documented, status, kwargs in [
            ("GET", "/api/sources/nope", "/api/sources/{name}", 404, {}),
            ("GET", "/api/events?source=nope", None, 404, {}),
            ("GET", "/api/sources?limit=0", None, 400, {}),
            ("GET", "/api/sources?failing=maybe", None, 400, {}),
            ("GET", "/api/deliveries?status=lost", None, 400, {}),
            ("POST", "/api/sources/nope/poll", "/api/sources/{name}/poll", 404, {"json": {}}),
            ("POST", "/api/replay", None, 400, {"json": {}}),
            ("POST", "/api/replay", None, 400, {"json": {"event_ids": ["x"], "dead": True}}),
            ("POST", "/api/replay", None, 400, {"json": {"dead": True, "extra": 1}}),
            ("POST", "/api/replay", None, 400, {"json": ["not", "an", "object"]}),
            ("POST", "/api/replay", None, 404, {"json": {"event_ids": ["evt_unknown"]}}),
            ("POST", "/api/replay", None, 404, {"json": {"dead": True, "webhook": "nope"}}),
            ("POST", "/api/discard", None, 400, {"json": {}}),
            ("POST", "/api/discard", None, 404, {"json": {"source": "nope"}}),
            (
                "POST",
                "/api/replay",
                None,
                400,
                {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            ),
            ("POST", "/api/replay", None, 415, {"data": {"dead": "true"}}),  # a form post
            ("POST", "/api/discard", None, 415, {"data": b'{"source": "good"}'}),
        ]:
            body = await call(
                session, daemon, api, method, path, documented, status=status, **kwargs
            )
            assert body["error"] and "\n" not in body["error"]

        async with session.get(daemon.url("/api/replay")) as r:  # changes are POSTs only
            assert r.status == 405 and "error" in await r.json()

        assert api.checked == api.operations()  # every documented operation was exercised

        texts = []
        for path in ["/api/sources", "/api/events", "/api/deliveries", "/", "/deliveries"]:
            async with session.get(daemon.url(path)) as r:
                texts.append(await r.text())
        async with session.get(daemon.url("/sources/good")) as r:
            page_text = await r.text()
            assert r.status == 200 and "uno" in page_text and "/name" in page_text
            texts.append(page_text)
        for text in texts:
            no_secret(text)


@pytest.mark.slow
async def test_a_dead_delivery_replayed_from_the_api_keeps_its_webhook_id(
    write_config: Any, origin: Origin, receiver: Receiver
) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.default_status = 500
    async with running(
        write_config, polled("s", origin.url("/items")), webhooks=hook(receiver)
    ) as (daemon, session):
        api_doc = OpenApi(orjson.loads(Path(_openapi_path()).read_bytes()))
        await async_wait_for(lambda: len(origin.hits("/items")) >= 1, timeout=10)
        origin.set("/items", [{"id": 1}, {"id": 2}])
        await async_wait_for(lambda: len(receiver.received) >= 2, timeout=15)  # both attempts

        async def dead() -> list[dict[str, Any]]:
            body = await call(session, daemon, api_doc, "GET", "/api/deliveries?status=dead")
            return list(body["deliveries"])

        deadline = time.monotonic() + 10
        while not await dead():
            assert time.monotonic() < deadline, "the delivery never went dead"
            time.sleep(0.1)
        [gone] = await dead()
        assert gone["attempts"] == 2 and "500" in str(gone["last_status"])
        first_id = receiver.received[0].headers["webhook-id"]
        assert first_id == gone["event_id"]

        receiver.default_status = 204
        replay = {"dead": True, "webhook": "hook"}
        queued = await call(session, daemon, api_doc, "POST", "/api/replay", json=replay)
        assert queued["queued"] == 1
        await async_wait_for(lambda: receiver.received[-1].headers.get("webhook-id") == first_id)
        await async_wait_for(lambda: len(receiver.received) == 3)
        assert receiver.received[-1].json["data"]["after"] == {"id": 2}
        assert await dead() == []


def _openapi_path() -> str:
    import bridge.service.console

    return str(Path(bridge.service.console.__file__).parent / "openapi.json")


# --- who may use it -------------------------------------------------------------------------


@pytest.mark.slow
async def test_with_a_token_the_console_needs_it_and_the_probes_do_not(
    write_config: Any, origin: Origin
) -> None:
    origin.set("/items", [{"id": 1}])
    async with running(
        write_config, polled("s", origin.url("/items"), webhooks=[]), http={"token": TOKEN}
    ) as (daemon, session):
        for path in ("/api/sources", "/api/openapi.json"):
            async with session.get(daemon.url(path)) as r:
                assert r.status == 401 and "Bearer" in (await r.json())["error"]
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.get(daemon.url("/")) as r:
            page = await r.text()
            assert r.status == 401 and 'action="/signin"' in page
        wrong = {"Authorization": "Bearer not-the-token"}
        async with session.get(daemon.url("/api/sources"), headers=wrong) as r:
            assert r.status == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(daemon.url("/api/sources"), headers=right) as r:
            assert r.status == 200 and (await r.json())["total"] == 1
        for path in ("/healthz", "/metrics"):
            async with session.get(daemon.url(path)) as r:
                assert r.status == 200

        # the sign-in form sets an HttpOnly, SameSite=Strict cookie that is not the token
        async with session.post(
            daemon.url("/signin"), data={"token": "wrong", "next": "/"}, allow_redirects=False
        ) as r:
            assert r.status == 401 and "not the token" in await r.text()
            assert "Set-Cookie" not in r.headers
        async with session.post(
            daemon.url("/signin"),
            data={"token": TOKEN, "next": "/deliveries"},
            allow_redirects=False,
        ) as r:
            assert r.status == 303 and r.headers["Location"] == "/deliveries"
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        async with session.get(daemon.url("/api/sources")) as r:  # the jar sends the cookie
            assert r.status == 200
        async with session.get(daemon.url("/")) as r:
            assert r.status == 200 and "<table" in await r.text()
        # signed in by cookie, a form post still changes nothing: JSON bodies only
        async with session.post(daemon.url("/api/discard"), data={"source": "s"}) as r:
            assert r.status == 415
        async with session.post(
            daemon.url("/signin"), data={"token": TOKEN, "next": "//x.org"}
        ) as r:
            assert str(r.url) == daemon.url("/")  # never redirected off this server
            no_secret(await r.text())


@pytest.mark.slow
async def test_without_a_token_a_non_loopback_listen_refuses_the_console(
    write_config: Any, origin: Origin
) -> None:
    origin.set("/items", [{"id": 1}])
    # bound to every address, reached over loopback: judged by the listen address
    async with running(
        write_config, polled("s", origin.url("/items"), webhooks=[]), listen="0.0.0.0"
    ) as (daemon, session):
        async with session.get(daemon.url("/api/sources")) as r:
            assert r.status == 403 and "set http.token" in (await r.json())["error"]
        async with session.post(daemon.url("/api/replay"), json={"dead": True}) as r:
            assert r.status == 403
        async with session.get(daemon.url("/")) as r:
            text = await r.text()
            assert r.status == 403 and "set http.token" in text and len(text.splitlines()) == 1
        for path in ("/healthz", "/metrics"):
            async with session.get(daemon.url(path)) as r:
                assert r.status == 200


@pytest.mark.slow
async def test_without_a_token_a_loopback_listen_serves_the_console(
    write_config: Any, origin: Origin
) -> None:
    origin.set("/items", [{"id": 1}])
    async with running(write_config, polled("s", origin.url("/items"), webhooks=[])) as (
        daemon,
        session,
    ):
        async with session.get(daemon.url("/api/sources")) as r:
            assert r.status == 200
        async with session.get(daemon.url("/")) as r:
            assert r.status == 200 and "Content-Security-Policy" in r.headers
        async with session.get(daemon.url("/signin"), allow_redirects=False) as r:
            assert r.status == 303  # no token: nothing to sign in to


@pytest.mark.slow
async def test_ten_thousand_sources_come_a_page_at_a_time(
    write_config: Any, tmp_path: Path
) -> None:
    n = 10_000
    names = [f"src-{i:05d}" for i in range(n)]
    # Polled a moment ago (seeded through the state's Protocol), due again in an hour: the
    # daemon starts without a burst of 10,000 polls.
    state = open_state(str(tmp_path / "state.db"))
    try:
        now = time.time()
        rows = [
            SourceRow(
                name,
                last_poll_at=now,
                next_poll_at=now + 3600,
                last_result="error" if i % 100 == 7 else "unchanged",
                failures=1 if i % 100 == 7 else 0,
                last_error="HTTP 503 from http://127.0.0.1:9/x" if i % 100 == 7 else None,
            )
            for i, name in enumerate(names)
        ]
        state.snapshots.commit_polls([PollCommit(row, "unchanged", 0.0) for row in rows])
    finally:
        state.close()
    sources = [http_source(name, "http://127.0.0.1:9/x", every="1h", jitter="0s") for name in names]
    async with running(write_config, *sources) as (daemon, session):
        async with session.get(daemon.url("/")) as r:
            page = await r.text()
        assert page.count("<tr class=") == 50 and "page 1 of 200" in page
        assert "10000 sources" in page and "100 failing" in page
        async with session.get(daemon.url("/?page=200")) as r:
            page = await r.text()
        assert page.count("<tr class=") == 50 and "src-09999" in page and "src-09949" not in page
        async with session.get(daemon.url("/?q=src-0420&failing=1")) as r:
            page = await r.text()
        assert page.count("<tr class=") == 1 and "src-04207" in page  # 4207 % 100 == 7
        async with session.get(daemon.url("/api/sources?offset=9990&limit=50")) as r:
            body = await r.json()
        assert body["total"] == n and [s["name"] for s in body["sources"]] == names[9990:]
