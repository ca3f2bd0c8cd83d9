"""The webhook destination and the sandbox receiver, over real loopback HTTP.

Signatures are checked here with the Standard Webhooks algorithm written out
from the spec text, not with the destination's or the receiver's code. A bare
recording server (``Recorder``) stands in for receivers that answer in ways the
sandbox never would (400 bodies, odd ``results``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from pydantic import ValidationError

from tidegate.destinations.base import Batch, Operation, SyncTarget
from tidegate.destinations.webhook import WebhookConfig, WebhookDestination
from tidegate.errors import DestinationError, RetryableError
from tidegate.sandbox.webhook import WebhookReceiver

KEY = b"tidegate-webhook-test-key-4711"
SECRET = "whsec_" + base64.b64encode(KEY).decode()

# -- helpers --------------------------------------------------------------------


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks: v1,base64(HMAC-SHA256(base64decode(secret sans whsec_), id.ts.body))."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def make_batch(operation: Operation, keys: list[Any], fields: list[dict[str, Any]] | None = None,
               batch_id: str = "batch-1") -> Batch:
    keys_json = [k if isinstance(k, str) else json.dumps(k) for k in keys]
    fields_json = [json.dumps(f) for f in fields] if fields else ["{}"] * len(keys)
    # ``fields_json`` is derived from the Arrow ``fields`` column, as the planner builds it.
    return Batch(id=batch_id, operation=operation, key_text=pa.array(keys_json, pa.string()),
                 table=pa.table({"key": pa.array(keys_json, pa.string())}),
                 fields=pa.array(fields_json, pa.string()))


def upserts(n: int, batch_id: str = "batch-1", operation: Operation = "upsert") -> Batch:
    return make_batch(operation, list(range(n)), [{"a": i} for i in range(n)], batch_id)


class Recorder:
    """A loopback server that records raw requests and answers from a queue of replies."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.replies: list[tuple[int, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.requests.append((self.command, headers, raw))
                status, extra, body = (recorder.replies.pop(0) if recorder.replies
                                       else (200, {}, b""))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/in"

    def reply(self, status: int, body: bytes | dict[str, Any] = b"", **headers: str) -> None:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        self.replies.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, raw))

    def last(self) -> tuple[dict[str, str], bytes]:
        _, headers, raw = self.requests[-1]
        return headers, raw


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def target(tmp_path: Path) -> SyncTarget:
    return SyncTarget(sync="s", object="obj", mode="upsert", match_fields=("id",),
                      fields=("a",), project_root=tmp_path, run_id=1)


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as receiver:
        yield receiver


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    rec.thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()
    rec.thread.join()


DestinationFactory = Callable[..., WebhookDestination]


@pytest.fixture
def destination(target: SyncTarget) -> Iterator[DestinationFactory]:
    made: list[WebhookDestination] = []

    def make(url: str, **settings: Any) -> WebhookDestination:
        config = WebhookConfig.model_validate({"type": "webhook", "url": url, **settings})
        made.append(WebhookDestination("hook", config, target))
        return made[-1]

    yield make
    for dest in made:
        dest.close()


# -- the request --------------------------------------------------------------------


def test_body_headers_and_signature_follow_the_contract(
    recorder: Recorder, destination: DestinationFactory
) -> None:
    dest = destination(recorder.url, secret=SECRET, headers={"X-Team": "ops"})
    batch = make_batch("upsert", [1, 2], [{"a": "x"}, {"a": None}], batch_id="b-42")
    before = int(time.time())
    assert dest.write(batch).rejected == {}
    headers, raw = recorder.last()
    assert headers["content-type"] == "application/json"
    assert headers["x-team"] == "ops"
    assert headers["webhook-id"] == "b-42"
    assert before <= int(headers["webhook-timestamp"]) <= time.time() + 1
    assert headers["webhook-signature"] == standard_signature(
        SECRET, "b-42", headers["webhook-timestamp"], raw)
    assert json.loads(raw) == {
        "type": "tidegate.batch", "sync": "s", "run_id": 1, "object": "obj",
        "operation": "upsert",
        "records": [{"key": 1, "fields": {"a": "x"}}, {"key": 2, "fields": {"a": None}}],
    }


def test_a_retry_keeps_the_id_and_is_signed_afresh(
    recorder: Recorder, destination: DestinationFactory
) -> None:
    dest = destination(recorder.url, secret=SECRET)
    recorder.reply(503, b"busy")
    batch = upserts(3, batch_id="same")
    with pytest.raises(RetryableError):
        dest.write(batch)
    assert dest.write(batch).rejected == {}
    (_, first, body1), (_, second, body2) = recorder.requests
    assert first["webhook-id"] == second["webhook-id"] == "same"
    assert body1 == body2
    for headers, raw in ((first, body1), (second, body2)):
        assert headers["webhook-signature"] == standard_signature(
            SECRET, "same", headers["webhook-timestamp"], raw)


