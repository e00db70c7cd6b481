"""The plugin API: everything a source kind (bundled or third-party) imports, in one module.

A plugin subclasses `Source`, declares its `options` with `Option`, and implements `fetch`
with the `HttpClient` it is given; it registers itself in the `bridge.sources` entry point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from bridge.errors import SourceError
from bridge.http import HttpClient, Response, host_key, parse_retry_after
from bridge.model import (
    CHANGE_KINDS,
    MAX_DEPTH,
    OPTION_TYPES,
    Fetched,
    FetchState,
    Option,
    SourceSpec,
)

__all__ = [
    "CHANGE_KINDS",
    "MAX_DEPTH",
    "OPTION_TYPES",
    "Fetched",
    "FetchState",
    "HttpClient",
    "Option",
    "Response",
    "Source",
    "SourceError",
    "SourceSpec",
    "host_key",
    "parse_retry_after",
]


class Source(ABC):
    """A kind of source. Subclasses are found by name in the `bridge.sources` entry point group."""

    kind: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    default_on: ClassVar[frozenset[str]] = CHANGE_KINDS
    # Options that, given on a source, keep other options' `defaults:` values off it (GitHub's
    # `app:` takes the place of a `token:` from defaults); both on the source is check's affair.
    displaces: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init__(self, spec: SourceSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        """The source's unique name from the config."""
        return self.spec.name

    @property
    def host(self) -> str | None:
        """The host this source polls (`bridge.http.host_key` of its URL), or None if not one.

        The daemon runs the polls of one host from a queue, as many at once as `http.per_host`.
        """
        return None

    @property
    def items_expr(self) -> str | None:
        """JMESPath selecting the list of items in each page; None: the whole document is one."""
        return None

    @property
    def key_expr(self) -> str | None:
        """JMESPath giving an item's identity; None: the item's content hash."""
        return None

    @property
    def key_by_content(self) -> bool:
        """Whether an item `key_expr` finds nothing for is keyed by its content hash (True), as
        without `key_expr`, or fails the poll (False, the default: a `key:` that misses an item
        is a config or API problem to report)."""
        return False

    @property
    def item_model(self) -> tuple[str | None, ...]:
        """What makes the items of two polls comparable: the kind, items and key expressions.

        A source whose row was last polled under another model (re-added under an old name with
        another `items:` or `key:`) records a new baseline instead of a diff; `ignore` is not in
        it, since it changes what is compared, not which items there are.
        """
        return (self.kind, self.items_expr, self.key_expr)

    @property
    def ignore(self) -> tuple[str, ...]:
        """Dotted field paths left out of the comparison."""
        return self.spec.ignore

    @property
    def on(self) -> frozenset[str]:
        """Which change kinds are sent."""
        return self.spec.on if self.spec.on is not None else self.default_on

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Cross-option checks beyond types: a list of (key, problem); empty when valid."""
        return []

    @abstractmethod
    async def fetch(self, http: HttpClient, state: FetchState) -> Fetched:
        """Fetch the source once, conditionally on `state`; raise SourceError on failure."""
