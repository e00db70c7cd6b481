"""kind: github end to end: the real config loader, Engine and SQLite against a fake GitHub that
replays octokit's recorded API answers (tests/fake_github.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bridge
from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.sources import github, github_budget
from tests.conftest import STDOUT, bridge_config, engine_for
from tests.fake_github import FakeGitHub, extra, recorded

ORG = "octokit-fixture-org"
RELEASES = f"/repos/{ORG}/release-assets/releases"
ISSUES = f"/repos/{ORG}/paginate-issues/issues"


class Clock:
    """github.clock, moved by hand."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(autouse=True)
def budgets(monkeypatch: pytest.MonkeyPatch) -> dict[Any, github_budget.Budget]:
    """A fresh budget registry per test: budgets otherwise live as long as the process."""
    registry: dict[Any, github_budget.Budget] = {}
    monkeypatch.setattr(github_budget, "_budgets", registry)
    return registry


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(github, "clock", c)
    return c


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeGitHub]:
    f = FakeGitHub(now=clock)
    f.server.start()
    yield f
    f.server.stop()


def release() -> dict[str, Any]:
    """The recorded release v1.0.0, as the releases list holds it."""
    exchange = recorded("release-assets", "get", f"{RELEASES}/tags/v1.0.0")
    return dict(exchange["response"])


def add_releases(fake: FakeGitHub, items: list[Any], path: str = RELEASES, **kw: Any) -> None:
    """Answer the releases list with `items`, in the recorded release's headers."""
    exchange = recorded("release-assets", "get", f"{RELEASES}/tags/v1.0.0")
    fake.add(exchange, path=f"{path}?per_page=100", response=items, **kw)


def source(name: str, fake: FakeGitHub, repo: str, **options: Any) -> dict[str, Any]:
    """A `kind: github` source asking `fake` every minute, sending to `out`."""
    defaults = {"api_url": fake.api_url, "every": "1m", "webhooks": ["out"]}
    return {"name": name, "kind": "github", "repo": repo, **defaults, **options}


def config(*sources: dict[str, Any]) -> str:
    """The config of these sources, printing their events to stdout."""
    return bridge_config(*sources, webhooks=STDOUT)


def keys(result: Any) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["key"]) for e in result.events]


# --- requests as GitHub asks for them ----------------------------------------------------------


async def test_headers_query_and_anonymous_requests(fake: FakeGitHub, write_config) -> None:
    add_releases(fake, [release()])
    path = write_config(
        config(
            source("with-token", fake, f"{ORG}/release-assets", token="t0k3n"),
            source("anonymous", fake, f"{ORG}/release-assets"),
        )
    )
    async with engine_for(path) as engine:
        assert (await engine.poll("with-token")).result == "new"
        assert (await engine.poll("anonymous")).result == "new"
    sent, anonymous = fake.hits(RELEASES)
    assert sent["Authorization"] == "Bearer t0k3n"
    assert sent["Accept"] == "application/vnd.github+json"
    assert sent["X-GitHub-Api-Version"] == "2022-11-28"
    assert sent["User-Agent"] == f"bridge/{bridge.__version__}"
    assert fake.queries(RELEASES) == [{"per_page": "100"}] * 2
    assert "Authorization" not in anonymous


async def test_issues_follow_the_five_recorded_pages(fake: FakeGitHub, write_config) -> None:
    fake.replay("paginate-issues")
    repo = f"{ORG}/paginate-issues"
    path = write_config(config(source("issues", fake, repo, watch="issues", on_first_poll="emit")))
    async with engine_for(path) as engine:
        result = await engine.poll("issues")
    # 13 issues over 5 pages of 3, newest first, keyed by id (a JSON number, as GitHub gives it)
    assert keys(result) == [("item.added", 1000 + i) for i in range(13)]
    assert [e["data"]["after"]["number"] for e in result.events] == list(range(13, 0, -1))
    assert fake.queries(ISSUES) == [
        {"per_page": "100", "state": "all", "sort": "updated", "direction": "desc"}
    ]
    assert len(fake.hits("/repositories/1000/issues")) == 4  # pages 2-5, from the Link headers


