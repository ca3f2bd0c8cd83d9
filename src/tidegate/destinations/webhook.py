"""The webhook destination: JSON batches POSTed to a URL, signed per Standard Webhooks.

The contract is fixed in SPEC §6 because receivers are written by our users:
one operation per batch; ``webhook-id`` stable across retries of a batch;
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``;
a 2xx accepts the batch unless its JSON body lists per-record ``results``.
The body is assembled from the planner's JSON text, never re-encoded per record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from tidegate.destinations.base import (
    ALL_MODES,
    Batch,
    BatchResult,
    Capabilities,
    DestinationConfig,
)
from tidegate.destinations.http import HttpDestination
from tidegate.errors import DestinationError
from tidegate.redact import redact, redact_url, register


class WebhookConfig(DestinationConfig):
    type: Literal["webhook"]
    url: str
    secret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_records: int = Field(default=1000, gt=0, le=10_000)
    max_bytes: int = Field(default=5 * 1024 * 1024, gt=1024)
    requests_per_second: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=4, gt=0, le=32)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("`url` must start with http:// or https://")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        signing_key(value.get_secret_value())
        return value


def signing_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_<base64>`` secret."""
    if not secret.startswith("whsec_"):
        raise ValueError("`secret` must look like whsec_<base64 key> (Standard Webhooks)")
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("`secret` after whsec_ must be base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


class WebhookDestination(HttpDestination):
    kind = "webhook"
    config_model = WebhookConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES, max_records=1000, max_bytes=5 * 1024 * 1024, concurrency=4,
        matches_by="the primary key, sent as `key` in every record",
    )

    def __init__(self, name: str, config: WebhookConfig, target: Any) -> None:
        super().__init__(name, config, target)
        self.settings = config
        self._key: bytes | None = None
        if config.secret is not None:
            secret = config.secret.get_secret_value()
            register(secret)
            self._key = signing_key(secret)
        self._timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))

    def limits(self) -> Capabilities:
        c = self.settings
        return Capabilities(
            modes=ALL_MODES, max_records=c.max_records, max_bytes=c.max_bytes,
            requests_per_second=c.requests_per_second, concurrency=c.concurrency,
            matches_by=self.capabilities.matches_by,
        )

    def body(self, batch: Batch) -> bytes:
        head = json.dumps({
            "type": "tidegate.batch", "sync": self.target.sync, "run_id": self.target.run_id,
            "object": self.target.object, "operation": batch.operation,
        })[:-1]
        if batch.operation == "delete":
            records = ",".join(['{"key":' + k + "}" for k in batch.keys])
        else:
            records = ",".join(
                ['{"key":' + k + ',"fields":' + f + "}"
                 for k, f in zip(batch.keys, batch.fields_json, strict=True)]
            )
        return (head + ',"records":[' + records + "]}").encode()

    def write(self, batch: Batch) -> BatchResult:
        body = self.body(batch)
        headers = {"content-type": "application/json", **self.settings.headers,
                   "webhook-id": batch.id}
        timestamp = int(time.time())
        headers["webhook-timestamp"] = str(timestamp)
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, batch.id, timestamp, body)
        response = self.send("POST", self.settings.url, content=body, headers=headers,
                             timeout=self._timeout)
        problem = self.classify(response)
        if problem is not None:
            return BatchResult(rejected=dict.fromkeys(batch.keys, problem))
        return BatchResult(rejected=_per_record(response, batch))

    def check(self) -> None:
        try:
            self.client.get(self.settings.url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise DestinationError(
                f"webhook '{self.name}' at {redact_url(self.settings.url)} is unreachable "
                f"({redact(type(exc).__name__)}); check `url` and that the receiver is up"
            ) from exc


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _per_record(response: httpx.Response, batch: Batch) -> dict[str, str]:
    """Rejections listed in a 2xx body's ``results``; none when there is no such list."""
    if "json" not in response.headers.get("content-type", "") or not response.content:
        return {}
    try:
        doc = response.json()
    except ValueError:
        return {}
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        return {}
    by_value = {canonical(v): k for v, k in zip(batch.key_values, batch.keys, strict=True)}
    rejected: dict[str, str] = {}
    for item in results:
        if not isinstance(item, dict) or item.get("status") != "rejected":
            continue
        key = by_value.get(canonical(item.get("key")))
        if key is not None:
            rejected[key] = redact(str(item.get("error") or "rejected by the receiver"))
    return rejected
