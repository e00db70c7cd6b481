"""Answers as the HTTP client hands them out (Response, Pages), and reading their bodies within
a byte budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType

import aiohttp

from bridge.errors import SourceError
from bridge.http.headers import parse_link_header, rate_limit_wait
from bridge.http.text import display

_NO_LINKS: Mapping[str, str] = MappingProxyType({})
ANSWER_BYTES = 64 * 1024  # a webhook receiver's answer is only kept for diagnostics
NO_BODY_STATUSES = frozenset({204, 304})


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
            status=self.status,
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


def has_plain_body(method: str, resp: aiohttp.ClientResponse) -> bool:
    return (
        method != "HEAD"
        and resp.status not in NO_BODY_STATUSES
        and "Content-Encoding" not in resp.headers
    )


def response_of(resp: aiohttp.ClientResponse, body: bytes, elapsed: float) -> Response:
    url = str(resp.url)
    headers = resp.headers
    # RFC 8288 lets a server split its links over several Link fields.
    links = parse_link_header(", ".join(headers.getall("Link")), url) if "Link" in headers else None
    return Response(resp.status, url, headers, body, links or _NO_LINKS, elapsed)


async def read_limited(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The body, or None as soon as it is over `limit` bytes (decompressed)."""
    chunks = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_answer(content: aiohttp.StreamReader) -> bytes:
    """Up to 64 KiB of a receiver's answer; a broken answer body does not undo its status."""
    chunks = []
    size = 0
    try:
        while size < ANSWER_BYTES and (chunk := await content.read(ANSWER_BYTES - size)):
            size += len(chunk)
            chunks.append(chunk)
    except aiohttp.ClientPayloadError:
        pass
    return b"".join(chunks)