async def test_raw_recording_pages_too(fake: FakeGitHub, write_config) -> None:
    fake.replay("paginate-issues", flavor="raw")
    repo = f"{ORG}/tmp-scenario-paginate-issues-20220719043836917-izyoe"
    path = write_config(config(source("issues", fake, repo, watch="issues")))
    async with engine_for(path) as engine:
        await engine.poll("issues")
        assert len(engine.state.snapshots.item_hashes("issues")) == 13


async def test_max_pages_window_is_incomplete_and_removes_nothing(
    fake: FakeGitHub, write_config
) -> None:
    fake.replay("paginate-issues")
    repo = f"{ORG}/paginate-issues"
    path = write_config(config(source("issues", fake, repo, watch="issues")))
    async with engine_for(path) as engine:
        await engine.poll("issues")
    # An old issue is edited: it moves to the top of page 1, which now has a new ETag.
    first = recorded("paginate-issues", "get", f"{ISSUES}?per_page=3")
    edited = [dict(first["response"][0], title="Retitled"), *first["response"][1:]]
    fake.add(first, response=edited)
    path = write_config(config(source("issues", fake, repo, watch="issues", max_pages=2)))
    async with engine_for(path) as engine:
        result = await engine.poll("issues")
        stored = engine.state.snapshots.item_hashes("issues")
    assert keys(result) == [("item.changed", 1000)]  # 7 issues unseen, none removed
    assert len(stored) == 13
    assert len(fake.hits("/repositories/1000/issues")) == 4 + 1


async def test_issues_leave_pull_requests_out(fake: FakeGitHub, write_config) -> None:
    fake.replay("paginate-issues")
    first = recorded("paginate-issues", "get", f"{ISSUES}?per_page=3")
    pull = dict(first["response"][0], pull_request={"url": "https://api.github.com/pulls/13"})
    fake.add(first, response=[pull, *first["response"][1:]])
    repo = f"{ORG}/paginate-issues"
    path = write_config(config(source("issues", fake, repo, watch="issues")))
    async with engine_for(path) as engine:
        await engine.poll("issues")
        stored = engine.state.snapshots.item_hashes("issues")
    assert len(stored) == 12 and "1000" not in stored


# --- redirects and conditional requests --------------------------------------------------------


async def test_301_is_followed_and_remembered(fake: FakeGitHub, write_config) -> None:
    fake.replay("rename-repository")  # GET /repos/.../rename-repository -> 301 /repositories/1000
    add_releases(fake, [release()], path="/repositories/1000/releases")
    old = f"/repos/{ORG}/rename-repository/releases"
    path = write_config(config(source("moved", fake, f"{ORG}/rename-repository", token="t")))
    async with engine_for(path) as engine:
        assert (await engine.poll("moved")).result == "new"
        second = await engine.poll("moved")
        engine.flush()
        state = engine.state.snapshots.source_row("moved").fetch_state
    assert second.result == "unchanged"
    assert len(fake.hits(old)) == 1  # the second poll went straight to the new place
    first_new, second_new = fake.hits("/repositories/1000/releases")
    assert first_new["Authorization"] == "Bearer t"
    assert second_new["If-None-Match"] == state.etag  # answered 304
    assert state.url == f"{fake.api_url}/repositories/1000/releases?per_page=100"


async def test_a_remembered_url_is_dropped_when_the_config_changes(
    fake: FakeGitHub, write_config
) -> None:
    fake.replay("rename-repository")
    add_releases(fake, [release()], path="/repositories/1000/releases")
    fake.add(extra("tags"), path="/repositories/1000/tags?per_page=100")
    path = write_config(config(source("moved", fake, f"{ORG}/rename-repository")))
    async with engine_for(path) as engine:
        await engine.poll("moved")
    path = write_config(config(source("moved", fake, f"{ORG}/rename-repository", watch="tags")))
    async with engine_for(path) as engine:
        result = await engine.poll("moved")
    # releases (keyed by id) became tags (keyed by name): a new baseline, not a diff
    assert result.result == "new" and result.events == []
    assert len(fake.hits(f"/repos/{ORG}/rename-repository/tags")) == 1


async def test_307_is_followed_but_not_remembered(fake: FakeGitHub, write_config) -> None:
    fake.add(extra("temporary-redirect"))
    add_releases(fake, [release()], path="/repositories/1000/releases")
    path = write_config(config(source("moving", fake, f"{ORG}/moving-repository")))
    async with engine_for(path) as engine:
        await engine.poll("moving")
        await engine.poll("moving")
        engine.flush()
        state = engine.state.snapshots.source_row("moving").fetch_state
    assert len(fake.hits(f"/repos/{ORG}/moving-repository/releases")) == 2
    assert state.url is None


