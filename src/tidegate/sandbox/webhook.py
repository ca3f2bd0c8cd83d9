"""A local webhook receiver that follows tidegate's webhook contract (SPEC §6).

It owns the receiving side of the contract as our users are told to write it:
Standard Webhooks signature check (constant-time, 5-minute timestamp
tolerance), deduplication by ``webhook-id``, one in-memory store per object,
and per-record ``results``. Tests, ``tidegate demo`` and users rehearsing a
sync (``tidegate sandbox webhook``) use it.

Its fault knobs reproduce what real receivers do and can be turned while it
runs: ``fail_next`` (transient statuses with ``Retry-After``), ``drop_next``
(connection closed unanswered), ``reject_keys`` (per-record rejections),
``delay``, ``before_apply`` / ``after_apply`` hooks (block a request, or drop it
before or after it was applied), and ``down`` / ``up`` (connection refused);
those two and ``on_request`` (sees each batch request first) come with the HTTP
plumbing every local server shares, ``tidegate.sandbox.server``.

The signature check is written here independently of the destination's
signing code on purpose: each is a check on the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tidegate.errors import ConfigError, Problem
from tidegate.sandbox.server import LENGTH_REQUIRED, LocalServer, Reply, serve_forever

TOLERANCE_S = 300
OPERATIONS = frozenset({"insert", "update", "upsert", "delete"})
PATH = "/hooks/tidegate"

# Called with the parsed body; returning False drops the request unanswered, as a
# receiver (or the network) that dies mid-request would. It may block to hold it.
Hook = Callable[[dict[str, Any]], bool | None]


def canonical(value: Any) -> str:
    """The store's key form: equal JSON values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError naming the problem."""
    if not secret.startswith("whsec_"):
        raise ValueError("the secret must look like whsec_<base64 key>")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part of the secret after whsec_ is not valid base64") from None
    if not key:
        raise ValueError("the key after whsec_ is empty")
    return key


@dataclass(frozen=True)
class _Failure:
    status: int | None  # None: drop the connection unanswered
    retry_after: float | None = None
    body: str = ""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebhookReceiver(LocalServer):
    """An in-memory, thread-safe receiver on ``host:port``; use as a context manager.

    ``per_record_results=False`` answers ``{}`` when every record is accepted
    and lists ``results`` only when some record is rejected. ``log`` receives
    one human-readable line per request.
    """

    name = "webhook"
    methods = ("GET", "POST")

    def __init__(
        self,
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        per_record_results: bool = True,
        before_apply: Hook | None = None,
        after_apply: Hook | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.key = decode_secret(secret) if secret else None
        self.per_record_results = per_record_results
        self.before_apply = before_apply
        self.after_apply = after_apply
        self.delay = 0.0
        self.batches: list[dict[str, Any]] = []
        self.request_count = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # a webhook-id finished processing
        self._store: dict[str, dict[str, dict[str, Any]]] = {}
        self._answers: dict[str, tuple[int, bytes]] = {}
        self._in_flight: set[str] = set()
        self._failures: list[_Failure] = []
        self._rejections: dict[str, str] = {}
        super().__init__(host, port, log)

    @property
    def url(self) -> str:
        return f"{super().url}{PATH}"

    # Fault knobs ---------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None,
                  body: str = "temporarily unavailable") -> None:
        """Answer the next ``n`` requests with ``status``, applying nothing (0 clears)."""
        with self._lock:
            self._failures = [_Failure(status, retry_after, body)] * n

    def drop_next(self, n: int) -> None:
        """Close the connection of the next ``n`` requests without answering or applying."""
        with self._lock:
            self._failures = [_Failure(None)] * n

    def reject_keys(self, keys: Iterable[Any], error: str = "rejected by the receiver") -> None:
        """Always reject records whose key value is in ``keys`` (an empty list clears)."""
        with self._lock:
            self._rejections = {canonical(k): error for k in keys}

    # Inspection ----------------------------------------------------------------

    def records(self, obj: str) -> dict[str, dict[str, Any]]:
        """What the receiver holds for ``obj``: canonical key JSON → fields."""
        with self._lock:
            return {k: dict(v) for k, v in self._store.get(obj, {}).items()}

    # Handling ------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        if method == "GET":  # a reachability check, never taken for a batch
            return 200, {"content-type": "text/plain"}, b"tidegate webhook sandbox\n"
        if "content-length" not in headers:
            return LENGTH_REQUIRED
        self.observe(method, urlsplit(target).path)
        with self._lock:
            self.request_count += 1
            failure = self._failures.pop(0) if self._failures else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            self.say(f"injected failure: {failure.status or 'dropped connection'}")
            return _failure_reply(failure)
        try:
            self._verify(headers, raw)
            body = _parse(raw)
        except _BadRequest as exc:
            self.say(f"refused a request: HTTP {exc.status} {exc}")
            return exc.status, {"content-type": "text/plain"}, str(exc).encode()
        return self._deliver(headers.get("webhook-id", ""), body)

    def _deliver(self, msg_id: str, body: dict[str, Any]) -> Reply:
        """Apply a batch once per webhook-id; a repeat gets the first answer again."""
        with self._idle:
            # A retry can arrive while the first attempt is still being applied.
            while msg_id and msg_id in self._in_flight:
                self._idle.wait()
            if msg_id in self._answers:
                status, answer = self._answers[msg_id]
                self.say(f"batch {msg_id}: duplicate webhook-id, answered again")
                return status, _JSON, answer
            if msg_id:
                self._in_flight.add(msg_id)
        try:
            return self._apply_once(msg_id, body)
        finally:
            with self._idle:
                self._in_flight.discard(msg_id)
                self._idle.notify_all()

    def _apply_once(self, msg_id: str, body: dict[str, Any]) -> Reply:
        if self.before_apply is not None and self.before_apply(body) is False:
            return None, {}, b""
        results = self._apply(body["object"], body["operation"], body["records"])
        rejected = sum(1 for r in results if r["status"] == "rejected")
        doc = {"results": results} if self.per_record_results or rejected else {}
        answer = json.dumps(doc).encode()
        meta = {"id": msg_id, "sync": body.get("sync"), "run_id": body.get("run_id"),
                "object": body["object"], "operation": body["operation"],
                "count": len(results), "rejected": rejected}
        with self._lock:
            self.batches.append(meta)
            if msg_id:
                self._answers[msg_id] = (200, answer)
        self.say(_describe(meta))
        if self.after_apply is not None and self.after_apply(body) is False:
            return None, {}, b""
        return 200, _JSON, answer

    def _verify(self, headers: dict[str, str], raw: bytes) -> None:
        if self.key is None:
            return
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        if not msg_id:
            raise _BadRequest(401, "webhook-id header missing")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_S:
            raise _BadRequest(401, "webhook-timestamp missing or more than 5 minutes off")
        mac = hmac.new(self.key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256)
        expected = base64.b64encode(mac.digest())
        # The header may carry several space-separated signatures (key rotation).
        for signature in headers.get("webhook-signature", "").split():
            version, _, value = signature.partition(",")
            if version == "v1" and hmac.compare_digest(value.encode(), expected):
                return
        raise _BadRequest(401, "webhook-signature does not match")

    def _apply(self, obj: str, operation: str, records: list[dict[str, Any]]) -> list[Any]:
        results: list[dict[str, Any]] = []
        with self._lock:
            table = self._store.setdefault(obj, {})
            for record in records:
                key = canonical(record["key"])
                error = self._rejections.get(key) or _conflict(operation, key in table)
                if error is not None:
                    results.append({"key": record["key"], "status": "rejected", "error": error})
                    continue
                if operation == "delete":
                    table.pop(key, None)
                else:
                    table[key] = dict(record["fields"])
                results.append({"key": record["key"], "status": "ok"})
        return results


