"""tidegate's REST API over real HTTP on loopback: auth, the worker pool, runs, approve."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import SECRET
from helpers import cli, project, sync, warehouse
from serverkit import TOKEN, LiveServer, free_port
from tidegate.sandbox.webhook import WebhookReceiver

ENV = {"HOOK_SECRET": SECRET}
ROWS = 30


def hook(receiver: WebhookReceiver) -> dict[str, Any]:
    return {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}}


@pytest.fixture
def root(project_dir: Path, receiver: WebhookReceiver) -> Path:
    warehouse(project_dir / "warehouse.duckdb", ROWS)
    project(project_dir, {**hook(receiver), "out": {"type": "file", "path": "exports/"}}, {
        "accounts": sync(batch_size=10, concurrency=1),
        "capped": sync(guardrails={"max_rows": 5}),
        "to_file": sync("out"),
    })
    return project_dir


def block_first_batch(receiver: WebhookReceiver) -> tuple[threading.Event, threading.Event]:
    """Hold the receiver's first request until ``release`` is set."""
    arrived, release = threading.Event(), threading.Event()

    def hold(body: dict[str, Any]) -> bool:
        if not arrived.is_set():
            arrived.set()
            assert release.wait(30)
        return True

    receiver.before_apply = hold
    return arrived, release


def test_openapi_document_lists_the_api_and_healthz_needs_no_token(root: Path) -> None:
    with LiveServer(root, token=TOKEN, env=ENV) as server:
        doc = httpx.get(server.url + "/openapi.json").json()
        health = httpx.get(server.url + "/healthz")
    assert doc["info"]["title"] == "tidegate"
    for path in ("/api/syncs", "/api/syncs/{sync}/runs", "/api/runs/{run_id}",
                 "/api/runs/{run_id}/rejected", "/api/runs/{run_id}/approve",
                 "/api/v1/syncs/{sync_id}/trigger", "/api/v1/sync_runs/{run_id}",
                 "/api/v1/syncs/trigger", "/api/v1/syncs/{sync_id}/runs", "/healthz"):
        assert path in doc["paths"], path
    assert "RunSummary" in doc["components"]["schemas"]
    assert health.status_code == 200 and health.json()["syncs"] == 3


def test_requests_without_the_token_are_refused(root: Path) -> None:
    with LiveServer(root, token=TOKEN, env=ENV) as server:
        url = server.url + "/api/syncs"
        basic = base64.b64encode(f"bearer:{TOKEN}".encode()).decode()
        wrong_user = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        answers = {
            "none": httpx.get(url),
            "wrong bearer": httpx.get(url, headers={"Authorization": "Bearer nope-" + TOKEN}),
            "prefix of the token": httpx.get(url, headers={"Authorization":
                                                            f"Bearer {TOKEN[:-1]}"}),
            "basic, user bearer": httpx.get(url, headers={"Authorization": f"Basic {basic}"}),
            "basic, other user": httpx.get(url, headers={"Authorization":
                                                          f"Basic {wrong_user}"}),
            "bearer": httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}),
            "census path, none": httpx.get(server.url + "/api/v1/syncs"),
            "trigger, none": httpx.post(server.url + "/api/syncs/accounts/runs"),
            "page, none": httpx.get(server.url + "/"),
        }
        assert server.service.runs() == []  # the refused trigger queued nothing
    codes = {name: r.status_code for name, r in answers.items()}
    assert codes == {"none": 401, "wrong bearer": 401, "prefix of the token": 401,
                     "basic, user bearer": 200, "basic, other user": 401, "bearer": 200,
                     "census path, none": 401, "trigger, none": 401, "page, none": 303}
    assert "Bearer" in answers["none"].headers["www-authenticate"]
    assert answers["none"].json()["error"]["message"] == "a valid API token is required"
    assert answers["census path, none"].json()["status"] == "error"
    assert answers["page, none"].headers["location"] == "/login?next=/"
    for response in answers.values():
        assert TOKEN not in response.text


