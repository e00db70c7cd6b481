"""YAML -> frozen dataclasses: the config file read, checked and explained line by line.

It knows the options every source has; a plugin's own options are declared by the plugin
(`bridge.sources.base.Option`) and checked from that declaration.
"""

from __future__ import annotations

from bridge.config.load import Config, Secrets, WebhookSpec, load_config, redacted
from bridge.config.problems import ConfigProblems

__all__ = ["Config", "ConfigProblems", "Secrets", "WebhookSpec", "load_config", "redacted"]
