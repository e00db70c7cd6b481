"""Hostile origins (issue 15, items 4-9): credentials in polled URLs, redirects to other origins,
absurd Retry-After values, deeply nested JSON, keys of every JSON type, and feeds that lie about
their encoding. Against real servers on 127.0.0.1, the real engine, state file and CLI."""

from __future__ import annotations

import base64
import gzip
import math
import re
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from bridge.http import MAX_HOST_WAIT, until
from bridge.http.headers import parse_retry_after, rate_limit_wait
from bridge.model import MAX_DEPTH
from bridge.polling.keys import storage_key
from bridge.state import open_state
from tests.conftest import (
    STDOUT,
    Origin,
    Receiver,
    ThreadedServer,
    bridge_config,
    engine_for,
    http_source,
    run_cli,
    source,
    webhook,
)

# --- 15.4 credentials in a polled URL -----------------------------------------------------------

PASSWORD, TOKEN, API_KEY = "pw-S3CRET0", "SECRET1", "SECRET2"


@pytest.mark.slow
def test_credentials_in_a_url_reach_no_output_event_log_or_state_file(
    origin: Origin, receiver: Receiver, tmp_path: Path
) -> None:
    origin.set("/bad", body=b"not json {")
    origin.set("/limited", body=b"{}", status=429, headers={"Retry-After": "120"})
    secret_query = f"?token={TOKEN}&api_key={API_KEY}"
    port = origin.server.port
    config = tmp_path / "bridge.yaml"
    config.write_text(
        bridge_config(
            http_source(
                "api",
                f"http://ann:{PASSWORD}@127.0.0.1:{port}/bad{secret_query}",
                alert_after=1,
                webhooks=["hook"],
            ),
            http_source(
                "limited",
                f"http://ann:{PASSWORD}@127.0.0.1:{port}/limited{secret_query}",
                webhooks=["hook"],
            ),
            webhooks={"hook": webhook(receiver.url())},
        )
    )
    c = str(config)
    runs = [
        run_cli("--log-format", "json", "once", "-c", c),
        run_cli("--log-format", "json", "once", "-c", c),  # the host's block, read back
        run_cli("status", "-c", c),
        run_cli("events", "--json", "-c", c),
        run_cli("deliveries", "-c", c),
        run_cli("deliveries", "--json", "-c", c),
    ]
    # The credentials were used: sent as basic auth, the query string as given.
    [(path_qs, headers)] = [r for r in origin.requests if r[0].startswith("/bad")]
    assert path_qs == f"/bad{secret_query}"
    assert (
        headers["Authorization"] == "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode()
    )

    [failing] = [e for e in receiver.events() if e["data"]["source"] == "api"]
    assert failing["type"] == "source.failing"
    assert failing["data"]["error"].startswith(f"invalid JSON from http://127.0.0.1:{port}/bad?…: ")
    assert f"invalid JSON from http://127.0.0.1:{port}/bad?…: " in runs[0].stderr
    assert f"HTTP 429 Too Many Requests from http://127.0.0.1:{port}/limited?…" in runs[0].stderr
    # The next run keeps off the host that asked, named without the credentials.
    assert f"api: rate limited by 127.0.0.1:{port}: waiting until" in runs[2].stdout

    state = [p.read_bytes() for p in tmp_path.glob("state.db*")]
    seen = [r.stdout + r.stderr for r in runs] + [r.body.decode() for r in receiver.received]
    for secret in (PASSWORD, TOKEN, API_KEY, "ann:"):
        for text in seen:
            assert secret not in text, text
        for raw in state:
            assert secret.encode() not in raw


