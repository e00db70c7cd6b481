"""The layering of docs/ARCHITECTURE.md holds: checked with import-linter's contracts in
pyproject.toml, and a look at the tests' own imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # runs lint-imports (.ci/run runs it too)
def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.slow  # runs lint-imports
def test_a_module_importing_sqlite3_outside_the_backend_breaks_a_contract(tmp_path) -> None:
    # The contract is not vacuous: a copy of the tree with one offending import fails it.
    import shutil

    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "bridge", copy / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    engine = copy / "bridge" / "polling" / "engine.py"
    engine.write_text("import sqlite3  # noqa: F401\n" + engine.read_text())
    lint = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode != 0
    assert "bridge.polling is not allowed to import sqlite3" in result.stdout


def test_tests_outside_tests_state_read_no_state_file_with_sql() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").glob("*.py")
        if re.search(r"^\s*(import sqlite3|from sqlite3 import)", path.read_text(), re.M)
    ]
    assert offenders == []


@pytest.mark.slow  # starts a Python process
def test_bundled_kinds_load_from_a_folder_that_has_its_own_sources_package(tmp_path) -> None:
    # The plugins are bridge.sources.*, so a user's own `sources/` package (on sys.path as the
    # working folder) can no longer shadow them, as it did when they were a top-level package.
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "__init__.py").write_text("")
    (tmp_path / "bridge.yaml").write_text(
        "sources:\n  - {name: a, kind: http, url: 'http://127.0.0.1:9/a.json'}\n"
        "  - {name: f, kind: feed, url: 'http://127.0.0.1:9/f.xml'}\n"
        "  - {name: g, kind: github, repo: o/r}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "ok, 3 sources" in result.stdout


def test_the_plugin_api_is_one_module_that_exports_what_a_plugin_needs() -> None:
    import bridge.sources.base as api

    assert {"Source", "Option", "FetchState", "Fetched", "HttpClient", "SourceError"} <= set(
        api.__all__
    )
    assert all(hasattr(api, name) for name in api.__all__)
