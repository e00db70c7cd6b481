"""`bridge run`: schedule every source, deliver continuously, reload on SIGHUP, stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from aiohttp import web

from bridge.config import Config, load_config
from bridge.delivery.dispatcher import Dispatcher
from bridge.errors import BridgeError
from bridge.http import HttpClient
from bridge.polling.engine import Engine, PollResult
from bridge.polling.scheduler import Scheduler
from bridge.service.metrics import SUCCESSES, Metrics
from bridge.service.notify import Notifier
from bridge.service.sharing import Sharing
from bridge.state import State, open_state, redact_location

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
        # The polls running now, by source: one at a time each, since the scheduler starts
        # only the polls whose lease it was granted.
        self._polling: dict[str, asyncio.Task[object]] = {}
        self._problem: str | None = None  # the state's problem last said
        self.state: State | None = None
        self.engine: Engine | None = None
        self.dispatcher: Dispatcher | None = None
        self.scheduler: Scheduler | None = None
        self.sharing: Sharing | None = None  # which of the sources this instance schedules

    # --- signals -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop gracefully. Second: stop at once (committed work is never lost)."""
        if self._stop.is_set():
            log.warning("second stop signal: exiting now")
            self._force = True
            for task in list(self._polling.values()):
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
        self._polling[name] = task
        try:
            await self.engine.poll(name, next_poll_at=self.scheduler.next_run(name))
        except BridgeError as exc:  # the state file failing: say so, keep running
            log.error("poll %s could not be recorded: %s", name, exc)
        finally:
            self._polling.pop(name, None)

    def _lane(self, name: str) -> str | None:
        # Polls of one host queue for as many runners as the HTTP client lets at it at once.
        assert self.engine is not None
        source = self.engine.sources.get(name)
        return source.host if source is not None else None

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
        assert self.sharing is not None
        for name in removed:
            self.sharing.forget(name)
        self.sharing.schedule(added | changed)
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
                await self.engine.flush_async()
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
                    threaded=state.threaded,
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
                self.scheduler = Scheduler(
                    self._poll,
                    lane=self._lane,
                    lane_width=self.config.per_host,
                    drop=engine.release,
                )
                # Bound before anything starts: a port in use ends the run before a poll, a
                # delivery or a lease is under way, so nothing is left half done.
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
                self.sharing = Sharing(state, engine, self.scheduler, self._polling)
                self.scheduler.claim = self.sharing.claim
                self.sharing.take_first()
                self.sharing.schedule()
                self.scheduler.start()
                dispatcher.start()
                log.info(
                    "running: %d sources, %d webhooks, state %s",
                    len(self.config.sources),
                    len(self.config.webhooks),
                    redact_location(self.config.state),
                )
                self._warn_of_removed_webhooks()
                housekeeping = asyncio.create_task(self._housekeeping())
                sharing = asyncio.create_task(self.sharing.keep(self._stop))
                # Every source is scheduled and the endpoints answer: started, for systemd.
                self.notifier.send("READY=1", self._status())
                await self._stop.wait()
                self.notifier.send("STOPPING=1")
                log.info("stopping: waiting up to %.0fs for in-flight work", self.config.grace)
                self.scheduler.shutdown()
                await self._finish_polls()
                await engine.flush_async()
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
        if not self._polling:
            return
        grace = 0 if self._force else self.config.grace
        _, pending = await asyncio.wait(list(self._polling.values()), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
