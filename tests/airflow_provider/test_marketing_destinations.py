"""ReverseETLOperator under real Airflow into HubSpot and Iterable (their local servers),
each destination taken from an Airflow connection of its own type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tidegate.sandbox.hubspot import HubSpotSandbox
from tidegate.sandbox.iterable import IterableSandbox

TOKEN = "pat-na1-Airflow-7d1c"
API_KEY = "itbl-Airflow-Key-55e0"


@pytest.fixture
def apps() -> Iterator[tuple[HubSpotSandbox, IterableSandbox]]:
    with HubSpotSandbox(token=TOKEN) as hubspot, IterableSandbox(api_key=API_KEY) as iterable:
        yield hubspot, iterable


def people(path: Path, eligible_below: int) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("create or replace table people as select 'p' || i || '@example.com' "
                    "as email, 'Person ' || i as firstname, "
                    "case when i % 2 = 0 then 'customer' else 'lead' end as lifecyclestage, "
                    f"i < {eligible_below} as eligible from range(30) t(i)")


def test_hubspot_and_iterable_connections_drive_inline_jobs(
    run_dag: Any, apps: tuple[HubSpotSandbox, IterableSandbox], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hubspot, iterable = apps
    warehouse = tmp_path / "warehouse.duckdb"
    people(warehouse, eligible_below=20)
    monkeypatch.setenv("AIRFLOW_CONN_TEST_PEOPLE",
                       json.dumps({"conn_type": "duckdb", "host": str(warehouse)}))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_HUBSPOT", json.dumps(
        {"conn_type": "hubspot", "host": hubspot.url, "password": TOKEN}))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ITERABLE", json.dumps(
        {"conn_type": "iterable", "host": iterable.url, "password": API_KEY,
         "extra": {"max_records": 8}}))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_STATE", json.dumps(
        {"conn_type": "tidegate", "extra": {"url": f"sqlite:///{tmp_path / 'state.db'}"}}))

    result = run_dag("tidegate_marketing", "tidegate_marketing.py")
    assert result.state == "success", result.log[-4000:]
    assert result.xcom("contacts_to_hubspot")["delivered"]["created"] == 30
    contacts = {r["email"]: r for r in hubspot.records("contacts").values()}
    assert contacts["p4@example.com"]["lifecyclestage"] == "customer"
    assert contacts["p5@example.com"]["firstname"] == "Person 5"
    assert set(iterable.members(1)) == {f"p{i}@example.com" for i in range(20)}
    # The connection's max_records; batches go out concurrently, in any order.
    assert sorted(iterable.calls("/api/lists/subscribe")) == [4, 8, 8]

    people(warehouse, eligible_below=10)  # ten leave the audience
    again = run_dag("tidegate_marketing", "tidegate_marketing.py")
    assert again.state == "success", again.log[-4000:]
    assert again.xcom("contacts_to_hubspot")["planned"]["unchanged"] == 30
    assert again.xcom("eligible_to_iterable")["delivered"]["deleted"] == 10
    assert set(iterable.members(1)) == {f"p{i}@example.com" for i in range(10)}
    for log in (result.log, again.log):
        assert TOKEN not in log and API_KEY not in log
