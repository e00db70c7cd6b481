"""The console's HTML pages, rendered with Jinja2 (autoescaped) from the API's own views.

Each page's changing part is the `live` block: the page's script fetches it again every few
seconds (X-Bridge-Fragment: 1) and swaps it in, so one template draws both.
"""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from bridge.service.console.auth import Guard
from bridge.service.console.core import PAGE, ApiError, Console
from bridge.service.console.views import changes, pretty
from bridge.service.times import relative

REFRESH_MS = 3000  # how often an open page fetches its live part again

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("bridge.service.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def ago(ts: float | None, past: str | None = None) -> str:
    """Like "2m ago", "in 3m", "now" or "-", as the command's tables say it."""
    return relative(ts, past=past)


def iso(ts: float | None) -> str:
    """A timestamp as UTC ISO 8601 (for a title attribute)."""
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


ENV.filters.update(ago=ago, iso=iso, pretty=pretty)


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    """A page, or only its live block when the page's script asks for it."""
    template = ENV.get_template(name)
    context.setdefault("refresh", REFRESH_MS)
    if request.headers.get("X-Bridge-Fragment") == "1" and "live" in template.blocks:
        html = "".join(template.blocks["live"](template.new_context(context)))
    else:
        html = template.render(context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def sign_in_page(
    request: web.Request, status: int, problem: str | None = None, wanted: str | None = None
) -> web.Response:
    """The sign-in form; after it, the browser goes back to the page it asked for."""
    if wanted is None:
        wanted = request.query.get("next") if request.path == "/signin" else request.path_qs
    return render(request, "signin.html", status, next=_local(wanted), problem=problem, refresh=0)


def _local(path: str | None) -> str:
    # Only a path on this server: never an open redirect to another site.
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


def routes(console: Console, guard: Guard) -> web.RouteTableDef:
    """The console's pages over one console."""
    pages = web.RouteTableDef()

    @pages.get("/")
    async def sources(request: web.Request) -> web.Response:
        match = request.query.get("q", "").strip()
        failing = request.query.get("failing") == "1"
        page = _page(request)
        listing = console.sources(
            match=match or None, failing=failing, offset=(page - 1) * PAGE, limit=PAGE
        )
        last = max(1, -(-listing["total"] // PAGE))

        def link(n: int) -> str:
            query = {k: v for k, v in (("q", match), ("failing", "1" if failing else "")) if v}
            return "/?" + urlencode({**query, "page": n})

        return render(
            request,
            "sources.html",
            listing=listing,
            webhooks=console.webhooks(),
            q=match,
            failing=failing,
            page=page,
            last=last,
            prev_link=link(page - 1) if page > 1 else None,
            next_link=link(page + 1) if page < last else None,
        )

    @pages.get("/sources/{name}")
    async def source(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            view = console.source(name)
        except ApiError as exc:
            return render(request, "missing.html", 404, problem=exc.message, refresh=0)
        events = console.state.admin.events(source=name, limit=20)
        for e in events:
            e["changes"] = changes(e["event"])
        return render(request, "source.html", source=view, events=events)

    @pages.get("/deliveries")
    async def deliveries(request: web.Request) -> web.Response:
        webhook = request.query.get("webhook") or None
        admin = console.state.admin
        lists = {
            status: admin.deliveries(status=status, webhook=webhook, limit=PAGE)
            for status in ("pending", "dead")
        }
        return render(
            request,
            "deliveries.html",
            webhooks=console.webhooks(),
            webhook=webhook,
            lists=lists,
        )

    @pages.get("/signin")
    async def sign_in_form(request: web.Request) -> web.Response:
        if guard.token() is None:
            raise web.HTTPSeeOther("/")
        return sign_in_page(request, 200)

    @pages.post("/signin")
    async def sign_in(request: web.Request) -> web.Response:
        # A form post, the one the console takes: it changes nothing but this browser's cookie,
        # and only with the token itself.
        form = await request.post()
        given = form.get("token")
        target = _local(str(form.get("next", "/")))
        response = web.HTTPSeeOther(target)
        if not isinstance(given, str) or not guard.sign_in(response, given.strip()):
            return sign_in_page(request, 401, "that is not the token (http.token)", target)
        raise response

    return pages
