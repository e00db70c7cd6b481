"""What every `bridge` command shares: -c/--config, error handling and exit codes, the loop."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from bridge.config import Config, load_config
from bridge.errors import BridgeError, ConfigError, StateError
from bridge.state import State, open_state

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _default_config() -> str:
    return os.environ.get("BRIDGE_CONFIG", "bridge.yaml")


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config on every command."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        default=_default_config,
        show_default="./bridge.yaml or $BRIDGE_CONFIG",
        help="The config file.",
    )(f)


def handle_errors(f: Callable[..., int | None]) -> Callable[..., None]:
    """Turn our errors into one line on stderr and the SPEC's exit code; never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = f(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"bridge: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except StateError as exc:
            click.echo(f"bridge: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except BridgeError as exc:
            click.echo(f"bridge: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(code or EXIT_OK)

    return wrapper


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop."""
    return asyncio.run(coro)


def load(config_path: str) -> Config:
    """The config file, with ${ENV} from this process's environment."""
    return load_config(config_path, os.environ)


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
