"""Shards: a sync split by a stable hash of the key, its parts run apart or at the same time."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from conftest import SECRET
from helpers import PG_TABLE, cli, project, sync, warehouse, write_log
from tidegate import ConfigError, FatalError, Project, runs, state
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.shard import Shard

ENV = {"HOOK_SECRET": SECRET}


def hook(receiver: WebhookReceiver) -> dict[str, object]:
    return {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}}


def reference(key: str, count: int) -> int:
    """The documented hash, computed without DuckDB."""
    return int.from_bytes(hashlib.md5(key.encode()).digest()[:8], "little") % count


def test_a_key_belongs_to_the_shard_its_md5_names() -> None:
    keys = [str(i) for i in range(2000)] + [json.dumps(f"k-{i}") for i in range(500)]
    keys.append(json.dumps({"a": 1, "b": "x"}, separators=(",", ":")))
    table = pa.table({"key": keys, "hash": pa.array(range(len(keys)), pa.int64())})
    seen: list[str] = []
    for index in range(4):
        part = Shard(index, 4).filter(table)
        assert part.schema == table.schema
        assert all(reference(k, 4) == index for k in part["key"].to_pylist())
        seen += part["key"].to_pylist()
        assert 0.2 < part.num_rows / len(keys) < 0.3  # spread evenly
    assert sorted(seen) == sorted(keys)  # disjoint and complete


def test_null_keys_belong_to_shard_zero() -> None:
    table = pa.table({"key": pa.array([None, "1"], pa.string())})
    owners = [Shard(i, 2).filter(table)["key"].to_pylist() for i in range(2)]
    assert None in owners[0] and None not in owners[1]


def test_shard_arguments_are_checked() -> None:
    assert Shard.of(None, None) is None and Shard.of(0, 1) is None
    assert Shard.parse("2/4") == Shard(2, 4)
    for bad in (lambda: Shard.of(4, 4), lambda: Shard.of(0, 0), lambda: Shard.of(1, None),
                lambda: Shard.parse("1-4"), lambda: Shard.of(-1, 3)):
        with pytest.raises(ConfigError):
            bad()


def test_shards_deliver_every_key_once_and_remove_only_their_own(
    project_dir: Path, receiver: WebhookReceiver
) -> None:
    warehouse(project_dir / "warehouse.duckdb", 600)
    project(project_dir, hook(receiver), {"accounts": sync(mode="mirror")})
    with Project.load(project_dir, env=ENV) as p:
        parts = [p.run("accounts", shard=i, shards=3) for i in range(3)]
        assert [r["shard"] for r in parts] == [{"index": i, "count": 3} for i in range(3)]
        assert sum(r["delivered"]["created"] for r in parts) == 600
        assert all(r["status"] == "succeeded" and 150 < r["planned"]["added"] < 250
                   for r in parts)
        assert len(receiver.records("Account")) == 600
        assert sum(b["count"] for b in receiver.batches) == 600  # nothing sent twice
        # A second pass of one shard sees its own keys unchanged and nobody else's.
        again = p.run("accounts", shard=1, shards=3)
        assert again["planned"] == {**again["planned"], "added": 0, "removed": 0,
                                    "unchanged": parts[1]["planned"]["added"]}

        warehouse(project_dir / "warehouse.duckdb",
                  sql="delete from accounts where id < 30")
        gone = {str(i) for i in range(30)}
        mine = {k for k in gone if reference(k, 3) == 0}
        first = p.run("accounts", shard=0, shards=3)
        assert first["planned"]["removed"] == len(mine)  # the other shards' keys stay put
        assert first["delivered"]["deleted"] == len(mine)
        held = set(receiver.records("Account"))
        assert not held & mine and (gone - mine) <= held
        # The whole sync afterwards: only the other shards' removals are left, so no shard
        # left a snapshot of its part that the whole sync took for all of state.
        whole = p.run("accounts")
        assert whole["planned"]["removed"] == len(gone - mine)
        assert whole["planned"]["unchanged"] == 570
        assert set(receiver.records("Account")) == {str(i) for i in range(30, 600)}


def test_only_runs_that_may_touch_the_same_keys_exclude_each_other(tmp_path: Path) -> None:
    from tidegate.store import Store

    store = Store("sqlite:///state.db", tmp_path)
    common = {"sync": "s", "mode": "upsert", "destination": "d", "object": "o", "full": False}
    runs.start_run(store, **common, shard=Shard(0, 2))
    runs.start_run(store, **common, shard=Shard(1, 2))  # the other half: allowed
    for clash in (Shard(0, 2), Shard(1, 4), None):
        with pytest.raises(FatalError, match="already running"):
            runs.start_run(store, **common, shard=clash)
    store.close()


def test_the_cli_runs_one_shard(project_dir: Path, receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 200)
    project(project_dir, hook(receiver), {"accounts": sync()})
    plan = cli("plan", "accounts", "--shard", "1/2", "--project", str(project_dir), "--json",
               env=ENV)
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    ran = cli("run", "accounts", "--shard", "1/2", "--project", str(project_dir), "--json",
              env=ENV)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["shard"] == {"index": 1, "count": 2} == planned["shard"]
    assert summary["delivered"]["created"] == planned["planned"]["added"]
    assert set(receiver.records("Account")) == {str(i) for i in range(200) if
                                                reference(str(i), 2) == 1}
    bad = cli("run", "accounts", "--shard", "2/2", "--project", str(project_dir), env=ENV)
    assert bad.returncode == 2 and "shard 2 does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_held_shard_is_approved_as_that_shard(project_dir: Path,
                                                receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 400)
    project(project_dir, hook(receiver),
            {"accounts": sync(guardrails={"max_changed_pct": 10})})
    with Project.load(project_dir, env=ENV) as p:
        for i in range(2):
            p.run("accounts", shard=i, shards=2)
        warehouse(project_dir / "warehouse.duckdb", sql="update accounts set score = -1")
        held = p.run("accounts", shard=0, shards=2)
        assert held["status"] == "held"
        other = p.run("accounts", shard=1, shards=2, force=True)  # does not outdate shard 0
        approved = p.approve(held["run_id"])
        assert approved["status"] == "succeeded"
        assert approved["shard"] == {"index": 0, "count": 2}
        assert (approved["delivered"]["updated"] + other["delivered"]["updated"]) == 400
    assert {r["score"] for r in receiver.records("Account").values()} == {-1}


def test_two_shards_at_once_in_two_processes_lose_and_repeat_nothing(
    tmp_path: Path, postgres: object
) -> None:
    """Two processes, one PostgreSQL state store, one destination table, and compactions
    running all the while beside them: every row is written once and state ends whole."""
    make = postgres.create_database  # type: ignore[attr-defined]
    state_url, dest_url = make("shard_state"), make("shard_dest")
    with psycopg.connect(dest_url, autocommit=True) as conn:
        conn.execute(PG_TABLE)
    warehouse(tmp_path / "warehouse.duckdb", 4000)
    # Small batches, paced: each shard commits about 40 segments over three seconds, so
    # the two processes' commits interleave with each other and with the compactions.
    project(tmp_path, {"db": {"type": "postgres", "url": dest_url}},
            {"accounts": sync("db", object="public.accounts", batch_size=50,
                              requests_per_second=15)},
            state=state_url)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tidegate", "run", "accounts", "--shard", f"{i}/2",
         "--project", str(tmp_path), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    compactions = 0
    with Project.load(tmp_path) as p:
        while any(proc.poll() is None for proc in procs):
            state.compact(p.store, "accounts", memory_limit="256MB", spill=None)
            compactions += 1
            time.sleep(0.05)
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["delivered"]["created"] for r in results) == 4000
    assert write_log(dest_url) == {i: 1 for i in range(4000)}

    with Project.load(tmp_path) as p:
        records = [runs.get_run(p.store, r["run_id"]) for r in results]
        first, second = sorted(records, key=lambda r: r.started_at)
        assert first.finished_at is not None
        assert second.started_at < first.finished_at  # they really ran at the same time
        assert compactions > 10
        assert state.count(p.store, "accounts") == 4000
        after = p.run("accounts")  # the whole sync: nothing left to send
    assert after["planned"]["unchanged"] == 4000 and after["status"] == "succeeded"
    assert sum(after["delivered"].values()) == 0
    assert write_log(dest_url) == {i: 1 for i in range(4000)}