async def test_304_via_etag(fake: FakeGitHub, write_config) -> None:
    add_releases(fake, [release()])
    path = write_config(config(source("rel", fake, f"{ORG}/release-assets")))
    async with engine_for(path) as engine:
        await engine.poll("rel")
        result = await engine.poll("rel")
    assert result.result == "unchanged"
    first, second = fake.hits(RELEASES)
    assert "If-None-Match" not in first
    assert second["If-None-Match"].startswith('W/"')


# --- rate limits -------------------------------------------------------------------------------


def spent_token(fake: FakeGitHub, write_config, second: str, token: str) -> Path:
    """A config of `rel`, whose token's first answer says it is spent until the reset in an
    hour, and of `second`, polling the same releases with `token`."""
    add_releases(fake, [release()])
    fake.add(extra("rate-limited"), times=1)  # x-ratelimit-remaining: 0, reset in an hour
    return write_config(
        config(
            source("rel", fake, f"{ORG}/release-assets", token="t"),
            source(second, fake, f"{ORG}/release-assets", token=token),
        )
    )


async def test_exhausted_rate_limit_blocks_requests_until_reset(
    fake: FakeGitHub, clock: Clock, write_config
) -> None:
    path = spent_token(fake, write_config, "same-token", "t")
    async with engine_for(path) as engine:
        failed = await engine.poll("rel")
        assert failed.result == "error"
        assert "GitHub API rate limit exhausted for this token" in (failed.error or "")
        assert "403" in (failed.error or "")
        again = await engine.poll("rel")
        other = await engine.poll("same-token")
    assert again.result == other.result == "error"
    assert "rate limit exhausted" in (other.error or "")
    assert len(fake.hits(RELEASES)) == 1  # neither asked again
    # A new HTTP client (a restarted engine in the same process) still waits for the reset.
    async with engine_for(path) as engine:
        clock.advance(3500)
        assert (await engine.poll("rel")).result == "error"
        assert len(fake.hits(RELEASES)) == 1
        clock.advance(101)
        assert (await engine.poll("rel")).result == "new"
    assert len(fake.hits(RELEASES)) == 2


async def test_the_next_run_keeps_off_an_exhausted_token_without_asking(
    fake: FakeGitHub, clock: Clock, write_config, budgets: dict[Any, github_budget.Budget]
) -> None:
    # `bridge once` from cron: each run is a new process, with no budget in memory. The wait
    # goes into the state file, so the runs before the reset send nothing.
    path = spent_token(fake, write_config, "other-token", "t2")
    async with engine_for(path) as engine:
        await engine.poll_many(["rel"])
    assert len(fake.hits(RELEASES)) == 1
    budgets.clear()  # the next process
    async with engine_for(path) as engine:
        spent, fresh = await engine.poll_many(["rel", "other-token"])
    assert spent.result == "error" and fresh.result == "new"
    told = "GitHub rate limit for this token (from an earlier run or instance)"
    assert told in (spent.error or "")
    assert len(fake.hits(RELEASES)) == 2  # only the other token asked
    budgets.clear()
    clock.advance(3601)  # past the reset
    async with engine_for(path) as engine:
        assert (await engine.poll("rel")).result == "new"
    assert len(fake.hits(RELEASES)) == 3


async def test_an_exhausted_token_does_not_block_another_token(
    fake: FakeGitHub, clock: Clock, write_config
) -> None:
    add_releases(fake, [release()])
    fake.add(extra("rate-limited"), times=1)
    path = write_config(
        config(
            source("spent", fake, f"{ORG}/release-assets", token="t1"),
            source("fresh", fake, f"{ORG}/release-assets", token="t2"),
        )
    )
    async with engine_for(path) as engine:
        assert (await engine.poll("spent")).result == "error"
        # Same host, other token: GitHub's limit is per token, so this one still asks.
        assert (await engine.poll("fresh")).result == "new"
        assert (await engine.poll("spent")).result == "error"
    assert len(fake.hits(RELEASES)) == 2


