"""kind: feed end to end: RSS 2.0, RSS 1.0, RSS 0.91 and Atom documents served from a real local
server, polled through the config loader, the Engine and SQLite."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.sources import feed
from tests.conftest import STDOUT, ThreadedServer, bridge_config, engine_for, source

RSS = "application/rss+xml"


@dataclass
class FeedServer:
    """Serves one feed at /feed with the given type; ETag by content; records request headers."""

    body: bytes = b""
    content_type: str = RSS
    status: int = 200
    etag: bool = True
    last_modified: str | None = None
    requests: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        app = web.Application()
        app.router.add_get("/feed", self.handle)
        self.server = ThreadedServer(app)

    @property
    def url(self) -> str:
        return self.server.url("/feed")

    def serve(self, body: str | bytes, content_type: str = RSS, status: int = 200) -> None:
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type, self.status = content_type, status

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        headers = {"Content-Type": self.content_type}
        if self.last_modified:
            headers["Last-Modified"] = self.last_modified
        if self.etag:
            headers["ETag"] = '"' + hashlib.sha1(self.body).hexdigest()[:16] + '"'
            if request.headers.get("If-None-Match") == headers["ETag"]:
                return web.Response(status=304, headers=headers)
        return web.Response(status=self.status, body=self.body, headers=headers)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    s = FeedServer()
    s.server.start()
    yield s
    s.server.stop()


def rss2(*items: tuple[str, str]) -> str:
    """An RSS 2.0 feed of (guid, title) items."""
    body = "".join(
        f"<item><title>{title}</title><link>https://blog.example.com/{guid}</link>"
        f"<guid isPermaLink='false'>{guid}</guid>"
        f"<pubDate>Mon, 06 Sep 2021 16:45:00 +0200</pubDate>"
        f"<description>About {guid}</description><author>ann@example.com (Ann)</author></item>"
        for guid, title in items
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Blog</title>'
        f"<link>https://blog.example.com/</link><description>d</description>{body}</channel></rss>"
    )


RSS10 = """<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
         xmlns:dc="http://purl.org/dc/elements/1.1/">
  <channel rdf:about="https://example.org/"><title>News</title><link>https://example.org/</link>
    <description>d</description></channel>
  <item rdf:about="https://example.org/1"><title>One</title><link>https://example.org/1</link>
    <dc:date>2021-09-06T16:45:00Z</dc:date><dc:creator>Bob</dc:creator></item>
</rdf:RDF>"""

RSS091 = """<?xml version="1.0"?>
<rss version="0.91"><channel><title>Old</title><link>https://example.net/</link>
  <description>d</description><language>en</language>
  <item><title>Hello</title><link>https://example.net/hello</link><description>Hi</description></item>
</channel></rss>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom</title><id>urn:feed</id>
  <updated>2021-09-07T10:00:00Z</updated>
  <entry><title>Entry</title><id>urn:entry:1</id><link href="/posts/1"/>
    <published>2021-09-06T00:00:00Z</published><updated>2021-09-07T10:00:00+02:00</updated>
    <author><name>Ann</name></author><summary>Short</summary></entry>
