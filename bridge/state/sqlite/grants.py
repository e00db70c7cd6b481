"""Poll leases on one state file, kept as grants: the sources leased at one wake-up, in one row.

A grant is a row of poll_grants (token, owner, until, names), `names` the JSON list of the
sources it still holds. A source is free unless a live grant holds it: one whose `until` has not
passed and whose owner's process is alive. The owner names a process (`host:pid:random`), and
every process on a SQLite file runs on the file's machine, so the grants of one killed with -9
are free at once rather than when they run out. A poll's commit ends its lease: its source
leaves the grant (the row goes with its last source); and the commit is written only while the
grant still holds it, so a poll that outlived its lease, its source taken since, is fenced out.

A row per wake-up rather than one per source: a wake-up's leases are then taken in one insert
and ended in one update per commit, where a row each doubled the writes of a steady poll.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence

import orjson


def take(
    conn: sqlite3.Connection,
    owner: str,
    token: int,
    names: Iterable[str],
    now: float,
    until: float,
    gone: Callable[[str], bool],
) -> list[str]:
    """Grant `owner` the sources of `names` that no live grant holds, under `token`, until
    `until`; returns them, in order. Inside the caller's write transaction."""
    held: set[str] = set()
    freed: list[tuple[int, list[str]]] = []  # grants run out, or of a process that is gone
    for g_token, g_owner, g_until, g_names in conn.execute(
        "SELECT token, owner, until, names FROM poll_grants"
    ):
        listed = orjson.loads(g_names)
        if g_until >= now and (g_owner == owner or not gone(g_owner)):
            held.update(listed)
        else:
            freed.append((g_token, listed))
    granted = [name for name in dict.fromkeys(names) if name not in held]
    if not granted:
        return granted
    taking = set(granted)
    for g_token, listed in freed:
        if not taking.isdisjoint(listed):
            _keep(conn, g_token, [name for name in listed if name not in taking])
    conn.execute(
        "INSERT INTO poll_grants (token, owner, until, names) VALUES (?, ?, ?, ?)",
        (token, owner, until, orjson.dumps(granted).decode()),
    )
    return granted


def end(conn: sqlite3.Connection, owner: str, token: int, names: Sequence[str]) -> list[str]:
    """End `owner`'s leases of `names` under grant `token`; returns those the grant no longer
    held (taken over since: their polls are fenced out). Inside the caller's write transaction."""
    row = conn.execute("SELECT owner, names FROM poll_grants WHERE token = ?", (token,)).fetchone()
    if row is None or row[0] != owner:
        return list(names)
    listed: list[str] = orjson.loads(row[1])
    current = set(listed)
    ending = set(names)
    _keep(conn, token, [name for name in listed if name not in ending])
    return [name for name in names if name not in current]


def _keep(conn: sqlite3.Connection, token: int, names: list[str]) -> None:
    # What is left of a grant: these sources, or nothing (its row goes).
    if names:
        conn.execute(
            "UPDATE poll_grants SET names = ? WHERE token = ?",
            (orjson.dumps(names).decode(), token),
        )
    else:
        conn.execute("DELETE FROM poll_grants WHERE token = ?", (token,))
