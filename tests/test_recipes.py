"""The README's chat recipes, read from README.md itself so the two cannot drift: each loads with
load_config and renders the sample event to exactly the JSON the README says it sends. And its
cookbook, as the README combines it: each recipe alone and all together, each chat message
rendered from an event its own source made."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.config import load_config
from bridge.templates import render_body
from tests.conftest import Origin, engine_for

README = Path(__file__).resolve().parent.parent / "README.md"
TOPIC = "bridge-alerts-7f3k2"  # the README shows ntfy's output with NTFY_TOPIC set to this


def recipes_section() -> str:
    text = README.read_text()
    start = text.index("\n## Recipes: Slack, Discord, Microsoft Teams, ntfy\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks() -> tuple[Any, list[tuple[str, str, Any]]]:
    """The sample event, and (service heading, YAML, expected JSON) per recipe."""
    section = recipes_section()
    found = re.findall(r"^### ([^\n]+)$|^```(yaml|json)\n(.*?)^```$", section, re.M | re.S)
    sample = None
    recipes: list[tuple[str, str, Any]] = []
    heading, pending_yaml = "", None
    for title, lang, body in found:
        if title:
            heading = title
        elif lang == "yaml":
            pending_yaml = body
        elif sample is None:
            sample = orjson.loads(body)
        else:
            assert pending_yaml is not None, f"{heading}: a JSON block without its YAML"
            recipes.append((heading, pending_yaml, orjson.loads(body)))
            pending_yaml = None
    return sample, recipes


SAMPLE, RECIPES = blocks()


def env_for(yaml_text: str) -> dict[str, str]:
    names = re.findall(r"\$\{(\w+)", yaml_text)
    return {n: TOPIC if n == "NTFY_TOPIC" else f"https://hooks.example.com/{n}" for n in names}


def body_template(tmp_path: Path, yaml_text: str) -> Any:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml_text)
    config = load_config(path, env_for(yaml_text))
    [spec] = config.webhooks.values()
    assert spec.url.startswith("https://")
    return spec.body


def render(template: Any, event: Any) -> Any:
    return orjson.loads(render_body(template, orjson.dumps(event)))


def test_the_readme_has_the_four_recipes() -> None:
    assert SAMPLE["type"] == "item.changed"
    assert [heading for heading, _, _ in RECIPES] == ["Slack", "Discord", "Microsoft Teams", "ntfy"]


@pytest.mark.parametrize(("heading", "yaml_text", "expected"), RECIPES, ids=[r[0] for r in RECIPES])
def test_recipe_renders_the_sample_event_as_the_readme_says(
    tmp_path: Path, heading: str, yaml_text: str, expected: Any
) -> None:
    assert render(body_template(tmp_path, yaml_text), SAMPLE) == expected


def test_each_service_gets_the_fields_it_needs(tmp_path: Path) -> None:
    sent = {heading: render(body_template(tmp_path, y), SAMPLE) for heading, y, _ in RECIPES}
    assert "/status" in sent["Slack"]["text"] and "degraded" in sent["Slack"]["text"]
    assert "status-page" in sent["Discord"]["content"]
    teams = sent["Microsoft Teams"]
    assert teams["type"] == "message"
    [attachment] = teams["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert all(block["type"] == "TextBlock" and block["text"] for block in card["body"])
    ntfy = sent["ntfy"]
    assert ntfy["topic"] == TOPIC and ntfy["title"] and ntfy["message"]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "item.added", "data": {"source": "s", "key": "k", "before": None, "after": {}}},
        {"type": "item.removed", "data": {"source": "s", "key": "k", "before": {}, "after": None}},
        {
            "type": "source.failing",
            "data": {"source": "s", "error": "HTTP 500", "failures": 3, "since": "T"},
        },
        {"type": "source.recovered", "data": {"source": "s", "error": None, "failures": 3}},
    ],
    ids=lambda e: e["type"],
)
def test_recipes_render_every_kind_of_event(tmp_path: Path, event: Any) -> None:
    for heading, yaml_text, _ in RECIPES:
        sent = render(body_template(tmp_path, yaml_text), event)
        text = orjson.dumps(sent).decode()
        assert event["type"] in text, heading
        assert "None" not in text and "Undefined" not in text, (heading, text)
        if event["type"] == "source.failing":
            assert "HTTP 500" in text, heading


# --- the cookbook: its blocks as the README combines them ---------------------------------------

COOKBOOK_ENV = {
    "GITHUB_TOKEN": "ghp_cookbook",
    "GHES_TOKEN": "ghp_enterprise",
    "OPS_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "CHAT_WEBHOOK_URL": "https://chat.example.com/hooks/T000/B000",
    "SHOP_CLIENT_SECRET": "shop-secret",
    # the GitHub App recipe's key: check reads it, so it must be a real RSA key (on one line,
    # its line breaks written \n, as an environment variable may hold it)
    "GITHUB_APP_KEY": rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
    .replace("\n", "\\n"),
}
RELEASE = orjson.loads(
    (README.parent / "tests/fixtures/octokit/release-assets/normalized-fixture.json").read_bytes()
)[0]["response"]  # a release as GitHub's API answers it (octokit's recording)
ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Python Insider</title><id>tag:blog.python.org,1999:blog</id>
  <updated>2026-11-29T19:30:00Z</updated>
  <entry>
    <title>Python 3.15.0 alpha 2 is out</title>
    <id>tag:blog.python.org,1999:post-42</id>
    <link rel="alternate" href="https://blog.python.org/2026/11/python-3150a2.html"/>
    <updated>2026-11-29T19:30:00Z</updated>
  </entry>
</feed>
"""
# What the origin answers for each kind of source, and what a message about it must mention.
SAMPLES: dict[tuple[str, str | None], tuple[bytes, str]] = {
    ("github", "releases"): (orjson.dumps([RELEASE]), RELEASE["tag_name"]),
    ("feed", None): (ATOM, "Python 3.15.0 alpha 2 is out"),
}