def test_no_secret_no_signature(recorder: Recorder, destination: DestinationFactory) -> None:
    dest = destination(recorder.url)
    dest.write(upserts(1))
    headers, _ = recorder.last()
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "batch-1" and headers["webhook-timestamp"].isdigit()


def test_delete_omits_fields(recorder: Recorder, destination: DestinationFactory) -> None:
    dest = destination(recorder.url)
    dest.write(make_batch("delete", [7, 8]))
    body = json.loads(recorder.last()[1])
    assert body["operation"] == "delete"
    assert body["records"] == [{"key": 7}, {"key": 8}]


def test_empty_batch_is_still_a_valid_document(
    recorder: Recorder, destination: DestinationFactory
) -> None:
    dest = destination(recorder.url)
    dest.write(make_batch("upsert", []))
    assert json.loads(recorder.last()[1])["records"] == []


# -- the response -----------------------------------------------------------------


def test_per_record_results_from_the_receiver(
    hook: WebhookReceiver, destination: DestinationFactory
) -> None:
    dest = destination(hook.url, secret=SECRET)
    assert dest.write(upserts(3, "b1", "insert")).rejected == {}
    hook.reject_keys([4], "invalid email")
    result = dest.write(make_batch("insert", [2, 3, 4], [{"a": 1}] * 3, "b2"))
    assert result.rejected == {"2": "already exists", "4": "invalid email"}
    result = dest.write(make_batch("update", [1, 9], [{"a": 10}, {"a": 90}], "b3"))
    assert result.rejected == {"9": "not found"}
    assert dest.write(make_batch("delete", [0, 99], batch_id="b4")).rejected == {}
    assert hook.records("obj") == {"1": {"a": 10}, "2": {"a": 2}, "3": {"a": 1}}


def test_results_are_matched_to_keys_by_value(
    recorder: Recorder, destination: DestinationFactory
) -> None:
    dest = destination(recorder.url)
    recorder.reply(200, {"results": [
        {"key": 1.0, "status": "rejected", "error": "one"},          # 1.0 is the JSON number 1
        {"key": "2", "status": "rejected", "error": "two"},          # echoed as JSON text
        {"key": 3, "status": "ok"},
        {"key": 4, "status": "rejected"},
        {"key": 99, "status": "rejected", "error": "not in the batch"},
    ]})
    # No content type on purpose: receivers forget it; the body decides.
    result = dest.write(upserts(6))
    assert result.rejected == {"1": "one", "2": "two", "4": "rejected by the receiver"}


def test_composite_keys(hook: WebhookReceiver, destination: DestinationFactory,
                        recorder: Recorder) -> None:
    keys = ['{"region": "eu", "id": 1}', '{"id": 2, "region": "us"}']
    batch = make_batch("upsert", keys, [{"a": 1}, {"a": 2}])
    hook.reject_keys([{"id": 2, "region": "us"}], "blocked")
    assert destination(hook.url, secret=SECRET).write(batch).rejected == {keys[1]: "blocked"}
    assert hook.records("obj") == {'{"id":1,"region":"eu"}': {"a": 1}}

    recorder.reply(200, {"results": [{"key": {"id": 1, "region": "eu"}, "status": "rejected",
                                      "error": "order of columns does not matter"}]})
    dest = destination(recorder.url)
    assert dest.write(batch).rejected == {keys[0]: "order of columns does not matter"}
    sent = json.loads(recorder.last()[1])["records"]
    assert [r["key"] for r in sent] == [{"region": "eu", "id": 1}, {"id": 2, "region": "us"}]


def test_a_2xx_without_results_accepts_everything(
    recorder: Recorder, destination: DestinationFactory
) -> None:
    dest = destination(recorder.url)
    recorder.reply(202, b"queued")
    recorder.reply(200, {"ok": True}, content_type="application/json")
    assert dest.write(upserts(2)).rejected == {}
    assert dest.write(upserts(2)).rejected == {}


def test_400_rejects_the_batch_with_status_and_body(
    recorder: Recorder, destination: DestinationFactory
) -> None:
    dest = destination(recorder.url)
    recorder.reply(400, b'{"error": "field a must be a string"}')
    result = dest.write(upserts(3))
    assert set(result.rejected) == {"0", "1", "2"}
    message = result.rejected["0"]
    assert "HTTP 400" in message and "field a must be a string" in message