# --- 15.5 redirects to another origin -----------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[Origin]:
    """A second origin: 127.0.0.1 on another port."""
    o = Origin()
    o.server.start()
    yield o
    o.server.stop()


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><id>urn:f</id>
<updated>2026-01-01T00:00:00Z</updated>
<entry><title>One</title><id>urn:e:1</id><updated>2026-01-01T00:00:00Z</updated></entry></feed>"""

CONFIGURED = {"X-Api-Key": "key-SECRET", "Cookie": "session=SECRET3"}
CREDENTIALS = ("X-Api-Key", "Cookie", "Authorization")


@pytest.mark.parametrize(
    ("kind", "options", "userinfo"),
    [
        ("http", {"headers": CONFIGURED, "auth": {"bearer": "tok-SECRET"}}, ""),
        ("http", {"headers": CONFIGURED}, "ann:pw-SECRET@"),
        (
            "feed",
            {"headers": CONFIGURED, "auth": {"basic": {"username": "u", "password": "p"}}},
            "",
        ),
    ],
    ids=["http-headers-and-bearer", "http-url-credentials", "feed-headers-and-basic"],
)
async def test_no_configured_header_follows_a_redirect_to_another_origin(
    kind: str,
    options: dict[str, Any],
    userinfo: str,
    origin: Origin,
    elsewhere: Origin,
    write_config,
) -> None:
    body = ATOM if kind == "feed" else orjson.dumps({"v": 1})
    elsewhere.set("/doc", body=body)
    origin.set("/doc", body=body)
    origin.set("/moved", body=b"", status=302, headers={"Location": elsewhere.url("/doc")})
    origin.set("/same", body=b"", status=307, headers={"Location": "/doc"})
    base = f"http://{userinfo}127.0.0.1:{origin.server.port}"
    path = write_config(
        bridge_config(
            source("away", kind, url=f"{base}/moved", webhooks=["out"], **options),
            source("home", kind, url=f"{base}/same", webhooks=["out"], **options),
            webhooks=STDOUT,
        )
    )
    async with engine_for(path) as engine:
        away = await engine.poll("away")
        home = await engine.poll("home")
    assert (away.result, home.result) == ("new", "new"), (away.error, home.error)
    [sent] = origin.hits("/moved")
    [followed] = elsewhere.hits("/doc")
    [kept] = origin.hits("/doc")
    for name in CREDENTIALS:
        assert name in sent and name in kept  # to the origin they were configured for
        assert name not in followed  # never to another
    assert sent["X-Api-Key"] == kept["X-Api-Key"] == "key-SECRET"


async def test_a_github_redirect_to_another_host_gets_only_its_location(
    origin: Origin, elsewhere: Origin, write_config
) -> None:
    release = {"id": 7, "tag_name": "v1", "name": "One"}
    elsewhere.set("/mirror/releases", [release])
    location = elsewhere.url("/mirror/releases")
    origin.set("/repos/o/r/releases", body=b"", status=302, headers={"Location": location})
    api = f"http://127.0.0.1:{origin.server.port}"
    path = write_config(
        bridge_config(
            source("rel", "github", repo="o/r", api_url=api, token="ghp_SECRET", webhooks=["out"]),
            webhooks=STDOUT,
        )
    )
    async with engine_for(path) as engine:
        result = await engine.poll("rel")
    assert result.result == "new", result.error
    [(asked, sent)] = origin.requests
    assert (
        asked == "/repos/o/r/releases?per_page=100" and sent["Authorization"] == "Bearer ghp_SECRET"
    )
    [(path_qs, headers)] = elsewhere.requests
    assert path_qs == "/mirror/releases"  # no per_page=100 of ours appended
    assert "Authorization" not in headers


# --- 15.6 Retry-After from a polled host --------------------------------------------------------

ABSURD = [
    "999999999",
    "1e300",
    "-5",
    "nan",
    "inf",
    "-inf",
    "1e-400",
    "soon",
    "0x10",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Mon, 01 Jan 0001 00:00:00 GMT",
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "Thu, 31 Dec 99999 23:59:59 GMT",
    "Mon, 32 Foo 2024 99:99:99 GMT",
]


@given(st.one_of(st.text(), st.sampled_from(ABSURD), st.floats().map(repr)))
def test_retry_after_is_none_or_a_finite_wait(value: str) -> None:
    wait = parse_retry_after(value, 1_700_000_000.0)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


@given(
    st.sampled_from([403, 429, 503]),
    st.one_of(st.none(), st.text(), st.sampled_from(ABSURD)),
    st.one_of(st.none(), st.text(), st.sampled_from(ABSURD), st.floats().map(repr)),
    st.sampled_from(["0", "5", None]),
)
def test_a_polled_host_never_asks_for_more_than_an_hour(
    status: int, retry_after: str | None, reset: str | None, remaining: str | None
) -> None:
    headers = {
        name: value
        for name, value in (
            ("Retry-After", retry_after),
            ("X-RateLimit-Reset", reset),
            ("X-RateLimit-Remaining", remaining),
        )
        if value is not None
    }
    wait = rate_limit_wait(status, headers, 1_700_000_000.0)
    assert wait is None or 0 <= wait <= MAX_HOST_WAIT == 3600


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_wait_prints_for_any_time(ts: float) -> None:
    assert until(ts, 1_700_000_000.0).endswith(("UTC", "too far away to print"))


def test_a_wait_over_a_day_is_printed_with_its_date() -> None:
    now = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    assert until(now + 60, now) == "22:14:20 UTC"
    assert until(now + 2 * 86400, now) == "2023-11-16 22:13:20 UTC"


# A date decades ahead, fixed: parameters computed from the clock differ between the test
# workers (pytest-xdist collects in each) when their collections straddle a second.
@pytest.mark.parametrize("retry_after", ["999999999", "1e300", formatdate(4e9, usegmt=True)])
async def test_a_429_keeps_off_the_host_at_most_an_hour(
    retry_after: str, origin: Origin, write_config
) -> None:
    origin.set("/c", body=b"{}", status=429, headers={"Retry-After": retry_after})
    path = write_config(
        bridge_config(http_source("api", origin.url("/c"), webhooks=["out"]), webhooks=STDOUT)
    )
    host = f"127.0.0.1:{origin.server.port}"
    async with engine_for(path) as engine:
        first = await engine.poll("api")
        started = time.time()
        second = await engine.poll("api")
        until_ts = engine.http.blocked_until(host)
        engine.flush()
    assert first.error == f"HTTP 429 Too Many Requests from {origin.url('/c')}"
    assert until_ts is not None and until_ts <= started + MAX_HOST_WAIT
    assert re.fullmatch(
        rf"rate limited by {re.escape(host)}: waiting until \d\d:\d\d:\d\d UTC \(3600s from now\)",
        second.error or "",
    ), second.error
    async with engine_for(path) as engine:  # the next run reads the block back
        third = await engine.poll("api")
    assert (third.error or "").startswith(f"rate limited by {host}: waiting until ")
    assert len(origin.hits("/c")) == 1


async def test_a_block_an_older_version_kept_for_years_is_cut_to_an_hour(
    origin: Origin, write_config, tmp_path: Path
) -> None:
    origin.set("/c", {"v": 1})
    host = f"127.0.0.1:{origin.server.port}"
    path = write_config(
        bridge_config(http_source("api", origin.url("/c"), webhooks=["out"]), webhooks=STDOUT)
    )
    state = open_state(str(tmp_path / "state.db"))
    try:
        state.snapshots.commit_polls([], {host: time.time() + 999_999_999})
    finally:
        state.close()
    async with engine_for(path) as engine:
        result = await engine.poll("api")
    assert re.fullmatch(
        rf"rate limited by {re.escape(host)}: waiting until \d\d:\d\d:\d\d UTC \(\d+s from now\)",
        result.error or "",
    ), result.error
    seconds = int(re.findall(r"\((\d+)s from now\)", result.error or "")[0])
    assert seconds <= MAX_HOST_WAIT


# --- 15.7 deep JSON -----------------------------------------------------------------------------


def nested(levels: int, leaf: Any) -> Any:
    """`leaf` inside `levels` arrays."""
    for _ in range(levels):
        leaf = [leaf]
    return leaf


def depth(value: Any) -> int:
    """How many arrays and objects nest in `value` (a test's own count)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def deep_doc(extra: int, leaf: Any, sibling: str) -> dict[str, Any]:
    # The document is an object (1) holding a list (2) of items (3): the deep item's "deep" field
    # takes the document to MAX_DEPTH + extra levels.
    deep = {"id": 1, "deep": nested(MAX_DEPTH - 3 + extra, leaf), "noise": "a"}
    return {"items": [deep, {"id": 2, "v": sibling}]}


async def test_an_item_at_the_depth_limit_goes_through_the_whole_pipeline(
    origin: Origin, receiver: Receiver, write_config
) -> None:
    doc = deep_doc(0, 1, "x")
    assert depth(doc) == MAX_DEPTH
    origin.set("/deep", doc)
    options = {"items": "items", "key": "id", "ignore": ["noise"], "webhooks": ["hook"]}
    path = write_config(
        bridge_config(
            http_source("api", origin.url("/deep"), **options),
            webhooks={"hook": webhook(receiver.url())},
        )
    )
    async with engine_for(path) as engine:
        assert (await engine.poll("api")).result == "new"
        origin.set("/deep", deep_doc(0, 2, "y"))
        changed = await engine.poll("api")
        await engine.deliver_due()
    assert changed.result == "changed", changed.error
    by_key = {e["data"]["key"]: e for e in receiver.events()}
    assert sorted(by_key) == [1, 2]
    deep = by_key[1]["data"]
    assert deep["changes"] == [
        {"op": "replace", "path": "/deep" + "/0" * (MAX_DEPTH - 3), "value": 2}
    ]
    assert deep["after"]["deep"] == nested(MAX_DEPTH - 3, 2)
    assert deep["before"]["deep"] == nested(MAX_DEPTH - 3, 1)
    assert by_key[2]["data"]["changes"] == [{"op": "replace", "path": "/v", "value": "y"}]


async def test_a_document_deeper_than_the_limit_fails_every_poll_from_the_first(
    origin: Origin, write_config
) -> None:
    origin.set("/deep", deep_doc(1, 1, "x"))
    line = f"document nested deeper than {MAX_DEPTH} levels"
    path = write_config(
        bridge_config(
            http_source("api", origin.url("/deep"), items="items", key="id", webhooks=["out"]),
            webhooks=STDOUT,
        )
    )
    async with engine_for(path) as engine:
        first = await engine.poll("api")
        origin.set("/deep", deep_doc(1, 1, "y"))  # a sibling changes: still refused, the same way
        second = await engine.poll("api")
        assert engine.state.snapshots.item_hashes("api") == {}
        origin.set("/deep", {"items": [{"id": 2, "v": "y"}]})  # the deep item goes
        baseline = await engine.poll("api")
        origin.set("/deep", {"items": [{"id": 2, "v": "z"}]})
        reported = await engine.poll("api")
    assert (first.result, first.error) == ("error", line)
    assert (second.result, second.error) == ("error", line)
    assert (baseline.result, baseline.events) == ("new", [])
    assert [(e["type"], e["data"]["key"]) for e in reported.events] == [("item.changed", 2)]


@pytest.mark.parametrize("levels", [300, 1000, 5000])
async def test_very_deep_documents_are_a_clear_failed_poll(
    levels: int, origin: Origin, write_config
) -> None:
    origin.set("/deep", body=b"[" * levels + b"]" * levels)
    path = write_config(
        bridge_config(http_source("api", origin.url("/deep"), webhooks=["out"]), webhooks=STDOUT)
    )
    async with engine_for(path) as engine:
        result = await engine.poll("api")
    assert result.error == f"document nested deeper than {MAX_DEPTH} levels"


# --- 15.8 keys keep their JSON type -------------------------------------------------------------


async def test_keys_of_different_json_types_are_different_items(
    origin: Origin, write_config
) -> None:
    answer = [
        {"k": 1, "v": "int"},
        {"k": "1", "v": "string"},
        {"k": True, "v": "bool"},
        {"k": "true", "v": "string"},
        {"k": 1.5, "v": "float"},
        {"k": [1], "v": "list"},
    ]
    origin.set("/k", answer)
    path = write_config(
        bridge_config(
            http_source("api", origin.url("/k"), items="@", key="k", webhooks=["out"],
                        on_first_poll="emit"),
            webhooks=STDOUT,
        )
    )  # fmt: skip
    async with engine_for(path) as engine:
        first = await engine.poll("api")
        origin.set("/k", [dict(answer[1], v="changed"), *answer[2:]])  # int 1 goes, "1" changes
        second = await engine.poll("api")
        stored = set(engine.state.snapshots.item_hashes("api"))
        listed = [e["key"] for e in engine.state.admin.events(limit=100)]
    keys = [e["data"]["key"] for e in first.events]
    assert keys == [1, "1", True, "true", 1.5, [1]]
    assert [type(k) for k in keys] == [int, str, bool, str, float, list]
    assert [(e["type"], e["data"]["key"]) for e in second.events] == [
        ("item.changed", "1"),
        ("item.removed", 1),
    ]
    assert type(second.events[1]["data"]["key"]) is int
    assert stored == {storage_key(k) for k in ["1", True, "true", 1.5, [1]]}
    assert listed[:2] == ["1", "1"]  # `bridge events` shows a key as text


# --- 15.9 feeds ---------------------------------------------------------------------------------


class FeedServer:
    """Serves /feed with exactly the headers given (no charset unless given)."""

    def __init__(self) -> None:
        self.body = b""
        self.headers: dict[str, str] = {}
        app = web.Application()
        app.router.add_get("/feed", self.handle)
        self.server = ThreadedServer(app)

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=self.body, headers=self.headers)


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    s = FeedServer()
    s.server.start()
    yield s
    s.server.stop()


