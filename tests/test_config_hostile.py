"""Hostile configs: merge-key bombs and oversized files, what a poll would refuse (CR/LF in a
header or method), malformed ${...}, every problem of a file at once; and reloads (SIGHUP) that
neither freeze the daemon nor see changes where there are none."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bridge.config import ConfigProblems, load_config
from bridge.errors import ConfigError
from bridge.sources import registry
from bridge.sources.base import Fetched, FetchState, Option, Source
from tests.conftest import Origin, bridge_config, free_port, http_source, run_cli, wait_for, webhook


def write(tmp_path: Path, text: str, name: str = "bridge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problem(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> str:
    """The one error of a config, as `LINE: key: problem`."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    assert not isinstance(info.value, ConfigProblems), str(info.value)
    message = str(info.value)
    assert message.startswith(f"{path}:") and "\n" not in message, message
    return message[len(f"{path}:") :]


def merge_bomb(levels: int = 9, width: int = 8) -> str:
    """About 600 bytes whose merge keys fold in width**levels pairs."""
    lines = ["a: &a {" + ", ".join(f"k{i}: x" for i in range(width)) + "}"]
    previous = "a"
    for level in range(1, levels + 1):
        name = f"b{level}"
        lines.append(f"{name}: &{name} {{<<: [{', '.join([f'*{previous}'] * width)}]}}")
        previous = name
    return "\n".join(lines) + "\n"


# --- 15.10: bounded in time and memory --------------------------------------------------------


def test_a_merge_key_bomb_is_refused_at_the_document_limit(tmp_path: Path) -> None:
    bomb = merge_bomb()
    assert len(bomb.encode()) < 1000
    got = problem(tmp_path, bomb)
    assert "too large" in got and "merge keys" in got, got


