"""Cursor pagination of the http source: a GraphQL API paging with `pageInfo`, a REST API with a
cursor query parameter, the partial-window rule, and what `bridge check` says of bad options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.polling.keys import storage_key
from tests.conftest import STDOUT, ThreadedServer, bridge_config, engine_for, http_source
from tests.test_recipes import COOKBOOK_ENV, FIRST, MORE

QUERY = (
    'query($after: String) { repository(owner: "encode", name: "httpx") {'
    " issues(first: 2, after: $after) { nodes { id title } pageInfo { endCursor hasNextPage } } } }"
)
CONNECTION = "data.repository.issues"


class Api:
    """Issues served two a page: by GraphQL (POST /graphql, the cursor in `variables.after`)
    and by REST (GET /issues?after=CURSOR, the next cursor in `next`)."""

    def __init__(self) -> None:
        self.issues: list[dict[str, Any]] = []
        self.graphql_variables: list[Any] = []
        self.queries: list[str] = []
        self.authorization: list[str | None] = []
        self.rest_queries: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_post("/graphql", self.graphql)
        app.router.add_get("/issues", self.rest)
        self.server = ThreadedServer(app)

    def page(self, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        start = 0 if after is None else int(after.removeprefix("c")) + 1
        nodes = self.issues[start : start + 2]
        end = start + len(nodes) - 1
        return nodes, (f"c{end}" if nodes else None)

    async def graphql(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.queries.append(body["query"])
        self.authorization.append(request.headers.get("Authorization"))
        variables = body.get("variables")
        self.graphql_variables.append(variables)
        nodes, end = self.page((variables or {}).get("after"))
        more = end is not None and int(end[1:]) + 1 < len(self.issues)
        info = {"endCursor": end, "hasNextPage": more}
        doc = {"data": {"repository": {"issues": {"nodes": nodes, "pageInfo": info}}}}
        return web.json_response(doc)

    async def rest(self, request: web.Request) -> web.Response:
        self.rest_queries.append(dict(request.query))
        nodes, end = self.page(request.query.get("after"))
        last = end is None or int(end[1:]) + 1 >= len(self.issues)
        return web.json_response({"results": nodes, "next": None if last else end})


@pytest.fixture
def api() -> Iterator[Api]:
    served = Api()
    served.server.start()
    yield served
    served.server.stop()


def issues(*ids: int) -> list[dict[str, Any]]:
    return [{"id": f"I_{i}", "title": f"issue {i}"} for i in ids]


def graphql_source(api: Api, max_pages: int = 10, **paginate: Any) -> dict[str, Any]:
    return http_source(
        "gql",
        api.server.url("/graphql"),
        method="POST",
        json={"query": QUERY},
        items=f"{CONNECTION}.nodes",
        key="id",
        every="1m",
        webhooks=["out"],
        paginate={
            "cursor": f"{CONNECTION}.pageInfo.endCursor",
            "more": f"{CONNECTION}.pageInfo.hasNextPage",
            "variable": "after",
            "max_pages": max_pages,
            **paginate,
        },
    )


def stored(engine: Any, name: str) -> set[str]:
    return set(engine.state.snapshots.item_hashes(name))


async def test_graphql_pages_follow_end_cursor(api: Api, write_config) -> None:
    api.issues = issues(1, 2, 3, 4, 5)
    path = write_config(bridge_config(graphql_source(api), webhooks=STDOUT))
    async with engine_for(path) as engine:
        first = await engine.poll("gql")
        assert (first.result, first.events) == ("new", [])  # a silent baseline
        assert stored(engine, "gql") == {storage_key(f"I_{i}") for i in range(1, 6)}
        # the first request sends the query as configured; each next one sets `after`
        assert api.graphql_variables == [None, {"after": "c1"}, {"after": "c3"}]
        assert api.queries == [QUERY] * 3  # the configured query, unchanged on every page
        api.issues = issues(1, 2, 4, 5, 6)
        second = await engine.poll("gql")
    changes = sorted((e["type"], e["data"]["key"]) for e in second.events)
    assert changes == [("item.added", "I_6"), ("item.removed", "I_3")]


async def test_graphql_variables_already_set_are_kept(api: Api, write_config) -> None:
    api.issues = issues(1, 2, 3)
    src = graphql_source(api)
    src["json"] = {"query": QUERY, "variables": {"owner": "encode"}}
    path = write_config(bridge_config(src, webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("gql")
    assert api.graphql_variables == [{"owner": "encode"}, {"owner": "encode", "after": "c1"}]


async def test_rest_cursor_param_until_the_cursor_is_null(api: Api, write_config) -> None:
    api.issues = issues(1, 2, 3, 4, 5)
    src = http_source(
        "rest",
        api.server.url("/issues"),
        params={"state": "open"},
        items="results",
        key="id",
        every="1m",
        on_first_poll="emit",
        webhooks=["out"],
        paginate={"cursor": "next", "param": "after"},  # no `more`: a null cursor stops
    )
    path = write_config(bridge_config(src, webhooks=STDOUT))
    async with engine_for(path) as engine:
        result = await engine.poll("rest")
    assert [e["data"]["key"] for e in result.events] == ["I_1", "I_2", "I_3", "I_4", "I_5"]
    assert api.rest_queries == [
        {"state": "open"},
        {"state": "open", "after": "c1"},
        {"state": "open", "after": "c3"},
    ]


async def test_pages_left_over_never_look_like_removals(api: Api, write_config) -> None:
    api.issues = issues(1, 2, 3, 4, 5)
    path = write_config(bridge_config(graphql_source(api, max_pages=2), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("gql")
        assert len(api.graphql_variables) == 2  # max_pages, though hasNextPage was true
        assert stored(engine, "gql") == {storage_key(f"I_{i}") for i in range(1, 5)}
        api.issues = issues(0, 1, 2, 3, 4, 5)  # a new one pushes I_4 out of the window
        result = await engine.poll("gql")
        assert [(e["type"], e["data"]["key"]) for e in result.events] == [("item.added", "I_0")]
        assert storage_key("I_4") in stored(engine, "gql")


async def test_more_false_stops_even_with_a_cursor(api: Api, write_config) -> None:
    api.issues = issues(1, 2, 3)
    path = write_config(bridge_config(graphql_source(api), webhooks=STDOUT))
    async with engine_for(path) as engine:
        await engine.poll("gql")
        # the last page still names an endCursor; hasNextPage false ends the paging, and
        # the fetch was complete: a removed issue is removed
        assert len(api.graphql_variables) == 2
        api.issues = issues(1, 2)
        result = await engine.poll("gql")
    assert [(e["type"], e["data"]["key"]) for e in result.events] == [("item.removed", "I_3")]


def check_error(tmp_path: Path, src: dict[str, Any]) -> str:
    path = tmp_path / "bridge.yaml"
    path.write_text(bridge_config(src, webhooks=STDOUT))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return str(info.value)


def line_of(tmp_path: Path, text: str) -> int:
    lines = (tmp_path / "bridge.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_bad_paginate_options_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    base = graphql_source(_Stub())  # type: ignore[arg-type]
    bad = {**base, "paginate": {**base["paginate"], "cursor": "data..endCursor"}}
    message = check_error(tmp_path, bad)
    assert message.startswith(f"{path}:{line_of(tmp_path, 'cursor:')}: sources[0].paginate.cursor:")
    assert "bad JMESPath expression 'data..endCursor'" in message

    bad = {**base, "paginate": {**base["paginate"], "more": "nope("}}
    message = check_error(tmp_path, bad)
    assert message.startswith(f"{path}:{line_of(tmp_path, 'more:')}: sources[0].paginate.more:")

    both = {**base, "paginate": {**base["paginate"], "param": "after"}}
    assert "give variable: (GraphQL json.variables) or param: (query)" in check_error(
        tmp_path, both
    )
    no_json = {**base, "json": None, "method": "GET"}
    assert "paginate.variable: needs json:" in check_error(tmp_path, no_json)
    zero = {**base, "paginate": {**base["paginate"], "max_pages": 0}}
    assert "paginate.max_pages: must be an integer of at least 1" in check_error(tmp_path, zero)
    typo = {**base, "paginate": {**base["paginate"], "curser": "x"}}
    assert "paginate.curser: unknown key" in check_error(tmp_path, typo)
    assert "'links' must be link or a mapping" in check_error(
        tmp_path, {**base, "paginate": "links"}
    )


class _Stub:
    """An Api's URL without a server, for configs that are only loaded."""

    class server:  # noqa: N801
        @staticmethod
        def url(path: str) -> str:
            return f"http://127.0.0.1:1{path}"


