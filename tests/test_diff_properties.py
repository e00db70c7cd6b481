"""Properties of bridge.polling.diff against a plain reference model, on random JSON."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import jmespath
import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import SourceError
from bridge.polling.diff import Diff, canonical, compare, index_items, json_patch, strip_ignored

IGNORE = ("updated_at", "meta.etag", "assets.size")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
# A small alphabet keeps member names colliding, and "/" and "~" exercise JSON Pointer escaping.
names = st.text(alphabet="ab/~é", max_size=3)


def json_of(max_leaves: int) -> st.SearchStrategy[Any]:
    """Any JSON value (no NaN or infinity) of at most max_leaves scalars."""
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


json_values = json_of(12)
small_values = json_of(3)
# Items shaped so that the ignore paths above often, but not always, match something; each
# field is optional, so both sides of a pair can have it or not.
meta = st.fixed_dictionaries({}, optional={"etag": small_values, "x": small_values})
assets = st.lists(
    st.fixed_dictionaries({}, optional={"size": small_values, "name": small_values}), max_size=3
)
# 1 and "1" share a key on purpose: a key is its string, or the JSON of anything else.
ids = st.sampled_from([0, 1, 2, 3, "1", "a", "b", True, 1.5])
items = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "name": small_values,
        "status": st.sampled_from(["up", "down"]),
        "updated_at": small_values,
        "meta": meta | small_values,
        "assets": assets | small_values,
    },
)
item_lists = st.lists(items, max_size=5)


def ref_strip(value: Any, paths: tuple[str, ...]) -> Any:
    """The obvious implementation: a deep copy with each path deleted."""
    value = copy.deepcopy(value)
    for path in paths:
        _delete(value, path.split("."))
    return value


def _delete(value: Any, parts: list[str]) -> None:
    if isinstance(value, list):
        for element in value:
            _delete(element, parts)
    elif isinstance(value, dict) and parts[0] in value:
        if len(parts) == 1:
            del value[parts[0]]
        else:
            _delete(value[parts[0]], parts[1:])


def ref_key(value: Any) -> str:
    # A string is its own key; any other JSON value (and a string starting with the marker) its
    # JSON after the marker "\x1f": 1, "1", true and "true" are four keys.
    if isinstance(value, str) and not value.startswith("\x1f"):
        return value
    return "\x1f" + canonical(value).decode()


def ref_same(a: Any, b: Any) -> bool:
    """Equal as JSON: unlike ==, 1, 1.0 and true differ."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def first_by_key(item_list: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in item_list:
        out.setdefault(ref_key(item["id"]), item)
    return out


def stored(item_list: list[dict[str, Any]]) -> dict[str, str]:
    return {key: entry.hash for key, entry in index_items(item_list, "id", IGNORE).items()}


@st.composite
def before_and_after(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two item lists where after repeats some of before, so unchanged items occur too."""
    before = draw(item_lists)
    kept = draw(st.lists(st.sampled_from(before), max_size=len(before))) if before else []
    return before, draw(st.permutations(kept + draw(item_lists)))


@given(before_and_after())
def test_compare_matches_the_model(lists: tuple[list[dict[str, Any]], ...]) -> None:
    before, after = lists
    old, new = first_by_key(before), first_by_key(after)
    index = index_items(after, "id", IGNORE)
    diff = compare(stored(before), index)
    assert diff.added == [key for key in new if key not in old]
    assert diff.removed == [key for key in old if key not in new]
    assert diff.changed == [
        key
        for key in new
        if key in old and not ref_same(ref_strip(old[key], IGNORE), ref_strip(new[key], IGNORE))
    ]
    # A partial window of pages: the same additions and changes, never a removal.
    partial = compare(stored(before), index, complete=False)
    assert partial == Diff(diff.added, diff.changed, [])


DELETE = object()


@given(item_lists, st.lists(small_values | st.just(DELETE), min_size=1, max_size=6))
def test_changing_only_ignored_fields_changes_nothing(
    before: list[dict[str, Any]], replacements: list[Any]
) -> None:
    after = copy.deepcopy(before)
    values = itertools.cycle(replacements)

    def scribble(obj: dict[str, Any], name: str) -> None:
        value = next(values)
        if value is DELETE:
            obj.pop(name, None)
        else:
            obj[name] = copy.deepcopy(value)

    for item in after:
        scribble(item, "updated_at")
        if isinstance(item.get("meta"), dict):
            scribble(item["meta"], "etag")
        if isinstance(item.get("assets"), list):
            for asset in item["assets"]:
                if isinstance(asset, dict):
                    scribble(asset, "size")
    diff = compare(stored(before), index_items(after, "id", IGNORE))
    assert (diff.added, diff.changed, diff.removed) == ([], [], [])


@given(json_values | items, json_values | items, st.sampled_from([(), IGNORE]))
def test_patch_turns_stripped_before_into_stripped_after(
    before: Any, after: Any, ignore: tuple[str, ...]
) -> None:
    saved = copy.deepcopy((before, after))
    patch = json_patch(before, after, ignore)
    stripped_before, stripped_after = ref_strip(before, ignore), ref_strip(after, ignore)
    result = jsonpatch.apply_patch(stripped_before, patch)
    assert canonical(result) == canonical(stripped_after)
    # An empty patch exactly when the hashes agree: no item.changed without changes, and back.
    assert (patch == []) == (canonical(stripped_before) == canonical(stripped_after))
    assert canonical(saved) == canonical((before, after))


@given(json_values | items, st.sampled_from([IGNORE, ("name",), ("meta", "meta.x")]))
def test_strip_matches_the_model_and_never_mutates(value: Any, ignore: tuple[str, ...]) -> None:
    saved = copy.deepcopy(value)
    assert canonical(strip_ignored(value, ignore)) == canonical(ref_strip(value, ignore))
    assert canonical(value) == canonical(saved)


chain_items = st.lists(
    json_values
    | st.fixed_dictionaries({"a": json_values})
    | st.fixed_dictionaries({"a": st.fixed_dictionaries({"b": json_values})}),
    max_size=5,
)


@given(chain_items)
def test_field_chain_keys_agree_with_jmespath(item_list: list[Any]) -> None:
    found = [jmespath.search("a.b", item) for item in item_list]
    if None in found:
        with pytest.raises(SourceError, match=f"item {found.index(None)} has no key"):
            index_items(item_list, "a.b", ())
        return
    assert list(index_items(item_list, "a.b", ())) == list(
        dict.fromkeys(ref_key(value) for value in found)
    )
