"""The one HTTP client of polling and delivering, and what it reads in answers' headers."""

from __future__ import annotations

from bridge.http.client import MAX_HOST_WAIT, HttpClient, Response, host_key, parse_retry_after
from bridge.http.text import display, until

__all__ = [
    "MAX_HOST_WAIT",
    "HttpClient",
    "Response",
    "display",
    "host_key",
    "parse_retry_after",
    "until",
]
