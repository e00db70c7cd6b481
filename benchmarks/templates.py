"""The cost of one body rendering: in this process (the sandbox alone, no time limit) against the
bounded renderer (warm worker processes, killed when a rendering runs out of time), and what a
process started per rendering would cost instead.

    /work/venv/bin/python benchmarks/templates.py [--rounds 2000]

Prints a Markdown table (the "Body templates" section of benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

import orjson

from bridge.templates import Renderer, render_body

# The README's Slack recipe over its sample event: a typical templated webhook.
TEMPLATE = {
    "text": "*{{ data.source }}* {{ type }}{% if data.key %} `{{ data.key }}`{% endif %}"
    "{% for c in data.changes or [] %}\n• `{{ c.path }}` {{ c.op }}: {{ c.value }}{% endfor %}"
    "{% if data.error %}\n{{ data.error }}{% endif %}"
}
EVENT = orjson.dumps(
    {
        "type": "item.changed",
        "timestamp": "2026-11-29T19:30:00.123Z",
        "data": {
            "source": "status-page",
            "key": "abc123",
            "before": {"id": "abc123", "name": "API", "status": "operational"},
            "after": {"id": "abc123", "name": "API", "status": "degraded"},
            "changes": [{"op": "replace", "path": "/status", "value": "degraded"}],
        },
    }
)


def per_call(call: Callable[[], object], rounds: int) -> float:
    """Median seconds of one call, over batches of 100."""
    samples = []
    for _ in range(max(1, rounds // 100)):
        started = time.perf_counter()
        for _ in range(100):
            call()
        samples.append((time.perf_counter() - started) / 100)
    return statistics.median(samples)


async def concurrent(renderer: Renderer, rounds: int, in_flight: int) -> float:
    """Seconds per rendering with `in_flight` awaited at once from one event loop."""
    started = time.perf_counter()
    for _ in range(rounds // in_flight):
        await asyncio.gather(*(renderer.render_body(TEMPLATE, EVENT) for _ in range(in_flight)))
    return (time.perf_counter() - started) / (rounds // in_flight * in_flight)


def process_start() -> float:
    """Seconds from a new renderer to its first rendering: a process started per delivery."""
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        renderer = Renderer(processes=1)
        renderer.render_body_sync(TEMPLATE, EVENT)
        samples.append(time.perf_counter() - started)
        renderer.close()
    return statistics.median(samples)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    rounds = parser.parse_args().rounds
    assert render_body(TEMPLATE, EVENT) == Renderer().render_body_sync(TEMPLATE, EVENT)
    inline = per_call(lambda: render_body(TEMPLATE, EVENT), rounds)
    renderer = Renderer()
    renderer.start()
    renderer.render_body_sync(TEMPLATE, EVENT)  # warm: every template compiled once per process
    bounded = per_call(lambda: renderer.render_body_sync(TEMPLATE, EVENT), rounds)
    overlapped = asyncio.run(concurrent(renderer, rounds, 4))
    renderer.close()
    start = process_start()
    print("| rendering of the Slack recipe | per rendering | vs in-process |")
    print("|---|---|---|")
    print(f"| in-process sandbox (no time limit) | {inline * 1e6:.0f} us | 1x |")
    print(f"| bounded renderer, one at a time | {bounded * 1e6:.0f} us | {bounded / inline:.1f}x |")
    print(
        f"| bounded renderer, 4 awaited at once | {overlapped * 1e6:.0f} us "
        f"| {overlapped / inline:.1f}x |"
    )
    print(f"| a process started per rendering | {start * 1e3:.0f} ms | {start / inline:.0f}x |")


if __name__ == "__main__":
    main()
