"""`sources:` and `defaults:` entries -> SourceSpec: the common options, then the plugin's own,
each checked by the type the plugin declares for it (`bridge.sources.base.Option`)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.config.units import cron_to_apscheduler, parse_jitter, parse_timezone, short
from bridge.config.values import LINE_BREAK, ValueReader, suggest
from bridge.config.yamldoc import Doc, KeyPath
from bridge.errors import ConfigError
from bridge.model import CHANGE_KINDS, Option, SourceSpec
from bridge.sources import registry

if TYPE_CHECKING:  # the plugin API imports the HTTP client: `bridge --help` needs neither
    from bridge.sources.base import Source

COMMON_KEYS = (
    "every", "cron", "tz", "jitter", "timeout", "on", "on_first_poll",
    "alert_after", "max_bytes", "webhooks", "ignore", "when", "confirm",
)  # fmt: skip
SOURCE_KEYS = ("name", "kind", *COMMON_KEYS)
BUILTIN_DEFAULTS: dict[str, Any] = {
    "every": 300.0,
    "cron": None,
    "tz": None,  # UTC
    "jitter": ("%", 0.10),
    "timeout": 10.0,
    "on": None,
    "on_first_poll": "baseline",
    "alert_after": None,
    "max_bytes": 10 * 1024 * 1024,
    "webhooks": (),
    "ignore": (),
    "when": None,
    "confirm": 1,
}
# Values of these plugin option names are secrets whatever the plugin declares; a URL may carry
# credentials too (user:password@, a key in the query).
SECRET_NAMES = frozenset({"token", "secret", "password", "auth", "headers", "url"})
_COMMON_ORDER = {key: i for i, key in enumerate(COMMON_KEYS)}
NAME_RE = re.compile(r"^[a-z0-9_-]+$")
# RFC 9110 token characters: what a request line's method may be made of
_METHOD_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

Defaults = dict[str, tuple[Any, KeyPath]]


class SourceReader(ValueReader):
    """Reads `defaults:` and each `sources:` item; problems go to `errors`, key by key."""

    def __init__(self, doc: Doc, path: Path) -> None:
        super().__init__(doc)
        self.path = path  # the config file's absolute path
        self.file = str(path)  # as every SourceSpec names it
        self.webhook_names: tuple[str, ...] = ()
        self.known_keys: dict[type[Source], tuple[str, ...]] = {}  # a source's keys, by plugin
        self._declared: dict[type[Source], list[tuple[str, Option, bool, bool]]] = {}
        self._expressions: set[str] = set()  # JMESPath options that compiled
        # What a source's unset common options take, by whether it schedules itself: worked out
        # once per `defaults:`, not for each of thousands of sources.
        self._fallbacks: dict[bool, tuple[Defaults, dict[str, Any]]] = {}

    def common(self, key: str, value: Any, path: KeyPath) -> Any:
        """One common source option, normalized (also for `defaults:`)."""
        if key in ("every", "timeout"):
            return self.duration(value, path)
        if key == "cron":
            if not isinstance(value, str):
                raise self.err(path, 'must be a crontab string such as "*/5 * * * *"')
            self.parsed(cron_to_apscheduler, value, path)
            return " ".join(value.split())
        if key == "tz":
            if not isinstance(value, str):
                raise self.err(path, "must be a time zone name such as Europe/Berlin")
            return self.parsed(parse_timezone, value, path)
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
        if key == "when":
            return self.parsed(check_expression, value, path)
        if key == "confirm":
            return self.integer(value, path)
        if key == "webhooks":
            names = self.strings(value, path)
            for name, at in names:
                if name not in self.webhook_names:
                    defined = ", ".join(self.webhook_names) or "none"
                    raise self.err(at, f"undefined webhook {name!r} (defined: {defined})")
            return tuple(dict.fromkeys(name for name, _ in names))
        return tuple(item for item, _ in self.strings(value, path))  # ignore

    def defaults(self, raw: dict[str, Any]) -> Defaults:
        """`defaults:` by key, with where each came from; plugin options are checked per source."""
        result: Defaults = {}
        plugin_keys: dict[str, bool] | None = None  # option name: whether a plugin calls it secret
        for key, value in raw.items():
            path: KeyPath = ("defaults", key)
            if key in COMMON_KEYS:
                if value is not None or key == "alert_after":
                    with self.part():
                        result[key] = (self.common(key, value, path), path)
                continue
            if plugin_keys is None:
                plugin_keys = {}
                for kind in registry.known_kinds():
                    try:
                        options = registry.load(kind).options
                    except ConfigError:
                        continue  # a broken plugin is reported where a source uses it
                    for name, opt in options.items():
                        plugin_keys[name] = plugin_keys.get(name, False) or _is_secret(name, opt)
            if key not in plugin_keys:
                problem = suggest(key, (*COMMON_KEYS, *plugin_keys))
                self.errors.append(self.err(path, problem, at_key=True))
                continue
            if plugin_keys[key]:
                self.secret(path)
            result[key] = (value, path)
        if "every" in result and "cron" in result:
            self.errors.append(
                self.err(("defaults", "cron"), "give every: or cron:, not both", at_key=True)
            )
        return result

    def source(
        self, i: int, raw: Any, defaults: Defaults, seen: dict[str, int | None]
    ) -> SourceSpec | None:
        """One `sources:` item: name, kind, common options, then the plugin's own. None when
        it has problems: they are in `errors`, every key's."""
        path: KeyPath = ("sources", i)
        if not isinstance(raw, dict):
            raise self.err(path, "each source must be a mapping with name: and kind:")
        found = len(self.errors)
        for key in ("name", "kind"):
            if raw.get(key) is None:
                self.errors.append(self.err(path, f"missing required key {key!r}"))
            elif not isinstance(raw[key], str):
                self.errors.append(self.err((*path, key), "must be a string"))
        name, kind = raw.get("name"), raw.get("kind")
        if isinstance(name, str):
            try:  # (not part(): this runs for each of thousands of sources)
                self.name(name, (*path, "name"), seen)
            except ConfigError as exc:
                self.errors.append(exc)
        if not isinstance(kind, str):
            return None
        try:
            cls = registry.load(kind)
        except ConfigError as exc:
            self.errors.append(self.err((*path, "kind"), exc.problem))
            return None
        known = self.known_keys.get(cls)
        if known is None:
            known = self.known_keys[cls] = (*SOURCE_KEYS, *cls.options)
        for key in raw:
            if key not in known:
                self.errors.append(self.err((*path, key), suggest(key, known), at_key=True))
        # null means "not given", except for alert_after where it turns alerts off
        common: dict[str, Any] = {}
        given = [key for key in raw if key in _COMMON_ORDER]
        if len(given) > 1:
            given.sort(key=_COMMON_ORDER.__getitem__)  # problems in the order of COMMON_KEYS
        for key in given:
            if raw[key] is not None or key == "alert_after":
                try:  # (not part(): this runs for every key of thousands of sources)
                    common[key] = self.common(key, raw[key], (*path, key))
                except ConfigError as exc:
                    self.errors.append(exc)
        if "every" in common and "cron" in common:
            self.errors.append(
                self.err((*path, "cron"), "give every: or cron:, not both", at_key=True)
            )
        has_cron = "cron" in common or ("cron" in defaults and "every" not in common)
        if "tz" in common and not has_cron:
            problem = "tz: is the time zone of a cron: line; this source has no cron:"
            self.errors.append(self.err((*path, "tz"), problem, at_key=True))
        options = self.options(cls, raw, path, defaults)
        if len(self.errors) > found:
            return None
        assert isinstance(name, str)
        return self.spec(name, kind, common, defaults, options, path)

    def name(self, name: str, path: KeyPath, seen: dict[str, int | None]) -> None:
        """A source's name: its syntax, and that no source before it has it."""
        if not NAME_RE.match(name):
            raise self.err(path, "must match [a-z0-9_-]+ (lower case, digits, _ and -)")
        if name in seen:
            raise self.err(path, f"duplicate source name {name!r} (first at line {seen[name]})")
        seen[name] = self.doc.line(path)

    def spec(
        self,
        name: str,
        kind: str,
        common: dict[str, Any],
        defaults: Defaults,
        options: dict[str, Any],
        path: KeyPath,
    ) -> SourceSpec:
        """The SourceSpec of a source without problems: defaults and built-in defaults applied."""
        own_cron = "cron" in common
        merged = {**self.fallbacks(defaults, own_cron or "every" in common), **common}
        # a source's own cron: has no interval (it takes no default one)
        every = common.get("every") if own_cron else merged.get("every")
        common = merged
        unit, amount = common["jitter"]
        # with cron there is no interval: a percentage is then taken of one minute
        jitter = amount * (every if every is not None else 60.0) if unit == "%" else amount
        return SourceSpec(
            name=name,
            kind=kind,
            every=every,
            cron=common["cron"],
            tz=common["tz"] if common["cron"] is not None else None,
            jitter=jitter,
            timeout=common["timeout"],
            on=common["on"],
            on_first_poll=common["on_first_poll"],
            alert_after=common["alert_after"],
            max_bytes=common["max_bytes"],
            webhooks=common["webhooks"],
            ignore=common["ignore"],
            options=options,
            when=common["when"],
            confirm=common["confirm"],
            file=self.file,  # absolute, as every reload reads it
            line=self.doc.line(path),
        )

    def fallbacks(self, defaults: Defaults, scheduled: bool) -> dict[str, Any]:
        """The common options a source does not give, from `defaults:`, else built in. A source
        with its own every: or cron: (`scheduled`) takes neither scheduling default; with a
        cron: from `defaults:` there is no built-in interval."""
        kept = self._fallbacks.get(scheduled)
        if kept is not None and kept[0] is defaults:
            return kept[1]
        given = {
            key: value
            for key, (value, _) in defaults.items()
            if key in COMMON_KEYS and not (scheduled and key in ("every", "cron"))
        }
        fallback = {
            k: v for k, v in BUILTIN_DEFAULTS.items() if k != "every" or "cron" not in given
        }
        fallback.update(given)
        self._fallbacks[scheduled] = (defaults, fallback)
        return fallback

    def options(
        self, cls: type[Source], raw: dict[str, Any], path: KeyPath, defaults: Defaults
    ) -> dict[str, Any]:
        """The plugin's options, typed: the source's value, else defaults:, else the Option's."""
        options: dict[str, Any] = {}
        origins: dict[str, KeyPath] = {}
        found = len(self.errors)
        displaced = (
            {k for own, keys in cls.displaces.items() if raw.get(own) is not None for k in keys}
            if cls.displaces
            else ()
        )
        for key, opt, secret, shared in self.declared(cls):
            if raw.get(key) is not None:
                value, at = raw[key], (*path, key)
            elif key not in displaced and defaults.get(key, (None,))[0] is not None:
                value, at = _own_copy(defaults[key][0]), defaults[key][1]
            elif opt.required:
                at = (*path, key) if key in raw else path
                self.errors.append(self.err(at, f"missing required key {key!r}"))
                continue
            else:
                options[key] = opt.default if shared else _own_copy(opt.default)
                continue
            if secret:
                self.secret(at)
            try:
                options[key], origins[key] = self.typed(value, at, opt, secret), at
            except ConfigError as exc:
                self.errors.append(exc)
        if len(self.errors) > found:
            return options  # a plugin's check expects its options of their declared types
        try:
            problems = cls.check(options)
        except Exception as exc:  # a plugin's bug must not become a traceback in `bridge check`
            problem = f"the {cls.kind} plugin failed to check its options: {exc}"
            raise self.err(path, problem) from None
        for key, problem in problems:
            first, *rest = key.split(".")
            at = (*origins.get(first, (*path, first)), *rest)
            if not self.doc.already_reported(at):  # an unset variable's placeholder, say
                self.errors.append(self.err(at, problem))
        return options

    def declared(self, cls: type[Source]) -> list[tuple[str, Option, bool, bool]]:
        """The plugin's options: (name, Option, whether it is a secret, whether its default is
        immutable and so shared by every source), worked out once."""
        declared = self._declared.get(cls)
        if declared is None:
            declared = self._declared[cls] = [
                (k, o, _is_secret(k, o), type(o.default) in _IMMUTABLE)
                for k, o in cls.options.items()
            ]
        return declared

    def typed(self, value: Any, path: KeyPath, opt: Option, secret: bool) -> Any:
        """A plugin option's value checked against its declared type."""
        kind = opt.type
        if self.doc.unset and self.doc.holds_unset(path):
            return value  # its problem is the unset variable; nothing else can be known
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "jmespath":
            # A large config repeats one expression (`items: items`) in every source.
            if not (isinstance(value, str) and value in self._expressions):
                self.expression(value, path, hidden=opt.secret or secret)
            return value
        if kind in ("str", "token"):
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise self.err(path, "must be a string")
            if kind == "token" and LINE_BREAK.search(value):
                raise self.err(path, "cannot hold line breaks (it is sent in an HTTP header)")
            return value
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
        elif kind == "headers":
            return self.headers(value, path)
        elif kind == "method":
            if not isinstance(value, str) or not _METHOD_RE.match(value):
                what = f"{short(value)} is not" if isinstance(value, str) else "must be"
                raise self.err(path, f"{what} an HTTP method such as GET or POST (one word)")
        elif kind == "mapping" and not isinstance(value, dict):
            raise self.err(path, "must be a mapping")
        elif kind == "list" and not isinstance(value, list):
            raise self.err(path, "must be a list")
        elif kind == "choice" and value not in opt.choices:
            problem = f"must be one of: {', '.join(opt.choices)}"
            # a secret's value is never repeated, even a wrong one
            shown = isinstance(value, str) and not (opt.secret or secret)
            raise self.err(path, f"{value!r} {problem}" if shown else problem)
        return value

    def expression(self, value: Any, path: KeyPath, *, hidden: bool) -> None:
        """A JMESPath option's value, compiled as polls compile it: what passes here runs, and
        a problem reads in the same words (a `hidden` value, a secret's, is never repeated)."""
        from bridge.jmespath import ExpressionError, compile_jmespath

        try:
            compile_jmespath(value)
        except ExpressionError as exc:
            problem = f"bad JMESPath expression: {exc.problem}" if hidden else str(exc)
            raise self.err(path, problem) from None
        self._expressions.add(value)


def check_expression(value: Any) -> str:
    """A `when:` expression, compiled as polls compile it; ValueError with the reason if bad."""
    from jinja2 import TemplateSyntaxError

    from bridge.templates import compile_expression

    if not isinstance(value, str) or not value.strip():
        raise ValueError('must be a Jinja2 expression, e.g. "after.price < before.price"')
    try:
        compile_expression(value)
    except TemplateSyntaxError as exc:
        raise ValueError(f"invalid expression: {exc.message}") from None
    return value


def _is_secret(name: str, opt: Option) -> bool:
    return opt.secret or opt.type in ("token", "headers") or name in SECRET_NAMES


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
