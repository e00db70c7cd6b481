"""`bridge run`: schedule every source, deliver continuously, reload on SIGHUP, stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping
from typing import Any, TextIO

from bridge.config import Config, load_config
from bridge.delivery.dispatcher import Dispatcher
from bridge.errors import BridgeError
from bridge.http import HttpClient
from bridge.polling.engine import Engine
from bridge.polling.scheduler import Scheduler
from bridge.service.metrics import Metrics
from bridge.state import State, open_state

log = logging.getLogger("bridge.service.daemon")

# Seconds between writes of buffered unchanged polls. Each write touches the pages of every row it
# updates, so fewer, larger writes cost less per poll (benchmarks/RESULTS.md). A crash loses at
# most these timestamps, which only bring a poll forward.
FLUSH_INTERVAL = 10.0
TRIM_INTERVAL = 3600.0  # seconds between retention passes
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
        self._stop = asyncio.Event()
        self._force = False
        self._polls: set[asyncio.Task[Any]] = set()
        self.state: State | None = None
        self.engine: Engine | None = None
        self.dispatcher: Dispatcher | None = None
        self.scheduler: Scheduler | None = None

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

    async def healthy(self) -> bool:
        """The scheduler runs and the state takes a write (probed off the event loop)."""
        if self.scheduler is None or not self.scheduler.running or self.state is None:
            return False
        return await asyncio.to_thread(self.state.writable)

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

    def _schedule_all(self, names: set[str] | None = None) -> None:
        assert self.engine is not None and self.scheduler is not None
        rows = self.engine.snapshots.source_rows()
        for spec in self.engine.config.sources:
            if names is None or spec.name in names:
                row = rows.get(spec.name)
                self.scheduler.schedule(spec, row.last_poll_at if row else None)

    # --- reload --------------------------------------------------------------------------------

    async def reload(self) -> None:
        """Apply a changed config without a restart; an invalid one is refused, the old one kept."""
        assert self.engine is not None and self.scheduler is not None
        try:
            new = load_config(self.config.path, self.env)
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
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), FLUSH_INTERVAL)
            except TimeoutError:
                pass
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
                self.metrics.observe_queue(
                    lambda: state.admin.delivery_counts(self.config.webhooks)
                )
                self.scheduler = Scheduler(
                    self._poll,
                    lane=self._lane,
                    lane_width=self.config.per_host,
                    claim=engine.lease,
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
                            host, port, healthy=self.healthy, metrics=self.metrics
                        )
                    except OSError as exc:
                        raise BridgeError(
                            f"{self.config.path}: http.listen {host}:{port}: {exc.strerror}"
                        ) from exc
                log.info(
                    "running: %d sources, %d webhooks, state %s",
                    len(self.config.sources),
                    len(self.config.webhooks),
                    self.config.state,
                )
                self._warn_of_removed_webhooks()
                housekeeping = asyncio.create_task(self._housekeeping())
                await self._stop.wait()
                log.info("stopping: waiting up to %.0fs for in-flight work", self.config.grace)
                self.scheduler.shutdown()
                await self._finish_polls()
                engine.flush()
                await dispatcher.stop(0 if self._force else self.config.grace)
                await asyncio.gather(housekeeping, return_exceptions=True)
        finally:
            if runner is not None:
                await runner.cleanup()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            state.coordination.release_daemon()
            state.close()
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
