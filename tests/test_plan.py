"""The planner against a plain-Python reference, over random models and states."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate import plandb
from tidegate.config import SyncConfig
from tidegate.plan import SENDS, MappingProblem, Planner
from tidegate.state import STATE_SCHEMA

MODES = ["insert", "update", "upsert", "delete", "mirror"]


def sync(mode: str = "upsert", **extra: Any) -> SyncConfig:
    return SyncConfig.model_validate(
        {"source": "w", "table": "t", "primary_key": "id", "destination": "d",
         "object": "o", "mode": mode, **extra}
    )


def model(rows: list[tuple[Any, ...]]) -> pa.RecordBatchReader:
    table = pa.table({
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "name": pa.array([r[1] for r in rows], pa.string()),
        "score": pa.array([r[2] for r in rows], pa.int32()),
    })
    return table.to_reader()


def acknowledged(plan_rows: list[tuple[Any, ...]], mode: str = "upsert") -> pa.Table:
    """The state a complete, fully accepted run over ``plan_rows`` leaves behind."""
    planner = Planner("s", sync(mode))
    plan = planner.plan(model(plan_rows), STATE_SCHEMA.empty_table())
    keys, hashes = [], []
    for out in plan.outgoing(1000):
        keys += out.batch.keys
        hashes += out.meta["__hash"].to_pylist()
    plan.close()
    return pa.table({"key": pa.array(keys, pa.string()), "hash": pa.array(hashes, pa.int64())})


rows_strategy = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 40)), st.sampled_from(["a", "b", None]),
              st.integers(0, 3)),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=rows_strategy, after=rows_strategy, mode=st.sampled_from(MODES))
def test_plan_matches_a_python_reference(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], mode: str
) -> None:
    state = acknowledged(_valid(before))
    plan = Planner("s", sync(mode)).plan(model(after), state)
    try:
        ids = [r[0] for r in after]
        valid = {r[0]: r for r in after if r[0] is not None and ids.count(r[0]) == 1}
        old = {r[0]: r for r in _valid(before)}
        added = {k for k in valid if k not in old}
        changed = {k for k in valid if k in old and old[k][1:] != valid[k][1:]}
        present = {r[0] for r in after if r[0] is not None}
        removed = {k for k in old if k not in present}
        c = plan.counts
        assert (c.added, c.changed, c.removed) == (len(added), len(changed), len(removed))
        assert c.invalid == len(after) - len(valid)
        assert c.unchanged == len(valid) - len(added) - len(changed)
        sent: dict[str, set[int]] = {}
        for out in plan.outgoing(7, 400):
            assert len(out.batch) <= 7
            assert len({out.batch.operation}) == 1
            for key in out.batch.keys:
                sent.setdefault(out.batch.operation, set()).add(json.loads(key))
        by_cat = {"added": added, "changed": changed, "removed": removed}
        expected: dict[str, set[int]] = {}
        for cat, op in SENDS[mode].items():  # type: ignore[index]
            if by_cat[cat]:
                expected.setdefault(op, set()).update(by_cat[cat])
        assert sent == expected
    finally:
        plan.close()


def _valid(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    ids = [r[0] for r in rows]
    return [r for r in rows if r[0] is not None and ids.count(r[0]) == 1]


def test_a_type_widening_upstream_is_not_a_change() -> None:
    rows = [(1, "a", 5), (2, "b", 6)]
    state = acknowledged(rows)
    wider = pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["a", "b"],
                      "score": pa.array([5, 6], pa.int64())})
    plan = Planner("s", sync()).plan(wider.to_reader(), state)
    assert plan.counts.unchanged == 2 and plan.counts.changed == 0
    plan.close()


def test_renaming_a_destination_field_resends_everything() -> None:
    rows = [(1, "a", 5), (2, "b", 6)]
    state = acknowledged(rows)
    plan = Planner("s", sync(fields={"name": "Name", "score": "Score"})).plan(model(rows), state)
    assert plan.counts.changed == 2
    plan.close()


def test_composite_keys_round_trip_to_deletes() -> None:
    s = sync("mirror", primary_key=["region", "id"])
    first = pa.table({"region": ["eu", "us", "eu"], "id": [1, 1, 2], "v": [1, 2, 3]})
    plan = Planner("s", s).plan(first.to_reader(), STATE_SCHEMA.empty_table())
    outs = list(plan.outgoing(10))
    assert [json.loads(k) for k in outs[0].batch.keys] == [
        {"region": "eu", "id": 1}, {"region": "eu", "id": 2}, {"region": "us", "id": 1}]
    state = pa.table({"key": [k for o in outs for k in o.batch.keys],
                      "hash": pa.concat_arrays([o.meta["__hash"].combine_chunks() for o in outs])})
    plan.close()
    plan = Planner("s", s).plan(first.slice(0, 1).to_reader(), state)
    [delete] = list(plan.outgoing(10))
    assert delete.batch.operation == "delete"
    assert delete.batch.table.select(["region", "id"]).to_pylist() == [
        {"region": "eu", "id": 2}, {"region": "us", "id": 1}]
    plan.close()


def test_batches_respect_the_byte_limit() -> None:
    rows = [(i, "x" * 100, i) for i in range(50)]
    plan = Planner("s", sync()).plan(model(rows), STATE_SCHEMA.empty_table())
    outs = list(plan.outgoing(1000, max_bytes=1000))
    plan.close()
    for out in outs:
        size = sum(len(k) + len(f) + 24 for k, f in zip(out.batch.keys, out.batch.fields_json,
                                                         strict=True))
        assert size <= 1000
    assert sum(len(o.batch) for o in outs) == 50


def test_json_batches_read_their_records_from_documents_made_per_chunk() -> None:
    """A JSON-only destination's batches carry documents made for many batches at once;
    their bytes are exactly what joining each batch's keys and fields makes, across the
    planner's read chunks (a batch can span two) and for deletes."""
    before = [(i, "a", i % 4) for i in range(30_000)]
    after = [(i, "b" if i % 3 else "a", i % 4) for i in range(5_000, 41_000)]
    plan = Planner("s", sync("mirror")).plan(model(after), acknowledged(before, "mirror"))
    seen: dict[str, int] = {}
    for out in plan.outgoing(700, typed=False):
        batch = out.batch
        assert batch.documents is not None
        joined = batch.joined_documents()
        assert joined == dataclasses.replace(batch, documents=None).joined_documents()
        records = json.loads(b"[" + joined + b"]")
        assert [json.dumps(r["key"]) for r in records] == batch.keys
        assert all(("fields" in r) == (batch.operation != "delete") for r in records)
        seen[batch.operation] = seen.get(batch.operation, 0) + len(records)
    plan.close()
    old, new = {r[0]: r for r in before}, {r[0]: r for r in after}
    assert seen == {"upsert": len(new.keys() - old.keys()),
                    "update": sum(1 for k in new.keys() & old.keys() if new[k] != old[k]),
                    "delete": len(old.keys() - new.keys())}


