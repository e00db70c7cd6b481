"""The sandboxed Jinja2 of webhook bodies and `when:` expressions: every string of a `body:` is a
template over the event. The daemon renders through a Renderer (worker processes, bounded in
time and output size); render_body and evaluate run the same sandbox in this process."""

from __future__ import annotations

from bridge.templates.renderer import Renderer, shared_renderer
from bridge.templates.sandbox import (
    DEFAULT_LIMITS,
    Limits,
    TemplateError,
    compile_expression,
    compile_template,
    evaluate,
    render,
    render_body,
    verdicts,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "Renderer",
    "TemplateError",
    "compile_expression",
    "compile_template",
    "evaluate",
    "render",
    "render_body",
    "shared_renderer",
    "verdicts",
]