@pytest.mark.parametrize("status", [503, 429, 408])
def test_transient_statuses_are_retryable_with_retry_after(
    hook: WebhookReceiver, destination: DestinationFactory, status: int
) -> None:
    dest = destination(hook.url, secret=SECRET)
    hook.fail_next(1, status=status, retry_after=7, body="slow down")
    with pytest.raises(RetryableError) as caught:
        dest.write(upserts(2))
    assert caught.value.retry_after == 7
    assert str(status) in str(caught.value) and "slow down" in str(caught.value)
    assert hook.records("obj") == {}  # the failed request applied nothing
    assert dest.write(upserts(2)).rejected == {}
    assert len(hook.records("obj")) == 2


def test_transport_failures_are_retryable(
    hook: WebhookReceiver, destination: DestinationFactory
) -> None:
    dest = destination(hook.url, secret=SECRET, timeout_s=0.2)
    hook.drop_next(1)
    with pytest.raises(RetryableError):
        dest.write(upserts(1, "dropped"))
    hook.delay = 0.6
    with pytest.raises(RetryableError, match="timed out"):
        dest.write(upserts(1, "slow"))
    hook.delay = 0.0
    hook.down()
    with pytest.raises(RetryableError, match="cannot reach"):
        dest.write(upserts(1, "refused"))
    hook.up()
    assert dest.write(upserts(1, "refused")).rejected == {}
    assert [b["id"] for b in hook.batches] == ["slow", "refused"]


def test_a_wrong_secret_is_refused_with_401(
    hook: WebhookReceiver, destination: DestinationFactory
) -> None:
    other = "whsec_" + base64.b64encode(b"some-other-key-0000000000").decode()
    result = destination(hook.url, secret=other).write(upserts(1))
    assert "HTTP 401" in result.rejected["0"] and "signature" in result.rejected["0"]
    assert hook.records("obj") == {}


# -- the receiver ------------------------------------------------------------------


def signed_post(receiver: WebhookReceiver, body: bytes, msg_id: str = "m1",
                timestamp: int | None = None, signature: str | None = None) -> httpx.Response:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": stamp,
        "webhook-signature": signature or standard_signature(SECRET, msg_id, stamp, body),
    }
    with httpx.Client() as client:
        return client.post(receiver.url, content=body, headers=headers)


BODY = json.dumps({"type": "tidegate.batch", "sync": "s", "run_id": 1, "object": "obj",
                   "operation": "upsert", "records": [{"key": 1, "fields": {"a": 1}}]}).encode()


def test_receiver_verifies_signatures(hook: WebhookReceiver) -> None:
    assert signed_post(hook, BODY, "fresh").status_code == 200
    stale = signed_post(hook, BODY, "stale", timestamp=int(time.time()) - 301)
    assert stale.status_code == 401 and "timestamp" in stale.text
    forged = signed_post(hook, BODY, "forged", signature="v1," + base64.b64encode(
        b"x" * 32).decode())
    assert forged.status_code == 401
    stamp = str(int(time.time()))
    rotated = "v1,AAAA " + standard_signature(SECRET, "rotated", stamp, BODY)
    assert signed_post(hook, BODY, "rotated", int(stamp), rotated).status_code == 200
    assert [b["id"] for b in hook.batches] == ["fresh", "rotated"]


def test_receiver_refuses_documents_off_the_contract(hook: WebhookReceiver) -> None:
    assert signed_post(hook, b"not json").status_code == 400
    delete_with_fields = json.loads(BODY) | {"operation": "delete"}
    response = signed_post(hook, json.dumps(delete_with_fields).encode(), "d")
    assert response.status_code == 400 and "fields" in response.text


def test_receiver_dedupes_a_repeated_webhook_id(
    hook: WebhookReceiver, destination: DestinationFactory
) -> None:
    dest = destination(hook.url, secret=SECRET)
    batch = upserts(2, "once", "insert")
    hook.after_apply = lambda body: False  # applied, then the connection dies unanswered
    with pytest.raises(RetryableError):
        dest.write(batch)
    hook.after_apply = None
    # An insert applied twice would come back "already exists": it must not.
    assert dest.write(batch).rejected == {}
    assert dest.write(batch).rejected == {}
    assert hook.request_count == 3
    assert hook.batches == [{"id": "once", "sync": "s", "run_id": 1, "object": "obj",
                             "operation": "insert", "count": 2, "rejected": 0}]


