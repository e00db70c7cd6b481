"""The daemon's /healthz and /metrics endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.service.metrics import Metrics


def status_app(*, healthy: Callable[[], Awaitable[bool]], metrics: Metrics) -> web.Application:
    """An app answering /healthz (200 or 503) and /metrics (Prometheus text format)."""

    async def healthz(request: web.Request) -> web.Response:
        ok = await healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "unhealthy\n")

    async def metrics_page(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def start_status_server(
    host: str, port: int, *, healthy: Callable[[], Awaitable[bool]], metrics: Metrics
) -> web.AppRunner:
    """Serve the status app on host:port; the caller cleans the runner up."""
    runner = web.AppRunner(status_app(healthy=healthy, metrics=metrics), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
