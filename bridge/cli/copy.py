"""`bridge copy-state FROM TO`: move a whole state to another place or backend (SQLite to
PostgreSQL, say), so that a move to several instances needs no re-baseline and loses no queue."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from bridge.cli.common import EXIT_OK, handle_errors, say
from bridge.config.yamldoc import Doc
from bridge.errors import ConfigError
from bridge.service import logs
from bridge.state import State, is_url, open_state, redact_location, state_exists
from bridge.state.copy import Copied, NotEmpty, copy_state

LOCATION = "a SQLite state file's path, or a postgresql:// (postgres://) URL"


@click.command("copy-state")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@handle_errors
def copy_state_command(source: str, target: str) -> int:
    """Copy the state at FROM into an empty state at TO.

    FROM and TO are each a SQLite state file or a postgresql:// URL, in any direction;
    ${NAME} in them is taken from the environment (as in the config's `state:`), so a
    password need not be typed. TO is created if missing (a new file; the tables in an
    existing PostgreSQL database); one holding any source, event or delivery is refused.

    Copied: every source's snapshot, validators, schedule and failure and alert state,
    changes awaiting confirm:, rate-limit blocks, every event with its id (the webhook-id),
    and the pending and dead deliveries with their attempts. Not copied: delivered
    deliveries, poll history, poll leases, the list of instances.

    FROM is read as one consistent snapshot, so it may be copied while a `bridge run` uses
    it; stop that daemon before starting bridge on TO, or both send the pending deliveries.
    """
    from_location = _location("FROM", source)
    to_location = _location("TO", target)
    if _same(from_location, to_location):
        raise ConfigError("FROM and TO are the same state")
    # Never made where it is missing. An unreachable server is a StateError: exit 1.
    if is_url(from_location) and not state_exists(from_location):
        raise ConfigError(f"{redact_location(from_location)}: no bridge state in this database")
    if not is_url(from_location) and not Path(from_location).is_file():
        raise ConfigError(f"{from_location}: no such state file")
    made = not is_url(to_location) and not Path(to_location).exists()
    src = _open(from_location, create=False)
    try:
        dst = _open(to_location, create=True)
        try:
            copied = _copy(src, dst)
        except BaseException:
            dst.close()
            if made:  # a file this copy made, left empty: gone again
                _remove(to_location)
            raise
        dst.close()
        if src.coordination.daemon_running():
            say.warning(
                "%s: a `bridge run` is using it: the copy holds what it had committed when the "
                "copy began; stop that daemon before starting bridge on %s",
                redact_location(from_location),
                redact_location(to_location),
            )
    finally:
        src.close()
    click.echo(
        f"copied {copied.summary()}: "
        f"{redact_location(from_location)} -> {redact_location(to_location)}"
    )
    return EXIT_OK


def _copy(src: State, dst: State) -> Copied:
    show = sys.stderr.isatty()
    shown = 0.0

    def progress(copied: Copied) -> None:
        nonlocal shown
        # A redraw per batch would flicker; a few a second read.
        if show and time.monotonic() - shown >= 0.2:
            shown = time.monotonic()
            rows = sum(copied.rows.values())
            logs.progress(f"copying: {rows:,} row{'s' * (rows != 1)}")

    try:
        return copy_state(src, dst, progress=progress)
    except NotEmpty as exc:
        raise ConfigError(str(exc)) from None  # a usage error: exit 2
    finally:
        if show:
            logs.progress("")


def _location(label: str, given: str) -> str:
    """FROM or TO with ${NAME} filled in from the environment, as the config's `state:`."""
    value = given.strip()
    if "${" in value or "$${" in value:
        doc = Doc(label, os.environ)
        filled = doc.parse(json.dumps(value))  # a JSON string is a YAML one
        if doc.errors:
            raise ConfigError(doc.errors[0].problem, file=label)
        if doc.unset:
            name = next(iter(doc.unset.values()))
            raise ConfigError(f"environment variable {name} is not set", file=label)
        value = str(filled)
    if not value:
        raise ConfigError(f"must be {LOCATION}", file=label)
    if is_url(value):
        return value
    return str(Path(value).expanduser())


def _same(a: str, b: str) -> bool:
    if is_url(a) or is_url(b):
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _open(location: str, *, create: bool) -> State:
    root = click.get_current_context().find_root()
    busy_timeout = float(root.params.get("busy_timeout") or 5.0)
    return open_state(location, create=create, busy_timeout=busy_timeout)


def _remove(path: str) -> None:
    for leftover in (path, f"{path}-wal", f"{path}-shm"):
        try:
            os.unlink(leftover)
        except OSError:  # already gone, or not ours to remove: the copy's error is the news
            pass
