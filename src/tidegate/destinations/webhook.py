"""The webhook destination: JSON batches POSTed to a URL, signed per Standard Webhooks.

It owns the wire format of SPEC §6, which is fixed because receivers are
written by our users: one operation per batch; ``webhook-id`` stable across
retries of a batch; ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``; a 2xx accepts the batch unless its JSON body
lists per-record ``results``. Status classification is ``HttpDestination``'s.

The body is joined from the planner's JSON record documents
(``Batch.joined_documents``), never decoded and re-encoded per record: at 200k
records a run spends milliseconds here instead of seconds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from tidegate.destinations.base import (
    ALL_MODES,
    Batch,
    BatchResult,
    Capabilities,
    DestinationConfig,
    SyncTarget,
)
from tidegate.destinations.http import HttpDestination, check_http_url
from tidegate.errors import DestinationError
from tidegate.redact import redact, redact_url, register

if TYPE_CHECKING:
    import httpx

SECRET_PREFIX = "whsec_"
MAX_RECORDS = 10_000
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
# Headers tidegate computes per request; a configured value would break the contract.
_RESERVED_HEADERS = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-length", "host"}
)


class WebhookConfig(DestinationConfig):
    """``type: webhook`` settings (SPEC §6 names ``url``, ``secret`` and ``headers``)."""

    type: Literal["webhook"]
    url: str
    secret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_records: int = Field(default=1000, gt=0, le=MAX_RECORDS)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, gt=1024)
    requests_per_second: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=4, gt=0, le=32)  # the shared pool holds 32 connections
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        check_http_url(value, "url")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty value (``${HOOK_SECRET:-}``) deliberately means "send unsigned".
        if value is None or not value.get_secret_value():
            return None
        signing_key(value.get_secret_value())
        return value

    @field_validator("headers")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(name for name in value if name.lower() in _RESERVED_HEADERS)
        if clash:
            raise ValueError(
                f"`headers` cannot set {', '.join(clash)}: tidegate computes it per request"
            )
        return value


def signing_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_<base64>`` secret; ValueError saying what is wrong.

    Messages never quote the secret: they end up in validation output.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            "`secret` must look like whsec_<base64 key> (the Standard Webhooks form); "
            "generate one with: python -c \"import base64,os; "
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
        )
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("`secret`: the part after whsec_ is not valid base64") from None
    if not key:
        raise ValueError("`secret`: the key after whsec_ is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def _register_secret(secret: str, key: bytes) -> None:
    """Mask the secret in every form a bug or a receiver might echo it."""
    register(secret)
    register(secret.removeprefix(SECRET_PREFIX))
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return
    if text.isprintable():
        register(text)


class WebhookDestination(HttpDestination):
    """POSTs each batch as one signed JSON document (SPEC §6)."""

    kind = "webhook"
    config_model = WebhookConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES,
        max_records=1000,
        max_bytes=DEFAULT_MAX_BYTES,
        concurrency=4,
        matches_by="the primary key, sent as `key` in every record",
        typed_records=False,
    )

    def __init__(self, name: str, config: WebhookConfig, target: SyncTarget) -> None:
        import httpx  # see tidegate.destinations.http: not needed to check a configuration

        super().__init__(name, config, target)
        # No redirects are followed, so a plain-http URL never reaches a TLS peer.
        self.tls = not config.url.startswith("http://")
        self.settings = config
        self._key: bytes | None = None
        if config.secret is not None:
            secret = config.secret.get_secret_value()
            self._key = signing_key(secret)
            _register_secret(secret, self._key)
        self._headers = {"content-type": "application/json"} | {
            header.lower(): value for header, value in config.headers.items()
        }
        self._timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))
        self._url: httpx.URL = httpx.URL(config.url)  # parsed once, not once a request

    def body(self, batch: Batch) -> bytes:
        """The request body, concatenated from the batch's JSON text."""
        head = json.dumps(
            {
                "type": "tidegate.batch",
                "sync": self.target.sync,
                "run_id": self.target.run_id,
                "object": self.target.object,
                "operation": batch.operation,
            },
            separators=(",", ":"),
        )
        return b"".join(
            (head[:-1].encode(), b',"records":[', batch.joined_documents(), b"]}"))

    def headers(self, batch: Batch, body: bytes) -> dict[str, str]:
        """Headers for one attempt: the timestamp (and so the signature) is fresh each time."""
        timestamp = int(time.time())
        headers = self._headers | {"webhook-id": batch.id, "webhook-timestamp": str(timestamp)}
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, batch.id, timestamp, body)
        return headers

    def write(self, batch: Batch) -> BatchResult:
        body = self.body(batch)
        response = self.send(
            "POST", self._url, content=body, headers=self.headers(batch, body),
            timeout=self._timeout,
        )
        problem = self.classify(response)
        if problem is not None:
            return BatchResult(rejected=dict.fromkeys(batch.keys, problem))
        return BatchResult(rejected=per_record_rejections(response.content, batch))

    def check(self) -> None:
        """A GET, so nothing can be mistaken for data; any HTTP answer means reachable."""
        import httpx

        try:
            self.client.get(
                self.settings.url,
                headers={k: v for k, v in self._headers.items() if k != "content-type"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            url = redact(redact_url(self.settings.url))
            raise DestinationError(
                f"webhook destination '{self.name}' cannot reach {url}: "
                f"{redact(str(exc) or type(exc).__name__)}. Fix: check `url` "
                "(scheme, host, port) and that the receiver is running and reachable "
                "from this machine"
            ) from exc


def canonical(value: Any) -> str:
    """A hashable form of a JSON value in which equal values are equal text."""
    return json.dumps(_integral(value), sort_keys=True, separators=(",", ":"))


def _integral(value: Any) -> Any:
    # JSON does not tell 1 from 1.0, and receivers in JavaScript echo 1.0 as 1.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def per_record_rejections(content: bytes, batch: Batch) -> dict[str, str]:
    """Rejections listed in a 2xx body's ``results``; none when there is no such list.

    Result keys are matched to the batch's keys by value. Keys the results do not
    mention are accepted; keys the batch does not hold are ignored.
    """
    results = _results(content)
    if not results:
        return {}
    by_value = {canonical(v): k for v, k in zip(batch.key_values, batch.keys, strict=True)}
    by_text = set(batch.keys)
    rejected: dict[str, str] = {}
    for item in results:
        if not isinstance(item, dict) or item.get("status") == "ok" or "key" not in item:
            continue
        value = item["key"]
        key = by_value.get(canonical(value))
        # Leniency for receivers that echo the key's JSON text instead of its value.
        if key is None and isinstance(value, str) and value in by_text:
            key = value
        if key is not None:
            rejected[key] = _error_of(item)
    return rejected


def _results(content: bytes) -> list[Any] | None:
    # Receivers often forget the content type, so the body itself decides.
    if not content.lstrip().startswith(b"{"):
        return None
    try:
        doc = json.loads(content)
    except ValueError:
        return None
    results = doc.get("results") if isinstance(doc, dict) else None
    return results if isinstance(results, list) else None


def _error_of(item: dict[str, Any]) -> str:
    error = item.get("error")
    if error:
        return redact(str(error))
    status = item.get("status")
    if status == "rejected":
        return "rejected by the receiver"
    return redact(f"rejected by the receiver (status {status!r})")
