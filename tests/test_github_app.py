"""`kind: github` with `app:` end to end: a fake GitHub that checks the app's JWT with its public
key (an RSA pair made here), issues installation tokens that live two seconds, and serves
releases only to a live installation token; the real config loader, Engine and SQLite."""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.sources import github, github_app, github_budget
from bridge.sources.tokens import TokenCache
from tests.conftest import STDOUT, ThreadedServer, bridge_config, engine_for, run_cli

APP_ID = 123456
INSTALLATION = 7890
LIFETIME = 2.0
RELEASES = "/repos/acme/private/releases"


class Clock:
    """Wall-clock time for the budgets, the installation tokens and the fake, moved by hand."""

    def __init__(self) -> None:
        self.t = float(int(time.time()))  # expires_at is in whole seconds

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeAppGitHub:
    """GitHub's App endpoints under `prefix` ("" for api.github.com, "/api/v3" for GHES)."""

    def __init__(self, public_key: Any, now: Clock, prefix: str = "") -> None:
        self.public_key, self.now, self.prefix = public_key, now, prefix
        self.exchanges: list[dict[str, Any]] = []  # the JWT claims of each token request
        self.issued: dict[str, float] = {}  # installation token -> when it expires
        self.seen: list[tuple[str, str]] = []  # (token, "ok" | "401") per releases request
        self.remaining = 5000
        self.reset = int(now()) + 3600
        self._serial = itertools.count(1)
        app = web.Application()
        app.router.add_post(f"{prefix}/app/installations/{{id}}/access_tokens", self.access_tokens)
        app.router.add_get(f"{prefix}{RELEASES}", self.releases)
        self.server = ThreadedServer(app)

    @property
    def api_url(self) -> str:
        return self.server.url(self.prefix)

    async def access_tokens(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(given, self.public_key, algorithms=["RS256"])
        except jwt.InvalidTokenError as exc:
            return web.json_response(
                {"message": f"A JSON web token could not be decoded {exc}"}, status=401
            )
        self.exchanges.append(claims)
        now = self.now()
        good = (
            claims.get("iss") == str(APP_ID)
            and claims["iat"] <= now
            and claims["exp"] - claims["iat"] <= 660
            and claims["exp"] <= now + 600
            and request.match_info["id"] == str(INSTALLATION)
            and request.headers.get("Accept") == "application/vnd.github+json"
        )
        if not good:
            return web.json_response({"message": "Integration not found"}, status=404)
        value = f"ghs_{next(self._serial)}"
        expires = now + LIFETIME
        self.issued[value] = expires
        when = datetime.datetime.fromtimestamp(expires, datetime.UTC)
        iso = when.isoformat(timespec="seconds").replace("+00:00", "Z")
        return web.json_response({"token": value, "expires_at": iso}, status=201)

    async def releases(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.issued.get(given, 0.0) <= self.now():
            self.seen.append((given, "401"))
            return web.json_response({"message": "Bad credentials"}, status=401)
        self.seen.append((given, "ok"))
        self.remaining -= 1
        headers = {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
            "X-RateLimit-Resource": "core",
        }
        return web.json_response([{"id": 1, "tag_name": "v1.0.0"}], headers=headers)


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> dict[Any, github_budget.Budget]:
    """Fresh budgets and installation tokens per test: both live as long as the process."""
    registry: dict[Any, github_budget.Budget] = {}
    monkeypatch.setattr(github_budget, "_budgets", registry)
    monkeypatch.setattr(github_app, "_tokens", TokenCache())
    return registry


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(github, "clock", c)
    monkeypatch.setattr(github_app, "clock", c)
    return c


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def serve(key: rsa.RSAPrivateKey, clock: Clock, prefix: str = "") -> FakeAppGitHub:
    return FakeAppGitHub(key.public_key(), clock, prefix)


@pytest.fixture
def fake(key: rsa.RSAPrivateKey, clock: Clock) -> Iterator[FakeAppGitHub]:
    f = serve(key, clock)
    f.server.start()
    yield f
    f.server.stop()


def config(
    fake: FakeAppGitHub,
    tmp_path: Path,
    key: rsa.RSAPrivateKey,
    defaults: dict[str, Any] | None = None,
    **app: Any,
) -> str:
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem(key))
    conf = {"app_id": APP_ID, "installation_id": INSTALLATION, **app}
    if "private_key" not in conf:
        conf["private_key_file"] = str(key_file)
    src = {
        "name": "private-releases",
        "kind": "github",
        "repo": "acme/private",
        "api_url": fake.api_url,
        "every": "1m",
        "app": conf,
        "webhooks": ["out"],
    }
    return bridge_config(src, webhooks=STDOUT, defaults=defaults)


async def test_releases_polled_as_the_installation(
    fake: FakeAppGitHub, tmp_path: Path, key: rsa.RSAPrivateKey, write_config
) -> None:
    path = write_config(config(fake, tmp_path, key))
    async with engine_for(path) as engine:
        result = await engine.poll("private-releases")
    assert result.result == "new", result.error
    assert fake.seen == [("ghs_1", "ok")]
    (claims,) = fake.exchanges
    assert claims["iss"] == str(APP_ID)
    assert claims["exp"] - claims["iat"] <= 600


async def test_token_is_renewed_before_it_expires_and_keeps_its_budget(
    fake: FakeAppGitHub,
    clock: Clock,
    tmp_path: Path,
    key: rsa.RSAPrivateKey,
    write_config,
    fresh: dict[Any, github_budget.Budget],
) -> None:
    path = write_config(config(fake, tmp_path, key))
    async with engine_for(path) as engine:
        for _ in range(4):  # 0, 0.6, 1.2, 1.8 s: the first token would die at 2 s
            result = await engine.poll("private-releases")
            assert result.result in ("new", "unchanged"), result.error
            clock.advance(0.6)
    # renewed at 1 s (halfway through a 2 s life), before GitHub could refuse it
    assert [status for _, status in fake.seen] == ["ok"] * 4
    assert [t for t, _ in fake.seen] == ["ghs_1", "ghs_1", "ghs_2", "ghs_2"]
    assert len(fake.exchanges) == 2
    # one budget, of the installation, counting down across both tokens
    (budget,) = fresh.values()
    assert budget.remaining == 4996
    assert budget.key.endswith(f"github-installation:{INSTALLATION}")


async def test_a_token_under_defaults_is_not_used_by_an_app_source(
    fake: FakeAppGitHub, tmp_path: Path, key: rsa.RSAPrivateKey, write_config
) -> None:
    path = write_config(config(fake, tmp_path, key, defaults={"token": "ghp_personal"}))
    async with engine_for(path) as engine:
        assert (await engine.poll("private-releases")).result == "new"
    assert fake.seen == [("ghs_1", "ok")]


async def test_a_revoked_token_is_replaced_on_the_next_poll(
    fake: FakeAppGitHub, tmp_path: Path, key: rsa.RSAPrivateKey, write_config
) -> None:
    path = write_config(config(fake, tmp_path, key))
    async with engine_for(path) as engine:
        assert (await engine.poll("private-releases")).result == "new"
        fake.issued.clear()
        failed = await engine.poll("private-releases")
        assert failed.result == "error"
        assert failed.error is not None and "Bad credentials" in failed.error
        assert (await engine.poll("private-releases")).result == "unchanged"
    assert [t for t, _ in fake.seen] == ["ghs_1", "ghs_1", "ghs_2"]


async def test_github_enterprise_server_api_path(
    key: rsa.RSAPrivateKey, clock: Clock, tmp_path: Path, write_config
) -> None:
    ghes = serve(key, clock, prefix="/api/v3")
    ghes.server.start()
    try:
        one_line = pem(key).replace("\n", "\\n")  # as an environment variable may hold it
        path = write_config(config(ghes, tmp_path, key, private_key=one_line))
        async with engine_for(path) as engine:
            result = await engine.poll("private-releases")
    finally:
        ghes.server.stop()
    assert result.result == "new", result.error
    assert ghes.api_url.endswith("/api/v3")
    assert len(ghes.exchanges) == 1 and ghes.seen == [("ghs_1", "ok")]


async def test_a_refused_jwt_fails_the_poll_with_githubs_message(
    fake: FakeAppGitHub, tmp_path: Path, write_config
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = write_config(config(fake, tmp_path, other))  # not the app's key
    async with engine_for(path) as engine:
        failed = await engine.poll("private-releases")
    where = f"{fake.api_url}/app/installations/{INSTALLATION}/access_tokens"
    assert failed.result == "error"
    assert failed.error is not None
    assert failed.error.startswith(f"GitHub App installation token from {where}: HTTP 401: ")
    assert fake.seen == []


def check(write_config: Any, app: dict[str, Any], **options: Any) -> Any:
    src = {"name": "r", "kind": "github", "repo": "acme/private", "app": app, **options}
    return run_cli("check", "-c", str(write_config(bridge_config(src, webhooks=STDOUT))))


@pytest.mark.slow
def test_config_errors(tmp_path: Path, write_config, key: rsa.RSAPrivateKey) -> None:
    ids = {"app_id": APP_ID, "installation_id": INSTALLATION}
    good = tmp_path / "good.pem"
    good.write_text(pem(key))
    both = check(write_config, {**ids, "private_key_file": str(good)}, token="ghp_x")
    assert both.code != 0 and "give token: or app:, not both" in both.stderr

    missing = tmp_path / "missing.pem"
    gone = check(write_config, {**ids, "private_key_file": str(missing)})
    assert gone.code != 0
    assert f"cannot read private key file {missing}" in gone.stderr

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("TOP-SECRET-CONTENT\n")
    bad = check(write_config, {**ids, "private_key_file": str(garbage)})
    assert bad.code != 0
    assert f"private key file {garbage} is not an RSA private key" in bad.stderr
    assert "TOP-SECRET-CONTENT" not in bad.stderr + bad.stdout

    for result in (both, gone, bad):
        assert "Traceback" not in result.stderr
    fine = check(write_config, {**ids, "private_key": pem(key)})
    assert fine.code == 0, fine.stderr
    assert "PRIVATE KEY" not in fine.stdout + fine.stderr
