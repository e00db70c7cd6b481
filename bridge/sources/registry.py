"""Source kinds by name, from the `bridge.sources` entry point group, loaded lazily and checked."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from bridge.errors import ConfigError

if TYPE_CHECKING:  # imported on first load(): it brings in the HTTP client
    from bridge.sources.base import Source

GROUP = "bridge.sources"


@cache
def known_kinds() -> tuple[str, ...]:
    """Names of every installed source kind, sorted."""
    return tuple(sorted({ep.name for ep in entry_points(group=GROUP)}))


@cache
def load(kind: str) -> type[Source]:
    """The Source class registered under `kind`; ConfigError listing the known kinds if none."""
    from bridge.sources.base import Source

    matches = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not matches:
        known = ", ".join(known_kinds()) or "none installed"
        raise ConfigError(f"unknown source kind {kind!r} (known: {known})")
    try:
        cls = matches[0].load()
    except Exception as exc:  # a broken third-party plugin must not crash `bridge check`
        raise ConfigError(f"source kind {kind!r} failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise ConfigError(f"source kind {kind!r} is not a bridge.sources.base.Source subclass")
    return cls
