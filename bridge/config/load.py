"""YAML -> frozen dataclasses; ${ENV} interpolation; errors that name FILE:LINE and the key."""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bridge.config.problems import Located, raise_all
from bridge.config.specs import SourceReader
from bridge.config.units import Rate, check_url, format_duration, parse_listen, parse_rate
from bridge.config.yamldoc import MAX_BYTES, Doc, KeyPath
from bridge.errors import ConfigError
from bridge.model import SourceSpec

TOP_KEYS = ("state", "retention", "grace", "http", "defaults", "webhooks", "sources")
HTTP_KEYS = ("listen", "per_host", "token")
WEBHOOK_KEYS = ("url", "secret", "headers", "timeout", "retry", "concurrency", "rate", "body")
WEBHOOK_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# "required": every ${NAME} must be set (what polls and deliveries need). "placeholder": one left
# unset in a secret (a webhook's url, secret or headers, a source's token, auth, headers, url...)
# becomes a value that is never sent, for the commands that only read or change the queue.
Secrets = Literal["required", "placeholder"]


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
    rate: Rate | None = None  # at most so many requests started per second or minute
    body: Any = None  # a template mapping sent instead of the envelope, or None
    line: int | None = field(default=None, compare=False)  # where it is written is no change


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
    # http.token: guards the console and /api; a secret, kept out of repr() and so logs
    token: str | None = field(default=None, repr=False)
    # secrets="placeholder": the variables left unset; their secrets hold a value never sent
    unset: tuple[str, ...] = ()

    def source(self, name: str) -> SourceSpec | None:
        """The source with this name, or None."""
        return next((s for s in self.sources if s.name == name), None)


def load_config(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    *,
    secrets: Secrets = "required",
    allow_empty: bool = True,
) -> Config:
    """Read and validate a config file. A bad one raises ConfigError `FILE:LINE: key: problem`:
    ConfigProblems when there are several, each key's. `allow_empty=False` refuses a file that
    holds nothing (a reload that catches an editor between truncating and writing)."""
    file = str(path)
    text = _read(path)
    doc = Doc(file, os.environ if env is None else env)
    with _no_gc():
        root = doc.parse(text)
        if root is None and not allow_empty:
            raise ConfigError("the file is empty", file=file)
        if root is None:
            root = {}
        if not isinstance(root, dict):
            raise doc.error((), "the top level must be a mapping of keys such as sources:")
        return _Builder(doc, Path(path).resolve(), secrets).config(root)


def _read(path: str | Path) -> str:
    """The file's text; refused unread past MAX_BYTES (a pipe or a device has no size first)."""
    file = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        problem = f"cannot read the config file: {exc.strerror or exc}"
        raise ConfigError(problem, file=file) from None
    if len(data) > MAX_BYTES:
        limit = f"{MAX_BYTES // 1024 // 1024} MB"
        raise ConfigError(f"the file is over {limit}, the limit for a config file", file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not UTF-8 text", file=file, line=line) from None


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
            "schedule": f"cron {spec.cron}" + (f" ({spec.tz})" if spec.tz else "")
            if spec.cron is not None
            else f"every {format_duration(spec.every or 0)}",
            "webhooks": ", ".join(spec.webhooks) or "-",
        }
        for spec in config.sources
    ]


