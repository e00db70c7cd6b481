"""`auth: {oauth2: ...}` end to end: a local token endpoint that counts its calls and expires its
tokens after two seconds, an API that checks the bearer, the real config loader, Engine and
SQLite, and `bridge once` / `bridge status` / `bridge check` in subprocesses."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.sources import oauth2
from bridge.sources.tokens import TokenCache
from tests.conftest import (
    STDOUT,
    Origin,
    ThreadedServer,
    bridge_config,
    engine_for,
    http_source,
    run_cli,
)

SECRET = "s3cr3t-client-value"
LIFETIME = 2.0  # seconds a token lives


class TokenServer:
    """A client-credentials token endpoint (client `bridge`, secret SECRET) and an API that
    answers only a live bearer it issued."""

    def __init__(self) -> None:
        self.token_calls: list[dict[str, Any]] = []  # the form and headers of each token request
        self.issued: dict[str, float] = {}  # token -> time.monotonic() it expires
        self.api_seen: list[str] = []  # "ok" or "401" per API request
        self.refuse_all = False  # the API refuses every token (revoked access)
        self.token_status = 200
        self.token_body: bytes | None = None
        self._serial = itertools.count(1)
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get("/api/items", self.items)
        app.router.add_get("/api/away", self.away)
        self.server = ThreadedServer(app)
        self.elsewhere = ""  # where /api/away redirects

    def url(self, path: str) -> str:
        return self.server.url(path)

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_calls.append({"form": form, "headers": dict(request.headers)})
        expected = "Basic " + base64.b64encode(f"bridge:{SECRET}".encode()).decode()
        if self.token_body is not None:
            return web.Response(status=self.token_status, body=self.token_body)
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        value = f"tok-{next(self._serial)}"
        self.issued[value] = time.monotonic() + LIFETIME
        return web.json_response(
            {"access_token": value, "token_type": "Bearer", "expires_in": int(LIFETIME)}
        )

    async def items(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        live = self.issued.get(given, 0.0) > time.monotonic()
        if self.refuse_all or not live:
            self.api_seen.append("401")
            return web.json_response({"error": "invalid_token"}, status=401)
        self.api_seen.append("ok")
        return web.json_response({"items": [{"id": 1, "name": "one"}]})

    async def away(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(self.elsewhere)


@pytest.fixture(autouse=True)
def fresh_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh token cache per test: tokens otherwise live as long as the process."""
    monkeypatch.setattr(oauth2, "_tokens", TokenCache())


@pytest.fixture
def auth_server() -> Iterator[TokenServer]:
    s = TokenServer()
    s.server.start()
    yield s
    s.server.stop()


def oauth(server: TokenServer, secret: str = SECRET, **extra: str) -> dict[str, Any]:
    conf = {"token_url": server.url("/oauth/token"), "client_id": "bridge"}
    return {"oauth2": {**conf, "client_secret": secret, **extra}}


def config(server: TokenServer, *names: str, path: str = "/api/items", **kw: Any) -> str:
    sources = [
        http_source(
            name,
            server.url(path),
            items="items",
            key="id",
            auth=oauth(server, **kw),
            webhooks=["out"],
        )
        for name in names
    ]
    return bridge_config(*sources, webhooks=STDOUT)


