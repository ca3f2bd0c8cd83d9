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

from tidegate.plan import Outgoing
from tidegate.runs import now
from tidegate.store import Store, Tx

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
    with store.transaction() as tx:
        value = tx.scalar("select version from tidegate_state_versions where sync = ?", (sync,))
    return int(value or 0)


def _read_store(store: Store, sync: str) -> pa.Table:
    if store.dialect == "postgresql":
        fast = _read_postgres(store, sync)
        if fast is not None:
            return fast
    batches = []
    with store.transaction() as tx:
        cursor = tx.cursor("select key, hash from tidegate_state where sync = ?", (sync,))
        while part := cursor.fetchmany(_FETCH_ROWS):
            keys, hashes = zip(*part, strict=True)
            batches.append(pa.record_batch(
                [pa.array(keys, pa.string()), pa.array(hashes, pa.int64())], schema=STATE_SCHEMA
            ))
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
    with store.transaction() as tx:
        return int(tx.scalar("select count(*) from tidegate_state where sync = ?", (sync,)))


def records(store: Store, sync: str) -> dict[str, str | None]:
    """Every acknowledged record of ``sync`` as JSON text, by key (for tests and audits)."""
    with store.transaction() as tx:
        rows = tx.execute("select key, record from tidegate_state where sync = ?", (sync,))
    return {r[0]: r[1] for r in rows}


def reset(store: Store, sync: str) -> int:
    """Forget everything acknowledged for ``sync``; the next run sends every row."""
    with store.transaction() as tx:
        forgotten = int(tx.scalar("select count(*) from tidegate_state where sync = ?", (sync,)))
        tx.execute("delete from tidegate_state where sync = ?", (sync,))
        _bump(tx, sync)
        return forgotten


def _bump(tx: Tx, sync: str) -> int:
    """Advance the sync's state version inside the caller's transaction."""
    tx.execute(
        "insert into tidegate_state_versions (sync, version) values (?, 1) "
        "on conflict (sync) do update set version = tidegate_state_versions.version + 1",
        (sync,),
    )
    return int(tx.scalar("select version from tidegate_state_versions where sync = ?", (sync,)))


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
    stored_at = stamp.isoformat()
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
    with store.transaction() as tx:
        tx.executemany(_UPSERT, keep)
        tx.executemany("delete from tidegate_state where sync = ? and key = ?",
                       [(sync, key) for key in drop])
        if rejected:
            _record_rejected(tx, sync, run_id, out, rejected)
        tx.execute(
            "update tidegate_runs set delivered_created = delivered_created + ?, "
            "delivered_updated = delivered_updated + ?, delivered_deleted = delivered_deleted + ?, "
            "rejected = rejected + ?, batches = batches + 1, heartbeat_at = ? where id = ?",
            (delivered["created"], delivered["updated"], delivered["deleted"], len(rejected),
             stored_at, run_id),
        )
        version = _bump(tx, sync)
    return Committed(
        delivered=delivered,
        kept=pa.table({"key": pa.array(kept_keys, pa.string()),
                       "hash": pa.array(kept_hashes, pa.int64())}),
        dropped=pa.array(drop, pa.string()),
        version=version,
    )


_UPSERT = (
    "insert into tidegate_state (sync, key, hash, record, run_id, updated_at) "
    "values (?, ?, ?, ?, ?, ?) "
    "on conflict (sync, key) do update set hash = excluded.hash, record = excluded.record, "
    "run_id = excluded.run_id, updated_at = excluded.updated_at"
)


def _record_rejected(
    tx: Tx, sync: str, run_id: int, out: Outgoing, rejected: dict[str, str]
) -> None:
    keys = list(rejected)
    attempts: dict[str, int] = {}
    for chunk in _chunks(keys, 500):
        marks = ", ".join("?" * len(chunk))
        rows = tx.execute(
            "select key, max(attempt) from tidegate_row_errors "
            f"where sync = ? and kind = 'rejected' and key in ({marks}) group by key",
            (sync, *chunk),
        )
        attempts.update({r[0]: int(r[1]) for r in rows})
    record_of = dict(zip(out.batch.keys, out.records, strict=True))
    tx.executemany(
        "insert into tidegate_row_errors (run_id, sync, key, kind, error, attempt, record) "
        "values (?, ?, ?, 'rejected', ?, ?, ?)",
        [(run_id, sync, k, err, attempts.get(k, 0) + 1, record_of.get(k))
         for k, err in rejected.items()],
    )


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
