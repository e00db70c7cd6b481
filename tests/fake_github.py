"""A fake GitHub REST API on 127.0.0.1 that replays octokit's recorded exchanges.

Recordings (tests/fixtures/octokit) and our own exchanges (tests/fixtures/github_extra.json) share
one format: method, path with query, status, response body, and `headers` (a dict) or `rawHeaders`
(a flat name, value list). The fake rewrites https://api.github.com to itself in headers and
bodies, answers 304 to a matching If-None-Match, fills in `{now+N}` header templates, and records
every request. GitHub's own behaviour it imitates where a recording is one instance of a rule:
a repository that moved (a recorded 301 of /repos/O/N) moves every path below it too.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from aiohttp import web

from tests.conftest import ThreadedServer

FIXTURES = Path(__file__).parent / "fixtures"
GITHUB = "https://api.github.com"
# The recordings asked for per_page=3 and no sort order: these parameters do not pick a
# different recording, `page` does (page=1 being the same as none).
LISTING_PARAMS = frozenset({"per_page", "state", "sort", "direction"})
# Framing headers of the recorded answer; aiohttp writes its own for the body it sends.
_HOP = frozenset({"content-length", "connection", "transfer-encoding", "content-encoding"})
_TEMPLATE = re.compile(r"\{now([+-]\d+)?\}")


def recordings(scenario: str, flavor: str = "normalized") -> list[dict[str, Any]]:
    """The exchanges of one octokit scenario (flavor: normalized or raw)."""
    path = FIXTURES / "octokit" / scenario / f"{flavor}-fixture.json"
    exchanges: list[dict[str, Any]] = orjson.loads(path.read_bytes())
    return exchanges


def recorded(scenario: str, method: str, path: str, flavor: str = "normalized") -> dict[str, Any]:
    """The one recorded exchange of `scenario` for method and path (with query)."""
    for exchange in recordings(scenario, flavor):
        if exchange["method"] == method.lower() and exchange["path"] == path:
            return exchange
    raise KeyError(f"{scenario} has no {method} {path}")


def extra(name: str) -> dict[str, Any]:
    """One of our own exchanges from github_extra.json."""
    exchanges: dict[str, Any] = orjson.loads((FIXTURES / "github_extra.json").read_bytes())
    return exchanges[name]


def _route(method: str, path_qs: str) -> tuple[str, str, frozenset[tuple[str, str]]]:
    parts = urlsplit(path_qs)
    query = {
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in LISTING_PARAMS and (k, v) != ("page", "1")
    }
    return method.upper(), parts.path, frozenset(query)


def _headers(exchange: Mapping[str, Any]) -> list[tuple[str, str]]:
    if "rawHeaders" in exchange:
        raw = exchange["rawHeaders"]
        return [(str(raw[i]), str(raw[i + 1])) for i in range(0, len(raw), 2)]
    return [(str(k), str(v)) for k, v in exchange.get("headers", {}).items()]


@dataclass
class Answer:
    """One exchange installed on the fake: what it answers and how many more times."""

    route: tuple[str, str, frozenset[tuple[str, str]]]
    exchange: dict[str, Any]
    times: int | None  # None: for ever


class FakeGitHub:
    """The fake API: `replay` recordings, `add` exchanges; the latest added answer wins."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.answers: list[Answer] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path_qs, headers
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = ThreadedServer(app)

    @property
    def api_url(self) -> str:
        """What `api_url:` is set to for sources polling this fake."""
        return self.server.url("").rstrip("/")

    def replay(
        self, scenario: str, flavor: str = "normalized", methods: tuple[str, ...] = ("get",)
    ) -> None:
        """Answer with every recorded exchange of `scenario` whose method is in `methods`."""
        for exchange in recordings(scenario, flavor):
            if exchange["method"] in methods:
                self.add(exchange)

    def add(
        self,
        exchange: Mapping[str, Any],
        *,
        path: str | None = None,
        response: Any = ...,
        headers: Mapping[str, str] | None = None,
        times: int | None = None,
    ) -> None:
        """Answer with `exchange`, optionally at another path, with another body or headers.

        A new body gets a new ETag (when the exchange has one), as it would on GitHub.
        """
        answer = dict(exchange)
        if path is not None:
            answer["path"] = path
        pairs = _headers(answer)
        if response is not ...:
            answer["response"] = response
            body = orjson.dumps(response)
            tag = 'W/"' + hashlib.sha1(body).hexdigest() + '"'
            pairs = [(k, tag if k.lower() == "etag" else v) for k, v in pairs]
        if headers:
            lowered = {k.lower() for k in headers}
            pairs = [(k, v) for k, v in pairs if k.lower() not in lowered] + list(headers.items())
        answer.pop("rawHeaders", None)
        answer["headers"] = pairs
        self.answers.insert(0, Answer(_route(answer["method"], answer["path"]), answer, times))

    def hits(self, path: str) -> list[dict[str, str]]:
        """Headers of the requests made to `path` (without query), oldest first."""
        return [h for _, p, h in self.requests if urlsplit(p).path == path]

    def queries(self, path: str) -> list[dict[str, str]]:
        """Query parameters of the requests made to `path`, oldest first."""
        return [
            dict(parse_qsl(urlsplit(p).query))
            for _, p, _ in self.requests
            if urlsplit(p).path == path
        ]

    def _find(self, method: str, path_qs: str) -> dict[str, Any] | None:
        route = _route(method, path_qs)
        for answer in self.answers:
            if answer.route == route:
                if answer.times is not None:
                    answer.times -= 1
                    if answer.times == 0:
                        self.answers.remove(answer)
                return answer.exchange
        # A moved repository: everything below the recorded path moves along with it.
        parts = urlsplit(path_qs)
        for answer in self.answers:
            moved_method, moved_path, _ = answer.route
            if (
                answer.exchange["status"] in (301, 302, 307, 308)
                and moved_method == route[0]
                and parts.path.startswith(moved_path + "/")
            ):
                moved = dict(answer.exchange)
                rest = parts.path[len(moved_path) :] + (f"?{parts.query}" if parts.query else "")
                moved["headers"] = [
                    (k, v + rest if k.lower() == "location" else v) for k, v in moved["headers"]
                ]
                return moved
        return None

    def _fill(self, text: str) -> str:
        def value(match: re.Match[str]) -> str:
            return str(int(self.now() + int(match.group(1) or 0)))

        return _TEMPLATE.sub(value, text.replace(GITHUB, self.api_url))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer from the newest matching exchange; 404 like GitHub when none matches."""
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        exchange = self._find(request.method, request.path_qs)
        if exchange is None:
            missing = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
            return web.json_response(missing, status=404)
        headers: list[tuple[str, str]] = [
            (k, self._fill(v)) for k, v in exchange["headers"] if k.lower() not in _HOP
        ]
        status = exchange["status"]
        etag = next((v for k, v in headers if k.lower() == "etag"), None)
        if status == 200 and etag is not None and request.headers.get("If-None-Match") == etag:
            kept = [(k, v) for k, v in headers if k.lower() != "content-type"]
            return web.Response(status=304, headers=kept)
        payload = exchange["response"]
        raw = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
        body = self._fill(raw.decode()).encode()
        response = web.Response(status=status, body=body)
        for k, v in headers:
            response.headers.add(k, v)
        return response
