"""bridge/state/postgresql/item_cache.py on its own: which lease kept items are valid for, the
size limits, and the order of a commit and a later read. (test_postgresql_backend.py holds it
against a real server and other instances.)"""

from __future__ import annotations

from bridge.state.postgresql.item_cache import SMALL, ItemCache


def rows(n: int, tag: str = "") -> list[tuple[str, str, bytes]]:
    return [(f"k{i}", f"h{i}{tag}", b"x" * 10) for i in range(n)]


def test_kept_items_are_valid_for_the_lease_they_were_read_under_then_the_next_after_a_commit():
    cache = ItemCache()
    cache.read("s", rows(2))  # no lease held here: nothing to vouch for them
    assert cache.known("s") is None
    cache.granted({"s": 7})
    cache.read("s", rows(2))
    assert dict(cache.known("s").hashes) == {"k0": "h0", "k1": "h1"}
    cache.committed("s", 7, [("k2", "h2", b"2")], ["k0"])
    assert cache.known("s") is None  # lease 7 is over; valid for 8, when it is granted
    cache.granted({"s": 8})
    known = cache.known("s")
    assert dict(known.hashes) == {"k1": "h1", "k2": "h2"}
    assert dict(known.contents) == {"k1": b"x" * 10, "k2": b"2"}
    cache.granted({"s": 10})  # someone else held 9
    assert cache.known("s") is None


def test_a_commit_of_an_older_lease_leaves_a_later_read_alone_and_drops_an_older_one():
    cache = ItemCache()
    cache.granted({"s": 3})
    cache.read("s", rows(1, "new"))
    cache.committed("s", 2, [("k0", "stale", b"")], [])
    assert dict(cache.known("s").hashes) == {"k0": "h0new"}
    cache.committed("s", 4, [], [])  # a commit under a lease the kept items predate
    assert cache.known("s") is None  # dropped, though lease 3 is still the last granted


def test_a_large_set_is_not_kept_and_a_commit_that_grows_one_past_the_limit_drops_it():
    cache = ItemCache()
    cache.granted({"big": 1, "s": 1})
    cache.read("big", rows(SMALL + 1))
    assert cache.known("big") is None
    cache.read("s", rows(SMALL))
    assert len(cache.known("s").hashes) == SMALL
    cache.committed("s", 1, [("one more", "h", b"")], [])
    cache.granted({"s": 2})
    assert cache.known("s") is None


def test_the_least_lately_used_go_first_when_the_budget_is_spent():
    cache = ItemCache(budget=3 * (2 + 2 + 10 + 200))  # three one-item sources
    cache.granted({name: 1 for name in "abcd"})
    for name in "abc":
        cache.read(name, rows(1))
    assert cache.known("a") is not None  # a used last: b goes first
    cache.read("d", rows(1))
    assert [n for n in "abcd" if cache.known(n) is not None] == ["a", "c", "d"]
    cache.forget(["c"])
    assert cache.known("c") is None and cache.known("d") is not None
