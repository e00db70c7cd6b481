"""The commands that poll now: `bridge once` (every source, for cron) and `bridge poll`."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click
import orjson

from bridge.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    check_source_names,
    complete_sources,
    config_option,
    handle_errors,
    load,
    log_level_given,
    open_config_state,
    run_async,
    say,
)
from bridge.config import Config
from bridge.service import logs

if TYPE_CHECKING:
    from bridge.delivery.worker import Failure
    from bridge.polling.engine import Engine, PollResult
    from bridge.state import State

# Progress shows when one pass polls at least this many sources and stderr is a terminal.
PROGRESS_FROM = 10


@click.command()
@config_option
@click.argument("sources", nargs=-1, shell_complete=complete_sources)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print only what failed: polls, and deliveries attempted in this run (for cron).",
)
@handle_errors
def once(config_path: str | None, sources: tuple[str, ...], quiet: bool) -> int:
    """Poll the named sources (default: all) once, send what is due, exit."""
    config = load(config_path)
    check_source_names(config, sources)
    names = list(sources) or [s.name for s in config.sources]
    if quiet and not log_level_given():
        logs.quieter()  # failures are warnings: polls, and this run's deliveries (worker.py)
    return run_async(_once(config, names, quiet=quiet))


async def _once(config: Config, names: list[str], *, quiet: bool = False) -> int:
    from bridge.http import HttpClient
    from bridge.polling.engine import Engine

    state = open_config_state(config, create=True)
    failures: list[Failure] = []
    try:
        async with HttpClient(per_host=config.per_host) as http:
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
                    logs.progress(f"polling: {done}/{len(names)} sources{failed}")

            try:
                results = await engine.poll_many(names, progress=progress)
            finally:
                logs.progress("")  # the lines below replace it
            first_polls(engine, [r for r in results if r.result == "new"])
            if state.coordination.daemon_running():
                say.info("a `bridge run` is using this state file; it delivers")
            elif _anything_due(config, state, time.time()):
                from bridge.delivery.dispatcher import Dispatcher

                failures = await Dispatcher(config.webhooks, state.outbox, http).deliver_due()
    finally:
        state.close()
    counts: dict[str, int] = {}
    for r in results:
        counts[r.result] = counts.get(r.result, 0) + 1
    events = sum(len(r.bodies) for r in results)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    # Each failure had its line as it happened (a warning, so -q shows it); this is the tally.
    say.info(
        "polled %d sources (%s); %d events%s",
        len(results),
        summary,
        events,
        _failed_deliveries(failures),
    )
    return EXIT_FAILED if counts.get("error") or failures else EXIT_OK


def _anything_due(config: Config, state: State, now: float) -> bool:
    """Whether a configured webhook has a delivery that can be sent now. A pass that found no
    change (the usual cron run) then loads no delivery code at all."""
    for webhook in config.webhooks:
        due = state.outbox.next_due(webhook)
        if due is not None and due <= now:
            return True
    return False


def _failed_deliveries(failures: list[Failure]) -> str:
    if not failures:
        return ""
    n = len(failures)
    dead = sum(f.status == "dead" for f in failures)
    parts = []
    if n - dead:
        parts.append(f"{n - dead} queued for the next run")
    if dead:
        parts.append(f"{dead} dead (`bridge replay --dead` queues them again)")
    return f"; {n} deliver{'y' if n == 1 else 'ies'} failed ({', '.join(parts)})"


def first_polls(engine: Engine, new: list[PollResult]) -> None:
    """A line per source polled for the first time; one line for them all when there are more
    than PROGRESS_FROM (a first pass over thousands of sources is no place for thousands)."""
    if len(new) <= PROGRESS_FROM:
        for result in new:
            first_poll(engine, result)
        return
    items = sum(r.items or 0 for r in new)
    events = sum(len(r.bodies) for r in new)
    sent = f"; {events} events sent (on_first_poll: emit)" if events else ""
    say.info(
        "%d sources polled for the first time: baselines recorded (%d items)%s; changes from now "
        "on are sent",
        len(new),
        items,
        sent,
    )


def first_poll(engine: Engine, result: PollResult, *, dry_run: bool = False) -> None:
    """Say that a source's first poll recorded its baseline (or, with on_first_poll: emit,
    sent its items), and that from now on its changes are sent."""
    source = engine.sources[result.source]
    n = result.items or 0
    what = "the document" if source.items_expr is None else f"{n} item{'s' * (n != 1)}"
    fields = {"source": result.source}
    if dry_run:
        say.info(
            "%s: first poll: a real one records a baseline (%s) and sends changes after it "
            "(dry run: nothing stored or sent)",
            result.source,
            what,
            extra=fields,
        )
    elif source.spec.on_first_poll == "emit":
        say.info(
            "%s: first poll sent %d events for %s (on_first_poll: emit); changes from now on "
            "are sent",
            result.source,
            len(result.bodies),
            what,
            extra=fields,
        )
    else:
        say.info(
            "%s: baseline recorded (%s); changes from now on are sent",
            result.source,
            what,
            extra=fields,
        )


@click.command()
@config_option
@click.argument("source", shell_complete=complete_sources)
@click.option("--dry-run", is_flag=True, help="Store nothing and send nothing.")
@handle_errors
def poll(config_path: str | None, source: str, dry_run: bool) -> int:
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
    if result.result == "new":
        first_poll(engine, result, dry_run=dry_run)
    else:
        say.info(
            "%s: %s, %d events%s%s",
            name,
            result.result,
            len(result.bodies),
            f": {result.error}" if result.error else "",
            " (dry run: nothing stored or sent)" if dry_run else "",
            extra={"source": name, "error": result.error},
        )
    return EXIT_FAILED if result.result == "error" else EXIT_OK
