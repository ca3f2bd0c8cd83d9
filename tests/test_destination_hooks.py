"""The planner's destination hooks: ``invalid_values`` (screen), ``record_bytes`` (measure)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tidegate.config import SyncConfig
from tidegate.plan import Planner
from tidegate.state import STATE_SCHEMA


def sync(mode: str) -> SyncConfig:
    return SyncConfig.model_validate(
        {"source": "w", "table": "t", "primary_key": "id", "destination": "d",
         "object": "o", "mode": mode, "fields": {"score": "Score"}})


def model(scores: dict[int, int]) -> pa.RecordBatchReader:
    return pa.table({"id": pa.array(list(scores), pa.int64()),
                     "score": pa.array(list(scores.values()), pa.int64())}).to_reader()


def sent(plan: Any) -> dict[str, str]:
    return {k: out.batch.operation for out in plan.outgoing(1000) for k in out.batch.keys}


def test_rows_a_destination_cannot_take_are_invalid_and_never_sent() -> None:
    seen: list[pa.Table] = []

    def screen(table: pa.Table) -> pa.Array:
        seen.append(table)
        score = table.column("Score")
        return pc.if_else(pc.greater(score, 100), pa.scalar("Score is over 100"),
                          pa.scalar(None, pa.string()))

    first = Planner("s", sync("mirror")).plan(model({1: 5, 2: 6, 3: 7}),
                                             STATE_SCHEMA.empty_table())
    state = pa.table({"key": pa.array(list(sent(first)), pa.string()),
                      "hash": pc.cast(pa.concat_arrays([o.meta["__hash"].combine_chunks()
                                                        for o in first.outgoing(1000)]),
                                      pa.int64())})
    first.close()
    # 1 unchanged, 2 changed to a value the destination cannot take, 3 gone, 4 and 5 new.
    plan = Planner("s", sync("mirror"), screen=screen).plan(
        model({1: 5, 2: 600, 4: 8, 5: 900}), state)
    try:
        assert plan.counts.as_dict() == {"added": 1, "changed": 0, "removed": 1,
                                         "unchanged": 1, "invalid": 2}
        assert plan.invalid_reasons == {"Score is over 100": 2}
        assert sent(plan) == {"4": "upsert", "3": "delete"}  # the invalid key 2 is not removed
        assert sorted(k for k, *_ in plan.invalid_rows()) == ["2", "5"]
        # Only rows sent with values are screened: not the unchanged, not the deletes.
        screened = pa.concat_tables(seen)
        assert sorted(screened.column("id").to_pylist()) == [2, 4, 5]
        assert screened.column_names == ["id", "Score"]
    finally:
        plan.close()


def test_a_delete_only_plan_asks_nothing() -> None:
    def screen(table: pa.Table) -> pa.Array:
        raise AssertionError("deletes carry no values to check")

    plan = Planner("s", sync("delete"), screen=screen).plan(model({1: 500}),
                                                            STATE_SCHEMA.empty_table())
    assert sent(plan) == {"1": "delete"}
    plan.close()


def test_batches_are_cut_by_the_destinations_own_record_sizes() -> None:
    def measure(table: pa.Table) -> pa.Array:
        # A destination whose records cost their score in bytes.
        return table.column("Score").combine_chunks()

    scores = {i: 10 + i % 7 for i in range(200)}
    plan = Planner("s", sync("upsert")).plan(model(scores), STATE_SCHEMA.empty_table())
    try:
        batches = list(plan.outgoing(10_000, 100, measure=measure))
        sizes = [sum(scores[json.loads(k)] for k in out.batch.keys) for out in batches]
        assert all(s <= 100 for s in sizes) and sum(len(o.batch) for o in batches) == 200
        # Each batch took records until the next would not fit.
        for out, nxt in itertools.pairwise(batches):
            first_next = scores[json.loads(nxt.batch.keys[0])]
            assert sum(scores[json.loads(k)] for k in out.batch.keys) + first_next > 100
        # Without a measure the JSON estimate applies, which is another cut.
        assert len(list(plan.outgoing(10_000, 100))) != len(batches)
    finally:
        plan.close()