async def test_rate_limit_429_blocks_too(fake: FakeGitHub, clock: Clock, write_config) -> None:
    add_releases(fake, [release()])
    fake.add(extra("rate-limited-429"), times=1)
    path = write_config(config(source("rel", fake, f"{ORG}/release-assets")))
    async with engine_for(path) as engine:
        first = await engine.poll("rel")
        second = await engine.poll("rel")
    assert "rate limit exhausted for unauthenticated requests" in (first.error or "")
    assert second.result == "error" and len(fake.hits(RELEASES)) == 1


async def test_secondary_limit_waits_a_minute_then_backs_off(
    fake: FakeGitHub, clock: Clock, write_config
) -> None:
    add_releases(fake, [release()])
    fake.add(extra("secondary-rate-limit"), times=2)  # 403, no Retry-After, remaining > 0
    path = write_config(config(source("rel", fake, f"{ORG}/release-assets", token="t")))

    async def poll() -> tuple[str, str]:
        result = await engine.poll("rel")
        return result.result, result.error or ""

    async with engine_for(path) as engine:
        result, error = await poll()
        assert result == "error" and "secondary rate limit" in error and "(60s from now)" in error
        clock.advance(59)
        assert (await poll())[0] == "error"
        assert len(fake.hits(RELEASES)) == 1
        clock.advance(2)
        result, error = await poll()  # asked again: limited again, so twice as long
        assert "2 in a row" in error and "(120s from now)" in error
        assert len(fake.hits(RELEASES)) == 2
        clock.advance(119)
        assert (await poll())[0] == "error"
        assert len(fake.hits(RELEASES)) == 2
        clock.advance(2)
        assert (await poll())[0] == "new"
        # A success ends the series: the next secondary limit waits a minute again.
        fake.add(extra("secondary-rate-limit"), times=1)
        result, error = await poll()
        assert "1 in a row" in error and "(60s from now)" in error


async def test_secondary_limit_honours_retry_after(
    fake: FakeGitHub, clock: Clock, write_config
) -> None:
    add_releases(fake, [release()])
    fake.add(extra("secondary-retry-after"), times=1)  # 429 with Retry-After: 30
    path = write_config(config(source("rel", fake, f"{ORG}/release-assets", token="t")))
    async with engine_for(path) as engine:
        result = await engine.poll("rel")
    assert "secondary rate limit" in (result.error or "")
    assert "(30s from now)" in (result.error or "")


async def test_x_poll_interval_is_obeyed(fake: FakeGitHub, clock: Clock, write_config) -> None:
    fake.add(extra("events"))  # X-Poll-Interval: 60
    path = write_config(config(source("ev", fake, f"{ORG}/hello-world", watch="events")))
    events = f"/repos/{ORG}/hello-world/events"
    async with engine_for(path) as engine:
        await engine.poll("ev")
        clock.advance(30)
        early = await engine.poll("ev")
        assert early.result == "unchanged" and len(fake.hits(events)) == 1
        clock.advance(31)
        late = await engine.poll("ev")
    assert late.result == "unchanged"  # a 304
    assert len(fake.hits(events)) == 2


async def test_low_budget_spreads_polls(fake: FakeGitHub, clock: Clock, write_config) -> None:
    low = {"x-ratelimit-remaining": "100", "x-ratelimit-reset": "{now+1000}"}  # 2% of 5000
    add_releases(fake, [release()], headers=low)
    path = write_config(config(source("rel", fake, f"{ORG}/release-assets", token="t")))
    async with engine_for(path) as engine:
        await engine.poll("rel")
        clock.advance(5)  # 1000 s / 100 requests left: one request per 10 s
        skipped = await engine.poll("rel")
        assert skipped.result == "unchanged" and len(fake.hits(RELEASES)) == 1
        clock.advance(6)
        await engine.poll("rel")
    assert len(fake.hits(RELEASES)) == 2


