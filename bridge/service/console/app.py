"""The console mounted on the daemon's status app: its guard, its error answers, its assets."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bridge.errors import BridgeError
from bridge.service.console import api, pages
from bridge.service.console.api import answer
from bridge.service.console.auth import OPEN_PREFIXES, Guard
from bridge.service.console.core import ApiError, Console

log = logging.getLogger("bridge.service.console")

STATIC = Path(__file__).resolve().parent / "static"
# No inline script or style, nothing from elsewhere, never framed by another site.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def mount(app: web.Application, console: Console) -> None:
    """Add the console's pages, /api and /static to `app`, behind the guard."""
    guard = Guard(console.listen_host, lambda: console.config().token)
    app.middlewares.append(_guarded(guard))
    app.router.add_routes(api.routes(console))
    app.router.add_routes(pages.routes(console, guard))
    app.router.add_static("/static/", STATIC)


def _guarded(guard: Guard) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(OPEN_PREFIXES):
            return await handler(request)
        in_api = path == "/api" or path.startswith("/api/")
        verdict = guard.verdict(request)
        response: web.StreamResponse
        if verdict == "forbidden":
            line = guard.forbidden_line()
            if in_api:
                return answer({"error": line}, 403)
            return web.Response(status=403, text=line + "\n", headers=HEADERS)
        if verdict == "sign-in" and not (path == "/signin" or path.startswith("/static/")):
            if in_api:
                response = answer({"error": "sign in: send Authorization: Bearer TOKEN"}, 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="bridge"'
                return response
            response = pages.sign_in_page(request, 401)
        else:
            response = await _answered(request, handler, in_api)
        response.headers.update(HEADERS)
        return response

    return middleware


async def _answered(request: web.Request, handler: Handler, in_api: bool) -> web.StreamResponse:
    """The handler's answer; under /api every failure is JSON with a one-line message."""
    try:
        return await handler(request)
    except ApiError as exc:
        return answer({"error": exc.message}, exc.status)
    except web.HTTPException as exc:
        if not in_api or exc.status < 400:
            raise
        return answer({"error": exc.reason.lower()}, exc.status)
    except BridgeError as exc:  # the state failing: say so, the daemon keeps running
        log.error("console: %s", exc)
        return answer({"error": str(exc)}, 503) if in_api else _page_error(str(exc))
    except Exception:  # a bug must cost one answer, never the daemon; the trace at debug
        log.error("console: %s %s failed", request.method, request.path)
        log.debug("console request failed", exc_info=True)
        line = "internal error (see the daemon's log)"
        return answer({"error": line}, 500) if in_api else _page_error(line, 500)


def _page_error(message: str, status: int = 503) -> web.Response:
    return web.Response(status=status, text=message + "\n")