class _Builder(SourceReader):
    """Walks the parsed document, validating each part and building the dataclasses."""

    def __init__(self, doc: Doc, path: Path, secrets: Secrets) -> None:
        super().__init__(doc, path)
        self.placeholders = secrets == "placeholder"

    # --- the document ---------------------------------------------------------------------------

    def config(self, root: dict[str, Any]) -> Config:
        """The whole Config; every part is checked, and all their problems raised together."""
        self.mapping(root, (), TOP_KEYS)
        state, listen, per_host, token, retention, grace = "", None, 4, None, 30 * 86400.0, 10.0
        with self.part():
            state = self.state("bridge.db" if root.get("state") is None else root["state"])
        http: dict[str, Any] = {}
        with self.part():
            http = self.mapping(root.get("http"), ("http",), HTTP_KEYS)
        with self.part():
            if http.get("listen") is not None:
                listen = self.parsed(parse_listen, http["listen"], ("http", "listen"))
        with self.part():
            per_host = self.optional(http, ("http",), "per_host", self.integer, 4)
        with self.part():
            token = self.optional(http, ("http",), "token", self.token, None)
        with self.part():
            retention = self.optional(root, (), "retention", self.duration, 30 * 86400.0)
        with self.part():
            grace = self.optional(root, (), "grace", self.delay, 10.0)
        webhooks = self.webhooks(root.get("webhooks"))
        raw_defaults: dict[str, Any] = {}
        with self.part():
            raw_defaults = self.mapping(root.get("defaults"), ("defaults",))
        defaults = self.defaults(raw_defaults)
        raw_sources = [] if root.get("sources") is None else root["sources"]
        if not isinstance(raw_sources, list):
            self.errors.append(
                self.err(("sources",), "must be a list of sources (`- name: ...` items)")
            )
            raw_sources = []
        seen: dict[str, int | None] = {}
        sources: list[SourceSpec] = []
        for i, raw in enumerate(raw_sources):
            try:
                spec = self.source(i, raw, defaults, seen)
            except ConfigError as exc:
                self.errors.append(exc)
                continue
            if spec is not None:
                sources.append(spec)
        unset = self.problems()
        return Config(
            self.path, state, listen, per_host, retention, grace, webhooks, tuple(sources),
            token=token, unset=unset,
        )  # fmt: skip

    def problems(self) -> tuple[str, ...]:
        """Raise every problem found; else the variables left unset (as placeholders allow)."""
        doc = self.doc
        allowed = {
            path: name
            for path, name in doc.unset.items()
            if self.placeholders and self.is_secret(path)
        }
        errors = list(doc.errors)
        errors += [
            doc.error(path, f"environment variable {name} is not set")
            for path, name in doc.unset.items()
            if path not in allowed
        ]
        # A problem where the document could not be read, or where a variable is unset, follows
        # from that one (`every: ${EVERY}` unset "is not a duration"): it is not news.
        news = [
            e for e in self.errors if not (isinstance(e, Located) and doc.already_reported(e.path))
        ]
        if not errors and len(news) < len(self.errors):
            # a part failed only for a secret left unset: it cannot be built without it after all
            errors = [
                doc.error(path, f"environment variable {n} is not set")
                for path, n in allowed.items()
            ]
        raise_all([*errors, *news])
        return tuple(dict.fromkeys(allowed.values()))

    def token(self, value: Any, path: KeyPath) -> str:
        """http.token: a non-empty string without spaces; its value is never repeated."""
        self.secret(path)
        if self.doc.holds_unset(path):
            return str(value)
        if not isinstance(value, str) or not value.strip() or len(value.split()) != 1:
            raise self.err(path, "must be a non-empty string without spaces (a secret)")
        return value.strip()

    def state(self, value: Any) -> str:
        """Where the state is: a file's absolute path (a relative one is relative to the config
        file), or a PostgreSQL URL (`postgresql://` or `postgres://`), as given."""
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise self.err(("state",), "must be a file path or a postgresql:// URL")
        if value.strip().lower().startswith(("postgresql://", "postgres://")):
            return value.strip()
        try:
            return str((self.path.parent / Path(value).expanduser()).resolve())
        except (OSError, RuntimeError, ValueError):  # e.g. ~nosuchuser/bridge.db
            raise self.err(("state",), "is not a usable file path") from None

    def webhooks(self, value: Any) -> dict[str, WebhookSpec]:
        """`webhooks:`, each one checked on its own."""
        raw_hooks: dict[str, Any] = {}
        with self.part():
            raw_hooks = self.mapping(value, ("webhooks",))
        self.webhook_names = tuple(raw_hooks)
        webhooks: dict[str, WebhookSpec] = {}
        for name, raw in raw_hooks.items():
            with self.part():
                spec = self.webhook(name, raw)
                if spec is not None:
                    webhooks[name] = spec
        return webhooks

    def webhook(self, name: str, raw: Any) -> WebhookSpec | None:
        """One `webhooks:` entry; None (its problems recorded) when it has any."""
        path: KeyPath = ("webhooks", name)
        if not WEBHOOK_NAME_RE.match(name):
            raise self.err(path, "webhook names may use only A-Z a-z 0-9 _ . -", at_key=True)
        hook = self.mapping(raw, path, WEBHOOK_KEYS)
        found = len(self.errors)
        values: dict[str, Any] = {}
        readers: dict[str, Callable[[Any, KeyPath], Any]] = {
            "url": self.webhook_url,
            "secret": self.secrets,
            "headers": self.headers,
            "timeout": self.duration,
            "retry": self.retry,
            "concurrency": self.integer,
            "rate": lambda value, at: self.parsed(parse_rate, value, at),
            "body": self.body,
        }
        for key, read in readers.items():
            if hook.get(key) is not None:
                with self.part():
                    values[key] = read(hook[key], (*path, key))
        if hook.get("url") is None:
            self.errors.append(self.err(path, "missing required key 'url'", at_key=True))
        if len(self.errors) > found:
            return None
        return WebhookSpec(
            name=name,
            url=values["url"],
            secrets=values.get("secret", ()),
            headers=values.get("headers", {}),
            timeout=values.get("timeout", 15.0),
            retry=values.get("retry", WebhookSpec.retry),
            concurrency=values.get("concurrency", 4),
            rate=values.get("rate"),
            body=values.get("body"),
            line=self.doc.line(path, at_key=True),
        )

    def webhook_url(self, value: Any, path: KeyPath) -> str:
        """Where a webhook POSTs (a URL may carry a token, so it is never quoted), or "-"."""
        self.secret(path)
        if self.doc.holds_unset(path):
            return str(value)
        return self.parsed(lambda v: check_url(v, allow_dash=True), value, path)