def test_paginate_link_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    src = http_source("s", "http://127.0.0.1:1/x", paginate="link", webhooks=["out"])
    path.write_text(bridge_config(src, webhooks=STDOUT))
    assert load_config(path, env={}).sources[0].options["paginate"] == "link"


async def test_the_readme_graphql_recipe_pages_through_a_graphql_api(
    api: Api, tmp_path: Path
) -> None:
    [recipe] = [block for block in MORE if block.startswith("  - name: gql-issues\n")]
    assert "https://api.github.com/graphql" in recipe
    text = (
        "state: state.db\n"
        + FIRST
        + recipe.replace("https://api.github.com/graphql", api.server.url("/graphql"))
    )
    for name, value in COOKBOOK_ENV.items():
        text = text.replace("${" + name + "}", value)
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    api.issues = issues(*range(1, 8))
    async with engine_for(path) as engine:
        await engine.poll("gql-issues")
        assert stored(engine, "gql-issues") == {storage_key(f"I_{i}") for i in range(1, 8)}
    assert api.graphql_variables == [None, {"after": "c1"}, {"after": "c3"}, {"after": "c5"}]
    assert set(api.authorization) == {f"Bearer {COOKBOOK_ENV['GITHUB_TOKEN']}"}
    assert "pageInfo { endCursor hasNextPage }" in api.queries[0]
