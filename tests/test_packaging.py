"""The project as it is shipped: `python -m build` makes an sdist that carries the tests and what
they need and a wheel with the package, its plugins and both commands, without a warning; and
`pipx install` of it gives `bridge` and `bridge-push`, which work from any folder."""

from __future__ import annotations

import configparser
import email
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import bridge

ROOT = Path(__file__).resolve().parent.parent
# What a clean checkout holds that a build may read (caches, databases and benchmarks' work
# folders are left behind, as a fresh clone has none of them).
SHIPPED = ["pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "bridge.yaml"]
FOLDERS = ["bridge", "tests", "contrib", "docs"]
CACHES = shutil.ignore_patterns("__pycache__", "*.py[cod]", ".hypothesis", "*.db*")

pytestmark = pytest.mark.slow  # builds with `python -m build` and installs with pipx


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path, Path]:
    """A clean copy of the project, the build's output, and its sdist and wheel."""
    base = tmp_path_factory.mktemp("packaging")
    project = base / "project"
    project.mkdir()
    for name in SHIPPED:
        shutil.copy2(ROOT / name, project / name)
    for name in FOLDERS:
        shutil.copytree(ROOT / name, project / name, ignore=CACHES)
    # PYTHONDONTWRITEBYTECODE makes setuptools warn that it skips byte-compiling: a fact of
    # this environment, not of the package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(base / "dist"), str(project)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [sdist] = (base / "dist").glob("*.tar.gz")
    [wheel] = (base / "dist").glob("*.whl")
    return project, output, sdist, wheel


def test_the_build_prints_no_warning(built) -> None:
    _, output, _, _ = built
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert warnings == [], "\n".join(warnings)


def test_the_sdist_carries_the_tests_and_what_they_need(built) -> None:
    project, _, sdist, _ = built
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {name.removeprefix(top + "/") for name in tar.getnames()}
        pkg_info = email.message_from_bytes(tar.extractfile(f"{top}/PKG-INFO").read())
    wanted = {
        str(path.relative_to(project))
        for folder in FOLDERS
        for path in (project / folder).rglob("*")
        if path.is_file()
    }
    assert wanted - names == set()
    for name in ("tests/conftest.py", "tests/fake_github.py", "tests/fixtures/github_extra.json"):
        assert name in names
    assert {"LICENSE", "README.md", "bridge.yaml", "contrib/bridge.service"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert pkg_info["License-Expression"] == "MIT"
    assert pkg_info["Version"] == bridge.__version__


def test_the_metadata_names_the_licence_the_project_and_its_audience(built) -> None:
    _, _, _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        [meta_name] = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(whl.read(meta_name))
        licences = [n for n in whl.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(licences) == 1 and "MIT License" in whl.read(licences[0]).decode()
    assert meta["License-Expression"] == "MIT"
    assert meta["License"] is None  # the SPDX expression, not the deprecated free text
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Source", "Issues"}
    assert all(u.startswith("https://") and "example" not in u for u in urls.values())
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression says it
    assert "standardwebhooks>=1.0" in meta.get_all("Requires-Dist")  # `bridge listen` needs it
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"build>=1.2", "pipx>=1.5"} <= set(pyproject["project"]["optional-dependencies"]["test"])


def test_the_wheel_has_the_package_its_plugins_and_both_commands(built) -> None:
    _, _, _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        points = configparser.ConfigParser()
        points.read_string(whl.read(entry_points).decode())
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"bridge"}  # no top-level `sources` (or `tests`) package
    plugins = dict(points["bridge.sources"])
    assert set(plugins) == {"http", "github", "feed"}
    for target in plugins.values():
        module = target.split(":")[0]
        assert module.replace(".", "/") + ".py" in names, target
    scripts = dict(points["console_scripts"])
    assert scripts == {"bridge": "bridge.cli.main:main", "bridge-push": "bridge.cli.main:main"}
    assert {"bridge/cli/starter.yaml", "bridge/py.typed"} <= names


def test_pipx_install_gives_bridge_and_bridge_push(built, tmp_path: Path) -> None:
    project, _, _, _ = built
    home = tmp_path / "pipx"
    env = {
        **os.environ,
        "PIPX_HOME": str(home / "home"),
        "PIPX_BIN_DIR": str(home / "bin"),
        "PIPX_MAN_DIR": str(home / "man"),
    }
    installed = subprocess.run(
        [sys.executable, "-m", "pipx", "install", str(project)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # From a folder with a `sources` package of its own: the installed kinds still load.
    work = tmp_path / "work"
    (work / "sources").mkdir(parents=True)
    (work / "sources" / "__init__.py").write_text("")
    for command in ("bridge", "bridge-push"):
        exe = home / "bin" / command
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, cwd=work)
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip().endswith(f", version {bridge.__version__}"), version
    made = subprocess.run([home / "bin" / "bridge", "init"], capture_output=True, cwd=work)
    assert made.returncode == 0, made.stderr
    checked = subprocess.run(
        [home / "bin" / "bridge-push", "check"], capture_output=True, text=True, cwd=work
    )
    assert checked.returncode == 0, checked.stderr
    assert "httpx-releases" in checked.stdout
