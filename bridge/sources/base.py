"""The plugin contract between the engine and a source kind: Source, Option, FetchState, Fetched."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from bridge.http import HttpClient

CHANGE_KINDS = frozenset({"added", "changed", "removed"})

# Option types understood by the config loader; plugins declare their options with these.
OPTION_TYPES = frozenset(
    {"str", "int", "bool", "duration", "size", "mapping", "list", "choice", "any"}
)


@dataclass(frozen=True)
class Option:
    """One plugin option: its type, whether it is required, its default, and if it is a secret."""

    type: str = "str"
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    secret: bool = False
    help: str = ""


@dataclass(frozen=True)
class SourceSpec:
    """A validated source entry: common options resolved, plugin options in `options`."""

    name: str
    kind: str
    every: float | None  # seconds; None when `cron` is set
    cron: str | None
    jitter: float  # seconds of spread around each scheduled poll
    timeout: float
    on: frozenset[str] | None  # None: the plugin's default_on
    on_first_poll: str  # "baseline" | "emit"
    alert_after: int | None
    max_bytes: int
    webhooks: tuple[str, ...]
    ignore: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    file: str = ""
    line: int | None = None


@dataclass(frozen=True)
class FetchState:
    """What a source remembers between polls: validators, the last body hash, plugin extras."""

    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    url: str | None = None  # a permanent redirect's target, used instead of the configured URL
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fetched:
    """The outcome of one successful fetch.

    `unchanged` means a 304 or an identical body: `pages` is then empty and nothing is parsed.
    `complete` is False when paging stopped early with pages left, so absent items are not removed.
    """

    unchanged: bool
    state: FetchState
    pages: list[Any] = field(default_factory=list)
    complete: bool = True


class Source(ABC):
    """A kind of source. Subclasses are found by name in the `bridge.sources` entry point group."""

    kind: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    default_on: ClassVar[frozenset[str]] = CHANGE_KINDS

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
