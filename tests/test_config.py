"""Config loading: values, defaults, and errors that name FILE:LINE, the key, and the problem."""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import Config, load_config, redacted
from bridge.config.units import cron_to_apscheduler, parse_duration, parse_size
from bridge.errors import ConfigError, SourceError
from bridge.sources import registry
from bridge.sources.base import Fetched, FetchState, Option, Source

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def write(tmp_path: Path, text: str, name: str = "bridge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env={} if env is None else env)


def error(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    assert "\n" not in message
    return message[len(f"{path}:") :]  # "LINE: key: problem"


# --- the happy path ---------------------------------------------------------------------------


def test_full_example_loads(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        state: data/bridge.db
        retention: 7d
        grace: 30s
        http:
          listen: 127.0.0.1:9464
          per_host: 2
        defaults:
          every: 5m
          jitter: 10%
          timeout: 10s
          on_first_poll: baseline
        webhooks:
          ops:
            url: https://hooks.example.com/bridge
            secret: ${OPS_WEBHOOK_SECRET}
            headers: {X-Team: ops}
            timeout: 15s
            retry: [5s, 5m, 30m, 2h, 5h, 10h, 10h]
            concurrency: 4
          chat:
            url: "-"
            body:
              text: "{{ data.source }}: {{ type }} {{ data.after.name }}"
        sources:
          - name: status-page
            kind: http
            url: https://status.example.com/api/v2/components.json
            method: GET
            headers: {Accept: application/json}
            auth: {bearer: ${STATUS_TOKEN}}
            items: components
            key: id
            ignore: [updated_at, "position"]
            paginate: link
            cron: "*/5 * * * *"
            on: [added, changed]
            alert_after: 3
            max_bytes: 10MB
            webhooks: [ops]
        """,
        env={"OPS_WEBHOOK_SECRET": SECRET, "STATUS_TOKEN": "tok-123"},
    )
    assert config.path == (tmp_path / "bridge.yaml").resolve()
    assert config.state == str((tmp_path / "data" / "bridge.db").resolve())
    assert config.retention == 7 * 86400
    assert config.grace == 30
    assert config.listen == ("127.0.0.1", 9464)
    assert config.per_host == 2
    ops, chat = config.webhooks["ops"], config.webhooks["chat"]
    assert ops.secrets == (SECRET,)
    assert ops.headers == {"X-Team": "ops"}
    assert ops.retry == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert ops.line == 13
    assert chat.url == "-" and chat.body == {
        "text": "{{ data.source }}: {{ type }} {{ data.after.name }}"
    }
    assert SECRET not in repr(ops)
    (src,) = config.sources
    assert src.name == "status-page" and src.kind == "http"
    assert src.every is None and src.cron == "*/5 * * * *"
    assert src.jitter == pytest.approx(6.0)  # 10% of a minute under cron
    assert src.on == frozenset({"added", "changed"})
    assert src.alert_after == 3
    assert src.max_bytes == 10 * 1024 * 1024
    assert src.webhooks == ("ops",)
    assert src.ignore == ("updated_at", "position")
    assert src.options["auth"] == {"bearer": "tok-123"}
    assert src.options["items"] == "components"
    assert src.options["max_pages"] == 10  # the plugin's Option default
    assert src.file == str(tmp_path / "bridge.yaml")
    assert src.line == 25
    assert config.source("status-page") is src and config.source("nope") is None


def test_builtin_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "sources:\n  - {name: a, kind: http, url: 'https://x.example'}\n")
    (src,) = config.sources
    assert (src.every, src.cron, src.jitter, src.timeout) == (300, None, 30, 10)
    assert (src.on, src.on_first_poll, src.alert_after) == (None, "baseline", None)
    assert (src.max_bytes, src.webhooks, src.ignore) == (10 * 1024 * 1024, (), ())
    assert config.state == str((tmp_path / "bridge.db").resolve())
    assert config.listen is None and config.per_host == 4
    assert (config.retention, config.grace) == (30 * 86400, 10)


def test_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    config = load(tmp_path, "# nothing yet\n")
    assert config.sources == () and dict(config.webhooks) == {}


def test_defaults_applied_and_overridden(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        webhooks:
          ops: {url: "-"}
          chat: {url: "-"}
        defaults:
          every: 10m
          jitter: 30s
          timeout: 3s
          on: [added]
          on_first_poll: emit
          alert_after: 2
          max_bytes: 1MB
          webhooks: ops
          ignore: [updated_at]
          max_pages: 3
        sources:
          - {name: a, kind: http, url: "https://a.example"}
          - name: b
            kind: http
            url: https://b.example
            every: 1h
            jitter: 50%
            timeout: 1s
            on: changed
            on_first_poll: baseline
            alert_after: null
            max_bytes: 2048
            webhooks: [chat, ops]
            ignore: []
            max_pages: 7
          - {name: c, kind: http, url: "https://c.example", cron: "@hourly"}
        """,
    )
    a, b, c = config.sources
    assert (a.every, a.jitter, a.timeout, a.on, a.on_first_poll) == (
        600,
        30,
        3,
        frozenset({"added"}),
        "emit",
    )
    assert (a.alert_after, a.max_bytes, a.webhooks, a.ignore) == (
        2,
        1024 * 1024,
        ("ops",),
        ("updated_at",),
    )
    assert a.options["max_pages"] == 3
    assert (b.every, b.jitter, b.timeout, b.on, b.on_first_poll) == (
        3600,
        1800,
        1,
        frozenset({"changed"}),
        "baseline",
    )
    assert (b.alert_after, b.max_bytes, b.webhooks, b.ignore) == (None, 2048, ("chat", "ops"), ())
    assert b.options["max_pages"] == 7
    # a source's cron replaces defaults.every
    assert (c.every, c.cron) == (None, "@hourly")


class _FakeSource(Source):
    """A test-only kind with an option the http kind does not have."""

    kind = "fake"
    options: ClassVar[Mapping[str, Option]] = {
        "flavour": Option("choice", choices=("sweet", "sour"), default="sweet"),
        "token": Option("str", secret=True),
        "count": Option("int", default=1),
        "enabled": Option("bool", default=True),
        "wait": Option("duration", default=1.0),
        "limit": Option("size", default=100),
        "extra": Option("list", default=[]),
        "cursor": Option("jmespath", help="JMESPath of the next page's cursor"),
        "hidden": Option("jmespath", secret=True),
    }

    async def fetch(self, http: Any, state: FetchState) -> Fetched:
        return Fetched(unchanged=True, state=state)


@pytest.fixture
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    real_load, real_known = registry.load, registry.known_kinds

    def load_kind(kind: str) -> type[Source]:
        return _FakeSource if kind == "fake" else real_load(kind)

    monkeypatch.setattr(registry, "load", load_kind)
    monkeypatch.setattr(registry, "known_kinds", lambda: (*real_known(), "fake"))


def test_plugin_option_from_defaults_only_where_declared(tmp_path: Path, fake_kind: None) -> None:
    config = load(
        tmp_path,
        """
        defaults:
          flavour: sour
          max_pages: 2
        sources:
          - {name: f, kind: fake, count: "5", enabled: "false", wait: 2m, limit: 1KB}
          - {name: h, kind: http, url: "https://h.example"}
        """,
    )
    f, h = config.sources
    assert f.options == {
        "flavour": "sour",
        "token": None,
        "count": 5,
        "enabled": False,
        "wait": 120,
        "limit": 1024,
        "extra": [],
        "cursor": None,
        "hidden": None,
    }
    assert "flavour" not in h.options and h.options["max_pages"] == 2


def test_plugin_option_types(tmp_path: Path, fake_kind: None) -> None:
    base = "sources:\n  - name: f\n    kind: fake\n"
    assert error(tmp_path, base + "    flavour: bitter\n") == (
        "4: sources[0].flavour: 'bitter' must be one of: sweet, sour"
    )
    assert error(tmp_path, base + "    count: lots\n") == "4: sources[0].count: must be an integer"
    assert (
        error(tmp_path, base + "    enabled: 3\n") == "4: sources[0].enabled: must be true or false"
    )
    assert error(tmp_path, base + "    extra: {a: 1}\n") == "4: sources[0].extra: must be a list"
    assert (
        error(tmp_path, base + "    token: [hunter2]\n") == "4: sources[0].token: must be a string"
    )
    assert load(tmp_path, base + "    token: 12345\n").sources[0].options["token"] == "12345"


def test_state_path_relative_to_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "conf", "state: ../var/state.db\n")
    config = load_config(Path("conf") / "bridge.yaml", env={})
    assert config.state == str((tmp_path / "var" / "state.db").resolve())
    assert config.path == path.resolve()
    absolute = tmp_path / "abs.db"
    assert load(tmp_path, f"state: {absolute}\n").state == str(absolute.resolve())


def test_env_interpolation_and_defaults(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        state: ${STATE_DIR:-/tmp/x}/bridge.db
        defaults:
          every: ${EVERY:-1m}
          timeout: ${TIMEOUT:-}5s
          alert_after: ${ALERTS}
        sources:
          - {name: "${NAME}", kind: http, url: "https://${HOST}/api", max_pages: "${PAGES:-4}"}
        """,
        env={"NAME": "svc", "HOST": "api.example", "ALERTS": "3", "EVERY": ""},
    )
    (src,) = config.sources
    assert config.state == str(Path("/tmp/x/bridge.db").resolve())
    assert (src.name, src.options["url"]) == ("svc", "https://api.example/api")
    assert (src.every, src.timeout, src.alert_after) == (60, 5, 3)  # an empty value takes :-
    assert src.options["max_pages"] == 4


def test_missing_env_var_names_it_and_nothing_else(tmp_path: Path) -> None:
    env = {"OTHER_SECRET": "s3cr3t-value", "HOME_TOKEN": "tok-999"}
    got = error(
        tmp_path,
        """
        webhooks:
          ops:
            url: https://hooks.example/x
            secret: ${OPS_SECRET}
        """,
        env=env,
    )
    assert got == "4: webhooks.ops.secret: environment variable OPS_SECRET is not set"
    assert "s3cr3t" not in got and "tok-999" not in got


def test_env_var_inside_flow_mapping(tmp_path: Path) -> None:
    # not valid YAML if taken literally; interpolation makes it work as the SPEC shows it
    config = load(
        tmp_path,
        "sources:\n  - {name: a, kind: http, url: 'https://x.example', auth: {bearer: ${T}}}\n",
        env={"T": "abc"},
    )
    assert config.sources[0].options["auth"] == {"bearer": "abc"}


# --- errors: FILE:LINE: key: problem ------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: cannot read the config file")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    assert error(tmp_path, "sources:\n  - name: a\n    kind: [http\n  - b\n") == (
        "4: invalid YAML: expected ',' or ']', but got '<stream end>'"
        " (while parsing a flow sequence from line 3)"
    )
    assert (
        error(tmp_path, "a: 1\nb: c: d\n") == "2: invalid YAML: mapping values are not allowed here"
    )
    assert error(tmp_path, "a: 1\n\tb: 2\n").startswith("2: invalid YAML: ")
    assert error(tmp_path, "a: 1\n---\nb: 2\n").startswith("2: invalid YAML: ")
    assert (
        error(tmp_path, "sources: *nowhere\n") == "1: invalid YAML: found undefined alias 'nowhere'"
    )


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert (
        error(tmp_path, "- a\n- b\n")
        == "1: the top level must be a mapping of keys such as sources:"
    )


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    assert error(tmp_path, "state: x.db\nsourcs: []\n") == (
        "2: sourcs: unknown key 'sourcs' (did you mean 'sources'?)"
    )
    assert error(tmp_path, "http:\n  listne: 1.2.3.4:5\n") == (
        "2: http.listne: unknown key 'listne' (did you mean 'listen'?)"
    )


def test_unknown_key_in_source_suggests_common_and_plugin_keys(tmp_path: Path) -> None:
    base = "sources:\n  - name: a\n    kind: http\n    url: https://x.example\n"
    assert error(tmp_path, base + "    evrey: 5m\n") == (
        "5: sources[0].evrey: unknown key 'evrey' (did you mean 'every'?)"
    )
    assert error(tmp_path, base + "    metod: POST\n") == (
        "5: sources[0].metod: unknown key 'metod' (did you mean 'method'?)"
    )
    assert error(tmp_path, base + "    zzzzz: 1\n").startswith(
        "5: sources[0].zzzzz: unknown key 'zzzzz' (known: "
    )


def test_unknown_key_in_webhook_and_defaults(tmp_path: Path) -> None:
    assert error(tmp_path, "webhooks:\n  ops:\n    url: '-'\n    secert: x\n") == (
        "4: webhooks.ops.secert: unknown key 'secert' (did you mean 'secret'?)"
    )
    assert error(tmp_path, "defaults:\n  timout: 5s\n") == (
        "2: defaults.timout: unknown key 'timout' (did you mean 'timeout'?)"
    )


def test_duplicate_key(tmp_path: Path) -> None:
    assert (
        error(tmp_path, "state: a.db\ngrace: 1s\nstate: b.db\n")
        == "3: state: duplicate key 'state'"
    )


def test_every_and_cron(tmp_path: Path) -> None:
    text = """
        sources:
          - name: a
            kind: http
            url: https://x.example
            every: 5m
            cron: "*/5 * * * *"
        """
    assert error(tmp_path, text) == "6: sources[0].cron: give every: or cron:, not both"
    assert error(tmp_path, "defaults:\n  every: 1m\n  cron: '@daily'\n") == (
        "3: defaults.cron: give every: or cron:, not both"
    )


def test_bad_cron(tmp_path: Path) -> None:
    base = "sources:\n  - name: a\n    kind: http\n    url: https://x.example\n"
    assert error(tmp_path, base + "    cron: '61 * * * *'\n") == (
        "5: sources[0].cron: cron minute field: 61 is out of range 0-59"
    )
    assert error(tmp_path, base + "    cron: '* * *'\n").startswith(
        "5: sources[0].cron: cron needs 5 fields"
    )


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (
            "every",
            "5x",
            "invalid duration '5x' (expected e.g. 500ms, 30s, 5m, 1h, 1d or a number of seconds)",
        ),
        ("every", "0s", "must be longer than 0s"),
        (
            "timeout",
            "-1",
            "invalid duration -1 (must be a finite number >= 0)",
        ),
        (
            "max_bytes",
            "10XB",
            "invalid size '10XB' (expected e.g. 512KB, 10MB, 1GB or a number of bytes)",
        ),
        ("max_bytes", "0", "must be larger than 0 bytes"),
        ("jitter", "150%", "jitter must be between 0% and 100%"),
        (
            "jitter",
            "lots",
            "invalid duration 'lots' (expected e.g. 500ms, 30s, 5m, 1h, 1d or a number of seconds)",
        ),
        ("on", "[added, moved]", "'moved' is not one of: added, changed, removed"),
        ("on", "[]", "must name at least one of: added, changed, removed"),
        ("on_first_poll", "later", "must be baseline or emit"),
        ("alert_after", "0", "must be at least 1"),
        ("alert_after", "true", "must be an integer"),
        ("ignore", "{a: 1}", "must be a list of strings"),
    ],
)
def test_bad_common_values(tmp_path: Path, key: str, value: str, problem: str) -> None:
    text = (
        f"sources:\n  - name: a\n    kind: http\n    url: https://x.example\n    {key}: {value}\n"
    )
    got = error(tmp_path, text)
    at = "sources[0].on[1]" if value == "[added, moved]" else f"sources[0].{key}"
    assert got == f"5: {at}: {problem}"


def test_undefined_webhook_name(tmp_path: Path) -> None:
    text = """
        webhooks:
          ops: {url: "-"}
          chat: {url: "-"}
        sources:
          - name: a
            kind: http
            url: https://x.example
            webhooks:
              - ops
              - opz
        """
    assert (
        error(tmp_path, text)
        == "10: sources[0].webhooks[1]: undefined webhook 'opz' (defined: ops, chat)"
    )
    assert error(
        tmp_path, "sources:\n  - {name: a, kind: http, url: 'https://x', webhooks: ops}\n"
    ) == ("2: sources[0].webhooks: undefined webhook 'ops' (defined: none)")


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    got = error(tmp_path, "sources:\n  - name: a\n    kind: nope\n")
    assert got.startswith("3: sources[0].kind: unknown source kind 'nope' (known: ")
    assert "http" in got.split("known: ")[1]


def test_source_name_rules(tmp_path: Path) -> None:
    one = "  - name: {}\n    kind: http\n    url: https://x.example\n"
    assert error(tmp_path, "sources:\n" + one.format("Bad Name")) == (
        "2: sources[0].name: must match [a-z0-9_-]+ (lower case, digits, _ and -)"
    )
    assert error(tmp_path, "sources:\n" + one.format("a") + one.format("a")) == (
        "5: sources[1].name: duplicate source name 'a' (first at line 2)"
    )
    assert error(tmp_path, "sources:\n  - kind: http\n    url: https://x\n") == (
        "2: sources[0]: missing required key 'name'"
    )
    assert (
        error(tmp_path, "sources:\n  - name: 12\n    kind: http\n    url: https://x\n")
        == "2: sources[0].name: must be a string"
    )


def test_missing_required_plugin_option(tmp_path: Path) -> None:
    assert error(tmp_path, "sources:\n  - name: a\n    kind: http\n") == (
        "2: sources[0]: missing required key 'url'"
    )


def test_bad_jmespath(tmp_path: Path) -> None:
    base = "sources:\n  - name: a\n    kind: http\n    url: https://x.example\n"
    assert error(tmp_path, base + "    items: 'components[?'\n") == (
        "5: sources[0].items: bad JMESPath expression 'components[?': it is incomplete"
    )
    assert error(tmp_path, base + "    key: a-b\n") == (
        "5: sources[0].key: bad JMESPath expression 'a-b': Unknown token '-' at column 1"
    )


def test_a_bad_jmespath_fails_every_source_that_repeats_it(tmp_path: Path) -> None:
    # the check's verdict is cached by expression: a second source must still be refused
    good = "  - name: a\n    kind: http\n    url: https://x.example\n    items: items\n"
    bad = "  - name: {}\n    kind: http\n    url: https://x.example\n    items: 'a['\n"
    assert error(tmp_path, "sources:\n" + good + bad.format("b")).startswith(
        "9: sources[1].items: bad JMESPath expression"
    )
    assert error(tmp_path, "sources:\n" + bad.format("c")).startswith(
        "5: sources[0].items: bad JMESPath expression"
    )


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sort_byy(@, &id)", "unknown function sort_byy()"),
        ("components[?lenght(name) > `3`]", "unknown function lenght()"),
        ("sort_by(@)", "sort_by() takes 2 arguments, not 1"),
        ("sort_by(@, id)", "argument 2 of sort_by() must be an expression reference, as in &field"),
        ("length(&id)", "argument 1 of length() cannot be an expression reference (&...)"),
        ("components[::0]", "a slice's step cannot be 0"),
        ("components[?", "it is incomplete"),
        ("a ^ b", "Unknown token ^ at column 2"),
    ],
)
def test_check_refuses_what_every_poll_would_fail_on(
    tmp_path: Path, expr: str, problem: str
) -> None:
    # jmespath finds unknown functions, arity and `&` mistakes only while searching: per poll
    base = "sources:\n  - name: a\n    kind: http\n    url: https://x.example\n"
    quoted = expr.replace("'", "''")
    assert error(tmp_path, base + f"    items: '{quoted}'\n") == (
        f"5: sources[0].items: bad JMESPath expression {expr!r}: {problem}"
    )


def test_a_jmespath_option_must_be_a_string(tmp_path: Path) -> None:
    base = "sources:\n  - name: a\n    kind: http\n    url: https://x.example\n"
    assert error(tmp_path, base + "    key: [id]\n") == (
        "5: sources[0].key: bad JMESPath expression: it must be a string, not list"
    )


def test_a_third_party_jmespath_option_is_checked_by_its_type(
    tmp_path: Path, fake_kind: None
) -> None:
    # The loader knows no plugin's option names: Option("jmespath") is all it takes.
    base = "sources:\n  - name: f\n    kind: fake\n"
    assert error(tmp_path, base + "    cursor: 'sort_byy(@, &id)'\n") == (
        "4: sources[0].cursor: bad JMESPath expression 'sort_byy(@, &id)': "
        "unknown function sort_byy()"
    )
    assert error(tmp_path, base + "    cursor: 'next['\n") == (
        "4: sources[0].cursor: bad JMESPath expression 'next[': it is incomplete"
    )
    options = load(tmp_path, base + "    cursor: meta.next\n").sources[0].options
    assert options["cursor"] == "meta.next"
    # a secret's value is never repeated, even a wrong one
    assert error(tmp_path, base + "    hidden: 'hunter2('\n") == (
        "4: sources[0].hidden: bad JMESPath expression: it is incomplete"
    )


_FUNCTION_NAMES = (
    "sort_by", "sort_byy", "length", "lenght", "max_by", "to_number", "to_string", "keys",
    "not_null", "merge", "contains",
)  # fmt: skip
_ARGUMENTS = ("@", "&id", "id", "components", "`1`", "&length(name)", "a || &b", "not_null(&id)")
_EXPRESSIONS = st.one_of(
    st.builds(
        lambda name, args: f"{name}({', '.join(args)})",
        st.sampled_from(_FUNCTION_NAMES),
        st.lists(st.sampled_from(_ARGUMENTS), max_size=3),
    ),
    st.builds(
        lambda head, tail: head + tail,
        st.sampled_from(("components", "@", "items[*]", "a.b", "[0]", "a[::", "[?x")),
        st.sampled_from(("", "[]", "[0]", "[::0]", "[::2]", ".id", " | [0", "[?id > `1`]", "(")),
    ),
    st.text(alphabet="abc@&*.[]()?|!=<>`'\"{}:, 0123456789-^", max_size=20),
)


# `foo` (not JSON) is jmespath's deprecated but accepted spelling of the string "foo"
@pytest.mark.filterwarnings("ignore:deprecated string literal syntax:PendingDeprecationWarning")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(expr=_EXPRESSIONS)
def test_check_accepts_an_expression_exactly_when_polls_can_run_it(
    tmp_path: Path, expr: str
) -> None:
    from bridge.polling.diff import index_items, select

    path = write(
        tmp_path,
        "sources:\n  - name: a\n    kind: http\n    url: https://x.example\n"
        f"    items: {json.dumps(expr)}\n",
    )
    try:
        load_config(path, env={})
        checked = None
    except ConfigError as exc:
        checked = exc.problem
    # what a poll runs: the items expression over each page, then the key over each item
    page = {"components": [{"id": 1, "name": "x"}]}
    try:
        select([page], expr)
        polled = None
    except SourceError as exc:
        polled = str(exc)
    try:
        index_items([page], expr, ())
        keyed = None
    except SourceError as exc:
        keyed = str(exc)
    if checked is None:
        # accepted by the check: the poll compiles it (its data may still not fit)
        for message in (polled, keyed):
            assert message is None or not message.startswith("bad JMESPath"), (expr, message)
    else:
        assert polled == keyed == checked, expr


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/docs/1.json",
        "https://api.example.com",
        "https://api.example.com?x=1",
        "HTTPS://API.EXAMPLE.COM/x",
        "https://user:pw@example.com/x",
        "https://[::1]:8080/x",
        "http://:8080/x",
        "http:///x",
        "https://",
        "ftp://example.com/x",
        "https:example.com",
        "https://exa mple.com/x",
        "//example.com/x",
        "https://example.com:/x",
        "https://example.com#frag",
    ],
)
def test_url_check_agrees_with_urlsplit(url: str) -> None:
    # plain URLs skip urlsplit when the config is loaded: the verdict must be the same
    from urllib.parse import urlsplit

    from bridge.sources._common import check_http_url

    parts = urlsplit(url)
    usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    assert (check_http_url(url) is None) is usable


def test_loading_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    import gc

    path = write(tmp_path, "sources:\n  - name: a\n    kind: http\n    url: https://x.example\n")
    bad = write(tmp_path, "sources: [\n", name="bad.yaml")
    assert gc.isenabled()
    load_config(path, env={})
    assert gc.isenabled()
    with pytest.raises(ConfigError):
        load_config(bad, env={})
    assert gc.isenabled()
    gc.disable()
    try:
        load_config(path, env={})
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_plugin_check_problems_are_located(tmp_path: Path) -> None:
    text = """
        sources:
          - name: a
            kind: http
            url: https://x.example
            auth:
              bearer: [not, a, string]
        """
    assert error(tmp_path, text) == "6: sources[0].auth.bearer: must be a string"


def test_secret_values_never_in_errors(tmp_path: Path) -> None:
    hook = "webhooks:\n  ops:\n    url: https://h.example\n    secret: {}\n"
    for value, problem in [
        ("hunter2-plaintext", "must start with whsec_ followed by base64"),
        ("whsec_hunter2-plaintext", "is not valid base64 after whsec_"),
        ("whsec_aHVudGVyMg==", "decodes to 7 bytes; at least 16 are needed"),
    ]:
        got = error(tmp_path, hook.format(value))
        assert got == f"4: webhooks.ops.secret: {problem}"
        assert "hunter2" not in got and "aHVudGVyMg" not in got
    got = error(tmp_path, hook.format(f"[{SECRET}, whsec_aHVudGVyMg==]"))
    assert got == "4: webhooks.ops.secret[1]: decodes to 7 bytes; at least 16 are needed"
    got = error(
        tmp_path, "webhooks:\n  ops:\n    url: 'https://h.example/T0/hunter2'\n    retry: 5s\n"
    )
    assert "hunter2" not in got
    got = error(tmp_path, "webhooks:\n  ops:\n    url: 'ftp://hunter2@h'\n")
    assert got == '3: webhooks.ops.url: must be an http(s) URL or "-"'
    got = error(tmp_path, "webhooks:\n  ops:\n    url: '-'\n    headers: {X-Key: \"hunter2\\n\"}\n")
    assert got == "4: webhooks.ops.headers.X-Key: a header name or value cannot hold line breaks"
    got = error(tmp_path, "webhooks:\n  ops:\n    url: '-'\n    headers: {X-Key: [hunter2]}\n")
    assert got == "4: webhooks.ops.headers.X-Key: must be a string"
    src = "sources:\n  - name: a\n    kind: http\n    url: https://x\n    auth: hunter2-token\n"
    assert error(tmp_path, src) == "5: sources[0].auth: must be a mapping"


def test_webhook_values(tmp_path: Path) -> None:
    base = "webhooks:\n  ops:\n    url: https://h.example\n"
    assert error(tmp_path, base + "    retry: [5s, soon]\n").startswith(
        "4: webhooks.ops.retry[1]: invalid duration"
    )
    assert (
        error(tmp_path, base + "    concurrency: 0\n")
        == "4: webhooks.ops.concurrency: must be at least 1"
    )
    assert (
        error(tmp_path, "webhooks:\n  ops:\n    timeout: 1s\n")
        == "2: webhooks.ops: missing required key 'url'"
    )
    got = error(tmp_path, base + "    body:\n      text: 'ok'\n      more:\n        - '{{ type '\n")
    assert got.startswith("7: webhooks.ops.body.more[0]: invalid template: ")
    config = load(
        tmp_path, base + f"    secret: [{SECRET}, {SECRET}]\n    retry: []\n    timeout: 2\n"
    )
    hook = config.webhooks["ops"]
    assert (hook.secrets, hook.retry, hook.timeout) == ((SECRET, SECRET), (), 2)


def test_http_listen(tmp_path: Path) -> None:
    assert load(tmp_path, "http:\n  listen: '[::1]:8080'\n").listen == ("::1", 8080)
    assert load(tmp_path, "http:\n  listen: 9464\n").listen == ("127.0.0.1", 9464)
    assert error(tmp_path, "http:\n  listen: localhost\n") == (
        "2: http.listen: must be HOST:PORT, e.g. 127.0.0.1:9464"
    )
    assert error(tmp_path, "http:\n  per_host: 0\n") == "2: http.per_host: must be at least 1"


def test_on_key_is_not_a_boolean(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `on` as true; as a key it must stay the word "on"
    config = load(
        tmp_path, "sources:\n  - {name: a, kind: http, url: 'https://x', on: [removed]}\n"
    )
    assert config.sources[0].on == frozenset({"removed"})


def test_merge_keys_and_anchors(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        sources:
          - &base {name: a, kind: http, url: "https://x.example", every: 1m}
          - <<: *base
            name: b
        """,
    )
    assert [(s.name, s.every) for s in config.sources] == [("a", 60), ("b", 60)]
    assert error(tmp_path, "a: &x [1, *x]\n") == "1: a[1]: an alias refers to itself"


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    got = error(tmp_path, "\n".join(lines) + "\n")
    # Named at the first value past the limit (a5: 1,111,111 values), found before building any.
    assert got == (
        "6: a5: the document is too large: aliases and merge keys (<<) expand it past "
        "1,000,000 values"
    )


def test_redacted_rows(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        webhooks:
          ops: {url: "https://h.example/hunter2", secret: SECRET_HERE}
          chat: {url: "-"}
        sources:
          - {name: a, kind: http, url: "https://x", auth: {bearer: hunter2}, webhooks: [ops, chat]}
          - {name: b, kind: http, url: "https://x.example", cron: "*/5 * * * *"}
          - {name: c, kind: http, url: "https://x.example", every: 90}
        """.replace("SECRET_HERE", SECRET),
    )
    rows = redacted(config)
    assert rows == [
        {"name": "a", "kind": "http", "schedule": "every 5m", "webhooks": "ops, chat"},
        {"name": "b", "kind": "http", "schedule": "cron */5 * * * *", "webhooks": "-"},
        {"name": "c", "kind": "http", "schedule": "every 90s", "webhooks": "-"},
    ]
    assert "hunter2" not in repr(rows) and SECRET not in repr(rows)


# --- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("1.5h", 5400),
        (" 10 S ", 10),
        ("45", 45),
        (0, 0),
        (2.5, 2.5),
        ("0ms", 0),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "m", "5 minutes", "-1s", "1e3s", True, None, [1], -3, float("inf"), 10**400]
)
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert "\n" not in str(info.value) and "duration" in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("100B", 100),
        ("512KB", 512 * 1024),
        ("10MB", 10 * 1024**2),
        ("1GB", 1024**3),
        ("1.5kb", 1536),
        (42, 42),
        ("7", 7),
    ],
)
def test_parse_size(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value", ["", "10TB", "MB", "-1KB", "1e9", False, 1.5, None, -1, "9" * 400 + "GB"]
)
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert "\n" not in str(info.value) and "size" in str(info.value)


@pytest.mark.parametrize(
    ("expr", "day_of_week"),
    [
        ("0 9 * * 1-5", "mon,tue,wed,thu,fri"),
        ("0 0 * * 0", "sun"),
        ("0 0 * * 7", "sun"),
        ("0 0 * * 0,7", "sun"),
        ("0 0 * * */2", "tue,thu,sat,sun"),
        ("0 0 * * 1-7/3", "mon,thu,sun"),
        ("0 0 * * MON-FRI", "mon,tue,wed,thu,fri"),
        ("0 0 * * sat-sun", "sat,sun"),
        ("0 0 * * 5,SUN", "fri,sun"),
        ("0 0 * * *", "*"),
        ("@weekly", "sun"),
    ],
)
def test_cron_day_of_week_conversion(expr: str, day_of_week: str) -> None:
    assert cron_to_apscheduler(expr)["day_of_week"] == day_of_week


def test_cron_fields() -> None:
    assert cron_to_apscheduler("*/15 9-17 1,15 jan-mar *") == {
        "minute": "0,15,30,45",
        "hour": "9,10,11,12,13,14,15,16,17",
        "day": "1,15",
        "month": "1,2,3",
        "day_of_week": "*",
    }
    assert cron_to_apscheduler("@hourly") == {
        "minute": "0",
        "hour": "*",
        "day": "*",
        "month": "*",
        "day_of_week": "*",
    }
    assert cron_to_apscheduler("@daily")["hour"] == "0"
    assert cron_to_apscheduler("@monthly")["day"] == "1"
    assert cron_to_apscheduler("@yearly")["month"] == "1"
    assert cron_to_apscheduler("5/20 * * * *")["minute"] == "5,25,45"


@pytest.mark.parametrize(
    "expr",
    ["60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *",
     "5-1 * * * *", "a * * * *", "* * * *", "* * * * * *", "@reboot", "1--2 * * * *",
     ""],
)  # fmt: skip
def test_cron_rejects(expr: str) -> None:
    with pytest.raises(ValueError):
        cron_to_apscheduler(expr)


def test_more_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"state: a.db\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "latin1.yaml", env={})
    assert str(info.value) == f"{tmp_path / 'latin1.yaml'}:2: the file is not UTF-8 text"
    # odd keys are quoted so that a message stays on one line
    assert error(tmp_path, 'webhooks:\n  "a b\\n": {url: "-"}\n') == (
        "2: webhooks['a b\\n']: webhook names may use only A-Z a-z 0-9 _ . -"
    )
    assert error(tmp_path, "defaults:\n  metod: POST\n") == (
        "2: defaults.metod: unknown key 'metod' (did you mean 'method'?)"
    )
    assert error(tmp_path, "sources: {a: 1}\n") == (
        "1: sources: must be a list of sources (`- name: ...` items)"
    )
    monkeypatch.setenv("BRIDGE_TEST_EVERY", "2m")
    path = write(
        tmp_path,
        "sources:\n  - {name: a, kind: http, url: 'https://x', every: ${BRIDGE_TEST_EVERY}}\n",
    )
    assert load_config(path).sources[0].every == 120  # env defaults to os.environ


# --- property: malformed input never becomes a traceback -------------------------------------

_KEYS = [
    "state", "retention", "grace", "http", "listen", "per_host", "defaults", "webhooks",
    "sources", "name", "kind", "every", "cron", "jitter", "timeout", "on", "on_first_poll",
    "alert_after", "max_bytes", "ignore", "url", "secret", "headers", "retry", "concurrency",
    "body", "method", "auth", "bearer", "basic", "items", "key", "paginate", "max_pages",
    "params", "json", "<<", "tz", "rate", "cursor", "more", "variable", "param",
]  # fmt: skip
_WORDS = [
    "5m", "10%", "0", "-1", "1e400", "http", "nope", "ops", "chat", "a", "b", "-", SECRET,
    "whsec_", "https://x.example", "*/5 * * * *", "@daily", "0 0 * * 7", "${X}", "${X:-1}",
    "${MISSING}", "added", "emit", "link", "{{ type }}", "{% if %}", "foo[?", "~nobody/x",
    "10MB", "[::1]:80", "1.2.3.4:99999",
]  # fmt: skip
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_WORDS),
    st.text(max_size=12),
)
_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=12,
)
_source = st.dictionaries(_keys, _values, max_size=6).map(
    lambda d: {"name": "a", "kind": "http", "url": "https://x.example", **d}
)
_document = st.fixed_dictionaries(
    {},
    optional={
        "webhooks": st.dictionaries(
            st.sampled_from(["ops", "chat", "Bad Name", ""]),
            st.one_of(_values, st.dictionaries(_keys, _values, max_size=5)),
            max_size=3,
        ),
        "sources": st.one_of(_values, st.lists(st.one_of(_source, _values), max_size=3)),
        "defaults": st.one_of(_values, st.dictionaries(_keys, _values, max_size=5)),
        "http": st.one_of(_values, st.dictionaries(_keys, _values, max_size=3)),
        "state": _values,
        "retention": _values,
        "grace": _values,
    },
).flatmap(lambda d: st.dictionaries(_keys, _values, max_size=2).map(lambda extra: {**extra, **d}))
_PROPERTY = settings(suppress_health_check=[HealthCheck.too_slow])


def _load_never_crashes(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, env={"X": "5"})
    except ConfigError as exc:
        assert "\n" not in str(exc).removeprefix(str(path))


@_PROPERTY
@given(text=st.text(max_size=300))
def test_random_text_only_raises_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    _load_never_crashes(tmp_path_factory.getbasetemp() / "random.yaml", text)


@_PROPERTY
@given(document=_document)
def test_random_documents_only_raise_config_error(
    tmp_path_factory: pytest.TempPathFactory, document: dict[str, Any]
) -> None:
    _load_never_crashes(
        tmp_path_factory.getbasetemp() / "random-doc.yaml", yaml.safe_dump(document)
    )


_YAMLISH = st.lists(
    st.sampled_from(
        ["sources:", "  - name: a", "    kind: http", "    url: https://x", "webhooks:", "  ops:",
         "    url: '-'", "    every: 5m", "defaults:", "  every: 1m", "- [", "{", "}", ": :", "&a",
         "*a", "<<: *a", "  ", "\t", "? x", "!!int x", "!!binary ===", "'", '"', "#", "---", "|",
         "    cron: '0 0 * * 0'", "    auth: {bearer: ${X}}", "    on: [added]"]
    ),
    max_size=12,
).map("\n".join)  # fmt: skip


@_PROPERTY
@given(text=_YAMLISH)
def test_yamlish_lines_only_raise_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    _load_never_crashes(tmp_path_factory.getbasetemp() / "yamlish.yaml", text)
