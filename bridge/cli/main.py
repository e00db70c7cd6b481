"""The `bridge` command: with common.py, queue.py and tools.py beside it, the only place that
reads argv and the environment, sets up logging and wires objects. Here: the group and the
commands on a config."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click
import orjson

from bridge import __version__
from bridge.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    check_source_names,
    config_option,
    handle_errors,
    load,
    log_level_given,
    open_config_state,
    run_async,
)
from bridge.cli.queue import discard, replay
from bridge.cli.tables import print_table, relative, when
from bridge.cli.tools import demo, init, listen
from bridge.config import Config, redacted
from bridge.service import logs


@click.group()
@click.version_option(__version__, prog_name="bridge")
@click.option(
    "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"])
)
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]))
@click.option(
    "--busy-timeout",
    default=5.0,
    envvar="BRIDGE_BUSY_TIMEOUT",
    type=click.FloatRange(0),
    help="Seconds to wait for a state file another process is writing.",
)
def main(log_level: str, log_format: str, busy_timeout: float) -> None:
    """Turn pull-only HTTP APIs into push: poll, diff, and send signed webhooks."""
    logs.setup(log_level, log_format)  # busy_timeout is read by open_config_state


for _command in (replay, discard, init, listen, demo):
    main.add_command(_command)


@main.command()
@config_option
@handle_errors
def check(config_path: str) -> int:
    """Validate the config and list its sources (secrets redacted)."""
    config = load(config_path)
    print_table(redacted(config), ["name", "kind", "schedule", "webhooks"])
    click.echo(f"{config.path}: ok, {len(config.sources)} sources, {len(config.webhooks)} webhooks")
    return EXIT_OK


@main.command()
@config_option
@click.argument("sources", nargs=-1)
@click.option(
    "-q", "--quiet", is_flag=True, help="Print nothing unless something failed (for cron)."
)
@handle_errors
def once(config_path: str, sources: tuple[str, ...], quiet: bool) -> int:
    """Poll the named sources (default: all) once, send what is due, exit."""
    config = load(config_path)
    check_source_names(config, sources)
    names = list(sources) or [s.name for s in config.sources]
    if quiet and not log_level_given():
        logs.quieter()
    return run_async(_once(config, names, quiet=quiet))


# Progress shows when one pass polls at least this many sources and stderr is a terminal.
PROGRESS_FROM = 10


async def _once(config: Config, names: list[str], *, quiet: bool = False) -> int:
    from bridge.delivery.dispatcher import Dispatcher
    from bridge.http import HttpClient
    from bridge.polling.engine import Engine, PollResult

    state = open_config_state(config, create=True)
    try:
        async with HttpClient(per_host=config.per_host) as http:
            dispatcher = Dispatcher(config.webhooks, state.outbox, http)
            engine = Engine(config, state, http)
            done = errors = 0
            shown = 0.0
            show = not quiet and sys.stderr.isatty() and len(names) >= PROGRESS_FROM

            def progress(result: PollResult) -> None:
                nonlocal done, errors, shown
                done += 1
                errors += result.result == "error"
                # A terminal redraw per poll would cost more than the polls; ten a second reads.
                if show and (time.monotonic() - shown >= 0.1 or done == len(names)):
                    shown = time.monotonic()
                    failed = f", {errors} failed" if errors else ""
                    line = f"\rpolling: {done}/{len(names)} sources{failed}"
                    click.echo(line, err=True, nl=False)

            results = await engine.poll_many(names, progress=progress)
            if show:
                click.echo("\r\033[K", err=True, nl=False)  # the summary replaces the progress
            if state.coordination.daemon_running():
                if not quiet:
                    click.echo(
                        "bridge: a `bridge run` is using this state file; it delivers", err=True
                    )
            else:
                await dispatcher.deliver_due()
    finally:
        state.close()
    failed = [r for r in results if r.result == "error"]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.result] = counts.get(r.result, 0) + 1
    events = sum(len(r.bodies) for r in results)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if failed or not quiet:
        click.echo(f"bridge: polled {len(results)} sources ({summary}); {events} events", err=True)
    for r in failed:
        click.echo(f"bridge: {r.source}: {r.error}", err=True)
    return EXIT_FAILED if failed else EXIT_OK


@main.command()
@config_option
@click.argument("source")
@click.option("--dry-run", is_flag=True, help="Store nothing and send nothing.")
@handle_errors
def poll(config_path: str, source: str, dry_run: bool) -> int:
    """Poll one source now and print the events it produced."""
    config = load(config_path)
    check_source_names(config, [source])
    return run_async(_poll(config, source, dry_run))


async def _poll(config: Config, name: str, dry_run: bool) -> int:
    from bridge.delivery.dispatcher import Dispatcher
    from bridge.http import HttpClient
    from bridge.polling.engine import Engine
    from bridge.state import open_scratch_state, state_exists

    # A dry run on a fresh setup compares against an empty snapshot that vanishes afterwards.
    if dry_run and not state_exists(config.state):
        state = open_scratch_state()
    else:
        state = open_config_state(config, create=True)
    try:
        async with HttpClient(per_host=config.per_host) as http:
            engine = Engine(config, state, http)
            result = await engine.poll(name, dry_run=dry_run)
            for event in result.events:
                click.echo(orjson.dumps(event).decode())
            if not dry_run:
                engine.flush()
                if not state.coordination.daemon_running():
                    await Dispatcher(config.webhooks, state.outbox, http).deliver_due()
    finally:
        state.close()
    click.echo(
        f"bridge: {name}: {result.result}, {len(result.bodies)} events"
        + (f": {result.error}" if result.error else "")
        + (" (dry run: nothing stored or sent)" if dry_run else ""),
        err=True,
    )
    return EXIT_FAILED if result.result == "error" else EXIT_OK


@main.command()
@config_option
@handle_errors
def run(config_path: str) -> int:
    """Run the daemon: poll on schedule, deliver continuously (SIGHUP reloads)."""
    from bridge.service.daemon import Daemon

    config = load(config_path)
    return run_async(Daemon(config, env=os.environ).run())


def _listing(
    config_path: str,
    fetch: Callable[[Any], list[dict[str, Any]]],
    as_json: bool,
    columns: Sequence[str],
    for_people: Callable[[dict[str, Any]], None],
) -> int:
    """Rows read from the state file: JSON lines for machines, or a table for people."""
    config = load(config_path)
    state = open_config_state(config)
    try:
        rows = fetch(state.admin)
    finally:
        state.close()
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return EXIT_OK
    for row in rows:
        for_people(row)
    print_table(rows, columns)
    return EXIT_OK


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def status(config_path: str, as_json: bool) -> int:
    """Per source: last poll, result, last change, next poll, failures; per webhook: queue."""
    config = load(config_path)
    state = open_config_state(config)
    try:
        rows = state.snapshots.source_rows()
        counts = state.admin.delivery_counts(config.webhooks)
        running = state.coordination.daemon_running()
    finally:
        state.close()
    sources: list[dict[str, Any]] = []
    for spec in config.sources:
        row = rows.get(spec.name)
        sources.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "last_poll": row.last_poll_at if row else None,
                "result": row.last_result if row else None,
                "last_change": row.last_change_at if row else None,
                "next_poll": row.next_poll_at if row else None,
                "failures": row.failures if row else 0,
                "error": row.last_error if row else None,
            }
        )
    webhooks: list[dict[str, Any]] = [
        {"name": name, "configured": True, **counts[name]} for name in config.webhooks
    ]
    # A webhook taken out of the config keeps its deliveries; shown while any wait or died.
    webhooks += [
        {"name": name, "configured": False, **n}
        for name, n in sorted(counts.items())
        if name not in config.webhooks and (n["pending"] or n["dead"])
    ]
    if as_json:
        click.echo(orjson.dumps({"sources": sources, "webhooks": webhooks}).decode())
        return EXIT_OK
    now = time.time()
    failing = [s for s in sources if s["failures"] and s["error"]]
    for s in sources:
        s["last_poll"] = relative(s["last_poll"], now)
        s["last_change"] = relative(s["last_change"], now)
        s["next_poll"] = relative(s["next_poll"], now, past="due")
    print_table(
        sources, ["name", "kind", "last_poll", "result", "last_change", "next_poll", "failures"]
    )
    for s in failing:
        click.echo(f"  {s['name']}: {s['error']}")
    click.echo()
    waiting = [w["name"] for w in webhooks if not w["configured"] and w["pending"]]
    for w in webhooks:
        if not w["configured"]:
            w["name"] += " (not in the config)"
    print_table(webhooks, ["name", "pending", "delivered", "dead"])
    for name in waiting:
        click.echo(
            f"  {name}: its pending deliveries wait for it to be back in the config; "
            f"`bridge discard --webhook {name}` gives up on them"
        )
    if not running:
        click.echo("\n(no `bridge run` is using this state file)")
    return EXIT_OK


@main.command()
@config_option
@click.option("--source", help="Only this source's events.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@handle_errors
def events(config_path: str, source: str | None, limit: int, as_json: bool) -> int:
    """Recent events, newest first."""

    def for_people(e: dict[str, Any]) -> None:
        e["created_at"] = when(e["created_at"])

    return _listing(
        config_path,
        lambda store: store.events(source=source, limit=limit),
        as_json,
        ["id", "created_at", "source", "type", "key"],
        for_people,
    )


@main.command()
@config_option
@click.option("--status", "status_", type=click.Choice(["pending", "delivered", "dead"]))
@click.option("--webhook", help="Only deliveries to this webhook.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@handle_errors
def deliveries(
    config_path: str, status_: str | None, webhook: str | None, limit: int, as_json: bool
) -> int:
    """The delivery queue and history, with attempt counts and the last error."""

    def for_people(d: dict[str, Any]) -> None:
        d["next_attempt_at"] = when(d["next_attempt_at"]) if d["status"] == "pending" else "-"

    return _listing(
        config_path,
        lambda store: store.deliveries(status=status_, webhook=webhook, limit=limit),
        as_json,
        ["id", "event_id", "webhook", "status", "attempts", "next_attempt_at", "last_error"],
        for_people,
    )
