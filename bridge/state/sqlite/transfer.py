"""A state file read out for `bridge copy-state`, and a copy written into an empty one."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from bridge.errors import StateError
from bridge.state.base import Rows
from bridge.state.copy import EXPORTS, GUARDED, TABLES, not_empty
from bridge.state.rows import row_from, row_values
from bridge.state.sqlite.connection import Database

# Columns that hold bytes (an older file may hold text there).
_BLOBS = {"items": "content", "events": "body"}


class SqliteTransfer:
    """bridge.state.base.Transfer over one state file."""

    def __init__(self, database: Database):
        self.database = database

    def export_rows(self, batch: int = 1000) -> Iterator[Rows]:
        """Every copied table's rows, in batches, from one read transaction (WAL: a snapshot
        of the file as it was at the first read, whatever a daemon commits meanwhile)."""
        conn = self.database.conn
        try:
            conn.execute("BEGIN")
            try:
                for table, columns in TABLES.items():
                    cursor = conn.execute(EXPORTS[table])
                    while found := cursor.fetchmany(batch):
                        yield table, [_neutral(table, columns, r) for r in found]
            finally:
                conn.execute("ROLLBACK")  # it only read
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.database.path}: cannot read the state file: {exc}") from None

    def import_rows(self, batches: Iterable[Rows]) -> dict[str, int]:
        """Write a copy into this file in one write transaction; NotEmpty if it holds a source,
        an event or a delivery. INTEGER PRIMARY KEYs given: later rows number on after them."""
        written = dict.fromkeys(TABLES, 0)
        with self.database.write() as conn:
            held = [t for t in GUARDED if conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]
            if held:
                raise not_empty(self.database.path, held)
            for table, rows in batches:
                columns = TABLES[table]
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})",
                    [tuple(r[c] for c in columns) for r in rows],
                )
                written[table] += len(rows)
        return written


def _neutral(table: str, columns: tuple[str, ...], found: tuple[Any, ...]) -> dict[str, Any]:
    """A row as the copy carries it: booleans as bool, blobs as bytes (rows.py's codec for a
    source row, so its `extra` is what a poll would have written)."""
    if table == "sources":
        return dict(zip(columns, row_values(row_from(found), bool), strict=True))
    row = dict(zip(columns, found, strict=True))
    blob = _BLOBS.get(table)
    if blob is not None and isinstance(row[blob], str):
        row[blob] = row[blob].encode()
    return row
