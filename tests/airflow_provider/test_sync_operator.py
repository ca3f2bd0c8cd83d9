"""TidegateSyncOperator under real Airflow: a project sync as a task, held runs, the XCom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import SECRET
from helpers import project, sync, warehouse
from tidegate.sandbox.webhook import WebhookReceiver


@pytest.fixture
def hooked_project(tmp_path: Path, receiver: WebhookReceiver,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    warehouse(root / "warehouse.duckdb", 120)
    project(root, {"hook": {"type": "webhook", "url": receiver.url, "secret": SECRET},
                   "down": {"type": "webhook", "url": "http://127.0.0.1:9/in"}},
            {"accounts": sync(batch_size=25),
             "down": sync("down"),
             "guarded": sync(object="Guarded", guardrails={"min_rows": 1000}),
             "guarded_too": sync(object="Guarded", guardrails={"min_rows": 500})})
    monkeypatch.setenv("TIDEGATE_TEST_PROJECT", str(root))
    return root


def test_a_project_sync_runs_as_a_task_and_returns_its_summary(
    run_dag: Any, hooked_project: Path, receiver: WebhookReceiver
) -> None:
    result = run_dag("tidegate_sync", "tidegate_sync.py", sync="accounts")
    assert result.state == "success", result.log[-4000:]
    summary = result.xcom("run")
    assert summary["status"] == "succeeded" and summary["sync"] == "accounts"
    assert summary["delivered"] == {"created": 120, "updated": 0, "deleted": 0}
    assert len(receiver.records("Account")) == 120
    # The plan and the progress are in the task log.
    assert "planned accounts: {'added': 120" in result.log
    assert "120 of 120 record(s) acknowledged" in result.log
    assert SECRET not in result.log

    again = run_dag("tidegate_sync", "tidegate_sync.py", sync="accounts")
    assert again.xcom("run")["planned"]["unchanged"] == 120
    assert len(receiver.batches) == 120 // 25 + 1  # the second run sent nothing


def test_a_held_run_fails_or_skips_its_task_with_the_reason_in_the_log(
    run_dag: Any, hooked_project: Path, receiver: WebhookReceiver
) -> None:
    result = run_dag("tidegate_held", "tidegate_sync.py")
    states = result.states()
    assert states["held_fail"] == "failed"
    assert states["held_skip"] == "skipped"
    assert states["downstream"] == "skipped"  # acts on no stale data
    assert result.state == "failed"
    assert "SyncHeld" in result.log
    reason = "guardrail min_rows held the run: the model has 120 valid rows (at least 1,000)"
    assert reason in result.log
    assert "Release it with `tidegate approve" in result.log
    assert result.xcom("held_fail", key="summary")["status"] == "held"
    assert result.xcom("held_fail") is None
    assert receiver.records("Guarded") == {}


def test_a_failed_run_fails_its_task_saying_why(run_dag: Any, hooked_project: Path) -> None:
    result = run_dag("tidegate_failed", "tidegate_sync.py")
    assert result.states() == {"unreachable": "failed"}
    assert "tidegate.airflow.errors.SyncFailed: run 1 of sync down failed:" in result.log
    assert "127.0.0.1:9" in result.log
    assert result.xcom("unreachable", key="summary")["status"] == "failed"
