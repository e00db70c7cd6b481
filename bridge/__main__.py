"""`python -m bridge` runs the CLI."""

from __future__ import annotations

from bridge.cli.main import main

main(prog_name="bridge")  # not "python -m bridge": help, --version and completion say bridge
