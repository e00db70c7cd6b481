"""The commands for trying bridge out and setting it up: init, listen, demo."""

from __future__ import annotations

import os

import click

from bridge.cli.common import (
    EXIT_OK,
    config_option,
    handle_errors,
    load,
    log_level_given,
    prog,
    run_async,
)
from bridge.errors import ConfigError
from bridge.service import logs


def _given_config(config_path: str | None) -> str | None:
    # -c after the command, else before it; None when neither was given.
    return config_path or click.get_current_context().find_root().params.get("config")


@click.command()
@config_option
@handle_errors
def init(config_path: str | None) -> int:
    """Write a commented starter config (never overwrites one)."""
    from importlib.resources import files

    config_path = _given_config(config_path) or os.environ.get("BRIDGE_CONFIG") or "bridge.yaml"

    starter = files("bridge.cli").joinpath("starter.yaml").read_text(encoding="utf-8")
    try:
        with open(config_path, "x", encoding="utf-8") as f:  # "x": fails if the file exists
            f.write(starter)
    except FileExistsError:
        raise ConfigError(
            f"{config_path} already exists; not overwriting it "
            "(move it away, or write elsewhere with -c OTHER.yaml)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot write it: {exc.strerror or exc}") from None
    flag = "" if config_path == "bridge.yaml" else f" -c {config_path}"
    click.echo(f"wrote {config_path}: a starter config with comments; edit it, then")
    name = prog()
    click.echo(f"  {name} check{flag}    validate it")
    click.echo(f"  {name} once{flag}     poll once and print what changed")
    click.echo(f"  {name} run{flag}      keep polling (Ctrl-C stops)")
    return EXIT_OK


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Also verify with the secrets of this config's webhooks (its ${ENV} must be set).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=9000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    envvar="BRIDGE_LISTEN_SECRET",
    help="whsec_... to verify signatures with; repeat for several. Default $BRIDGE_LISTEN_SECRET.",
)
@handle_errors
def listen(config_path: str | None, host: str, port: int, secrets: tuple[str, ...]) -> int:
    """A local receiver: verify signatures, print events."""
    from bridge.cli.listen import serve
    from bridge.config.units import parse_secret

    keys = []
    given = _given_config(config_path)
    if given:  # only when asked: listen needs no config
        for spec in load(given).webhooks.values():
            keys += [key for key in spec.secrets if key not in keys]
    for secret in secrets:
        try:
            keys.append(parse_secret(secret.strip()))
        except ValueError as exc:
            raise ConfigError(f"--secret: {exc}") from None  # the message never quotes it
    try:
        return run_async(serve(host, port, keys))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@handle_errors
def demo(duration: float | None) -> int:
    """Watch it work in seconds, on this machine alone.

    It writes and runs a config of its own, in a temporary folder: -c does not apply."""
    from bridge.cli.demo import run_demo

    if not log_level_given():
        logs.quieter()  # the demo narrates; routine daemon logs would drown it
    return run_async(run_demo(duration=duration))
