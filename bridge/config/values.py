"""Readers of config values: each returns a checked value or raises a ConfigError that names
the value's FILE:LINE and key path."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from bridge.config.units import check_templates, parse_duration, parse_secret, parse_size
from bridge.config.yamldoc import Doc, KeyPath
from bridge.errors import ConfigError

T = TypeVar("T")
LINE_BREAK = re.compile("[\r\n\0]")  # what no header name or value may hold


def suggest(key: str, known: tuple[str, ...]) -> str:
    """The problem of an unknown key: the closest known one, else all of them."""
    import difflib  # for a config with a problem only

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(known))
    return f"unknown key {key if len(key) <= 40 else key[:37] + '...'!r} ({hint})"


class ValueReader:
    """Checked values of one parsed document, each located by its key path.

    A reader raises at its value's first problem; `part()` records it in `errors` and lets the
    next part be checked, so one check reports the problems of every key.
    """

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.errors: list[ConfigError] = []
        # where a value is a secret (or carries one): an unset variable may stay unset there
        # for the commands that send nothing (`secrets="placeholder"`)
        self.secret_paths: set[KeyPath] = set()

    @contextmanager
    def part(self) -> Iterator[None]:
        """A part of the document: a problem inside is recorded, and checking goes on after it."""
        try:
            yield
        except ConfigError as exc:
            self.errors.append(exc)

    def secret(self, path: KeyPath) -> None:
        """Note that the value at `path` is a secret or carries one."""
        if self.doc.unset:  # only asked about where a variable is unset (parsing found them all)
            self.secret_paths.add(path)

    def is_secret(self, path: KeyPath) -> bool:
        """Whether the value at `path` is (or is inside) a secret."""
        return any(path[:end] in self.secret_paths for end in range(1, len(path) + 1))

    def err(self, path: KeyPath, problem: str, *, at_key: bool = False) -> ConfigError:
        """A ConfigError at `path` (at its key's line with `at_key`)."""
        return self.doc.error(path, problem, at_key=at_key)

    def parsed(self, parse: Callable[[Any], T], value: Any, path: KeyPath) -> T:
        """`parse(value)`, its ValueError becoming a ConfigError at `path`."""
        try:
            return parse(value)
        except ValueError as exc:
            raise self.err(path, str(exc)) from None

    def optional(
        self, raw: dict[str, Any], path: KeyPath, key: str, read: Callable[..., T], default: T
    ) -> T:
        """`read(raw[key], its path)`, or `default` when the key is absent or null."""
        return default if raw.get(key) is None else read(raw[key], (*path, key))

    def mapping(self, value: Any, path: KeyPath, known: tuple[str, ...] = ()) -> dict[str, Any]:
        """A mapping (null: empty); with `known`, each unknown key is recorded as a problem."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(path, "must be a mapping")
        for key in value if known else ():
            if key not in known:
                self.errors.append(self.err((*path, key), suggest(key, known), at_key=True))
        return value

    def duration(self, value: Any, path: KeyPath, *, positive: bool = True) -> float:
        """Seconds; more than zero unless `positive` is False."""
        seconds = self.parsed(parse_duration, value, path)
        if positive and seconds <= 0:
            raise self.err(path, "must be longer than 0s")
        return seconds

    def delay(self, value: Any, path: KeyPath) -> float:
        """Seconds, zero allowed."""
        return self.duration(value, path, positive=False)

    def size(self, value: Any, path: KeyPath) -> int:
        """Bytes, more than zero."""
        size = self.parsed(parse_size, value, path)
        if size <= 0:
            raise self.err(path, "must be larger than 0 bytes")
        return size

    def integer(self, value: Any, path: KeyPath, minimum: int = 1) -> int:
        """An integer of at least `minimum`."""
        # environment values are strings, so "10" counts as 10
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,18}", value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.err(path, "must be an integer")
        if value < minimum:
            raise self.err(path, f"must be at least {minimum}")
        return value

    def strings(self, value: Any, path: KeyPath) -> list[tuple[str, KeyPath]]:
        """A list of strings (a lone string counts as one), each with its own path."""
        if isinstance(value, str):
            return [(value, path)]
        if not isinstance(value, list):
            raise self.err(path, "must be a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.err((*path, i), "must be a string")
        return [(item, (*path, i)) for i, item in enumerate(value)]

    def secrets(self, value: Any, path: KeyPath) -> tuple[str, ...]:
        """One whsec_ secret or a list of them (rotation); never quoted in an error."""
        self.secret(path)
        unset = self.doc.holds_unset  # left unset: nothing to check, and it is never sent
        return tuple(
            item if unset(at) else self.parsed(parse_secret, item, at)
            for item, at in self.strings(value, path)
        )

    def headers(self, value: Any, path: KeyPath) -> dict[str, str]:
        """HTTP headers; values are often credentials, so problems are described, never quoted."""
        self.secret(path)
        if isinstance(value, str) and self.doc.holds_unset(path):
            return {}  # all of them an unset variable (allowed only where nothing is sent)
        headers: dict[str, str] = {}
        for key, item in self.mapping(value, path).items():
            if isinstance(item, int | float) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str):
                raise self.err((*path, key), "must be a string")
            bad = not key.strip() or LINE_BREAK.search(key) is not None
            # an unset variable's placeholder holds line breaks on purpose: it is never sent
            if LINE_BREAK.search(item) and not self.doc.holds_unset((*path, key)):
                bad = True
            if bad:
                raise self.err((*path, key), "a header name or value cannot hold line breaks")
            headers[key] = item
        return headers

    def retry(self, value: Any, path: KeyPath) -> tuple[float, ...]:
        """Delays between delivery attempts."""
        if not isinstance(value, list):
            raise self.err(path, "must be a list of durations, e.g. [5s, 5m, 1h]")
        return tuple(self.delay(delay, (*path, i)) for i, delay in enumerate(value))

    def body(self, value: Any, path: KeyPath) -> dict[str, Any]:
        """A body template: a mapping whose every string parses as a Jinja2 template."""
        if not isinstance(value, dict):
            raise self.err(path, "must be a mapping (the JSON body to send)")
        try:
            check_templates(value)
        except ValueError as exc:
            where, problem = exc.args
            raise self.err((*path, *where), problem) from None
        return value
