"""Server mode under real Airflow ``dag.test()``, against a real ``tidegate serve`` on loopback:
tidegate's trigger operator and deferrable sensor, and the Census and Hightouch providers
from PyPI, unmodified, with only their connection's host pointed at the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SECRET
from helpers import project, sync, warehouse
from serverkit import TOKEN, LiveServer
from tidegate.sandbox.webhook import WebhookReceiver

ROWS = 40


@pytest.fixture
def server(tmp_path: Path, receiver: WebhookReceiver,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    root = tmp_path / "project"
    root.mkdir()
    warehouse(root / "warehouse.duckdb", ROWS)
    project(root, {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(batch_size=10, concurrency=1),
             "capped": sync(object="Capped", guardrails={"max_rows": 5}),
             "contacts": sync(object="Contact", batch_size=10, concurrency=1)})
    receiver.delay = 0.4  # runs take a few seconds, so the sensors really wait
    with LiveServer(root, token=TOKEN, env={"HOOK_SECRET": SECRET}) as live:
        for conn_id, conn_type in (("TIDEGATE_SERVER_DEFAULT", "tidegate_server"),
                                   ("CENSUS_DEFAULT", "census"),
                                   ("HIGHTOUCH_DEFAULT", "http")):
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", json.dumps(
                {"conn_type": conn_type, "host": live.url, "password": TOKEN}))
        yield live


def test_tidegate_trigger_operator_and_deferrable_sensor(
    run_dag: Any, server: LiveServer, receiver: WebhookReceiver
) -> None:
    result = run_dag("tidegate_server", "tidegate_server.py")
    states = result.states()
    assert states == {"trigger": "success", "wait": "success", "again": "success",
                      "held": "failed", "held_skip": "skipped", "missing": "failed"}, \
        result.log[-4000:]
    queued, waited = result.xcom("trigger"), result.xcom("wait")
    assert queued["status"] == "queued" and queued["sync"] == "accounts"
    assert waited["run_id"] == queued["run_id"] and waited["status"] == "succeeded"
    assert waited["delivered"] == {"created": ROWS, "updated": 0, "deleted": 0}
    assert waited["sync_id"] == 1
    assert result.xcom("again")["planned"]["unchanged"] == ROWS  # addressed by id "1"
    assert "Pausing task as DEFERRED" in result.log  # the sensor waited in the trigger
    assert "held by guardrails" in result.log and "[max_rows]" in result.log
    assert result.xcom("held", key="summary")["status"] == "held"
    assert len(receiver.records("Account")) == ROWS and receiver.records("Capped") == {}
    assert "tidegate server answered 404 to GET /api/runs/999: there is no run 999" in result.log
    assert TOKEN not in result.log and SECRET not in result.log


# airflow-provider-census 2.1.0 imports XCom from where Airflow 3.3 says it is deprecated.
@pytest.mark.filterwarnings("ignore:Importing XCom from 'airflow.models.xcom':FutureWarning")
def test_the_census_and_hightouch_providers_work_against_the_server(
    run_dag: Any, server: LiveServer, receiver: WebhookReceiver
) -> None:
    result = run_dag("vendor_clients", "vendor_clients.py")
    assert result.state == "success", result.log[-4000:]
    assert set(result.states().values()) == {"success"}
    census_run = result.xcom("census_trigger")
    assert server.service.record(census_run).status == "succeeded"
    assert "Pausing task as DEFERRED" in result.log  # CensusSensor's trigger polled us
    assert "Polling Hightouch Sync 3. Current status: success" in result.log
    hightouch_run = result.xcom("hightouch_async")
    assert server.service.record(int(hightouch_run)).sync == "contacts"
    assert len(receiver.records("Account")) == ROWS
    assert len(receiver.records("Contact")) == ROWS
    assert TOKEN not in result.log