</feed>"""


def blog(url: str, **options: Any) -> dict[str, Any]:
    """The feed every test polls, `blog`, printing its events to stdout."""
    return source("blog", "feed", url=url, webhooks=["out"], **options)


def keys(result: Any) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["key"]) for e in result.events]


async def test_added_and_changed_are_sent_and_leaving_the_window_is_not(
    server: FeedServer, write_config
) -> None:
    server.serve(rss2(("a", "First"), ("b", "Second")))
    path = write_config(bridge_config(blog(server.url), webhooks=STDOUT))
    async with engine_for(path) as engine:
        assert (await engine.poll("blog")).events == []
        server.serve(rss2(("c", "Third"), ("a", "First, revised")))  # b leaves the window
        result = await engine.poll("blog")
        stored = engine.state.snapshots.item_hashes("blog")
    assert keys(result) == [("item.added", "c"), ("item.changed", "a")]
    changed = result.events[1]["data"]
    assert changed["changes"] == [{"op": "replace", "path": "/title", "value": "First, revised"}]
    assert result.events[0]["data"]["after"] == {
        "id": "c",
        "title": "Third",
        "link": "https://blog.example.com/c",
        "published": "2021-09-06T14:45:00Z",
        "updated": None,
        "summary": "About c",
        "author": "ann@example.com (Ann)",
    }
    assert set(stored) == {"a", "c"}


async def test_removed_is_sent_when_asked_for(server: FeedServer, write_config) -> None:
    server.serve(rss2(("a", "First"), ("b", "Second")))
    path = write_config(
        bridge_config(blog(server.url, on=["added", "changed", "removed"]), webhooks=STDOUT)
    )
    async with engine_for(path) as engine:
        await engine.poll("blog")
        server.serve(rss2(("a", "First")))
        result = await engine.poll("blog")
    assert keys(result) == [("item.removed", "b")]


@pytest.mark.parametrize(
    ("document", "content_type", "item"),
    [
        (
            RSS10,
            "application/rdf+xml",
            {
                "id": "https://example.org/1",
                "title": "One",
                "link": "https://example.org/1",
                "published": None,
                "updated": "2021-09-06T16:45:00Z",
                "summary": None,
                "author": "Bob",
            },
        ),
        (
            RSS091,
            "text/xml",
            {
                "id": None,
                "title": "Hello",
                "link": "https://example.net/hello",
                "published": None,
                "updated": None,
                "summary": "Hi",
                "author": None,
            },
        ),
        (
            ATOM,
            "application/atom+xml",
            {
                "id": "urn:entry:1",
                "title": "Entry",
                "link": "{base}/posts/1",  # relative links resolved against the feed's URL
                "published": "2021-09-06T00:00:00Z",
                "updated": "2021-09-07T08:00:00Z",
                "summary": "Short",
                "author": "Ann",
            },
        ),
    ],
    ids=["rss1.0", "rss0.91", "atom"],
)
async def test_feed_formats(
    document: str, content_type: str, item: dict[str, Any], server: FeedServer, write_config
) -> None:
    server.serve(document, content_type)
    path = write_config(bridge_config(blog(server.url, on_first_poll="emit"), webhooks=STDOUT))
    async with engine_for(path) as engine:
        result = await engine.poll("blog")
    [event] = result.events
    base = server.url.removesuffix("/feed")
    expected = {k: v.format(base=base) if isinstance(v, str) else v for k, v in item.items()}
    assert event["data"]["after"] == expected
    # keyed by the entry's id, else (RSS 0.91 has no guid) by its link
    assert event["data"]["key"] == (expected["id"] or expected["link"])


MALFORMED = {
    "html": (
        "<!doctype html><html><head><title>Blog</title></head><body>Moved</body></html>",
        "text/html",
    ),
    "json": ('{"items": [{"id": 1}]}', "application/json"),
    "truncated": (rss2(("a", "First"))[:150], RSS),
    "empty body": ("", RSS),
    "garbage": ("\x00\x01 not xml at all", RSS),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_feed_is_a_failed_poll(
    case: str, server: FeedServer, write_config
) -> None:
    server.serve(rss2(("a", "First"), ("b", "Second")))
    path = write_config(
        bridge_config(blog(server.url, on=["added", "changed", "removed"]), webhooks=STDOUT)
    )
    async with engine_for(path) as engine:
        await engine.poll("blog")
        before = engine.state.snapshots.item_hashes("blog")
        server.serve(*MALFORMED[case])
        failed = await engine.poll("blog")
        assert failed.result == "error" and failed.events == []
        assert "feed" in (failed.error or ""), failed.error
        assert engine.state.snapshots.item_hashes("blog") == before
        server.serve(rss2(("a", "First"), ("b", "Second")))
        recovered = await engine.poll("blog")
    assert (recovered.result, recovered.events) == ("unchanged", [])


async def test_a_well_formed_empty_feed_is_a_real_answer(server: FeedServer, write_config) -> None:
    server.serve(rss2(("a", "First")))
    path = write_config(
        bridge_config(blog(server.url, on=["added", "changed", "removed"]), webhooks=STDOUT)
    )
    async with engine_for(path) as engine:
        await engine.poll("blog")
        server.serve(rss2(), "text/plain")  # mislabelled, but a feed all the same
        result = await engine.poll("blog")
    assert keys(result) == [("item.removed", "a")]


async def test_etag_and_304(server: FeedServer, write_config) -> None:
    server.serve(rss2(("a", "First")))
    path = write_config(bridge_config(blog(server.url), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("blog")
        result = await engine.poll("blog")
        engine.flush()
        state = engine.state.snapshots.source_row("blog").fetch_state
    assert result.result == "unchanged"
    first, second = server.requests
    assert "If-None-Match" not in first
    assert second["If-None-Match"] == state.etag


async def test_same_body_is_unchanged_without_parsing(
    server: FeedServer, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.etag = False
    server.last_modified = "Wed, 21 Oct 2026 07:28:00 GMT"
    server.serve(rss2(("a", "First")))
    calls = []
    parse = feed.feedparser.parse

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return parse(*args, **kwargs)

    monkeypatch.setattr(feed.feedparser, "parse", counting)
    path = write_config(bridge_config(blog(server.url), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("blog")
        result = await engine.poll("blog")
    assert result.result == "unchanged" and len(calls) == 1
    assert server.requests[1]["If-Modified-Since"] == server.last_modified


async def test_headers_and_basic_auth_are_sent(server: FeedServer, write_config) -> None:
    server.serve(rss2(("a", "First")))
    auth = {"basic": {"username": "u", "password": "p"}}
    path = write_config(
        bridge_config(blog(server.url, headers={"X-Team": "ops"}, auth=auth), webhooks=STDOUT)
    )
    async with engine_for(path) as engine:
        assert (await engine.poll("blog")).result == "new"
    [sent] = server.requests
    assert sent["X-Team"] == "ops"
    assert sent["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


@pytest.mark.parametrize(
    ("auth", "key", "problem"),
    [
        ({"token": "x"}, "sources[0].auth", "must be {bearer: TOKEN} or {basic"),
        ({"basic": {"username": "u"}}, "sources[0].auth.basic", "{username: ..., password"),
    ],
)
def test_config_rejects_bad_auth(
    auth: dict[str, Any], key: str, problem: str, write_config: Callable[[str], Path]
) -> None:
    path = write_config(
        bridge_config(blog("https://example.com/feed.xml", auth=auth), webhooks=STDOUT)
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert f": {key}: " in str(info.value) and problem in str(info.value)
    assert str(info.value).startswith(f"{path}:")


def test_config_rejects_a_url_that_is_not_http(write_config: Callable[[str], Path]) -> None:
    path = write_config(bridge_config(blog("file:///etc/passwd"), webhooks=STDOUT))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "sources[0].url: must be an http:// or https:// URL" in str(info.value)
