"""The `bridge` command: with common.py, queue.py and tools.py beside it, the only place that
reads argv and the environment, sets up logging and wires objects. Here: the group, `check`,
`run` and the listings; polls.py has `once` and `poll`."""

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
    CONFIG_HELP,
    EXIT_OK,
    EXIT_USAGE,
    check_source_names,
    check_webhook_name,
    complete_sources,
    complete_webhooks,
    config_option,
    fail,
    handle_errors,
    load,
    load_for_queue,
    open_config_state,
    run_async,
)
from bridge.cli.copy import copy_state_command
from bridge.cli.polls import once, poll
from bridge.cli.queue import discard, replay
from bridge.cli.tables import print_instances, print_table
from bridge.cli.tools import demo, init, listen
from bridge.config import Config, ConfigProblems, redacted
from bridge.service import logs
from bridge.service.times import relative, when
from bridge.state import State

LEVELS = ["debug", "info", "warning", "error"]


class BridgeGroup(click.Group):
    """The `bridge` group; with --log-format json a usage error is a JSON line too."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; under --log-format json, say a usage error as a JSON record."""
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if ctx.params.get("log_format") != "json":
                raise
            if not logs.is_json():  # the command's name was wrong: no callback ran yet
                logs.setup(ctx.params.get("log_level") or "info", "json")
            fail(exc.format_message())
            sys.exit(exc.exit_code)


@click.group(cls=BridgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)  # named as run: `bridge` or `bridge-push`
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False),
    help=CONFIG_HELP + " A -c after the command wins.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(LEVELS, case_sensitive=False),
    help="The least important log lines shown.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="text: readable lines; json: one JSON object per line, every line of stderr.",
)
@click.option(
    "--busy-timeout",
    default=5.0,
    envvar="BRIDGE_BUSY_TIMEOUT",
    type=click.FloatRange(0),
    help="Seconds to wait for a state file another process is writing.",
)
def main(config: str | None, log_level: str, log_format: str, busy_timeout: float) -> None:
    """Turn pull-only HTTP APIs into push: poll, diff, and send signed webhooks."""
    # `config` is read by find_config, `busy_timeout` by open_config_state.
    logs.setup(log_level, log_format)


for _command in (once, poll, replay, discard, init, listen, demo, copy_state_command):
    main.add_command(_command)


@main.command()
@config_option
@handle_errors
def check(config_path: str | None) -> int:
    """Validate the config and list its sources (secrets redacted)."""
    try:
        config = load(config_path)
    except ConfigProblems as exc:  # every problem, each on its line; other commands show one
        for line in exc.report():
            fail(line)  # `bridge: ...`, or a JSON record with --log-format json
        return EXIT_USAGE
    print_table(redacted(config), ["name", "kind", "schedule", "webhooks"])
    click.echo(f"{config.path}: ok, {len(config.sources)} sources, {len(config.webhooks)} webhooks")
    return EXIT_OK


@main.command()
@config_option
@handle_errors
def run(config_path: str | None) -> int:
    """Run the daemon: poll on schedule, deliver continuously (SIGHUP reloads)."""
    from bridge.service.daemon import Daemon

    config = load(config_path)
    return run_async(Daemon(config, env=os.environ).run())


