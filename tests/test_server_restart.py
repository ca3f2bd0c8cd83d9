"""A real ``tidegate serve`` process, SIGKILLed mid-run and started again, loses nothing."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import SECRET
from helpers import project, sync, warehouse
from serverkit import TOKEN, free_port, serve_process, wait_for
from tidegate import Project, runs
from tidegate.sandbox.webhook import WebhookReceiver

ROWS, BATCH = 400, 50
ENV = {"HOOK_SECRET": SECRET, "TIDEGATE_API_TOKEN": TOKEN}


def expected() -> dict[str, dict[str, Any]]:
    return {json.dumps(i): {"name": f"acct {i}", "score": (i * 13) % 101} for i in range(ROWS)}


def record(root: Path, run_id: int) -> runs.RunRecord:
    with Project.load(root, ENV) as p:
        return runs.get_run(p.store, run_id)


def test_killed_server_marks_the_run_interrupted_and_the_queued_run_sends_the_rest(
        project_dir: Path, receiver: WebhookReceiver, tmp_path: Path) -> None:
    warehouse(project_dir / "warehouse.duckdb", ROWS)
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(batch_size=BATCH, concurrency=1)})
    arrived, release = threading.Event(), threading.Event()
    seen = {"count": 0}

    def fourth_batch_hangs(body: dict[str, Any]) -> bool:
        seen["count"] += 1
        if seen["count"] == 4:
            arrived.set()
            release.wait(30)
            return False  # its sender is dead: never answered
        return True

    receiver.before_apply = fourth_batch_hangs
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    server = serve_process(project_dir, port, log, ENV)
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        try:
            first = client.post("/api/syncs/accounts/runs").json()["run_id"]
            assert arrived.wait(60), "the fourth batch never arrived"
            deadline = time.monotonic() + 30
            while client.get(f"/api/runs/{first}").json()["batches"] < 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            second = client.post("/api/syncs/accounts/runs").json()["run_id"]
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait(30)
            receiver.before_apply = None
            release.set()

    assert record(project_dir, first).status == "running"  # as the kill left it
    assert record(project_dir, second).status == "queued"
    assert len(receiver.records("Account")) == 3 * BATCH

    server = serve_process(project_dir, port, log, ENV)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            interrupted = client.get(f"/api/runs/{first}").json()
            census = client.get(f"/api/v1/sync_runs/{first}").json()["data"]
            hightouch = client.get("/api/v1/syncs/1/runs", params={"runId": first}).json()
            resumed = wait_for(client, second)
            again = wait_for(client, client.post("/api/syncs/accounts/runs").json()["run_id"])
    finally:
        server.send_signal(signal.SIGTERM)  # a graceful stop; uvicorn exits by that signal
        assert server.wait(60) in (0, -signal.SIGTERM)

    assert interrupted["status"] == "failed"
    assert interrupted["error"].startswith("interrupted") and "3 batch(es)" in interrupted["error"]
    assert interrupted["delivered"]["created"] == 3 * BATCH
    assert census["status"] == "failed" and census["error_code"] == "interrupted"
    assert hightouch["data"][0]["status"] == "interrupted"
    # The queued run survived the restart and sent exactly what was not acknowledged.
    assert resumed["status"] == "succeeded"
    assert resumed["planned"]["added"] == ROWS - 3 * BATCH
    assert receiver.records("Account") == expected()
    assert again["planned"]["unchanged"] == ROWS and again["to_send"] == 0
    text = log.read_text()
    assert "Traceback" not in text and TOKEN not in text and SECRET not in text
    assert f"run {first} was interrupted when the server stopped" in text
    assert "Application shutdown complete" in text
