"""Poll sources end to end (fetch, assess, commit with the events); own the delivery workers."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from bridge.config import Config, WebhookSpec
from bridge.delivery.worker import WebhookWorker
from bridge.errors import SourceError
from bridge.http import HttpClient
from bridge.model import PollCommit, SourceRow
from bridge.polling.assess import assess, failed
from bridge.sources.base import Fetched, Source
from bridge.sources.registry import load
from bridge.state.sqlite.store import Store

if TYPE_CHECKING:  # prometheus_client is imported only by the daemon, which serves /metrics
    from bridge.service.metrics import Metrics

log = logging.getLogger("bridge.polling.engine")

# Unchanged polls only move timestamps and validators; writing them in batches keeps a pass over
# thousands of sources from paying one transaction each. Losing a batch to a crash costs nothing
# but one unconditional fetch. In `poll_many` changed polls are batched too: each keeps its
# snapshot, events and deliveries in one transaction, and one lost to a crash is detected again,
# since its snapshot was not written either.
FLUSH_EVERY = 2000  # the daemon's FLUSH_INTERVAL of polls at 200 a second
# How often cached source rows are checked against other processes' writes (`bridge once` beside
# the daemon). A row stale for that long costs at most one unconditional fetch: snapshots are
# always read from the file.
ROWS_RECHECK = 1.0


@dataclass
class PollResult:
    """The outcome of one poll: new (first poll), changed, unchanged or error, and its events."""

    source: str
    result: str
    duration: float
    bodies: list[bytes] = field(default_factory=list)
    error: str | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events as receivers get them; parsed on demand, since `once` only counts them."""
        return [orjson.loads(body) for body in self.bodies]


def make_sources(config: Config) -> dict[str, Source]:
    """Instantiate each configured source through its registered kind."""
    return {spec.name: load(spec.kind)(spec) for spec in config.sources}


