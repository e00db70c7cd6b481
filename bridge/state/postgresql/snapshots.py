"""Polling's queries on PostgreSQL: source rows, item snapshots, rate-limited hosts, and the
commit of polls (fenced by their leases) with their events and pending deliveries, which the
commit announces to every instance (listen.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import psycopg

from bridge.model import KnownItems, PollCommit, SourceRow
from bridge.state.base import Touched
from bridge.state.postgresql.connection import Database
from bridge.state.postgresql.item_cache import SMALL, ItemCache
from bridge.state.postgresql.listen import notify_deliveries
from bridge.state.rows import SOURCE_COLUMNS, poll_rows, row_from, row_values

# Writing a poll's row ends the lease it ran under. The rows go as one array per column: one
# statement (one plan, one round trip) for a batch of any size.
_SOURCE_TYPES = (
    "text", "text", "text", "text", "text", "bytea", "boolean", "float8", "text", "text",
    "float8", "float8", "int", "float8", "boolean", "text",
)  # fmt: skip
_UPSERT_SOURCES = (
    f"INSERT INTO sources ({SOURCE_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _SOURCE_TYPES)
    + ") ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SOURCE_COLUMNS.split(", ")[1:])
    + ", lease_until = NULL"
).encode()
_FLOATS = tuple(i for i, t in enumerate(_SOURCE_TYPES) if t == "float8")


def _source_columns(rows: Iterable[SourceRow]) -> list[list[Any]]:
    # One row per name, the last given (as one statement per row left it), in name order (the
    # order rows are locked in everywhere: no deadlocks). Times as floats: an array's values are
    # adapted by the type of its first, and an int among floats would not fit its type.
    last = {r.name: r for r in rows}
    values = [list(row_values(last[n], bool)) for n in sorted(last)]
    for v in values:
        for i in _FLOATS:
            if v[i] is not None:
                v[i] = float(v[i])
    return _columns(values, len(_SOURCE_TYPES))


# Only a baselined row is touched: one that lost its content meanwhile (removed, or restored
# from a backup, by another process) is written whole instead. The WHERE is the fence: an
# UPDATE re-reads a row another transaction changed before it writes it.
_TOUCH_SOURCE = (
    b"UPDATE sources SET last_poll_at = %s, next_poll_at = %s, last_result = %s, "
    b"lease_until = NULL WHERE name = %s AND baselined "
    b"AND (%s::bigint IS NULL OR (lease_owner = %s AND lease_token = %s))"
)


class PostgresSnapshots:
    """bridge.state.base.Snapshots over a PostgreSQL database."""

    def __init__(self, database: Database, owner: str):
        self.database = database
        self.owner = owner  # this state's instance id: the owner of the leases it takes
        # Whether every one of these sources is of a shard this instance holds (set by
        # PostgresState: Coordination.holds). Polls of those only are written unseen by
        # generation(): no other instance polls (or caches) them, and one that gains their shard
        # reads them afresh. Every other write (`bridge once`, a stray, a command) is seen.
        self.held_here: Callable[[Iterable[str]], bool] = lambda names: False
        # The items of small sources as last read or committed here, by the lease they are
        # valid for (item_cache.py); coordination.py tells it the leases granted.
        self.cache = ItemCache()
        self._small: set[str] = set()  # sources last seen with at most SMALL items
        self._lock = threading.Lock()

    def source_row(self, name: str) -> SourceRow:
        """The stored row of a source, or a fresh one if it was never polled."""
        with self.database.connection() as conn:
            found = conn.execute(
                f"SELECT {SOURCE_COLUMNS} FROM sources WHERE name = %s".encode(), (name,)
            ).fetchone()
        return row_from(found) if found else SourceRow(name=name)

    def source_rows(self) -> dict[str, SourceRow]:
        """Every stored source row by name (one statement: one snapshot)."""
        with self.database.connection() as conn:
            rows = conn.execute(f"SELECT {SOURCE_COLUMNS} FROM sources".encode()).fetchall()
        return {r[0]: row_from(r) for r in rows}

    def generation(self) -> int:
        """The other writers' count of committed write transactions (bridge.state.postgresql
        .connection): it changes when another state commits, not when this one does."""
        return self.database.generation()

    def host_blocks(self, now: float) -> dict[str, float]:
        """Hosts (or GitHub token budgets) still off-limits at `now`, with until when."""
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT host, until FROM host_blocks WHERE until > %s", (now,)
            ).fetchall()
        return {host: until for host, until in rows}

    def item_hashes(self, source: str) -> dict[str, str]:
        """key -> compared-content hash of every stored item of a source."""
        known = self.cache.known(source)
        if known is not None:
            return dict(known.hashes)
        # A source last seen with few items has its contents read with its hashes (one round
        # trip for both reads of a changed poll, and kept for the next); a large one, or one
        # not seen yet, without them: not to move every item of each poll that changes none.
        with self._lock:
            small = source in self._small
        with self.database.connection() as conn:
            if small:
                rows = conn.execute(
                    "SELECT key, hash, content FROM items WHERE source = %s", (source,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT key, hash FROM items WHERE source = %s", (source,)
                ).fetchall()
        with self._lock:
            if len(rows) <= SMALL:
                self._small.add(source)
            else:
                self._small.discard(source)
        if small:
            self.cache.read(source, [(k, h, bytes(c)) for k, h, c in rows])
        return {r[0]: r[1] for r in rows}

    def known_items(self, source: str) -> KnownItems | None:
        """The items of a small source this instance polls, as its current lease found them
        (item_cache.py)."""
        return self.cache.known(source)

    def confirmations(self, source: str) -> dict[str, tuple[str, int]]:
        """key -> (candidate hash, polls that saw it) of the source's changes awaiting confirm."""
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT key, hash, seen FROM confirmations WHERE source = %s", (source,)
            ).fetchall()
        return {key: (h, seen) for key, h, seen in rows}

    def item_contents(self, source: str, keys: Sequence[str]) -> dict[str, Any]:
        """key -> stored item (parsed) for the given keys (one array parameter, any length);
        from those kept in memory when they are valid (item_cache.py)."""
        known = self.cache.known(source)
        if known is not None:
            return known.items(keys)
        if not keys:
            return {}
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT key, content FROM items WHERE source = %s AND key = ANY(%s)",
                (source, list(keys)),
            ).fetchall()
        return {key: orjson.loads(content) for key, content in rows}

    def commit_polls(
        self,
        commits: Iterable[PollCommit],
        host_blocks: Mapping[str, float] | None = None,
        touched: Sequence[Touched] = (),
    ) -> set[str]:
        """Write polls with their snapshot changes, events and pending deliveries atomically;
        returns the names of the polls fenced out because their lease was no longer current.

        The leased rows are locked (FOR UPDATE) while their tokens are checked, so no other
        instance can take a lease between the check and the write.
        """
        commits = list(commits)
        names = [c.row.name for c in commits] + [r.name for r, _ in touched]
        try:
            refused = self._commit(commits, names, host_blocks, touched)
        except BaseException:
            self.cache.forget(names)  # written or not, no one can tell: read them again
            raise
        self.cache.forget(refused)
        for c in commits:
            if c.row.name in refused:
                continue
            if c.lease is None:
                self.cache.forget([c.row.name])
            else:
                self.cache.committed(c.row.name, c.lease, c.upserts, c.deletes)
        for r, token in touched:
            if r.name not in refused and token is not None:
                self.cache.committed(r.name, token, (), ())
        return refused

    def _commit(
        self,
        commits: list[PollCommit],
        names: list[str],
        host_blocks: Mapping[str, float] | None,
        touched: Sequence[Touched],
    ) -> set[str]:
        with self.database.write(seen=not self.held_here(names)) as conn:
            if host_blocks:
                conn.execute("DELETE FROM host_blocks WHERE until < %s", (time.time(),))
                conn.cursor().executemany(
                    "INSERT INTO host_blocks (host, until) VALUES (%s, %s) ON CONFLICT (host) "
                    "DO UPDATE SET until = greatest(host_blocks.until, excluded.until)",
                    sorted(host_blocks.items()),
                )
            refused = self._fenced_out(conn, [(c.row.name, c.lease) for c in commits])
            if refused:
                commits = [c for c in commits if c.row.name not in refused]
            whole = [c.row for c in commits]
            if touched:
                owner = self.owner
                cur = conn.cursor()
                cur.executemany(
                    _TOUCH_SOURCE,
                    [
                        (r.last_poll_at, r.next_poll_at, r.last_result, r.name, t, owner, t)
                        for r, t in sorted(touched, key=lambda rt: rt[0].name)
                    ],
                )
                if cur.rowcount != len(touched):  # lost their lease, or their row: find which
                    lost = self._fenced_out(conn, [(r.name, t) for r, t in touched])
                    refused |= lost
                    unwritten = self._unwritten(conn, [r.name for r, _ in touched])
                    whole += [r for r, _ in touched if r.name in unwritten - lost]
            if whole:
                conn.execute(_UPSERT_SOURCES, _source_columns(whole), prepare=False)
            unleased = sorted({c.row.name for c in commits if c.lease is None})
            if unleased:
                # Written under no lease: the next lease of each takes a token that no kept
                # copy of their items is valid for (item_cache.py), in any instance.
                conn.execute(
                    "UPDATE sources SET lease_token = lease_token + 1 WHERE name = ANY(%s)",
                    (unleased,),
                    prepare=False,
                )
            written = [c for c in commits if c.upserts or c.deletes or c.events or c.history]
            if written:
                _write_polls(conn, written)
            held = [c for c in commits if c.confirmations is not None]
            if held:
                conn.execute(
                    "DELETE FROM confirmations WHERE source = ANY(%s)",
                    ([c.row.name for c in held],),
                    prepare=False,
                )
                rows = [
                    (c.row.name, key, h, seen)
                    for c in held
                    for key, (h, seen) in (c.confirmations or {}).items()
                ]
                if rows:
                    conn.execute(
                        "INSERT INTO confirmations (source, key, hash, seen) "
                        "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[])",
                        _columns(rows, 4),
                        prepare=False,
                    )
        return refused

    @staticmethod
    def _unwritten(conn: psycopg.Connection[Any], names: Sequence[str]) -> set[str]:
        # Sources missing, or still leased (a touch releases the lease it writes under).
        found = dict(
            conn.execute(
                "SELECT name, lease_until FROM sources WHERE name = ANY(%s)", (list(names),)
            ).fetchall()
        )
        return {n for n in names if n not in found or found[n] is not None}

    def _fenced_out(
        self, conn: psycopg.Connection[Any], leases: Sequence[tuple[str, int | None]]
    ) -> set[str]:
        # The polls whose lease is no longer the source's current one: another poll took the
        # source since (this one's lease ran out meanwhile). Polls without a lease are not
        # fenced. The rows stay locked until the commit, in name order (no deadlocks).
        held = {name: token for name, token in leases if token is not None}
        if not held:
            return set()
        current = {
            name: (owner, token)
            for name, owner, token in conn.execute(
                "SELECT name, lease_owner, lease_token FROM sources WHERE name = ANY(%s) "
                "ORDER BY name FOR UPDATE",
                (sorted(held),),
                prepare=False,
            )
        }
        return {name for name, token in held.items() if current.get(name) != (self.owner, token)}


