"""Poll leases on one state file, kept as grants: the sources leased at one wake-up, in one row.

A grant is a row of poll_grants (token, owner, until, names), `names` the JSON list of the
sources it still holds. A source is free unless a live grant holds it: one whose `until` has not
passed and whose owner's process is alive. The owner names a process (`host:pid:random`), and
every process on a SQLite file runs on the file's machine, so the grants of one killed with -9
are free at once rather than when they run out. A poll's commit ends its lease: its source
leaves the grant (the row goes with its last source); and the commit is written only while the
grant still holds it, so a poll that outlived its lease, its source taken since, is fenced out.

A row per wake-up rather than one per source: a wake-up's leases are then taken in one insert
and ended in one update per commit, where a row each doubled the writes of a steady poll. And a
process keeps its own live grants in memory too, by source (nobody else can take them while
they last), so that a wake-up reads only the rows of other processes: none, for a daemon alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping

import orjson


class Grants:
    """The poll grants of one owner (a process's state) on one state file."""

    def __init__(self, owner: str):
        self.owner = owner
        # source -> (token, until) of this owner's grants as the file holds them: changed
        # only after the transaction that wrote the change has committed (granted, ended).
        self._mine: dict[str, tuple[int, float]] = {}

    def take(
        self,
        conn: sqlite3.Connection,
        token: int,
        names: Iterable[str],
        now: float,
        until: float,
        gone: Callable[[str], bool],
    ) -> set[str]:
        """Grant the sources of `names` that no live grant holds, under `token`, until `until`;
        returns them. Inside the caller's write transaction; then `granted`, once committed."""
        mine = self._mine
        wanted = set(names)
        for name in mine.keys() & wanted:  # this owner's own, while they last
            if mine[name][1] >= now:
                wanted.discard(name)
        held: set[str] = set()
        freed: list[tuple[int, list[str]]] = []  # grants run out, or of a process that is gone
        for g_token, g_owner, g_until, g_names in conn.execute(
            "SELECT token, owner, until, names FROM poll_grants WHERE owner != ?", (self.owner,)
        ):
            listed = orjson.loads(g_names)
            if g_until >= now and not gone(g_owner):
                held.update(listed)
            else:
                freed.append((g_token, listed))
        granted = wanted - held
        if not granted:
            return granted
        for g_token, listed in freed:  # they lose what is taken from them
            if not granted.isdisjoint(listed):
                _keep(conn, g_token, set(listed) - granted)
        for g_token in {mine[n][0] for n in mine.keys() & granted}:  # this owner's, run out
            self._end(conn, g_token, granted)
        conn.execute(
            "INSERT INTO poll_grants (token, owner, until, names) VALUES (?, ?, ?, ?)",
            (token, self.owner, until, _listed(granted)),
        )
        return granted

    def granted(self, names: Iterable[str], token: int, until: float) -> None:
        """Note a grant that `take` wrote and its transaction committed."""
        self._mine.update(dict.fromkeys(names, (token, until)))

    def end(self, conn: sqlite3.Connection, leases: Mapping[int, Iterable[str]]) -> set[str]:
        """End these leases (sources by grant token); returns the sources whose grant no longer
        held them (taken over since: their polls are fenced out). Inside the caller's write
        transaction; then `ended`, once committed."""
        lost: set[str] = set()
        for token, names in leases.items():
            ending = set(names)
            lost |= ending - self._end(conn, token, ending)
        return lost

    def ended(self, leases: Mapping[int, Iterable[str]]) -> None:
        """Note the leases (sources by token) that `end` ended and its transaction committed."""
        mine = self._mine
        for token, names in leases.items():
            for name in names:
                if (m := mine.get(name)) is not None and m[0] == token:
                    del mine[name]

    def end_all(self, conn: sqlite3.Connection) -> None:
        """End every grant of this owner (its state is closing)."""
        conn.execute("DELETE FROM poll_grants WHERE owner = ?", (self.owner,))
        self._mine.clear()

    def _end(self, conn: sqlite3.Connection, token: int, ending: set[str]) -> set[str]:
        # Take `ending` out of this owner's grant `token`; returns what the grant held before.
        row = conn.execute(
            "SELECT names FROM poll_grants WHERE token = ? AND owner = ?", (token, self.owner)
        ).fetchone()
        if row is None:
            return set()
        current = set(orjson.loads(row[0]))
        if not current.isdisjoint(ending):
            _keep(conn, token, current - ending)
        return current


def _keep(conn: sqlite3.Connection, token: int, names: set[str]) -> None:
    # What is left of a grant: these sources, or nothing (its row goes).
    if names:
        conn.execute("UPDATE poll_grants SET names = ? WHERE token = ?", (_listed(names), token))
    else:
        conn.execute("DELETE FROM poll_grants WHERE token = ?", (token,))


def _listed(names: set[str]) -> str:
    return orjson.dumps(list(names)).decode()
