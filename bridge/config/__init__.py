"""YAML -> frozen dataclasses: the config file read, checked and explained line by line.

It knows the options every source has; a plugin's own options are declared by the plugin
(`bridge.sources.base.Option`) and checked from that declaration.
"""

from __future__ import annotations

from bridge.config.load import Config, WebhookSpec, load_config, redacted

__all__ = ["Config", "WebhookSpec", "load_config", "redacted"]
