"""The exception tree: every failure a user can see is one of these, with a one-line message."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error bridge reports to a user."""


class ConfigError(BridgeError):
    """The configuration is invalid; the message reads `FILE:LINE: key.path: problem`."""

    def __init__(self, problem: str, *, file: str = "", line: int | None = None, key: str = ""):
        self.problem = problem
        self.file = file
        self.line = line
        self.key = key
        super().__init__(self.format())

    def format(self) -> str:
        """Render as `FILE:LINE: key: problem`, leaving out the parts that are unknown."""
        where = self.file
        if self.line is not None:
            where = f"{where}:{self.line}"
        parts = [p for p in (where, self.key) if p]
        return ": ".join([*parts, self.problem])


class SourceError(BridgeError):
    """A poll failed: connection, timeout, HTTP status, bad body, or an items expression."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status  # the HTTP status that failed the poll, when one did (a 401)


class DeliveryError(BridgeError):
    """One delivery attempt failed."""


class StateError(BridgeError):
    """The state file cannot be opened, read or written."""
