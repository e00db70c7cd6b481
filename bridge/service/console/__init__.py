"""The web console and its JSON API on the daemon's status port (SPEC §10)."""

from __future__ import annotations

from bridge.service.console.app import mount
from bridge.service.console.core import Console

__all__ = ["Console", "mount"]
