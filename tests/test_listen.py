"""`bridge listen`: Standard Webhooks verification (against the reference package) and printing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import click
import orjson
import pytest
from standardwebhooks import Webhook

from bridge.cli.listen import Rejected, describe, listen_app, verify
from bridge.delivery.signing import sign
from tests.conftest import SECRET, run_cli

OTHER = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"

EVENT = {
    "type": "item.changed",
    "timestamp": "2026-11-29T19:30:00.123Z",
    "data": {
        "source": "status-page",
        "key": "abc123",
        "before": {"id": "abc123", "status": "operational", "tags": ["a"]},
        "after": {"id": "abc123", "status": "degraded", "tags": ["a", "b"]},
        "changes": [
            {"op": "replace", "path": "/status", "value": "degraded"},
            {"op": "add", "path": "/tags/1", "value": "b"},
        ],
    },
}


def signed(body: bytes, *, secret: str = SECRET, at: datetime | None = None) -> dict[str, str]:
    """Headers as the standardwebhooks package signs them (not our own code)."""
    at = at or datetime.now(UTC)
    msg_id = "evt_test1"
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow  # starts `bridge listen`
def test_listen_accepts_what_standardwebhooks_signs_and_rejects_a_tampered_body() -> None:
    env = {**os.environ, "BRIDGE_LISTEN_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "listen", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split("POST webhooks to ", 1)[1].split()[0]
        assert "verifying" in proc.stdout.readline()
        body = orjson.dumps(EVENT)
        assert post(url + "hook", body, signed(body)) == 204
        tampered = body.replace(b"degraded", b"fine")
        assert post(url + "hook", tampered, signed(body)) == 401
        stale = signed(body, at=datetime.now(UTC) - timedelta(minutes=6))
        assert post(url + "hook", body, stale) == 401
        assert post(url + "hook", body, signed(body, secret=OTHER)) == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "item.changed  status-page  key=abc123  verified evt_test1" in out
    assert '~ /status: "operational" -> "degraded"' in out
    assert '+ /tags/1: "b"' in out
    assert out.count("rejected POST /hook") == 3
    assert "more than 5 minutes" in out
    assert SECRET not in out + err


@pytest.mark.slow  # runs `bridge listen`
def test_listen_refuses_a_bad_secret_without_quoting_it() -> None:
    result = run_cli("listen", "--port", "0", "--secret", "whsec_not-base64!!", timeout=20)
    assert result.code == 2
    assert "--secret" in result.stderr and "not-base64" not in result.stderr


def test_verify_uses_every_secret_and_every_signature() -> None:
    body = orjson.dumps(EVENT)
    now = int(time.time())
    both = sign([OTHER, SECRET], "evt_1", now, body)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(now), "webhook-signature": both}
    assert verify([SECRET], headers, body, now) == "evt_1"
    assert verify([OTHER], headers, body, now) == "evt_1"
    with pytest.raises(Rejected, match="no v1 signature"):
        verify(["whsec_" + "Wlla" * 8], headers, body, now)
    with pytest.raises(Rejected, match="in the future"):
        verify([SECRET], headers, body, now - 301)
    with pytest.raises(Rejected, match="missing"):
        verify([SECRET], {"webhook-id": "evt_1"}, body, now)
    with pytest.raises(Rejected, match="integer"):
        verify([SECRET], {**headers, "webhook-timestamp": "soon"}, body, now)
    v2 = {**headers, "webhook-signature": both.replace("v1,", "v2,")}
    with pytest.raises(Rejected):
        verify([SECRET], v2, body, now)


def test_a_secret_without_its_padding_still_verifies() -> None:
    unpadded = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"  # 27 base64 characters
    padded = unpadded + "="
    body = b"{}"
    now = int(time.time())
    headers = {
        "webhook-id": "evt_2",
        "webhook-timestamp": str(now),
        "webhook-signature": sign([padded], "evt_2", now, body),
    }
    assert verify([unpadded], headers, body, now) == "evt_2"


async def test_without_a_secret_everything_is_accepted_and_marked(aiohttp_client) -> None:
    lines: list[str] = []
    client = await aiohttp_client(listen_app([], echo=lines.append))
    resp = await client.post("/anything", data=orjson.dumps(EVENT))
    assert resp.status == 204
    assert "not verified" in lines[0]
    resp = await client.post("/", data=b'{"text": "hello"}')
    assert resp.status == 204
    assert "(templated body)" in lines[-2] and '{"text":"hello"}' in lines[-1]
    resp = await client.get("/")
    assert resp.status == 200


async def test_the_app_answers_401_with_the_reason(aiohttp_client) -> None:
    lines: list[str] = []
    client = await aiohttp_client(listen_app([SECRET], echo=lines.append))
    resp = await client.post("/hook", data=b"{}", headers={"webhook-id": "x"})
    assert resp.status == 401
    assert "missing" in await resp.text()
    body = orjson.dumps(EVENT)
    resp = await client.post("/hook", data=body, headers=signed(body))
    assert resp.status == 204


def test_describe_shows_each_kind_of_event() -> None:
    def lines(event: dict[str, object]) -> list[str]:
        return [click.unstyle(line) for line in describe(orjson.dumps(event), note="n")]

    added = lines({"type": "item.added", "data": {"source": "s", "key": "k", "after": {"a": 1}}})
    assert "item.added  s  key=k  n" in added[0] and added[1] == '    + {"a":1}'
    removed = lines({"type": "item.removed", "data": {"source": "s", "key": "k", "before": 2}})
    assert removed[1] == "    - 2"
    failing = lines(
        {
            "type": "source.failing",
            "data": {"source": "s", "error": "HTTP 500", "failures": 3, "since": "T"},
        }
    )
    assert "key=" not in failing[0] and "3 failed polls since T: HTTP 500" in failing[1]
    removal = lines(
        {
            "type": "document.changed",
            "data": {
                "source": "s",
                "key": None,
                "before": {"x": {"y/z": 1}},
                "changes": [{"op": "remove", "path": "/x/y~1z"}],
            },
        }
    )
    assert removal[1] == "    - /x/y~1z (was 1)"
    assert "(not JSON" in describe(b"\xff", note="n")[0]
