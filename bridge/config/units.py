"""Config value syntaxes: durations, sizes, jitter, listen addresses, secrets, URLs, cron."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `every: yes` is a mistake, not one second
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_duration(value: Any) -> float:
    """Seconds from "500ms", "30s", "5m", "1h", "1d" or a number of seconds; ValueError if bad."""
    hint = "expected e.g. 500ms, 30s, 5m, 1h, 1d or a number of seconds"
    try:
        if _is_number(value):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
            seconds = float(match[1]) * _DURATION_UNITS[(match[2] or "s").lower()]
        else:
            raise ValueError(f"invalid duration {short(value)} ({hint})")
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {short(value)} (must be a finite number >= 0)")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from "100B", "512KB", "10MB", "1GB" (KB = 1024) or an int; ValueError if bad."""
    hint = "expected e.g. 512KB, 10MB, 1GB or a number of bytes"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        scaled = float(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]
        if not math.isfinite(scaled):
            raise ValueError(f"invalid size {short(value)} (too large)")
        size = int(scaled)
    else:
        raise ValueError(f"invalid size {short(value)} ({hint})")
    if size < 0:
        raise ValueError(f"invalid size {short(value)} (must be >= 0)")
    return size


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: 300 -> "5m", 0.5 -> "500ms", 90 -> "90s"."""
    seconds = float(seconds)
    if seconds == 0:
        return "0s"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and float(seconds / factor).is_integer():
            return f"{int(seconds // factor)}{unit}"
    millis = seconds * 1000
    if millis.is_integer():
        return f"{int(millis)}ms"
    return f"{seconds:g}s"


def short(value: Any) -> str:
    """A value as an error message may show it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_jitter(value: Any) -> tuple[str, float]:
    """("%", fraction) from "10%", or ("s", seconds) from a duration; ValueError if bad."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"invalid jitter {short(value)} (expected e.g. 10% or 30s)") from None
        if not 0 <= percent <= 100:
            raise ValueError("jitter must be between 0% and 100%")
        return ("%", percent / 100)
    return ("s", parse_duration(value))


class Rate(NamedTuple):
    """A webhook's `rate:`: at most `requests` requests started in any `per` seconds."""

    requests: int
    per: float  # 1.0 or 60.0

    def __str__(self) -> str:
        return f"{self.requests}/{'s' if self.per == 1.0 else 'm'}"

    @property
    def per_second(self) -> float:
        """The sustained rate in requests per second."""
        return self.requests / self.per


_RATE_RE = re.compile(r"^\s*(\d{1,9})\s*/\s*(s|m)\s*$")


def parse_rate(value: Any) -> Rate:
    """`10/s` or `600/m`: a count of at least 1 per second or per minute."""
    match = _RATE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"must be a count per second or minute such as 10/s or 600/m, not {short(value)}"
        )
    count = int(match[1])
    if count < 1:
        raise ValueError("must allow at least 1 request")
    return Rate(count, 1.0 if match[2] == "s" else 60.0)


def parse_listen(value: Any) -> tuple[str, int]:
    """(host, port) from "HOST:PORT" ("[::1]:9464" for IPv6) or a bare port on 127.0.0.1."""
    hint = "must be HOST:PORT, e.g. 127.0.0.1:9464"
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = "127.0.0.1", str(value)
    elif isinstance(value, str) and ":" in value:
        host, _, port_text = value.strip().rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    else:
        raise ValueError(hint)
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(hint)
    return (host, int(port_text))


def check_url(value: Any, *, allow_dash: bool = False) -> str:
    """The value if it is an http(s) URL (or "-" when allowed); ValueError never echoing it."""
    if allow_dash and value == "-":
        return "-"
    hint = "must be an http(s) URL" + (' or "-"' if allow_dash else "")
    if not isinstance(value, str):
        raise ValueError(hint)
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        raise ValueError(hint) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(hint)  # the URL itself may hold a token, so it is not repeated
    return value.strip()


def parse_secret(value: Any) -> str:
    """A webhook secret `whsec_<base64 of at least 16 bytes>`; ValueError never echoing it."""
    if not isinstance(value, str):
        raise ValueError("must be a string whsec_<base64>")
    if not value.startswith("whsec_"):
        raise ValueError("must start with whsec_ followed by base64")
    encoded = value[len("whsec_") :]
    try:
        # tolerate dropped padding: people paste secrets from web pages
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 after whsec_") from None
    if len(key) < 16:
        raise ValueError(f"decodes to {len(key)} bytes; at least 16 are needed")
    return value