def _listing(
    config_path: str | None,
    fetch: Callable[[Any], list[dict[str, Any]]],
    as_json: bool,
    columns: Sequence[str],
    for_people: Callable[[dict[str, Any]], None],
    check_names: Callable[[Config, State], None],
) -> int:
    """Rows read from the state file: JSON lines for machines, or a table for people. A name
    to filter by is checked first (`check_names`): a typo is an error, not an empty table."""
    config = load_for_queue(config_path)
    state = open_config_state(config)
    try:
        check_names(config, state)
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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object).")
@handle_errors
def status(config_path: str | None, as_json: bool) -> int:
    """Per source: last poll, result, last change, next poll, failures; the live instances;
    per webhook: queue."""
    config = load_for_queue(config_path)
    state = open_config_state(config)
    try:
        # The console's query too (bridge.service.console): one listing of the sources.
        _, page = state.admin.sources([spec.name for spec in config.sources])
        counts = state.admin.delivery_counts(config.webhooks)
        running = state.coordination.daemon_running()
        instances = state.admin.instances(time.time())
    finally:
        state.close()
    rows = {row.name: row for row in page}
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
        doc = {"sources": sources, "instances": instances, "webhooks": webhooks}
        click.echo(orjson.dumps(doc).decode())
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
    if instances:  # PostgreSQL's: a state file's daemon does not register (see the last line)
        click.echo()
        print_instances(instances, now)
    click.echo()
    waiting = [w["name"] for w in webhooks if not w["configured"] and w["pending"]]
    for w in webhooks:
        if not w["configured"]:
            w["name"] += " (not in the config)"
    print_table(webhooks, ["name", "pending", "delivered", "dead"])
    for w in webhooks:
        rate = config.webhooks[w["name"]].rate if w["configured"] else None
        if rate is not None and w["pending"]:
            seconds = w["pending"] / rate.per_second
            click.echo(
                f"  {w['name']}: {w['pending']:,} pending; at {rate} drained in about "
                f"{_two_units(seconds)}"
            )
    for name in waiting:
        click.echo(
            f"  {name}: its pending deliveries wait for it to be back in the config; "
            f"`bridge discard --webhook {name}` gives up on them"
        )
    if not running:
        click.echo("\n(no `bridge run` is using this state file)")
    return EXIT_OK


def _two_units(seconds: float) -> str:
    """A length of time in its two largest units: 1m40s, 2h5m, 45s."""
    whole = max(round(seconds), 1)
    units = (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1))
    for big, size, small, unit in units:
        if whole >= size:
            rest = (whole % size) // unit
            return f"{whole // size}{big}" + (f"{rest}{small}" if rest else "")
    return f"{whole}s"


@main.command()
@config_option
@click.option(
    "--source",
    shell_complete=complete_sources,
    help="Only this source's events (also one no longer in the config).",
)
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="At most this many events.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@handle_errors
def events(config_path: str | None, source: str | None, limit: int, as_json: bool) -> int:
    """Recent events, newest first."""

    def for_people(e: dict[str, Any]) -> None:
        e["created_at"] = when(e["created_at"])

    def check_names(config: Config, state: State) -> None:
        # A source taken out of the config keeps its events: the state file's names count.
        if source:
            check_source_names(config, [source], also=state.snapshots.source_rows())

    return _listing(
        config_path,
        lambda store: store.events(source=source, limit=limit),
        as_json,
        ["id", "created_at", "source", "type", "key"],
        for_people,
        check_names,
    )


@main.command()
@config_option
@click.option(
    "--status",
    "status_",
    type=click.Choice(["pending", "delivered", "dead"]),
    help="Only deliveries in this state.",
)
@click.option(
    "--webhook",
    shell_complete=complete_webhooks,
    help="Only deliveries to this webhook (also one no longer in the config).",
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="At most this many deliveries.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@handle_errors
def deliveries(
    config_path: str | None, status_: str | None, webhook: str | None, limit: int, as_json: bool
) -> int:
    """The delivery queue and history, with attempt counts and the last error."""

    def for_people(d: dict[str, Any]) -> None:
        d["next_attempt_at"] = when(d["next_attempt_at"]) if d["status"] == "pending" else "-"

    def check_names(config: Config, state: State) -> None:
        # As `discard --webhook`: a webhook taken out of the config keeps its deliveries.
        if webhook:
            known = {*config.webhooks, *state.admin.delivery_counts()}
            check_webhook_name(webhook, sorted(known))

    return _listing(
        config_path,
        lambda store: store.deliveries(status=status_, webhook=webhook, limit=limit),
        as_json,
        ["id", "event_id", "webhook", "status", "attempts", "next_attempt_at", "last_error"],
        for_people,
        check_names,
    )
