"""The RSS/Atom source: one item per feed entry, keyed by its id (guid), else its link (then its
title, then its summary); an entry with none of these by its content, as `http` items without
`key:` are."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from dataclasses import replace
from typing import Any

import feedparser

from bridge.errors import SourceError
from bridge.http import HttpClient, display, host_key
from bridge.sources._common import (
    AUTH_OPTION,
    basic_auth,
    body_hash,
    check_auth,
    check_http_url,
    oauth2_client,
    request_headers,
)
from bridge.sources.base import Fetched, FetchState, Option, Source

# The entry fields an item holds; `id` is the entry's id/guid.
FIELDS = ("id", "title", "link", "published", "updated", "summary", "author")
# What identifies an entry, best first: key_expr is these joined with ||.
KEY_FIELDS = ("id", "link", "title", "summary")

# feedparser sets `bozo` for these although the document parsed as the feed it is: a server that
# labels its feed text/html, or an encoding declaration the bytes contradict.
_BENIGN_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


class FeedSource(Source):
    """Polls an RSS 0.9x/1.0/2.0 or Atom feed."""

    kind = "feed"
    options = {
        "url": Option("str", required=True, help="the feed's URL"),
        "headers": Option("headers", default={}),
        "auth": AUTH_OPTION,
    }
    # Entries leave a feed's window all the time; that is not news.
    default_on = frozenset({"added", "changed"})

    @classmethod
    def check(cls, options: Any) -> list[tuple[str, str]]:
        """The URL must be http(s); auth must be exactly one of bearer or basic."""
        problems = check_auth(options.get("auth"))
        if (problem := check_http_url(options.get("url"))) is not None:
            problems.append(("url", problem))
        return problems

    @functools.cached_property
    def host(self) -> str | None:
        """The host polled (the configured URL's; a redirect is not followed here)."""
        return host_key(self.spec.options["url"])

    @property
    def items_expr(self) -> str | None:
        """Each page is the list of entries."""
        return "@"

    @property
    def key_expr(self) -> str | None:
        """The entry's id or guid; a link when it has none (then title, then summary)."""
        return " || ".join(KEY_FIELDS)

    @property
    def key_by_content(self) -> bool:
        """An entry with no id, link, title or summary (only an author, say) is keyed by its
        content, rather than failing the whole feed."""
        return True

    async def fetch(self, http: HttpClient, state: FetchState) -> Fetched:
        """GET the feed conditionally; an identical body is unchanged without parsing."""
        headers = request_headers(self.spec.options)
        client = oauth2_client(self.spec.options)
        if client is None:
            return await self._fetch(http, state, headers)
        from bridge.sources.oauth2 import authorized

        # The bearer is one of the caller's headers: it stays with its origin on redirects.
        return await authorized(
            http,
            client,
            self.spec.timeout,
            lambda value: self._fetch(http, state, {**headers, "Authorization": value}),
        )

    async def _fetch(self, http: HttpClient, state: FetchState, headers: dict[str, str]) -> Fetched:
        opts = self.spec.options
        url = state.url or opts["url"]
        pages = await http.fetch_pages(
            "GET",
            url,
            headers=headers,
            auth=basic_auth(opts),
            etag=state.etag,
            last_modified=state.last_modified,
            timeout=self.spec.timeout,
            max_bytes=self.spec.max_bytes,
        )
        if pages.not_modified:
            return Fetched(
                unchanged=True,
                state=replace(state, etag=pages.etag, last_modified=pages.last_modified),
            )
        digest = body_hash(pages.bodies)
        new_state = replace(
            state, etag=pages.etag, last_modified=pages.last_modified, body_hash=digest
        )
        if digest == state.body_hash:
            return Fetched(unchanged=True, state=new_state)
        first = pages.first
        # feedparser is pure Python and sanitizes every entry's HTML: a few hundred kilobytes
        # take a good part of a second, which the event loop's other polls should not wait out.
        entries = await asyncio.to_thread(
            parse_feed, pages.bodies[0], first.url, first.headers.get("Content-Type", "")
        )
        return Fetched(unchanged=False, state=new_state, pages=[entries])


def parse_feed(body: bytes, url: str, content_type: str = "") -> list[dict[str, Any]]:
    """The items of a feed document; SourceError when it is not a feed or is broken and empty."""
    # A stream, never the bytes themselves: feedparser tries a bytes argument as a file name
    # first, and a hostile server could answer with the path of a local file.
    parsed = feedparser.parse(
        io.BytesIO(body),
        response_headers={"content-location": url, "content-type": content_type},
    )
    entries = parsed.get("entries") or []
    where = display(url)
    if not parsed.get("version"):
        # Not an <rss>, <rdf:RDF> or <feed> document: HTML, JSON, an error page.
        problem = _bozo(parsed)
        detail = f" ({problem})" if problem else ""
        raise SourceError(f"{where} is not an RSS or Atom feed{detail}")
    problem = _bozo(parsed)
    if not entries and problem:
        raise SourceError(f"malformed feed from {where}: {problem}")
    items = [_item(entry) for entry in entries]
    if problem:
        for i, item in enumerate(items):
            if not any(item.values()):
                # A broken document's recovery can yield an empty entry (a truncated <item>):
                # that is the document failing, not an entry to key by its (empty) content.
                raise SourceError(f"malformed feed from {where} ({problem}): entry {i} is empty")
    return items


def _bozo(parsed: Any) -> str | None:
    """feedparser's complaint about the document, unless it is a harmless one."""
    if not parsed.get("bozo"):
        return None
    exc = parsed.get("bozo_exception")
    if isinstance(exc, _BENIGN_BOZO):
        return None
    return " ".join(str(exc).split()) or type(exc).__name__


def _item(entry: Any) -> dict[str, Any]:
    # dict.get, not entry.get: feedparser's own get maps a missing `updated` to `published`
    # with a DeprecationWarning, and the item must say what the feed says.
    raw = dict(entry)
    item = {name: raw.get(name) for name in FIELDS}
    for name in ("published", "updated"):
        parsed = raw.get(f"{name}_parsed")
        if parsed:
            item[name] = time.strftime("%Y-%m-%dT%H:%M:%SZ", parsed)
    return item
