"""What a polling request carries and where it goes: its headers (auth, URL credentials,
validators), and redirects followed by hand: where the next request goes, with which method and
body, and whether the caller's headers may go there too.

aiohttp's own redirects drop only Authorization, Cookie and Proxy-Authorization on the way to
another origin: an X-Api-Key configured for one host would follow to any host a redirect names.
Here every header the caller gave (its credentials, `auth:`, cookies, validators) is kept to the
origin it was given for.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import NamedTuple

import yarl

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10  # aiohttp's default: the tenth redirect in a row is a failure


class Hop(NamedTuple):
    """The request a redirect asks for."""

    method: str
    url: yarl.URL
    data: bytes | str | None


class RedirectError(ValueError):
    """A redirect that cannot be followed; its message is one line, without the URL."""


def origin_of(url: yarl.URL) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) with the default port filled in: what makes two URLs one origin."""
    return (url.scheme, url.host, url.port)


def next_hop(
    method: str, url: yarl.URL, data: bytes | str | None, status: int, location: str
) -> Hop:
    """Where a `status` redirect with this Location sends a request made to `url`.

    303, and 301/302 after a POST, become a GET without a body (as aiohttp and browsers do);
    307 and 308 keep the method and body. Credentials in the Location are dropped: a server does
    not choose what we authenticate with.
    """
    try:
        target = url.join(yarl.URL(location))
    except ValueError as exc:
        raise RedirectError("redirected to a location that is not a URL") from exc
    if target.scheme not in ("http", "https"):
        raise RedirectError("redirected to a URL that is not http:// or https://")
    if not target.host:
        raise RedirectError("redirected to a URL without a host")
    if target.user is not None or target.password is not None:
        target = target.with_user(None)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        return Hop("GET", target, None)
    return Hop(method, target, data)


def kept_headers(
    headers: Mapping[str, str] | None, data: bytes | str | None
) -> Mapping[str, str] | None:
    """What of the caller's headers goes to another origin: none but the body's Content-Type."""
    if not headers or data is None:
        return None
    kept = {k: v for k, v in headers.items() if k.lower() == "content-type"}
    return kept or None


def url_login(url: yarl.URL) -> tuple[yarl.URL, str | None]:
    """The URL without its user:password@, and those as a basic Authorization value (or None).

    Credentials in the URL are sent as a header of the caller's, so they too stay with the
    origin they were given for, and the URL kept in answers and messages has none.
    """
    if url.user is None and url.password is None:
        return url, None
    return url.with_user(None), _basic(url.user or "", url.password or "")


def with_auth(
    headers: Mapping[str, str] | None, auth: tuple[str, str] | None
) -> Mapping[str, str] | None:
    """`headers` with a basic `auth` (username, password) as Authorization."""
    if auth is None:
        return headers
    merged = dict(headers) if headers else {}
    merged["Authorization"] = _basic(*auth)
    return merged


def _basic(username: str, password: str) -> str:
    # Built here rather than with aiohttp's auth=, which 3.14 deprecates with a warning.
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def with_login(headers: Mapping[str, str] | None, login: str | None) -> Mapping[str, str] | None:
    """`headers` with the Authorization value of url_login (None: as they are)."""
    if login is None:
        return headers
    return {**(headers or {}), "Authorization": login}


def with_validators(
    headers: Mapping[str, str] | None, etag: str | None, last_modified: str | None
) -> Mapping[str, str] | None:
    """`headers` with If-None-Match / If-Modified-Since for the stored validators."""
    if etag is None and last_modified is None:
        return headers
    merged = dict(headers) if headers else {}
    if etag is not None:
        merged["If-None-Match"] = etag
    if last_modified is not None:
        merged["If-Modified-Since"] = last_modified
    return merged
