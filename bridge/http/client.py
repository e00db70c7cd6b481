"""The one HTTP client: sessions, conditional requests, Link pages, rate limits, our exceptions.

What the headers say is read by headers.py; its functions are offered here too, since sources
import only this module. How failures read in messages is text.py's; redirects are followed by
hand (outgoing.py), so that no header of the caller's follows one to another origin.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
import yarl

import bridge
from bridge.errors import DeliveryError, SourceError
from bridge.http.answers import (
    Pages,
    Response,
    has_plain_body,
    read_answer,
    read_limited,
    response_of,
)
from bridge.http.gate import Gate
from bridge.http.headers import MAX_HOST_WAIT as MAX_HOST_WAIT  # for sources (see above)
from bridge.http.headers import parse_retry_after as parse_retry_after  # for sources (see above)
from bridge.http.headers import rate_limit_wait
from bridge.http.outgoing import (
    MAX_REDIRECTS,
    REDIRECTS,
    RedirectError,
    kept_headers,
    next_hop,
    origin_of,
    url_login,
    with_auth,
    with_login,
    with_validators,
)
from bridge.http.text import describe, display, origin, scrub, too_big, until

__all__ = ["HttpClient", "Pages", "Response", "host_key", "parse_retry_after"]

_DEFAULT_MAX_BYTES = 10 * 1024 * 1024
# Parsed URLs kept: one per polled URL. Paging cursors can make URLs without end; past this many,
# new ones are parsed on each use instead.
_TARGETS_KEPT = 100_000


# An http(s) URL whose netloc is a plain host name or IPv4 address and port: nearly every polled
# URL, whose host key is read off without urlsplit (the whole of it, for such a URL).
_PLAIN_NETLOC = re.compile(r"https?://([A-Za-z0-9.-]*[A-Za-z0-9](?::[0-9]*)?)(?:[/?#]|\Z)")


def host_key(url: str) -> str:
    """What per-host limits and rate-limit blocks go by: the URL's `host:port` (its netloc
    without any user:password@, which must not reach messages or the state file)."""
    plain = _PLAIN_NETLOC.match(url)
    if plain is not None:
        return plain[1]
    return urlsplit(url).netloc.rpartition("@")[2]


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
        self._targets: dict[str, tuple[yarl.URL | str, str, str | None]] = {}

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
        """Keep off `host` (netloc) until the time.time() `until`, at most MAX_HOST_WAIT from
        now (a block read back from an older state file too); a later block set before wins.

        A source with its own limits (GitHub's, per token) may keep a wait here under a key that
        is no netloc: no request checks it, but it is written and read back like a host's.

        A new block is also kept for `take_new_blocks` (the engine writes it to the state file,
        so that the next `bridge once` keeps off too); `new=False` restores one read from there.
        """
        until = min(until, time.time() + MAX_HOST_WAIT)  # NaN compares false: never kept
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
        sent = with_validators(with_auth(headers, auth), etag, last_modified)
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
        sent = with_validators(with_auth(headers, auth), etag, last_modified)
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
        plain: Mapping[str, str] | None = None
        home = None
        if "next" in first.links:  # worked out once, if paging
            target, _, login = self._target(url)
            home = origin_of(target) if isinstance(target, yarl.URL) else None
            plain = with_login(with_auth(headers, auth), login)
        while (next_url := page.links.get("next")) is not None and len(bodies) < max_pages:
            # Credentials go only where the caller sent them, as on redirects.
            next_target = self._target(next_url)[0]
            same = isinstance(next_target, yarl.URL) and origin_of(next_target) == home
            sent = plain if same else None
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
                answer = await read_answer(resp.content)
                return response_of(resp, answer, time.perf_counter() - started)
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
        """The answer to a request, redirects followed, within the host's slot.

        `url` is the URL as the caller gave it (for messages), `budget` the bytes this answer
        may have (of `max_bytes` in all, for messages), and `block_host` whether a rate-limited
        answer blocks the host that gave it.
        """
        if self._closed:
            raise SourceError(f"{method} {display(url)}: the HTTP client is closed")
        target, host, login = self._target(url)
        if self._blocked:  # nearly always empty
            self._check_block(host)
        if login is not None:
            if headers and any(name.lower() == "authorization" for name in headers):
                raise SourceError(
                    f"{method} {display(url)}: credentials in the URL and an Authorization "
                    "header (auth:) cannot be combined"
                )
            headers = with_login(headers, login)
        session = self._poll or self._open_poll()
        slot = self._slots.get(host) or self._slots.setdefault(host, Gate(self._per_host))
        # Our own per-host slot, taken before the clock starts: waiting behind other polls of a
        # busy host is not the server being slow, and must not count against this one's timeout.
        async with slot:
            started = time.perf_counter()
            client_timeout = self._timeout(timeout)
            first, sent = target, method  # messages name the request as the caller made it
            home: tuple[str, str | None, int | None] | None = None
            hops = 0
            try:
                while True:
                    async with session.request(
                        sent,
                        target,
                        params=params or None,
                        data=data,
                        headers=headers,
                        timeout=client_timeout,
                        allow_redirects=False,
                    ) as resp:
                        status = resp.status
                        location = resp.headers.get("Location") if status in REDIRECTS else None
                        if location is None or not follow_redirects:
                            # Content-Length spares reading a body we would refuse, unless it is
                            # the compressed length or describes a body that HEAD, 204 and 304
                            # never have.
                            length = resp.content_length
                            if length is not None and length > budget:
                                if has_plain_body(sent, resp):
                                    raise too_big(url, budget, max_bytes)
                            body = await read_limited(resp.content, budget)
                            if body is None:
                                raise too_big(url, budget, max_bytes)
                            response = response_of(resp, body, time.perf_counter() - started)
                            break
                        here = resp.url
                    hops += 1
                    if hops >= MAX_REDIRECTS:
                        raise RedirectError(f"too many redirects ({hops})")
                    sent, target, data = next_hop(sent, here, data, status, location)
                    params = None  # they are in the URL that was redirected
                    if hops == 1 and isinstance(first, yarl.URL):
                        home = origin_of(first)
                    if headers is not None and origin_of(target) != home:
                        # Gone for good: a later hop back to the first origin gets none either.
                        headers = kept_headers(headers, data)
                    host = host_key(str(target))
                    self._check_block(host)
                    left = timeout - (time.perf_counter() - started)
                    if left <= 0:
                        raise TimeoutError
                    client_timeout = aiohttp.ClientTimeout(total=left)
            except TimeoutError as exc:
                raise SourceError(f"{method} {display(url)}: timed out after {timeout:g}s") from exc
            except RedirectError as exc:
                raise SourceError(f"{method} {display(url)}: {exc}") from exc
            except (aiohttp.ClientError, ValueError) as exc:
                detail = scrub(describe(exc), url)
                raise SourceError(f"{method} {display(url)}: {detail}") from exc
        now = time.time()
        pause = rate_limit_wait(response.status, response.headers, now) if block_host else None
        if pause is not None:
            self.block(host, now + pause)  # the host that asked, wherever a redirect led
        return response

    def _check_block(self, host: str) -> None:
        """Raise SourceError while `host` is rate limited."""
        if (until_ts := self.blocked_until(host)) is not None:
            wait = until_ts - time.time()
            raise SourceError(
                f"rate limited by {host}: waiting until {until(until_ts)} ({wait:.0f}s from now)",
                retry_after=max(0.0, wait),
            )

    def _target(self, url: str) -> tuple[yarl.URL | str, str, str | None]:
        # (the URL as aiohttp takes it, without user:password@; its host key; those credentials
        # as an Authorization value): each URL is parsed once, since a steady daemon polls the
        # same URLs all day.
        hit = self._targets.get(url)
        if hit is None:
            try:
                parsed = yarl.URL(url)
            except ValueError:
                return url, host_key(url), None  # aiohttp then names the problem, as before
            target, login = url_login(parsed) if "@" in url else (parsed, None)
            hit = (target, host_key(url), login)
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
