"""A renderer worker process: reads requests from stdin, renders or evaluates each with the
sandbox, writes the reply to stdout. Started and killed by bridge.templates.renderer.

Frames, both ways: a request is `>II` (header length, data length), a JSON header
(`{"op": "body", "template": ...}`, `{"op": "eval", "expression": ...}` or `{"op": "test",
"expression": ...}`) and the JSON data (the event, the context, or a list of contexts). A reply
is one kind byte (R ready, O ok, E error), `>I` length, and the payload: the body, the value as
JSON (a list of verdicts for "test"), or the one-line reason."""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from typing import BinaryIO

import orjson

from bridge.templates.sandbox import Limits, TemplateError, body_for, value_json, verdicts_json

REQUEST = struct.Struct(">II")
REPLY = struct.Struct(">cI")
# The worker's address space: far above what a rendering within its output limit needs, low
# enough that a template building huge values (`'x'.center(10**10)`) fails with MemoryError
# instead of pushing the machine into swap.
MEMORY_LIMIT = 1024 * 1024 * 1024


def _die_with_parent(parent: int) -> None:
    """Never outlive the daemon, even when stuck in one long call."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    else:  # no parent-death signal: look every half second

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(1)


def _limit_memory() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > MEMORY_LIMIT:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, hard))
    except (ImportError, ValueError, OSError):
        pass


def _send(out: BinaryIO, kind: bytes, payload: bytes) -> None:
    out.write(REPLY.pack(kind, len(payload)) + payload)
    out.flush()


def _answer(header: bytes, data: bytes, limits: Limits) -> tuple[bytes, bytes]:
    try:
        request = orjson.loads(header)
        context = orjson.loads(data)
        if request["op"] == "body":
            return b"O", body_for(request["template"], context, limits)
        if request["op"] == "test":  # a list of contexts: one verdict each
            return b"O", verdicts_json(request["expression"], context, limits)
        return b"O", value_json(request["expression"], context, limits)
    except TemplateError as exc:
        return b"E", str(exc).encode()
    except MemoryError:
        return b"E", b"ran out of memory"
    except Exception as exc:  # a bad request is our bug; say so in one line, keep serving
        return b"E", f"renderer failed: {type(exc).__name__}: {exc}".encode()


def main(argv: list[str]) -> None:
    """Serve requests until stdin closes: `PARENT_PID OUTPUT_LIMIT RANGE_ITEMS`."""
    parent, output, range_items = (int(a) for a in argv)
    # The replies get a private copy of stdout; a stray print() goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb")
    _die_with_parent(parent)
    _limit_memory()
    limits = Limits(output=output, range_items=range_items)
    _send(out, b"R", b"")
    while True:
        head = inp.read(REQUEST.size)
        if len(head) < REQUEST.size:
            return  # the parent closed the pipe: done
        header_len, data_len = REQUEST.unpack(head)
        header, data = inp.read(header_len), inp.read(data_len)
        if len(header) < header_len or len(data) < data_len:
            return
        _send(out, *_answer(header, data, limits))


if __name__ == "__main__":
    main(sys.argv[1:])
