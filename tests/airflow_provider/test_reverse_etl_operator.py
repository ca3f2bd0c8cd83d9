"""ReverseETLOperator under real Airflow: connections for every end, a templated query,
state in PostgreSQL, secrets kept out of the task log, OpenLineage events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_env import LINEAGE, lineage_events
from conftest import SECRET
from tidegate.sandbox.webhook import WebhookReceiver

SOURCE_PASSWORD = "src-Pa55word-91x"
STATE_PASSWORD = "state-Pa55word-77q"
DAY = datetime(2024, 3, 1, tzinfo=UTC)


def connection(**fields: Any) -> str:
    return json.dumps(fields)


@pytest.fixture
def ends(postgres: Any, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
         ) -> dict[str, str]:
    source, state = (postgres.create_database(f"af_{n}_{id(receiver)}") for n in ("wh", "st"))
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("create table accounts as select i as id, 'acct ' || i as name, "
                     "(i * 7) % 50 as score from generate_series(1, 150) as t(i)")
        conn.execute("update accounts set score = -1 where id = 150")  # filtered out
    host, port = postgres.host, postgres.port
    monkeypatch.setenv("AIRFLOW_CONN_TEST_WAREHOUSE", connection(
        conn_type="postgres", host=host, port=port, login="postgres",
        password=SOURCE_PASSWORD, schema=source.rsplit("/", 1)[1]))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_HOOK", connection(
        conn_type="http", host=receiver.url, password=SECRET, extra={"X-Team": "ops"}))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_STATE", connection(
        conn_type="tidegate", host=host, port=port, login="postgres",
        password=STATE_PASSWORD, schema=state.rsplit("/", 1)[1]))
    return {"source": source, "state": state}


def test_an_inline_job_runs_from_connections_with_state_in_postgres(
    run_dag: Any, ends: dict[str, str], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    result = run_dag("tidegate_inline", "tidegate_inline.py", logical_date=DAY)
    assert result.state == "success", result.log[-4000:]
    summary = result.xcom("push_scores")
    assert summary["sync"] == "tidegate_inline.push_scores"
    assert summary["delivered"]["created"] == 149
    records = receiver.records("Account")
    assert len(records) == 149 and "150" not in records
    assert records["7"] == {"name": "acct 7", "score": 49, "as_of": "2024-03-01"}  # {{ ds }}
    with psycopg.connect(ends["state"]) as conn:  # the state store is the connection's
        assert conn.execute("select sync, status from tidegate_runs").fetchall() == [
            ("tidegate_inline.push_scores", "succeeded")]

    with psycopg.connect(ends["source"], autocommit=True) as conn:
        conn.execute("update accounts set score = score + 1 where id <= 3")
    again = run_dag("tidegate_inline", "tidegate_inline.py", logical_date=DAY)
    changed = again.xcom("push_scores")
    assert changed["planned"]["changed"] == 3 and changed["delivered"]["updated"] == 3

    # Secrets from the connections are in no task log, no XCom, no lineage event.
    for text in (result.log, again.log, json.dumps(summary), LINEAGE.read_text()):
        for secret in (SOURCE_PASSWORD, STATE_PASSWORD, SECRET):
            assert secret not in text

    # OpenLineage: the query's table as input, the destination object as output.
    complete = [e for e in lineage_events("tidegate_inline.push_scores")
                if e["eventType"] == "COMPLETE"]
    assert complete, "no OpenLineage COMPLETE event"
    event = complete[-1]
    database = ends["source"].rsplit("/", 1)[1]
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [
        (f"postgres://127.0.0.1:{ends['source'].split(':')[2].split('/')[0]}",
         f"{database}.public.accounts")]
    assert [(d["namespace"], d["name"]) for d in event["outputs"]] == [
        (receiver.url.rsplit("/", 1)[0] + "/" + receiver.url.rsplit("/", 1)[1], "Account")]
    assert "'{{ ds }}'" not in event["job"]["facets"]["sql"]["query"]
    assert "'2024-03-01'" in event["job"]["facets"]["sql"]["query"]
