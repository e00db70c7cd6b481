"""`bridge listen`: a local webhook receiver that checks Standard Webhooks signatures and prints
each event, for trying a config out before pointing it at a real endpoint."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from secrets import token_bytes
from typing import Any

import click
import orjson
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

# The Standard Webhooks spec's replay window: an old (or far-future) timestamp is refused even
# with a valid signature, so a captured request cannot be played again later.
TOLERANCE = 5 * 60
MAX_SHOWN = 160  # characters of an item shown for an added or removed one

Echo = Callable[[str], None]


class Rejected(Exception):
    """A request whose signature does not hold; the message says why."""


@dataclass
class Tally:
    """How many requests a receiver accepted and rejected."""

    accepted: int = 0
    rejected: int = 0


def new_secret() -> str:
    """A fresh random webhook secret."""
    return "whsec_" + base64.b64encode(token_bytes(24)).decode()


def verify(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None = None
) -> str:
    """Check one request; returns its webhook-id or raises Rejected(reason).

    The signature is checked by the standardwebhooks package, the specification's reference
    receiver, not by bridge's own signing code: what `listen` accepts, a receiver built on it
    accepts. The checks before it only say in plainer words what is wrong with the headers.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise Rejected("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise Rejected("webhook-timestamp is not an integer") from None
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > TOLERANCE:
        when = "old" if skew > 0 else "in the future"
        raise Rejected(f"webhook-timestamp is {abs(skew):.0f}s {when} (more than 5 minutes)")
    plain = {name.lower(): value for name, value in headers.items()}
    reason = "no v1 signature matches (a wrong secret, or the body was changed)"
    for secret in secrets:  # one per key in rotation: any of them may have signed it
        try:
            Webhook(secret).verify(body, plain, json_parse=False)
            return msg_id
        except WebhookVerificationError as exc:
            if str(exc) != "No matching signature found":
                reason = f"{exc} (standardwebhooks)"
        except ValueError:  # a signature without its comma, bad base64, a body not UTF-8
            reason = "a malformed webhook-signature header, or a body that is not UTF-8"
    raise Rejected(reason)


# --- pretty-printing --------------------------------------------------------------------------

_COLORS = {
    "item.added": "green",
    "item.changed": "yellow",
    "document.changed": "yellow",
    "item.removed": "red",
    "source.failing": "red",
    "source.recovered": "green",
}
_MISSING = object()


def _short(value: Any, limit: int = MAX_SHOWN) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pointer(doc: Any, path: str) -> Any:
    """The value at an RFC 6901 JSON Pointer, or _MISSING."""
    for raw in path.split("/")[1:] if path else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


def _change_lines(before: Any, changes: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for change in changes:
        op, path = change.get("op"), change.get("path", "")
        old = _pointer(before, path)
        if op == "add":
            lines.append(f"+ {path}: {_short(change.get('value'))}")
        elif op == "remove":
            was = "" if old is _MISSING else f" (was {_short(old)})"
            lines.append(f"- {path}{was}")
        elif op == "replace":
            was = "" if old is _MISSING else f"{_short(old)} -> "
            lines.append(f"~ {path}: {was}{_short(change.get('value'))}")
        else:  # move/copy/test: bridge does not produce them, but show them honestly
            lines.append(f"{op} {path}: {_short(change)}")
    return lines


def describe(body: bytes, *, note: str) -> list[str]:
    """Lines for one received body: a headline (time, type, source, key, note) and details."""
    now = datetime.now().strftime("%H:%M:%S")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [f"{now}  (not JSON, {len(body)} bytes)  {note}", f"    {body[:MAX_SHOWN]!r}"]
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or not isinstance(doc.get("type"), str):
        # A templated `body:` (Slack, Discord, ...): show what the chat service would get.
        return [f"{now}  (templated body)  {note}", f"    {_short(doc, 1000)}"]
    type_ = doc["type"]
    head = [now, click.style(type_, fg=_COLORS.get(type_), bold=True), str(data.get("source"))]
    if data.get("key") is not None:
        head.append(f"key={data['key']}")
    lines = ["  ".join([*head, note])]
    if type_ in ("item.changed", "document.changed"):
        details = _change_lines(data.get("before"), data.get("changes") or [])
    elif type_ == "item.added":
        details = [f"+ {_short(data.get('after'))}"]
    elif type_ == "item.removed":
        details = [f"- {_short(data.get('before'))}"]
    elif type_ in ("source.failing", "source.recovered"):
        details = [
            f"{data.get('failures')} failed polls since {data.get('since')}: {data.get('error')}"
        ]
    else:
        details = [_short(data)]
    return lines + [f"    {line}" for line in details]


# --- the server -------------------------------------------------------------------------------


def listen_app(
    secrets: Sequence[str],
    *,
    echo: Echo = click.echo,
    tally: Tally | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """An app taking POSTs on any path: 401 unless signed by one of `secrets` (when given)."""
    counts = tally or Tally()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if secrets:
            try:
                msg_id = verify(secrets, request.headers, body, clock())
            except Rejected as exc:
                counts.rejected += 1
                echo(
                    click.style(f"rejected {request.method} {request.path}: {exc} (401)", fg="red")
                )
                return web.Response(status=401, text=f"{exc}\n")
            note = click.style(f"verified {msg_id}", fg="green")
        else:
            note = click.style("not verified", fg="red")
        counts.accepted += 1
        for line in describe(body, note=note):
            echo(line)
        return web.Response(status=204)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="bridge listen: POST webhooks here\n")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/{tail:.*}", receive)
    return app


async def start(
    app: web.Application, host: str, port: int
) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve `app` on host:port (0: any free port); returns the runner and the bound address."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0]
    return runner, (str(bound[0]), int(bound[1]))


def url_of(address: tuple[str, int], path: str = "/") -> str:
    """http://HOST:PORT/PATH, with brackets around an IPv6 host."""
    host, port = address
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


async def serve(host: str, port: int, secrets: Sequence[str]) -> int:
    """Run `bridge listen` until SIGINT/SIGTERM; returns the exit code."""
    runner, address = await start(listen_app(secrets), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        click.echo(f"bridge listen: POST webhooks to {url_of(address)} (any path); Ctrl-C stops")
        if secrets:
            n = len(secrets)
            click.echo(f"verifying Standard Webhooks signatures with {n} secret{'s' * (n > 1)}")
        else:
            click.echo(
                click.style(
                    "NOT verifying signatures: every request is accepted. To check them, give "
                    "the webhook a secret and pass the same with --secret (or set "
                    f"$BRIDGE_LISTEN_SECRET); a fresh one: {new_secret()}",
                    fg="yellow",
                )
            )
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    return 0
