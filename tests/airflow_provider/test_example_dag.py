"""The example DAG (examples/airflow/account_scoring.py) end to end, against the local org:
a SQL task refreshes scores in DuckDB, the reverse ETL task updates Salesforce Accounts,
and a check task reads the run summary from XCom."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tidegate.sandbox.salesforce import SalesforceSandbox

CLIENT_SECRET = "sf-Client-Secret-5150"


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(client_id="tidegate-airflow", client_secret=CLIENT_SECRET) as sb:
        yield sb


def test_the_example_dag_scores_accounts_into_salesforce(
    run_dag: Any, org: SalesforceSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [org.put("Account", {"Name": f"Account {i}", "Active__c": True}) for i in range(60)]
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create schema crm")
        con.execute("create table crm.accounts (account_id varchar, employees integer, "
                    "annual_revenue double)")
        con.executemany("insert into crm.accounts values (?, ?, ?)",
                        [(account, 10 * i + 1, 250_000.0 * i) for i, account in enumerate(ids)])
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE",
                       json.dumps({"conn_type": "duckdb", "host": str(path)}))
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps({
        "conn_type": "salesforce", "host": org.url,
        "extra": {"consumer_key": "tidegate-airflow", "consumer_secret": CLIENT_SECRET}}))
    monkeypatch.setenv("AIRFLOW_CONN_TIDEGATE_STATE", json.dumps({
        "conn_type": "tidegate", "extra": {"url": f"sqlite:///{tmp_path / 'state.db'}"}}))

    result = run_dag("account_scoring", "account_scoring.py")
    assert result.state == "success", result.log[-4000:]
    assert result.states() == {"refresh_scores": "success", "run_aps": "success",
                               "check": "success"}
    assert result.xcom("refresh_scores") == 60
    summary = result.xcom("run_aps")
    assert summary["delivered"] == {"created": 0, "updated": 60, "deleted": 0}
    assert result.xcom("check") == f"run {summary['run_id']}: 60 of 60 accounts updated " \
                                   "in Salesforce"
    held = org.records("Account")
    for i, account in enumerate(ids):
        expected = round(min(100, 10 * math.log(1 + 10 * i + 1) + 0.25 * i), 2)
        assert held[account]["APS__c"] == pytest.approx(expected)
    assert CLIENT_SECRET not in result.log
