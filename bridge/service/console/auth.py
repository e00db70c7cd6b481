"""Who may use the console and /api: `http.token` (a Bearer header or the sign-in cookie), or,
without a token, only a loopback listen address. /healthz, /metrics and /static stay open."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from typing import Literal

from aiohttp import web

COOKIE = "bridge_console"
# Paths that answer whatever the token: the probes, and the console's own assets (no secrets).
OPEN_PREFIXES = ("/healthz", "/metrics", "/static/")
NO_TOKEN = (
    "the console and /api answer without a token only on a loopback listen address: "
    "set http.token in the config to use them on {host}"
)

Verdict = Literal["ok", "sign-in", "forbidden"]


def is_loopback(host: str) -> bool:
    """Whether a listen host only takes connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve to anything
        return False


def session_value(token: str) -> str:
    """The sign-in cookie's value: derived from the token, so the cookie never holds it."""
    return hmac.new(token.encode(), b"bridge console session", hashlib.sha256).hexdigest()


def token_matches(token: str, given: str) -> bool:
    """Whether `given` is the token, compared in constant time."""
    return hmac.compare_digest(token.encode(), given.encode())


class Guard:
    """The rules, judged by the address the server listens on (not the client's)."""

    def __init__(self, listen_host: str, token: Callable[[], str | None]):
        self.listen_host = listen_host
        self.loopback = is_loopback(listen_host)
        self.token = token  # read at each request: a reload's new token applies at once

    def verdict(self, request: web.Request) -> Verdict:
        """ok, sign-in (a token is set and the request lacks it) or forbidden (no token)."""
        token = self.token()
        if token is None:
            return "ok" if self.loopback else "forbidden"
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and token_matches(token, given.strip()):
            return "ok"
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(
            session_value(token).encode(), cookie.encode()
        ):
            return "ok"
        return "sign-in"

    def forbidden_line(self) -> str:
        """The 403's one line."""
        return NO_TOKEN.format(host=self.listen_host)

    def sign_in(self, response: web.StreamResponse, given: str) -> bool:
        """Set the session cookie on `response` if `given` is the token."""
        token = self.token()
        if token is None or not token_matches(token, given):
            return False
        response.set_cookie(
            COOKIE, session_value(token), httponly=True, samesite="Strict", path="/"
        )
        return True
