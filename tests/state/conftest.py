"""The backends the contract suite runs over: one place to add one (a PostgreSQL one: one entry).

`state` runs a test over every backend; `two_states` opens one location twice (two processes on
one state, as far as leases and claims can tell) and runs only over the backends that can.

PostgreSQL: each test gets a schema of its own (`t_<random>`, in one database made for the
session, `bridge_test_<random>`, and named by the URL's `options=-csearch_path=...`): a schema is
far cheaper than a CREATE DATABASE, and every contract test then also runs through a URL with
options of its own. The schemas of `state`, `two_states` and `postgresql_url` hold a migrated
state; each is emptied after its test and handed to the next one (migrating a new schema was
most of a contract test's time), or dropped if the test left it other than a migration does.
`bare_postgresql_url` gives a schema with nothing in it, and `postgresql_database` a whole fresh
database, for the tests that need one (one dropped under a state, the default schema). The
server is $BRIDGE_TEST_POSTGRESQL (default postgresql://postgres@127.0.0.1:5432, as on every
machine of this project). If it cannot be reached the PostgreSQL tests skip, except under CI
(the CI environment variable set), where they fail loudly: there they must run.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from bridge.state import State, open_scratch_state, open_state
from bridge.state.base import SHARDS
from bridge.state.postgresql.schema import SCHEMA, SCHEMA_VERSION


@dataclass(frozen=True)
class Backend:
    """How to open a state of one backend for a test."""

    name: str
    # Opens a state in the test's tmp_path; called twice with the same path, the same state.
    open: Callable[[Path], State]
    # Whether a second open() is a second connection (process) on the same state.
    shared: bool


def _sqlite_file(tmp_path: Path) -> State:
    return open_state(str(tmp_path / "state.db"))


def _sqlite_memory(tmp_path: Path) -> State:
    return open_scratch_state()


POSTGRESQL = os.environ.get("BRIDGE_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432")

# tmp_path -> the schema made for that test (dropped by _drop_test_schemas).
_schemas: dict[Path, str] = {}


@functools.cache
def _postgresql_unreachable() -> str | None:
    """Why the test server cannot be used, or None when it can."""
    try:
        with psycopg.connect(f"{POSTGRESQL}/postgres", connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return " ".join(str(exc).split())


def _maintenance() -> psycopg.Connection:
    reason = _postgresql_unreachable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRESQL} is unreachable under CI: {reason}")
        pytest.skip(f"PostgreSQL at {POSTGRESQL} is unreachable: {reason}")
    return psycopg.connect(f"{POSTGRESQL}/postgres", autocommit=True)


def new_database() -> str:
    """A fresh, empty database on the test server; its URL. Drop it with drop_database()."""
    name = f"bridge_test_{uuid.uuid4().hex[:16]}"
    with _maintenance() as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return f"{POSTGRESQL}/{name}"


def drop_database(url: str) -> None:
    """Drop a database made by new_database(), closing whatever still uses it."""
    name = url.rsplit("/", 1)[1]
    with _maintenance() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


_session_database: list[str] = []  # made on first use, dropped by _drop_session_database


def new_schema() -> str:
    """A fresh, empty schema in the session's database; the URL that names it."""
    if not _session_database:
        _session_database.append(new_database())
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_session_database[0], autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    return f"{_session_database[0]}?options=-csearch_path%3D{name}"


def _schema_name(url: str) -> str:
    """The schema a URL of new_schema() names (its search_path option)."""
    return url.rsplit("%3D", 1)[1]


def drop_schema(url: str) -> None:
    """Drop a schema made by new_schema() and everything in it."""
    name = _schema_name(url)
    with psycopg.connect(_session_database[0], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE".encode())


@pytest.fixture(scope="session", autouse=True)
def _drop_session_database() -> Iterator[None]:
    yield
    _spare_schemas.clear()  # dropped with the database
    while _emptier:
        _emptier.pop().close()
    if _session_database:
        drop_database(_session_database.pop())


# Migrated schemas of earlier tests, emptied, for the next ones (URLs).
_spare_schemas: list[str] = []

# The tables a migration makes (every one but schema_version is emptied between tests).
_MIGRATED_TABLES = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))

