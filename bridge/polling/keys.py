"""Canonical JSON, and item keys: the JSON value a `key:` expression gives, the text the state
stores it under, the text people read, and the text state files of earlier versions hold."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

# Starts the stored text of every key that is not a plain string. A control character no real
# identifier starts with (and, unlike NUL, one every database keeps in a text column), so that
# string keys, nearly all keys, are stored as they are.
MARKER = "\x1f"


def canonical(obj: Any) -> bytes:
    """The JSON encoding of obj with sorted keys and no whitespace: equal content, equal bytes."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits and nesting deeper than 254 levels; both are
        # valid JSON (the stdlib parser produces them), and a hash must not fail a poll.
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def storage_key(value: Any) -> str:
    """The text a key is stored under: a string as it is; any other JSON value, and a string
    that starts with MARKER, as MARKER and its canonical JSON. So 1, "1", true and "true" are
    four keys, and the text gives the value back (key_value)."""
    if isinstance(value, str) and not value.startswith(MARKER):
        return value
    return MARKER + canonical(value).decode()


def key_value(stored: str) -> Any:
    """The JSON value of a stored key, as the `key:` expression gave it (`data.key`)."""
    if stored.startswith(MARKER):
        return json.loads(stored[1:])  # the stdlib parser: a key may be an integer past 64 bits
    return stored


def key_text(value: Any) -> str:
    """A key as people read it (`bridge events`): a string as it is, any other value as JSON."""
    return value if isinstance(value, str) else canonical(value).decode()


def legacy_key(stored: str) -> str | None:
    """The text earlier versions stored this key under, when it differs: they wrote integers as
    digits and other values as their JSON, like key_text, so `1` and `"1"` were one key."""
    if not stored.startswith(MARKER):
        return None
    return key_text(key_value(stored))


def carried_over(
    old: Mapping[str, str], new: Mapping[str, Any], added: list[str]
) -> dict[str, str]:
    """{new key: stored key} for `added` keys that a state file of an earlier version holds under
    their legacy text (an integer id 1 stored as "1"): the same item, to be moved, not sent as
    removed and added. A legacy text that is itself a key of `new` stays that key's."""
    moved: dict[str, str] = {}
    for key in added:
        if key.startswith(MARKER):
            legacy = legacy_key(key)
            if legacy is not None and legacy in old and legacy not in new:
                moved[key] = legacy
    return moved
