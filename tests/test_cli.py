"""The command line: exit codes, --json documents, and clear errors without tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import SECRET
from helpers import cli, project, sync, warehouse
from tidegate.sandbox.webhook import WebhookReceiver


def hook(receiver: WebhookReceiver) -> dict[str, object]:
    return {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}}


ENV = {"HOOK_SECRET": SECRET}


def no_traceback(result: object) -> None:
    text = getattr(result, "stdout", "") + getattr(result, "stderr", "")
    assert "Traceback" not in text, text


def test_run_twice_then_history_and_show(project_dir: Path, receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 300)
    project(project_dir, hook(receiver), {"accounts": sync()})
    first = cli("run", "accounts", "--project", str(project_dir), "--json", env=ENV)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert set(summary) >= {"run_id", "sync", "status", "planned", "delivered", "rejected",
                            "duration_s"}
    assert summary["status"] == "succeeded"
    assert summary["delivered"] == {"created": 300, "updated": 0, "deleted": 0}
    warehouse(project_dir / "warehouse.duckdb", 300, shift=1,
              sql="update accounts set score = score + 1 where id % 100 = 0")
    second = json.loads(cli("run", "accounts", "--project", str(project_dir), "--json",
                            env=ENV).stdout)
    assert second["planned"]["changed"] == 3 and second["delivered"]["updated"] == 3
    history = json.loads(cli("runs", "--project", str(project_dir), "--json", env=ENV).stdout)
    assert [r["run_id"] for r in history["runs"]] == [2, 1]
    shown = cli("show", "2", "--project", str(project_dir), env=ENV)
    assert shown.returncode == 0 and "accounts" in shown.stdout
    table = cli("runs", "--project", str(project_dir), env=ENV)
    assert re.search(r"\b2\b.*accounts.*succeeded", table.stdout)


def test_plan_and_dry_run_send_nothing(project_dir: Path, receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 50)
    project(project_dir, hook(receiver), {"accounts": sync()})
    plan = cli("plan", "accounts", "--project", str(project_dir), "--json", env=ENV)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert doc["planned"]["added"] == 50 and doc["to_send"] == {"upsert": 50}
    assert len(doc["samples"]["added"]) == 5
    dry = cli("run", "accounts", "--dry-run", "--project", str(project_dir), env=ENV)
    assert dry.returncode == 0 and "plan for accounts" in dry.stdout
    assert receiver.request_count == 0
    runs = json.loads(cli("runs", "--project", str(project_dir), "--json", env=ENV).stdout)
    assert runs["runs"] == []


def test_rejected_rows_exit_4_and_are_listed(project_dir: Path, receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 20)
    project(project_dir, hook(receiver), {"accounts": sync()})
    receiver.reject_keys([4, 5], "invalid email")
    result = cli("run", "accounts", "--project", str(project_dir), env=ENV)
    assert result.returncode == 4
    shown = json.loads(cli("show", "1", "--project", str(project_dir), "--json", env=ENV).stdout)
    assert [(r["key"], r["error"]) for r in shown["rows"]] == [(4, "invalid email"),
                                                               (5, "invalid email")]


def test_null_and_duplicate_keys_exit_4_with_reasons(project_dir: Path,
                                                     receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", sql=(
        "create table accounts as select * from (values (1, 'a', 1), (null, 'b', 2), "
        "(3, 'c', 3), (3, 'd', 4)) t(id, name, score)"))
    project(project_dir, hook(receiver), {"accounts": sync()})
    result = cli("run", "accounts", "--project", str(project_dir), env=ENV)
    assert result.returncode == 4
    assert "primary key (id) is null" in result.stdout
    assert "primary key appears 2 times" in result.stdout
    assert list(receiver.records("Account")) == ["1"]


def test_a_destination_that_is_down_exits_1_and_says_so(project_dir: Path) -> None:
    warehouse(project_dir / "warehouse.duckdb", 10)
    project(project_dir, {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/nowhere"}},
            {"accounts": sync()})
    result = cli("run", "accounts", "--project", str(project_dir), "--json")
    no_traceback(result)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    assert "cannot reach http://127.0.0.1:9" in summary["error"]
    assert "next run sends everything not yet acknowledged" in summary["error"]


def test_a_query_with_a_sql_error_exits_2_naming_the_sync(project_dir: Path,
                                                          receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 10)
    broken = {k: v for k, v in sync().items() if k != "table"}
    project(project_dir, hook(receiver),
            {"accounts": {**broken, "query": "select id, nme from accounts"}})
    result = cli("run", "accounts", "--project", str(project_dir), env=ENV)
    no_traceback(result)
    assert result.returncode == 2
    assert re.search(r"tidegate.yml:\d+: syncs.accounts.query: the model query failed",
                     result.stderr)
    assert "nme" in result.stderr
    runs = json.loads(cli("runs", "--project", str(project_dir), "--json", env=ENV).stdout)
    assert runs["runs"][0]["status"] == "failed"  # the history tells the truth


@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\nsyncs: [\n", "tidegate.yml:3: invalid YAML"),
    ("name: x\ncolour: blue\n", "tidegate.yml:2: colour: unknown key 'colour'"),
    ("name: x\nstate: ${STATE_URL}\n", "tidegate.yml:2: state: environment variable STATE_URL"),
])
def test_bad_config_exits_2_with_file_and_line(project_dir: Path, text: str,
                                               expected: str) -> None:
    (project_dir / "tidegate.yml").write_text(text)
    for command in (["validate"], ["run", "--all"], ["plan", "x"], ["runs"]):
        result = cli(*command, "--project", str(project_dir))
        no_traceback(result)
        assert result.returncode == 2, (command, result.stderr)
        assert expected in result.stderr, result.stderr


def test_json_errors_are_one_document(project_dir: Path) -> None:
    (project_dir / "tidegate.yml").write_text("name: x\ncolour: blue\n")
    result = cli("validate", "--project", str(project_dir), "--json")
    doc = json.loads(result.stdout)
    assert doc["error"]["type"] == "config"
    assert doc["error"]["problems"][0].startswith("tidegate.yml:2")


def test_unknown_sync_and_no_sync_are_usage_errors(project_dir: Path,
                                                   receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 1)
    project(project_dir, hook(receiver), {"accounts": sync()})
    unknown = cli("run", "acounts", "--project", str(project_dir), env=ENV)
    assert unknown.returncode == 2 and "did you mean 'accounts'" in unknown.stderr
    nothing = cli("run", "--project", str(project_dir), env=ENV)
    assert nothing.returncode == 2 and "--all" in nothing.stderr
    bad_option = cli("run", "--colour", env=ENV)
    assert bad_option.returncode == 2
    no_traceback(bad_option)


def test_init_creates_a_project_that_runs(tmp_path: Path) -> None:
    created = cli("init", str(tmp_path / "new"))
    assert created.returncode == 0, created.stderr
    valid = cli("validate", "--project", str(tmp_path / "new"))
    assert valid.returncode == 0, valid.stderr
    ran = cli("run", "--all", "--project", str(tmp_path / "new"), "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["delivered"]["created"] == 100
    again = cli("init", str(tmp_path / "new"))
    assert again.returncode == 2 and "already has a tidegate.yml" in again.stderr


def test_validate_connections_reports_each_end(project_dir: Path,
                                               receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 1)
    project(project_dir, {**hook(receiver),
                          "down": {"type": "webhook", "url": "http://127.0.0.1:9/x"}},
            {"accounts": sync()})
    result = cli("validate", "--connections", "--project", str(project_dir), "--json", env=ENV)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    status = {(c["kind"], c["name"]): c["ok"] for c in doc["connections"]}
    assert status == {("source", "warehouse"): True, ("destination", "hook"): True,
                      ("destination", "down"): False}


def test_reset_makes_the_next_run_send_everything(project_dir: Path,
                                                  receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 30)
    project(project_dir, hook(receiver), {"accounts": sync()})
    cli("run", "accounts", "--project", str(project_dir), env=ENV)
    reset = cli("reset", "accounts", "--yes", "--project", str(project_dir), "--json", env=ENV)
    assert json.loads(reset.stdout) == {"sync": "accounts", "forgotten": 30}
    again = json.loads(cli("run", "accounts", "--project", str(project_dir), "--json",
                           env=ENV).stdout)
    assert again["planned"]["added"] == 30


def test_every_command_is_documented_in_the_readme() -> None:
    from tidegate.cli import app

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    names = [c.name or getattr(c.callback, "__name__", "") for c in app.registered_commands]
    names += [g.name or "" for g in app.registered_groups]
    assert names
    for name in names:
        assert f"`tidegate {name}" in readme, f"`tidegate {name}` is not in README.md"


def test_sandbox_webhook_receives_a_signed_run(project_dir: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "sandbox", "webhook", "--port", str(port),
         "--secret", SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert f"127.0.0.1:{port}" in first, first
        warehouse(project_dir / "warehouse.duckdb", 25)
        url = f"http://127.0.0.1:{port}/hooks/tidegate"
        project(project_dir, {"hook": {"type": "webhook", "url": url,
                                       "secret": "${HOOK_SECRET}"}}, {"accounts": sync()})
        result = cli("run", "accounts", "--project", str(project_dir), "--json", env=ENV)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["delivered"]["created"] == 25
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=20)[0]
    assert "25" in output and "Traceback" not in output


def test_sandbox_salesforce_grants_a_token_and_answers_describe() -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "sandbox", "salesforce", "--port", str(port),
         "--client-id", "cid", "--client-secret", "csecret"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert f"127.0.0.1:{port}" in first, first
        token = httpx.post(f"http://127.0.0.1:{port}/services/oauth2/token",
                           data={"grant_type": "client_credentials", "client_id": "cid",
                                 "client_secret": "csecret"}).json()
        described = httpx.get(
            f"{token['instance_url']}/services/data/v62.0/sobjects/Account/describe",
            headers={"Authorization": f"Bearer {token['access_token']}"})
        assert described.status_code == 200
        assert "APS__c" in {f["name"] for f in described.json()["fields"]}
        refused = httpx.post(f"http://127.0.0.1:{port}/services/oauth2/token",
                             data={"grant_type": "client_credentials", "client_id": "cid",
                                   "client_secret": "wrong"})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_client"
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=20)[0]
    assert "Traceback" not in output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_sandbox(*args: str) -> Any:
    import os
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-m", "tidegate", "sandbox", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert server.stdout is not None
    first = server.stdout.readline()
    assert "listening on http://127.0.0.1:" in first, first + server.stdout.read()
    return server


def _stop(server: Any) -> str:
    import signal

    server.send_signal(signal.SIGINT)
    return str(server.communicate(timeout=20)[0])


def test_sandbox_hubspot_checks_requests_against_hubspots_openapi() -> None:
    import httpx

    port = _free_port()
    server = _start_sandbox("hubspot", "--port", str(port), "--token", "pat-cli")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                          headers={"authorization": "Bearer pat-cli"})
    try:
        props = client.get("/crm/v3/properties/contacts")
        assert props.status_code == 200
        assert "email" in {p["name"] for p in props.json()["results"]}
        created = client.post("/crm/v3/properties/contacts", json={
            "name": "score", "label": "Score", "type": "number", "fieldType": "number",
            "groupName": "contactinformation"})
        assert created.status_code == 201 and created.json()["hubspotDefined"] is False
        ok = client.post("/crm/v3/objects/contacts/batch/upsert", json={"inputs": [
            {"id": "ada@example.com", "idProperty": "email",
             "properties": {"firstname": "Ada", "score": "7"}}]})
        assert ok.status_code == 200 and ok.json()["results"][0]["new"] is True
        bad = client.post("/crm/v3/objects/contacts/batch/create",
                          json={"inputs": [{"properties": {"firstname": 7}}]})
        assert bad.status_code == 400
        assert "'associations' is a required property" in bad.json()["message"]
        assert client.get("/crm/v3/properties/contacts",
                          headers={"authorization": "Bearer nope"}).status_code == 401
    finally:
        client.close()
        output = _stop(server)
    assert "upsert contacts: 1 written" in output and "Traceback" not in output


def test_sandbox_iterable_keeps_list_members() -> None:
    import httpx

    port = _free_port()
    server = _start_sandbox("iterable", "--port", str(port), "--api-key", "k-cli")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Api-Key": "k-cli"})
    try:
        answer = client.post("/api/lists/subscribe", json={"listId": 1, "subscribers": [
            {"email": "ada@example.com"}, {"email": "nope"}]}).json()
        assert answer["successCount"] == 1
        assert answer["failedUpdates"]["invalidEmails"] == ["nope"]
        assert client.get("/api/lists/getUsers", params={"listId": 1}).text == "ada@example.com"
    finally:
        client.close()
        output = _stop(server)
    assert "lists/subscribe 1: 1 subscribed, 1 failed" in output and "Traceback" not in output


def test_a_command_line_builds_only_the_command_it_names() -> None:
    from tidegate.cli import _app_for, app

    def names(args: list[str]) -> list[str]:
        return [info.callback.__name__ for info in _app_for(args).registered_commands
                if info.callback]

    assert names(["run", "accounts"]) == ["run"]
    assert names(["runs", "--json"]) == ["runs_cmd"]  # a name, not a prefix
    for args in ([], ["--help"], ["-v", "run"], ["sandbox", "webhook"], ["nope"]):
        assert _app_for(args) is app, args
    # The whole app is untouched: the next command line still finds every command.
    assert len(app.registered_commands) > 5 and app.registered_groups


def test_help_lists_every_command_and_each_command_has_its_own(project_dir: Path) -> None:
    top = cli("--help")
    assert top.returncode == 0
    for name in ("init", "validate", "plan", "run", "runs", "show", "reset", "demo", "sandbox"):
        assert re.search(rf"\b{name}\b", top.stdout), name
    one = cli("run", "--help")
    assert one.returncode == 0 and "--dry-run" in one.stdout and "tidegate run" in one.stdout
    wrong = cli("runz")
    assert wrong.returncode == 2 and "No such command" in wrong.stdout + wrong.stderr
    no_traceback(wrong)


def test_a_run_leaves_its_state_store_closed_and_whole(project_dir: Path,
                                                       receiver: WebhookReceiver) -> None:
    """The store closes while the summary prints; the command still ends only once it has:
    the log is copied into the database file and removed, so state.db alone holds it all."""
    warehouse(project_dir / "warehouse.duckdb", 120)
    project(project_dir, hook(receiver), {"accounts": sync()})
    result = cli("run", "accounts", "--project", str(project_dir), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "summary" in result.stdout
    store = project_dir / ".tidegate"
    assert (store / "state.db").exists()
    assert not (store / "state.db-wal").exists() and not (store / "state.db-shm").exists()
