"""`confirm: N`: a change is let through only once N successful polls in a row have seen it.

A change is the difference between an item as stored (the last confirmed state) and as fetched;
its candidate is the fetched content's hash, or REMOVED. Each poll that sees the same candidate
again counts it; one that sees another starts it at 1; one that sees the item as stored drops
it (it flipped back). Failed polls never get here, so they neither count nor reset."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.polling import diff

REMOVED = "-"  # the candidate of a removal: no content hash is "-"

Pending = dict[str, tuple[str, int]]


def hold(
    pending: Mapping[str, tuple[str, int]],
    found: diff.Diff,
    entries: Mapping[str, diff.Entry],
    *,
    needed: int,
    complete: bool,
    exempt: Mapping[str, str] | None = None,
) -> tuple[diff.Diff, Pending | None]:
    """The part of `found` confirmed by this poll, and the pending confirmations after it (None:
    as they were). `exempt`: keys that pass at once (an old version's key text, moved silently).
    When the answer is `complete` False, a pending key absent from it was not seen: kept as is."""
    after: Pending = {}
    kept: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    for kind, names in (("added", found.added), ("changed", found.changed)):
        for key in names:
            if _seen(key, entries[key].hash, pending, after, needed, exempt):
                kept[kind].append(key)
    for key in found.removed:
        if _seen(key, REMOVED, pending, after, needed, exempt):
            kept["removed"].append(key)
    if not complete:
        for key, candidate in pending.items():
            if key not in entries and key not in after and key not in kept["removed"]:
                after[key] = candidate
    confirmed = diff.Diff(kept["added"], kept["changed"], kept["removed"])
    return confirmed, (None if after == dict(pending) else after)


def _seen(
    key: str,
    candidate: str,
    pending: Mapping[str, tuple[str, int]],
    after: Pending,
    needed: int,
    exempt: Mapping[str, str] | None,
) -> bool:
    # Count this poll's sighting of `candidate`; True once it is confirmed (then no longer held).
    if exempt and key in exempt:
        return True
    last = pending.get(key)
    seen = last[1] + 1 if last is not None and last[0] == candidate else 1
    if seen >= needed:
        return True
    after[key] = (candidate, seen)
    return False
