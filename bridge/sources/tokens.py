"""Tokens that sources share (OAuth 2 access tokens, GitHub App installation tokens): kept per
key until they are due for renewal, fetched by one source at a time while the others wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Token:
    """A token and when to replace it (on its owner's clock; inf: when it is refused)."""

    value: str
    renew_at: float


class TokenCache(Generic[K]):
    """The current token of each key, renewed when due, one fetch at a time per key."""

    def __init__(self) -> None:
        self._tokens: dict[K, Token] = {}
        # One lock per key and event loop: a lock is bound to the loop it first waited in.
        self._locks: dict[K, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}

    async def get(
        self, key: K, now: Callable[[], float], fetch: Callable[[], Awaitable[Token]]
    ) -> str:
        """The key's token, from `fetch` when there is none or it is due at `now()`."""
        token = self._tokens.get(key)
        if token is not None and now() < token.renew_at:
            return token.value
        async with self._lock(key):
            token = self._tokens.get(key)  # another source may have fetched it meanwhile
            if token is None or now() >= token.renew_at:
                token = self._tokens[key] = await fetch()
            return token.value

    def forget(self, key: K, value: str) -> None:
        """Drop the key's token if it is still `value` (it was refused with a 401)."""
        token = self._tokens.get(key)
        if token is not None and token.value == value:
            del self._tokens[key]

    def _lock(self, key: K) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        held = self._locks.get(key)
        if held is None or held[0] is not loop:
            held = self._locks[key] = (loop, asyncio.Lock())
        return held[1]
