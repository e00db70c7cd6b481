"""Logging setup: readable lines on a terminal, JSON lines with --log-format json."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send bridge's logs to stderr (stdout carries data: events, `-` deliveries)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    # The handler sits on the root logger so that the libraries' warnings (aiohttp, asyncio,
    # APScheduler) and Python warnings come out in the same format: with --log-format json every
    # line of stderr must parse, not only bridge's own.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("bridge")
    ours.handlers[:] = []
    ours.setLevel(level.upper())
    ours.propagate = True
    logging.captureWarnings(True)
    # APScheduler logs every job run at INFO; that is our debug.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def quieter(level: int = logging.WARNING) -> None:
    """Raise bridge's log level to at least `level` (for quiet commands)."""
    logger = logging.getLogger("bridge")
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
