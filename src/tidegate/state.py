"""State: per sync and key, the record the destination last acknowledged, and its hash.

The planner reads (key, hash) pairs as one Arrow table through ADBC, which
streams them without a Python object per row. Writes happen per acknowledged
batch, in the same transaction as the run's progress and rejected rows: a
crash at any point leaves state equal to what the destination acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tidegate.plan import Outgoing
from tidegate.runs import now
from tidegate.store import Store, row_errors_table, runs_table, state_table

STATE_SCHEMA = pa.schema([("key", pa.string()), ("hash", pa.int64())])


def read_hashes(store: Store, sync: str) -> pa.Table:
    """Every (key, hash) acknowledged for ``sync``, as an Arrow table."""
    query = "select key, hash from tidegate_state where sync = "
    try:
        if store.dialect == "sqlite":
            import adbc_driver_sqlite.dbapi as adbc
        else:
            import adbc_driver_postgresql.dbapi as adbc
    except ImportError:
        return _read_hashes_slow(store, sync)
    placeholder = "?" if store.dialect == "sqlite" else "$1"
    with adbc.connect(store.adbc_uri()) as conn, conn.cursor() as cur:
        cur.execute(query + placeholder, parameters=(sync,))
        table = cur.fetch_arrow_table()
    if table.num_rows == 0:
        return STATE_SCHEMA.empty_table()
    return table.cast(STATE_SCHEMA)


def _read_hashes_slow(store: Store, sync: str) -> pa.Table:
    with store.engine.begin() as conn:
        rows = conn.execute(
            sa.select(state_table.c.key, state_table.c.hash).where(state_table.c.sync == sync)
        ).fetchall()
    keys = [r[0] for r in rows]
    hashes = [r[1] for r in rows]
    return pa.table({"key": pa.array(keys, pa.string()), "hash": pa.array(hashes, pa.int64())})


def count(store: Store, sync: str) -> int:
    with store.engine.begin() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(state_table).where(
                    state_table.c.sync == sync
                )
            ).scalar_one()
        )


def records(store: Store, sync: str) -> dict[str, str | None]:
    """Every acknowledged record of ``sync`` as JSON text, by key (for tests and audits)."""
    with store.engine.begin() as conn:
        rows = conn.execute(
            sa.select(state_table.c.key, state_table.c.record).where(state_table.c.sync == sync)
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def reset(store: Store, sync: str) -> int:
    """Forget everything acknowledged for ``sync``; the next run sends every row."""
    with store.engine.begin() as conn:
        result = conn.execute(state_table.delete().where(state_table.c.sync == sync))
        return int(result.rowcount or 0)


def commit_batch(
    store: Store,
    *,
    sync: str,
    mode: str,
    run_id: int,
    out: Outgoing,
    rejected: dict[str, str],
) -> dict[str, int]:
    """Advance state for the acknowledged records of ``out`` and record the rejected.

    Returns the delivered counts this batch adds (created / updated / deleted).
    """
    keep: list[dict[str, Any]] = []
    drop: list[str] = []
    delivered = {"created": 0, "updated": 0, "deleted": 0}
    op = out.batch.operation
    stamp = now()
    for key, h, record, cat in zip(
        out.batch.keys, out.hashes, out.records, out.categories, strict=True
    ):
        if key in rejected:
            continue
        if op == "delete":
            delivered["deleted"] += 1
        elif cat == "added" and op != "update":
            delivered["created"] += 1
        else:
            delivered["updated"] += 1
        if op == "delete" and cat == "removed":
            drop.append(key)
        else:
            keep.append(
                {"sync": sync, "key": key, "hash": h, "record": record,
                 "run_id": run_id, "updated_at": stamp}
            )
    with store.engine.begin() as conn:
        if keep:
            conn.execute(_upsert(store.dialect), keep)
        for chunk in _chunks(drop, 500):
            conn.execute(
                state_table.delete().where(
                    state_table.c.sync == sync, state_table.c.key.in_(chunk)
                )
            )
        if rejected:
            _record_rejected(conn, sync, run_id, out, rejected)
        conn.execute(
            runs_table.update()
            .where(runs_table.c.id == run_id)
            .values(
                delivered_created=runs_table.c.delivered_created + delivered["created"],
                delivered_updated=runs_table.c.delivered_updated + delivered["updated"],
                delivered_deleted=runs_table.c.delivered_deleted + delivered["deleted"],
                rejected=runs_table.c.rejected + len(rejected),
                batches=runs_table.c.batches + 1,
                heartbeat_at=stamp,
            )
        )
    return delivered


def _upsert(dialect: str) -> Any:
    insert = postgresql.insert(state_table) if dialect == "postgresql" else sqlite.insert(
        state_table
    )
    return insert.on_conflict_do_update(
        index_elements=[state_table.c.sync, state_table.c.key],
        set_={
            "hash": insert.excluded.hash,
            "record": insert.excluded.record,
            "run_id": insert.excluded.run_id,
            "updated_at": insert.excluded.updated_at,
        },
    )


def _record_rejected(
    conn: sa.Connection, sync: str, run_id: int, out: Outgoing, rejected: dict[str, str]
) -> None:
    keys = list(rejected)
    attempts: dict[str, int] = {}
    for chunk in _chunks(keys, 500):
        rows = conn.execute(
            sa.select(row_errors_table.c.key, sa.func.max(row_errors_table.c.attempt))
            .where(
                row_errors_table.c.sync == sync,
                row_errors_table.c.kind == "rejected",
                row_errors_table.c.key.in_(chunk),
            )
            .group_by(row_errors_table.c.key)
        ).fetchall()
        attempts.update({r[0]: int(r[1]) for r in rows})
    record_of = dict(zip(out.batch.keys, out.records, strict=True))
    conn.execute(
        row_errors_table.insert(),
        [
            {"run_id": run_id, "sync": sync, "key": k, "kind": "rejected", "error": err,
             "attempt": attempts.get(k, 0) + 1, "record": record_of.get(k)}
            for k, err in rejected.items()
        ],
    )


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
