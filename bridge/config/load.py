"""YAML -> frozen dataclasses; ${ENV} interpolation; errors that name FILE:LINE and the key."""

from __future__ import annotations

import copy
import gc
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.config.units import (
    check_url,
    cron_to_apscheduler,
    format_duration,
    parse_jitter,
    parse_listen,
)
from bridge.config.values import ValueReader, suggest
from bridge.config.yamldoc import Doc, KeyPath
from bridge.errors import ConfigError
from bridge.model import CHANGE_KINDS, Option, SourceSpec
from bridge.sources import registry

if TYPE_CHECKING:  # the plugin API imports the HTTP client: `bridge --help` needs neither
    from bridge.sources.base import Source

TOP_KEYS = ("state", "retention", "grace", "http", "defaults", "webhooks", "sources")
HTTP_KEYS = ("listen", "per_host")
WEBHOOK_KEYS = ("url", "secret", "headers", "timeout", "retry", "concurrency", "body")
COMMON_KEYS = (
    "every", "cron", "jitter", "timeout", "on", "on_first_poll",
    "alert_after", "max_bytes", "webhooks", "ignore",
)  # fmt: skip
SOURCE_KEYS = ("name", "kind", *COMMON_KEYS)
BUILTIN_DEFAULTS: dict[str, Any] = {
    "every": 300.0,
    "cron": None,
    "jitter": ("%", 0.10),
    "timeout": 10.0,
    "on": None,
    "on_first_poll": "baseline",
    "alert_after": None,
    "max_bytes": 10 * 1024 * 1024,
    "webhooks": (),
    "ignore": (),
}
# values of these plugin option names are secrets whatever the plugin declares
SECRET_NAMES = frozenset({"token", "secret", "password", "auth", "headers"})
NAME_RE = re.compile(r"^[a-z0-9_-]+$")
WEBHOOK_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class WebhookSpec:
    """One webhook endpoint: where to POST, how to sign, how hard to retry."""

    name: str
    url: str  # "-" prints each delivery to stdout as a JSON line
    # each "whsec_<base64>"; several sign with each (rotation); kept out of repr() and so logs
    secrets: tuple[str, ...] = field(default=(), repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 15.0
    retry: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    concurrency: int = 4
    body: Any = None  # a template mapping sent instead of the envelope, or None
    line: int | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path
    state: str  # where the state is: a SQLite file's absolute path (relative to the file)
    listen: tuple[str, int] | None = None  # http.listen host and port
    per_host: int = 4  # http.per_host: requests in flight to one polled host
    retention: float = 30 * 86400.0
    grace: float = 10.0  # seconds `run` waits for in-flight work on SIGINT/SIGTERM
    webhooks: Mapping[str, WebhookSpec] = field(default_factory=dict)
    sources: tuple[SourceSpec, ...] = ()

    def source(self, name: str) -> SourceSpec | None:
        """The source with this name, or None."""
        return next((s for s in self.sources if s.name == name), None)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; ConfigError `FILE:LINE: key: problem` on the first fault."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = Path(path).read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not UTF-8 text", file=file, line=line) from None
    except OSError as exc:
        problem = f"cannot read the config file: {exc.strerror or exc}"
        raise ConfigError(problem, file=file) from None
    doc = Doc(file, os.environ if env is None else env)
    with _no_gc():
        root = doc.parse(text)
        if root is None:
            root = {}
        if not isinstance(root, dict):
            raise doc.error((), "the top level must be a mapping of keys such as sources:")
        return _Builder(doc, Path(path).resolve()).config(root)


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: loading makes objects that all live on.

    Its full passes walked the growing YAML tree again and again, a large share of loading a
    big config (benchmarks/RESULTS.md). Reference counting still frees what loading drops.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def redacted(config: Config) -> list[dict[str, str]]:
    """Rows for `bridge check`: name, kind, schedule, webhooks; nothing secret in them."""
    return [
        {
            "name": spec.name,
            "kind": spec.kind,
            "schedule": f"cron {spec.cron}"
            if spec.cron is not None
            else f"every {format_duration(spec.every or 0)}",
            "webhooks": ", ".join(spec.webhooks) or "-",
        }
        for spec in config.sources
    ]


