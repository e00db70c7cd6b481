"""The one HTTP client of polling and delivering, and what it reads in answers' headers."""

from __future__ import annotations

from bridge.http.client import HttpClient, Response, host_key, parse_retry_after

__all__ = ["HttpClient", "Response", "host_key", "parse_retry_after"]
