"""Examples for bridge.polling.diff: selecting, hashing, ignoring, keys, comparing, JSON Patch."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import jmespath
import jsonpatch
import pytest

from bridge.errors import SourceError
from bridge.polling.diff import (
    Diff,
    Entry,
    canonical,
    compare,
    compile_expr,
    content_hash,
    document_entry,
    index_items,
    json_patch,
    select,
    strip_ignored,
)
from bridge.polling.keys import MARKER, key_text, key_value, storage_key

# compile_expr


def test_compile_expr_is_cached() -> None:
    assert compile_expr("components[].id") is compile_expr("components[].id")
    assert compile_expr("id").search({"id": 7}) == 7


@pytest.mark.parametrize("expr", ["a[", "", "a..b", "`x", "foo(", "a[?b ==]", "[1"])
def test_compile_expr_bad_syntax_is_one_line_value_error(expr: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_expr(expr)
    message = str(info.value)
    assert "\n" not in message
    assert repr(expr) in message


def test_compile_expr_rejects_unknown_functions() -> None:
    with pytest.raises(ValueError, match=r"unknown function lenght\(\)"):
        compile_expr("items[?lenght(name) > `3`]")
    assert compile_expr("sort_by(items[1:5:2], &length(name))[*].{n: name}") is not None


def test_compile_expr_rejects_a_non_string() -> None:
    with pytest.raises(ValueError, match="must be a string, not int"):
        compile_expr(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a string, not list"):
        compile_expr(["id"])  # type: ignore[arg-type]


_DATA = {"a": [{"id": 2}, {"id": 1}], "b": {"x": 1}}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sort_by(a)", r"sort_by\(\) takes 2 arguments, not 1"),
        ("merge()", r"merge\(\) takes at least 1 argument, not 0"),
        ("sort_by(a, id)", r"argument 2 of sort_by\(\) must be an expression reference"),
        ("max_by(a, `1`)", r"argument 2 of max_by\(\) must be an expression reference"),
        ("length(&id)", r"argument 1 of length\(\) cannot be an expression reference"),
        ("to_number(&id)", r"argument 1 of to_number\(\) cannot be an expression reference"),
        ("a[::0]", r"a slice's step cannot be 0"),
        ("a[?keys(@) == sort_byy(b)]", r"unknown function sort_byy\(\)"),
    ],
)
def test_compile_expr_refuses_what_fails_every_evaluation(expr: str, problem: str) -> None:
    # jmespath itself finds these only while searching, whatever the data: a poll would fail
    with pytest.raises((ValueError, TypeError)):
        jmespath.search(expr, _DATA)
    with pytest.raises(ValueError, match=problem):
        compile_expr(expr)


@pytest.mark.parametrize(
    "expr", ["to_string(&id)", "to_array(&id)", "&id", "type(&id)", "not_null(&id)"]
)
def test_compile_expr_refuses_an_expression_reference_where_no_json_comes_of_it(
    expr: str,
) -> None:
    # jmespath runs these, and the "value" is the repr of an object (a new one each poll) or None
    found = jmespath.search(expr, _DATA)
    assert found is None or "_Expression object" in str(found)
    with pytest.raises(ValueError, match="expression reference"):
        compile_expr(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "sort_by(a, &id)[*].id",
        "sort_by(a, not_null(&id))[*].id",  # not_null passes its `&id` through
        "sort_by(a, `null` || &id)[*].id",
        "not_null(z, a)[::-1].id",
        "merge(b, b) | keys(@)",
    ],
)
def test_compile_expr_accepts_what_can_run(expr: str) -> None:
    assert compile_expr(expr).search(_DATA) == jmespath.search(expr, _DATA)


# select


def test_select_document_mode_one_page_is_the_page_itself() -> None:
    page = {"status": "ok"}
    assert select([page], None) is page


def test_select_document_mode_list_pages_are_concatenated() -> None:
    assert select([[1, 2], [3], []], None) == [1, 2, 3]


def test_select_document_mode_mixed_pages_are_a_list_of_pages() -> None:
    assert select([{"a": 1}, [2]], None) == [{"a": 1}, [2]]


@pytest.mark.parametrize("items_expr", [None, "items"])
def test_select_without_pages_fails_instead_of_looking_empty(items_expr: str | None) -> None:
    with pytest.raises(SourceError, match="no pages"):
        select([], items_expr)


def test_select_items_from_several_pages_in_order() -> None:
    pages = [{"data": {"items": [{"id": 1}, {"id": 2}]}}, {"data": {"items": [{"id": 3}]}}]
    assert select(pages, "data.items") == [{"id": 1}, {"id": 2}, {"id": 3}]


def test_select_empty_list_is_a_real_answer() -> None:
    assert select([{"items": []}], "items") == []
    assert select([{"items": [1]}, {"items": []}], "items") == [1]


def test_select_nothing_found_fails() -> None:
    with pytest.raises(SourceError) as info:
        select([{"items": [1]}, {"other": []}], "items")
    assert str(info.value) == "items expression 'items' found nothing"


@pytest.mark.parametrize(
    ("page", "typename"),
    [({"items": {"a": 1}}, "dict"), ({"items": "x"}, "str"), ({"items": 3}, "int")],
)
def test_select_non_list_fails(page: dict[str, Any], typename: str) -> None:
    with pytest.raises(SourceError) as info:
        select([page], "items")
    assert str(info.value) == f"items expression 'items' found a {typename}, not a list"


def test_select_projection_and_runtime_errors() -> None:
    assert select([{"a": [{"b": 1}, {"b": 2}]}], "a[].b") == [1, 2]
    with pytest.raises(SourceError, match="failed"):
        select([{"a": 1}], "abs(a) == `1` && length(a)")
    with pytest.raises(SourceError, match="bad JMESPath expression"):
        select([{"a": 1}], "a[")


def test_a_variadic_functions_later_arguments_are_type_checked_too() -> None:
    # jmespath checks only the arguments a signature lists: merge() got None past the first
    # and raised a TypeError out of the poll (found by the property test of `bridge check`).
    with pytest.raises(SourceError) as info:
        select([{"a": 1}], "merge(@, id)")
    assert str(info.value) == (
        "items expression 'merge(@, id)' failed: In function merge(), invalid type for value: "
        "None, expected one of: ['object'], received: \"null\""
    )
    assert select([{"a": [{"id": 1}], "b": {"c": 2}}], "merge(@, b).a") == [{"id": 1}]


# canonical and content_hash


def test_canonical_sorts_keys_without_whitespace() -> None:
    assert canonical({"b": 1, "a": [True, None, 1.5, "é"]}) == (
        '{"a":[true,null,1.5,"é"],"b":1}'.encode()
    )
    assert canonical({"b": {"d": 1, "c": 2}, "a": 0}) == canonical({"a": 0, "b": {"c": 2, "d": 1}})


@pytest.mark.parametrize("value", [None, True, 0, -1.25, "", "x", [], {}, [[{}]]])
def test_canonical_any_json_value(value: Any) -> None:
    assert isinstance(canonical(value), bytes)


def test_canonical_tells_json_types_apart() -> None:
    assert len({canonical(1), canonical(1.0), canonical(True), canonical("1")}) == 4


def test_canonical_big_ints_and_deep_nesting_fall_back_to_the_stdlib() -> None:
    assert canonical({"n": 2**70, "a": 1}) == b'{"a":1,"n":1180591620717411303424}'
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    assert canonical(deep) == b"[" * 300 + b"1" + b"]" * 300


def test_content_hash_is_blake2b_16_of_canonical() -> None:
    value = {"b": 2, "a": 1}
    expected = hashlib.blake2b(b'{"a":1,"b":2}', digest_size=16).hexdigest()
    assert content_hash(value) == expected
    assert len(expected) == 32
    assert content_hash({"a": 1, "b": 2}) == expected


# strip_ignored

RELEASE = {
    "id": 1,
    "name": "v1",
    "updated_at": "2026-01-01",
    "author": {"login": "ann", "avatar_url": "https://a/1"},
    "assets": [{"name": "a.whl", "download_count": 5}, {"name": "b.tgz", "download_count": 7}],
}


def test_strip_top_level_nested_and_through_lists() -> None:
    original = copy.deepcopy(RELEASE)
    stripped = strip_ignored(RELEASE, ("updated_at", "author.avatar_url", "assets.download_count"))
    assert stripped == {
        "id": 1,
        "name": "v1",
        "author": {"login": "ann"},
        "assets": [{"name": "a.whl"}, {"name": "b.tgz"}],
    }
    assert RELEASE == original


def test_strip_missing_paths_and_non_dict_values_are_fine() -> None:
    value = {"a": "text", "b": [1, "x", None, {"c": 1, "d": 2}], "e": None}
    assert strip_ignored(value, ("a.x", "b.c", "e.f", "zz", "zz.y")) == {
        "a": "text",
        "b": [1, "x", None, {"d": 2}],
        "e": None,
    }


def test_strip_lists_of_lists_and_a_list_document() -> None:
    doc = [{"t": 1, "k": 1}, [{"t": 2, "k": 2}], "s"]
    assert strip_ignored(doc, ("t",)) == [{"k": 1}, [{"k": 2}], "s"]
    assert doc == [{"t": 1, "k": 1}, [{"t": 2, "k": 2}], "s"]


def test_strip_a_parent_and_its_child() -> None:
    value = {"author": {"login": "ann"}, "x": 1}
    assert strip_ignored(value, ("author.login", "author")) == {"x": 1}
    assert strip_ignored(value, ("author", "author.login")) == {"x": 1}


def test_strip_shares_what_it_does_not_change() -> None:
    assert strip_ignored(RELEASE, ()) is RELEASE
    assert strip_ignored(RELEASE, ("missing", "author.missing")) is RELEASE
    stripped = strip_ignored(RELEASE, ("updated_at",))
    assert stripped is not RELEASE
    assert stripped["author"] is RELEASE["author"]


def test_strip_scalars_are_returned_as_is() -> None:
    assert strip_ignored(5, ("a",)) == 5
    assert strip_ignored(None, ("a.b",)) is None


# index_items


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("abc", "abc"),
        ("", ""),
        (123, "123"),
        (-4, "-4"),
        (1.5, "1.5"),
        (2.0, "2.0"),
        (True, "true"),
        (False, "false"),
        (["a", 1], '["a",1]'),
        ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
        (2**70, "1180591620717411303424"),
    ],
)
def test_keys_of_every_json_type(value: Any, key: str) -> None:
    # A string is stored as it is; any other value as MARKER and its JSON, so 1 and "1" differ.
    stored = key if isinstance(value, str) else MARKER + key
    index = index_items([{"id": value, "x": 1}], "id", ())
    assert list(index) == [stored] == [storage_key(value)]
    assert index[stored].key == stored
    assert key_value(stored) == value and type(key_value(stored)) is type(value)
    assert key_text(value) == key


def test_index_entries_hash_stripped_content_and_keep_the_full_item() -> None:
    items = [{"id": "a", "v": 1, "updated_at": "t1"}, {"id": "b", "v": 2, "updated_at": "t2"}]
    index = index_items(items, "id", ("updated_at",))
    assert list(index) == ["a", "b"]
    entry = index["a"]
    assert entry == Entry("a", content_hash({"id": "a", "v": 1}), items[0])
    assert entry.item is items[0]


def test_index_duplicates_first_wins() -> None:
    items = [{"id": 1, "v": "first"}, {"id": 2}, {"id": 1, "v": "second"}, {"id": "1"}]
    index = index_items(items, "id", ())
    assert list(index) == [storage_key(1), storage_key(2), "1"]  # the string "1" is another key
    assert index[storage_key(1)].item == {"id": 1, "v": "first"}
    assert index[storage_key(1)].hash == content_hash({"id": 1, "v": "first"})


def test_index_missing_or_null_key_fails() -> None:
    with pytest.raises(SourceError) as info:
        index_items([{"id": 1}, {"name": "x"}], "id", ())
    assert str(info.value) == "item 1 has no key for 'id'"
    with pytest.raises(SourceError, match="item 0 has no key for 'id'"):
        index_items([{"id": None}], "id", ())
    with pytest.raises(SourceError, match="item 0 has no key"):
        index_items(["just a string"], "id", ())


def test_index_key_expressions_beyond_a_field() -> None:
    items = [
        {"repo": {"owner": "o", "name": "r"}, "n": 1},
        {"repo": {"owner": "o", "name": "s"}, "n": 2},
    ]
    assert list(index_items(items, "repo.name", ())) == ["r", "s"]
    assert list(index_items(items, "[repo.owner, n]", ())) == [
        storage_key(["o", 1]),
        storage_key(["o", 2]),
    ]
    assert list(index_items(items, "join('/', [repo.owner, repo.name])", ())) == ["o/r", "o/s"]
    with pytest.raises(SourceError, match="key expression 'length\\(n\\)' failed"):
        index_items(items, "length(n)", ())


@pytest.mark.parametrize("expr", ["a", "a.b", "a.b.c", '"a"."b"'])
def test_index_field_chains_agree_with_jmespath(expr: str) -> None:
    items: list[Any] = [
        {"a": {"b": {"c": 1}}},
        {"a": {"b": [1]}},
        {"a": {"b": "s"}},
        {"a": [{"b": 1}]},
        {"a": "str"},
        {"a": {"b": {"c": "z"}}},
        [1, 2],
    ]
    for item in items:
        expected = jmespath.search(expr, item)
        if expected is None:
            with pytest.raises(SourceError):
                index_items([item], expr, ())
        else:
            assert list(index_items([item], expr, ())) == [storage_key(expected)]


def test_index_without_key_uses_the_content_hash() -> None:
    items = [{"v": 1, "t": "x"}, {"v": 2}, {"t": "y", "v": 1}]
    index = index_items(items, None, ("t",))
    assert list(index) == [content_hash({"v": 1}), content_hash({"v": 2})]
    assert all(entry.key == entry.hash for entry in index.values())
    assert index[content_hash({"v": 1})].item is items[0]


def test_document_entry() -> None:
    document = {"components": [{"id": 1, "updated_at": "t"}], "page": {"updated_at": "t"}}
    entry = document_entry(document, ("components.updated_at", "page"))
    assert entry == Entry("", content_hash({"components": [{"id": 1}]}), document)
    assert document_entry([1, 2], ()).hash == content_hash([1, 2])


# compare


def _entries(**hashes: str) -> dict[str, Entry]:
    return {key: Entry(key, digest, None) for key, digest in hashes.items()}


def test_compare_added_changed_removed_in_order() -> None:
    old = {"r": "1", "a": "1", "b": "2", "c": "3", "q": "9"}
    new = _entries(z="0", c="3", b="changed", y="0", a="changed")
    assert compare(old, new) == Diff(added=["z", "y"], changed=["b", "a"], removed=["r", "q"])


def test_compare_incomplete_never_removes() -> None:
    old = {"a": "1", "b": "2"}
    new = _entries(a="x", c="3")
    assert compare(old, new, complete=False) == Diff(added=["c"], changed=["a"], removed=[])


def test_compare_unchanged_and_empty() -> None:
    assert compare({"a": "1"}, _entries(a="1")) == Diff([], [], [])
    assert compare({}, {}) == Diff([], [], [])
    assert compare({"a": "1"}, {}) == Diff([], [], ["a"])


def test_compare_with_indexed_items() -> None:
    before = index_items([{"id": 1, "s": "up"}, {"id": 2, "s": "up"}], "id", ())
    after = index_items([{"id": 2, "s": "down"}, {"id": 3, "s": "up"}], "id", ())
    stored = {key: entry.hash for key, entry in before.items()}
    assert compare(stored, after) == Diff(
        added=[storage_key(3)], changed=[storage_key(2)], removed=[storage_key(1)]
    )


# json_patch


def test_patch_replace_matches_the_spec_example() -> None:
    before = {"id": "abc123", "status": "operational"}
    after = {"id": "abc123", "status": "degraded"}
    assert json_patch(before, after) == [{"op": "replace", "path": "/status", "value": "degraded"}]


def test_patch_add_and_remove() -> None:
    assert json_patch({"a": 1}, {"a": 1, "b": [1]}) == [{"op": "add", "path": "/b", "value": [1]}]
    assert json_patch({"a": 1, "b": 2}, {"a": 1}) == [{"op": "remove", "path": "/b"}]
    assert json_patch({"t": ["x", "y", "z"]}, {"t": ["x", "z"]}) == [
        {"op": "remove", "path": "/t/1"}
    ]


def test_patch_paths_escape_slash_and_tilde() -> None:
    before = {"a/b": 1, "m~n": 1}
    after = {"a/b": 2, "m~n": 2, "~/": 0}
    patch = json_patch(before, after)
    assert sorted(patch, key=lambda op: op["path"]) == [
        {"op": "replace", "path": "/a~1b", "value": 2},
        {"op": "replace", "path": "/m~0n", "value": 2},
        {"op": "add", "path": "/~0~1", "value": 0},
    ]
    assert jsonpatch.apply_patch(before, patch) == after


def test_patch_leaves_out_ignored_fields() -> None:
    before = {"id": 1, "status": "up", "updated_at": "t1", "author": {"avatar_url": "a"}}
    after = {"id": 1, "status": "down", "updated_at": "t2", "author": {"avatar_url": "b"}}
    ignore = ("updated_at", "author.avatar_url")
    assert json_patch(before, after, ignore) == [
        {"op": "replace", "path": "/status", "value": "down"}
    ]
    assert json_patch(before, {**before, "updated_at": "t3"}, ignore) == []


def test_patch_of_documents_and_type_changes() -> None:
    assert json_patch(1, True) == [{"op": "replace", "path": "", "value": True}]
    assert json_patch({"n": 1}, {"n": 1.0}) == [{"op": "replace", "path": "/n", "value": 1.0}]
    assert json_patch([1], [1]) == []


def test_patch_does_not_mutate_its_inputs() -> None:
    before = {"a": [{"b": 1}], "t": 1}
    after = {"a": [{"b": 2}, {"c": 3}], "t": 2}
    saved = copy.deepcopy((before, after))
    patch = json_patch(before, after, ("t",))
    assert (before, after) == saved
    patch[0]["value"] = "scribbled"
    assert (before, after) == saved
