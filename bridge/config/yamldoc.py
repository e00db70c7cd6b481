"""The config's YAML reader: plain values, the line of each key and value, ${ENV} filled in.

Problems of the document itself (a duplicate key, a malformed `${...}`, an unset variable) are
gathered in `Doc.errors` rather than raised, so a check reports every one; the paths whose value
could not be read are remembered, and problems found later at those paths are not reported again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import yaml

from bridge.config.problems import KeyPath, Located
from bridge.config.units import short
from bridge.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Doc", "KeyPath", "dotted"]

# A config file larger than this is refused before it is read: 10,000 sources take about 2 MB.
MAX_BYTES = 10 * 1024 * 1024
# Keys and values of a document with its aliases and merge keys expanded. Aliases can expand a
# small file exponentially ("billion laughs"); 10,000 sources are about 250,000.
MAX_NODES = 1_000_000
# Mappings and lists inside each other; a config needs a handful (a `json:` body a few more).
# Building deeper ones would run out of Python's stack.
MAX_DEPTH = 100

# `$${` is a literal `${`; `${NAME}` and `${NAME:-default}` are filled in; any other `${` is an
# error (a default holding another ${...}, spaces, an unclosed brace). Each form takes in its
# closing brace when the line has one (a brace would end a flow mapping); the malformed one
# takes in one level of nested braces too, so the error is about the whole reference.
_REF_RE = re.compile(
    r"\$(?P<escape>\$\{(?:[^}\n]*\})?)"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>(?:[^}$\n]|\$(?!\{))*))?\}"
    r"|\$\{(?P<bad>(?:[^{}\n]|\{[^{}\n]*\})*)\}"
    r"|\$\{"
)
# `auth: {bearer: ${TOKEN}}` is not valid YAML as written (braces in a flow mapping), so each
# ${...} is swapped for a brace-free placeholder before parsing and interpolated afterwards
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
_PLAIN_KEY_RE = re.compile(r"^[\w.@$/-]+$", re.ASCII)

_FAST_LOADER: Any = None  # libyaml's loader, when PyYAML has it
if hasattr(yaml, "CSafeLoader"):

    class _FastLoader(yaml.CSafeLoader):
        """libyaml's loader. A scalar no implicit resolver can match (quoted, or whose first
        character starts none of them: most names, URLs and expressions) is a string without a
        walk of PyYAML's resolver tables, which libyaml asks once for every scalar."""

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            """The node's tag, as PyYAML's resolver gives it."""
            by_first = self.yaml_implicit_resolvers  # first character -> resolvers
            if (
                kind is yaml.ScalarNode
                and not self.yaml_path_resolvers
                and None not in by_first
                and (not implicit[0] or (value and value[0] not in by_first))
            ):
                return self.DEFAULT_SCALAR_TAG
            return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    _FAST_LOADER = _FastLoader


class _Ref(NamedTuple):
    """One `${...}` of the text: as written, and what it is."""

    text: str
    name: str | None = None  # a reference to fill in
    default: str | None = None
    literal: str | None = None  # `$${...}`: this text, one `$` fewer
    problem: str | None = None  # a malformed one


def unset_value(name: str) -> str:
    """What an unset variable becomes where it is allowed to stay unset (`secrets="placeholder"`).

    Its line breaks make it a value no HTTP client puts in a request line or header.
    """
    return f"\r\n<${{{name}}} is not set>\r\n"