# Every table, index and sequence of a schema with its columns, as one hash: a used schema
# is handed on only if it is still exactly what a migration makes (tests alter some).
_LAYOUT = """
SELECT md5(string_agg(c.relkind::text || c.relname || '.' || coalesce(a.attname || ':'
                      || a.atttypid::regtype::text, ''), ',' ORDER BY c.relname, a.attnum))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s
"""
_migrated_layout: list[str] = []  # the layout of the first schema migrated

# A connection to the session's database for emptying schemas (once a test, so kept open).
_emptier: list[psycopg.Connection] = []


def state_schema() -> str:
    """The URL of an empty schema holding a migrated state: an earlier test's, emptied, or a
    new one. Give it back with give_back()."""
    if _spare_schemas:
        return _spare_schemas.pop()
    url = new_schema()
    open_state(url).close()
    if not _migrated_layout:
        _migrated_layout.append(_layout_of(url))
    return url


def give_back(url: str) -> None:
    """Empty a schema from state_schema() for the next test, or drop it if it is no longer
    as a migration left it (or cannot be emptied)."""
    try:
        reusable = _empty_for_reuse(url)
    except psycopg.Error:
        reusable = False
    if reusable:
        _spare_schemas.append(url)
    else:
        drop_schema(url)


def _connection() -> psycopg.Connection:
    if not _emptier:
        _emptier.append(psycopg.connect(_session_database[0], autocommit=True))
        _emptier[0].execute("SET lock_timeout = '5s'")  # a state a failed test left open
    return _emptier[0]


def _layout_of(url: str) -> str:
    found = _connection().execute(_LAYOUT.encode(), [_schema_name(url)]).fetchone()
    return str(found[0]) if found else ""


def _empty_for_reuse(url: str) -> bool:
    """Bring a used schema back to what a first migration leaves; False if it is not one."""
    if _layout_of(url) != _migrated_layout[0]:
        return False
    conn = _connection()
    conn.execute(f"SET search_path = {_schema_name(url)}".encode())
    if conn.execute("SELECT version FROM schema_version").fetchall() != [(SCHEMA_VERSION,)]:
        return False
    # One round trip, one transaction (a multi-statement query is one). DELETE, not TRUNCATE:
    # these tables hold a test's few rows, and TRUNCATE makes every table's files anew.
    # Every sequence (the identities) counts from 1 again, as in a new schema.
    statements = [f"DELETE FROM {table}" for table in sorted(_MIGRATED_TABLES - {"schema_version"})]
    statements.append(f"INSERT INTO shards (shard) SELECT generate_series(0, {SHARDS - 1})")
    statements.append(
        "SELECT setval(c.oid, 1, false) FROM pg_class c "
        "WHERE c.relkind = 'S' AND c.relnamespace = current_schema()::regnamespace"
    )
    conn.execute("; ".join(statements).encode())
    return True


def _postgresql(tmp_path: Path) -> State:
    if tmp_path not in _schemas:
        _schemas[tmp_path] = state_schema()
    return open_state(_schemas[tmp_path])


@pytest.fixture(autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    # Autouse, so set up before (and torn down after) the states that use the schemas.
    yield
    while _schemas:
        give_back(_schemas.popitem()[1])


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """The URL of an empty state's schema (and only it on the search path), for this test."""
    url = state_schema()
    yield url
    give_back(url)


@pytest.fixture
def bare_postgresql_url() -> Iterator[str]:
    """The URL of a new schema with nothing in it (no state yet), dropped after the test."""
    url = new_schema()
    yield url
    drop_schema(url)


@pytest.fixture
def postgresql_database() -> Iterator[str]:
    """The URL of a fresh database, dropped after the test."""
    url = new_database()
    yield url
    drop_database(url)


BACKENDS = [
    Backend("sqlite-file", _sqlite_file, shared=True),
    Backend("sqlite-memory", _sqlite_memory, shared=False),
    Backend("postgresql", _postgresql, shared=True),
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    opened = request.param.open(tmp_path)
    yield opened
    opened.close()


@pytest.fixture(params=[b for b in BACKENDS if b.shared], ids=lambda b: b.name)
def two_states(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[State, State]]:
    first = request.param.open(tmp_path)
    second = request.param.open(tmp_path)
    yield first, second
    second.close()
    first.close()
