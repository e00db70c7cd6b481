"""Cursor pagination for the http source: `paginate: {cursor, more?, variable | param, max_pages}`.

Each page's answer names the next page's cursor (a JMESPath over the page); it goes into the
GraphQL query's `json.variables.<variable>` or into the query parameter `param`. Paging stops
when the cursor is null or empty, when `more` is false, or after max_pages pages: then pages are
left over, and the fetch is not complete (items missing from it are not removed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from bridge.errors import SourceError
from bridge.http import HttpClient, display
from bridge.http.answers import Pages
from bridge.jmespath import OPTIONS, compile_jmespath, jmespath_problem
from bridge.sources.base import MAX_DEPTH, FetchState

PAGINATE_KEYS = ("cursor", "more", "variable", "param", "max_pages")


@dataclass(frozen=True)
class CursorPaging:
    """A checked `paginate:` mapping."""

    cursor: str
    more: str | None
    variable: str | None
    param: str | None
    max_pages: int

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> CursorPaging | None:
        """The paging of a source's checked options, or None when it is not cursor paging."""
        value = options.get("paginate")
        if not isinstance(value, Mapping):
            return None
        return cls(
            value["cursor"],
            value.get("more"),
            value.get("variable"),
            value.get("param"),
            int(value.get("max_pages", options.get("max_pages", 10))),
        )


def paginate_problems(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with `paginate:` (link, or a cursor mapping), by key path."""
    value = options.get("paginate")
    if value is None or value == "link":
        return []
    if not isinstance(value, Mapping):
        shown = f"{value!r} " if isinstance(value, str) and len(value) < 40 else ""
        return [("paginate", f"{shown}must be link or a mapping with cursor: (cursor pages)")]
    problems = [
        (f"paginate.{key}", f"unknown key (known: {', '.join(PAGINATE_KEYS)})")
        for key in value
        if key not in PAGINATE_KEYS
    ]
    if value.get("cursor") is None:
        problems.append(("paginate", "missing required key 'cursor' (JMESPath: the next cursor)"))
    for key in ("cursor", "more"):
        if value.get(key) is not None:
            problem = jmespath_problem(value[key])
            if problem:
                problems.append((f"paginate.{key}", problem))
    places = [key for key in ("variable", "param") if value.get(key) is not None]
    if len(places) != 1:
        problems.append(
            ("paginate", "give variable: (GraphQL json.variables) or param: (query), one of them")
        )
    for key in places:
        if not isinstance(value[key], str) or not value[key]:
            problems.append((f"paginate.{key}", "must be a name"))
    if "variable" in places and not isinstance(options.get("json"), Mapping):
        problems.append(("paginate.variable", "needs json: (a GraphQL query) to set it in"))
    pages = value.get("max_pages", 10)
    if isinstance(pages, str) and pages.strip().isdigit():
        pages = int(pages)
    if not isinstance(pages, int) or isinstance(pages, bool) or pages < 1:
        problems.append(("paginate.max_pages", "must be an integer of at least 1"))
    return problems


def _search(expr: str, doc: Any) -> Any:
    return compile_jmespath(expr).search(doc, options=OPTIONS)


def _next_cursor(paging: CursorPaging, doc: Any) -> str | None:
    if paging.more is not None and not _search(paging.more, doc):
        return None
    cursor = _search(paging.cursor, doc)
    if cursor is None or cursor == "":
        return None
    if isinstance(cursor, bool) or not isinstance(cursor, str | int | float):
        raise SourceError(f"paginate.cursor {paging.cursor!r} gave {type(cursor).__name__}")
    return str(cursor)


async def fetch_cursor_pages(
    http: HttpClient,
    paging: CursorPaging,
    url: str,
    request: Request,
    headers: Mapping[str, str],
    state: FetchState,
    timeout: float,
    max_bytes: int,
) -> tuple[Pages, list[Any]]:
    """The pages and their parsed documents; only the first request is conditional."""

    async def send(params: Mapping[str, str] | None, data: Any, first: bool, budget: int) -> Pages:
        return await http.fetch_pages(
            request.method,
            url,
            headers=headers,
            params=params,
            data=data,
            auth=request.auth,
            etag=state.etag if first else None,
            last_modified=state.last_modified if first else None,
            timeout=timeout,
            max_bytes=budget,
        )

    where = display(url)
    first = await send(request.params, request.data, True, max_bytes)
    if first.not_modified:
        return first, []
    bodies, docs = list(first.bodies), [_parse(first.bodies[0], where)]
    cursor = _next_cursor(paging, docs[0])
    while cursor is not None and len(bodies) < paging.max_pages:
        budget = max_bytes - sum(len(body) for body in bodies)
        if budget <= 0:
            raise SourceError(f"pages from {where} are larger than max_bytes together")
        params, data = request.params, request.data
        if paging.param is not None:
            params = {**(params or {}), paging.param: cursor}
        else:
            assert paging.variable is not None and isinstance(request.json, Mapping)
            variables = {**(request.json.get("variables") or {}), paging.variable: cursor}
            data = orjson.dumps({**request.json, "variables": variables})
        page = await send(params, data, False, budget)
        bodies.append(page.bodies[0])
        docs.append(_parse(page.bodies[0], where))
        cursor = _next_cursor(paging, docs[-1])
    pages = Pages(
        not_modified=False,
        bodies=bodies,
        complete=cursor is None,  # pages left over: what they hold is unknown, not gone
        etag=first.etag,
        last_modified=first.last_modified,
        first=first.first,
    )
    return pages, docs


class Request(Protocol):
    """What the http source sends (its _Request)."""

    @property
    def method(self) -> str: ...
    @property
    def params(self) -> Mapping[str, str] | None: ...
    @property
    def data(self) -> bytes | str | None: ...
    @property
    def json(self) -> Any: ...
    @property
    def auth(self) -> tuple[str, str] | None: ...


def _parse(body: bytes, where: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own limit (1024), far past ours
            raise SourceError(f"document nested deeper than {MAX_DEPTH} levels") from exc
        raise SourceError(f"invalid JSON from {where}: {exc}") from exc
