"""A local webhook receiver that follows tidegate's webhook contract (SPEC §6).

It verifies Standard Webhooks signatures, deduplicates by ``webhook-id``,
applies each batch to an in-memory store per object, and answers with
per-record ``results``. Tests, ``tidegate demo`` and users rehearsing a sync
use it; its fault knobs (``fail_next``, ``reject_keys``, ``before_apply`` /
``after_apply`` hooks, ``delay``) reproduce what real receivers do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_S = 300
# A hook that returns False drops the request unanswered, as a receiver that dies would.
Hook = Callable[[dict[str, Any]], bool | None]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class Failure:
    status: int
    retry_after: float | None
    body: str


class WebhookReceiver:
    """An in-memory receiver on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        per_record_results: bool = True,
    ) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_")) if secret else None
        self.per_record_results = per_record_results
        self.lock = threading.Lock()
        self.store: dict[str, dict[str, dict[str, Any]]] = {}
        self.seen: dict[str, tuple[int, bytes]] = {}
        self.batches: list[dict[str, Any]] = []
        self.request_count = 0
        self.failures: list[Failure] = []
        self.rejections: dict[str, str] = {}
        self.delay = 0.0
        self.before_apply: Hook | None = None
        self.after_apply: Hook | None = None
        self._server = _Server((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/tidegate"

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="tidegate-webhook-receiver")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Fault knobs -------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None,
                  body: str = "temporarily unavailable") -> None:
        """Answer the next ``n`` requests with ``status`` and apply nothing (0 clears)."""
        with self.lock:
            self.failures = [Failure(status, retry_after, body) for _ in range(n)]

    def reject_keys(self, keys: Iterable[Any], error: str = "rejected by the receiver") -> None:
        """Reject records whose key is one of ``keys`` (an empty list clears)."""
        with self.lock:
            self.rejections = {canonical(k): error for k in keys}

    # Inspection ----------------------------------------------------------------

    def records(self, obj: str) -> dict[str, dict[str, Any]]:
        """What the receiver holds for ``obj``: canonical key JSON → fields."""
        with self.lock:
            return {k: dict(v) for k, v in self.store.get(obj, {}).items()}

    # Handling ------------------------------------------------------------------

    def handle(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.request_count += 1
            failure = self.failures.pop(0) if self.failures else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            extra = {"retry-after": str(failure.retry_after)} if failure.retry_after else {}
            return failure.status, extra, failure.body.encode()
        problem = self._verify(headers, raw)
        if problem is not None:
            return 401, {}, problem.encode()
        try:
            body = json.loads(raw)
            records, operation, obj = body["records"], body["operation"], body["object"]
        except (ValueError, KeyError, TypeError):
            return 400, {}, b"malformed batch"
        msg_id = headers.get("webhook-id", "")
        with self.lock:
            if msg_id and msg_id in self.seen:
                status, answer = self.seen[msg_id]
                return status, {"content-type": "application/json"}, answer
        if self.before_apply is not None and self.before_apply(body) is False:
            return 0, {}, b""
        results = self._apply(obj, operation, records)
        answer = json.dumps({"results": results} if self.per_record_results else {}).encode()
        with self.lock:
            self.batches.append({"id": msg_id, "operation": operation, "count": len(records)})
            if msg_id:
                self.seen[msg_id] = (200, answer)
        if self.after_apply is not None:
            self.after_apply(body)
        return 200, {"content-type": "application/json"}, answer

    def _verify(self, headers: dict[str, str], raw: bytes) -> str | None:
        if self.key is None:
            return None
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_S:
            return "timestamp missing or too far from now"
        mac = hmac.new(self.key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256)
        expected = base64.b64encode(mac.digest()).decode()
        for signature in headers.get("webhook-signature", "").split():
            version, _, value = signature.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return None
        return "signature does not match"

    def _apply(self, obj: str, operation: str, records: list[dict[str, Any]]) -> list[Any]:
        results = []
        with self.lock:
            table = self.store.setdefault(obj, {})
            for record in records:
                key = canonical(record.get("key"))
                error = self.rejections.get(key) or _check(operation, key in table)
                if error is None:
                    if operation == "delete":
                        table.pop(key, None)
                    else:
                        table[key] = dict(record.get("fields") or {})
                    results.append({"key": record.get("key"), "status": "ok"})
                else:
                    results.append({"key": record.get("key"), "status": "rejected",
                                    "error": error})
        return results


def _check(operation: str, exists: bool) -> str | None:
    if operation == "insert" and exists:
        return "already exists"
    if operation == "update" and not exists:
        return "not found"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        super().server_bind()
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, answer = receiver.handle(headers, raw)
            if status == 0:
                self.close_connection = True
                return
            self._reply(status, extra, answer)

        def do_GET(self) -> None:
            self._reply(200, {"content-type": "text/plain"}, b"tidegate webhook sandbox\n")

        def _reply(self, status: int, extra: dict[str, str], answer: bytes) -> None:
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(port: int, secret: str | None) -> None:
    """Run a receiver in the foreground, printing one line per batch."""
    receiver = WebhookReceiver(secret=secret, port=port)

    def show(body: dict[str, Any]) -> bool:
        print(f"{body.get('sync')} run {body.get('run_id')}: {body.get('operation')} "
              f"{len(body.get('records', []))} record(s) of {body.get('object')}", flush=True)
        return True

    receiver.after_apply = show
    receiver.start()
    print(f"webhook sandbox listening on {receiver.url}"
          + (" (verifying signatures)" if secret else ""), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        receiver.stop()
