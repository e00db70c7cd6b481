"""The README's chat recipes, read from README.md itself so the two cannot drift: each loads with
load_config and renders the sample event to exactly the JSON the README says it sends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.config import load_config
from bridge.templates import render_body

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