def test_a_page_session_is_a_cookie_that_holds_no_token(root: Path) -> None:
    with LiveServer(root, token=TOKEN, env=ENV) as server:
        browser = httpx.Client(base_url=server.url)
        refused = browser.post("/login", content=f"token=wrong-{TOKEN}&next=/",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        signed = browser.post("/login", content=f"token={TOKEN}&next=//evil.example/",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
        cookie = signed.headers["set-cookie"]
        page = browser.get("/")
        read = browser.get("/api/syncs")
        write_without_header = browser.post("/api/syncs/accounts/runs")
        cross_site = browser.post("/api/syncs/accounts/runs",
                                  headers={"X-Tidegate-Page": "1",
                                           "Origin": "https://evil.example"})
        write = browser.post("/api/syncs/accounts/runs", headers={"X-Tidegate-Page": "1"})
        server.wait(write.json()["run_id"])
        browser.post("/logout")
        after = browser.get("/api/syncs")
        browser.close()
    assert refused.status_code == 401 and "not the token" in refused.text
    assert signed.status_code == 303 and signed.headers["location"] == "/"  # not elsewhere
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie
    assert page.status_code == 200 and "accounts" in page.text
    assert read.status_code == 200
    assert write_without_header.status_code == 401
    assert cross_site.status_code == 403
    assert write.status_code == 202
    assert after.status_code == 401


def test_without_a_token_only_loopback_names_are_answered(root: Path) -> None:
    with LiveServer(root, env=ENV) as server:
        ok = server.client.get("/api/syncs")
        rebound = server.client.get("/api/syncs", headers={"Host": "tidegate.evil.example"})
        form = server.client.post("/api/syncs/accounts/runs",
                                  headers={"Origin": "http://evil.example"})
    assert ok.status_code == 200
    assert rebound.status_code == 421
    assert form.status_code == 403


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIDEGATE_API_TOKEN"}
    bare = subprocess.run([sys.executable, "-m", "tidegate", "serve", "--project", str(root),
                           "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60,
                          env=env)
    short = subprocess.run([sys.executable, "-m", "tidegate", "serve", "--project", str(root),
                            "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60,
                           env={**env, "TIDEGATE_API_TOKEN": "short"})
    assert bare.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API token" in bare.stderr
    assert "TIDEGATE_API_TOKEN" in bare.stderr and "Traceback" not in bare.stderr
    assert short.returncode == 2 and "shorter than 16" in short.stderr
    assert "short" not in short.stderr.replace("shorter", "")


def test_serve_without_the_server_extra_names_the_install(root: Path, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "fastapi"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'fastapi'\")\n")
    result = subprocess.run(
        [sys.executable, "-m", "tidegate", "serve", "--project", str(root)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2
    assert "needs fastapi, which is not installed" in result.stderr
    assert "pip install 'tidegate[server]'" in result.stderr


def test_other_commands_do_not_load_the_web_stack() -> None:
    code = ("import sys\nfrom tidegate import cli\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'jinja2', 'starlette') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_a_trigger_queues_a_run_that_a_worker_executes(root: Path,
                                                       receiver: WebhookReceiver) -> None:
    arrived, release = block_first_batch(receiver)
    with LiveServer(root, env=ENV) as server:
        answer = server.client.post("/api/syncs/accounts/runs")
        queued = answer.json()
        assert arrived.wait(30)
        # The request was answered while the run had not sent a single batch.
        during = server.client.get(f"/api/runs/{queued['run_id']}").json()
        release.set()
        done = server.wait(queued["run_id"])
    assert answer.status_code == 202
    assert answer.headers["location"] == f"/api/runs/{queued['run_id']}"
    assert queued["status"] == "queued" and queued["triggered_by"] == "api"
    assert during["status"] == "running" and during["delivered"]["created"] == 0
    assert done["status"] == "succeeded" and done["delivered"]["created"] == ROWS
    assert done["sync_id"] is not None and done["batches"] == 3
    assert len(receiver.records("Account")) == ROWS


def test_concurrent_triggers_of_one_sync_wait_for_each_other(root: Path,
                                                             receiver: WebhookReceiver) -> None:
    arrived, release = block_first_batch(receiver)
    with LiveServer(root, env=ENV, workers=2) as server:
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: answers.append(
            server.client.post("/api/syncs/accounts/runs"))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first, second = sorted(r.json()["run_id"] for r in answers)
        assert arrived.wait(30)
        # One run of a sync at a time: the second waits although a worker is free,
        # and that free worker runs another sync meanwhile.
        other = server.client.post("/api/syncs/to_file/runs").json()["run_id"]
        assert server.wait(other)["status"] == "succeeded"
        waiting = server.client.get(f"/api/runs/{second}").json()
        release.set()
        a, b = server.wait(first), server.wait(second)
    assert [r.status_code for r in answers] == [202, 202]
    assert waiting["status"] == "queued"
    assert a["status"] == b["status"] == "succeeded"
    assert datetime.fromisoformat(b["started_at"]) >= datetime.fromisoformat(a["finished_at"])
    assert a["delivered"]["created"] == ROWS
    assert b["planned"]["unchanged"] == ROWS and b["delivered"] == {
        "created": 0, "updated": 0, "deleted": 0}


def test_rejected_rows_are_paged_with_their_reasons(root: Path,
                                                    receiver: WebhookReceiver) -> None:
    receiver.reject_keys([3, 4, 5, 6, 7], "email is not valid")
    with LiveServer(root, env=ENV) as server:
        run_id = server.client.post("/api/syncs/accounts/runs").json()["run_id"]
        run = server.wait(run_id)
        first = server.client.get(f"/api/runs/{run_id}/rejected", params={"limit": 2}).json()
        rest = server.client.get(f"/api/runs/{run_id}/rejected",
                                 params={"limit": 10, "offset": first["next_offset"]}).json()
        listed = server.client.get("/api/runs", params={"sync": "accounts"}).json()
        too_big = server.client.get(f"/api/runs/{run_id}/rejected", params={"limit": 5000})
        missing = server.client.get("/api/runs/999/rejected")
    assert run["status"] == "partial" and run["rejected"] == 5
    assert [r["key"] for r in first["rows"]] == [3, 4] and first["next_offset"] == 2
    assert [r["key"] for r in rest["rows"]] == [5, 6, 7] and rest["next_offset"] is None
    assert {r["error"] for r in first["rows"] + rest["rows"]} == {"email is not valid"}
    assert all(r["kind"] == "rejected" for r in rest["rows"])
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    assert too_big.status_code == 422 and missing.status_code == 404


def test_a_held_run_is_approved_through_the_api(root: Path, receiver: WebhookReceiver) -> None:
    with LiveServer(root, env=ENV) as server:
        run_id = server.client.post("/api/syncs/capped/runs").json()["run_id"]
        held = server.wait(run_id)
        approved = server.client.post(f"/api/runs/{run_id}/approve")
        done = server.wait(run_id)
        again = server.client.post(f"/api/runs/{run_id}/approve")
        missing = server.client.post("/api/runs/999/approve")
    assert held["status"] == "held" and "max_rows" in held["error"]
    assert held["samples"]["added"]  # the approver sees what would be sent
    assert approved.status_code == 202
    assert done["status"] == "succeeded" and done["delivered"]["created"] == ROWS
    assert done["verdict"]["approved"] is True
    assert again.status_code == 409 and "not held" in again.json()["error"]["message"]
    assert missing.status_code == 404


def test_force_and_full_are_passed_to_the_run(root: Path, receiver: WebhookReceiver) -> None:
    with LiveServer(root, env=ENV) as server:
        forced = server.wait(server.client.post("/api/syncs/capped/runs",
                                                json={"force": True}).json()["run_id"])
        full = server.wait(server.client.post("/api/syncs/capped/runs",
                                              json={"full": True, "force": True})
                           .json()["run_id"])
        bad = server.client.post("/api/syncs/capped/runs", json={"fulll": True})
    assert forced["status"] == "succeeded" and forced["forced"] is True
    assert full["full"] is True and full["planned"]["changed"] == ROWS  # state ignored
    assert bad.status_code == 422


def test_a_plan_preview_sends_nothing(root: Path, receiver: WebhookReceiver) -> None:
    with LiveServer(root, env=ENV) as server:
        plan = server.client.get("/api/syncs/capped/plan").json()
        unknown = server.client.get("/api/syncs/nope/plan")
    assert plan["planned"]["added"] == ROWS and plan["verdict"]["held"] is True
    assert receiver.records("Account") == {}
    assert unknown.status_code == 404 and "unknown sync 'nope'" in unknown.json()["error"][
        "message"]


def test_sync_ids_are_stable_as_syncs_are_added(root: Path, receiver: WebhookReceiver) -> None:
    with LiveServer(root, env=ENV) as server:
        before = {s["name"]: s["id"] for s in server.client.get("/api/syncs").json()["syncs"]}
        by_id = server.client.post(f"/api/syncs/{before['to_file']}/runs").json()
        server.wait(by_id["run_id"])
    config = yaml.safe_load((root / "tidegate.yml").read_text())
    config["syncs"] = {"aardvark": sync("out"), **config["syncs"]}  # sorts first
    (root / "tidegate.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    with LiveServer(root, env=ENV) as server:
        after = {s["name"]: s["id"] for s in server.client.get("/api/syncs").json()["syncs"]}
    listed = json.loads(cli("runs", "--project", str(root), "--json", env=ENV).stdout)
    assert before == {"accounts": 1, "capped": 2, "to_file": 3}
    assert by_id["sync"] == "to_file"
    assert after == {**before, "aardvark": 4}
    assert listed["runs"][0]["sync_id"] == 3


def test_no_secret_reaches_a_response_or_the_page(project_dir: Path) -> None:
    password = "pg-S3cret-in-the-url"
    warehouse(project_dir / "warehouse.duckdb", 5)
    url = f"postgresql://tidegate:{password}@127.0.0.1:{free_port()}/nowhere"
    project(project_dir, {"db": {"type": "postgres", "url": url}},
            {"accounts": sync("db", object="public.accounts")})
    with LiveServer(project_dir, token=TOKEN) as server:
        run_id = server.client.post("/api/syncs/accounts/runs").json()["run_id"]
        failed = server.wait(run_id)
        bodies = [server.client.get(path).text for path in (
            f"/api/runs/{run_id}", "/api/runs", "/api/syncs", f"/api/v1/sync_runs/{run_id}",
            f"/api/v1/syncs/1/runs?runId={run_id}", f"/runs/{run_id}", "/")]
    assert failed["status"] == "failed" and failed["error"]
    assert "127.0.0.1" in failed["error"]  # the error says where, without the password
    for body in bodies:
        assert password not in body and TOKEN not in body


def test_a_queued_run_waits_for_a_run_of_its_sync_in_another_process(
        root: Path, receiver: WebhookReceiver) -> None:
    arrived, release = block_first_batch(receiver)
    other = subprocess.Popen([sys.executable, "-m", "tidegate", "run", "accounts", "--project",
                              str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, **ENV})
    try:
        assert arrived.wait(60)
        with LiveServer(root, env=ENV) as server:
            run_id = server.client.post("/api/syncs/accounts/runs").json()["run_id"]
            waiting = server.wait(run_id, until=("queued",))
            threading.Event().wait(0.5)  # a worker has tried it by now, and let it wait
            still = server.client.get(f"/api/runs/{run_id}").json()
            release.set()
            assert other.wait(60) == 0
            done = server.wait(run_id)
            (cli_run,) = [r for r in server.client.get("/api/runs").json()["runs"]
                          if r["run_id"] != run_id]
    finally:
        release.set()
        other.kill()
        other.communicate(timeout=30)
    assert waiting["status"] == still["status"] == "queued"
    assert cli_run["status"] == "succeeded" and cli_run["triggered_by"] is None
    assert done["status"] == "succeeded" and done["planned"]["unchanged"] == ROWS
    assert datetime.fromisoformat(done["started_at"]) >= datetime.fromisoformat(
        cli_run["finished_at"])
