"""The one HTTP client: sessions, conditional requests, Link pages, rate limits, our exceptions.

What the headers say is read by bridge/headers.py; its functions are offered here too, since
sources import only this module. How failures read in messages is bridge/httptext.py's.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType, TracebackType
from urllib.parse import urlsplit

import aiohttp
import yarl

import bridge
from bridge.errors import DeliveryError, SourceError
from bridge.http.gate import Gate
from bridge.http.headers import parse_link_header, rate_limit_wait
from bridge.http.headers import parse_retry_after as parse_retry_after  # for sources (see above)
from bridge.http.text import describe, display, origin, too_big

_NO_LINKS: Mapping[str, str] = MappingProxyType({})
_DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_ANSWER_BYTES = 64 * 1024  # a webhook receiver's answer is only kept for diagnostics
_NO_BODY_STATUSES = frozenset({204, 304})
# Parsed URLs kept: one per polled URL. Paging cursors can make URLs without end; past this many,
# new ones are parsed on each use instead.
_TARGETS_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Response:
    """A fully read HTTP response."""

    status: int
    url: str
    headers: Mapping[str, str]
    body: bytes
    links: Mapping[str, str]
    elapsed: float

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def check(self) -> Response:
        """Return self for a 2xx or 304; raise SourceError (with any rate-limit wait) otherwise."""
        if 200 <= self.status < 300 or self.status == 304:
            return self
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        status = f"{self.status} {reason}" if reason else str(self.status)
        raise SourceError(
            f"HTTP {status} from {display(self.url)}",
            retry_after=rate_limit_wait(self.status, self.headers),
        )


@dataclass(frozen=True, slots=True)
class Pages:
    """The outcome of a conditional, possibly paginated fetch."""

    not_modified: bool
    bodies: list[bytes]
    complete: bool
    etag: str | None
    last_modified: str | None
    first: Response


def host_key(url: str) -> str:
    """What per-host limits and rate-limit blocks go by: the URL's `host:port` (its netloc)."""
    return urlsplit(url).netloc