def _ref(match: re.Match[str]) -> _Ref:
    if match["escape"] is not None:
        return _Ref(match[0], literal=match["escape"])
    if match["name"] is not None:
        return _Ref(match[0], name=match["name"], default=match["default"])
    inside = match["bad"]
    if inside is None:
        problem = "unclosed ${ (write ${NAME}, or $${ for a literal ${)"
    elif "${" in inside:
        problem = "a ${...} cannot hold another ${...} (no nested defaults)"
    else:
        problem = (
            "malformed ${...}: write ${NAME} or ${NAME:-default}, NAME of letters, digits and _, "
            "no spaces (or $${ for a literal ${)"
        )
    return _Ref(match[0], problem=problem)


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
        self.errors: list[ConfigError] = []  # problems of the document itself
        self.unset: dict[KeyPath, str] = {}  # values holding an unset ${NAME}: NAME, by path
        self._unset_within: set[KeyPath] = set()  # those paths and every path enclosing them
        self._failed: set[KeyPath] = set()  # values that could not be read as written
        self._budget = MAX_NODES
        self._refs: list[_Ref] = []  # the ${...} found in the text, by placeholder
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

    def error(self, path: KeyPath, problem: str, *, at_key: bool = False) -> Located:
        """A ConfigError located at `path`."""
        line = self.line(path, at_key=at_key)
        return Located(problem, file=self.file, line=line, key=dotted(path), path=path)

    def holds_unset(self, path: KeyPath) -> bool:
        """Whether the value at `path` (or inside it) holds an unset environment variable."""
        return bool(self._unset_within) and path in self._unset_within

    def already_reported(self, path: KeyPath) -> bool:
        """Whether the value at `path` sits in one the document could not read (already an
        error, or an unset variable): a problem found there is a consequence, not news."""
        failed = self._failed
        return bool(failed) and any(path[:end] in failed for end in range(len(path) + 1))

    def _problem(self, path: KeyPath, problem: str, *, at_key: bool = False) -> None:
        self.errors.append(self.error(path, problem, at_key=at_key))
        self._failed.add(path)

    def parse(self, text: str) -> Any:
        """Parse the YAML text into plain values, interpolating ${ENV} in string scalars."""

        def protect(match: re.Match[str]) -> str:
            self._refs.append(_ref(match))
            return f"\ue000{len(self._refs) - 1}\ue001"

        protected = _REF_RE.sub(protect, text) if "${" in text else text  # the same lines
        try:
            if len(protected) > MAX_NODES:  # a smaller text cannot hold more nodes than that
                self._count_nodes(protected)
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
        if root is None:
            return None
        if "*" in protected:  # an alias, maybe: what it expands to is known before building it
            self._refuse_expansion(root)
        return self._build(root, (), frozenset())

    def _refuse_expansion(self, root: yaml.Node) -> None:
        """Refuse a node tree whose aliases expand it past MAX_NODES values, named at the first
        value that does, in time and memory that grow with the tree as written ("billion
        laughs": building it spends a second per million values before the budget runs out)."""
        sizes: dict[int, int] = {}

        def size(node: yaml.Node, depth: int) -> int:
            # What _build spends on it (merged pairs all counted: a bound from above). A node
            # in progress is a cycle, and one too deep is refused by _build: neither adds.
            known = sizes.get(id(node))
            if known is not None or depth > MAX_DEPTH:
                return known or 0
            sizes[id(node)] = 0
            total = 1
            if isinstance(node, yaml.MappingNode):
                total += len(node.value)
                total += sum(size(value, depth + 1) for _, value in node.value)
            elif isinstance(node, yaml.SequenceNode):
                total += sum(size(item, depth + 1) for item in node.value)
            sizes[id(node)] = total
            return total

        if size(root, 0) <= MAX_NODES:
            return
        node: yaml.Node = root
        path: KeyPath = ()
        while True:
            children: list[tuple[str | int, yaml.Node]]
            if isinstance(node, yaml.MappingNode):
                children = [(str(k.value), v) for k, v in node.value if k.tag != _MERGE_TAG]
            elif isinstance(node, yaml.SequenceNode):
                children = list(enumerate(node.value))
            else:
                children = []
            over = [
                (part, child) for part, child in children if sizes.get(id(child), 0) > MAX_NODES
            ]
            if not over:
                break
            part, node = over[0]
            path = (*path, part)
            self.value_lines.setdefault(path, node.start_mark.line + 1)
        self._spend(MAX_NODES + 1, path)

    def _count_nodes(self, text: str) -> None:
        """Refuse a document of more than MAX_NODES nodes before composing it: the node tree
        of a large file takes far more time and memory than its event stream."""
        count = 0
        try:
            for event in yaml.parse(text, Loader=_FAST_LOADER or yaml.SafeLoader):
                if isinstance(event, _NODE_EVENTS):
                    count += 1
                    if count > MAX_NODES:
                        line = event.start_mark.line + 1 if event.start_mark else None
                        problem = f"the document is too large: more than {MAX_NODES:,} values"
                        raise ConfigError(problem, file=self.file, line=line)
        except (yaml.YAMLError, ValueError):
            return  # composing it says what is wrong, in the words users see

    def _spend(self, nodes: int, path: KeyPath) -> None:
        self._budget -= nodes
        if self._budget < 0:
            # a document of this many characters holds fewer nodes: aliases or merges made them
            problem = (
                f"the document is too large: aliases and merge keys (<<) expand it past "
                f"{MAX_NODES:,} values"
            )
            raise self.error(path, problem)

    def _build(self, node: yaml.Node, path: KeyPath, active: frozenset[int]) -> Any:
        self._budget -= 1  # _spend(1, path), inline: this runs for every node
        if self._budget < 0:
            self._spend(0, path)
        self.value_lines.setdefault(path, node.start_mark.line + 1)
        if type(node) is yaml.ScalarNode:  # most nodes; a scalar never contains itself
            if node.tag == _STR_TAG and "\ue000" not in node.value:
                return node.value  # most scalars: what _scalar() would make of it, sooner
            return self._scalar(node, path)
        if id(node) in active:  # no value could ever be built from it: nothing else is checked
            raise self.error(path, "an alias refers to itself")
        if len(path) >= MAX_DEPTH:  # named where it starts: its full path would fill a screen
            raise self.error(path[:3], f"nested too deeply (more than {MAX_DEPTH} levels)")
        active = active | {id(node)}
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                return self._problem(path, f"unsupported YAML tag {node.tag}")
            result: dict[str, Any] = {}
            for key, key_node, value_node in self._pairs(node, path, active):
                at = (*path, key)
                self.key_lines[at] = key_node.start_mark.line + 1
                result[key] = self._build(value_node, at, active)
            return result
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                return self._problem(path, f"unsupported YAML tag {node.tag}")
            return [self._build(item, (*path, i), active) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if node.tag == _STR_TAG:
            value = node.value  # what the constructor would return, without its bookkeeping
            return self._interpolate(value, path) if "\ue000" in value else value
        try:
            value = self._loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            return self._problem(path, f"invalid value: {exc.problem}")
        except Exception:  # PyYAML raises plain ValueErrors for e.g. `!!int abc`
            return self._problem(path, f"invalid value for YAML tag {node.tag}")
        return self._interpolate(value, path) if isinstance(value, str) else value

    def _pairs(
        self, node: yaml.MappingNode, path: KeyPath, active: frozenset[int]
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node), merge keys (`<<: *anchor`) folded in, duplicates refused."""
        # Every pair counts, merged ones too: a merge of merges is as much a bomb as an alias.
        self._budget -= len(node.value)  # _spend(), inline: this runs for every mapping
        if self._budget < 0:
            self._spend(0, path)
        own: dict[str, tuple[str, yaml.Node, yaml.Node]] = {}
        merged: dict[str, tuple[str, yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    if not isinstance(source, yaml.MappingNode) or id(source) in active:
                        self._problem(path, "`<<` must merge a mapping", at_key=True)
                        continue
                    for entry in self._pairs(source, path, active | {id(source)}):
                        merged.setdefault(entry[0], entry)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                line, key = key_node.start_mark.line + 1, dotted(path)
                problem = "keys must be strings"
                self.errors.append(Located(problem, file=self.file, line=line, key=key, path=path))
                continue
            # the text as written: `on:` is the key "on", not True; keys are never interpolated
            key = str(key_node.value)
            if "\ue000" in key:
                key = _PLACEHOLDER_RE.sub(lambda m: self._refs[int(m[1])].text, key)
            if key in own:
                self.key_lines[(*path, key)] = key_node.start_mark.line + 1
                self._problem((*path, key), f"duplicate key {key!r}", at_key=True)
                continue
            own[key] = (key, key_node, value_node)
        return [*own.values(), *(entry for key, entry in merged.items() if key not in own)]

    def _interpolate(self, text: str, path: KeyPath) -> str:
        def substitute(placeholder: re.Match[str]) -> str:
            index = int(placeholder[1])
            if index >= len(self._refs):  # the file itself held placeholder-like text
                return placeholder[0]
            ref = self._refs[index]
            if ref.literal is not None:
                return ref.literal
            if ref.problem is not None or ref.name is None:
                self._problem(path, ref.problem or "malformed ${...}")
                return ""
            value = self.env.get(ref.name)
            # like the shell's ${NAME:-default}: the default also replaces an empty value
            if value is None or (value == "" and ref.default is not None):
                if ref.default is None:
                    self._unset_at(path, ref.name)
                    return unset_value(ref.name)
                return ref.default
            return value

        return _PLACEHOLDER_RE.sub(substitute, text) if "\ue000" in text else text

    def _unset_at(self, path: KeyPath, name: str) -> None:
        self.unset.setdefault(path, name)
        self._failed.add(path)
        self._unset_within.update(path[:end] for end in range(len(path) + 1))
