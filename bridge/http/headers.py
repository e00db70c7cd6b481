"""What an HTTP answer's headers ask of us: Retry-After, Link pages, rate limits.

Functions of header values alone; bridge/http.py applies them (sources import them from there).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

_DEFAULT_RATE_WAIT = 60.0
# Below this, an x-ratelimit-reset is a delta in seconds (some APIs), not a unix time (GitHub).
_EPOCH_FLOOR = 1_000_000_000

_LINK_VALUE = re.compile(
    r'<([^>]*)>((?:\s*;\s*[^;,=\s]+(?:\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,]*))?)*)'
)
_LINK_PARAM = re.compile(r';\s*([^;,=\s]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*))?')
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # float() also takes "nan", "inf" and "-5", none of which is a delay a server can mean
        return seconds if 0 <= seconds < float("inf") else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates come back naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_link_header(value: str | None, base_url: str) -> dict[str, str]:
    """RFC 8288 Link header to {rel: absolute URL}; the first link of each rel wins."""
    links: dict[str, str] = {}
    if not value:
        return links
    for match in _LINK_VALUE.finditer(value):
        target, params = match.groups()
        for param in _LINK_PARAM.finditer(params):
            if param.group(1).lower() != "rel":
                continue
            rels = param.group(2) or ""
            if rels.startswith('"'):
                rels = _QUOTED_PAIR.sub(r"\1", rels[1:-1])
            url = urljoin(base_url, target.strip())
            for rel in rels.lower().split():
                links.setdefault(rel, url)
            break  # RFC 8288: a repeated rel parameter is ignored
    return links


def rate_limit_wait(
    status: int, headers: Mapping[str, str], now: float | None = None
) -> float | None:
    """Seconds to keep off the host after this response, or None when it is not rate limited."""
    # Checked first: this runs on every response and almost every status is none of these.
    if status != 429 and status != 403 and status != 503:
        return None
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now)
    if status == 503:
        return retry_after
    if retry_after is not None:
        # GitHub's secondary rate limits answer 403 with Retry-After and a non-zero remaining
        return retry_after
    if status == 403 and _header(headers, "X-RateLimit-Remaining") != "0":
        return None
    reset = _header(headers, "X-RateLimit-Reset")
    if reset:
        try:
            value = float(reset)
        except ValueError:
            value = -1.0
        if value >= _EPOCH_FLOOR:
            return max(0.0, value - (time.time() if now is None else now))
        if value >= 0:
            return value
    return _DEFAULT_RATE_WAIT


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Callers may hand in a plain dict as well as aiohttp's case-insensitive headers.
    value = headers.get(name)
    return value if value is not None else headers.get(name.lower())
