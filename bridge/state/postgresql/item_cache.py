"""The items of the sources this instance polls, as it last read or committed them, kept so that
its next poll of a source reads none of them from the server: a changed poll then costs no round
trip (and no worker thread) before its commit, as on SQLite, where they are read in place.

Kept items are vouched for by the poll leases' tokens. Every lease of a source takes the next
token (coordination.py), a commit that writes items is fenced by its lease (snapshots.py), and a
commit without a lease moves the token too. So between two leases of a source with consecutive
tokens nobody wrote its items: items that were stored when this instance's lease T began (read
under it, or as its commit under T - 1 left them) are still stored when its lease T + 1 is
granted. Any other token (another instance or `bridge once` polled the source meanwhile, or a
lease of ours ended without a commit) and they are read again.

Only small sources are kept (at most SMALL items), within BUDGET bytes in all, the least lately
used dropped first: every source polled at a fast pace stays, and a large set does not fill the
memory with contents that a poll reads only when they changed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from bridge.model import KnownItems

SMALL = 64
BUDGET = 32 << 20


def _size(items: KnownItems) -> int:
    # Roughly what the strings and bytes take, with the overhead of each object.
    return sum(len(k) + len(h) + len(items.contents[k]) + 200 for k, h in items.hashes.items())


class ItemCache:
    """Small sources' stored items, each valid for one lease token: the one of the lease under
    which they are the stored items. Called from worker threads and from the event loop."""

    def __init__(self, budget: int = BUDGET):
        self.budget = budget
        self._lock = threading.Lock()
        self._tokens: dict[str, int] = {}  # the last lease token granted here, by source
        # source -> (the token they are valid for, the items, their size), least lately used
        # first. A KnownItems is never changed once kept: a caller may hold it meanwhile.
        self._kept: OrderedDict[str, tuple[int, KnownItems, int]] = OrderedDict()
        self._bytes = 0

    def granted(self, tokens: Mapping[str, int]) -> None:
        """Leases granted to this instance (coordination.py), name -> token."""
        with self._lock:
            self._tokens.update(tokens)

    def known(self, source: str) -> KnownItems | None:
        """The stored items of a source, if those kept are valid for its current lease here."""
        with self._lock:
            kept = self._kept.get(source)
            if kept is None or kept[0] != self._tokens.get(source):
                return None
            self._kept.move_to_end(source)
            return kept[1]

    def read(self, source: str, rows: Sequence[tuple[str, str, bytes]]) -> None:
        """A source's items as a read found them (key, hash, content) while its lease is held
        here; kept for that lease if they are few."""
        with self._lock:
            token = self._tokens.get(source)
            self._drop(source)
            if token is not None and len(rows) <= SMALL:
                hashes = {k: h for k, h, _ in rows}
                self._keep(source, token, KnownItems(hashes, {k: c for k, _, c in rows}))

    def committed(
        self,
        source: str,
        token: int,
        upserts: Iterable[tuple[str, str, bytes]],
        deletes: Iterable[str],
    ) -> None:
        """A commit under lease `token` wrote these item changes (none: a poll that changed
        nothing); the items kept for that lease become those of the next one."""
        with self._lock:
            kept = self._kept.get(source)
            if kept is None:
                return
            if kept[0] > token:  # read afresh under a later lease of ours: already current
                return
            self._drop(source)
            if kept[0] == token:
                hashes, contents = dict(kept[1].hashes), dict(kept[1].contents)
                for key in deletes:
                    hashes.pop(key, None)
                    contents.pop(key, None)
                for key, h, c in upserts:
                    hashes[key], contents[key] = h, c
                if len(hashes) <= SMALL:
                    self._keep(source, token + 1, KnownItems(hashes, contents))

    def forget(self, sources: Iterable[str]) -> None:
        """Drop what is kept of these sources: written in a way that no token vouches for."""
        with self._lock:
            for source in sources:
                self._drop(source)

    def _keep(self, source: str, token: int, items: KnownItems) -> None:
        size = _size(items)
        self._kept[source] = (token, items, size)
        self._bytes += size
        while self._bytes > self.budget and self._kept:
            self._drop(next(iter(self._kept)))

    def _drop(self, source: str) -> None:
        kept = self._kept.pop(source, None)
        if kept is not None:
            self._bytes -= kept[2]
