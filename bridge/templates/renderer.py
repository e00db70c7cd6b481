"""The bounded renderer: body templates and expressions run in a small pool of warm worker
processes (bridge/templates/child.py), each rendering bounded in time and output size. A
rendering that runs out of time has its process killed (a thread could not be stopped) and a
fresh one started, so a runaway template costs its time limit and nothing more.

Each process is driven by one thread of this process, which writes the request, waits for
the reply until the deadline and kills the process when it passes. Callers await a future
(`Renderer.render_body`, `Renderer.evaluate`), so the event loop never waits on a template,
and the pool belongs to no event loop: one per process serves every loop (`shared_renderer`)."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from bridge.templates.sandbox import DEFAULT_LIMITS, Limits, TemplateError, format_seconds

REQUEST = struct.Struct(">II")
REPLY = struct.Struct(">cI")
# A worker imports Jinja2 before it says it is ready; on a loaded machine that can take a while.
START_TIMEOUT = 30.0
# The bridge package's folder, first on the worker's path: it runs the same code as we do.
_ROOT = str(Path(__file__).resolve().parent.parent.parent)
# -P: the working folder is not on the path, so nothing there can shadow a module.
_CHILD = "import sys; sys.path.insert(0, sys.argv[1]); import bridge.templates.child as c; "
_CHILD += "c.main(sys.argv[2:])"


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


@dataclass
class _Job:
    what: str  # "body template" or "expression": how a reason names it
    header: bytes
    data: bytes
    future: concurrent.futures.Future[bytes]


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    """`size` bytes from a pipe, or _Timeout at the deadline, or _Died at end of file."""
    buf = bytearray()
    poller = select.poll()  # not select.select: a daemon's descriptors may be over 1024
    poller.register(fd, select.POLLIN)
    while len(buf) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(1, int(left * 1000) + 1)):
            if time.monotonic() >= deadline:
                raise _Timeout
            continue
        chunk = os.read(fd, min(size - len(buf), 1 << 20))
        if not chunk:
            raise _Died
        buf += chunk
    return bytes(buf)


class _Slot:
    """One worker process and the thread that drives it."""

    def __init__(self, renderer: Renderer):
        self.renderer = renderer
        self.proc: subprocess.Popen[bytes] | None = None
        self.thread = threading.Thread(target=self._run, name="bridge-renderer", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        limits = self.renderer.limits
        args = [str(os.getpid()), str(limits.output), str(limits.range_items)]
        # Started from this slot's thread, which lives as long as the process is needed: on
        # Linux the worker's parent-death signal follows the thread that started it.
        proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _CHILD, _ROOT, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal is the daemon's to handle
            bufsize=0,
        )
        self.proc = proc
        try:
            assert proc.stdout is not None
            kind, _ = self._reply(proc, time.monotonic() + START_TIMEOUT)
            if kind != b"R":
                raise _Died
        except (_Timeout, _Died):
            self._kill()
            raise TemplateError("the template renderer process did not start") from None
        return proc

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    def _reply(self, proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        kind, size = REPLY.unpack(_read_exact(fd, REPLY.size, deadline))
        if size > self.renderer.limits.output + 65536:  # never sent by a sound worker
            raise _Died
        return kind, _read_exact(fd, size, deadline)

    def _render(self, job: _Job) -> bytes:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._spawn()
        stdin: IO[bytes] | None = proc.stdin
        assert stdin is not None
        try:
            stdin.write(REQUEST.pack(len(job.header), len(job.data)) + job.header + job.data)
            kind, payload = self._reply(proc, time.monotonic() + self.renderer.limits.time)
        except _Timeout:
            self._kill()
            limit = format_seconds(self.renderer.limits.time)
            raise TemplateError(f"{job.what} ran out of time ({limit})") from None
        except (_Died, OSError):
            code = proc.poll()
            self._kill()
            raise TemplateError(f"{job.what}: the renderer process died ({code})") from None
        if kind == b"O":
            return payload
        raise TemplateError(payload.decode(errors="replace"))

    def _run(self) -> None:
        jobs = self.renderer.jobs
        try:
            while not self.renderer.closed:
                if self.proc is None:
                    try:  # warm before the next job comes; a failure is told to that job
                        self._spawn()
                    except TemplateError:
                        pass
                job = jobs.get()
                if job is None:
                    return
                if not job.future.set_running_or_notify_cancel():
                    continue  # its caller gave up while it waited
                try:
                    job.future.set_result(self._render(job))
                except TemplateError as exc:
                    job.future.set_exception(exc)
                except BaseException as exc:  # never leave a caller waiting
                    job.future.set_exception(TemplateError(f"{job.what} failed: {exc}"))
        finally:
            self._kill()


class Renderer:
    """Renders body templates and evaluates expressions in warm worker processes, each call
    bounded by `limits` (time, output size, range() items); a failure raises TemplateError."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, processes: int = 2):
        self.limits = limits
        self.processes = processes
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.closed = False
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker processes now (else on the first call), so none waits for one."""
        with self._lock:
            if self.closed:
                raise TemplateError("the template renderer is closed")
            while len(self._slots) < self.processes:
                slot = _Slot(self)
                self._slots.append(slot)
                slot.thread.start()

    def pids(self) -> list[int]:
        """The worker processes running now."""
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.poll() is None]

    def _submit(self, what: str, header: Any, data: bytes) -> concurrent.futures.Future[bytes]:
        self.start()
        try:
            encoded = orjson.dumps(header, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise TemplateError(f"{what} failed: not JSON: {exc}") from None
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self.jobs.put(_Job(what, encoded, data, future))
        return future

    def _body_job(self, template: Any, envelope: bytes) -> concurrent.futures.Future[bytes]:
        return self._submit("body template", {"op": "body", "template": template}, envelope)

    def _eval_job(
        self, expression: str, context: Mapping[str, Any]
    ) -> concurrent.futures.Future[bytes]:
        try:
            data = orjson.dumps(context, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise TemplateError(f"expression failed: not JSON: {exc}") from None
        return self._submit("expression", {"op": "eval", "expression": expression}, data)

    async def verdicts(
        self, expression: str, contexts: Sequence[Mapping[str, Any]]
    ) -> list[bool | str]:
        """Whether `expression` is true over each context (JSON values), or the one-line reason
        it raised there: all in ONE call to a worker, bounded in time as one evaluation is."""
        try:
            data = orjson.dumps(list(contexts), option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise TemplateError(f"expression failed: not JSON: {exc}") from None
        job = self._submit("expression", {"op": "test", "expression": expression}, data)
        raw: bytes = await asyncio.wrap_future(job)
        found: list[bool | str] = orjson.loads(raw)
        return found

    async def render_body(self, template: Any, envelope: bytes) -> bytes:
        """The JSON body a webhook's `body:` renders to over this event (its JSON envelope)."""
        return await asyncio.wrap_future(self._body_job(template, envelope))

    async def evaluate(self, expression: str, context: Mapping[str, Any]) -> Any:
        """A sandboxed Jinja2 expression's value over `context` (JSON values; undefined: None)."""
        value: bytes = await asyncio.wrap_future(self._eval_job(expression, context))
        return orjson.loads(value)

    def render_body_sync(self, template: Any, envelope: bytes) -> bytes:
        """render_body for a caller without an event loop."""
        return self._body_job(template, envelope).result()

    def evaluate_sync(self, expression: str, context: Mapping[str, Any]) -> Any:
        """evaluate for a caller without an event loop."""
        return orjson.loads(self._eval_job(expression, context).result())

    def close(self) -> None:
        """Stop the worker processes (a rendering in progress is killed)."""
        with self._lock:
            self.closed = True
            slots, self._slots = self._slots, []
        for _ in slots:
            self.jobs.put(None)
        for slot in slots:
            proc = slot.proc
            if proc is not None:
                proc.kill()  # its thread sees the pipe close, fails its job, and exits
        for slot in slots:
            slot.thread.join(5)
        while True:  # jobs nobody will take
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(TemplateError("the template renderer is closed"))


_shared: Renderer | None = None
_shared_lock = threading.Lock()


def shared_renderer() -> Renderer:
    """This process's renderer, with the default limits; its processes stop when we exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Renderer()
            atexit.register(_shared.close)
        return _shared
