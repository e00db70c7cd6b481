"""`python -m bridge` runs the CLI."""

from __future__ import annotations

from bridge.cli.main import main

main()
