"""dbt models as sync models, on a real dbt project built with dbt-duckdb in this session.

dbt runs from its own venv (``.venv-dbt``, built by ``make test``; its path comes in
``TIDEGATE_TEST_DBT``): the project in ``tests/dbt/acme`` is built once, then
tidegate resolves its models from ``target/manifest.json`` and syncs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SECRET
from helpers import cli
from tidegate.sandbox.webhook import WebhookReceiver

ACME = Path(__file__).parent / "dbt" / "acme"


def _dbt() -> str:
    dbt = os.environ.get("TIDEGATE_TEST_DBT") or str(
        Path(__file__).parent.parent / ".venv-dbt" / "bin" / "dbt")
    if not Path(dbt).exists():
        pytest.fail(f"dbt is not at {dbt}: `make test` builds .venv-dbt first")
    return dbt


@pytest.fixture(scope="session")
def dbt_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The acme dbt project, seeded and built (models and tests) into a DuckDB file."""
    root = tmp_path_factory.mktemp("acme")
    shutil.copytree(ACME, root, dirs_exist_ok=True)
    env = {**os.environ, "ACME_WAREHOUSE": str(root / "warehouse.duckdb"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    done = subprocess.run([_dbt(), "build", "--profiles-dir", ".", "--project-dir", "."],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    return root


@pytest.fixture
def dbt_project(dbt_built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built project (manifest and warehouse) for one test."""
    root = tmp_path / "acme"
    shutil.copytree(dbt_built, root, ignore=shutil.ignore_patterns("logs"))
    return root


def write(root: Path, url: str, syncs: dict[str, Any]) -> None:
    config = {
        "name": "acme",
        "sources": {"warehouse": {"type": "duckdb", "path": "warehouse.duckdb"}},
        "destinations": {"hook": {"type": "webhook", "url": url, "secret": SECRET}},
        "syncs": syncs,
    }
    (root / "tidegate.yml").write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")


def sync(model: str, **extra: Any) -> dict[str, Any]:
    return {"source": "warehouse", "model": {"dbt": model}, "destination": "hook",
            "object": model, "mode": "upsert", **extra}


def test_a_dbt_model_syncs_by_name_with_its_unique_test_as_key(
    dbt_project: Path, receiver: WebhookReceiver
) -> None:
    write(dbt_project, receiver.url, {"customers": sync("customers")})
    done = cli("run", "customers", "--project", str(dbt_project), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["delivered"]["created"] == 6
    records = receiver.records("customers")
    # The relation is the model's alias (dim_customers); the key its unique test's column.
    assert records[json.dumps(1)] == {"full_name": "Ada Lovelace", "plan": "pro", "score": 91}
    assert set(records) == {json.dumps(i) for i in range(1, 7)}


def test_validate_names_a_missing_model_and_suggests_one(
    dbt_project: Path, receiver: WebhookReceiver
) -> None:
    write(dbt_project, receiver.url, {"customers": sync("customer")})
    done = cli("validate", "--project", str(dbt_project))
    assert done.returncode == 2
    assert "tidegate.yml:" in done.stderr and "syncs.customers.model.dbt" in done.stderr
    assert "no model 'customer'" in done.stderr and "did you mean 'customers'" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_reports_a_stale_manifest(dbt_project: Path, receiver: WebhookReceiver) -> None:
    write(dbt_project, receiver.url, {"customers": sync("customers")})
    assert cli("validate", "--project", str(dbt_project)).returncode == 0
    model = dbt_project / "models" / "customers.sql"
    model.write_text(model.read_text() + "where score > 70\n")
    done = cli("validate", "--project", str(dbt_project))
    assert done.returncode == 2
    assert "manifest is stale" in done.stderr and "models/customers.sql" in done.stderr
    assert "dbt parse" in done.stderr


def test_a_missing_manifest_says_to_run_dbt(dbt_project: Path, receiver: WebhookReceiver) -> None:
    write(dbt_project, receiver.url, {"customers": sync("customers")})
    (dbt_project / "target" / "manifest.json").unlink()
    done = cli("validate", "--project", str(dbt_project))
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert "dbt parse" in done.stderr


def test_a_model_without_one_clear_unique_test_needs_a_primary_key(
    dbt_project: Path, receiver: WebhookReceiver
) -> None:
    write(dbt_project, receiver.url, {"counts": sync("plan_counts"), "scores": sync("scores")})
    done = cli("validate", "--project", str(dbt_project))
    assert done.returncode == 2
    assert "has no unique test" in done.stderr and "several unique tests" in done.stderr
    assert "syncs.counts.primary_key" in done.stderr
    write(dbt_project, receiver.url, {"counts": sync("plan_counts", primary_key="plan"),
                                      "scores": sync("scores", primary_key="customer_id")})
    assert cli("validate", "--project", str(dbt_project)).returncode == 0


def test_select_runs_the_syncs_whose_models_carry_a_tag(
    dbt_project: Path, receiver: WebhookReceiver
) -> None:
    write(dbt_project, receiver.url, {
        "customers": sync("customers"),
        "scores": sync("scores", primary_key="customer_id"),
        "counts": sync("plan_counts", primary_key="plan"),
    })
    done = cli("run", "--select", "tag:hourly", "--project", str(dbt_project), "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(r["sync"] for r in json.loads(done.stdout)["runs"]) == ["customers", "scores"]
    assert receiver.records("plan_counts") == {}
    both = cli("run", "--select", "tag:hourly,tag:scoring", "--project", str(dbt_project),
               "--json")
    assert json.loads(both.stdout)["sync"] == "scores"
    none = cli("run", "--select", "tag:weekly", "--project", str(dbt_project))
    assert none.returncode == 2 and "daily, hourly, scoring" in none.stderr


def test_a_dbt_model_with_the_diff_in_the_warehouse(
    dbt_project: Path, receiver: WebhookReceiver
) -> None:
    write(dbt_project, receiver.url, {"customers": sync("customers", diff="warehouse")})
    first = cli("run", "customers", "--project", str(dbt_project), "--json")
    assert first.returncode == 0, first.stderr
    again = json.loads(cli("run", "customers", "--project", str(dbt_project), "--json").stdout)
    assert again["planned"]["unchanged"] == 6 and again["planned"]["added"] == 0
