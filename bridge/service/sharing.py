"""Which sources this daemon schedules, when several share one state (PostgreSQL).

The state splits the sources into shards and gives each live daemon a fair share of them
(Coordination.share, renewed once a beat). This daemon's scheduler holds only the sources of its
own shards; a poll of any other is refused by the lease anyway. While the instances' configs
differ (a rolling change), the sources of this config that lie in another instance's shards are
watched, at twice their interval: one nobody polls (the holder does not have it) is adopted and
polled here on its own interval until the holder polls it again (Coordination.lease_strays).
On SQLite there are no shards: the one daemon schedules everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping

from bridge.errors import BridgeError
from bridge.model import SourceSpec
from bridge.polling.engine import Engine
from bridge.polling.scheduler import Scheduler
from bridge.state import State
from bridge.state.base import HEARTBEAT_INTERVAL, shard_of

log = logging.getLogger("bridge.service.sharing")

# A stray is looked at every this many of its intervals, or STRAY_FLOOR seconds if longer, and
# polled here once nobody has polled it for that long.
STRAY_INTERVALS = 2.0
STRAY_FLOOR = 10.0


def stray_after(spec: SourceSpec) -> float:
    """How long a source of another's shard goes unpolled before this instance polls it."""
    return max(STRAY_INTERVALS * (spec.every or 0.0), STRAY_FLOOR)


def digest(specs: Iterable[SourceSpec]) -> str:
    """The configured sources' names as one digest: equal in instances that agree."""
    names = "\n".join(sorted(spec.name for spec in specs))
    return hashlib.blake2b(names.encode(), digest_size=16).hexdigest()


