"""The generic HTTP/JSON source: any URL, method and auth; items and keys chosen by JMESPath."""

from __future__ import annotations

import functools
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from bridge.errors import SourceError
from bridge.http import HttpClient, display, host_key
from bridge.sources._common import (
    AUTH_OPTION,
    basic_auth,
    check_auth,
    check_http_url,
    oauth2_client,
    request_headers,
)
from bridge.sources._common import body_hash as hashed
from bridge.sources.base import MAX_DEPTH, Fetched, FetchState, Option, Source

if TYPE_CHECKING:  # cursor.py and oauth2.py are imported by the sources that use them
    from bridge.sources.cursor import CursorPaging
    from bridge.sources.oauth2 import Client


class _Request(NamedTuple):
    method: str
    headers: Mapping[str, str]
    params: Mapping[str, str] | None
    data: bytes | str | None
    auth: tuple[str, str] | None
    max_pages: int
    json: Any  # the `json:` document, for cursor pages' variables
    cursor: CursorPaging | None  # `paginate: {cursor: ...}`
    oauth2: Client | None  # `auth: {oauth2: ...}`


class HttpSource(Source):
    """Polls one HTTP endpoint returning JSON."""

    kind = "http"
    options = {
        "url": Option("str", required=True, help="the URL to poll"),
        "method": Option("method", default="GET"),
        "headers": Option("headers", default={}),
        "params": Option("mapping", default={}),
        "body": Option("str"),
        "json": Option("any"),
        "auth": AUTH_OPTION,
        "items": Option("jmespath", help="JMESPath selecting the list of items"),
        "key": Option("jmespath", help="JMESPath giving each item's identity"),
        "paginate": Option("any", help="link, or {cursor, more, variable | param, max_pages}"),
        "max_pages": Option("int", default=10),
    }

    @classmethod
    def check(cls, options: Any) -> list[tuple[str, str]]:
        """Auth must be exactly one of bearer or basic; body and json exclude each other."""
        problems = check_auth(options.get("auth"))
        url_problem = check_http_url(options.get("url"))
        if url_problem:
            problems.append(("url", url_problem))
        if options.get("body") is not None and options.get("json") is not None:
            problems.append(("json", "give body: or json:, not both"))
        if options.get("max_pages", 10) < 1:
            problems.append(("max_pages", "must be at least 1"))
        if options.get("paginate") not in (None, "link"):
            from bridge.sources.cursor import paginate_problems

            problems += paginate_problems(options)
        return problems

    @functools.cached_property
    def host(self) -> str | None:
        """The host polled (the configured URL's; a redirect is not followed here)."""
        return host_key(self.spec.options["url"])

    @property
    def items_expr(self) -> str | None:
        """The configured `items:` expression."""
        return self.spec.options.get("items")

    @property
    def key_expr(self) -> str | None:
        """The configured `key:` expression."""
        return self.spec.options.get("key")

    @functools.cached_property
    def _request(self) -> _Request:
        # Built once per source, all of it at once: the options never change, a daemon polls
        # thousands of times, and `bridge once` polls each source once (where each cached
        # property costs its first use).
        opts = self.spec.options
        json_body = opts.get("json")
        data = orjson.dumps(json_body) if json_body is not None else opts.get("body")
        headers = request_headers(opts)
        if json_body is not None:
            headers.setdefault("Content-Type", "application/json")
        params = {str(k): str(v) for k, v in (opts.get("params") or {}).items()}
        return _Request(
            opts.get("method", "GET"),
            headers,
            params or None,
            data,
            basic_auth(opts),
            opts.get("max_pages", 10) if opts.get("paginate") == "link" else 1,
            json_body,
            _cursor_paging(opts),
            oauth2_client(opts),
        )

    def fetch(self, http: HttpClient, state: FetchState) -> Coroutine[Any, Any, Fetched]:
        """GET (or any method) the URL conditionally, following Link pages when asked."""
        # The fetch's own coroutine is returned, not awaited in one more of this method's: a
        # frame less on the path of every poll.
        req = self._request
        if req.oauth2 is None:
            return self._fetch(http, state, req.headers)
        return self._authorized(http, state, req.oauth2, req.headers)

    def _authorized(
        self, http: HttpClient, state: FetchState, client: Client, headers: Mapping[str, str]
    ) -> Coroutine[Any, Any, Fetched]:
        # Apart from fetch(), whose every call would otherwise make the lambda's closure cells.
        from bridge.sources.oauth2 import authorized

        # The bearer is one of the caller's headers: it stays with its origin on redirects.
        return authorized(
            http,
            client,
            self.spec.timeout,
            lambda value: self._fetch(http, state, {**headers, "Authorization": value}),
        )

    async def _fetch(
        self, http: HttpClient, state: FetchState, headers: Mapping[str, str]
    ) -> Fetched:
        opts = self.spec.options
        req = self._request
        docs: list[Any] = []
        if (cursor := req.cursor) is not None:
            from bridge.sources.cursor import fetch_cursor_pages

            pages, docs = await fetch_cursor_pages(
                http,
                cursor,
                state.url or opts["url"],
                req,
                headers,
                state,
                self.spec.timeout,
                self.spec.max_bytes,
            )
        else:
            pages = await http.fetch_pages(
                req.method,
                state.url or opts["url"],
                headers=headers,
                params=req.params,
                data=req.data,
                auth=req.auth,
                etag=state.etag,
                last_modified=state.last_modified,
                timeout=self.spec.timeout,
                max_bytes=self.spec.max_bytes,
                max_pages=req.max_pages,
            )
        if pages.not_modified:
            return Fetched(unchanged=True, state=state)
        body_hash = hashed(pages.bodies)
        new_state = FetchState(
            etag=pages.etag, last_modified=pages.last_modified, body_hash=body_hash, url=state.url
        )
        if body_hash == state.body_hash:
            return Fetched(unchanged=True, state=new_state)
        try:
            parsed = docs or [orjson.loads(body) for body in pages.bodies]
        except orjson.JSONDecodeError as exc:
            where = display(state.url or opts["url"])
            if "depth limit" in str(exc):  # orjson's own limit (1024), far past ours
                raise SourceError(f"document nested deeper than {MAX_DEPTH} levels") from exc
            raise SourceError(f"invalid JSON from {where}: {exc}") from exc
        return Fetched(unchanged=False, state=new_state, pages=parsed, complete=pages.complete)


def _cursor_paging(options: Mapping[str, Any]) -> CursorPaging | None:
    # cursor.py is imported for the sources that page by cursor only.
    if not isinstance(options.get("paginate"), Mapping):
        return None  # link pages, or one page
    from bridge.sources.cursor import CursorPaging

    return CursorPaging.of(options)
