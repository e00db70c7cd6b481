"""Output for people at a terminal: aligned tables (their times: bridge/service/times.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from bridge.service.times import relative


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """An aligned plain-text table."""
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_instances(instances: Sequence[dict[str, Any]], now: float) -> None:
    """The live instances of `bridge status`: id, host, pid, since and last heartbeat."""
    rows = [
        {
            "instance": i["id"],
            "host": i["host"],
            "pid": i["pid"],
            "since": relative(i["since"], now),
            "heartbeat": relative(i["heartbeat"], now),
        }
        for i in instances
    ]
    print_table(rows, ["instance", "host", "pid", "since", "heartbeat"])