def cookbook() -> tuple[str, list[str]]:
    """The cookbook's first block (a whole config) and the recipes to add to its sources."""
    text = README.read_text()
    start = text.index("\n## Cookbook\n")
    section = text[start : text.index("\n## ", start + 1)]
    first, *more = re.findall(r"^```yaml\n(.*?)^```$", section, re.M | re.S)
    assert all(block.startswith("  - name: ") for block in more), more
    return first, more


FIRST, MORE = cookbook()


def load_cookbook(tmp_path: Path, *recipes: str) -> Any:
    path = tmp_path / "bridge.yaml"
    path.write_text("state: state.db\n" + FIRST + "".join(recipes))
    return load_config(path, COOKBOOK_ENV)


def test_each_cookbook_recipe_loads_alone_and_beside_the_others(tmp_path: Path) -> None:
    alone = [s.name for recipe in MORE for s in load_cookbook(tmp_path, recipe).sources[1:]]
    together = load_cookbook(tmp_path, *MORE)
    assert [s.name for s in together.sources] == ["httpx-releases", *alone]
    for spec in together.sources:
        assert set(spec.webhooks) <= set(together.webhooks), spec.name


async def test_each_cookbook_chat_message_names_the_item_of_its_own_kind(
    tmp_path: Path, origin: Origin
) -> None:
    config = load_cookbook(tmp_path, *MORE)
    sent = [
        (spec, name)
        for spec in config.sources
        for name in spec.webhooks
        if config.webhooks[name].body is not None
    ]
    assert {name for _, name in sent} == {"release-chat", "post-chat"}
    for spec, hook in sent:
        watch = spec.options.get("watch", "releases") if spec.kind == "github" else None
        assert (spec.kind, watch) in SAMPLES, f"{spec.name}: add a sample answer of its kind"
        answer, mention = SAMPLES[spec.kind, watch]
        for body in await first_poll(tmp_path, origin, spec, answer):
            message = orjson.dumps(orjson.loads(render_body(config.webhooks[hook].body, body)))
            assert mention in message.decode(), (spec.name, hook, message)


async def first_poll(tmp_path: Path, origin: Origin, spec: Any, answer: bytes) -> list[bytes]:
    """The events of a cookbook source's first poll: the recipe as written, pointed at a local
    origin that answers as the real API would, sending its items instead of a silent baseline."""
    text = "state: state.db\n" + FIRST + "".join(MORE)
    head = f"  - name: {spec.name}\n"
    if spec.kind == "github":
        text = text.replace(head, f"{head}    api_url: {origin.url('')}\n")
        watch = spec.options.get("watch", "releases")
        origin.set(f"/repos/{spec.options['repo']}/{watch}", body=answer)
    else:
        text = text.replace(spec.options["url"], origin.url(f"/{spec.name}"))
        origin.set(f"/{spec.name}", body=answer)
    text = text.replace(head, f"{head}    on_first_poll: emit\n")
    for name, value in COOKBOOK_ENV.items():
        text = text.replace("${" + name + "}", value)
    path = tmp_path / f"{spec.name}.yaml"
    path.write_text(text)
    async with engine_for(path) as pipeline:
        result = await pipeline.poll(spec.name)
    assert result.result == "new" and result.bodies, result
    return result.bodies
