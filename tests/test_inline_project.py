"""A project built from settings given as data (an inline job), with no files to read."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SECRET
from helpers import sync, warehouse
from tidegate import ConfigError, Project
from tidegate.sandbox.webhook import WebhookReceiver


def settings(receiver_url: str, warehouse_path: str = "warehouse.duckdb",
             **job: object) -> dict[str, object]:
    return {
        "name": "inline",
        "sources": {"warehouse": {"type": "duckdb", "path": warehouse_path}},
        "destinations": {"hook": {"type": "webhook", "url": receiver_url, "secret": SECRET}},
        "syncs": {"job": {**sync(), **job}},
    }


def test_an_inline_project_runs_like_one_from_files(tmp_path: Path,
                                                    receiver: WebhookReceiver) -> None:
    warehouse(tmp_path / "warehouse.duckdb", 50)
    job = {k: v for k, v in sync().items() if k != "mode"}
    data = settings(receiver.url, str(tmp_path / "warehouse.duckdb"))
    data["syncs"] = {"job": {**job, "job_type": "upsert", "batch_size": 20}}  # the seed's alias
    with Project.from_dict(data, tmp_path / "work", origin="task run_aps") as p:
        assert p.sync("job").mode == "upsert"
        first = p.run("job")
        assert (p.root / ".tidegate" / "state.db").exists()  # the default store, in root
    assert first["delivered"]["created"] == 50 and len(receiver.records("Account")) == 50
    with Project.from_dict(data, tmp_path / "work") as p:
        assert p.run("job")["planned"]["unchanged"] == 50


def test_problems_name_the_origin_and_keep_secrets_out(tmp_path: Path) -> None:
    data = settings("http://127.0.0.1:9/in", fields=["name"], mode="sideways", primary_ky="id")
    with pytest.raises(ConfigError) as caught:
        Project.from_dict(data, tmp_path, origin="task run_aps")
    text = str(caught.value)
    assert "task run_aps: syncs.job.mode" in text
    assert "did you mean 'primary_key'" in text
    assert SECRET not in text