def check_templates(value: Any, path: tuple[str | int, ...] = ()) -> None:
    """Parse every string leaf as a sandboxed Jinja2 template; ValueError(path, reason) if bad."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment

    if isinstance(value, str):
        try:
            SandboxedEnvironment().parse(value)
        except TemplateSyntaxError as exc:
            raise ValueError(path, f"invalid template: {exc.message}") from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_templates(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_templates(item, (*path, i))


# --- crontab -----------------------------------------------------------------------------------

_CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_CRON_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # crontab numbering: 0 = Sunday
_APS_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]  # APScheduler 3.x: 0 = Monday
# (field name, lowest, highest, names by number offset from `lowest`)
_CRON_FIELDS: list[tuple[str, int, int, list[str]]] = [
    ("minute", 0, 59, []),
    ("hour", 0, 23, []),
    ("day", 1, 31, []),
    ("month", 1, 12, _MONTHS),
    ("day_of_week", 0, 7, _CRON_DAYS),
]
_ITEM_RE = re.compile(r"^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(\d+))?$")


def _cron_number(text: str, name: str, low: int, high: int, names: list[str]) -> int:
    if text in names:
        return names.index(text) + low
    if not text.isdigit():
        raise ValueError(f"cron {name} field: {text!r} is not a number")
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"cron {name} field: {number} is out of range {low}-{high}")
    return number


def _cron_field(text: str, name: str, low: int, high: int, names: list[str]) -> set[int]:
    """The set of values one crontab field selects (standard syntax: *, a, a-b, steps, lists)."""
    values: set[int] = set()
    for item in text.lower().split(","):
        match = _ITEM_RE.match(item)
        if not match:
            raise ValueError(f"cron {name} field: cannot parse {item!r}")
        span, step_text = match[1], match[2]
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"cron {name} field: step must be at least 1")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            start, end = span.split("-")
            first = _cron_number(start, name, low, high, names)
            last = _cron_number(end, name, low, high, names)
            if name == "day_of_week" and last == 0:
                last = 7  # "sat-sun": Sunday closes a range as 7
            if first > last:
                raise ValueError(f"cron {name} field: range {span!r} runs backwards")
        else:
            first = _cron_number(span, name, low, high, names)
            # crontab's "a/n" means "from a to the end, every n"
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return values


def cron_to_apscheduler(expr: str) -> dict[str, str]:
    """CronTrigger kwargs (minute, hour, day, month, day_of_week) from a crontab expression.

    Each field is expanded to an explicit list so APScheduler sees exactly crontab's meaning:
    its day-of-week numbers start at Monday, crontab's at Sunday (0 or 7), so days become names.
    """
    text = _CRON_MACROS.get(expr.strip().lower(), expr) if isinstance(expr, str) else expr
    if not isinstance(text, str):
        raise ValueError("cron must be a string of 5 fields or a macro such as @daily")
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron needs 5 fields (minute hour day month day-of-week), got {len(fields)}"
        )
    kwargs: dict[str, str] = {}
    for field_text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        values = _cron_field(field_text, name, low, high, names)
        if name == "day_of_week":
            days = {v % 7 for v in values}  # 7 is Sunday again
            if len(days) == 7:
                kwargs[name] = "*"
            else:
                kwargs[name] = ",".join(d for d in _APS_DAYS if _CRON_DAYS.index(d) in days)
        elif values == set(range(low, high + 1)):
            kwargs[name] = "*"
        else:
            kwargs[name] = ",".join(str(v) for v in sorted(values))
    _check_with_apscheduler(kwargs)
    return kwargs


def cron_schedules(expr: str) -> list[dict[str, str]]:
    """The CronTrigger kwargs whose union is a crontab line: one, or two when both day fields
    are restricted.

    crontab fires when EITHER restricted day field matches (a field starting with `*` counts
    as unrestricted, as in Vixie cron), and one CronTrigger ANDs its fields: the scheduler
    takes the earlier fire time of a trigger with the day-of-month and one with the day-of-week.
    """
    kwargs = cron_to_apscheduler(expr)
    text = _CRON_MACROS.get(expr.strip().lower(), expr)
    fields = text.split()
    if fields[2].startswith("*") or fields[4].startswith("*"):
        return [kwargs]
    return [{**kwargs, "day_of_week": "*"}, {**kwargs, "day": "*"}]


def parse_timezone(value: str) -> str:
    """A `tz:` value: an IANA zone name zoneinfo knows, such as Europe/Berlin."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (an IANA name such as Europe/Berlin or UTC)"
        ) from None
    return value


def _check_with_apscheduler(kwargs: dict[str, str]) -> None:
    # imported here: the scheduler module owns APScheduler; this is only a validation guard
    from datetime import UTC

    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger(timezone=UTC, **kwargs)
    except ValueError as exc:
        raise ValueError(f"cron not accepted by the scheduler: {exc}") from exc