_JSON = {"content-type": "application/json"}


def _failure_reply(failure: _Failure) -> Reply:
    headers = {"content-type": "text/plain"}
    if failure.retry_after is not None:
        wait = failure.retry_after
        headers["retry-after"] = str(int(wait)) if float(wait).is_integer() else str(wait)
    return failure.status, headers, failure.body.encode()


def _parse(raw: bytes) -> dict[str, Any]:
    """The batch, checked against the contract; _BadRequest (400) says what is off."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadRequest(400, "body is not JSON") from None
    if not isinstance(body, dict) or body.get("type") != "tidegate.batch":
        raise _BadRequest(400, 'body is not a {"type": "tidegate.batch"} document')
    if body.get("operation") not in OPERATIONS:
        raise _BadRequest(400, f"operation must be one of {', '.join(sorted(OPERATIONS))}")
    if not isinstance(body.get("object"), str) or not isinstance(body.get("records"), list):
        raise _BadRequest(400, "object (a string) and records (a list) are required")
    deleting = body["operation"] == "delete"
    for record in body["records"]:
        if not isinstance(record, dict) or "key" not in record:
            raise _BadRequest(400, "every record needs a key")
        if deleting and "fields" in record:
            raise _BadRequest(400, "delete records carry no fields")
        if not deleting and not isinstance(record.get("fields"), dict):
            raise _BadRequest(400, "every record needs a fields object")
    return body


def _conflict(operation: str, exists: bool) -> str | None:
    if operation == "insert" and exists:
        return "already exists"
    if operation == "update" and not exists:
        return "not found"
    return None


def _describe(meta: dict[str, Any]) -> str:
    rejected = f", {meta['rejected']} rejected" if meta["rejected"] else ""
    return (f"{meta['sync']} run {meta['run_id']}: {meta['operation']} {meta['count']} "
            f"record(s) of {meta['object']}{rejected} (batch {meta['id']})")


def serve(port: int, secret: str | None) -> None:
    """Run a receiver on 127.0.0.1 in the foreground, printing one line per request."""
    def make() -> WebhookReceiver:
        try:
            return WebhookReceiver(secret=secret or None, port=port,
                                   log=lambda line: print(line, flush=True))
        except ValueError as exc:
            raise ConfigError(Problem(str(exc), key="--secret",
                                      fix="pass the destination's whsec_… secret")) from None

    def banner(receiver: WebhookReceiver) -> str:
        return (f"webhook sandbox listening on {receiver.url}"
                + (" (verifying signatures)" if secret else " (not verifying signatures)"))

    serve_forever(make, port, banner)
