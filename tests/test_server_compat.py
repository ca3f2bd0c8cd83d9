"""The Census- and Hightouch-compatible endpoints, driven the way each vendor's client drives them.

Each client below does what the real package does, request for request: the
method, path, body encoding, headers and the keys it reads from the answer
(airflow-provider-census 2.1.0 CensusHook / CensusSensor / CensusTrigger and
airflow-provider-hightouch 5.0.0 HightouchHook, as read from their wheels;
dagster-census's HTTP Basic and JSON body; prefect-census's query flag; see
shared research notes and docs/server.md). Any answer those packages could
not parse fails here the way it would fail there.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import SECRET
from helpers import project, sync, warehouse
from serverkit import TOKEN, LiveServer
from tidegate.sandbox.webhook import WebhookReceiver

ENV = {"HOOK_SECRET": SECRET}
ROWS = 20
CENSUS_TERMINAL = ("completed", "failed")
HIGHTOUCH_TERMINAL = ("cancelled", "failed", "success", "warning", "interrupted")
HIGHTOUCH_PENDING = ("queued", "querying", "processing", "reporting", "pending")


class CensusClient:
    """CensusHook: ``HttpHook.run(endpoint)`` with ``Authorization: Bearer``, no body."""

    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30, headers={
            "Authorization": f"Bearer {token}", "User-Agent": "python-requests/2.34.2"})

    def trigger_sync(self, sync_id: int | str) -> int:
        response = self.http.post(f"/api/v1/syncs/{sync_id}/trigger")
        response.raise_for_status()
        return int(response.json()["data"]["sync_run_id"])

    def get_sync_run_info(self, run_id: int) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/sync_runs/{run_id}")
        response.raise_for_status()
        # CensusTrigger reads it with aiohttp, whose json() insists on this type.
        assert response.headers["content-type"] == "application/json"
        payload = response.json()
        assert payload.get("status") == "success"  # CensusTrigger checks it
        info: dict[str, Any] = payload["data"]
        return info

    def sensor(self, run_id: int, timeout: float = 60) -> dict[str, Any]:
        """CensusSensor.poke until done: failed raises with error_message or error_detail."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.get_sync_run_info(run_id)
            if info["status"] == "failed":
                raise RuntimeError(info.get("error_message") or info.get("error_detail"))
            if info["status"] == "completed":
                return info
            assert info["status"] in ("queued", "working"), info["status"]
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def test_connection(self) -> bool:
        response = self.http.get("/api/v1/syncs?page=1&per_page=1")
        response.raise_for_status()
        return bool(response.json().get("status") == "success")


class HightouchClient:
    """HightouchHook.make_request: form bodies (``data=`` dict), query params for GET,
    the answer unwrapped from ``data`` when it has one."""

    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=base + "/api/v1/", timeout=30, headers={
            "accept": "application/json", "Authorization": f"Bearer {token}",
            "User-Agent": "AirflowHightouchOperator/5.0.0"})

    def request(self, method: str, endpoint: str, data: dict[str, Any] | None = None) -> Any:
        if method == "GET":
            response = self.http.get(endpoint, params=data)
        else:
            response = self.http.post(endpoint, data=data)
        response.raise_for_status()
        doc = response.json()
        return doc.get("data", doc)

    def start_sync(self, sync_id: str | None = None, sync_slug: str | None = None) -> str:
        body = {"syncId": sync_id} if sync_id else {"syncSlug": sync_slug}
        return str(self.request("POST", "syncs/trigger", body)["id"])

    def get_sync_from_slug(self, slug: str) -> Any:
        return self.request("GET", "syncs", {"slug": slug})[0]["id"]

    def poll_sync(self, sync_id: Any, run_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.request("GET", f"syncs/{sync_id}/runs", {"runId": run_id})[0]
            parsed = parse_sync_run_details(run)
            if parsed["status"] in HIGHTOUCH_TERMINAL:
                self.request("GET", f"syncs/{sync_id}")  # the operator reads the sync after
                return run
            assert parsed["status"] in HIGHTOUCH_PENDING, parsed["status"]
            assert time.monotonic() < deadline
            time.sleep(0.05)


def parse_sync_run_details(run: dict[str, Any]) -> dict[str, Any]:
    """airflow_provider_hightouch.utils.parse_sync_run_details: the keys it indexes."""
    for stamp in ("createdAt", "startedAt", "finishedAt"):
        if run.get(stamp):
            datetime.fromisoformat(run[stamp].replace("Z", "+00:00"))
    return {
        "planned": [run["plannedRows"].get(k) for k in ("addedCount", "changedCount",
                                                          "removedCount")],
        "successful": [run["successfulRows"].get(k) for k in ("addedCount", "changedCount",
                                                                "removedCount")],
        "failed": [run["failedRows"].get(k) for k in ("addedCount", "changedCount",
                                                        "removedCount")],
        "status": run.get("status"),
        "completion_ratio": float(run.get("completionRatio", 0)),
        "error": run.get("error"),
        "query_size": run.get("querySize"),
    }


@pytest.fixture
def census(server: LiveServer) -> Iterator[CensusClient]:
    client = CensusClient(server.url, TOKEN)
    yield client
    client.http.close()


@pytest.fixture
def hightouch(server: LiveServer) -> Iterator[HightouchClient]:
    client = HightouchClient(server.url, TOKEN)
    yield client
    client.http.close()


@pytest.fixture
def server(project_dir: Path, receiver: WebhookReceiver) -> Iterator[LiveServer]:
    warehouse(project_dir / "warehouse.duckdb", ROWS)
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(batch_size=5, concurrency=1),
             "capped": sync(object="Capped", guardrails={"max_rows": 5})})
    with LiveServer(project_dir, token=TOKEN, env=ENV) as live:
        yield live


