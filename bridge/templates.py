"""Webhook body templates: every string in a `body:` mapping is a sandboxed Jinja2 template."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
import orjson
from jinja2.sandbox import SandboxedEnvironment

# Sandboxed: a config author's template must not reach Python internals. StrictUndefined would
# turn a missing field (an item without `name`) into a failed delivery; rendering it empty is
# kinder.
_env = SandboxedEnvironment(autoescape=False)


@lru_cache(maxsize=1024)
def compile_template(text: str) -> jinja2.Template:
    """A compiled template; raises jinja2.TemplateSyntaxError on bad syntax."""
    return _env.from_string(text)


def render(template: Any, context: dict[str, Any]) -> Any:
    """Render every string leaf of a JSON-like structure; other values pass through."""
    if isinstance(template, str):
        return compile_template(template).render(context)
    if isinstance(template, dict):
        return {str(k): render(v, context) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, context) for v in template]
    return template


def render_body(template: Any, envelope: bytes) -> bytes:
    """The JSON body sent instead of the event envelope, rendered over the event."""
    return orjson.dumps(render(template, orjson.loads(envelope)))
