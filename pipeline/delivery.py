"""Delivery to the platform: the outbox sink that POSTs each message to the platform's webhook,
HMAC-signed, with its idempotency key, and the worker `lookfirst worker` runs over it.

The receiver verifies `X-Lookfirst-Signature` (HMAC-SHA256 over "timestamp.body") and rejects
old stamps; it dedupes by `Idempotency-Key`, which is the same on every attempt of a message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Sequence

import httpx

from pipeline.errors import ConfigurationError
from pipeline.runtime import Runtime
from review import (
    DELIVERED,
    DeliveryFailed,
    DeliveryPolicy,
    OutboxMessage,
    OutboxWorker,
    SinkResult,
)

SIGNATURE_HEADER = "X-Lookfirst-Signature"
TIMESTAMP_HEADER = "X-Lookfirst-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over "timestamp.body": the receiver recomputes it and rejects old stamps."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSink:
    """The platform's sink: every topic but lookfirst's own (Label Studio tasks), one signed
    POST per message; a 2xx answer is delivered, anything else a failure named by its status
    or error class (never the receiver's body)."""

    #: every topic outside INTERNAL_TOPIC_PREFIX
    topics: frozenset[str] | None = None

    def __init__(
        self,
        *,
        url: str,
        secret: str,
        timeout_s: float = 5.0,
        clock: Callable[[], dt.datetime] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self.secret = secret
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.client = client or httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self.client.close()

    def deliver(
        self, messages: Sequence[OutboxMessage]
    ) -> Iterator[tuple[OutboxMessage, SinkResult]]:
        for message in messages:
            yield message, self.post(message)

    def post(self, message: OutboxMessage) -> SinkResult:
        body = json.dumps(
            {"id": message.key, "topic": message.topic, "payload": message.payload},
            sort_keys=True, separators=(",", ":"),
        ).encode()
        ts = str(int(self.clock().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.key,
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(self.secret, ts, body),
        }
        try:
            resp = self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return DeliveryFailed(type(exc).__name__)
        if 200 <= resp.status_code < 300:
            return DELIVERED
        return DeliveryFailed(f"HTTP {resp.status_code}")


def platform_worker(rt: Runtime) -> OutboxWorker:
    """The outbox worker over the platform's webhook, as the settings configure it; refuses
    (ConfigurationError) when no webhook is configured."""
    cfg = rt.settings
    if not cfg.webhook_url:
        raise ConfigurationError("set LOOKFIRST_WEBHOOK_URL to the platform's webhook")
    sink = WebhookSink(url=cfg.webhook_url, secret=cfg.webhook_secret,
                       timeout_s=cfg.webhook_timeout_s)
    return OutboxWorker(rt.db, sink, policy=DeliveryPolicy(max_attempts=cfg.webhook_max_attempts))