class Sharing:
    """This daemon's part of the sources: its shards, and the strays it polls for others.

    `polling` is the daemon's polls running now, by source: a shard given back waits for its
    own (the next holder schedules from the last poll written).
    """

    def __init__(
        self,
        state: State,
        engine: Engine,
        scheduler: Scheduler,
        polling: Mapping[str, asyncio.Task[object]],
    ):
        self.state = state
        self.engine = engine
        self.scheduler = scheduler
        self.polling = polling
        # The shards whose sources this instance schedules, or None: all of them (the only
        # daemon on its state).
        self.shards: frozenset[int] | None = None
        self.agreed = True  # whether every live instance configures the same sources
        self.adopted: set[str] = set()  # strays polled here on their own interval

    def mine(self, name: str) -> bool:
        """Whether this instance schedules the source as its own."""
        return self.shards is None or shard_of(name) in self.shards

    # --- scheduling --------------------------------------------------------------------------

    def schedule(self, names: set[str] | None = None) -> None:
        """(Re)schedule the configured sources named (all by default) as this share says: its
        own and the adopted on their interval, the other strays watched, the rest not at all."""
        rows = self.engine.snapshots.source_rows()
        for spec in self.engine.config.sources:
            if names is not None and spec.name not in names:
                continue
            if self.mine(spec.name):
                self.adopted.discard(spec.name)
            if self.mine(spec.name) or spec.name in self.adopted:
                row = rows.get(spec.name)
                self.scheduler.schedule(spec, row.last_poll_at if row else None)
            elif self.agreed or spec.every is None:  # a cron source is never a stray
                self.scheduler.unschedule(spec.name)
            else:
                self._watch(spec)

    def forget(self, name: str) -> None:
        """A source taken out of the config."""
        self.scheduler.unschedule(name)
        self.adopted.discard(name)

    def _watch(self, spec: SourceSpec) -> None:
        # First looked at one stray interval from now: an instance that has it polls it first.
        watch = dataclasses.replace(spec, every=stray_after(spec))
        self.scheduler.schedule(watch, time.time())

    async def claim(self, due: list[str]) -> list[str]:
        """The scheduler's claim: the due sources of this instance's shards are leased; the
        strays among them only when nobody else polls them."""
        ours = [n for n in due if self.mine(n)] if self.shards is not None else due
        granted = await self.engine.lease_async(ours) if ours else []
        if len(granted) < len(ours):
            # One line per claim, not per source: under load a round of thousands is refused.
            # A source whose shard this instance gave up while the claim was out is no news.
            refused = sorted(n for n in set(ours) - set(granted) if self.mine(n))
            if refused:
                log.warning(
                    "%d due polls skipped: their last poll has not finished (here or "
                    "elsewhere): %s",
                    len(refused),
                    ", ".join(refused[:5]) + (", ..." if len(refused) > 5 else ""),
                )
        if len(ours) == len(due):
            return granted
        sources = self.engine.sources
        strays = {n: stray_after(sources[n].spec) for n in due if n not in ours}
        taken = await self.engine.lease_async(list(strays), strays=strays)
        for name in strays:
            self._stray(sources[name].spec, polled=name in taken)
        return granted + taken

    def _stray(self, spec: SourceSpec, *, polled: bool) -> None:
        if polled and spec.name not in self.adopted:
            self.adopted.add(spec.name)
            self.scheduler.schedule(spec, time.time())  # on its own interval from now on
            log.info(
                "polling %s here: the instance holding it does not have it in its config",
                spec.name,
                extra={"source": spec.name},
            )
        elif not polled and spec.name in self.adopted:
            self.adopted.discard(spec.name)
            self._watch(spec)
            log.info("%s is polled by the instance holding it again", spec.name)

    # --- the share -----------------------------------------------------------------------------

    def take_first(self) -> None:
        """This instance's first share of the sources, before anything is scheduled."""
        coordination = self.state.coordination
        share = coordination.share(time.time(), digest(self.engine.config.sources))
        if share is not None:
            self.shards = share.held - share.surplus
            self.agreed = share.agreed
            coordination.give_back(share.surplus)

    async def keep(self, stop: asyncio.Event) -> None:
        """Once a beat until `stop`: renew this instance's shards, schedule what it gained, and
        stop scheduling (and give back) what it lost or has too many of."""
        while self.shards is not None and not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT_INTERVAL)
            except TimeoutError:
                pass
            else:
                return
            try:
                await self.rebalance(stop)
            except BridgeError as exc:
                log.error("could not renew this instance's share of the sources: %s", exc)

    async def rebalance(self, stop: asyncio.Event) -> None:
        """One beat of keep()."""
        coordination = self.state.coordination
        specs = self.engine.config.sources
        share = await asyncio.to_thread(coordination.share, time.time(), digest(specs))
        if share is None or stop.is_set():
            return
        before = self.shards or frozenset()
        mine = share.held - share.surplus
        gone, gained = before - mine, mine - before
        self.shards = mine
        moved = gone | gained
        names: set[str] = set()
        if share.agreed != self.agreed:
            self.agreed = share.agreed
            self.adopted.clear()
            # Strays are watched while configs differ, and only then.
            names |= {s.name for s in specs if not self.mine(s.name)}
        if moved:  # also when `agreed` changed in the same beat: the gained leave the watch
            names |= {s.name for s in specs if shard_of(s.name) in moved}
        if gone:
            # Polls of them waiting for a lane's runner: not started, and leased. Under load the
            # queue can hold a whole round of them (an instance that started alone took every
            # shard and leased every due source): their new holders would find them leased.
            self.scheduler.drop_queued(lambda name: shard_of(name) in gone)
        if gained:
            self.engine.forget_rows()  # their last holder wrote them unseen
        if names:
            self.schedule(names)
        if share.surplus:
            # The next holder schedules from the last poll written: one still running here is
            # let finish first (up to a beat), or the next holder would find it overdue and
            # poll it again at once. The shards go back then even if a poll still runs: under
            # load one always does, and they would never go. That poll keeps its lease, so it
            # still commits, and the next holder's lease of its source is refused meanwhile.
            running = [t for n, t in self.polling.items() if shard_of(n) in share.surplus]
            if running:
                await asyncio.wait(running, timeout=HEARTBEAT_INTERVAL)
            # Their polls' times are written before the next holder reads them to schedule.
            await self.engine.flush_async()
            await asyncio.to_thread(coordination.give_back, share.surplus)
        if gone or gained:
            log.info(
                "this instance schedules %d shards now (%d sources): %d gained, %d given up",
                len(mine),
                sum(1 for name in self.scheduler.names() if self.mine(name)),
                len(gained),
                len(gone),
            )
        self.engine.refresh_blocks()  # hosts that asked another instance to wait