def feed_config(write_config, url: str) -> Path:
    path: Path = write_config(
        bridge_config(source("blog", "feed", url=url, webhooks=["out"], on_first_poll="emit"),
                      webhooks=STDOUT)
    )  # fmt: skip
    return path


AUTHOR_ONLY = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><id>urn:f</id>
<updated>2026-01-01T00:00:00Z</updated>
<entry><title>One</title><id>urn:e:1</id><updated>2026-01-01T00:00:00Z</updated></entry>
<entry><author><name>%s</name></author></entry></feed>"""


async def test_a_feed_entry_with_only_an_author_is_keyed_by_its_content(
    feed_server: FeedServer, write_config
) -> None:
    feed_server.headers = {"Content-Type": "application/atom+xml"}
    feed_server.body = AUTHOR_ONLY % b"Ann"
    path = feed_config(write_config, feed_server.server.url("/feed"))
    async with engine_for(path) as engine:
        first = await engine.poll("blog")
        again = await engine.poll("blog")
        feed_server.body = AUTHOR_ONLY % b"Bob"
        renamed = await engine.poll("blog")
    assert first.result == "new", first.error
    [one, anonymous] = first.events
    assert one["data"]["key"] == "urn:e:1"
    assert anonymous["data"]["after"]["author"] == "Ann"
    assert re.fullmatch(r"[0-9a-f]{32}", anonymous["data"]["key"])  # its content hash
    assert (again.result, again.events) == ("unchanged", [])
    [added] = renamed.events  # other content, another key; feeds do not send removals
    assert added["type"] == "item.added" and added["data"]["after"]["author"] == "Bob"


CYRILLIC = "Новости: погода в Москве и области"


async def test_a_legacy_encoded_feed_without_a_charset_is_decoded(
    feed_server: FeedServer, write_config
) -> None:
    feed_server.headers = {"Content-Type": "application/rss+xml"}  # no charset, no declaration
    feed_server.body = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Блог</title>'
        "<link>https://blog.example.ru/</link><description>Новости</description>"
        f'<item><title>{CYRILLIC}</title><guid isPermaLink="false">новость-1</guid>'
        "<description>Сегодня в Москве солнечно, завтра дождь.</description></item>"
        "</channel></rss>"
    ).encode("cp1251")
    path = feed_config(write_config, feed_server.server.url("/feed"))
    async with engine_for(path) as engine:
        result = await engine.poll("blog")
    [event] = result.events
    assert event["data"]["key"] == "новость-1"
    assert event["data"]["after"]["title"] == CYRILLIC


async def test_a_body_that_claims_gzip_but_is_not_says_so(
    feed_server: FeedServer, write_config
) -> None:
    feed_server.headers = {"Content-Type": "application/atom+xml", "Content-Encoding": "gzip"}
    feed_server.body = ATOM
    url = feed_server.server.url("/feed")
    path = feed_config(write_config, url)
    async with engine_for(path) as engine:
        plain = await engine.poll("blog")
        feed_server.body = gzip.compress(ATOM)
        real = await engine.poll("blog")
    assert plain.error == f"GET {url}: answer claims gzip encoding but is not gzip"
    assert real.result == "new", real.error
