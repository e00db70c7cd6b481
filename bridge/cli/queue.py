"""The commands that change the delivery queue: `bridge replay` and `bridge discard`."""

from __future__ import annotations

import time
from collections.abc import Iterable

import click

from bridge.cli.common import (
    EXIT_OK,
    check_source_names,
    check_webhook_name,
    complete_sources,
    complete_webhooks,
    config_option,
    handle_errors,
    load_for_queue,
    open_config_state,
)
from bridge.config import Config
from bridge.errors import ConfigError
from bridge.state import Admin


@click.command()
@config_option
@click.argument("event_ids", nargs=-1)
@click.option("--dead", is_flag=True, help="Replay every dead delivery (narrow with the options).")
@click.option(
    "--webhook", shell_complete=complete_webhooks, help="Only deliveries to this webhook."
)
@click.option(
    "--source", shell_complete=complete_sources, help="Only deliveries of this source's events."
)
@handle_errors
def replay(
    config_path: str | None,
    event_ids: tuple[str, ...],
    dead: bool,
    webhook: str | None,
    source: str | None,
) -> int:
    """Queue deliveries again; the event keeps its webhook-id."""
    if bool(event_ids) == dead:
        raise ConfigError("give EVENT_ID... or --dead, not both and not neither")
    config = load_for_queue(config_path)
    if webhook:
        check_webhook_name(webhook, config.webhooks)
    state = open_config_state(config)
    try:
        store = state.admin
        _check_event_ids(store, event_ids)
        _check_source(config, state.snapshots.source_rows(), source)
        now = time.time()
        if webhook and event_ids:
            for event_id in event_ids:
                store.add_deliveries(event_id, [webhook], now)
        # Only to configured webhooks: a removed one's deliveries would wait with no sender.
        n = store.requeue(
            now,
            event_ids=event_ids,
            dead=dead,
            webhook=webhook,
            source=source,
            webhooks=list(config.webhooks),
        )
        running = state.coordination.daemon_running()
    finally:
        state.close()
    where = (
        "the running daemon sends them" if running else "`bridge once` or `bridge run` sends them"
    )

    click.echo(f"queued {_deliveries(n)} again; {where}")
    return EXIT_OK


@click.command()
@config_option
@click.argument("event_ids", nargs=-1)
@click.option(
    "--webhook",
    shell_complete=complete_webhooks,
    help="Only deliveries to this webhook (configured or not).",
)
@click.option(
    "--source", shell_complete=complete_sources, help="Only deliveries of this source's events."
)
@handle_errors
def discard(
    config_path: str | None,
    event_ids: tuple[str, ...],
    webhook: str | None,
    source: str | None,
) -> int:
    """Give up on pending deliveries: they become dead (kept until retention trims them)."""
    if not (event_ids or webhook or source):
        raise ConfigError("give EVENT_ID..., --webhook or --source: which deliveries to discard")
    config = load_for_queue(config_path)
    state = open_config_state(config)
    try:
        store = state.admin
        _check_event_ids(store, event_ids)
        _check_source(config, state.snapshots.source_rows(), source)
        if webhook:
            _check_webhook(config, set(store.delivery_counts()), webhook)
        discarded, in_flight = store.discard(
            time.time(), event_ids=event_ids, webhook=webhook, source=source
        )
    finally:
        state.close()
    message = f"discarded {_deliveries(discarded)}; `bridge deliveries --status dead` lists them"
    if in_flight:
        message += (
            f"; {_deliveries(in_flight)} being sent at this moment will count as delivered "
            "if that attempt succeeds"
        )
    click.echo(message)
    return EXIT_OK


def _deliveries(n: int) -> str:
    return f"{n} delivery" if n == 1 else f"{n} deliveries"


def _check_event_ids(store: Admin, event_ids: tuple[str, ...]) -> None:
    unknown = sorted(set(event_ids) - store.event_ids_known(event_ids))
    if unknown:
        raise ConfigError(f"unknown event id {unknown[0]!r}")


def _check_source(config: Config, stored: Iterable[str], source: str | None) -> None:
    # A source taken out of the config may still have deliveries: the state file's names count.
    if source and config.source(source) is None:
        check_source_names(config, [source], also=stored)


def _check_webhook(config: Config, with_deliveries: set[str], webhook: str) -> None:
    # A webhook taken out of the config is the usual one to discard for, so the config's names
    # and the state file's are both allowed: a typo in either is caught.
    check_webhook_name(webhook, sorted({*config.webhooks, *with_deliveries}))