def test_merged_keys_still_work_below_the_limit(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        webhooks:
          base: &hook {url: "-", timeout: 3s}
          other: {<<: [*hook], retry: [1s]}
        sources:
          - &src {name: a, kind: http, url: "https://x.example", every: 1m, webhooks: [base]}
          - {<<: *src, name: b}
        """,
    )
    config = load_config(path, {})
    assert (config.webhooks["other"].timeout, config.webhooks["other"].retry) == (3.0, (1.0,))
    assert [(s.name, s.every) for s in config.sources] == [("a", 60), ("b", 60)]


def test_a_file_over_the_size_limit_says_so(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    line = '  - {name: s%d, kind: http, url: "https://x.example"}\n'
    with path.open("w") as f:
        f.write("sources:\n")
        f.writelines(line % i for i in range(1_000_000))  # about 50 MB, no alias in it
    assert path.stat().st_size > 40 * 1024 * 1024
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"{path}: the file is over 10 MB, the limit for a config file"


def test_too_many_values_without_aliases_is_not_blamed_on_aliases(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("a: [" + "1," * 1_500_000 + "1]\n")  # 3 MB: under the size limit
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"{path}:1: the document is too large: more than 1,000,000 values"


@pytest.mark.parametrize("depth", [150, 600, 990])
def test_deep_nesting_is_one_line_not_a_traceback(tmp_path: Path, depth: int) -> None:
    body = "{a: " * depth + "1" + "}" * depth  # it ran out of Python's stack
    text = "sources:\n" + HTTP + f"    json: {body}\n"
    assert problem(tmp_path, text) == "5: sources[0].json: nested too deeply (more than 100 levels)"
    shallow = "{a: " * 90 + "1" + "}" * 90
    path = write(tmp_path, "sources:\n" + HTTP + f"    json: {shallow}\n")
    assert load_config(path, {}).sources[0].options["json"]["a"]["a"]["a"]


@pytest.mark.slow
def test_check_refuses_the_bomb_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, merge_bomb())
    result = run_cli("check", "-c", str(path), timeout=30)  # it ran for minutes
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bridge: {path}:"), lines
    assert "too large" in lines[0] and "Traceback" not in result.stderr


# --- 15.11: what a poll would refuse, and ${...} ------------------------------------------------


class _HeaderKind(Source):
    """A third-party kind declaring options by the types the loader checks for requests."""

    kind = "headerkind"
    options: ClassVar[Mapping[str, Option]] = {
        "send": Option("headers", default={}),
        "verb": Option("method", default="GET"),
        "key": Option("token"),
    }

    async def fetch(self, http: Any, state: FetchState) -> Fetched:
        return Fetched(unchanged=True, state=state)


@pytest.fixture
def header_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    real_load, real_known = registry.load, registry.known_kinds
    monkeypatch.setattr(
        registry, "load", lambda k: _HeaderKind if k == "headerkind" else real_load(k)
    )
    monkeypatch.setattr(registry, "known_kinds", lambda: (*real_known(), "headerkind"))


HTTP = '  - name: a\n    kind: http\n    url: "https://x.example"\n'


@pytest.mark.parametrize(
    ("option", "where"),
    [
        ('    headers: {X-Team: "ops\\r\\nX-Evil: 1"}\n', "5: sources[0].headers.X-Team"),
        ('    headers: {"X-Te\\nam": ops}\n', "5: sources[0].headers[" + repr("X-Te\nam") + "]"),
        ('    method: "GET\\r\\n"\n', "5: sources[0].method"),
        ("    method: GE T\n", "5: sources[0].method"),
        ('    auth: {bearer: "hunter2\\nX: y"}\n', "5: sources[0].auth.bearer"),
    ],
)
def test_check_refuses_line_breaks_in_what_a_poll_sends(
    tmp_path: Path, option: str, where: str
) -> None:
    got = problem(tmp_path, "sources:\n" + HTTP + option)
    assert got.startswith(where + ": "), got
    assert "hunter2" not in got and "ops" not in got.split(": ", 2)[-1]


def test_a_header_refused_for_a_line_break_from_the_environment_is_not_quoted(
    tmp_path: Path,
) -> None:
    text = "sources:\n" + HTTP + '    headers: {Authorization: "Bearer ${TOKEN}"}\n'
    got = problem(tmp_path, text, env={"TOKEN": "hunter2\n"})  # $(cat file) keeps a newline
    assert (
        got == "5: sources[0].headers.Authorization: a header name or value cannot hold line breaks"
    )
    text = "sources:\n  - {name: g, kind: github, repo: a/b, token: '${TOKEN}'}\n"
    got = problem(tmp_path, text, env={"TOKEN": "hunter2\n"})
    assert got == "2: sources[0].token: cannot hold line breaks (it is sent in an HTTP header)"


def test_header_and_method_checks_follow_the_declared_type(
    tmp_path: Path, header_kind: None
) -> None:
    base = 'defaults:\n  send: {X-A: "1\\r\\n"}\nsources:\n  - {name: a, kind: headerkind}\n'
    assert problem(tmp_path, base).startswith("2: defaults.send.X-A: a header name or value")
    text = "sources:\n  - {name: a, kind: headerkind, verb: 'PO ST'}\n"
    assert problem(tmp_path, text).startswith("2: sources[0].verb: 'PO ST' is not an HTTP method")
    text = 'sources:\n  - {name: a, kind: headerkind, key: "k\\r\\n"}\n'
    assert problem(tmp_path, text) == (
        "2: sources[0].key: cannot hold line breaks (it is sent in an HTTP header)"
    )
    fine = write(
        tmp_path,
        "sources:\n  - {name: a, kind: headerkind, verb: PROPFIND, key: k, send: {X-N: 5}}\n",
    )
    options = load_config(fine, {}).sources[0].options
    assert (options["verb"], options["key"], options["send"]) == ("PROPFIND", "k", {"X-N": "5"})


def test_a_doubled_dollar_is_a_literal_reference(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        sources:
          - name: a
            kind: http
            url: "https://x.example/$${A}"   # comments may hold anything: ${ not checked }
            json: {query: "$${A} and ${A} and pa$$word"}
        """,
    )
    for value in ("one", ""):
        options = load_config(path, {"A": value}).sources[0].options
        assert options["url"] == "https://x.example/${A}"
        assert options["json"] == {"query": f"${{A}} and {value} and pa$$word"}


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("${ A }", "malformed ${...}"),
        ("${A:default}", "malformed ${...}"),
        ("${NOPE:-${A}}", "cannot hold another ${...}"),
        ("x-${A", "unclosed ${"),
        ("${}", "malformed ${...}"),
    ],
)
def test_malformed_references_are_errors_at_their_line(
    tmp_path: Path, value: str, said: str
) -> None:
    text = "sources:\n" + HTTP + f"    body: '{value}'\n"
    got = problem(tmp_path, text, env={"A": "a"})
    assert got.startswith("5: sources[0].body: ") and said in got, got


# --- 15.12: what a reload compares -------------------------------------------------------------


def test_where_a_source_is_written_is_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = bridge_config(
        http_source("a", "https://x.example", webhooks=["w"]), webhooks={"w": webhook("-")}
    )
    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    first = load_config("bridge.yaml", {})  # as `bridge run -c bridge.yaml` reads it
    again = load_config(first.path, {})  # as a reload reads it
    path.write_text("# a comment\n\n" + text)
    moved = load_config(first.path, {})
    assert moved.sources[0].line != first.sources[0].line  # it did move
    assert first.sources == again.sources == moved.sources
    assert first.webhooks == again.webhooks == moved.webhooks
    assert first.sources[0].file == moved.sources[0].file == str(path.resolve())


def test_an_empty_file_is_refused_where_asked(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing but a comment\n")
    assert load_config(path, {}).sources == ()  # `bridge check` still takes it
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, allow_empty=False)
    assert str(info.value) == f"{path}: the file is empty"


# --- 19.16: every problem of the file ----------------------------------------------------------

THREE = """
webhooks:
  w:
    url: not-a-url
sources:
  - {name: a, kind: http, url: "https://x.example", every: 5 parsecs}
  - {name: b, kind: http, url: "https://x.example", evry: 1m}
"""


