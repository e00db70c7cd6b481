"""One daemon per state file: an advisory lock on `<state>.lock`, released when the process dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bridge.errors import StateError


def lock_path(state: str | Path) -> Path:
    """The lock file beside a state file."""
    state = Path(state)
    return state.with_name(state.name + ".lock")


class DaemonLock:
    """Held by `bridge run` for its whole life; the kernel drops it even after kill -9."""

    def __init__(self, state: str | Path):
        self.path = lock_path(state)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise StateError naming the holder's pid."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot create the lock file: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"{self.path.with_suffix('')}: another `bridge run` (pid {holder}) is using this "
                "state file"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def daemon_running(state: str | Path) -> bool:
    """Whether a `bridge run` holds the lock of this state file right now."""
    path = lock_path(state)
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