def test_census_operator_and_sensor(server: LiveServer, receiver: WebhookReceiver,
                                    census: CensusClient) -> None:
    assert census.test_connection()
    run_id = census.trigger_sync(1)  # the stable id of `accounts`
    info = census.sensor(run_id)
    assert info["id"] == run_id and info["sync_id"] == 1
    assert info["records_processed"] == info["records_updated"] == ROWS
    assert info["records_failed"] == info["records_invalid"] == 0
    assert info["source_record_count"] == ROWS and info["error_message"] is None
    assert info["completed_at"].endswith("Z") and info["created_at"] <= info["completed_at"]
    assert len(receiver.records("Account")) == ROWS
    by_name = census.trigger_sync("accounts")
    assert census.sensor(by_name)["records_updated"] == 0  # nothing changed since


def test_census_rejected_rows_complete_with_records_failed(server: LiveServer,
                                                           receiver: WebhookReceiver,
                                                           census: CensusClient) -> None:
    receiver.reject_keys([1, 2], "invalid email")
    info = census.sensor(census.trigger_sync(1))
    assert info["status"] == "completed" and info["status_detail"] == "partial"
    assert info["records_failed"] == 2 and info["records_updated"] == ROWS - 2
    assert info["records_processed"] == ROWS


def test_census_held_run_fails_with_the_guardrails_reason(server: LiveServer,
                                                          census: CensusClient) -> None:
    run_id = census.trigger_sync(2)
    with pytest.raises(RuntimeError, match=r"held by guardrails: .*at most 5.*\[max_rows\]"):
        census.sensor(run_id)
    info = census.get_sync_run_info(run_id)
    assert info["error_code"] == "guardrail_held"
    assert f"/api/runs/{run_id}/approve" in info["error_detail"]


def test_census_statuses_while_a_run_waits_and_works(server: LiveServer, receiver: WebhookReceiver,
                                                     census: CensusClient) -> None:
    arrived, release = threading.Event(), threading.Event()
    receiver.before_apply = lambda body: bool(arrived.set() or release.wait(30))
    first = census.trigger_sync(1)
    assert arrived.wait(30)
    second = census.trigger_sync(1)
    statuses = (census.get_sync_run_info(first)["status"],
                census.get_sync_run_info(second)["status"])
    receiver.before_apply = None
    release.set()
    assert statuses == ("working", "queued")
    assert census.sensor(first)["status"] == census.sensor(second)["status"] == "completed"