def test_the_loader_gathers_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    with pytest.raises(ConfigProblems) as info:
        load_config(path, {})
    assert [(e.line, e.key) for e in info.value.errors] == [
        (3, "webhooks.w.url"),
        (5, "sources[0].every"),
        (6, "sources[1].evry"),
    ]
    # one line for the other commands and the reload log: the first, and how many more
    assert str(info.value).startswith(f"{path}:3: webhooks.w.url: must be an http(s) URL")
    assert str(info.value).endswith("(and 2 more: `bridge check` lists them)")


def test_problems_in_one_source_do_not_hide_those_of_the_next(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        sources:
          - {name: a, kind: http, url: "https://x.example", every: 5 parsecs, method: "G T"}
          - {name: a, kind: http, url: "ftp://x.example", webhooks: [nope]}
          - {name: c, kind: nosuchkind}
        """,
    )
    with pytest.raises(ConfigProblems) as info:
        load_config(path, {})
    assert [e.key for e in info.value.errors] == [
        "sources[0].every",
        "sources[0].method",
        "sources[1].name",
        "sources[1].webhooks[0]",
        "sources[1].url",
        "sources[2].kind",
    ]


@pytest.mark.slow
def test_check_prints_every_problem_and_how_many(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    result = run_cli("check", "-c", str(path))
    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f'bridge: {path}:3: webhooks.w.url: must be an http(s) URL or "-"',
        f"bridge: {path}:5: sources[0].every: invalid duration '5 parsecs' "
        "(expected e.g. 500ms, 30s, 5m, 1h, 1d or a number of seconds)",
        f"bridge: {path}:6: sources[1].evry: unknown key 'evry' (did you mean 'every'?)",
        f"bridge: 3 errors in {path}",
    ]
    once = run_cli("once", "-c", str(path))  # the other commands: the first, and a count
    assert once.code == 2 and len(once.stderr.strip().splitlines()) == 1, once.stderr
    assert "(and 2 more: `bridge check` lists them)" in once.stderr

    many = "".join(
        f"  - {{name: s{i}, kind: http, url: 'https://x.example', every: x}}\n" for i in range(25)
    )
    path.write_text("sources:\n" + many)
    result = run_cli("check", "-c", str(path))
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 21, lines
    assert all(
        f"{path}:{i + 2}: sources[{i}].every: invalid duration" in lines[i] for i in range(20)
    )
    assert lines[-1] == f"bridge: 25 errors in {path} (first 20 shown)"


# --- the daemon: a reload never freezes it, and sees no change where there is none ------------


def daemon_config(origin: Origin, port: int, comment: str = "") -> str:
    source = http_source(
        "a", origin.url("/a"), items="@", key="id", every="500ms", jitter="0s", webhooks=["out"]
    )
    return comment + bridge_config(
        source, webhooks={"out": webhook("-")}, http={"listen": f"127.0.0.1:{port}"}
    )


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        return int(answer.status)


@pytest.fixture
def daemon(tmp_path: Path, origin: Origin) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    """`bridge run -c bridge.yaml` from the config's folder (a relative path, as people type)."""
    origin.set("/a", [{"id": 1}])
    port = free_port()
    path = write(tmp_path, daemon_config(origin, port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", "bridge.yaml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(origin.hits("/a")) >= 1, timeout=15)
        wait_for(lambda: _answers(port), timeout=15)
        yield proc, path, port
    finally:
        if proc.returncode is None:  # the test did not stop it: a failure, or a frozen daemon
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _answers(port: int) -> bool:
    try:
        return healthz(port) == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


@pytest.mark.slow
def test_a_reload_of_a_bomb_never_stops_the_daemon(daemon: Any, origin: Origin) -> None:
    proc, path, port = daemon
    path.write_text(merge_bomb(levels=10))  # parsed on the event loop, this froze it for minutes
    proc.send_signal(signal.SIGHUP)
    hits = len(origin.hits("/a"))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert healthz(port) == 200  # answered at once, all the while
        time.sleep(0.2)
    wait_for(lambda: len(origin.hits("/a")) >= hits + 3, timeout=10)  # still polling
    err = stop(proc)
    refused = [line for line in err.splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "too large" in refused[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_reload_without_changes_changes_nothing(daemon: Any, origin: Origin) -> None:
    proc, path, port = daemon
    text = path.read_text()
    proc.send_signal(signal.SIGHUP)  # the file as it was
    wait_for(lambda: len(origin.hits("/a")) >= 3, timeout=15)
    time.sleep(1)
    path.write_text("# a comment above everything\n\n" + text)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    path.write_text("")  # an editor between truncating and writing
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    hits = len(origin.hits("/a"))
    wait_for(lambda: len(origin.hits("/a")) >= hits + 2, timeout=10)  # the old config runs on
    err = stop(proc)
    reloads = [line for line in err.splitlines() if "reloaded" in line]
    assert len(reloads) == 2, err
    assert all("0 added, 0 removed, 0 changed" in line for line in reloads), reloads
    refused = [line for line in err.splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "the file is empty" in refused[0], err
    assert "`state` cannot change" not in err
