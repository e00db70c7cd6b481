"""How HTTP failures read in one-line messages: client exceptions without aiohttp's internals,
and URLs without the secrets they may carry."""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bridge.errors import SourceError


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
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"broken response body ({one_line(exc)})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad response: {one_line(exc.message) or exc.status}"
    if isinstance(exc, ValueError):
        return f"invalid request: {one_line(exc)}"
    return one_line(exc) or type(exc).__name__


def one_line(value: object) -> str:
    """`value` as text on one line, its runs of whitespace made single spaces."""
    return " ".join(str(value).split())


def display(url: str) -> str:
    """A polled URL for messages: no user:password@, and no query (it may carry an API key)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc, query="…" if parts.query else ""))


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
