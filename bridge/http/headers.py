"""What an HTTP answer's headers ask of us: Retry-After, Link pages, rate limits.

Functions of header values alone; bridge/http/client.py applies them (sources import them from
there). Whatever a header says, they return None or a finite, non-negative number of seconds.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

_DEFAULT_RATE_WAIT = 60.0
# The longest a polled host may keep us off (README: Rate limits). A host's Retry-After of
# 999999999 (31 years) or 1e300 must not stop a source for good: after an hour it is asked again,
# and a host still limiting then answers 429 again, which costs one request an hour.
MAX_HOST_WAIT = 3600.0
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
        return seconds if 0 <= seconds < math.inf else None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000" dates come back naive; HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        at = when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None  # not a date, or one (year 0, year 99999) that no clock holds
    wait = at - (time.time() if now is None else now)
    return max(0.0, wait) if math.isfinite(wait) else None


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
    """Seconds to keep off the host after this response (at most MAX_HOST_WAIT), or None when
    it is not rate limited."""
    # Checked first: this runs on every response and almost every status is none of these.
    if status != 429 and status != 403 and status != 503:
        return None
    wait = _asked_wait(status, headers, now)
    return None if wait is None else min(wait, MAX_HOST_WAIT)


def _asked_wait(status: int, headers: Mapping[str, str], now: float | None) -> float | None:
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
        if not math.isfinite(value):
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