class Engine:
    """Owns the store, the HTTP client's use, the sources and one delivery worker per webhook."""

    def __init__(
        self,
        config: Config,
        store: Store,
        http: HttpClient,
        *,
        out: TextIO | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ):
        # The config and the sources live as long as the process: kept out of the cyclic GC's
        # full passes, which otherwise walk them all (0.2 s at 5,000 sources) again and again.
        gc.freeze()
        self.config = config
        self.store = store
        self.http = http
        self.out = out
        self.metrics = metrics  # None: nothing is counted (`once` and `poll` serve no /metrics)
        self.clock = clock
        self.sources = make_sources(config)
        self.workers = self._make_workers(config)
        # A host that asked to be left alone (429, Retry-After) is, across runs: `bridge once`
        # from cron must not ask it again a minute later.
        for host, until in store.host_blocks(time.time()).items():
            http.block(host, until, new=False)
        self._buffer: dict[str, PollCommit] = {}
        self._changes: dict[str, PollCommit] = {}  # changed polls held by poll_many
        # Unchanged polls of healthy sources (nearly every poll of a daemon) keep only their new
        # times until written, not their PollCommit and row: those outlived the young GC
        # generations, and the full collections they caused cost a steady poll 17-20 us (of ~330).
        self._touched: dict[str, tuple[float | None, float | None, str | None]] = {}
        self._batching = False
        # Source rows as committed, read in one query; dropped when another process writes.
        self._rows: dict[str, SourceRow] | None = None
        self._rows_version = -1
        self._rows_checked = -ROWS_RECHECK

    def _make_workers(self, config: Config) -> dict[str, WebhookWorker]:
        return {name: self.make_worker(spec) for name, spec in config.webhooks.items()}

    def make_worker(self, spec: WebhookSpec) -> WebhookWorker:
        """A delivery worker for one webhook, sharing this engine's store, client and metrics."""
        return WebhookWorker(
            spec,
            self.store,
            self.http,
            out=self.out,
            observer=self.metrics.delivery_result if self.metrics is not None else None,
            clock=self.clock,
        )

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
            version = self.store.data_version()
            if self._rows is None or version != self._rows_version:
                self._rows, self._rows_version = self.store.source_rows(), version
        row = self._rows.get(name)
        return row if row is not None else SourceRow(name=name)

    def _committed(self, commits: Iterable[PollCommit]) -> None:
        if self._rows is not None:
            for c in commits:
                self._rows[c.row.name] = c.row

    def _take_touched(self) -> list[SourceRow]:
        # The cached rows, moved to their new times in place. A row the cache lost meanwhile
        # (another process wrote the file, and the row is gone from it) is left out: its next
        # poll finds no row and baselines again, which is right for a source removed there.
        rows = []
        cached = self._rows or {}
        for name, (polled_at, next_at, result) in self._touched.items():
            row = cached.get(name)
            if row is not None:
                row.last_poll_at, row.next_poll_at, row.last_result = polled_at, next_at, result
                rows.append(row)
        self._touched.clear()
        return rows

    def _pending(self) -> int:
        return len(self._buffer) + len(self._changes) + len(self._touched)

    async def poll(
        self, name: str, *, dry_run: bool = False, next_poll_at: float | None = None
    ) -> PollResult:
        """Poll one source; commit its new snapshot and events atomically unless dry_run."""
        source = self.sources[name]
        last = self._row(name)
        row: SourceRow | None = None  # this poll's own copy, made once something changes
        started = self.clock()
        try:
            fetched = await source.fetch(self.http, last.fetch_state)
            if not dry_run and self._only_times_move(last, fetched):
                return self._touch(name, started, next_poll_at)
            row = self._own(last, next_poll_at)
            commit = assess(self.store, source, row, fetched, started)
        except SourceError as exc:
            row = row if row is not None else self._own(last, next_poll_at)
            commit = failed(source, row, str(exc), started)
        except Exception as exc:  # a plugin bug must cost one poll, not the daemon
            log.debug("source %s raised", name, exc_info=True)
            row = row if row is not None else self._own(last, next_poll_at)
            commit = failed(source, row, f"internal error: {exc!r}", started)
        commit.duration = self.clock() - started
        if not dry_run:
            self._record(commit)
        return PollResult(
            name,
            commit.result,
            commit.duration,
            [ev.body for ev in commit.events],
            commit.row.last_error if commit.result == "error" else None,
        )

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
            and row.name not in self._buffer
        )

    def _touch(self, name: str, polled_at: float, next_poll_at: float | None) -> PollResult:
        # Only the new times, kept in _touched until written (see __init__): no row copy and no
        # PollCommit is built for the daemon's commonest poll.
        duration = self.clock() - polled_at
        self._touched[name] = (polled_at, next_poll_at, "unchanged")
        if self._pending() >= FLUSH_EVERY:
            self.flush()
        if self.metrics is not None:
            self.metrics.poll(name, "unchanged", duration, ())
        log.debug("poll %s: unchanged", name)
        return PollResult(name, "unchanged", duration)

    def _record(self, commit: PollCommit) -> None:
        name = commit.row.name
        if commit.events or commit.upserts or commit.deletes:
            self._buffer.pop(name, None)
            self._touched.pop(name, None)
            if self._batching:
                self._changes[name] = commit
                if self._pending() >= FLUSH_EVERY:
                    self.flush()
                return  # observed once flushed
            self.store.commit_polls([commit])
            self._committed([commit])
            self._wake([commit])
        else:
            # A whole row; one still waiting for this source is in it, since this poll's row was
            # read from there. (Polls that move only the times never get here: see _touch.)
            self._touched.pop(name, None)
            self._buffer[name] = commit
            if self._pending() >= FLUSH_EVERY:
                self.flush()
        self._observe(commit)

    def _wake(self, commits: Iterable[PollCommit]) -> None:
        for webhook in {w for c in commits for ev in c.events for w in ev.webhooks}:
            if webhook in self.workers:
                self.workers[webhook].wake()

    def _observe(self, commit: PollCommit) -> None:
        # Counted and logged once stored: a poll whose commit failed did not happen.
        name = commit.row.name
        if self.metrics is not None:
            self.metrics.poll(name, commit.result, commit.duration, (e.type for e in commit.events))
        if commit.result == "error":
            log.warning("poll %s failed: %s", name, commit.row.last_error)
        elif commit.events:
            log.info("poll %s: %s, %d events", name, commit.result, len(commit.events))
        else:
            log.debug("poll %s: %s", name, commit.result)

    def flush(self) -> None:
        """Write buffered polls (no-change ones, and the changed ones `poll_many` holds) and
        the hosts that asked to be left alone since the last flush."""
        blocks = self.http.take_new_blocks()
        if not self._pending() and not blocks:
            return
        changes = list(self._changes.values())
        commits = [*changes, *self._buffer.values()]
        touched = self._take_touched()
        self._buffer.clear()
        self._changes.clear()
        self.store.commit_polls(commits, blocks, touched)
        self._committed(commits)
        self._wake(changes)
        for commit in changes:
            self._observe(commit)

    async def poll_many(
        self,
        names: Iterable[str],
        *,
        concurrency: int = 256,
        progress: Callable[[PollResult], None] | None = None,
    ) -> list[PollResult]:
        """Poll several sources at once (per-host limits still apply), then flush."""
        queue = list(names)
        results: list[PollResult] = []

        async def worker() -> None:
            while queue:
                result = await self.poll(queue.pop())
                results.append(result)
                if progress:
                    progress(result)

        queue.reverse()  # pop() from the end keeps the configured order
        self._batching = True
        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(queue)) or 1)))
        finally:
            self._batching = False
        self.flush()
        return results

    # --- delivering --------------------------------------------------------------------------

    async def deliver_due(self) -> None:
        """Attempt every due delivery once, on every webhook at the same time."""
        await asyncio.gather(*(w.drain() for w in self.workers.values()))

    def start_workers(self) -> list[asyncio.Task[None]]:
        """Start every webhook's delivery loop."""
        return [asyncio.create_task(w.run(), name=f"deliver-{n}") for n, w in self.workers.items()]

    async def stop_workers(self, grace: float) -> None:
        """Stop delivering; in-flight attempts get `grace` seconds."""
        await asyncio.gather(*(w.stop(grace) for w in self.workers.values()))

    def reload(self, config: Config) -> tuple[set[str], set[str], set[str]]:
        """Take a new config: returns (added, removed, changed) source names.

        Workers of webhooks whose spec changed are replaced by the caller via `replace_workers`.
        """
        old = {s.name: s for s in self.config.sources}
        new = {s.name: s for s in config.sources}
        added = set(new) - set(old)
        removed = set(old) - set(new)
        changed = {n for n in set(old) & set(new) if old[n] != new[n]}
        self.flush()
        self.config = config
        self.sources = make_sources(config)
        return added, removed, changed
