"""State: per sync and key, the record the destination last acknowledged, and its hash.

The planner reads (key, hash) pairs as one Arrow table. Reading a million
rows out of SQLite costs seconds, so after each run the (key, hash) pairs are
also kept as a local Arrow snapshot, labelled with the state version it
equals; every transaction that changes a sync's state bumps that version, so a
snapshot that is not exactly the truth is never used. Writes happen per
acknowledged batch, in the same transaction as the run's progress and rejected
rows: a crash at any point leaves state equal to what the destination
acknowledged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from tidegate.plan import Outgoing
from tidegate.runs import now
from tidegate.store import Store, row_errors_table, runs_table, state_table, versions_table

STATE_SCHEMA = pa.schema([("key", pa.string()), ("hash", pa.int64())])
_FETCH_ROWS = 100_000


@dataclass
class Known:
    """The (key, hash) pairs acknowledged for a sync, and the state version they are."""

    table: pa.Table
    version: int
    from_snapshot: bool


def read_hashes(store: Store, sync: str, snapshots: Path | None = None) -> Known:
    """Every (key, hash) acknowledged for ``sync``, as an Arrow table.

    A local snapshot written after the last run is used when its version still
    matches the store's; otherwise the store is read.
    """
    version = current_version(store, sync)
    if snapshots is not None:
        cached = _load_snapshot(snapshots, store, sync, version)
        if cached is not None:
            return Known(cached, version, True)
    while True:  # the version must be the same before and after, or the read is mixed
        table = _read_store(store, sync)
        after = current_version(store, sync)
        if after == version:
            return Known(table, version, False)
        version = after


def current_version(store: Store, sync: str) -> int:
    with store.engine.begin() as conn:
        value = conn.execute(
            sa.select(versions_table.c.version).where(versions_table.c.sync == sync)
        ).scalar()
    return int(value or 0)


def _read_store(store: Store, sync: str) -> pa.Table:
    if store.dialect == "postgresql":
        fast = _read_postgres(store, sync)
        if fast is not None:
            return fast
    batches = []
    with store.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_FETCH_ROWS).execute(
            sa.select(state_table.c.key, state_table.c.hash).where(state_table.c.sync == sync)
        )
        for part in result.partitions(_FETCH_ROWS):
            keys, hashes = zip(*part, strict=True)
            batches.append(pa.record_batch(
                [pa.array(keys, pa.string()), pa.array(hashes, pa.int64())], schema=STATE_SCHEMA
            ))
        conn.rollback()
    return pa.Table.from_batches(batches, schema=STATE_SCHEMA)


def _read_postgres(store: Store, sync: str) -> pa.Table | None:
    """PostgreSQL's COPY through ADBC: Arrow without a Python object per row."""
    try:
        import adbc_driver_postgresql.dbapi as adbc
    except ImportError:
        return None
    uri = "postgresql://" + store.url.split("://", 1)[1]
    with adbc.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("select key, hash from tidegate_state where sync = $1", parameters=(sync,))
        table = cur.fetch_arrow_table()
    return table.cast(STATE_SCHEMA) if table.num_rows else STATE_SCHEMA.empty_table()


def _snapshot_path(snapshots: Path, store: Store, sync: str) -> Path:
    digest = hashlib.sha256(f"{store.identity}\n{sync}".encode()).hexdigest()[:24]
    return snapshots / f"{digest}.arrow"


def _load_snapshot(snapshots: Path, store: Store, sync: str, version: int) -> pa.Table | None:
    path = _snapshot_path(snapshots, store, sync)
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid):
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"version") != str(version).encode() or meta.get(b"sync") != sync.encode():
        return None
    return table.replace_schema_metadata(None)


def save_snapshot(
    snapshots: Path, store: Store, sync: str, version: int, table: pa.Table
) -> None:
    """Keep ``table`` as the (key, hash) state of ``sync`` at ``version``."""
    snapshots.mkdir(parents=True, exist_ok=True)
    path = _snapshot_path(snapshots, store, sync)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table = table.cast(STATE_SCHEMA).replace_schema_metadata(
        {"version": str(version), "sync": sync}
    )
    with pa.OSFile(str(temp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(temp, path)


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
        _bump(conn, store.dialect, sync)
        return int(result.rowcount or 0)


_BUMP = (
    "insert into tidegate_state_versions (sync, version) values ({p}, 1) "
    "on conflict (sync) do update set version = tidegate_state_versions.version + 1"
)


def _bump(conn: sa.Connection, dialect: str, sync: str) -> int:
    """Advance the sync's state version inside the caller's transaction."""
    conn.exec_driver_sql(_BUMP.format(p="?" if dialect == "sqlite" else "%s"), (sync,))
    value = conn.execute(
        sa.select(versions_table.c.version).where(versions_table.c.sync == sync)
    ).scalar_one()
    return int(value)


@dataclass
class Committed:
    delivered: dict[str, int]
    kept: pa.Table  # (key, hash) written
    dropped: pa.Array  # keys removed
    version: int


def commit_batch(
    store: Store,
    *,
    sync: str,
    mode: str,
    run_id: int,
    out: Outgoing,
    rejected: dict[str, str],
) -> Committed:
    """Advance state for the acknowledged records of ``out`` and record the rejected.

    Returns what this batch changed: delivered counts, the keys kept or dropped,
    and the state version after it.
    """
    keep: list[tuple[Any, ...]] = []
    kept_keys: list[str] = []
    kept_hashes: list[int | None] = []
    drop: list[str] = []
    delivered = {"created": 0, "updated": 0, "deleted": 0}
    op = out.batch.operation
    stamp = now()
    # Rows go to the driver as plain tuples: a million of them is a first sync's
    # normal size, and per-row dicts through the ORM layer cost seconds and memory.
    stored_at: Any = stamp if store.dialect == "postgresql" else stamp.strftime(
        "%Y-%m-%d %H:%M:%S.%f")
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
            keep.append((sync, key, h, record, run_id, stored_at))
            kept_keys.append(key)
            kept_hashes.append(h)
    with store.engine.begin() as conn:
        if keep:
            conn.exec_driver_sql(_UPSERT[store.dialect], keep)
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
        version = _bump(conn, store.dialect, sync)
    return Committed(
        delivered=delivered,
        kept=pa.table({"key": pa.array(kept_keys, pa.string()),
                       "hash": pa.array(kept_hashes, pa.int64())}),
        dropped=pa.array(drop, pa.string()),
        version=version,
    )


_UPSERT_TAIL = (
    "(sync, key, hash, record, run_id, updated_at) values ({p}, {p}, {p}, {p}, {p}, {p}) "
    "on conflict (sync, key) do update set hash = excluded.hash, record = excluded.record, "
    "run_id = excluded.run_id, updated_at = excluded.updated_at"
)
_UPSERT = {
    "sqlite": "insert into tidegate_state " + _UPSERT_TAIL.format(p="?"),
    "postgresql": "insert into tidegate_state " + _UPSERT_TAIL.format(p="%s"),
}


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
