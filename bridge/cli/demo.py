"""`bridge demo`: the whole idea in seconds, on this machine alone. A fake status page keeps
changing, the real daemon polls it, and a receiver verifies and prints each signed webhook."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import tempfile
import textwrap
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
from aiohttp import web

from bridge.cli.listen import Tally, listen_app, new_secret, start, url_of
from bridge.config import load_config

Echo = Callable[[str], None]

COMPONENTS = [
    ("api", "API"),
    ("web", "Website"),
    ("db", "Database"),
    ("auth", "Login"),
    ("cdn", "CDN"),
    ("search", "Search"),
    ("email", "Email delivery"),
]
OUTAGES = ["degraded_performance", "partial_outage", "major_outage"]
FIRST_CHANGE = 0.5  # seconds after the first poll: the second poll (1 s later) sees it

CONFIG = """\
# Written by `bridge demo` for this run only.
state: bridge.db
grace: 2s
http:
  listen: 127.0.0.1:{metrics_port}  # /healthz and /metrics while it runs
webhooks:
  receiver:
    url: {receiver}
    secret: ${{BRIDGE_DEMO_SECRET}}  # a random whsec_ secret made for this run
    retry: [1s, 2s, 5s]
sources:
  - name: status-page
    kind: http
    url: {api}
    items: components       # JMESPath: the list of items
    key: id                 # JMESPath: each item's identity
    ignore: [updated_at]    # it moves with every change; no change in itself
    every: 1s
    jitter: 0s
    webhooks: [receiver]
"""


class StatusPage:
    """A fake Statuspage-style components API whose components flip status now and then,
    with one added or removed every fourth change."""

    def __init__(self, echo: Echo, *, every: float = 2.0, rng: random.Random | None = None):
        self.echo = echo
        self.every = every
        self.rng = rng or random.Random()
        self.components: dict[str, dict[str, Any]] = {}
        for key, name in COMPONENTS[:4]:
            self.components[key] = self._component(key, name, "operational")
        self.changes = 0
        self.polled = asyncio.Event()

    @staticmethod
    def _component(key: str, name: str, status: str) -> dict[str, Any]:
        return {"id": key, "name": name, "status": status, "updated_at": _now_iso()}

    def document(self) -> bytes:
        """The current answer, as a status page serves it."""
        doc = {"page": {"name": "Demo Cloud"}, "components": list(self.components.values())}
        return orjson.dumps(doc)

    async def handle(self, request: web.Request) -> web.Response:
        """Serve the document with an ETag, answering 304 when it did not change."""
        self.polled.set()
        body = self.document()
        etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

    def app(self) -> web.Application:
        """The API as an aiohttp app."""
        app = web.Application()
        app.router.add_get("/api/v2/components.json", self.handle)
        return app

    def change(self) -> str:
        """Change something; returns what, in words."""
        self.changes += 1
        absent = [(k, n) for k, n in COMPONENTS if k not in self.components]
        if self.changes % 4 == 0 and (absent or len(self.components) > 3):
            if absent and (len(self.components) <= 3 or self.rng.random() < 0.5):
                key, name = self.rng.choice(absent)
                self.components[key] = self._component(key, name, "operational")
                return f"{name} is added"
            key = self.rng.choice(list(self.components))
            return f"{self.components.pop(key)['name']} is removed"
        item = self.components[self.rng.choice(list(self.components))]
        old = item["status"]
        new = self.rng.choice(OUTAGES) if old == "operational" else "operational"
        item.update(status=new, updated_at=_now_iso())
        return f"{item['name']}: {old} -> {new}"

    async def keep_changing(self) -> None:
        """Change something every few seconds, starting just after the first poll."""
        await self.polled.wait()
        await asyncio.sleep(FIRST_CHANGE)
        while True:
            what = self.change()
            stamp = datetime.now().strftime("%H:%M:%S")
            self.echo(click.style(f"{stamp}  the status page changes: {what}", dim=True))
            await asyncio.sleep(self.every)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_demo(*, duration: float | None = None, echo: Echo = click.echo) -> int:
    """Run the demo until SIGINT/SIGTERM or `duration` seconds; returns the exit code."""
    from bridge.service.daemon import Daemon

    page = StatusPage(echo)
    secret = new_secret()
    tally = Tally()
    api_runner, api = await start(page.app(), "127.0.0.1", 0)
    hook_runner, hook = await start(listen_app([secret], echo=echo, tally=tally), "127.0.0.1", 0)
    changer: asyncio.Task[None] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bridge-demo-") as tmp:
            metrics_port = free_port()
            path = Path(tmp) / "bridge.yaml"
            text = CONFIG.format(
                metrics_port=metrics_port,
                receiver=url_of(hook, "/hook"),
                api=url_of(api, "/api/v2/components.json"),
            )
            path.write_text(text)
            env = {"BRIDGE_DEMO_SECRET": secret}
            daemon = Daemon(load_config(path, env), env=env)
            echo(_intro(text, page.every, metrics_port, duration))
            changer = asyncio.create_task(page.keep_changing())
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, daemon.request_stop)
            code = await daemon.run()
    finally:
        if changer is not None:
            changer.cancel()
        await api_runner.cleanup()
        await hook_runner.cleanup()
    echo(
        f"\n{tally.accepted} webhooks received, every signature verified"
        + (f"; {tally.rejected} rejected" if tally.rejected else "")
        + ".\nNext: `bridge init` writes a starter bridge.yaml; `bridge listen` is this receiver."
    )
    return code


def _intro(config: str, every: float, metrics_port: int, duration: float | None) -> str:
    stop = f"it stops after {duration:g}s" if duration is not None else "Ctrl-C stops it"
    return "\n".join(
        [
            "bridge demo: everything runs on this machine, nothing leaves it.",
            f"A fake status page changes every {every:g}s; `bridge run` polls it every second with",
            "this config, and sends signed webhooks to a receiver that verifies each one, like",
            "`bridge listen` does:",
            "",
            textwrap.indent(config.rstrip(), "    "),
            "",
            f"While it runs: curl http://127.0.0.1:{metrics_port}/metrics; {stop}.",
            "The first poll is a silent baseline; after that, only changes are sent.",
            "",
        ]
    )
