"""An origin API that keeps a record of who polled what and when, for the tests of several `bridge
run` on one database: each request's path, the instance that sent it (its X-Instance header,
`${INSTANCE}` in the shared config), its start and end, the version it was answered; and per path
the most requests it ever had in flight at once.

Each path serves one item, `[{"id": 1, "v": VERSION}]`. A path set `moving` answers each request
with the next version, so every poll of it finds a change (the events of one source then carry
increasing versions, in the order they were created); otherwise its version moves only when the
test says. Each request is held `delay` seconds, so polls that overlapped would show.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass

import orjson
from aiohttp import web

from tests.conftest import ThreadedServer


@dataclass(frozen=True)
class Hit:
    """One request: its path, the instance that sent it, when it came and ended, the version."""

    path: str
    instance: str
    start: float
    end: float
    version: int


@dataclass
class Item:
    version: int = 0
    moving: bool = False
    delay: float = 0.0


class TrackingOrigin:
    """The origin, served on 127.0.0.1:<free port> from a thread of its own."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.hits: list[Hit] = []
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()  # the test reads while the server's thread writes
        app = web.Application()
        app.router.add_get("/{name}", self.handle)
        self.server = ThreadedServer(app)

    def __enter__(self) -> TrackingOrigin:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def url(self, path: str) -> str:
        return self.server.url(path)

    def serve(
        self, path: str, *, version: int = 0, moving: bool = False, delay: float = 0.0
    ) -> None:
        """Serve `path` from now on (or change how)."""
        with self._lock:
            self.items[path] = Item(version, moving, delay)

    def set_version(self, path: str, version: int) -> None:
        with self._lock:
            self.items[path].version = version

    def freeze(self) -> None:
        """Every path keeps the version it has now: polls find no change any more."""
        with self._lock:
            for item in self.items.values():
                item.moving = False

    def record(self) -> list[Hit]:
        """The requests that have ended, in the order they started."""
        with self._lock:
            return sorted(self.hits, key=lambda h: h.start)

    def busy(self, path: str) -> bool:
        """Whether a request of `path` is being answered right now."""
        with self._lock:
            return self.in_flight[path] > 0

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        start = time.time()
        with self._lock:
            item = self.items.get(path)
            if item is None:
                return web.Response(status=404)
            if item.moving:
                item.version += 1
            version, delay = item.version, item.delay
            self.in_flight[path] += 1
            self.most_in_flight[path] = max(self.most_in_flight[path], self.in_flight[path])
        try:
            if delay:
                await asyncio.sleep(delay)
            body = orjson.dumps([{"id": 1, "v": version}])
            return web.Response(body=body, content_type="application/json")
        finally:
            with self._lock:
                self.in_flight[path] -= 1
                hit = Hit(path, request.headers.get("X-Instance", ""), start, time.time(), version)
                self.hits.append(hit)
