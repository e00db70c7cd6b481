"""The config's YAML reader: plain values, the line of each key and value, ${ENV} filled in."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from bridge.config.units import short
from bridge.errors import ConfigError

KeyPath = tuple[str | int, ...]
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}\n]*))?\}")
# `auth: {bearer: ${TOKEN}}` is not valid YAML as written (braces in a flow mapping), so each
# ${...} is swapped for a brace-free placeholder before parsing and interpolated afterwards
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")
MAX_NODES = 200_000  # aliases can expand a small file exponentially ("billion laughs")
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


_FAST_LOADER = getattr(yaml, "CSafeLoader", None)

_PLAIN_KEY_RE = re.compile(r"^[\w.@$/-]+$", re.ASCII)


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree of `text`, by libyaml when PyYAML has it.

    libyaml composes a 5,000-source file about three times faster than the pure-Python composer
    (benchmarks/RESULTS.md). A document it refuses is composed again in Python, whose error
    messages and marks are the ones users see.
    """
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except (yaml.YAMLError, ValueError):
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def dotted(path: KeyPath) -> str:
    """A key path as users write it: `sources[0].url`, `webhooks.ops.retry[2]`."""
    text = ""
    for part in path:
        if isinstance(part, int) or not _PLAIN_KEY_RE.match(part):
            # odd keys (spaces, line breaks, empty) are quoted so the message stays one line
            text += f"[{part if isinstance(part, int) else short(part)}]"
        else:
            text += f".{part}" if text else part
    return text


class Doc:
    """A parsed YAML file as plain values, with the line of every key and value by key path."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.key_lines: dict[KeyPath, int] = {}
        self.value_lines: dict[KeyPath, int] = {}
        self._budget = MAX_NODES
        self._refs: list[re.Match[str]] = []  # the ${...} found in the text, by placeholder
        self._loader = yaml.SafeLoader("")  # only its scalar constructors are used

    def line(self, path: KeyPath, *, at_key: bool = False) -> int | None:
        """The line of the key (or value) at `path`, else of the nearest enclosing one."""
        if not at_key and path in self.value_lines:  # every source's line is asked for
            return self.value_lines[path]
        tables = (self.key_lines, self.value_lines) if at_key else (self.value_lines,)
        for end in range(len(path), -1, -1):
            for table in tables:
                if path[:end] in table:
                    return table[path[:end]]
        return None

    def error(self, path: KeyPath, problem: str, *, at_key: bool = False) -> ConfigError:
        """A ConfigError located at `path`."""
        line = self.line(path, at_key=at_key)
        return ConfigError(problem, file=self.file, line=line, key=dotted(path))

    def parse(self, text: str) -> Any:
        """Parse the YAML text into plain values, interpolating ${ENV} in string scalars."""

        def protect(match: re.Match[str]) -> str:
            self._refs.append(match)
            return f"\ue000{len(self._refs) - 1}\ue001"

        protected = ENV_RE.sub(protect, text)  # the same lines as `text`
        try:
            root = _compose(protected)
        except yaml.MarkedYAMLError as exc:
            mark, context = exc.problem_mark or exc.context_mark, exc.context
            problem = exc.problem or context or "malformed YAML"
            if context and problem.startswith("but "):
                problem = f"{context}, {problem}"
            elif context and exc.context_mark and mark and exc.context_mark.line != mark.line:
                problem = f"{problem} ({context} from line {exc.context_mark.line + 1})"
            # the end of the stream is past the last newline: name the last line instead
            line = min(mark.line + 1, max(1, len(text.splitlines()))) if mark else None
            raise ConfigError(f"invalid YAML: {problem}", file=self.file, line=line) from None
        except yaml.reader.ReaderError as exc:
            line = protected[: exc.position].count("\n") + 1
            problem = f"invalid YAML: unacceptable character ({exc.reason})"
            raise ConfigError(problem, file=self.file, line=line) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", file=self.file) from None
        except RecursionError:
            raise ConfigError("invalid YAML: nested too deeply", file=self.file) from None
        return None if root is None else self._build(root, (), frozenset())

    def _build(self, node: yaml.Node, path: KeyPath, active: frozenset[int]) -> Any:
        self._budget -= 1
        self.value_lines.setdefault(path, node.start_mark.line + 1)
        if self._budget < 0:
            raise self.error(path, "the document is too large (aliases expand too far)")
        if type(node) is yaml.ScalarNode:  # most nodes; a scalar never contains itself
            return self._scalar(node, path)
        if id(node) in active:
            raise self.error(path, "an alias refers to itself")
        active = active | {id(node)}
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise self.error(path, f"unsupported YAML tag {node.tag}")
            result: dict[str, Any] = {}
            for key, key_node, value_node in self._pairs(node, path, active):
                self.key_lines[(*path, key)] = key_node.start_mark.line + 1
                result[key] = self._build(value_node, (*path, key), active)
            return result
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self.error(path, f"unsupported YAML tag {node.tag}")
            return [self._build(item, (*path, i), active) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if node.tag == _STR_TAG:
            value = node.value  # what the constructor would return, without its bookkeeping
            return self._interpolate(value, path) if "\ue000" in value else value
        try:
            value = self._loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise self.error(path, f"invalid value: {exc.problem}") from None
        except Exception:  # PyYAML raises plain ValueErrors for e.g. `!!int abc`
            raise self.error(path, f"invalid value for YAML tag {node.tag}") from None
        return self._interpolate(value, path) if isinstance(value, str) else value

    def _pairs(
        self, node: yaml.MappingNode, path: KeyPath, active: frozenset[int]
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node), merge keys (`<<: *anchor`) folded in, duplicates refused."""
        own: dict[str, tuple[str, yaml.Node, yaml.Node]] = {}
        merged: dict[str, tuple[str, yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    if not isinstance(source, yaml.MappingNode) or id(source) in active:
                        raise self.error(path, "`<<` must merge a mapping", at_key=True)
                    for entry in self._pairs(source, path, active | {id(source)}):
                        merged.setdefault(entry[0], entry)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise ConfigError(
                    "keys must be strings", file=self.file, line=line, key=dotted(path)
                )
            # the text as written: `on:` is the key "on", not True; keys are never interpolated
            key = _PLACEHOLDER_RE.sub(lambda m: self._ref(m)[0], str(key_node.value))
            if key in own:
                self.key_lines[(*path, key)] = key_node.start_mark.line + 1
                raise self.error((*path, key), f"duplicate key {key!r}", at_key=True)
            own[key] = (key, key_node, value_node)
        return [*own.values(), *(entry for key, entry in merged.items() if key not in own)]

    def _ref(self, placeholder: re.Match[str]) -> re.Match[str] | tuple[str]:
        index = int(placeholder[1])
        return self._refs[index] if index < len(self._refs) else (placeholder[0],)

    def _interpolate(self, text: str, path: KeyPath) -> str:
        def substitute(placeholder: re.Match[str]) -> str:
            match = self._ref(placeholder)
            if isinstance(match, tuple):  # the file itself held placeholder-like text
                return match[0]
            name, default = match[1], match[2]
            value = self.env.get(name)
            # like the shell's ${NAME:-default}: the default also replaces an empty value
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise self.error(path, f"environment variable {name} is not set")
                return default
            return value

        return _PLACEHOLDER_RE.sub(substitute, text) if "\ue000" in text else text
