"""The daemon's /healthz and /metrics endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from bridge.service.metrics import Metrics


def exposition(metrics: Metrics, accept: str) -> tuple[bytes, str]:
    """The metrics page and its content type: OpenMetrics when the scraper asks for it (a
    Prometheus that prefers it, for exemplars and `_created`), else the Prometheus text format."""
    if "application/openmetrics-text" in accept:
        body: bytes = openmetrics.generate_latest(metrics.registry)  # type: ignore[no-untyped-call]
        return body, openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


Health = Callable[[], Awaitable[str | None]]  # None when healthy, else what is wrong


def status_app(*, healthy: Health, metrics: Metrics) -> web.Application:
    """An app answering /healthz (200, or 503 with the reason) and /metrics (Prometheus text
    format, or OpenMetrics on request)."""

    async def healthz(request: web.Request) -> web.Response:
        problem = await healthy()
        if problem is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"unhealthy: {problem}\n")

    async def metrics_page(request: web.Request) -> web.Response:
        body, content_type = exposition(metrics, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def start_status_server(
    host: str,
    port: int,
    *,
    healthy: Health,
    metrics: Metrics,
    mount: Callable[[web.Application], None] | None = None,
) -> web.AppRunner:
    """Serve the status app on host:port (with what `mount` adds to it: the console); the
    caller cleans the runner up."""
    app = status_app(healthy=healthy, metrics=metrics)
    if mount is not None:
        mount(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
