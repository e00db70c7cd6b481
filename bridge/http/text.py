"""How HTTP failures read in one-line messages: client exceptions without aiohttp's internals,
and URLs without the secrets they may carry."""

from __future__ import annotations

import errno
import math
import re
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yarl

from bridge.errors import SourceError

# aiohttp's words for a body its decoder refused: "Can not decode content-encoding: gzip".
_UNDECODABLE = re.compile(r"can ?not decode content-encoding: ?([A-Za-z0-9_.-]+)", re.IGNORECASE)
# Content codings bridge asks for (aiohttp's Accept-Encoding without brotli or zstd installed).
_ASKED_CODINGS = frozenset({"gzip", "deflate"})
_DAY = 86400.0


def too_big(url: str, budget: int, max_bytes: int) -> SourceError:
    """The error of an answer, or of pages summed, over `max_bytes`."""
    if budget == max_bytes:
        return SourceError(f"response from {display(url)} is over {size(max_bytes)} (max_bytes)")
    return SourceError(
        f"pages up to {display(url)} are over {size(max_bytes)} in total (max_bytes)"
    )


def describe(exc: BaseException) -> str:
    """A one-line account of a client exception, without aiohttp's internals."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"too many redirects ({len(exc.history)})"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate error: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS error: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return f"cannot resolve host {exc.host}"
        if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
        return f"cannot connect to {exc.host}:{exc.port}: {os_error.strerror or os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return "not an http:// or https:// URL"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError) and (
        coding := _undecodable(exc)
    ):
        # aiohttp says "400, message: Can not decode ...": a status nobody sent.
        if coding in _ASKED_CODINGS:
            return f"answer claims {coding} encoding but is not {coding}"
        return f"answer has a {coding} content-encoding, which was not asked for"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"broken response body ({one_line(exc)})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad response: {one_line(exc.message) or exc.status}"
    if isinstance(exc, ValueError):
        return f"invalid request: {one_line(exc)}"
    return one_line(exc) or type(exc).__name__


def _undecodable(exc: aiohttp.ClientError) -> str | None:
    # The content coding of a body aiohttp could not decode, or None for any other failure.
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    match = _UNDECODABLE.search(one_line(text))
    if match is None:
        return None
    coding = match.group(1).lower()
    return "br" if coding == "brotli" else "zstd" if coding == "zstandard" else coding


def one_line(value: object) -> str:
    """`value` as text on one line, its runs of whitespace made single spaces."""
    return " ".join(str(value).split())


def display(url: str) -> str:
    """A polled URL for messages: no user:password@, and no query (it may carry an API key)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc, query="…" if parts.query else ""))


def scrub(text: str, url: str) -> str:
    """`text` with every copy of `url` (as given, and as aiohttp spells it) in display form."""
    if url not in text:
        try:
            spelled = str(yarl.URL(url))
        except ValueError:
            return text
        if spelled == url or spelled not in text:
            return text
        return text.replace(spelled, display(url))
    return text.replace(url, display(url))


def until(ts: float, now: float | None = None) -> str:
    """When a wait ends, for messages: the UTC time of day, with the date when over a day away."""
    now = time.time() if now is None else now
    try:
        moment = time.gmtime(ts)
    except (OverflowError, OSError, ValueError):
        return "a time too far away to print"
    clock = time.strftime("%H:%M:%S", moment)
    if math.isfinite(ts - now) and abs(ts - now) < _DAY:
        return f"{clock} UTC"
    return f"{time.strftime('%Y-%m-%d', moment)} {clock} UTC"


def origin(url: str) -> str:
    """A webhook URL for messages: scheme and host only, since chat webhook paths are secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def size(n: int) -> str:
    """A byte count as config authors write it (10 MB)."""
    # Binary multiples under the names config authors write (max_bytes: 10MB is 10 * 1024 * 1024).
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"
