"""The storage seam: what polling, delivering, the daemon and the commands need of the state.

Every backend (bridge/state/sqlite/, and any other) implements these Protocols, and nothing
outside bridge/state/ knows which one it talks to. This strict point of cut-off is where the
outbox's promises live: each method's docstring says what the backend guarantees, and the
contract suite in tests/state/ holds every backend to it. No in-process set stands in for a
promise written here: a second process on the same state must be able to rely on it too.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bridge.model import (
    Delivery,
    DeliveryStatus,
    Finished,
    KnownItems,
    PollCommit,
    SourceRow,
)

# An unchanged poll of a healthy source, written by a narrow update: its row (with only the
# poll times and result moved) and the lease the poll ran under.
Touched = tuple[SourceRow, int | None]

# The instance registry (Coordination.register/heartbeat): a daemon beats this often (seconds),
# and one silent for INSTANCE_TIMEOUT counts as dead where liveness is judged by heartbeats
# (PostgreSQL: instances on other machines). Three missed beats, well inside the promise that
# a dead instance's sources move on within 30 s.
HEARTBEAT_INTERVAL = 5.0
INSTANCE_TIMEOUT = 15.0

# Daemons sharing one state split the sources into this many shards (shard_of) and each holds a
# fair share of them (Coordination.share): enough that 30 instances get within 4 % of an even
# split, few enough that renewing all of them is one small statement per beat.
SHARDS = 256


def shard_of(name: str) -> int:
    """The shard a source belongs to: a hash of its name, the same in every process and version
    (CRC-32, not hash(): Python salts that per process)."""
    return zlib.crc32(name.encode()) % SHARDS


@dataclass(frozen=True)
class Share:
    """An instance's part of the sources, from Coordination.share.

    `held`: the shards it holds now and schedules. `surplus`: those of `held` above its fair
    share, wanted by an instance that joined; it stops scheduling them, writes what their polls
    left unwritten, and gives them back (Coordination.give_back). `agreed`: whether every live
    instance configures the same sources; while they differ (a rolling config change), a
    source whose shard is held by an instance without it in its config is polled by one that
    has it (Coordination.lease_strays).
    """

    held: frozenset[int]
    surplus: frozenset[int] = frozenset()
    agreed: bool = True


# Admin.sources(scheduled_at=...): a stored source no name given lists is still scheduled by some
# instance while its next poll is ahead, or overdue by less than this (seconds) or by less than
# its own interval (next poll - last poll) if that is longer; one long overdue was taken out of
# every config (a rolling change keeps the row a while, and nobody polls it any more).
SCHEDULED_GRACE = 600.0


class Snapshots(Protocol):
    """What polling reads and writes: source rows, item snapshots, rate-limited hosts."""

    def source_row(self, name: str) -> SourceRow:
        """The stored row of a source, or a fresh one (never polled) if there is none."""

    def source_rows(self) -> dict[str, SourceRow]:
        """Every stored source row by name, as one consistent read."""

    def generation(self) -> int:
        """A number that changes whenever another connection or process has committed since
        the last call; while it stays equal, rows read before are still current."""

    def item_hashes(self, source: str) -> dict[str, str]:
        """key -> compared-content hash of every stored item of a source."""

    def item_contents(self, source: str, keys: Sequence[str]) -> dict[str, Any]:
        """key -> stored item (parsed JSON) for those of `keys` that are stored."""

    def known_items(self, source: str) -> KnownItems | None:
        """The source's stored items as item_hashes and item_contents would give them now, if
        this state holds them in memory and can vouch for them; else None. Never a round trip
        or a wait: the event loop asks it before it sends a poll's reads to a worker thread."""

    def host_blocks(self, now: float) -> dict[str, float]:
        """Hosts (or GitHub token budgets) still off-limits at `now`, with until when."""

    def confirmations(self, source: str) -> dict[str, tuple[str, int]]:
        """key -> (candidate content hash, how many successful polls in a row saw it) of the
        source's changes waiting for `confirm:`, as the last commit_polls of it left them."""

    def commit_polls(
        self,
        commits: Iterable[PollCommit],
        host_blocks: Mapping[str, float] | None = None,
        touched: Sequence[Touched] = (),
    ) -> set[str]:
        """Write polls: each commit's row, snapshot changes, events and the events' pending
        deliveries (one per webhook), all in one transaction, or nothing at all.

        A commit (or touch) made under a poll lease (`lease` not None) is fenced: it is written
        only while that lease is still the source's current one, and writing it releases the
        lease. A fenced-out poll writes nothing; the names of those are returned, so that a
        poll whose lease was lost never commits a stale snapshot or sends an event twice.
        Deliveries take ids in the order of their events. `host_blocks` are kept (the later
        of two blocks of one host wins). A commit whose `confirmations` is not None replaces
        the source's pending confirmations with them in the same transaction (so a poll's
        count moves exactly when its snapshot does, and survives a restart); a fenced-out
        poll's are not written either.
        """