def test_batch_ids_are_stable_for_the_same_content_and_differ_otherwise() -> None:
    rows = [(i, "a", i) for i in range(30)]
    ids = []
    for score_shift in (0, 0, 1):
        data = [(i, n, s + score_shift) for i, n, s in rows]
        plan = Planner("s", sync()).plan(model(data), STATE_SCHEMA.empty_table())
        ids.append([o.batch.id for o in plan.outgoing(10)])
        plan.close()
    assert ids[0] == ids[1]
    assert not set(ids[0]) & set(ids[2])


def test_a_missing_key_column_names_the_columns_there_are() -> None:
    with pytest.raises(MappingProblem) as info:
        Planner("s", sync(primary_key="account_id")).plan(model([]), STATE_SCHEMA.empty_table())
    assert info.value.key == "primary_key"
    assert "id, name, score" in info.value.fix


def test_an_empty_model_plans_everything_known_as_removed() -> None:
    state = acknowledged([(1, "a", 1), (2, "b", 2)])
    empty = pa.table({"id": pa.array([], pa.int64()), "name": pa.array([], pa.string()),
                      "score": pa.array([], pa.int32())})
    plan = Planner("s", sync("mirror")).plan(empty.to_reader(), state)
    assert plan.counts.removed == 2
    [out] = list(plan.outgoing(10))
    assert out.batch.operation == "delete"
    assert out.batch.table.column("id").to_pylist() == [1, 2]
    plan.close()


def _closed(con: duckdb.DuckDBPyConnection, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            con.execute("select 1")
        except duckdb.ConnectionException:
            return True
        time.sleep(0.01)
    return False


def test_closing_a_plan_removes_its_work_folder_whether_it_spilled_or_not(
        tmp_path: Path) -> None:
    small = Planner("s", sync(), workdir=tmp_path).plan(model([(1, "a", 1)]),
                                                        STATE_SCHEMA.empty_table())
    folder = small._workdir
    assert folder is not None and folder.exists()
    small.close()  # nothing spilled: the database closes on another thread
    assert not folder.exists()
    assert _closed(small.con)

    n = 400_000
    wide = pa.table({"id": pa.array(range(n), pa.int64()),
                     "name": pa.array([f"{'x' * 60}{i}" for i in range(n)]),
                     "score": pa.array([i % 7 for i in range(n)], pa.int32())})
    # Keyed by the wide column: checking keys for duplicates must spill too.
    big = Planner("s", sync(primary_key="name"), workdir=tmp_path, memory_limit="24MB").plan(
        wide.to_reader(), STATE_SCHEMA.empty_table())
    assert big.counts.added == n and not big.counts.invalid
    folder = big._workdir
    assert folder is not None and any((folder / "spill").iterdir())  # past the limit
    big.close()
    assert not folder.exists()
    with pytest.raises(duckdb.ConnectionException):  # closed before close() returned
        big.con.execute("select 1")


def test_a_database_opened_ahead_is_the_next_plans_and_only_one_waits() -> None:
    plandb.open_ahead()
    plandb.open_ahead()  # one is already being made: nothing more
    assert len(plandb._ahead) == 1
    first = plandb.connect()
    assert not plandb._ahead
    assert first.execute("select count(*) from duckdb_tables()").fetchall() == [(0,)]
    second = plandb.connect()  # none waits: made on the spot
    assert second is not first
    first.close()
    second.close()
