"""The plain objects every layer shares: a source's spec and fetch state, a poll's commit,
events, deliveries and finished attempts. No SQL and no I/O here: only data and its statuses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

# What one poll came to: "new" is the first (baseline) poll of a source.
PollOutcome = Literal["new", "changed", "unchanged", "error"]
# Where a delivery stands: waiting (or being sent), done after a 2xx, or given up.
DeliveryStatus = Literal["pending", "delivered", "dead"]
ChangeKind = Literal["added", "changed", "removed"]

CHANGE_KINDS = frozenset({"added", "changed", "removed"})

# How deeply arrays and objects may nest in a page of an answer (`[]` is 1 level, `[[]]` 2); a
# deeper one is a failed poll, the first as every later one. Below it every step works with room
# to spare: orjson encodes up to 254 levels (an event wraps an item in 2 more), and jsonpatch,
# deepcopy and the ignore filter recurse a few Python frames per level, far from the limit of 1000.
MAX_DEPTH = 128

# Option types understood by the config loader; plugins declare their options with these.
# "jmespath" is a string that must compile as polls compile it (`bridge check` refuses it if not).
# What goes into a request is refused by `bridge check` where every poll would fail on it:
# "headers" is a mapping of header names to string values, "token" a string sent in a header
# (a secret), "method" an HTTP method; none may hold a line break.
OPTION_TYPES = frozenset(
    {
        "str", "int", "bool", "duration", "size", "mapping", "list", "choice", "jmespath", "any",
        "headers", "token", "method",
    }
)  # fmt: skip


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
    tz: str | None = None  # the cron line's time zone (an IANA name); None: UTC
    options: Mapping[str, Any] = field(default_factory=dict)
    when: str | None = None  # a Jinja2 expression: a change event it is false for is not sent
    confirm: int = 1  # how many successful polls in a row must see a change before it is sent
    # Where it is written: no part of what it is, so a reload that finds a comment added above
    # it, or the file named another way, finds no change.
    file: str = field(default="", compare=False)
    line: int | None = field(default=None, compare=False)


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


@dataclass
class SourceRow:
    """What the state knows of one source between polls."""

    name: str
    fetch_state: FetchState = field(default_factory=FetchState)
    baselined: bool = False
    last_poll_at: float | None = None
    last_result: str | None = None
    last_error: str | None = None
    last_change_at: float | None = None
    next_poll_at: float | None = None
    failures: int = 0
    failing_since: float | None = None
    alerted: bool = False
    # The fingerprint of the item model (kind, items and key expressions) the snapshot was taken
    # under; None for a row from before it was kept, which takes the current one.
    item_model: str | None = None

    def copy(self) -> SourceRow:
        """A shallow copy (its FetchState is immutable), far cheaper than dataclasses.replace()."""
        row = object.__new__(SourceRow)
        row.__dict__.update(self.__dict__)
        return row


@dataclass(frozen=True)
class NewEvent:
    """An event to insert, with the webhooks it goes to."""

    id: str
    source: str
    type: str
    key: str | None
    created_at: float
    body: bytes
    webhooks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KnownItems:
    """A source's stored items as a state holds them in memory (Snapshots.known_items): key ->
    compared-content hash, and key -> the stored JSON text. Never changed once made."""

    hashes: Mapping[str, str]
    contents: Mapping[str, bytes]

    def items(self, keys: Iterable[str]) -> dict[str, Any]:
        """key -> stored item (parsed JSON) for those of `keys` that are stored, as
        Snapshots.item_contents gives them."""
        return {key: orjson.loads(self.contents[key]) for key in keys if key in self.contents}


@dataclass
class PollCommit:
    """Everything one poll writes: the source row, snapshot changes, events. One transaction."""

    row: SourceRow
    result: PollOutcome
    duration: float
    upserts: list[tuple[str, str, bytes]] = field(default_factory=list)  # key, hash, content
    deletes: list[str] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    history: bool = True  # whether to keep a polls row (unchanged polls are not kept)
    lease: int | None = None  # the poll lease it ran under, which fences its commit
    # The source's changes waiting for `confirm:` after this poll, key -> (candidate hash, polls
    # in a row that saw it), replacing the stored ones; None: they stay as stored.
    confirmations: dict[str, tuple[str, int]] | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """The outcome of one delivery attempt, to record: delivered, pending again, or dead."""

    delivery_id: int
    status: DeliveryStatus
    at: float
    duration: float
    http_status: int | None
    error: str | None
    next_attempt_at: float | None = None


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery with its event's id and body."""

    id: int
    event_id: str
    webhook: str
    source: str
    attempts: int
    body: bytes
