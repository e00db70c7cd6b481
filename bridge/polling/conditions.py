"""`when:`: a sandboxed Jinja2 expression over each change event of a poll; an event it is not
true for is neither stored nor sent.

The expression runs where body templates run, in the renderer's worker processes
(bridge.templates.Renderer), so a runaway one costs its time limit and a restarted worker, never
a frozen daemon. A poll's changes are tested in ONE call per batch of BATCH (Renderer.verdicts):
the cost of crossing to the worker (about 100 us) is paid per poll, not per change, and the
time limit bounds each batch as it bounds one body. An expression that raises for an event
counts as false for it: one warning line per source and poll, and `bridge_when_errors_total`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from bridge.sources.base import Source

if TYPE_CHECKING:  # Jinja2 is imported with the renderer, when a source has `when:`
    from bridge.templates import Renderer

log = logging.getLogger("bridge.polling.conditions")

# Changes per call to a worker: small enough that a batch of sound evaluations stays far inside
# the time limit, large enough that the crossing is paid once for nearly every poll.
BATCH = 256

Draft = tuple[str, dict[str, Any]]  # an event not yet built: its type and its data
Judge = Callable[[Source, list[Draft]], Awaitable[list[Draft]]]


class WhenObserver(Protocol):
    """Who counts the events a `when:` raised for (the daemon's metrics)."""

    def when_errors(self, source: str, count: int) -> None:
        """`count` events of one poll of `source` for which `when:` raised."""


class Conditions:
    """Tests sources' change events against their `when:`, in the renderer's processes."""

    def __init__(
        self, renderer: Renderer | None = None, observer: WhenObserver | None = None
    ) -> None:
        self._renderer = renderer  # None: this process's shared one, started when first needed
        self.observer = observer

    @property
    def renderer(self) -> Renderer:
        """The renderer the expressions run in."""
        if self._renderer is None:
            from bridge.templates import shared_renderer

            self._renderer = shared_renderer()
        return self._renderer

    async def sift(self, source: Source, drafts: list[Draft]) -> list[Draft]:
        """The drafts `source.spec.when` is true for (all of them when it has none)."""
        expression = source.spec.when
        if expression is None or not drafts:
            return drafts
        from bridge.templates import TemplateError

        kept: list[Draft] = []
        raised = 0
        first: str | None = None
        for start in range(0, len(drafts), BATCH):
            batch = drafts[start : start + BATCH]
            contexts = [{"type": type_, **data} for type_, data in batch]
            try:
                verdicts = await self.renderer.verdicts(expression, contexts)
            except TemplateError as exc:  # out of time, or the worker died: the whole batch
                verdicts = [str(exc)] * len(batch)
            for draft, verdict in zip(batch, verdicts, strict=True):
                if verdict is True:
                    kept.append(draft)
                elif verdict is not False:
                    raised += 1
                    first = first or f"{draft[0]} {_key(draft[1])}: {verdict}"
        if raised:
            log.warning(
                "source %s: when: %s raised for %d event%s (first: %s); %s not sent",
                source.name,
                _short(expression),
                raised,
                "" if raised == 1 else "s",
                first,
                "it was" if raised == 1 else "they were",
                extra={"source": source.name},
            )
            if self.observer is not None:
                self.observer.when_errors(source.name, raised)
        return kept


def _short(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _key(data: dict[str, Any]) -> str:
    key = data.get("key")
    return "(document)" if key is None else _short(str(key), 40)
