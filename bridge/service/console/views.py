"""What the console and /api show of sources, events and deliveries: plain dicts, no secrets.

Both the JSON answers and the pages are made from these, so the two never disagree. URLs are
shown in their display form (no user:password@, no query: it may carry an API key); webhook
URLs by origin only, since a chat webhook's path is its secret.
"""

from __future__ import annotations

from typing import Any

import orjson

from bridge.config import Config
from bridge.config.units import format_duration
from bridge.http.text import display, origin
from bridge.model import SourceRow, SourceSpec


def schedule(spec: SourceSpec) -> str:
    """`every 5m` or `cron */5 * * * *`."""
    if spec.cron is not None:
        return f"cron {spec.cron}"
    return f"every {format_duration(spec.every or 0)}"


def source_view(spec: SourceSpec | None, row: SourceRow) -> dict[str, Any]:
    """A source as the API answers it: its config (without secrets) and its state. With no
    spec (a source only another instance's config has) its config is unknown here: null."""
    url = spec.options.get("url") if spec is not None else None
    return {
        "name": row.name,
        "configured": spec is not None,
        "kind": spec.kind if spec is not None else None,
        "schedule": schedule(spec) if spec is not None else None,
        "webhooks": list(spec.webhooks) if spec is not None else [],
        "url": display(url) if isinstance(url, str) else None,
        "last_poll_at": row.last_poll_at,
        "last_result": row.last_result,
        "last_change_at": row.last_change_at,
        "next_poll_at": row.next_poll_at,
        "failures": row.failures,
        "failing_since": row.failing_since,
        "last_error": row.last_error,
        "failing": row.failures > 0,
    }


def webhook_views(config: Config, counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Each webhook with its queue counts; one no longer configured while it has any left."""
    views = [
        {"name": name, "configured": True, "origin": _origin(spec.url), **counts[name]}
        for name, spec in config.webhooks.items()
    ]
    views += [
        {"name": name, "configured": False, "origin": None, **n}
        for name, n in sorted(counts.items())
        if name not in config.webhooks and (n["pending"] or n["dead"])
    ]
    return views


def _origin(url: str) -> str:
    return "stdout" if url == "-" else origin(url)


def changes(event: dict[str, Any]) -> list[dict[str, Any]]:
    """An event's JSON Patch operations, each with the value before and after, for reading."""
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("changes"), list):
        return []
    before = data.get("before")
    rows = []
    for op in data["changes"]:
        if not isinstance(op, dict):
            continue
        path = str(op.get("path", ""))
        kind = op.get("op")
        rows.append(
            {
                "op": kind,
                "path": path or "/",
                "before": _show(pointer(before, path)) if kind in ("replace", "remove") else "",
                "after": _show(op.get("value")) if kind in ("add", "replace", "test") else "",
                "from": op.get("from"),
            }
        )
    return rows


_MISSING = object()


def pointer(doc: Any, path: str) -> Any:
    """The value at an RFC 6901 JSON pointer in `doc`, or a marker when it is not there."""
    if path == "":
        return doc
    node = doc
    for raw in path.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _show(value: Any) -> str:
    if value is _MISSING:
        return "?"
    return pretty(value, indent=False)


def pretty(value: Any, *, indent: bool = True) -> str:
    """A value as JSON text for a page (indented, or on one line)."""
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS).decode()
