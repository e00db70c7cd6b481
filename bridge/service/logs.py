"""Logging setup: readable lines on a terminal, JSON lines with --log-format json, and the one
progress line a command may show on a terminal's stderr."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

import orjson

# What the commands say themselves (summaries, a first poll's baseline, their errors): plain
# `bridge: ...` lines in text, records like any other in JSON.
CLI = "bridge.cli"
# The `extra=` fields a record may carry; in JSON each is a key of its own, for machines to
# filter on. `at` (not a field) is the time of what a record tells, when it is logged later.
FIELDS = ("source", "webhook", "event_id", "error")
CLEAR = "\r\033[K"  # back to the line's start, erase it


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the FIELDS it has, exc when there is
    one."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """`TIME LEVEL message`; the commands' own lines as `bridge: message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as one readable line."""
        if record.name == CLI:
            return f"bridge: {record.getMessage()}"
        return super().format(record)


def _at_its_own_time(record: logging.LogRecord) -> bool:
    # A poll is logged once its batch is written, which in `bridge once` is after the whole
    # pass: its record carries `at`, the time the poll ended, and is shown with that time.
    at = record.__dict__.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        record.created = float(at)
        record.msecs = (record.created - int(record.created)) * 1000
    return True


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes records to stderr. While a progress line shows, each record clears it first and
    draws it again after, so a record never lands on the progress line's end."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.progress = ""
        self.addFilter(_at_its_own_time)

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record, around the progress line."""
        # Handler.handle holds the lock around emit: no progress is drawn meanwhile.
        if self.progress:
            self.stream.write(CLEAR)
        super().emit(record)
        if self.progress:
            self.stream.write(self.progress)
            self.flush()

    def show(self, text: str) -> None:
        """Draw (or redraw) the progress line; "" clears it."""
        self.acquire()
        try:
            if text or self.progress:
                self.stream.write(CLEAR + text)
                self.flush()
            self.progress = text
        finally:
            self.release()


_handler: StderrHandler | None = None


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send bridge's logs to stderr (stdout carries data: events, `-` deliveries)."""
    global _handler
    _handler = StderrHandler(sys.stderr)
    _handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # The handler sits on the root logger so that the libraries' warnings (aiohttp, asyncio,
    # APScheduler) and Python warnings come out in the same format: with --log-format json every
    # line of stderr must parse, not only bridge's own.
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("bridge")
    ours.handlers[:] = []
    ours.setLevel(level.upper())
    ours.propagate = True
    logging.captureWarnings(True)
    # APScheduler logs every job run at INFO; that is our debug.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # psycopg's pool logs each failed attempt to connect (every second or two while the server
    # is away); the daemon says the problem once (state.problem()) and once when it is over.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def is_json() -> bool:
    """Whether logs are JSON lines (--log-format json)."""
    return _handler is not None and isinstance(_handler.formatter, JsonFormatter)


def progress(text: str) -> None:
    """Show `text` as the progress line on stderr ("" clears it); records written meanwhile
    go around it. Only for a terminal: the caller checks that stderr is one."""
    if _handler is not None:
        _handler.show(text)


def quieter(level: int = logging.WARNING) -> None:
    """Raise bridge's log level to at least `level` (for quiet commands)."""
    logger = logging.getLogger("bridge")
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