async def test_sources_with_one_token_share_a_budget(
    fake: FakeGitHub, clock: Clock, write_config
) -> None:
    low = {"x-ratelimit-remaining": "100", "x-ratelimit-reset": "{now+1000}"}
    add_releases(fake, [release()], headers=low)
    repo = f"{ORG}/release-assets"
    path = write_config(
        config(
            source("a", fake, repo, token="shared"),
            source("b", fake, repo, token="shared"),
            source("c", fake, repo, token="another"),
        )
    )
    names = ["a", "b", "c"]
    async with engine_for(path) as engine:
        for name in names:
            await engine.poll(name)
        clock.advance(11)  # a and b share 100 requests: each may ask every 20 s; c every 10 s
        for name in names:
            await engine.poll(name)
        assert len(fake.hits(RELEASES)) == 4
        clock.advance(10)
        for name in names:
            await engine.poll(name)
    assert len(fake.hits(RELEASES)) == 7


# --- items: keys and ignore defaults -----------------------------------------------------------


async def test_a_reactions_count_alone_is_no_change(fake: FakeGitHub, write_config) -> None:
    asset = {"id": 1, "name": "app.tar.gz", "download_count": 3, "state": "uploaded"}
    base = dict(release(), assets=[asset], reactions={"total_count": 1, "+1": 1, "heart": 0})
    add_releases(fake, [base])
    path = write_config(config(source("rel", fake, f"{ORG}/release-assets")))
    async with engine_for(path) as engine:
        await engine.poll("rel")
        busier = dict(
            base,
            assets=[dict(asset, download_count=40)],
            reactions={"total_count": 3, "+1": 2, "heart": 1},
        )
        add_releases(fake, [busier])
        quiet = await engine.poll("rel")
        assert (quiet.result, quiet.events) == ("unchanged", [])
        add_releases(fake, [dict(busier, name="Version 1.0.0 (final)")])
        loud = await engine.poll("rel")
    [event] = loud.events
    assert (event["type"], event["data"]["key"]) == ("item.changed", 1000)
    assert event["data"]["changes"] == [
        {"op": "replace", "path": "/name", "value": "Version 1.0.0 (final)"}
    ]


@pytest.mark.parametrize(
    ("watch", "exchange", "options", "key"),
    [
        ("tags", "tags", {}, "v1.0.0"),
        ("commits", "commits", {"branch": "release/1.x"}, "0" * 39 + "1"),
        ("workflow_runs", "workflow-runs", {}, 1001),
        ("events", "events", {}, "10000000002"),
    ],
)
async def test_natural_keys(
    watch: str,
    exchange: str,
    options: dict[str, str],
    key: str | int,
    fake: FakeGitHub,
    write_config,
) -> None:
    fake.add(extra(exchange))
    opts = {"watch": watch, "on_first_poll": "emit", **options}
    path = write_config(config(source("w", fake, f"{ORG}/hello-world", **opts)))
    async with engine_for(path) as engine:
        result = await engine.poll("w")
    assert result.result == "new" and keys(result)[0] == ("item.added", key)


async def test_events_default_to_added_only(fake: FakeGitHub, clock: Clock, write_config) -> None:
    fake.add(extra("events"))
    path = write_config(config(source("ev", fake, f"{ORG}/hello-world", watch="events")))
    async with engine_for(path) as engine:
        await engine.poll("ev")
        newest, older = extra("events")["response"]
        fake.add(extra("events"), response=[dict(newest, id="10000000003"), newest])
        clock.advance(61)
        result = await engine.poll("ev")
    assert keys(result) == [("item.added", "10000000003")]  # the one that aged out: no event


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ("repo: octokit", "sources[0].repo", "'octokit' is not owner/name"),
        ("repo: a/b/c", "sources[0].repo", "is not owner/name"),
        ("watch: stars", "sources[0].watch", "must be one of: releases, tags, commits"),
        ("branch: main", "sources[0].branch", "only used with watch: commits"),
        ("api_url: ftp://example.com", "sources[0].api_url", "http:// or https://"),
        ("max_pages: 0", "sources[0].max_pages", "at least 1"),
    ],
)
def test_config_rejects_bad_options(
    line: str, key: str, problem: str, write_config: Callable[[str], Path]
) -> None:
    option = line.split(":")[0]
    entry = ["- name: gh", "  kind: github", "  repo: encode/httpx"]
    entry = [e for e in entry if not e.startswith(f"  {option}:")] + [f"  {line}"]
    path = write_config("sources:\n" + "".join(f"  {e}\n" for e in entry))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    lineno = path.read_text().splitlines().index(f"    {line}") + 1
    assert message.startswith(f"{path}:{lineno}: {key}: "), message
    assert problem in message
