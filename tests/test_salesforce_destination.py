"""A sync into the sandbox org end to end: describe checks, upsert, mirror, rejected rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from helpers import cli, project
from tidegate import Project
from tidegate.sandbox.salesforce import SalesforceSandbox

ENV = {"SF_CLIENT_SECRET": "s3cret-sf"}


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(client_id="tidegate", client_secret=ENV["SF_CLIENT_SECRET"]) as sb:
        yield sb


def setup(root: Path, org: SalesforceSandbox, mode: str = "mirror", **fields: Any) -> None:
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute("create or replace table scores as select 'acc-' || i as account_id, "
                    "'Account ' || i as name, round((i * 7) % 100 + 0.25, 2) as aps, "
                    "true as active from range(30) t(i)")
    project(root, {"crm": {"type": "salesforce", "login_url": org.url,
                           "auth": {"client_id": "tidegate",
                                    "client_secret": "${SF_CLIENT_SECRET}"}}},
            {"aps": {"source": "warehouse", "table": "scores", "primary_key": "account_id",
                     "destination": "crm", "object": "Account", "mode": mode,
                     "match": {"source": "account_id", "destination": "External_Id__c"},
                     "fields": fields or {"name": "Name", "aps": "APS__c",
                                          "active": "Active__c"}}})


def run(root: Path) -> dict[str, Any]:
    with Project.load(root, env=ENV) as p:
        return p.run("aps")


def accounts(org: SalesforceSandbox) -> dict[str, dict[str, Any]]:
    return {str(r["External_Id__c"]): r for r in org.records("Account").values()}


def test_a_mirror_sync_creates_updates_and_deletes_accounts(project_dir: Path,
                                                           org: SalesforceSandbox) -> None:
    setup(project_dir, org)
    first = run(project_dir)
    assert first["status"] == "succeeded", first
    assert first["delivered"]["created"] == 30 and len(accounts(org)) == 30
    assert accounts(org)["acc-3"]["APS__c"] == 21.25
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute("update scores set aps = 1.5 where account_id in ('acc-1', 'acc-2')")
        con.execute("delete from scores where account_id = 'acc-9'")
    second = run(project_dir)
    assert second["delivered"] == {"created": 0, "updated": 2, "deleted": 1}, second
    held = accounts(org)
    assert held["acc-1"]["APS__c"] == 1.5 and "acc-9" not in held and len(held) == 29
    with Project.load(project_dir, env=ENV) as p:
        report = p.show(second["run_id"])["destination_report"]
    assert report == {"api_usage": org.api_usage, "api_limit": org.daily_limit,
                      "write_path": "collections"}


def test_values_a_field_cannot_hold_are_invalid_in_the_plan_and_never_sent(
    project_dir: Path, org: SalesforceSandbox,
) -> None:
    setup(project_dir, org)
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute("update scores set aps = 12345.5 where account_id = 'acc-4'")  # 5,2
        con.execute("update scores set name = '' where account_id = 'acc-5'")  # required
    with Project.load(project_dir, env=ENV) as p:
        planned = p.plan("aps")
    assert planned["planned"]["invalid"] == 2 and planned["planned"]["added"] == 28
    assert planned["invalid_reasons"] == {
        "APS__c does not fit 5 digits with 2 after the point": 1,
        "Name is required and the value is empty": 1}
    result = run(project_dir)
    assert result["status"] == "partial" and result["rejected"] == 0
    assert result["planned"]["invalid"] == 2 and result["delivered"]["created"] == 28
    with Project.load(project_dir, env=ENV) as p:
        rows = {r["key"]: r for r in p.show(result["run_id"])["rows"]}
    assert rows["acc-4"]["kind"] == "invalid" and "does not fit 5 digits" in rows["acc-4"]["error"]
    assert "acc-4" not in accounts(org) and "acc-5" not in accounts(org)
    assert len(accounts(org)) == 28
    again = run(project_dir)  # still invalid, still not sent; nothing else to do
    assert again["planned"]["invalid"] == 2 and again["planned"]["added"] == 0


def test_a_mapping_to_a_field_the_object_lacks_is_a_config_error(project_dir: Path,
                                                                 org: SalesforceSandbox) -> None:
    setup(project_dir, org, name="Name", aps="APS_Score__c")
    result = cli("run", "aps", "--project", str(project_dir), env=ENV)
    assert result.returncode == 2, result.stderr
    assert "Account has no field APS_Score__c" in result.stderr
    assert "Traceback" not in result.stderr and ENV["SF_CLIENT_SECRET"] not in result.stderr
