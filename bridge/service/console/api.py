"""/api: the console's data as JSON, and its actions (poll now, replay, discard).

Changing requests are POSTs with a JSON body: a browser's form cannot send one to another site
without asking (CORS), so no page elsewhere can make a signed-in browser change anything.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any, get_args

import orjson
from aiohttp import web

from bridge.model import DeliveryStatus
from bridge.service.console.core import MAX_LIMIT, PAGE, ApiError, Console

STATUSES: tuple[str, ...] = get_args(DeliveryStatus)


def answer(data: Any, status: int = 200) -> web.Response:
    """A JSON answer."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def integer(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    """A query parameter as an integer in [low, high]; ApiError 400 otherwise."""
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, f"{key} must be a whole number from {low} to {high}")
    return int(raw)


def flag(request: web.Request, key: str) -> bool:
    """A query parameter as a boolean: true/1/yes or false/0/no (absent: false)."""
    raw = request.query.get(key, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ApiError(400, f"{key} must be true or false")


async def json_body(request: web.Request, known: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object; 415 unless it is sent as JSON, 400 if it is not an object
    of the known keys."""
    if request.content_type != "application/json":
        raise ApiError(415, "send a JSON body (Content-Type: application/json)")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    for key in body:
        if key not in known:
            raise ApiError(400, f"unknown key {key!r} (known: {', '.join(known) or 'none'})")
    return body


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ApiError(400, f"{key} must be a non-empty string")
    return value


def _event_ids(console: Console, body: dict[str, Any]) -> list[str]:
    ids = body.get("event_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise ApiError(400, "event_ids must be a list of event ids")
    if len(ids) > MAX_LIMIT:
        raise ApiError(400, f"at most {MAX_LIMIT} event_ids at a time")
    unknown = sorted(set(ids) - console.state.admin.event_ids_known(ids))
    if unknown:
        raise ApiError(404, f"unknown event id {unknown[0]!r}")
    return list(ids)


def _webhook(console: Console, body: dict[str, Any], *, stored: bool) -> str | None:
    name = _text(body, "webhook")
    if name is None or name in console.config().webhooks:
        return name
    # discard may name a webhook taken out of the config, whose deliveries are still queued
    if stored and name in console.state.admin.delivery_counts():
        return name
    raise ApiError(404, f"unknown webhook {name!r}")


def _deliveries(n: int) -> str:
    return f"{n} delivery" if n == 1 else f"{n} deliveries"


def routes(console: Console) -> web.RouteTableDef:
    """The /api routes over one console."""
    api = web.RouteTableDef()

    @api.get("/api/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        text = resources.files(__package__).joinpath("openapi.json").read_bytes()
        return web.Response(body=text, content_type="application/json")

    @api.get("/api/sources")
    async def sources(request: web.Request) -> web.Response:
        match = request.query.get("q") or None
        page = console.sources(
            match=match,
            failing=flag(request, "failing"),
            offset=integer(request, "offset", 0, 0, 10**9),
            limit=integer(request, "limit", PAGE, 1, MAX_LIMIT),
        )
        return answer(page)

    @api.get("/api/sources/{name}")
    async def source(request: web.Request) -> web.Response:
        return answer(console.source(request.match_info["name"]))

    @api.get("/api/events")
    async def events(request: web.Request) -> web.Response:
        name = request.query.get("source") or None
        if name is not None:
            console.source(name)  # 404 if unknown
        limit = integer(request, "limit", 20, 1, MAX_LIMIT)
        return answer({"events": console.state.admin.events(source=name, limit=limit)})

    @api.get("/api/deliveries")
    async def deliveries(request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(STATUSES)}")
        webhook = request.query.get("webhook") or None
        source = request.query.get("source") or None
        if source is not None:
            console.source(source)  # 404 if unknown
        limit = integer(request, "limit", 100, 1, MAX_LIMIT)
        rows = console.state.admin.deliveries(
            status=status,  # type: ignore[arg-type]  # checked against STATUSES above
            webhook=webhook,
            source=source,
            limit=limit,
        )
        return answer({"webhooks": console.webhooks(), "deliveries": rows})

    @api.post("/api/sources/{name}/poll")
    async def poll(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        # 404 before the body's checks: the URL is wrong
        if not console.source(name)["configured"]:
            raise ApiError(
                404,
                f"source {name} is not in this instance's config: the instance that has it "
                "polls it",
            )
        await json_body(request, ())
        result = await console.poll(name)
        n = len(result.bodies)
        message = f"{name}: {result.result}, {n} event{'' if n == 1 else 's'}"
        if result.error:
            message += f": {result.error}"
        return answer(
            {
                "source": name,
                "result": result.result,
                "duration": result.duration,
                "events": n,
                "error": result.error,
                "message": message,
            }
        )

    @api.post("/api/replay")
    async def replay(request: web.Request) -> web.Response:
        body = await json_body(request, ("event_ids", "dead", "webhook"))
        dead = body.get("dead", False)
        if not isinstance(dead, bool):
            raise ApiError(400, "dead must be true or false")
        if bool(body.get("event_ids")) == dead:
            raise ApiError(400, 'give "event_ids": [...] or "dead": true, not both, not neither')
        event_ids = _event_ids(console, body)
        webhook = _webhook(console, body, stored=False)
        config = console.config()
        admin = console.state.admin
        now = time.time()
        if webhook and event_ids:
            for event_id in event_ids:  # replay to a webhook the event never went to
                admin.add_deliveries(event_id, [webhook], now)
        # Only to configured webhooks: a removed one's deliveries would wait with no sender.
        n = admin.requeue(
            now, event_ids=event_ids, dead=dead, webhook=webhook, webhooks=list(config.webhooks)
        )
        console.wake([webhook] if webhook else list(config.webhooks))
        return answer({"queued": n, "message": f"queued {_deliveries(n)} again"})

    @api.post("/api/discard")
    async def discard(request: web.Request) -> web.Response:
        body = await json_body(request, ("event_ids", "webhook", "source"))
        event_ids = _event_ids(console, body)
        webhook = _webhook(console, body, stored=True)
        source = _text(body, "source")
        if source is not None:
            console.source(source)
        if not (event_ids or webhook or source):
            raise ApiError(400, 'give "event_ids", "webhook" or "source": what to discard')
        discarded, in_flight = console.state.admin.discard(
            time.time(), event_ids=event_ids, webhook=webhook, source=source
        )
        message = f"discarded {_deliveries(discarded)}"
        if in_flight:
            message += f" ({in_flight} being sent now count as delivered if that attempt succeeds)"
        return answer({"discarded": discarded, "in_flight": in_flight, "message": message})

    return api
