"""Pure functions: select items, canonical hash, compare snapshots, JSON Patch.

How keys are stored and read back, and canonical JSON itself, are keys.py's."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jmespath.exceptions
import jmespath.parser
import jmespath.visitor
import orjson

from bridge.errors import SourceError
from bridge.jmespath import OPTIONS, compile_jmespath, one_line
from bridge.model import MAX_DEPTH
from bridge.polling.keys import MARKER, canonical, storage_key

__all__ = [
    "Diff",
    "Entry",
    "canonical",
    "check_depth",
    "compare",
    "compile_expr",
    "content_hash",
    "document_entry",
    "index_items",
    "json_patch",
    "select",
    "strip_ignored",
]

# An ignore tree: field name -> the tree below it, or None to drop the whole field.
_IgnoreTree = dict[str, Any]
_DROP = object()
# orjson encodes at most this many levels of nesting. A document wrapped in (this - MAX_DEPTH)
# lists encodes exactly when it is at most MAX_DEPTH deep: the check costs one encoding in C.
_ORJSON_DEPTH = 254


def compile_expr(expr: str) -> jmespath.parser.ParsedResult:
    """Compile a JMESPath expression once; ValueError with a one-line message when it is bad."""
    # bridge.jmespath is the one compiler: `bridge check` refuses exactly what it refuses.
    return compile_jmespath(expr)


def _compiled(expr: str) -> jmespath.parser.ParsedResult:
    # An expression from a plugin, not from the config, may reach us unchecked: fail the poll.
    try:
        return compile_expr(expr)
    except ValueError as exc:
        raise SourceError(str(exc)) from exc


def select(pages: list[Any], items_expr: str | None) -> Any:
    """The document (items_expr None) or the list of items the expression finds in every page."""
    if not pages:
        # Treating "nothing fetched" as an empty list would turn into a flood of item.removed.
        raise SourceError("the source returned no pages")
    check_depth(pages)
    if items_expr is None:
        if len(pages) == 1:
            return pages[0]
        if all(isinstance(page, list) for page in pages):
            return [item for page in pages for item in page]
        return list(pages)
    parsed = _compiled(items_expr)
    items: list[Any] = []
    for page in pages:
        try:
            found = parsed.search(page, OPTIONS)
        except jmespath.exceptions.JMESPathError as exc:
            raise SourceError(f"items expression {items_expr!r} failed: {one_line(exc)}") from exc
        if found is None:
            raise SourceError(f"items expression {items_expr!r} found nothing")
        if not isinstance(found, list):
            raise SourceError(
                f"items expression {items_expr!r} found a {type(found).__name__}, not a list"
            )
        items.extend(found)
    return items


def check_depth(pages: list[Any]) -> None:
    """Raise SourceError if a page nests arrays and objects deeper than MAX_DEPTH levels.

    Checked on every answer before anything else reads it, the first poll's as every later
    one's, so what a baseline accepts no later poll refuses, and a source is never wedged.
    """
    for page in pages:
        wrapped = page
        for _ in range(_ORJSON_DEPTH - MAX_DEPTH):
            wrapped = [wrapped]
        try:
            orjson.dumps(wrapped)
            continue
        except orjson.JSONEncodeError:
            pass  # too deep, or a value orjson refuses (an integer past 64 bits): measure
        if _deeper_than(page, MAX_DEPTH):
            raise SourceError(f"document nested deeper than {MAX_DEPTH} levels")


def _deeper_than(doc: Any, limit: int) -> bool:
    # Without recursion: the document may be nested far past the interpreter's limit.
    stack = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for value in node.values() if isinstance(node, dict) else node:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
    return False


def content_hash(obj: Any) -> str:
    """Hex BLAKE2b (16 bytes) of canonical(obj)."""
    return hashlib.blake2b(canonical(obj), digest_size=16).hexdigest()


@functools.lru_cache(maxsize=256)
def _ignore_tree(ignore: tuple[str, ...]) -> _IgnoreTree:
    tree: _IgnoreTree = {}
    for path in ignore:
        node = tree
        *parents, leaf = path.split(".")
        for name in parents:
            child = node.setdefault(name, {})
            if child is None:  # an ancestor is dropped whole already
                break
            node = child
        else:
            node[leaf] = None
    return tree


def _strip(obj: Any, tree: _IgnoreTree) -> Any:
    # Copy only the containers on a stripped path, so items without ignored fields cost nothing.
    if isinstance(obj, dict):
        out: dict[str, Any] | None = None
        for name, below in tree.items():
            if name not in obj:
                continue
            value = obj[name]
            new = _DROP if below is None else _strip(value, below)
            if new is value:
                continue
            if out is None:
                out = dict(obj)
            if new is _DROP:
                del out[name]
            else:
                out[name] = new
        return obj if out is None else out
    if isinstance(obj, list):
        copied: list[Any] | None = None
        for i, element in enumerate(obj):
            new = _strip(element, tree)
            if new is not element:
                if copied is None:
                    copied = list(obj)
                copied[i] = new
        return obj if copied is None else copied
    return obj


def strip_ignored(obj: Any, ignore: tuple[str, ...]) -> Any:
    """obj without the dotted paths in ignore, applied to every element of lists on the way.

    obj is never mutated; the result shares unchanged parts with it (obj itself when nothing is
    stripped), so treat it as read-only.
    """
    if not ignore:
        return obj
    return _strip(obj, _ignore_tree(ignore))


class Entry(NamedTuple):
    """One item of a snapshot: its key, the hash of its compared content, the item as received."""

    # A tuple rather than a frozen dataclass: made once per item of every changed poll, and a
    # tuple is built in half the time.

    key: str
    hash: str
    item: Any


def _field_chain(node: Mapping[str, Any]) -> list[str] | None:
    # The names of a plain `a.b.c` expression, whose value a dict lookup gives much faster.
    if node["type"] == "field":
        return [node["value"]]
    if node["type"] == "subexpression":
        names: list[str] = []
        for child in node["children"]:
            chain = _field_chain(child)
            if chain is None:
                return None
            names.extend(chain)
        return names
    return None


def _lookup(item: Any, names: list[str]) -> Any:
    for name in names:
        if not isinstance(item, dict):
            return None
        item = item.get(name)
    return item


def _key_getter(expr: str) -> Callable[[Any], Any]:
    # ParsedResult.search builds an interpreter per call, which costs more than hashing the item.
    parsed = _compiled(expr)
    names = _field_chain(parsed.parsed)
    if names is not None and len(names) == 1:
        name = names[0]
        return lambda item: item.get(name) if isinstance(item, dict) else None
    if names is not None:
        return lambda item: _lookup(item, names)
    visit = jmespath.visitor.TreeInterpreter(OPTIONS).visit
    tree = parsed.parsed

    def search(item: Any) -> Any:
        try:
            return visit(tree, item)
        except jmespath.exceptions.JMESPathError as exc:
            raise SourceError(f"key expression {expr!r} failed: {one_line(exc)}") from exc

    return search


def index_items(
    items: list[Any],
    key_expr: str | None,
    ignore: tuple[str, ...],
    *,
    key_by_content: bool = False,
) -> dict[str, Entry]:
    """Stored key (keys.storage_key) -> Entry for items, in their order; the first of several
    items with one key wins. An item the key expression finds nothing for fails, unless
    `key_by_content`: then it is keyed by its content hash, as all are without `key_expr`."""
    tree = _ignore_tree(ignore) if ignore else None
    get_key = _key_getter(key_expr) if key_expr is not None else None
    # The hot path for large documents: content_hash inlined, its names bound locally.
    dumps, sort_keys, blake2b = orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.blake2b
    index: dict[str, Entry] = {}
    key: str | None = None
    for i, item in enumerate(items):
        if get_key is not None:
            value = get_key(item)
            if type(value) is str and not value.startswith(MARKER):
                key = value  # nearly every key: storage_key's first case, inline
            elif value is not None:
                key = storage_key(value)  # 1 and "1" stay two items
            elif key_by_content:
                key = None
            else:
                raise SourceError(f"item {i} has no key for {key_expr!r}")
            # Pages can overlap while the API changes under paging; the first sighting wins.
            if key is not None and key in index:
                continue
        compared = item if tree is None else _strip(item, tree)
        try:
            digest = blake2b(dumps(compared, option=sort_keys), digest_size=16).hexdigest()
        except orjson.JSONEncodeError:
            digest = content_hash(compared)
        if key is None:
            if digest in index:
                continue
            index[digest] = Entry(digest, digest, item)
        else:
            index[key] = Entry(key, digest, item)
    return index


def document_entry(document: Any, ignore: tuple[str, ...]) -> Entry:
    """The whole document as the one entry of a source without items (key "")."""
    return Entry("", content_hash(strip_ignored(document, ignore)), document)


@dataclass(frozen=True, slots=True)
class Diff:
    """Keys added and changed (in the new order) and removed (in the old order)."""

    added: list[str]
    changed: list[str]
    removed: list[str]


def compare(old: Mapping[str, str], new: Mapping[str, Entry], *, complete: bool = True) -> Diff:
    """Compare stored hashes with new entries; removals only when the new set is complete."""
    added: list[str] = []
    changed: list[str] = []
    stored = old.get
    for key, entry in new.items():
        digest = stored(key)
        if digest is None:
            added.append(key)
        elif digest != entry.hash:
            changed.append(key)
    # A partial window of pages must never look like deletions.
    removed = [key for key in old if key not in new] if complete else []
    return Diff(added, changed, removed)


def json_patch(before: Any, after: Any, ignore: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """RFC 6902 operations turning before into after, both without the ignored fields."""
    before, after = strip_ignored(before, ignore), strip_ignored(after, ignore)
    if type(before) is dict and type(after) is dict:
        ops: list[dict[str, Any]] = []
        if _replaced_scalars(before, after, "", ops):
            return ops
    import jsonpatch  # for what the fast path cannot write; most polls change nothing at all

    patch: list[dict[str, Any]] = jsonpatch.make_patch(before, after).patch
    return patch


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _replaced_scalars(
    before: dict[str, Any], after: dict[str, Any], path: str, ops: list[Any]
) -> bool:
    # The common change (the same fields, some values changed) without jsonpatch's general
    # machinery, which costs about as much as the rest of a changed poll. Its result exactly:
    # replaces in `before`'s key order, nested objects walked the same way. False (and jsonpatch
    # decides) on anything else: fields added or removed, lists or containers that differ.
    if len(before) != len(after):
        return False
    for key, old in before.items():
        if key not in after:
            return False
        new = after[key]
        kind = type(old)
        if kind is not type(new):
            if kind not in _SCALARS or type(new) not in _SCALARS:
                return False
        elif kind is dict:
            if not _replaced_scalars(old, new, f"{path}/{_escape(key)}", ops):
                return False
            continue
        elif kind is list:
            if not _same(old, new):
                return False
            continue
        elif old == new and (kind is not float or repr(old) == repr(new)):  # 0.0 and -0.0
            continue
        ops.append({"op": "replace", "path": f"{path}/{_escape(key)}", "value": new})
    return True


def _same(a: Any, b: Any) -> bool:
    # Equal as JSON: 1, 1.0 and True differ, as do 0.0 and -0.0.
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return len(a) == len(b) and all(k in b and _same(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if kind is float:
        return repr(a) == repr(b)
    return bool(a == b)


def _escape(key: str) -> str:
    # RFC 6901: "~" first, so that the "~1" made for "/" is not escaped again.
    return key.replace("~", "~0").replace("/", "~1") if "~" in key or "/" in key else key
