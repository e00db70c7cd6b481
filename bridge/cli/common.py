"""What every `bridge` command shares: -c/--config and where the config is found, error
handling and exit codes, the commands' own lines on stderr, shell completion of names, the loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from bridge.config import Config, load_config
from bridge.errors import BridgeError, ConfigError, StateError
from bridge.service import logs
from bridge.state import State, open_state

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# The commands' own lines on stderr (summaries, a first poll's baseline, errors): `bridge: ...`
# in text, JSON records with --log-format json, like every other line there.
say = logging.getLogger(logs.CLI)

CONFIG_HELP = (
    "The config file. Default: $BRIDGE_CONFIG, else the first of ./bridge.yaml, "
    "$XDG_CONFIG_HOME/bridge/bridge.yaml (~/.config/...), /etc/bridge/bridge.yaml."
)


def prog() -> str:
    """The name this program was run as: `bridge`, or `bridge-push` where iproute2's `bridge`
    comes first on PATH."""
    ctx = click.get_current_context(silent=True)
    name = ctx.find_root().info_name if ctx is not None else None
    return name or "bridge"


def config_places(env: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a config is looked for without -c and $BRIDGE_CONFIG, in order (SPEC §2)."""
    xdg = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return [
        Path("bridge.yaml"),
        Path(xdg) / "bridge" / "bridge.yaml",
        Path("/etc/bridge/bridge.yaml"),
    ]


def find_config(given: str | None = None) -> str:
    """The config a command reads: its own -c, else the one before the command, else
    $BRIDGE_CONFIG, else the first of config_places() that exists; ConfigError (exit 2) naming
    the places looked when there is none."""
    if given:
        return given
    ctx = click.get_current_context(silent=True)
    before = ctx.find_root().params.get("config") if ctx is not None else None
    if before:
        return str(before)
    if os.environ.get("BRIDGE_CONFIG"):
        return os.environ["BRIDGE_CONFIG"]
    places = config_places()
    for place in places:
        if place.is_file():
            return str(place)
    looked = ", ".join(["./bridge.yaml", *(str(p) for p in places[1:])])
    raise ConfigError(
        f"no config file: looked for {looked} (and $BRIDGE_CONFIG is not set); "
        f"`{prog()} init` writes a starter ./bridge.yaml, or name one with -c FILE"
    )


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config on a command (it wins over one given before the command)."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help=CONFIG_HELP,
    )(f)


def handle_errors(f: Callable[..., int | None]) -> Callable[..., None]:
    """Turn our errors into one line on stderr and the SPEC's exit code; never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = f(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc))
            sys.exit(EXIT_USAGE)
        except (StateError, BridgeError) as exc:
            fail(str(exc))
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(code or EXIT_OK)

    return wrapper


def fail(message: str) -> None:
    """One error line of a command on stderr (a JSON record with --log-format json)."""
    if not logging.getLogger().handlers:  # before logging is set up: plain, as it would be
        click.echo(f"bridge: {message}", err=True)
        return
    say.error("%s", message, extra={"error": message})


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop."""
    return asyncio.run(coro)


def load(config_path: str | None) -> Config:
    """The config file (-c, or found as find_config says), with ${ENV} from this process's
    environment."""
    return load_config(find_config(config_path), os.environ)


def load_for_queue(config_path: str | None) -> Config:
    """The config for the commands that only read or change the queue (status, events,
    deliveries, replay, discard): they send nothing, so a secret's unset variable is no error."""
    return load_config(find_config(config_path), os.environ, secrets="placeholder")


def log_level_given() -> bool:
    """Whether the user chose --log-level, rather than taking the default."""
    root = click.get_current_context().find_root()
    return root.get_parameter_source("log_level") not in (None, ParameterSource.DEFAULT)


def open_config_state(config: Config, *, create: bool = False) -> State:
    """The config's state. Only `once`, `poll` and `run` `create` one: the other commands
    refuse a missing state rather than make an empty one."""
    root = click.get_current_context().find_root()
    busy_timeout = float(root.params.get("busy_timeout") or 5.0)
    return open_state(config.state, create=create, busy_timeout=busy_timeout)


def check_source_names(config: Config, names: Iterable[str], also: Iterable[str] = ()) -> None:
    """ConfigError (exit 2) for a name that is neither a configured source nor one of `also`."""
    known = [s.name for s in config.sources]
    others = set(also) - set(known)
    for name in names:
        if name not in known and name not in others:
            listed = ", ".join([*known, *sorted(others)]) or "none"
            raise ConfigError(f"unknown source {name!r} (known: {listed})")


def check_webhook_name(webhook: str, known: Iterable[str]) -> None:
    """ConfigError (exit 2) for a webhook name not among `known`."""
    names = list(known)
    if webhook not in names:
        raise ConfigError(f"unknown webhook {webhook!r} (known: {', '.join(names) or 'none'})")


# --- shell completion ----------------------------------------------------------------------


def _config_quietly(ctx: click.Context) -> Config | None:
    # Completion runs on every Tab: a missing or broken config completes nothing, and prints
    # nothing that would land in the user's command line. Names need no secret.
    try:
        return load_for_queue(ctx.params.get("config_path") or ctx.find_root().params.get("config"))
    except Exception:
        return None


def complete_sources(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The config's source names starting with `incomplete` (not those already given)."""
    config = _config_quietly(ctx)
    if config is None:
        return []
    given = ctx.params.get(param.name or "") or ()
    given = given if isinstance(given, tuple) else ()
    return [s.name for s in config.sources if s.name.startswith(incomplete) and s.name not in given]


def complete_webhooks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The config's webhook names starting with `incomplete`."""
    config = _config_quietly(ctx)
    if config is None:
        return []
    return [name for name in config.webhooks if name.startswith(incomplete)]
