"""`kind: github` with `app:`: authenticating as a GitHub App installation.

An RS256 JWT signed with the app's private key (PyJWT, with cryptography for RSA) is exchanged at
`POST {api_url}/app/installations/{id}/access_tokens` for an installation token, which is kept per
(api_url, app_id, installation_id) and replaced 5 minutes before its `expires_at`. Neither the
key nor a token ever reaches a message; a key that cannot be read names its file only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from bridge.errors import SourceError
from bridge.http import HttpClient, display
from bridge.sources.tokens import Token, TokenCache

KEYS = frozenset({"app_id", "installation_id", "private_key_file", "private_key"})
RENEW_BEFORE = 300.0  # GitHub's tokens live an hour: a fresh one 5 minutes before the end
JWT_LIFE = 540  # GitHub refuses an exp more than 10 minutes ahead; iat is 60 s back for skew

clock = time.time  # expires_at is wall-clock time


@dataclass(frozen=True)
class App:
    """One installation of a GitHub App on one API."""

    api_url: str
    app_id: str
    installation_id: str
    key: RSAPrivateKey

    @property
    def cache_key(self) -> tuple[str, str, str]:
        """What its installation token is kept under."""
        return (self.api_url, self.app_id, self.installation_id)


# Installation tokens by (api_url, app id, installation id); renew_at on clock().
_tokens: TokenCache[tuple[str, str, str]] = TokenCache()


def _is_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value > 0) or (isinstance(value, str) and value.isdigit())


def check_app(conf: Any) -> list[tuple[str, str]]:
    """Problems with `app:`; a private key is read and parsed here, so `bridge check` says it."""
    if not isinstance(conf, Mapping):
        return [("app", "must be {app_id, installation_id, private_key_file | private_key}")]
    problems = [(f"app.{k}", "is not an app option") for k in conf if k not in KEYS]
    for key in ("app_id", "installation_id"):
        if conf.get(key) is None:
            problems.append((f"app.{key}", "is required"))
        elif not _is_id(conf[key]):
            problems.append((f"app.{key}", "must be a number"))
    given = [k for k in ("private_key_file", "private_key") if conf.get(k) is not None]
    if len(given) != 1:
        problems.append(("app", "give one of private_key_file: or private_key:"))
    else:
        try:
            load_key(conf)
        except ValueError as exc:
            problems.append((f"app.{given[0]}", str(exc)))
    return problems


def load_key(conf: Mapping[str, Any]) -> RSAPrivateKey:
    """The app's RSA private key; ValueError with a line naming the file (never the key)."""
    if conf.get("private_key_file") is not None:
        name = str(conf["private_key_file"])
        where = f"private key file {name}"
        try:
            data = Path(name).expanduser().read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {where}: {exc.strerror or type(exc).__name__}") from None
    else:
        text = str(conf.get("private_key") or "")
        if "\n" not in text:
            # A PEM kept on one line in an environment variable, its line breaks written \n.
            text = text.replace("\\n", "\n")
        where, data = "private_key", text.encode()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # cryptography's reasons say what is wrong with the format, not what the key holds.
        reason = "encrypted keys are not supported" if isinstance(exc, TypeError) else "not a PEM"
        raise ValueError(f"{where} is not an RSA private key ({reason})") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError(f"{where} is not an RSA private key (GitHub Apps sign with RS256)")
    return key


def app_of(api_url: str, conf: Mapping[str, Any]) -> App:
    """The App of a source's `app:` (checked before); SourceError if its key went bad since."""
    try:
        key = load_key(conf)
    except ValueError as exc:
        raise SourceError(f"app: {exc}") from None
    return App(api_url, str(conf["app_id"]), str(conf["installation_id"]), key)


def app_jwt(app: App, now: float) -> str:
    """The JWT that authenticates as the app: iat 60 s back (clock skew), exp 9 minutes ahead."""
    claims = {"iat": int(now) - 60, "exp": int(now) + JWT_LIFE, "iss": app.app_id}
    return jwt.encode(claims, app.key, algorithm="RS256")


async def installation_token(http: HttpClient, app: App, timeout: float) -> str:
    """The installation's current token, fetched when there is none or it is due."""
    return await _tokens.get(app.cache_key, clock, lambda: _fetch(http, app, timeout))


def forget(app: App, value: str) -> None:
    """Drop the installation token if it is still `value` (GitHub refused it with a 401)."""
    _tokens.forget(app.cache_key, value)


async def _fetch(http: HttpClient, app: App, timeout: float) -> Token:
    url = f"{app.api_url}/app/installations/{app.installation_id}/access_tokens"
    where = f"GitHub App installation token from {display(url)}"
    now = clock()
    try:
        response = await http.request(
            "POST",
            url,
            headers={
                "Authorization": f"Bearer {app_jwt(app, now)}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            timeout=timeout,
            max_bytes=256 * 1024,
            follow_redirects=False,
            block_host=False,  # GitHub's limits are per installation, kept by the budgets
        )
    except SourceError as exc:
        detail = str(exc).split(": ", 1)[-1]  # without the client's "POST URL: " prefix
        raise SourceError(f"{where}: {detail}") from None
    try:
        doc = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        doc = None
    if not 200 <= response.status < 300:
        message = doc.get("message") if isinstance(doc, dict) else None
        said = f": {' '.join(str(message).split())[:200]}" if message else ""
        raise SourceError(f"{where}: HTTP {response.status}{said}")
    value = doc.get("token") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
        raise SourceError(f"{where}: the answer has no token")
    expires = _timestamp(doc.get("expires_at") if isinstance(doc, dict) else None)
    if expires is None:
        raise SourceError(f"{where}: the answer has no expires_at")
    # 5 minutes before the end, or halfway for a token that lives less than 10 minutes.
    margin = min(RENEW_BEFORE, max(0.0, expires - now) / 2)
    return Token(value, expires - margin)


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None