def test_census_basic_auth_json_body_and_query_flag(server: LiveServer,
                                                    receiver: WebhookReceiver) -> None:
    basic = base64.b64encode(f"bearer:{TOKEN}".encode()).decode()
    dagster = httpx.post(f"{server.url}/api/v1/syncs/1/trigger",
                         headers={"Authorization": f"Basic {basic}",
                                  "Content-Type": "application/json;version=2"},
                         content=b'{"force_full_sync": false}')
    assert dagster.status_code == 200
    first = dagster.json()["data"]["sync_run_id"]
    server.wait(first)
    prefect = httpx.post(f"{server.url}/api/v1/syncs/1/trigger?force_full_sync=true",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    full = server.wait(prefect.json()["data"]["sync_run_id"])
    assert full["full"] is True and full["planned"]["changed"] == ROWS
    listed = httpx.get(f"{server.url}/api/v1/syncs/1/sync_runs?per_page=1",
                       headers={"Authorization": f"Basic {basic}"}).json()
    assert [r["id"] for r in listed["data"]] == [full["run_id"]]
    assert listed["pagination"]["next_page"] == 2


def test_census_unknown_sync_and_run(server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sync_missing = httpx.post(f"{server.url}/api/v1/syncs/99/trigger", headers=headers)
    run_missing = httpx.get(f"{server.url}/api/v1/sync_runs/99", headers=headers)
    assert sync_missing.status_code == run_missing.status_code == 404
    assert sync_missing.json()["status"] == "error"
    assert "unknown sync '99'" in sync_missing.json()["message"]
    assert run_missing.json()["message"] == "there is no run 99"


def test_hightouch_operator_by_id_and_by_slug(server: LiveServer, receiver: WebhookReceiver,
                                              hightouch: HightouchClient) -> None:
    run_id = hightouch.start_sync(sync_id="1")
    run = hightouch.poll_sync("1", run_id)
    parsed = parse_sync_run_details(run)
    assert run["id"] == run_id and parsed["status"] == "success"
    assert parsed["planned"] == [ROWS, 0, 0] and parsed["successful"] == [ROWS, 0, 0]
    assert parsed["failed"] == [0, 0, 0] and parsed["completion_ratio"] == 1.0
    assert parsed["query_size"] == ROWS and parsed["error"] is None
    assert len(receiver.records("Account")) == ROWS

    slug_run = hightouch.start_sync(sync_slug="accounts")
    sync_id = hightouch.get_sync_from_slug("accounts")
    assert sync_id == 1
    assert parse_sync_run_details(hightouch.poll_sync(sync_id, slug_run))["status"] == "success"


def test_hightouch_rejected_rows_are_a_warning(server: LiveServer, receiver: WebhookReceiver,
                                               hightouch: HightouchClient) -> None:
    receiver.reject_keys([0, 1, 2], "address is not deliverable")
    parsed = parse_sync_run_details(hightouch.poll_sync("1", hightouch.start_sync("1")))
    assert parsed["status"] == "warning"
    assert parsed["failed"] == [3, 0, 0] and parsed["successful"] == [ROWS - 3, 0, 0]


def test_hightouch_held_run_fails_with_the_reason(server: LiveServer,
                                                  hightouch: HightouchClient) -> None:
    run = hightouch.poll_sync("capped", hightouch.start_sync(sync_slug="capped"))
    assert run["status"] == "failed"
    assert run["error"].startswith("held by guardrails:") and "[max_rows]" in run["error"]
    assert run["successfulRows"] == {"addedCount": 0, "changedCount": 0, "removedCount": 0}


def test_hightouch_json_triggers_and_run_lists(server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    custom = httpx.post(f"{server.url}/api/v1/syncs/trigger", headers=headers,
                        json={"syncSlug": "accounts", "fullResync": True})
    server.wait(int(custom.json()["id"]))
    by_path = httpx.post(f"{server.url}/api/v1/syncs/1/trigger", headers=headers,
                         json={"fullResync": True})
    run_id = by_path.json()["id"]
    server.wait(int(run_id))
    listed = httpx.get(f"{server.url}/api/v1/syncs/1/runs", params={"limit": 1},
                       headers=headers).json()["data"]
    other = httpx.get(f"{server.url}/api/v1/syncs/2/runs", params={"runId": run_id},
                      headers=headers)
    nothing = httpx.post(f"{server.url}/api/v1/syncs/trigger", headers=headers, data={})
    assert custom.status_code == 200 and set(custom.json()) == {"id"}
    assert [r["id"] for r in listed] == [run_id]
    assert listed[0]["plannedRows"]["changedCount"] == ROWS  # full resync resent every row
    assert other.status_code == 404 and "not a run of sync 2" in other.json()["message"]
    assert nothing.status_code == 400 and nothing.json()["message"] == "give syncId or syncSlug"
