"""Signing per the Standard Webhooks specification: the secret's key, the signature header,
and every header of one attempt."""

from __future__ import annotations

import base64
import functools
import hmac
from collections.abc import Sequence

from bridge import __version__
from bridge.config import WebhookSpec


@functools.lru_cache(maxsize=256)  # decoded once, not on every attempt
def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (padding optional, as people copy them)."""
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64>` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(secret_key(s), signed, "sha256")).decode()
        for s in secrets
    )


def request_headers(spec: WebhookSpec, msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """Every header of one attempt: the configured ones, then the Standard Webhooks ones."""
    timestamp = int(now)
    headers = {str(k): str(v) for k, v in spec.headers.items()}
    headers.update(
        {
            "content-type": "application/json",
            "user-agent": f"bridge/{__version__}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
    )
    if spec.secrets:
        headers["webhook-signature"] = sign(spec.secrets, msg_id, timestamp, body)
    return headers
