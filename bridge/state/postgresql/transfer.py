"""A PostgreSQL state read out for `bridge copy-state`, and a copy written into an empty one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import psycopg

from bridge.state.base import Rows
from bridge.state.copy import EXPORTS, GUARDED, TABLES, not_empty
from bridge.state.postgresql.connection import Database
from bridge.state.rows import row_from, row_values

# The identity columns whose next value must come after the copied ids.
_IDENTITIES = (("events", "seq"), ("deliveries", "id"), ("attempts", "id"))


class PostgresTransfer:
    """bridge.state.base.Transfer over a PostgreSQL database."""

    def __init__(self, database: Database):
        self.database = database

    def export_rows(self, batch: int = 1000) -> Iterator[Rows]:
        """Every copied table's rows, in batches (server-side cursors), from one REPEATABLE READ
        transaction: one snapshot of the database, whatever the instances commit meanwhile."""
        with self.database.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                for table, columns in TABLES.items():
                    with conn.cursor(name=f"bridge_copy_{table}") as cursor:
                        cursor.execute(EXPORTS[table].encode())
                        while found := cursor.fetchmany(batch):
                            yield table, [_neutral(table, columns, r) for r in found]
            finally:
                try:
                    conn.execute("ROLLBACK")  # it only read
                except psycopg.Error:  # the connection broke: the pool discards it
                    pass

    def import_rows(self, batches: Iterable[Rows]) -> dict[str, int]:
        """Write a copy in one transaction (COPY, table by table); NotEmpty if the database
        holds a source, an event or a delivery. The copied tables are locked against writes
        meanwhile, so no instance starting on it can slip a row in between check and copy."""
        written = dict.fromkeys(TABLES, 0)
        with self.database.write() as conn:
            conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE".encode())
            row = conn.execute(
                ("SELECT " + ", ".join(f"EXISTS (SELECT 1 FROM {t})" for t in GUARDED)).encode()
            ).fetchone()
            held = [t for t, there in zip(GUARDED, row or (), strict=True) if there]
            if held:
                raise not_empty(self.database.url, held)
            cursor = conn.cursor()
            for table, rows in batches:
                columns = TABLES[table]
                statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                with cursor.copy(statement.encode()) as copy:
                    for r in rows:
                        copy.write_row([r[c] for c in columns])
                written[table] += len(rows)
            for table, column in _IDENTITIES:
                # The next id after the largest copied one (1 for an empty table).
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"coalesce(max({column}), 0) + 1, false) FROM {table}".encode()
                )
        return written


def _neutral(table: str, columns: tuple[str, ...], found: tuple[Any, ...]) -> dict[str, Any]:
    """A row as the copy carries it (rows.py's codec for a source row)."""
    if table == "sources":
        return dict(zip(columns, row_values(row_from(found), bool), strict=True))
    return dict(zip(columns, found, strict=True))