def _write_polls(conn: psycopg.Connection[Any], commits: list[PollCommit]) -> None:
    # One statement of each kind for the whole batch, its rows as arrays: one round trip
    # however many polls. Each planned at its use (prepare=False), with the arrays it has and
    # the tables' sizes now: a prepared statement's generic plan, made once on a young state,
    # kept the join of deliveries to events a sequential scan of events as it grew. Rows keep
    # their order (WITH ORDINALITY ... ORDER BY), so deliveries still take ids in the order of
    # their events.
    rows = poll_rows(commits)
    if rows.upserts:
        conn.execute(
            "INSERT INTO items (source, key, hash, content) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[]) "
            "ON CONFLICT (source, key) DO UPDATE SET hash = excluded.hash, "
            "content = excluded.content",
            _columns(rows.upserts, 4),
            prepare=False,
        )
    if rows.deletes:
        conn.execute(
            "DELETE FROM items i USING unnest(%s::text[], %s::text[]) AS d(source, key) "
            "WHERE i.source = d.source AND i.key = d.key",
            _columns(rows.deletes, 2),
            prepare=False,
        )
    if rows.events:
        conn.execute(
            "INSERT INTO events (id, source, type, key, created_at, body) "
            "SELECT id, source, type, key, created_at, body FROM unnest(%s::text[], "
            "%s::text[], %s::text[], %s::text[], %s::float8[], %s::bytea[]) WITH ORDINALITY "
            "AS e(id, source, type, key, created_at, body, n) ORDER BY n",
            _columns(rows.events, 6),
            prepare=False,
        )
    if rows.deliveries:
        conn.execute(
            "INSERT INTO deliveries (event_seq, webhook, source, status, next_attempt_at, "
            "created_at, updated_at) "
            "SELECT e.seq, d.webhook, e.source, 'pending', d.at, d.at, d.at "
            "FROM unnest(%s::text[], %s::text[], %s::float8[]) WITH ORDINALITY "
            "AS d(event_id, webhook, at, n) JOIN events e ON e.id = d.event_id ORDER BY d.n",
            _columns(rows.deliveries, 3),
            prepare=False,
        )
        notify_deliveries(conn, {webhook for _, webhook, _ in rows.deliveries})
    if rows.history:
        conn.execute(
            "INSERT INTO polls (source, at, result, duration, error, events) "
            "SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[], %s::float8[], "
            "%s::text[], %s::int[])",
            _columns(rows.history, 6),
            prepare=False,
        )


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as `width` column lists: the arrays of an unnest()."""
    return [[r[i] for r in rows] for i in range(width)]
