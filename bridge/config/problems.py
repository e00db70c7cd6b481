"""Config errors gathered from a whole file: each keeps its key path; several are raised as one."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.errors import ConfigError

KeyPath = tuple[str | int, ...]
SHOWN = 20  # `bridge check` lists at most this many problems of one file


class Located(ConfigError):
    """A ConfigError that also keeps the key path it is about, to relate it to other problems."""

    def __init__(self, problem: str, *, file: str, line: int | None, key: str, path: KeyPath):
        super().__init__(problem, file=file, line=line, key=key)
        self.path = path


class ConfigProblems(ConfigError):
    """Several problems of one file: str() is the first and a count, `report()` lists them."""

    def __init__(self, errors: Sequence[ConfigError]):
        self.errors = list(errors)
        first, more = self.errors[0], len(self.errors) - 1
        problem = f"{first.problem} (and {more} more: `bridge check` lists them)"
        super().__init__(problem, file=first.file, line=first.line, key=first.key)

    def report(self) -> list[str]:
        """One `FILE:LINE: key: problem` line each (the first SHOWN), then how many there are."""
        lines = [str(error) for error in self.errors[:SHOWN]]
        count = f"{len(self.errors)} errors in {self.errors[0].file or 'the config'}"
        shown = f" (first {SHOWN} shown)" if len(self.errors) > SHOWN else ""
        return [*lines, count + shown]


def raise_all(errors: Sequence[ConfigError]) -> None:
    """Raise nothing, the one error, or all of them (in the file's order) as ConfigProblems."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        # sorted() is stable: problems on one line keep the order they were found in
        raise ConfigProblems(sorted(errors, key=lambda error: error.line or 0))
