"""One sync as four mapped tasks, each a shard, against a shared PostgreSQL state store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import PG_TABLE, project, sync, warehouse, write_log
from tidegate import Project, state


def test_four_mapped_shards_deliver_every_row_exactly_once(
    run_dag: Any, postgres: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_url = postgres.create_database("af_shard_state")
    dest_url = postgres.create_database("af_shard_dest")
    with psycopg.connect(dest_url, autocommit=True) as conn:
        conn.execute(PG_TABLE)
    warehouse(tmp_path / "warehouse.duckdb", 2000)
    # The project's own state is a local file: the tasks use the shared one they are given.
    project(tmp_path, {"db": {"type": "postgres", "url": dest_url}},
            {"accounts": sync("db", object="public.accounts", batch_size=100)})
    monkeypatch.setenv("TIDEGATE_TEST_PROJECT", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_SHARED_STATE",
                       json.dumps({"conn_type": "tidegate", "extra": {"url": state_url}}))

    result = run_dag("tidegate_shards", "tidegate_shards.py")
    assert result.state == "success", result.log[-4000:]
    assert result.states() == {f"shard[{i}]": "success" for i in range(4)}
    parts = [result.xcom("shard", map_index=i) for i in range(4)]
    assert [p["shard"] for p in parts] == [{"index": i, "count": 4} for i in range(4)]
    assert sum(p["delivered"]["created"] for p in parts) == 2000
    assert all(300 < p["delivered"]["created"] < 700 for p in parts)
    assert write_log(dest_url) == {i: 1 for i in range(2000)}
    with Project.load(tmp_path, state=state_url) as p:
        assert state.count(p.store, "accounts") == 2000
    assert not (tmp_path / ".tidegate" / "state.db").exists()
