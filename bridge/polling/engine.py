"""Poll sources end to end: lease, fetch, assess, and commit the events under the lease."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import orjson

from bridge.config import Config
from bridge.errors import BridgeError, SourceError, StateError
from bridge.http import HttpClient
from bridge.model import PollCommit, PollOutcome, SourceRow
from bridge.polling.assess import SnapshotReads, assess, failed, fetch_state, item_model
from bridge.polling.conditions import Conditions
from bridge.polling.lanes import let_go
from bridge.sources.base import Fetched, Source
from bridge.sources.registry import load
from bridge.state import State, Touched, off_loop

log = logging.getLogger("bridge.polling.engine")

# Unchanged polls only move timestamps and validators; writing them in batches keeps a pass over
# thousands of sources from paying one transaction each. Losing a batch to a crash costs nothing
# but one unconditional fetch. In `poll_many` changed polls are batched too: each keeps its
# snapshot, events and deliveries in one transaction, and one lost to a crash is detected again,
# since its snapshot was not written either.
FLUSH_EVERY = 2000  # the daemon's FLUSH_INTERVAL of polls at 200 a second
# How often cached source rows are checked against other processes' writes (`bridge once` beside
# the daemon). A row stale for that long costs at most one unconditional fetch: snapshots are
# always read from the state.
ROWS_RECHECK = 1.0


T = TypeVar("T")


@dataclass
class _Batch:
    """Buffered polls taken out to be written together (Engine.flush)."""

    changes: list[PollCommit]
    others: list[PollCommit]
    blocks: dict[str, float]
    touched: list[Touched]


def poll_lease(timeout: float) -> float:
    """How long a poll's lease lasts (seconds): long enough for a poll that waits its turn at a
    busy host and then pages with `timeout` per request. A poll that outlives it writes nothing
    and is polled again; a process that dies frees its leases at once (the backend's promise)."""
    return max(300.0, 10 * timeout)


class PollObserver(Protocol):
    """What the engine reports each poll to (the daemon's metrics)."""

    def poll(self, source: str, result: str, duration: float, event_types: Iterable[str]) -> None:
        """One poll, counted once it is stored."""

    def when_errors(self, source: str, count: int) -> None:
        """`count` events of one poll of `source` for which `when:` raised (they were not sent)."""


@dataclass
class PollResult:
    """The outcome of one poll: new (first poll), changed, unchanged or error, and its events;
    or skipped, when another poll of the source held it."""

    source: str
    result: PollOutcome | Literal["skipped"]
    duration: float
    bodies: list[bytes] = field(default_factory=list)
    error: str | None = None
    items: int | None = None  # on a first poll: how many items its snapshot holds

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events as receivers get them; parsed on demand, since `once` only counts them."""
        return [orjson.loads(body) for body in self.bodies]


def _news(before: SourceRow, after: SourceRow) -> bool:
    """Whether a poll changed what `status` (and an operator) reads of a source: its result,
    error, failures, alert or baseline; a failed poll always does (its failure count). Such a
    poll is written at once; one that moved only times and validators waits for the batch, since
    losing it costs one unconditional fetch and nothing anybody reads."""
    return (
        after.last_result != before.last_result
        or after.failures != before.failures
        or after.last_error != before.last_error
        or after.failing_since != before.failing_since
        or after.alerted != before.alerted
        or after.baselined != before.baselined
        or after.last_change_at != before.last_change_at
    )


def make_sources(config: Config) -> dict[str, Source]:
    """Instantiate each configured source through its registered kind."""
    return {spec.name: load(spec.kind)(spec) for spec in config.sources}


class Engine:
    """Polls sources with the HTTP client and commits what they found to the state.

    Each poll runs under a lease of its source (Coordination.lease_polls), taken in batches by
    `lease` (the scheduler's due sources at one wake-up) or by `poll` itself; its commit is
    fenced by that lease. `committed` is told which webhooks got new deliveries.
    """

    def __init__(
        self,
        config: Config,
        state: State,
        http: HttpClient,
        *,
        metrics: PollObserver | None = None,
        committed: Callable[[set[str]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        # The config and the sources live as long as the process: kept out of the cyclic GC's
        # full passes, which otherwise walk them all again and again.
        gc.freeze()
        self.config = config
        self.state = state
        self.snapshots = state.snapshots
        self.reads = SnapshotReads(state.snapshots, threaded=state.threaded)
        self.http = http
        self.metrics = metrics  # None: nothing is counted (`once` and `poll` serve no /metrics)
        self.committed = committed
        self.clock = clock
        self.sources = make_sources(config)
        self._models: dict[str, str] = {}  # source -> item_model(source), worked out once
        # One length for every lease: a wake-up's sources are leased together.
        self._lease_length = poll_lease(max((s.timeout for s in config.sources), default=0.0))
        self.conditions = Conditions(observer=metrics)  # `when:`, in the shared renderer
        # A host that asked to be left alone (429, Retry-After) is, across runs: `bridge once`
        # from cron must not ask it again a minute later.
        for host, until in self.snapshots.host_blocks(time.time()).items():
            http.block(host, until, new=False)
        self._leases: dict[str, int] = {}  # leased sources whose poll has not started yet
        # Leases of polls that could not be written (the state failed): given back at the next
        # claim, so that those sources are polled again then, not when the leases run out.
        self._unwritten: dict[str, int] = {}
        self._flushing: asyncio.Future[None] | None = None  # a flush_async writing now
        self._flush_task: asyncio.Task[None] | None = None  # one started by _flush_soon
        # A daemon's changed polls on a threaded state, waiting to be committed together
        # (_commit_together), each with the future its poll awaits.
        self._group: list[tuple[PollCommit, asyncio.Future[None]]] = []
        self._group_task: asyncio.Task[None] | None = None
        # Done when a group is written (or failed to be), for flush_async: the group being
        # written, and the one forming. Not the polls' own waiters: a cancelled poll's is done
        # at once, while its commit is still being written with its group.
        self._group_writing: asyncio.Future[None] | None = None
        self._group_forming: asyncio.Future[None] | None = None
        self._buffer: dict[str, PollCommit] = {}
        self._changes: dict[str, PollCommit] = {}  # changed polls held by poll_many
        # Unchanged polls of healthy sources (nearly every poll of a daemon) keep only their new
        # times and lease until written, not their PollCommit and row: those outlived the young
        # GC generations, and the full collections they caused cost a steady poll measurably.
        self._touched: dict[str, tuple[float | None, float | None, str | None, int | None]] = {}
        self._batching = False
        # Source rows as committed, read in one query; dropped when another process writes.
        self._rows: dict[str, SourceRow] | None = None
        self._rows_version = -1
        self._rows_checked = -ROWS_RECHECK

    # --- leases ------------------------------------------------------------------------------

    def lease(
        self,
        names: list[str],
        *,
        anywhere: bool = False,
        strays: Mapping[str, float] | None = None,
    ) -> list[str]:
        """Lease these sources for a poll each; returns those granted, in order.

        A source is refused while a poll of it holds its lease: still running here, or in
        another process; and, among daemons sharing the state, when another daemon schedules
        it, unless `anywhere` (Coordination.lease_polls) or it is one of the `strays` (name ->
        seconds) that nobody else polled for that long (Coordination.lease_strays). Polls done
        here but not yet written are written first, since writing a poll ends its lease.
        """
        if self._waits_for_flush(names):
            self.flush()
        granted = self._grant(names, anywhere, strays)
        self._leases.update(granted)
        return [n for n in names if n in granted]

    async def lease_async(
        self, names: list[str], *, strays: Mapping[str, float] | None = None
    ) -> list[str]:
        """lease(), with its writes made off the event loop where the state allows it (the
        scheduler's claim of a wake-up's sources)."""
        if self._flushing is not None or self._waits_for_flush(names):
            await self.flush_async()
        granted = await self._off_loop(self._grant, names, False, strays)
        self._leases.update(granted)
        return [n for n in names if n in granted]

    def _waits_for_flush(self, names: list[str]) -> bool:
        return not (
            self._touched.keys().isdisjoint(names)
            and self._buffer.keys().isdisjoint(names)
            and self._changes.keys().isdisjoint(names)
        )

    def _grant(
        self, names: list[str], anywhere: bool, strays: Mapping[str, float] | None
    ) -> dict[str, int]:
        # May run in a worker thread (_off_loop): it reads and writes nothing of the engine's
        # but the leases of unwritten polls, which only the event loop's thread adds to.
        if self._unwritten:
            unwritten = dict(self._unwritten)
            self.state.coordination.release_polls(unwritten)
            for name in unwritten:
                self._unwritten.pop(name, None)
        now = time.time()
        until = now + self._lease_length
        coordination = self.state.coordination
        if strays is not None:
            return coordination.lease_strays(strays, now, until)
        return coordination.lease_polls(names, now, until, anywhere=anywhere)

    async def _off_loop(self, func: Callable[..., T], *args: Any) -> T:
        return await off_loop(self.state.threaded, func, *args)

    def forget_rows(self) -> None:
        """Read the source rows afresh before the next poll: this instance gained sources whose
        rows another instance wrote without telling (Snapshots.held_here on PostgreSQL)."""
        self._rows = None

    def refresh_blocks(self) -> None:
        """Take the hosts that other instances were asked to leave alone (429, Retry-After):
        one instance's block holds for all of them."""
        for host, until in self.snapshots.host_blocks(time.time()).items():
            self.http.block(host, until, new=False)

    def release(self, names: list[str]) -> None:
        """Give back the leases of polls that will not run (dropped at shutdown)."""
        leases = {n: self._leases.pop(n) for n in names if n in self._leases}
        self.state.coordination.release_polls(leases)

    # --- polling ---------------------------------------------------------------------------

    def _row(self, name: str) -> SourceRow:
        # The row as last written or buffered, not a copy: a poll copies it before changing it.
        if name in self._changes:
            self.flush()  # its next poll must diff against the snapshot the last one found
        pending = self._buffer.get(name)
        if pending is not None:
            return pending.row
        now = time.monotonic()
        if self._rows is None or now - self._rows_checked >= ROWS_RECHECK:
            self._rows_checked = now
            version = self.snapshots.generation()
            if self._rows is None or version != self._rows_version:
                self._rows, self._rows_version = self.snapshots.source_rows(), version
        row = self._rows.get(name)
        return row if row is not None else SourceRow(name=name)

    def _committed(self, commits: Iterable[PollCommit]) -> None:
        if self._rows is not None:
            for c in commits:
                self._rows[c.row.name] = c.row

    def _take_touched(self) -> list[Touched]:
        # The cached rows, moved to their new times in place. A row the cache lost meanwhile
        # (another process wrote, and the row is gone) is left out: its next poll finds no row
        # and baselines again, which is right for a source removed there.
        rows: list[Touched] = []
        cached = self._rows or {}
        for name, (polled_at, next_at, result, lease) in self._touched.items():
            row = cached.get(name)
            if row is not None:
                row.last_poll_at, row.next_poll_at, row.last_result = polled_at, next_at, result
                rows.append((row, lease))
        self._touched.clear()
        return rows

    def _pending(self) -> int:
        return len(self._buffer) + len(self._changes) + len(self._touched)

    async def poll(
        self, name: str, *, dry_run: bool = False, next_poll_at: float | None = None
    ) -> PollResult:
        """Poll one source under its lease (taken now unless `lease` took it); commit its new
        snapshot and events atomically unless dry_run, which takes no lease and writes nothing."""
        lease = self._leases.pop(name, None)
        if lease is None and not dry_run:
            if not self.lease([name], anywhere=True):  # a poll asked for, not scheduled
                log.warning(
                    "poll of %s skipped: another poll of it is still running",
                    name,
                    extra={"source": name},
                )
                return PollResult(name, "skipped", 0.0)
            lease = self._leases.pop(name)
        try:
            source = self.sources[name]
            last = self._row(name)
            row: SourceRow | None = None  # this poll's own copy, made once something changes
            started = self.clock()
            if (model := self._models.get(name)) is None:
                model = self._models[name] = item_model(source)
            try:
                # The row's validators, unless its items/key changed (then a new baseline is
                # read) or changes wait for `confirm:`; the first test spares nearly every poll
                # the rest.
                state = last.fetch_state
                confirming = source.spec.confirm > 1
                if last.item_model != model or confirming:
                    held = confirming and bool(await self.reads.confirmations(name))
                    state = fetch_state(last, model, held=held)
                fetched = await source.fetch(self.http, state)
                if not dry_run and self._only_times_move(last, fetched):
                    return self._touch(name, started, next_poll_at, lease)
                let_go()  # done with its host: its reads and commit need the state only
                row = self._own(last, next_poll_at)
                commit = await assess(
                    self.reads, source, row, fetched, started, judge=self.conditions.sift
                )
            except StateError:
                raise  # the state failing is no failure of the source: the poll is not written
            except SourceError as exc:
                row = row if row is not None else self._own(last, next_poll_at)
                commit = failed(source, row, str(exc), started)
            except Exception as exc:  # a plugin bug must cost one poll, not the daemon
                log.debug("source %s raised", name, exc_info=True)
                row = row if row is not None else self._own(last, next_poll_at)
                commit = failed(source, row, f"internal error: {exc!r}", started)
            commit.duration = self.clock() - started
            commit.lease = lease
            if not dry_run:
                let_go()  # (a failed poll's)
                await self._record(commit, last)
            return PollResult(
                name,
                commit.result,
                commit.duration,
                [ev.body for ev in commit.events],
                commit.row.last_error if commit.result == "error" else None,
                len(commit.upserts) if commit.result == "new" else None,
            )
        except StateError:
            # The state failed (reading the row, or writing the poll): the lease is given back
            # at the next claim, so that the source is polled again then, not when it runs out.
            if lease is not None:
                self._unwritten[name] = lease
            raise

    @staticmethod
    def _own(last: SourceRow, next_poll_at: float | None) -> SourceRow:
        row = last.copy()
        row.next_poll_at = next_poll_at
        return row

    def _only_times_move(self, row: SourceRow, fetched: Fetched) -> bool:
        # An unchanged answer (304, or the same bytes) for a healthy source with nothing of its
        # own waiting to be written: nearly every poll of a daemon. Nothing but its times moves.
        return (
            fetched.unchanged
            and (fetched.state is row.fetch_state or fetched.state == row.fetch_state)
            and row.baselined
            and not row.failures
            and not row.alerted
            and row.last_error is None
            and row.item_model is not None  # a row from before item models: written once whole
            and row.name not in self._buffer
        )

    def _touch(
        self, name: str, polled_at: float, next_poll_at: float | None, lease: int | None
    ) -> PollResult:
        # Only the new times, kept in _touched until written (see __init__): no row copy and no
        # PollCommit is built for the daemon's commonest poll.
        duration = self.clock() - polled_at
        self._touched[name] = (polled_at, next_poll_at, "unchanged", lease)
        if self._pending() >= FLUSH_EVERY:
            self._flush_soon()
        if self.metrics is not None:
            self.metrics.poll(name, "unchanged", duration, ())
        log.debug("poll %s: unchanged", name)
        return PollResult(name, "unchanged", duration)

    async def _record(self, commit: PollCommit, last: SourceRow) -> None:
        name = commit.row.name
        held = commit.confirmations is not None  # a count of `confirm:` moved: written now
        if commit.events or commit.upserts or commit.deletes or held or _news(last, commit.row):
            self._buffer.pop(name, None)
            self._touched.pop(name, None)
            if self._batching:
                self._changes[name] = commit
                if self._pending() >= FLUSH_EVERY:
                    self.flush()
                return  # observed once flushed
            if self.state.threaded:
                await self._commit_together(commit)
                return
            refused = self.snapshots.commit_polls([commit])
            self._written([commit], refused)
            return
        # A whole row whose times and validators moved; one still waiting for this source is in
        # it, since this poll's row was read from there. (Polls that move only the times never
        # get here: see _touch.)
        self._touched.pop(name, None)
        self._buffer[name] = commit
        if self._pending() >= FLUSH_EVERY:
            self._flush_soon()
        self._observe(commit)

    async def _commit_together(self, commit: PollCommit) -> None:
        # Group commit: a changed poll is written with the others that finished while the last
        # write was under way, in one transaction (one fence, one statement of each kind, one
        # notification), off the event loop. On PostgreSQL a transaction per poll made a daemon
        # wait on round trips, not work. The poll returns once its own transaction committed
        # (its lease is held until then), or raises the StateError that kept it from being
        # written: nothing here waits longer than the write before it.
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._group:
            self._group_forming = loop.create_future()
        self._group.append((commit, waiter))
        if self._group_task is None or self._group_task.done():
            self._group_task = loop.create_task(self._write_groups())
        await waiter  # a poll cancelled meanwhile is still written with its group

    async def _write_groups(self) -> None:
        while self._group:
            group, self._group = self._group, []
            written, self._group_forming = self._group_forming, None
            self._group_writing = written
            commits = [commit for commit, _ in group]
            try:
                refused = await self._off_loop(self.snapshots.commit_polls, commits)
                self._written(commits, refused)
            except asyncio.CancelledError:  # shutting down: the polls end with it, unwritten
                for _, waiter in group:
                    waiter.cancel()
                raise
            except Exception as exc:  # each waiting poll fails with it (StateError: unwritten)
                for _, waiter in group:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            finally:
                if written is not None and not written.done():
                    written.set_result(None)
            for _, waiter in group:
                if not waiter.done():
                    waiter.set_result(None)

    async def _groups_written(self) -> None:
        # Until the changed polls committing together now are written (flush_async: at shutdown,
        # before shards go back): those being written and those queued, not the groups that
        # finish after them. Under a steady stream of changes the writer never runs dry, and a
        # flush that waited for it to end never ended: a daemon kept every shard it had to give
        # back to one that joined.
        groups = [g for g in (self._group_writing, self._group_forming) if g is not None]
        if groups:
            await asyncio.wait(groups)

    def _written(self, changes: list[PollCommit], refused: set[str]) -> None:
        # After a write: cache the rows, wake the webhooks with new deliveries, count the polls.
        for name in sorted(refused):
            log.warning(
                "poll of %s lost its lease before it was written (it outlived it, or another "
                "process took the source): its result is dropped and the source polled again",
                name,
            )
        if refused:
            self._rows = None  # read again: the rows of refused polls are not what was cached
            changes = [c for c in changes if c.row.name not in refused]
        else:
            self._committed(changes)
        webhooks = {w for c in changes for ev in c.events for w in ev.webhooks}
        if webhooks and self.committed is not None:
            self.committed(webhooks)
        for commit in changes:
            self._observe(commit)

    def _observe(self, commit: PollCommit) -> None:
        # Counted and logged once stored: a poll whose commit failed did not happen.
        name = commit.row.name
        if self.metrics is not None:
            self.metrics.poll(name, commit.result, commit.duration, (e.type for e in commit.events))
        # `at`: the poll's own end, since a batched poll is logged when its batch is written.
        polled = commit.row.last_poll_at
        fields: dict[str, Any] = {"source": name}
        if polled is not None:
            fields["at"] = polled + commit.duration
        if commit.result == "error":
            fields["error"] = commit.row.last_error
            log.warning("poll %s failed: %s", name, commit.row.last_error, extra=fields)
        elif commit.events:
            log.info(
                "poll %s: %s, %d events", name, commit.result, len(commit.events), extra=fields
            )
        else:
            log.debug("poll %s: %s", name, commit.result, extra=fields)

    def flush(self) -> None:
        """Write buffered polls (no-change ones, and the changed ones `poll_many` holds) and
        the hosts that asked to be left alone since the last flush."""
        batch = self._take_batch()
        if batch is None:
            return
        try:
            refused = self._write_batch(batch)
        except StateError:
            self._lost(batch)
            raise
        self._finish_batch(batch, refused)

    async def flush_async(self) -> None:
        """flush(), with the write made off the event loop where the state allows it; one at a
        time, so that a lease waiting for a flush waits for the one writing its source."""
        await self._groups_written()
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        batch = self._take_batch()
        if batch is None:
            return
        self._flushing = asyncio.get_running_loop().create_future()
        try:
            refused = await self._off_loop(self._write_batch, batch)
        except StateError:
            self._lost(batch)
            raise
        else:
            self._finish_batch(batch, refused)
        finally:
            self._flushing.set_result(None)
            self._flushing = None

    def _flush_soon(self) -> None:
        # The buffer is full in the middle of a poll: written now, or off the loop (in a task).
        if not self.state.threaded:
            self.flush()
        elif self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_logged())

    async def _flush_logged(self) -> None:
        try:
            await self.flush_async()
        except BridgeError as exc:  # the daemon's next flush tries again (and says so)
            log.error("buffered polls could not be written: %s", exc)

    def _take_batch(self) -> _Batch | None:
        blocks = self.http.take_new_blocks()
        if not self._pending() and not blocks:
            return None
        batch = _Batch(
            list(self._changes.values()), list(self._buffer.values()), blocks, self._take_touched()
        )
        self._buffer.clear()
        self._changes.clear()
        return batch

    def _write_batch(self, batch: _Batch) -> set[str]:
        # May run in a worker thread (_off_loop): it touches nothing of the engine's.
        return self.snapshots.commit_polls(
            [*batch.changes, *batch.others], batch.blocks, batch.touched
        )

    def _lost(self, batch: _Batch) -> None:
        # Nothing of it was written: those sources are polled again (their leases given back
        # at the next claim), and the cached rows, moved ahead by `touched`, read again.
        for commit in (*batch.changes, *batch.others):
            if commit.lease is not None:
                self._unwritten[commit.row.name] = commit.lease
        for row, lease in batch.touched:
            if lease is not None:
                self._unwritten[row.name] = lease
        self._rows = None

    def _finish_batch(self, batch: _Batch, refused: set[str]) -> None:
        if not refused:
            self._committed(batch.others)
        self._written(batch.changes, refused)

    async def poll_many(
        self,
        names: Iterable[str],
        *,
        concurrency: int = 256,
        progress: Callable[[PollResult], None] | None = None,
    ) -> list[PollResult]:
        """Poll several sources at once (per-host limits still apply), then flush. They are
        leased together first; one that another process is polling is skipped."""
        wanted = list(names)
        queue = self.lease(wanted) if wanted else []
        granted = set(queue)
        results = [PollResult(n, "skipped", 0.0) for n in wanted if n not in granted]
        for result in results:
            log.warning(
                "poll of %s skipped: another process is polling it",
                result.source,
                extra={"source": result.source},
            )
        queue.reverse()  # pop() from the end keeps the configured order

        async def worker() -> None:
            while queue:
                result = await self.poll(queue.pop())
                results.append(result)
                if progress:
                    progress(result)

        self._batching = True
        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(queue)) or 1)))
        finally:
            self._batching = False
        self.flush()
        return results

    def reload(self, config: Config) -> tuple[set[str], set[str], set[str]]:
        """Take a new config: returns (added, removed, changed) source names."""
        old = {s.name: s for s in self.config.sources}
        new = {s.name: s for s in config.sources}
        added = set(new) - set(old)
        removed = set(old) - set(new)
        changed = {n for n in set(old) & set(new) if old[n] != new[n]}
        self.flush()
        self.config = config
        self.sources = make_sources(config)
        self._models = {}
        # One length for every lease: a wake-up's sources are leased together.
        self._lease_length = poll_lease(max((s.timeout for s in config.sources), default=0.0))
        return added, removed, changed
