"""The console in a real browser: Debian's chromium driven by Playwright, against `bridge run`.

Skipped only when chromium (or Playwright) is missing and CI is not set; under CI a missing
browser fails the run. A screenshot of each page lands in the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    SECRET,
    Origin,
    Receiver,
    bridge_config,
    free_port,
    http_source,
    wait_for,
    webhook,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-token-81c2e7"

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # judged below: a skip outside CI, a failure in it
    sync_playwright = None

if sync_playwright is None or not (Path(CHROMIUM).exists() or shutil.which("chromium")):
    if os.environ.get("CI"):
        raise RuntimeError("CI: the console's browser tests need chromium and playwright")
    pytest.skip("chromium or playwright is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None
    with sync_playwright() as p:
        exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    context.close()
    assert errors == []  # the console's script never threw


def polled(name: str, url: str, **options: Any) -> dict[str, Any]:
    defaults = {"items": "@", "key": "id", "every": "1s", "jitter": "0s", "timeout": "5s"}
    return http_source(name, url, **{**defaults, "webhooks": ["hook"], **options})


def hook(receiver: Receiver) -> dict[str, dict[str, Any]]:
    return {"hook": webhook(receiver.url(), SECRET, retry=["100ms"], timeout="2s")}


@contextlib.contextmanager
def daemon(write_config: Any, *sources: dict[str, Any], **config: Any) -> Iterator[str]:
    """`bridge run` serving the console; yields its base URL."""
    port = free_port()
    http = {"listen": f"127.0.0.1:{port}", **config.pop("http", {})}
    path = write_config(bridge_config(*sources, http=http, **config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_for(up, timeout=20, interval=0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_the_console_lists_sources_and_a_failing_ones_error(
    write_config: Any, origin: Origin, receiver: Receiver, page: Page, tmp_path: Path
) -> None:
    origin.set("/items", [{"id": 1, "name": "one"}])
    origin.set("/broken", {"error": "down"}, status=503)
    sources = [polled("good", origin.url("/items")), polled("broken", origin.url("/broken"))]
    with daemon(write_config, *sources, webhooks=hook(receiver)) as base:
        page.goto(base + "/")
        rows = page.locator("table.sources tbody tr")
        expect(rows).to_have_count(2)
        broken = page.locator('tr[data-source="broken"]')
        expect(broken.locator(".badge.failing")).to_be_visible(timeout=15_000)
        expect(broken.locator(".error")).to_contain_text("503")
        expect(page.locator('tr[data-source="good"] .badge')).to_have_count(0)
        page.screenshot(path=str(tmp_path / "sources.png"), full_page=True)

        page.fill('input[name="q"]', "brok")
        page.click('form.filter button[type="submit"]')
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-source", "broken")

        page.click('tr[data-source="broken"] a')
        expect(page.locator("h1")).to_contain_text("broken")
        expect(page.locator("dd.error")).to_contain_text("503")
        page.screenshot(path=str(tmp_path / "source.png"), full_page=True)


def test_a_change_appears_without_a_reload(
    write_config: Any, origin: Origin, receiver: Receiver, page: Page, tmp_path: Path
) -> None:
    origin.set("/items", [{"id": 1, "name": "one"}])
    with daemon(write_config, polled("good", origin.url("/items")), webhooks=hook(receiver)) as b:
        page.goto(b + "/sources/good")
        expect(page.locator("dd").nth(4)).not_to_contain_text("never polled", timeout=10_000)
        page.evaluate("window.notReloaded = true")
        expect(page.locator("article.event")).to_have_count(0)

        origin.set("/items", [{"id": 1, "name": "uno"}])
        event = page.locator("article.event").first
        expect(event).to_be_visible(timeout=15_000)  # polled by the schedule, drawn by refresh
        expect(event.locator(".type")).to_have_text("item.changed")
        row = event.locator("table.diff tbody tr")
        expect(row).to_have_count(1)
        expect(row.locator("td").nth(1)).to_have_text("/name")
        expect(row.locator(".before")).to_have_text('"one"')
        expect(row.locator(".after")).to_have_text('"uno"')
        event.locator("summary").click()
        expect(event.locator("details pre").first).to_contain_text('"name": "one"')
        assert page.evaluate("window.notReloaded") is True
        page.screenshot(path=str(tmp_path / "change.png"), full_page=True)


def test_clicking_replay_on_a_dead_delivery_delivers_it(
    write_config: Any, origin: Origin, receiver: Receiver, page: Page, tmp_path: Path
) -> None:
    origin.set("/items", [{"id": 1}])
    receiver.default_status = 500
    with daemon(write_config, polled("s", origin.url("/items")), webhooks=hook(receiver)) as b:
        wait_for(lambda: len(origin.hits("/items")) >= 1, timeout=10)
        origin.set("/items", [{"id": 1}, {"id": 2}])
        wait_for(lambda: len(receiver.received) >= 2, timeout=15)  # first try and one retry
        page.goto(b + "/deliveries")
        dead = page.locator("table.deliveries.dead tbody tr[data-delivery]")
        expect(dead).to_have_count(1, timeout=10_000)
        expect(dead.locator(".error")).to_contain_text("500")
        page.screenshot(path=str(tmp_path / "deliveries.png"), full_page=True)
        first_id = receiver.received[0].headers["webhook-id"]

        receiver.default_status = 204
        dead.locator("button", has_text="Replay").click()
        expect(page.locator("#flash")).to_contain_text("queued 1 delivery again")
        wait_for(lambda: len(receiver.received) == 3, timeout=10)
        assert receiver.received[-1].headers["webhook-id"] == first_id
        expect(dead).to_have_count(0, timeout=10_000)  # the refresh shows it gone
        expect(page.locator('tr[data-webhook="hook"] td').nth(4)).to_have_text("1")
        page.screenshot(path=str(tmp_path / "replayed.png"), full_page=True)


def test_the_sign_in_form_lets_the_token_in(
    write_config: Any, origin: Origin, page: Page, tmp_path: Path
) -> None:
    origin.set("/items", [{"id": 1}])
    with daemon(
        write_config, polled("s", origin.url("/items"), webhooks=[]), http={"token": TOKEN}
    ) as base:
        page.goto(base + "/deliveries")
        expect(page.locator("form.signin")).to_be_visible()
        page.fill('input[name="token"]', "wrong")
        page.click('form.signin button[type="submit"]')
        expect(page.locator("form.signin .error")).to_contain_text("not the token")
        page.screenshot(path=str(tmp_path / "signin.png"), full_page=True)

        page.fill('input[name="token"]', TOKEN)
        page.click('form.signin button[type="submit"]')
        expect(page.locator("h1")).to_contain_text("Delivery queue")  # back where it was going
        page.goto(base + "/")
        expect(page.locator('tr[data-source="s"]')).to_be_visible()
        cookies = page.context.cookies()
        assert [c["httpOnly"] for c in cookies] == [True]
        assert cookies[0]["sameSite"] == "Strict" and TOKEN not in cookies[0]["value"]
        assert TOKEN not in page.content()
        page.screenshot(path=str(tmp_path / "signed-in.png"), full_page=True)