async def test_one_token_shared_by_three_sources(auth_server: TokenServer, write_config) -> None:
    path = write_config(config(auth_server, "a", "b", "c", scope="items.read", audience="shop"))
    async with engine_for(path) as engine:
        results = await engine.poll_many(["a", "b", "c"])
        assert sorted(r.result for r in results) == ["new"] * 3
    assert len(auth_server.token_calls) == 1
    call = auth_server.token_calls[0]
    assert call["form"] == {
        "grant_type": "client_credentials",
        "scope": "items.read",
        "audience": "shop",
    }
    assert call["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert auth_server.api_seen == ["ok"] * 3


@pytest.mark.slow
async def test_token_is_renewed_before_it_expires(auth_server: TokenServer, write_config) -> None:
    path = write_config(config(auth_server, "a"))
    async with engine_for(path) as engine:
        for _ in range(5):  # 0 s to 2.4 s: the first token dies at 2 s
            assert (await engine.poll("a")).result in ("new", "unchanged")
            await asyncio.sleep(0.6)
    # renewed after 1 s (half the life of a 2 s token), before the API could refuse it
    assert len(auth_server.token_calls) >= 2
    assert auth_server.api_seen == ["ok"] * 5


async def test_a_401_fetches_one_new_token_and_retries(
    auth_server: TokenServer, write_config
) -> None:
    path = write_config(config(auth_server, "a"))
    async with engine_for(path) as engine:
        assert (await engine.poll("a")).result == "new"
        auth_server.issued.clear()  # the token is revoked before it expires
        assert (await engine.poll("a")).result == "unchanged"
        assert auth_server.api_seen == ["ok", "401", "ok"]
        assert len(auth_server.token_calls) == 2
        auth_server.refuse_all = True  # a second 401 fails the poll, after one more token
        failed = await engine.poll("a")
    assert failed.result == "error"
    assert failed.error is not None and "HTTP 401" in failed.error
    assert auth_server.api_seen[3:] == ["401", "401"]
    assert len(auth_server.token_calls) == 3


async def test_the_bearer_does_not_follow_a_cross_origin_redirect(
    auth_server: TokenServer, origin: Origin, write_config
) -> None:
    origin.set("/items", {"items": [{"id": 1}]})
    auth_server.elsewhere = origin.url("/items")
    path = write_config(config(auth_server, "a", path="/api/away"))
    async with engine_for(path) as engine:
        assert (await engine.poll("a")).result == "new"
    assert len(auth_server.token_calls) == 1
    (hit,) = origin.hits("/items")
    assert "Authorization" not in hit


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (401, b'{"error": "invalid_client"}', "HTTP 401 invalid_client"),
        (200, b"<html>not json</html>", "the answer is not a JSON object"),
        (200, b'{"token_type": "bearer"}', "the answer has no access_token"),
        (500, SECRET.encode(), "HTTP 500"),
    ],
)
async def test_a_failing_token_endpoint_fails_the_poll(
    auth_server: TokenServer, write_config, status: int, body: bytes, said: str
) -> None:
    auth_server.token_status, auth_server.token_body = status, body
    path = write_config(config(auth_server, "a"))
    async with engine_for(path) as engine:
        failed = await engine.poll("a")
    where = auth_server.url("/oauth/token")
    assert failed.result == "error"
    assert failed.error == f"oauth2 token from {where}: {said}"
    assert auth_server.api_seen == []


async def test_an_unreachable_token_endpoint_fails_the_poll(
    auth_server: TokenServer, write_config
) -> None:
    text = config(auth_server, "a").replace(auth_server.url("/oauth/token"), "http://127.0.0.1:9/t")
    async with engine_for(write_config(text)) as engine:
        failed = await engine.poll("a")
    assert failed.result == "error"
    assert failed.error is not None
    assert failed.error.startswith("oauth2 token from http://127.0.0.1:9/t: ")
    assert "POST" not in failed.error


@pytest.mark.slow
def test_no_secret_in_output_status_events_or_state(
    auth_server: TokenServer, write_config, tmp_path: Path
) -> None:
    path = write_config(config(auth_server, "a", secret="wrong-" + SECRET))
    once = run_cli("once", "-c", str(path))
    status = run_cli("status", "-c", str(path))
    events = run_cli("events", "-c", str(path))
    check = run_cli("check", "-c", str(path))
    where = auth_server.url("/oauth/token")
    assert once.code != 0
    assert f"oauth2 token from {where}: HTTP 401 invalid_client" in once.stdout + once.stderr
    assert "invalid_client" in status.stdout
    assert check.code == 0
    for text in (once.stdout, once.stderr, status.stdout, status.stderr, events.stdout):
        assert SECRET not in text
    assert SECRET not in check.stdout + check.stderr
    for state_file in tmp_path.glob("state.db*"):
        assert SECRET.encode() not in state_file.read_bytes()
    assert [c["form"]["grant_type"] for c in auth_server.token_calls] == ["client_credentials"]


@pytest.mark.slow  # runs `bridge check`
@pytest.mark.parametrize(
    ("auth", "said"),
    [
        ({"oauth2": {"token_url": "https://a.example/t", "client_id": "x"}}, "is required"),
        (
            {"oauth2": {"token_url": "ftp://a", "client_id": "x", "client_secret": "y"}},
            "must be an http:// or https:// URL",
        ),
        (
            {
                "oauth2": {
                    "token_url": "https://a/t",
                    "client_id": "x",
                    "client_secret": "y",
                    "s": 1,
                }
            },
            "is not an oauth2 option",
        ),
    ],
)
def test_config_problems(write_config, auth: dict[str, Any], said: str) -> None:
    src = http_source("a", "https://api.example/items", auth=auth, webhooks=["out"])
    result = run_cli("check", "-c", str(write_config(bridge_config(src, webhooks=STDOUT))))
    assert result.code != 0
    assert "auth.oauth2" in result.stderr and said in result.stderr
    assert "Traceback" not in result.stderr


def test_renewal_time() -> None:
    assert oauth2.renew_at(0.0, 3600.0) == 3240.0  # 90 %
    assert oauth2.renew_at(0.0, 120.0) == 90.0  # 30 s before
    assert oauth2.renew_at(0.0, 2.0) == 1.0  # half of a very short life
    assert oauth2.renew_at(10.0, 300.0) == 280.0  # 30 s before, from when it was issued
