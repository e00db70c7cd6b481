"""The sandboxed Jinja2 of body templates and `when:` expressions, with its limits on output size
and range(), run in the calling process. It has no time limit: a thread cannot be stopped, so
the daemon runs it in worker processes (bridge.templates.renderer) that are killed when their
time is up."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
import orjson
from jinja2.sandbox import SandboxedEnvironment

from bridge.errors import BridgeError

MB = 1024 * 1024  # as config sizes count (`10MB`)


@dataclass(frozen=True)
class Limits:
    """The bounds of one rendering or evaluation."""

    time: float = 1.0  # seconds; enforced by the renderer's worker processes, not here
    output: int = MB  # bytes of the rendered body, or of an expression's value as JSON
    range_items: int = 10_000  # range() items summed over one rendering: nested loops die early


DEFAULT_LIMITS = Limits()


class TemplateError(BridgeError):
    """One rendering or evaluation failed; the message is the one-line reason."""


class _Exceeded(Exception):
    """A limit was hit inside a template (range(), a value's size); carries the reason."""


class _OutputFull(Exception):
    """The body's output went over the limit."""


def format_size(size: int) -> str:
    """`1 MB`, `512 KB`, `100 bytes`: how a limit is named in a reason."""
    for unit, factor in (("MB", MB), ("KB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def format_seconds(seconds: float) -> str:
    """`1 s`, `500 ms`: how the time limit is named in a reason."""
    return f"{seconds:g} s" if seconds >= 1 else f"{seconds * 1000:g} ms"


class _Rendering:
    """What one rendering may still spend."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.range_left = limits.range_items
        self.output_left = limits.output


_current: contextvars.ContextVar[_Rendering | None] = contextvars.ContextVar(
    "bridge_rendering", default=None
)


@contextlib.contextmanager
def _rendering(limits: Limits) -> Iterator[_Rendering]:
    rendering = _Rendering(limits)
    token = _current.set(rendering)
    try:
        yield rendering
    finally:
        _current.reset(token)


def _spend_range(*args: int) -> range:
    """range() with a budget shared by every call of one rendering."""
    rendering = _current.get() or _Rendering(DEFAULT_LIMITS)
    items = range(*args)
    try:
        size = len(items)
    except OverflowError:  # more items than a C size: over any budget
        size = rendering.range_left + 1
    rendering.range_left -= size
    if rendering.range_left < 0:
        raise _Exceeded(f"range() over {rendering.limits.range_items} items in one rendering")
    return items


_SEQUENCES = (str, bytes, list, tuple)


def _check_product(left: Any, right: Any, limit: int) -> None:
    """`'x' * 10**9` would allocate before any output check: refuse it by its size."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, _SEQUENCES) and isinstance(times, int) and not isinstance(times, bool):
            if len(seq) * times > limit:
                raise _Exceeded(f"would build a value over {format_size(limit)}")


def _check_power(base: Any, exponent: Any, limit: int) -> None:
    """`10 ** 10 ** 9` is one C call that holds the process: refuse it by its result's size."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (base, exponent))
    if ints and abs(base) > 1 and exponent > 0:
        try:
            bits = exponent * math.log2(abs(base))
        except OverflowError:  # an exponent beyond a float: beyond any limit
            bits = math.inf
        if bits > 8 * limit:
            raise _Exceeded(f"would build a value over {format_size(limit)}")


class _Sandbox(SandboxedEnvironment):
    """Jinja2's sandbox with a budgeted range() and `*` and `**` checked before they run."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        # ChainableUndefined: a field the event lacks renders empty, however deep the path
        # (`data.after.name` of a source.failing event has no `after` at all).
        super().__init__(autoescape=False, undefined=jinja2.ChainableUndefined)
        self.globals["range"] = _spend_range

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """`*` and `**` whose result would be over the output limit fail before they run."""
        rendering = _current.get()
        limit = (rendering.limits if rendering else DEFAULT_LIMITS).output
        if operator == "*":
            _check_product(left, right, limit)
        elif operator == "**":
            _check_power(left, right, limit)
        return super().call_binop(context, operator, left, right)


_env = _Sandbox()


@lru_cache(maxsize=1024)
def compile_template(text: str) -> jinja2.Template:
    """A compiled template; raises jinja2.TemplateSyntaxError on bad syntax."""
    return _env.from_string(text)


@lru_cache(maxsize=1024)
def compile_expression(text: str) -> Callable[..., Any]:
    """A compiled expression (undefined gives None); raises jinja2.TemplateSyntaxError."""
    return _env.compile_expression(text, undefined_to_none=True)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, _Exceeded | TemplateError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "ran out of memory"
    if isinstance(exc, RecursionError):
        return "recursion too deep"
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _where(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _render_text(text: str, context: Mapping[str, Any], rendering: _Rendering) -> str:
    """One string leaf, stopped as soon as the whole body's output is over the limit."""
    parts: list[str] = []
    for chunk in compile_template(text).generate(context):
        rendering.output_left -= len(chunk)
        if rendering.output_left < 0:
            raise _OutputFull
        parts.append(chunk)
    return "".join(parts)


def _render(
    template: Any, context: Mapping[str, Any], rendering: _Rendering, path: tuple[str | int, ...]
) -> Any:
    if isinstance(template, str):
        try:
            return _render_text(template, context, rendering)
        except _OutputFull:
            raise
        except Exception as exc:
            where = f" at {_where(path)}" if path else ""
            raise TemplateError(f"body template failed{where}: {_one_line(exc)}") from None
    if isinstance(template, dict):
        return {
            str(k): _render(v, context, rendering, (*path, str(k))) for k, v in template.items()
        }
    if isinstance(template, list):
        return [_render(v, context, rendering, (*path, i)) for i, v in enumerate(template)]
    return template


def render(template: Any, context: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Any:
    """Render every string leaf of a JSON-like structure; other values pass through.
    Raises TemplateError with the reason (and where in the body) if one fails."""
    with _rendering(limits) as rendering:
        try:
            return _render(template, context, rendering, ())
        except _OutputFull:  # the body as a whole, not one leaf
            raise TemplateError(f"body template output over {format_size(limits.output)}") from None


def body_for(template: Any, event: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The JSON body a template renders to over a parsed event."""
    rendered = render(template, event, limits)
    try:
        body = orjson.dumps(rendered, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise TemplateError(f"body template failed: not JSON: {exc}") from None
    if len(body) > limits.output:
        raise TemplateError(f"body template output over {format_size(limits.output)}")
    return body


def render_body(template: Any, envelope: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The JSON body sent instead of the event envelope, rendered over the event, here and
    now (no time limit: the daemon goes through a Renderer)."""
    return body_for(template, orjson.loads(envelope), limits)


def _jsonable(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        return None
    if isinstance(value, set | frozenset | tuple | range):
        return list(value)
    return str(value)


def value_json(expression: str, context: Mapping[str, Any], limits: Limits) -> bytes:
    """An expression's value over a context, as JSON (what crosses from a worker process)."""
    with _rendering(limits):
        try:
            value = compile_expression(expression)(**context)
            data = orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS)
        except Exception as exc:
            raise TemplateError(f"expression failed: {_one_line(exc)}") from None
    if len(data) > limits.output:
        raise TemplateError(f"expression value over {format_size(limits.output)}")
    return data


def evaluate(expression: str, context: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Any:
    """A sandboxed expression's value (as JSON gives it back: an undefined field is None), here
    and now (no time limit: the daemon goes through a Renderer)."""
    return orjson.loads(value_json(expression, context, limits))


def verdicts_json(expression: str, contexts: list[Mapping[str, Any]], limits: Limits) -> bytes:
    """Whether an expression is true over each of `contexts` (each its own range and size
    budget), as a JSON list of true, false, or the one-line reason it raised: one call for
    a poll's changes, so a worker process is asked once, not once per change."""
    test = compile_expression(expression)
    verdicts: list[bool | str] = []
    for context in contexts:
        with _rendering(limits):
            try:
                verdicts.append(bool(test(**context)))
            except Exception as exc:
                verdicts.append(_one_line(exc) or type(exc).__name__)
    return orjson.dumps(verdicts)


def verdicts(
    expression: str, contexts: list[Mapping[str, Any]], limits: Limits = DEFAULT_LIMITS
) -> list[bool | str]:
    """verdicts_json here and now (no time limit: the daemon goes through a Renderer)."""
    found: list[bool | str] = orjson.loads(verdicts_json(expression, contexts, limits))
    return found
