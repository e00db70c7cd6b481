"""`bridge run`: schedule every source, deliver continuously, reload on SIGHUP, stop gracefully."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from aiohttp import web

from bridge.config import Config, load_config
from bridge.delivery.dispatcher import Dispatcher
from bridge.errors import BridgeError
from bridge.http import HttpClient
from bridge.model import SourceSpec
from bridge.polling.engine import Engine, PollResult
from bridge.polling.scheduler import Scheduler
from bridge.service.metrics import SUCCESSES, Metrics
from bridge.service.notify import Notifier
from bridge.state import State, open_state, redact_location
from bridge.state.base import HEARTBEAT_INTERVAL, shard_of

log = logging.getLogger("bridge.service.daemon")

# Seconds between writes of buffered unchanged polls. Each write touches the pages of every row it
# updates, so fewer, larger writes cost less per poll (benchmarks/RESULTS.md). A crash loses at
# most these timestamps, which only bring a poll forward.
FLUSH_INTERVAL = 10.0
TRIM_INTERVAL = 3600.0  # seconds between retention passes
# Seconds between asks of the state's health: a removed state file or failing writes are said
# within this (and /healthz asks at each request).
HEALTH_INTERVAL = 2.0
FIRST_TRIM = 5.0  # the first pass comes soon after start, once the first polls are under way
# While instances' configs differ, an instance polls a source of another's shard once nobody
# has for this many of its intervals, or STRAY_FLOOR seconds if longer (Coordination.lease_strays).
STRAY_INTERVALS = 2.0
STRAY_FLOOR = 10.0


def _trim(location: str, before: float) -> int:
    # Its own connection in its own thread: a long trim never blocks the event loop's state.
    state = open_state(location)
    try:
        return state.admin.trim(before)
    finally:
        state.close()


class Daemon:
    """The long-running process: owns the state, client, engine, scheduler and dispatcher."""

    def __init__(
        self,
        config: Config,
        *,
        env: Mapping[str, str] | None = None,
        out: TextIO | None = None,
    ):
        self.config = config
        self.env = env
        self.out = out
        self.metrics = Metrics()
        self.notifier = Notifier(env)
        self._stop = asyncio.Event()
        self._force = False
        # Reloads one at a time, in the order their signals came: the file is read in a thread,
        # and two reads racing could apply the older file last.
        self._reloading = asyncio.Lock()
        self._polls: set[asyncio.Task[Any]] = set()
        self._problem: str | None = None  # the state's problem last said
        self.state: State | None = None
        self.engine: Engine | None = None
        self.dispatcher: Dispatcher | None = None
        self.scheduler: Scheduler | None = None
        # The shards whose sources this instance schedules (Coordination.share), or None: all
        # of them (the only daemon on its state).
        self._shards: frozenset[int] | None = None
        self._agreed = True  # whether every live instance configures the same sources
        # Sources of other instances' shards polled here: their holder lacks them (a rolling
        # config change). The others of this config's sources there are only watched, at
        # their stray interval, for the moment nobody polls them.
        self._adopted: set[str] = set()

    # --- signals -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop gracefully. Second: stop at once (committed work is never lost)."""
        if self._stop.is_set():
            log.warning("second stop signal: exiting now")
            self._force = True
            for task in list(self._polls):
                task.cancel()
            if self.dispatcher is not None:
                self.dispatcher.abort()
        self._stop.set()

    def request_reload(self) -> None:
        """Reload the config file (SIGHUP)."""
        asyncio.get_running_loop().create_task(self.reload())

    # --- health --------------------------------------------------------------------------------

    async def healthy(self) -> str | None:
        """None while the scheduler runs and the state keeps what is written to it and takes
        a write (probed off the event loop); else what is wrong, in one line."""
        if self.scheduler is None or not self.scheduler.running or self.state is None:
            return "the scheduler is not running"
        problem = self.state.problem()
        if problem is not None:
            return problem
        if not await asyncio.to_thread(self.state.writable):
            return f"state {redact_location(self.state.location)}: no write within 1 s"
        return None

    # --- polling -------------------------------------------------------------------------------

    async def _poll(self, name: str) -> None:
        assert self.engine is not None and self.scheduler is not None
        if self._stop.is_set() or name not in self.engine.sources:
            return
        task = asyncio.current_task()
        assert task is not None
        self._polls.add(task)
        try:
            await self.engine.poll(name, next_poll_at=self.scheduler.next_run(name))
        except BridgeError as exc:  # the state file failing: say so, keep running
            log.error("poll %s could not be recorded: %s", name, exc)
        finally:
            self._polls.discard(task)

    def _lane(self, name: str) -> str | None:
        # Polls of one host queue for as many runners as the HTTP client lets at it at once.
        assert self.engine is not None
        source = self.engine.sources.get(name)
        return source.host if source is not None else None

    def _mine(self, name: str) -> bool:
        return self._shards is None or shard_of(name) in self._shards

    def _schedule_all(self, names: set[str] | None = None) -> None:
        assert self.engine is not None and self.scheduler is not None
        rows = self.engine.snapshots.source_rows()
        scheduler = self.scheduler
        for spec in self.engine.config.sources:
            if names is not None and spec.name not in names:
                continue
            row = rows.get(spec.name)
            if self._mine(spec.name):
                self._adopted.discard(spec.name)
            if self._mine(spec.name) or spec.name in self._adopted:
                scheduler.schedule(spec, row.last_poll_at if row else None)
            elif self._agreed or spec.every is None:  # a cron source is never a stray
                scheduler.unschedule(spec.name)
            else:
                self._watch(spec)

    def _watch(self, spec: SourceSpec) -> None:
        # First looked at one stray interval from now: an instance that has it polls it first.
        assert self.scheduler is not None
        watch = dataclasses.replace(spec, every=self._stray_after(spec))
        self.scheduler.schedule(watch, time.time())

    @staticmethod
    def _stray_after(spec: SourceSpec) -> float:
        return max(STRAY_INTERVALS * (spec.every or 0.0), STRAY_FLOOR)

    def _claim(self, due: list[str]) -> list[str]:
        """The scheduler's claim: the due sources of this instance's shards are leased; the
        strays among them only when nobody else polls them."""
        assert self.engine is not None
        ours = [n for n in due if self._mine(n)] if self._shards is not None else due
        granted = self.engine.lease(ours) if ours else []
        if len(granted) < len(ours):
            for name in sorted(set(ours) - set(granted)):
                log.warning(
                    "poll of %s skipped: its last poll has not finished (here or elsewhere)", name
                )
        if len(ours) == len(due):
            return granted
        sources = self.engine.sources
        strays = {n: self._stray_after(sources[n].spec) for n in due if n not in ours}
        taken = self.engine.lease(list(strays), strays=strays)
        for name in strays:
            self._stray(sources[name].spec, polled=name in taken)
        return granted + taken

    def _stray(self, spec: SourceSpec, *, polled: bool) -> None:
        assert self.scheduler is not None
        if polled and spec.name not in self._adopted:
            self._adopted.add(spec.name)
            self.scheduler.schedule(spec, time.time())  # on its own interval from now on
            log.info(
                "polling %s here: the instance holding it does not have it in its config",
                spec.name,
                extra={"source": spec.name},
            )
        elif not polled and spec.name in self._adopted:
            self._adopted.discard(spec.name)
            self._watch(spec)
            log.info("%s is polled by the instance holding it again", spec.name)

    async def poll_now(self, name: str) -> PollResult:
        """Poll a source at once (the console's "poll now"); its schedule stays as it was."""
        assert self.engine is not None and self.scheduler is not None
        return await self.engine.poll(name, next_poll_at=self.scheduler.next_run(name))

    def _console(self, host: str) -> Callable[[web.Application], None]:
        # Imported here: a daemon without http.listen loads no Jinja2 templates.
        from bridge.service.console import Console, mount

        assert self.state is not None and self.dispatcher is not None
        console = Console(
            config=lambda: self.config,
            state=self.state,
            poll=self.poll_now,
            wake=self.dispatcher.wake,
            listen_host=host,
        )
        return lambda app: mount(app, console)

    # --- sharing the sources with other instances ------------------------------------------

    def _take_share(self) -> None:
        """This instance's first share of the sources, before anything is scheduled."""
        assert self.state is not None
        share = self.state.coordination.share(time.time(), self._digest())
        if share is not None:
            self._shards = share.held - share.surplus
            self._agreed = share.agreed
            self.state.coordination.give_back(share.surplus)

    def _digest(self) -> str:
        """The configured sources' names, as one digest: equal in instances that agree."""
        names = "\n".join(sorted(spec.name for spec in self.config.sources))
        return hashlib.blake2b(names.encode(), digest_size=16).hexdigest()

    async def _keep_share(self) -> None:
        """Once a beat: renew this instance's shards, schedule what it gained, and stop
        scheduling (and give back) what it lost or has too many of."""
        while self._shards is not None and not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), HEARTBEAT_INTERVAL)
            except TimeoutError:
                pass
            else:
                return
            try:
                await self._rebalance()
            except BridgeError as exc:
                log.error("could not renew this instance's share of the sources: %s", exc)

    async def _rebalance(self) -> None:
        assert self.state is not None and self.engine is not None and self.scheduler is not None
        coordination = self.state.coordination
        share = await asyncio.to_thread(coordination.share, time.time(), self._digest())
        if share is None or self._stop.is_set():
            return
        before = self._shards or frozenset()
        mine = share.held - share.surplus
        gone, gained = before - mine, mine - before
        self._shards = mine
        moved = gone | gained
        if share.agreed != self._agreed:
            self._agreed = share.agreed
            self._adopted.clear()
            # Strays are watched while configs differ, and only then.
            self._schedule_all({s.name for s in self.config.sources if not self._mine(s.name)})
        elif moved:
            self._schedule_all({s.name for s in self.config.sources if shard_of(s.name) in moved})
        if share.surplus:
            # Their polls' times are written before the next holder reads them to schedule.
            self.engine.flush()
            await asyncio.to_thread(coordination.give_back, share.surplus)
        if gone or gained:
            log.info(
                "this instance schedules %d shards now (%d sources): %d gained, %d given up",
                len(mine),
                sum(1 for name in self.scheduler.names() if self._mine(name)),
                len(gained),
                len(gone),
            )
        self.engine.refresh_blocks()  # hosts that asked another instance to wait

    # --- reload --------------------------------------------------------------------------------

    async def reload(self) -> None:
        """Apply a changed config without a restart; an invalid one is refused, the old one kept."""
        async with self._reloading:
            await self._reload()

    async def _reload(self) -> None:
        assert self.engine is not None and self.scheduler is not None
        try:
            # Off the event loop: polls, deliveries and /healthz go on while a file is read and
            # checked. An empty file is refused: an editor caught between truncating and writing.
            new = await asyncio.to_thread(
                load_config, self.config.path, self.env, allow_empty=False
            )
        except BridgeError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        if new.state != self.config.state:
            log.error("reload refused: `state` cannot change while running (restart instead)")
            return
        for key in ("listen", "per_host"):
            if getattr(new, key) != getattr(self.config, key):
                log.warning("reload: http.%s changes take effect at the next restart", key)
        assert self.dispatcher is not None
        added, removed, changed = self.engine.reload(new)
        for name in removed:
            self.scheduler.unschedule(name)
            self._adopted.discard(name)
        self._schedule_all(added | changed)
        await self.dispatcher.replace(new.webhooks, self.config.grace)
        self.config = new
        self._warn_of_removed_webhooks()
        log.info(
            "reloaded %s: %d added, %d removed, %d changed sources",
            new.path,
            len(added),
            len(removed),
            len(changed),
        )

    def _warn_of_removed_webhooks(self) -> None:
        # Their deliveries are kept (never lose a change), but nothing sends them: say so once.
        assert self.engine is not None
        for name, pending in sorted(self.engine.state.admin.pending_by_webhook().items()):
            if name not in self.config.webhooks:
                log.warning(
                    "webhook %s is not in the config; deliveries pending for it: %d (kept, "
                    "they go out if it is added back; `bridge discard --webhook %s` gives up "
                    "on them)",
                    name,
                    pending,
                    name,
                )

    # --- housekeeping --------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        assert self.engine is not None
        next_trim = time.time() + FIRST_TRIM
        next_flush = time.monotonic() + FLUSH_INTERVAL
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), HEALTH_INTERVAL)
            except TimeoutError:
                pass
            self._check_state()
            if time.monotonic() < next_flush and not self._stop.is_set():
                continue
            next_flush = time.monotonic() + FLUSH_INTERVAL
            try:
                self.engine.flush()
                if time.time() >= next_trim:
                    next_trim = time.time() + TRIM_INTERVAL
                    before = time.time() - self.config.retention
                    n = await asyncio.to_thread(_trim, self.config.state, before)
                    if n:
                        log.info("retention: trimmed %d old rows", n)
            except BridgeError as exc:
                log.error("housekeeping: %s", exc)

    def _check_state(self) -> None:
        # Said once when it starts and once when it ends, not at every check.
        assert self.state is not None
        problem = self.state.problem()
        if problem != self._problem:
            if problem is not None:
                log.error("%s", problem)
                self.notifier.send(f"STATUS=unhealthy: {problem}")
            else:
                log.info("state %s: writes succeed again", redact_location(self.state.location))
                self.notifier.send(self._status())
            self._problem = problem

    def _status(self) -> str:
        return f"STATUS=running: {len(self.config.sources)} sources"

    def _seed_last_success(self, state: State) -> None:
        # A source failing since before this start last succeeded before its failures began:
        # that time keeps a staleness alert firing across a restart.
        known = {}
        for name, row in state.snapshots.source_rows().items():
            at = row.last_poll_at if row.last_result in SUCCESSES else row.failing_since
            if at is not None:
                known[name] = at
        self.metrics.seed_last_success(known)

    # --- the run -------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGINT/SIGTERM; returns the exit code."""
        state = open_state(self.config.state)
        try:
            state.coordination.hold_daemon()
        except BaseException:
            state.close()
            raise
        self.state = state
        loop = asyncio.get_running_loop()
        watchdog = asyncio.create_task(self.notifier.keep_alive())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        runner = None
        try:
            async with HttpClient(per_host=self.config.per_host) as http:
                self.dispatcher = dispatcher = Dispatcher(
                    self.config.webhooks,
                    state.outbox,
                    http,
                    out=self.out,
                    observer=self.metrics.delivery_result,
                )
                self.engine = engine = Engine(
                    self.config, state, http, metrics=self.metrics, committed=dispatcher.wake
                )
                # What other instances (or `bridge replay`) queue wakes the workers at once; the
                # listener's thread hands each wake to the event loop. state.close() stops it.
                state.watch_deliveries(
                    lambda names: loop.call_soon_threadsafe(dispatcher.wake, names)
                )
                self.metrics.observe_queue(
                    lambda: state.admin.delivery_counts(self.config.webhooks)
                )
                self.metrics.sources = lambda: engine.sources
                self._seed_last_success(state)
                self._take_share()
                self.scheduler = Scheduler(
                    self._poll,
                    lane=self._lane,
                    lane_width=self.config.per_host,
                    claim=self._claim,
                    drop=engine.release,
                )
                self._schedule_all()
                self.scheduler.start()
                dispatcher.start()
                if self.config.listen:
                    from bridge.service.server import start_status_server

                    host, port = self.config.listen
                    try:
                        runner = await start_status_server(
                            host,
                            port,
                            healthy=self.healthy,
                            metrics=self.metrics,
                            mount=self._console(host),
                        )
                    except OSError as exc:
                        raise BridgeError(
                            f"{self.config.path}: http.listen {host}:{port}: {exc.strerror}"
                        ) from exc
                log.info(
                    "running: %d sources, %d webhooks, state %s",
                    len(self.config.sources),
                    len(self.config.webhooks),
                    redact_location(self.config.state),
                )
                self._warn_of_removed_webhooks()
                housekeeping = asyncio.create_task(self._housekeeping())
                sharing = asyncio.create_task(self._keep_share())
                # Every source is scheduled and the endpoints answer: started, for systemd.
                self.notifier.send("READY=1", self._status())
                await self._stop.wait()
                self.notifier.send("STOPPING=1")
                log.info("stopping: waiting up to %.0fs for in-flight work", self.config.grace)
                self.scheduler.shutdown()
                await self._finish_polls()
                engine.flush()
                await dispatcher.stop(0 if self._force else self.config.grace)
                await asyncio.gather(housekeeping, sharing, return_exceptions=True)
        finally:
            watchdog.cancel()
            if runner is not None:
                await runner.cleanup()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            state.coordination.release_daemon()
            state.close()
            self.notifier.close()
        log.info("stopped")
        return 0

    async def _finish_polls(self) -> None:
        if not self._polls:
            return
        grace = 0 if self._force else self.config.grace
        _, pending = await asyncio.wait(list(self._polls), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