class Outbox(Protocol):
    """The delivery queue: claims and the attempts' outcomes."""

    def claim_due(
        self,
        webhook: str,
        now: float,
        limit: int,
        lease: float,
        finished: Sequence[Finished] = (),
    ) -> list[Delivery]:
        """Lease up to `limit` due pending deliveries of `webhook` for `lease` seconds, oldest
        first; `finished` attempts are recorded first, in the same transaction.

        Per-source order: a delivery is never claimed while another delivery of the same
        source to the same webhook holds a live lease, and one claim takes at most one
        delivery per source; so one source's deliveries to one webhook are never in flight
        together, whichever processes claim them.
        """

    def finish_attempts(self, finished: Sequence[Finished]) -> None:
        """Record attempts (and release their leases) in one transaction. A delivery
        discarded while its attempt was in flight stays dead unless the attempt delivered it."""

    def next_due(self, webhook: str) -> float | None:
        """When the earliest pending delivery of `webhook` can be claimed, or None."""


class Admin(Protocol):
    """The commands' (and the console's) reads and queue changes, and retention."""

    def sources(
        self,
        names: Sequence[str],
        *,
        match: str | None = None,
        failing: bool = False,
        offset: int = 0,
        limit: int | None = None,
        scheduled_at: float | None = None,
        only: str | None = None,
    ) -> tuple[int, list[SourceRow]]:
        """A page of the rows of `names`, in their order (a fresh row for one never stored):
        only names containing `match` (case-insensitive), only failing ones (failures > 0) if
        `failing`, only the one named `only` if given; `limit` None: all. Returns (how many
        match in all, the page), paged by the backend, so that a page of 10,000 sources costs
        a page.

        `scheduled_at` (the time now): after `names`, by name, also the stored rows of no name
        in `names` that some instance still schedules at that time (next poll after
        `scheduled_at` - SCHEDULED_GRACE, or - the row's interval if longer): a source in
        another instance's config only. Filtered, counted and paged with the others."""

    def events(self, *, source: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Recent events, newest first: id, source, type, key, created_at, event (parsed)."""

    def event_ids_known(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids exist."""

    def deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        webhook: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Deliveries, newest first, with event id and type, attempts and the last error; only
        those of `status`, to `webhook`, of `source` when given."""

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        """Every attempt of one delivery, oldest first: at, status, error, duration."""

    def delivery_counts(self, webhooks: Iterable[str] = ()) -> dict[str, dict[str, int]]:
        """webhook -> {pending, delivered, dead}; the named webhooks appear even at 0."""

    def pending_by_webhook(self) -> dict[str, int]:
        """webhook -> how many deliveries are pending for it."""

    def instances(self, now: float) -> list[dict[str, Any]]:
        """The live instances (a heartbeat within INSTANCE_TIMEOUT of `now`), oldest first:
        id, host, pid, since (registered at) and heartbeat (epoch seconds)."""

    def requeue(
        self,
        now: float,
        *,
        event_ids: Sequence[str] = (),
        dead: bool = False,
        webhook: str | None = None,
        source: str | None = None,
        webhooks: Sequence[str] | None = None,
    ) -> int:
        """Queue matching deliveries again, due now (replay); attempt history is kept; the
        events keep their ids. `webhooks`: only deliveries to these. Returns how many."""

    def add_deliveries(self, event_id: str, webhooks: Sequence[str], now: float) -> int:
        """Queue an event to those `webhooks` it has no delivery for yet; returns how many."""

    def discard(
        self,
        now: float,
        *,
        event_ids: Sequence[str] = (),
        webhook: str | None = None,
        source: str | None = None,
    ) -> tuple[int, int]:
        """Matching pending deliveries become dead; returns (discarded, of them in flight)."""

    def trim(self, before: float, *, batch: int = 5000) -> int:
        """Delete history older than `before` in batches; pending work is always kept."""


class Coordination(Protocol):
    """Who polls what: the daemon's claim on the state, and one poll of a source at a time."""

    @property
    def instance_id(self) -> str:
        """This process's name as the owner of leases."""

    def register(self, now: float) -> None:
        """Record this instance (its id, host and pid) in the state as live since `now`."""

    def heartbeat(self, now: float) -> None:
        """Mark this instance alive at `now` (registering it if it is not). Where liveness
        is judged by heartbeats, an instance silent for INSTANCE_TIMEOUT is dead: the poll
        leases it holds are free to others at once, before they expire."""

    def hold_daemon(self) -> None:
        """Claim the state for this process's `bridge run`; StateError if the backend allows
        one daemon and another holds it. Held until release_daemon() or the process dies.
        A backend that allows several (PostgreSQL) registers the instance instead, and keeps
        its heartbeat while it is held."""

    def release_daemon(self) -> None:
        """Give up the daemon's claim (a no-op when not held)."""

    def daemon_running(self) -> bool:
        """Whether a `bridge run` (other than this process) uses the state right now."""

    def share(self, now: float, sources: str) -> Share | None:
        """Renew the shards this instance holds and take free ones up to its fair share; None
        where one daemon does all the work (SQLite). Called by a daemon once per heartbeat,
        with a digest of the names of the sources in its config (`sources`).

        The fair share is SHARDS split evenly over the live instances (ranked by id, so every
        instance computes the same split). A shard is free when no instance holds it or its
        holder stopped renewing it (dead, paused or cut off) for INSTANCE_TIMEOUT. A shard
        this instance held that another took meanwhile is no longer in `held`."""

    def give_back(self, shards: Iterable[int]) -> None:
        """Release shards this instance holds (its surplus, or all of them when it stops)."""

    def lease_polls(
        self, names: Sequence[str], now: float, until: float, *, anywhere: bool = False
    ) -> dict[str, int]:
        """Lease sources for polling until `until`; returns name -> lease token for those
        granted. A source is granted only when no live lease holds it (released, expired, or
        held by a process that is gone): so a source is polled by one process at a time, and
        one poll at a time within it. A lease ends with the poll's commit (commit_polls).

        Once this instance takes part in share(), a source is granted only while its shard is
        held here, unless `anywhere` (a poll a user asked for): an instance that lost a shard
        and has not heard yet cannot poll the sources the new holder schedules."""

    def lease_strays(self, strays: Mapping[str, float], now: float, until: float) -> dict[str, int]:
        """Lease sources of shards held elsewhere (name -> seconds), like lease_polls; each is
        granted only when this instance polled it last or nobody has for its seconds: the
        holder of its shard does not have it in its config. The holder wins again once it
        has it: its poll makes this instance no longer the last to poll."""

    def release_polls(self, leases: Mapping[str, int]) -> None:
        """Release leases whose polls will not commit (dropped before they ran)."""


T = TypeVar("T")


async def off_loop(threaded: bool, func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` of a state's part, in a worker thread when the state is `threaded`
    (State.threaded): on PostgreSQL a round trip, or a batch of thousands of rows, must never
    hold the event loop. SQLite's connection belongs to the loop's thread, and a call takes well
    under a poll's time there: it is made in place."""
    if threaded:
        return await asyncio.to_thread(func, *args)
    return func(*args)


class State(Protocol):
    """One opened state: its parts, and its health."""

    @property
    def threaded(self) -> bool:
        """Whether its parts may be called from other threads while the event loop's thread
        uses them too (the daemon then writes from a worker thread, off the loop)."""

    @property
    def location(self) -> str:
        """Where the state is: a SQLite file's path, or a PostgreSQL URL (with its password:
        print it through bridge.state.redact_location)."""

    @property
    def snapshots(self) -> Snapshots:
        """Polling's part."""

    @property
    def outbox(self) -> Outbox:
        """The delivery queue."""

    @property
    def admin(self) -> Admin:
        """The commands' part."""

    @property
    def coordination(self) -> Coordination:
        """Who polls what."""

    def writable(self) -> bool:
        """Whether a write can be made right now (for /healthz); callable from a thread and
        waiting at most about a second."""

    def problem(self) -> str | None:
        """What keeps this process's writes from lasting, as one line naming the state, or None.

        Two things are promised to be seen: the state removed or replaced under the open
        connection (its writes would go where nobody reads them again), and writes failing
        (a full disk): the last write failed and none has succeeded since. Cheap enough to ask
        every few seconds from the event loop; it never creates anything.
        """

    def close(self) -> None:
        """Close the state's connections."""

    @property
    def transfer(self) -> Transfer:
        """Copying the whole state out, or into an empty one (`bridge copy-state`)."""

    def watch_deliveries(self, wake: Callable[[set[str] | None], object]) -> None:
        """Until close(), call `wake(webhooks)` from a thread of the state's own whenever some
        connection commits new pending deliveries (replay, another instance's polls), with the
        webhooks they are for; None: any webhook (they may have been missed, or are too many
        to name). Best effort: a wake can come late or not at all (the server away), so the
        delivery workers still look on their own. A backend where no other process delivers
        from the state (SQLite: one daemon per file) does nothing."""


# A copy's rows (Transfer), backend-neutral: a table's name (bridge.state.copy.TABLES) and a
# batch of its rows, each a dict keyed by column name, with plain Python values (booleans as
# bool, blobs as bytes, times as epoch seconds).
Rows = tuple[str, list[dict[str, Any]]]


class Transfer(Protocol):
    """A whole state read out and written into another backend's (`bridge copy-state`)."""

    def export_rows(self, batch: int = 1000) -> Iterable[Rows]:
        """The copied tables' rows, table after table in the order of bridge.state.copy.TABLES,
        in batches of at most `batch`, read in one transaction: a consistent snapshot however
        much a daemon writes meanwhile. Only pending and dead deliveries (and their attempts)
        are read; the source rows without their poll leases. Closing the iterator ends it."""

    def import_rows(self, batches: Iterable[Rows]) -> dict[str, int]:
        """Write exported rows into this state, which must hold no source, event or delivery
        (bridge.state.copy.NotEmpty otherwise), all in one transaction or nothing. Rows keep
        their ids, so events keep their `webhook-id`s and deliveries their order, and ids made
        later come after every copied one. Returns how many rows each table got."""
