"""Helpers shared by the bundled source plugins: body hashing and the `auth:` option."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bridge.sources.base import Option

if TYPE_CHECKING:  # imported for a source with `auth: {oauth2: ...}` only
    from bridge.sources.oauth2 import Client

# An absolute http(s) URL with a plain host name or IPv4 address: what nearly every config holds,
# accepted without urlsplit, which was a large part of loading a big config; anything else is
# split.
_PLAIN_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]*[A-Za-z0-9](?::[0-9]*)?(?:[/?#]|\Z)")

AUTH_OPTION = Option(
    "mapping",
    secret=True,
    help="{bearer: TOKEN}, {basic: {username, password}} or "
    "{oauth2: {token_url, client_id, client_secret, scope?, audience?}}",
)


def body_hash(bodies: Iterable[bytes]) -> str:
    """Hex BLAKE2b (16 bytes) of the bodies, each length-prefixed so page boundaries count."""
    digest = hashlib.blake2b(digest_size=16)
    for body in bodies:
        digest.update(len(body).to_bytes(8, "big"))
        digest.update(body)
    return digest.hexdigest()


def check_auth(auth: Any) -> list[tuple[str, str]]:
    """Problems with `auth:`: {bearer: TOKEN}, {basic: {username, password}} or {oauth2: ...}."""
    if auth is None:
        return []
    if isinstance(auth, Mapping) and set(auth) == {"bearer"}:
        if not isinstance(auth["bearer"], str):
            return [("auth.bearer", "must be a string")]
        if any(c in auth["bearer"] for c in "\r\n\0"):  # it goes into the Authorization header
            return [("auth.bearer", "cannot hold line breaks (it is sent in an HTTP header)")]
        return []
    if isinstance(auth, Mapping) and set(auth) == {"basic"}:
        basic = auth["basic"]
        if not isinstance(basic, Mapping) or set(basic) != {"username", "password"}:
            return [("auth.basic", "must be {username: ..., password: ...}")]
        return []
    if isinstance(auth, Mapping) and set(auth) == {"oauth2"}:
        from bridge.sources.oauth2 import check_oauth2

        return check_oauth2(auth["oauth2"])
    return [
        (
            "auth",
            "must be {bearer: TOKEN} or {basic: {username, password}}, "
            "or {oauth2: {token_url, client_id, client_secret}}",
        )
    ]


def check_http_url(url: Any) -> str | None:
    """A problem with a URL to poll, or None when it is an absolute http(s) URL."""
    if not isinstance(url, str):
        return "must be a string"
    if _PLAIN_HTTP_URL.match(url):
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL"
    return None


def oauth2_client(options: Mapping[str, Any]) -> Client | None:
    """The client of a source's `auth: {oauth2: ...}`, or None without one (oauth2.py, its token
    cache and its client, are then never imported)."""
    auth = options.get("auth")
    if not (isinstance(auth, Mapping) and "oauth2" in auth):
        return None
    from bridge.sources.oauth2 import Client

    return Client.of(options)


def request_headers(options: Mapping[str, Any]) -> dict[str, str]:
    """The configured `headers:` as strings, with a bearer `auth:` as Authorization."""
    headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
    auth = options.get("auth")
    if auth and "bearer" in auth:
        headers["Authorization"] = f"Bearer {auth['bearer']}"
    return headers


def basic_auth(options: Mapping[str, Any]) -> tuple[str, str] | None:
    """(username, password) of a basic `auth:`, else None."""
    auth = options.get("auth")
    if auth and "basic" in auth:
        return (str(auth["basic"]["username"]), str(auth["basic"]["password"]))
    return None
