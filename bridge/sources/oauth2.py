"""`auth: {oauth2: ...}`: the OAuth 2 client-credentials grant (RFC 6749 §4.4) for http and feed.

One token per (token_url, client_id), shared by every source that uses it and fetched by one of
them at a time, so fifty sources due together cause one token request. It is replaced before
`expires_in` runs out, and once when the API answers 401. The client secret and the token never
reach a message: failures name the token URL's display form and the endpoint's `error` code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote_plus, urlencode

import orjson

from bridge.errors import SourceError
from bridge.http import HttpClient, Response, display
from bridge.sources.tokens import Token, TokenCache

T = TypeVar("T")

KEYS = frozenset({"token_url", "client_id", "client_secret", "scope", "audience"})
REQUIRED = ("token_url", "client_id", "client_secret")
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749 §5.2's charset

clock = time.monotonic  # when a token was issued and is due for renewal; tests may move it


@dataclass(frozen=True)
class Client:
    """One oauth2 client: where its tokens come from and what it asks for."""

    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    audience: str | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Client | None:
        """The client of a source's `auth: {oauth2: ...}`, or None without one."""
        auth = options.get("auth")
        if not (isinstance(auth, Mapping) and "oauth2" in auth):
            return None
        conf = auth["oauth2"]
        optional = {k: str(conf[k]) for k in ("scope", "audience") if conf.get(k) is not None}
        return cls(
            str(conf["token_url"]), str(conf["client_id"]), str(conf["client_secret"]), **optional
        )

    @property
    def key(self) -> tuple[str, str]:
        """What the shared token goes by."""
        return (self.token_url, self.client_id)


# Access tokens by (token URL, client id); renew_at on clock(), inf without an expires_in.
_tokens: TokenCache[tuple[str, str]] = TokenCache()


def check_oauth2(conf: Any) -> list[tuple[str, str]]:
    """Problems with the mapping under `auth.oauth2`."""
    if not isinstance(conf, Mapping):
        return [("auth.oauth2", "must be {token_url, client_id, client_secret, scope?, audience?}")]
    problems = [(f"auth.oauth2.{k}", "is not an oauth2 option") for k in conf if k not in KEYS]
    problems += [(f"auth.oauth2.{k}", "is required") for k in REQUIRED if conf.get(k) is None]
    for key in KEYS:
        value = conf.get(key)
        if value is not None and not isinstance(value, str | int):
            problems.append((f"auth.oauth2.{key}", "must be a string"))
    url = conf.get("token_url")
    if isinstance(url, str) and not re.match(r"^https?://[^/?#]+", url):
        problems.append(("auth.oauth2.token_url", "must be an http:// or https:// URL"))
    return problems


def renew_at(issued: float, expires_in: float) -> float:
    """When a token good for `expires_in` seconds from `issued` is replaced: at 90 % of its
    life or 30 s before it ends, whichever is earlier, but never before half of it (so a token
    that lives a few seconds is still used)."""
    margin = min(max(30.0, expires_in * 0.1), expires_in / 2)
    return issued + expires_in - margin


async def bearer(http: HttpClient, client: Client, timeout: float) -> str:
    """The client's current access token, fetched when there is none or it is due."""
    return await _tokens.get(client.key, clock, lambda: _fetch(http, client, timeout))


def forget(client: Client, value: str) -> None:
    """Drop the shared token if it is still `value` (the API refused it with a 401)."""
    _tokens.forget(client.key, value)


async def authorized(
    http: HttpClient,
    client: Client,
    timeout: float,
    attempt: Callable[[str], Awaitable[T]],
) -> T:
    """`attempt(authorization)`; when the API refuses the token with a 401 (a SourceError whose
    status is 401), once more with a fresh token. A second 401 fails the poll."""
    value = await bearer(http, client, timeout)
    try:
        return await attempt(f"Bearer {value}")
    except SourceError as exc:
        if exc.status != 401:
            raise
    forget(client, value)
    return await attempt(f"Bearer {await bearer(http, client, timeout)}")


async def _fetch(http: HttpClient, client: Client, timeout: float) -> Token:
    where = f"oauth2 token from {display(client.token_url)}"
    form = {"grant_type": "client_credentials"}
    if client.scope is not None:
        form["scope"] = client.scope
    if client.audience is not None:
        form["audience"] = client.audience
    # client_secret_basic (RFC 6749 §2.3.1): both parts form-encoded before the Basic encoding.
    login = (quote_plus(client.client_id), quote_plus(client.client_secret))
    issued = clock()
    try:
        response = await http.request(
            "POST",
            client.token_url,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            data=urlencode(form),
            auth=login,
            timeout=timeout,
            max_bytes=64 * 1024,
            follow_redirects=False,  # a token endpoint that redirects a POST is misconfigured
        )
    except SourceError as exc:
        detail = str(exc).split(": ", 1)[-1]  # without the client's "POST URL: " prefix
        raise SourceError(f"{where}: {_scrub(detail, client)}") from None
    return _token_of(response, client, where, issued)


def _token_of(response: Response, client: Client, where: str, issued: float) -> Token:
    try:
        doc = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        doc = None
    if not 200 <= response.status < 300:
        code = doc.get("error") if isinstance(doc, dict) else None
        shown = f" {code}" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        raise SourceError(_scrub(f"{where}: HTTP {response.status}{shown}", client))
    if not isinstance(doc, dict):
        raise SourceError(f"{where}: the answer is not a JSON object")
    value = doc.get("access_token")
    if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
        raise SourceError(f"{where}: the answer has no access_token")
    kind = doc.get("token_type", "bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise SourceError(f"{where}: token_type {str(kind)[:20]!r} is not bearer")
    expires_in = doc.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some endpoints send it as a string
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return Token(value, renew_at(issued, float(expires_in)))
    return Token(value, float("inf"))  # no lifetime given: kept until the API refuses it


def _scrub(text: str, client: Client) -> str:
    # The endpoint's words are its own; the secret must not come back in them.
    return text.replace(client.client_secret, "***") if client.client_secret else text