class _Builder(ValueReader):
    """Walks the parsed document, validating each part and building the dataclasses."""

    def __init__(self, doc: Doc, path: Path) -> None:
        super().__init__(doc)
        self.path = path
        self.webhook_names: tuple[str, ...] = ()
        self.known_keys: dict[type[Source], tuple[str, ...]] = {}  # a source's keys, by plugin

    # --- the document ---------------------------------------------------------------------------

    def config(self, root: dict[str, Any]) -> Config:
        """The whole Config; parts are checked in the order they depend on each other."""
        self.mapping(root, (), TOP_KEYS)
        state = self.state("bridge.db" if root.get("state") is None else root["state"])
        http = self.mapping(root.get("http"), ("http",), HTTP_KEYS)
        listen = http.get("listen")
        if listen is not None:
            listen = self.parsed(parse_listen, listen, ("http", "listen"))
        per_host = self.optional(http, ("http",), "per_host", self.integer, 4)
        retention = self.optional(root, (), "retention", self.duration, 30 * 86400.0)
        grace = self.optional(root, (), "grace", self.delay, 10.0)
        raw_hooks = self.mapping(root.get("webhooks"), ("webhooks",))
        self.webhook_names = tuple(raw_hooks)
        webhooks = {name: self.webhook(name, raw) for name, raw in raw_hooks.items()}
        defaults = self.defaults(self.mapping(root.get("defaults"), ("defaults",)))
        raw_sources = [] if root.get("sources") is None else root["sources"]
        if not isinstance(raw_sources, list):
            raise self.err(("sources",), "must be a list of sources (`- name: ...` items)")
        seen: dict[str, int | None] = {}
        sources = tuple(self.source(i, raw, defaults, seen) for i, raw in enumerate(raw_sources))
        return Config(self.path, state, listen, per_host, retention, grace, webhooks, sources)

    def state(self, value: Any) -> str:
        """Where the state is: a file's absolute path; a relative one is relative to the config
        file."""
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise self.err(("state",), "must be a file path")
        try:
            return str((self.path.parent / Path(value).expanduser()).resolve())
        except (OSError, RuntimeError, ValueError):  # e.g. ~nosuchuser/bridge.db
            raise self.err(("state",), "is not a usable file path") from None

    def webhook(self, name: str, raw: Any) -> WebhookSpec:
        """One `webhooks:` entry."""
        path: KeyPath = ("webhooks", name)
        if not WEBHOOK_NAME_RE.match(name):
            raise self.err(path, "webhook names may use only A-Z a-z 0-9 _ . -", at_key=True)
        hook = self.mapping(raw, path, WEBHOOK_KEYS)
        if hook.get("url") is None:
            raise self.err(path, "missing required key 'url'", at_key=True)
        return WebhookSpec(
            name=name,
            url=self.parsed(lambda v: check_url(v, allow_dash=True), hook["url"], (*path, "url")),
            secrets=self.optional(hook, path, "secret", self.secrets, ()),
            headers=self.optional(hook, path, "headers", self.headers, {}),
            timeout=self.optional(hook, path, "timeout", self.duration, 15.0),
            retry=self.optional(hook, path, "retry", self.retry, WebhookSpec.retry),
            concurrency=self.optional(hook, path, "concurrency", self.integer, 4),
            body=self.optional(hook, path, "body", self.body, None),
            line=self.doc.line(path, at_key=True),
        )

    # --- sources --------------------------------------------------------------------------------

    def common(self, key: str, value: Any, path: KeyPath) -> Any:
        """One common source option, normalized (also for `defaults:`)."""
        if key in ("every", "timeout"):
            return self.duration(value, path)
        if key == "cron":
            if not isinstance(value, str):
                raise self.err(path, 'must be a crontab string such as "*/5 * * * *"')
            self.parsed(cron_to_apscheduler, value, path)
            return " ".join(value.split())
        if key == "jitter":
            return self.parsed(parse_jitter, value, path)
        if key == "on":
            kinds = self.strings(value, path)
            for kind, at in kinds:
                if kind not in CHANGE_KINDS:
                    raise self.err(at, f"{kind!r} is not one of: added, changed, removed")
            if not kinds:
                raise self.err(path, "must name at least one of: added, changed, removed")
            return frozenset(kind for kind, _ in kinds)
        if key == "on_first_poll":
            if value not in ("baseline", "emit"):
                raise self.err(path, "must be baseline or emit")
            return value
        if key == "alert_after":
            return None if value is None else self.integer(value, path)
        if key == "max_bytes":
            return self.size(value, path)
        if key == "webhooks":
            names = self.strings(value, path)
            for name, at in names:
                if name not in self.webhook_names:
                    defined = ", ".join(self.webhook_names) or "none"
                    raise self.err(at, f"undefined webhook {name!r} (defined: {defined})")
            return tuple(dict.fromkeys(name for name, _ in names))
        return tuple(item for item, _ in self.strings(value, path))  # ignore

    def defaults(self, raw: dict[str, Any]) -> dict[str, tuple[Any, KeyPath]]:
        """`defaults:` by key, with where each came from; plugin options are checked per source."""
        result: dict[str, tuple[Any, KeyPath]] = {}
        plugin_keys: set[str] | None = None
        for key, value in raw.items():
            path: KeyPath = ("defaults", key)
            if key in COMMON_KEYS:
                if value is not None or key == "alert_after":
                    result[key] = (self.common(key, value, path), path)
                continue
            if plugin_keys is None:
                plugin_keys = set()
                for kind in registry.known_kinds():
                    try:
                        plugin_keys.update(registry.load(kind).options)
                    except ConfigError:
                        pass  # a broken plugin is reported where a source uses it
            if key not in plugin_keys:
                raise self.err(path, suggest(key, (*COMMON_KEYS, *plugin_keys)), at_key=True)
            result[key] = (value, path)
        if "every" in result and "cron" in result:
            raise self.err(("defaults", "cron"), "give every: or cron:, not both", at_key=True)
        return result

    def source(
        self, i: int, raw: Any, defaults: dict[str, tuple[Any, KeyPath]], seen: dict[str, Any]
    ) -> SourceSpec:
        """One `sources:` item: name, kind, common options, then the plugin's own."""
        path: KeyPath = ("sources", i)
        if not isinstance(raw, dict):
            raise self.err(path, "each source must be a mapping with name: and kind:")
        for key in ("name", "kind"):
            if raw.get(key) is None:
                raise self.err(path, f"missing required key {key!r}")
            if not isinstance(raw[key], str):
                raise self.err((*path, key), "must be a string")
        name, kind = raw["name"], raw["kind"]
        if not NAME_RE.match(name):
            raise self.err((*path, "name"), "must match [a-z0-9_-]+ (lower case, digits, _ and -)")
        if name in seen:
            problem = f"duplicate source name {name!r} (first at line {seen[name]})"
            raise self.err((*path, "name"), problem)
        seen[name] = self.doc.line((*path, "name"))
        try:
            cls = registry.load(kind)
        except ConfigError as exc:
            raise self.err((*path, "kind"), exc.problem) from None
        known = self.known_keys.get(cls)
        if known is None:
            known = self.known_keys[cls] = (*SOURCE_KEYS, *cls.options)
        for key in raw:
            if key not in known:
                raise self.err((*path, key), suggest(key, known), at_key=True)
        # null means "not given", except for alert_after where it turns alerts off
        common = {
            key: self.common(key, raw[key], (*path, key))
            for key in COMMON_KEYS
            if key in raw and (raw[key] is not None or key == "alert_after")
        }
        if "every" in common and "cron" in common:
            raise self.err((*path, "cron"), "give every: or cron:, not both", at_key=True)
        # a source's own every: or cron: replaces both scheduling defaults
        scheduled = {"every", "cron"} if {"every", "cron"} & set(common) else set()
        for key, (value, _) in defaults.items():
            if key in COMMON_KEYS and key not in scheduled:
                common.setdefault(key, value)
        for key, value in BUILTIN_DEFAULTS.items():
            if not (key == "every" and "cron" in common):
                common.setdefault(key, value)
        every = common.get("every")
        unit, amount = common["jitter"]
        # with cron there is no interval: a percentage is then taken of one minute
        jitter = amount * (every if every is not None else 60.0) if unit == "%" else amount
        options = self.options(cls, raw, path, defaults)
        return SourceSpec(
            name=name,
            kind=kind,
            every=every,
            cron=common["cron"],
            jitter=jitter,
            timeout=common["timeout"],
            on=common["on"],
            on_first_poll=common["on_first_poll"],
            alert_after=common["alert_after"],
            max_bytes=common["max_bytes"],
            webhooks=common["webhooks"],
            ignore=common["ignore"],
            options=options,
            file=self.doc.file,
            line=self.doc.line(path),
        )

    def options(
        self,
        cls: type[Source],
        raw: dict[str, Any],
        path: KeyPath,
        defaults: dict[str, tuple[Any, KeyPath]],
    ) -> dict[str, Any]:
        """The plugin's options, typed: the source's value, else defaults:, else the Option's."""
        options: dict[str, Any] = {}
        origins: dict[str, KeyPath] = {}
        for key, opt in cls.options.items():
            if raw.get(key) is not None:
                value, at = raw[key], (*path, key)
            elif defaults.get(key, (None,))[0] is not None:
                value, at = _own_copy(defaults[key][0]), defaults[key][1]
            elif opt.required:
                raise self.err(
                    (*path, key) if key in raw else path, f"missing required key {key!r}"
                )
            else:
                options[key] = _own_copy(opt.default)
                continue
            options[key], origins[key] = self.typed(value, at, opt, key in SECRET_NAMES), at
        try:
            problems = cls.check(options)
        except Exception as exc:  # a plugin's bug must not become a traceback in `bridge check`
            problem = f"the {cls.kind} plugin failed to check its options: {exc}"
            raise self.err(path, problem) from None
        for key, problem in problems:
            first, *rest = key.split(".")
            raise self.err((*origins.get(first, (*path, first)), *rest), problem)
        return options

    def typed(self, value: Any, path: KeyPath, opt: Option, secret_name: bool) -> Any:
        """A plugin option's value checked against its declared type."""
        kind = opt.type
        if kind == "str":
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            raise self.err(path, "must be a string")
        if kind == "int":
            return self.integer(value, path, -(2**63))
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"  # from an environment variable
            if not isinstance(value, bool):
                raise self.err(path, "must be true or false")
        elif kind == "duration":
            return self.delay(value, path)
        elif kind == "size":
            return self.size(value, path)
        elif kind == "jmespath":
            # polls compile with this same function: what passes here runs, in the same words
            from bridge.jmespath import ExpressionError, compile_jmespath

            try:
                compile_jmespath(value)
            except ExpressionError as exc:
                hidden = opt.secret or secret_name  # a secret's value is never repeated
                problem = f"bad JMESPath expression: {exc.problem}" if hidden else str(exc)
                raise self.err(path, problem) from None
        elif kind == "mapping" and not isinstance(value, dict):
            raise self.err(path, "must be a mapping")
        elif kind == "list" and not isinstance(value, list):
            raise self.err(path, "must be a list")
        elif kind == "choice" and value not in opt.choices:
            problem = f"must be one of: {', '.join(opt.choices)}"
            # a secret's value is never repeated, even a wrong one
            shown = isinstance(value, str) and not (opt.secret or secret_name)
            raise self.err(path, f"{value!r} {problem}" if shown else problem)
        return value


_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _own_copy(value: Any) -> Any:
    """A value a source may keep as its own: mappings and lists copied, scalars shared."""
    # Not deepcopy: copying each default of each source that way was a visible part of
    # loading a large config (benchmarks/RESULTS.md).
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if not value and (kind is dict or kind is list):
        return kind()  # the usual default ({} headers, {} params): no deepcopy machinery
    return copy.deepcopy(value)