class HttpClient:
    """One aiohttp session for polling (per-host concurrency bound) and one for delivering."""

    def __init__(self, *, per_host: int = 4, user_agent: str = f"bridge/{bridge.__version__}"):
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self._per_host = per_host
        self._user_agent = user_agent
        self._poll: aiohttp.ClientSession | None = None
        self._deliver: aiohttp.ClientSession | None = None
        self._closed = False
        self._blocked: dict[str, float] = {}
        self._new_blocks: dict[str, float] = {}  # not yet written to the state file
        self._slots: dict[str, Gate] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._targets: dict[str, tuple[yarl.URL | str, str]] = {}

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close both sessions; later requests fail. Safe to call more than once."""
        self._closed = True
        sessions, self._poll, self._deliver = (self._poll, self._deliver), None, None
        for session in sessions:
            if session is not None:
                await session.close()

    def blocked_until(self, host: str) -> float | None:
        """The time.time() until which `host` (netloc) is off-limits, or None."""
        until = self._blocked.get(host)
        if until is None:
            return None
        if until > time.time():
            return until
        del self._blocked[host]
        return None

    def block(self, host: str, until: float, *, new: bool = True) -> None:
        """Keep off `host` (netloc) until the time.time() `until`; a later block set before wins.

        A source with its own limits (GitHub's, per token) may keep a wait here under a key that
        is no netloc: no request checks it, but it is written and read back like a host's.

        A new block is also kept for `take_new_blocks` (the engine writes it to the state file,
        so that the next `bridge once` keeps off too); `new=False` restores one read from there.
        """
        if until > self._blocked.get(host, 0.0):
            self._blocked[host] = until
            if new:
                self._new_blocks[host] = until

    def take_new_blocks(self) -> dict[str, float]:
        """The blocks set since the last call, by host."""
        blocks, self._new_blocks = self._new_blocks, {}
        return blocks

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        auth: tuple[str, str] | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        timeout: float = 10.0,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        follow_redirects: bool = True,
        block_host: bool = True,
    ) -> Response:
        """Send one polling request and read the whole body; never raises for an HTTP status.

        `block_host=False` is for callers that keep their own rate-limit accounting (GitHub's
        limits are per token): a limited answer then does not close the host to everyone.
        """
        sent = _with_validators(_with_auth(headers, auth), etag, last_modified)
        return await self._send(
            method,
            url,
            sent,
            params,
            data,
            timeout,
            max_bytes,
            max_bytes,
            follow_redirects,
            block_host,
        )

    async def fetch_pages(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        auth: tuple[str, str] | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        timeout: float = 10.0,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        max_pages: int = 1,
        follow_redirects: bool = True,
    ) -> Pages:
        """Fetch conditionally, then follow rel="next" links up to `max_pages` pages in total."""
        # request()'s work, inline: one coroutine less on every poll's path.
        sent = _with_validators(_with_auth(headers, auth), etag, last_modified)
        first = await self._send(
            method, url, sent, params, data, timeout, max_bytes, max_bytes, follow_redirects
        )
        if first.status == 304:
            return Pages(
                not_modified=True,
                bodies=[],
                complete=True,
                etag=first.headers.get("ETag") or etag,
                last_modified=first.headers.get("Last-Modified") or last_modified,
                first=first,
            )
        first.check()
        bodies = [first.body]
        budget = max_bytes - len(first.body)
        page = first
        plain = _with_auth(headers, auth)
        origin = urlsplit(url)[:2] if "next" in first.links else None  # split once, if paging
        while (next_url := page.links.get("next")) is not None and len(bodies) < max_pages:
            # Credentials go only where the caller sent them, as aiohttp does on redirects.
            sent = plain if urlsplit(next_url)[:2] == origin else None
            page = await self._send(
                "GET", next_url, sent, None, None, timeout, budget, max_bytes, follow_redirects
            )
            page.check()
            bodies.append(page.body)
            budget -= len(page.body)
        return Pages(
            not_modified=False,
            bodies=bodies,
            complete="next" not in page.links,
            etag=first.headers.get("ETag"),
            last_modified=first.headers.get("Last-Modified"),
            first=first,
        )

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> Response:
        """Deliver one webhook: no redirects followed, at most 64 KiB of the answer kept."""
        if self._closed:
            raise DeliveryError(f"POST {origin(url)}: the HTTP client is closed")
        session = self._deliver or self._open_deliver()
        started = time.perf_counter()
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                timeout=self._timeout(timeout),
                allow_redirects=False,
            ) as resp:
                answer = await _read_answer(resp.content)
                return _response(resp, answer, time.perf_counter() - started)
        except TimeoutError as exc:
            raise DeliveryError(f"POST {origin(url)}: timed out after {timeout:g}s") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise DeliveryError(f"POST {origin(url)}: {describe(exc)}") from exc

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        data: bytes | str | None,
        timeout: float,
        budget: int,
        max_bytes: int,
        follow_redirects: bool,
        block_host: bool = True,
    ) -> Response:
        if self._closed:
            raise SourceError(f"{method} {display(url)}: the HTTP client is closed")
        target, host = self._target(url)
        if (until := self.blocked_until(host)) is not None:
            wait = until - time.time()
            clock = time.strftime("%H:%M:%S", time.gmtime(until))
            raise SourceError(
                f"rate limited by {host}: waiting until {clock} UTC ({wait:.0f}s from now)",
                retry_after=max(0.0, wait),
            )
        session = self._poll or self._open_poll()
        slot = self._slots.get(host) or self._slots.setdefault(host, Gate(self._per_host))
        # Our own per-host slot, taken before the clock starts: waiting behind other polls of a
        # busy host is not the server being slow, and must not count against this one's timeout.
        async with slot:
            started = time.perf_counter()
            try:
                async with session.request(
                    method,
                    target,
                    params=params or None,
                    data=data,
                    headers=headers,
                    timeout=self._timeout(timeout),
                    allow_redirects=follow_redirects,
                ) as resp:
                    # Content-Length spares reading a body we would refuse, unless it is the
                    # compressed length or describes a body that HEAD, 204 and 304 never have.
                    length = resp.content_length
                    if length is not None and length > budget and _has_plain_body(method, resp):
                        raise too_big(url, budget, max_bytes)
                    body = await _read_limited(resp.content, budget)
                    if body is None:
                        raise too_big(url, budget, max_bytes)
                    response = _response(resp, body, time.perf_counter() - started)
            except TimeoutError as exc:
                raise SourceError(f"{method} {display(url)}: timed out after {timeout:g}s") from exc
            except (aiohttp.ClientError, ValueError) as exc:
                raise SourceError(f"{method} {display(url)}: {describe(exc)}") from exc
        now = time.time()
        pause = rate_limit_wait(response.status, response.headers, now) if block_host else None
        if pause is not None:
            self.block(host, now + pause)
        return response

    def _target(self, url: str) -> tuple[yarl.URL | str, str]:
        # (the URL as aiohttp takes it, its host key): each URL is parsed once, since a steady
        # daemon polls the same URLs all day.
        hit = self._targets.get(url)
        if hit is None:
            try:
                hit = (yarl.URL(url), host_key(url))
            except ValueError:
                return url, host_key(url)  # aiohttp then names the problem, as before
            if len(self._targets) < _TARGETS_KEPT:
                self._targets[url] = hit
        return hit

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
        return timeout

    def _open_poll(self) -> aiohttp.ClientSession:
        # aiohttp binds a session to the running loop, so sessions are made on first use.
        # The connector's per-host limit backs our slots up when a redirect changes the host.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host)
        self._poll = self._session(connector)
        return self._poll

    def _open_deliver(self) -> aiohttp.ClientSession:
        # Separate from polling so a slow receiver never holds a connection a poll needs;
        # delivery concurrency is the delivery workers' business.
        self._deliver = self._session(aiohttp.TCPConnector(limit=0))
        return self._deliver

    def _session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self._user_agent},
            # No cookies: sources sharing a host must not see each other's sessions.
            cookie_jar=aiohttp.DummyCookieJar(),
        )


def _with_auth(
    headers: Mapping[str, str] | None, auth: tuple[str, str] | None
) -> Mapping[str, str] | None:
    if auth is None:
        return headers
    merged = dict(headers) if headers else {}
    # Built here rather than with aiohttp's auth=, which 3.14 deprecates with a warning.
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
    merged["Authorization"] = f"Basic {token}"
    return merged


def _with_validators(
    headers: Mapping[str, str] | None, etag: str | None, last_modified: str | None
) -> Mapping[str, str] | None:
    if etag is None and last_modified is None:
        return headers
    merged = dict(headers) if headers else {}
    if etag is not None:
        merged["If-None-Match"] = etag
    if last_modified is not None:
        merged["If-Modified-Since"] = last_modified
    return merged


def _has_plain_body(method: str, resp: aiohttp.ClientResponse) -> bool:
    return (
        method != "HEAD"
        and resp.status not in _NO_BODY_STATUSES
        and "Content-Encoding" not in resp.headers
    )


def _response(resp: aiohttp.ClientResponse, body: bytes, elapsed: float) -> Response:
    url = str(resp.url)
    headers = resp.headers
    # RFC 8288 lets a server split its links over several Link fields.
    links = parse_link_header(", ".join(headers.getall("Link")), url) if "Link" in headers else None
    return Response(resp.status, url, headers, body, links or _NO_LINKS, elapsed)


async def _read_limited(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The body, or None as soon as it is over `limit` bytes (decompressed)."""
    chunks = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_answer(content: aiohttp.StreamReader) -> bytes:
    """Up to 64 KiB of a receiver's answer; a broken answer body does not undo its status."""
    chunks = []
    size = 0
    try:
        while size < _ANSWER_BYTES and (chunk := await content.read(_ANSWER_BYTES - size)):
            size += len(chunk)
            chunks.append(chunk)
    except aiohttp.ClientPayloadError:
        pass
    return b"".join(chunks)