def test_receiver_dedupes_a_retry_that_overtakes_the_first_attempt(
    hook: WebhookReceiver, destination: DestinationFactory
) -> None:
    dest = destination(hook.url, secret=SECRET)
    arrived, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def hold(body: dict[str, Any]) -> None:
        calls.append(len(body["records"]))
        arrived.set()
        release.wait(10)

    hook.before_apply = hold
    batch = upserts(3, "racing", "insert")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(dest.write, batch)
        assert arrived.wait(10)
        second = pool.submit(dest.write, batch)
        deadline = time.monotonic() + 10
        while hook.request_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hook.request_count == 2  # the retry is inside the receiver, the first is held
        release.set()
        results = [first.result(10).rejected, second.result(10).rejected]
    assert results == [{}, {}]
    assert calls == [3] and len(hook.batches) == 1 and hook.request_count == 2


def test_receiver_can_answer_results_only_when_something_is_rejected(
    destination: DestinationFactory,
) -> None:
    with WebhookReceiver(per_record_results=False) as hook, httpx.Client() as client:
        dest = destination(hook.url)
        assert dest.write(upserts(2, "a", "insert")).rejected == {}
        plain = client.post(hook.url, content=BODY.replace(b'"upsert"', b'"insert"'),
                            headers={"webhook-id": "b"})
        assert plain.json() == {"results": [
            {"key": 1, "status": "rejected", "error": "already exists"}]}
        assert client.post(hook.url, content=BODY, headers={"webhook-id": "c"}).json() == {}


def test_receiver_refuses_a_malformed_secret() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        WebhookReceiver(secret="not-a-secret")


# -- config, limits, check, secrets ----------------------------------------------------


def test_config_validation() -> None:
    def problems(**settings: Any) -> str:
        with pytest.raises(ValidationError) as caught:
            WebhookConfig.model_validate({"type": "webhook", "url": "https://x.test/in",
                                          **settings})
        return " ".join(e["msg"] for e in caught.value.errors(include_input=False))

    assert "http://" in problems(url="ftp://x.test")
    assert "host" in problems(url="http://")
    assert "whsec_" in problems(secret="hunter2-plain")
    assert "hunter2-plain" not in problems(secret="hunter2-plain")
    assert "base64" in problems(secret="whsec_!!!")
    assert "10000" in problems(max_records=10_001)
    assert "Webhook-Signature" in problems(headers={"Webhook-Signature": "x"})
    assert WebhookConfig.model_validate(
        {"type": "webhook", "url": "http://x.test", "secret": ""}).secret is None


def test_limits_follow_the_settings(target: SyncTarget) -> None:
    config = WebhookConfig(type="webhook", url="http://x.test", max_records=250,
                           max_bytes=100_000, requests_per_second=5, concurrency=2)
    limits = WebhookDestination("hook", config, target).limits()
    assert (limits.max_records, limits.max_bytes, limits.requests_per_second,
            limits.concurrency) == (250, 100_000, 5, 2)
    assert limits.modes == {"insert", "update", "upsert", "delete", "mirror"}
    assert WebhookDestination.capabilities.modes == limits.modes


def test_check_treats_any_http_answer_as_reachable(
    hook: WebhookReceiver, recorder: Recorder, destination: DestinationFactory
) -> None:
    destination(hook.url, secret=SECRET).check()
    recorder.reply(405, b"method not allowed")
    destination(recorder.url).check()
    assert [method for method, _, _ in recorder.requests] == ["GET"]
    assert hook.request_count == 0  # a GET is never taken for a batch


def test_check_names_the_url_and_the_fix(destination: DestinationFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest = destination(f"http://user:pw-hunter2@127.0.0.1:{port}/in")
    with pytest.raises(DestinationError) as caught:
        dest.check()
    message = str(caught.value)
    assert f"127.0.0.1:{port}/in" in message and "Fix:" in message
    assert "pw-hunter2" not in message


def test_secrets_never_appear_in_messages(
    hook: WebhookReceiver, recorder: Recorder, destination: DestinationFactory
) -> None:
    leaks = (SECRET, SECRET.removeprefix("whsec_"), KEY.decode())
    dest = destination(hook.url, secret=SECRET)
    hook.reject_keys([0], f"your secret is {SECRET}, key {KEY.decode()}")
    messages = list(dest.write(upserts(1)).rejected.values())
    hook.fail_next(1, status=503, body=f"leaking {SECRET}")
    with pytest.raises(RetryableError) as caught:
        dest.write(upserts(1, "again"))
    messages.append(str(caught.value))

    echo = destination(recorder.url, secret=SECRET)
    recorder.reply(400, f"bad request signed with {KEY.decode()}".encode())
    messages += echo.write(upserts(1)).rejected.values()
    assert len(messages) == 3
    for message in messages:
        assert not any(leak in message for leak in leaks), message
