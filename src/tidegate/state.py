"""State: per sync and key, the record the destination last acknowledged, and its hash.

State is a log of segments (see ``segments``). Each acknowledged batch
appends one — its keys, hashes and records — in the same transaction as the
run's progress and rejected rows, so a crash at any point leaves state equal
to what the destination acknowledged, and committing a batch costs one insert
however many records it holds. A key's truth is its entry in the latest
segment that has it; a removed key leaves an entry marked not live. When a
sync's segments grow many or hold mostly superseded entries, ``compact``
rewrites them as a few large ones.

The planner reads (key, hash) pairs as one Arrow table. After each run they
are also kept as a local Arrow snapshot, labelled with the state version it
equals; every transaction that changes a sync's state bumps that version, so a
snapshot that is not exactly the truth is never used.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tidegate import audit, segments
from tidegate.destinations.base import _whole
from tidegate.plan import Outgoing
from tidegate.runs import now
from tidegate.store import Store, Tx

STATE_SCHEMA = pa.schema([("key", pa.string()), ("hash", pa.int64())])
_PAGE = 256  # segments per read: bounds memory while reading a large state
# When a sync's state is compacted (at the end of a run): when most of what is
# stored is superseded; when many segments hold few rows each (a small sync
# that changes a little every hour); or when segments are very many. A first
# run of ten million rows in 1,000-record batches meets none of these.
_SMALL_SEGMENTS, _SMALL_ROWS = 64, 500
_MAX_SEGMENTS = 16_384


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
    """The latest (key, hash) of every live key, from the sync's segments."""
    parts = [
        segments.decode(blob).append_column("seq", _constant(seq, rows))
        for _, seq, rows, blob in _segment_pages(store, sync, "keys")
    ]
    if not parts:
        return STATE_SCHEMA.empty_table()
    return _latest(pa.concat_tables(parts), ["hash"])


def _segment_pages(store: Store, sync: str, columns: str) -> Iterator[tuple[Any, ...]]:
    """(id, seq, rows, *columns) of each segment, a page at a time so memory stays bounded.

    Pages are separate transactions; a caller that must not see a mix of two
    states compares the state version before and after, which every change
    (compaction included) bumps.
    """
    after = 0
    while True:
        with store.transaction() as tx:
            page = tx.execute(
                f"select id, seq, rows, {columns} from tidegate_state_segments "
                "where sync = ? and id > ? order by id limit ?",
                (sync, after, _PAGE),
            )
        for row in page:
            yield (int(row[0]), int(row[1]), int(row[2]), *row[3:])
        if len(page) < _PAGE:
            return
        after = int(page[-1][0])


def _constant(value: int, rows: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.int64()), rows)


def _all_true(rows: int) -> pa.Array:
    return pa.repeat(_TRUE, rows)


# Compute functions get Arrow scalars: given a Python value, pyarrow looks for
# optional converters (an import attempt) on every call.
_TRUE = pa.scalar(True, pa.bool_())
_ADDED = pa.scalar("added", pa.string())
_REMOVED = pa.scalar("removed", pa.string())
_CREATED, _UPDATED, _DELETED = (pa.scalar(w, pa.string())
                                for w in ("created", "updated", "deleted"))
_OPS = {op: pa.scalar(op, pa.string()) for op in ("insert", "update", "upsert", "delete")}
_NO_KEYS = pa.array([], pa.string())


def _latest(table: pa.Table, columns: list[str]) -> pa.Table:
    """Per key, ``columns`` from its latest segment; keys whose latest entry is removed go."""
    if pc.count_distinct(table["key"]).as_py() == table.num_rows:
        # Each key once (state after compaction, or a few keys asked for): nothing to pick.
        return table.filter(table["live"]).select(["key", *columns])
    con = duckdb.connect()
    try:
        con.register("entries", table)
        picked = ", ".join(f"arg_max({c}, seq) as {c}" for c in columns)
        return con.sql(
            f"select key, {picked} from entries group by key having arg_max(live, seq)"
        ).to_arrow_table()
    finally:
        con.close()


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
    """How many keys state holds for ``sync``."""
    return int(_read_store(store, sync).num_rows)


def records(store: Store, sync: str) -> dict[str, str | None]:
    """Every acknowledged record of ``sync`` as JSON text, by key (for tests and audits)."""
    while True:
        version = current_version(store, sync)
        parts = []
        for _, seq, rows, keys, recs in _segment_pages(store, sync, "keys, records"):
            table = segments.decode(keys).append_column("record", segments.decode(recs)["record"])
            parts.append(table.append_column("seq", _constant(seq, rows)))
        if current_version(store, sync) == version:
            break
    if not parts:
        return {}
    latest = _latest(pa.concat_tables(parts), ["record"])
    return dict(zip(latest["key"].to_pylist(), latest["record"].to_pylist(), strict=True))


def records_of(store: Store, sync: str, keys: pa.Array) -> pa.Table:
    """(key, record) last acknowledged for each of ``keys`` that state holds.

    Only segments holding one of ``keys`` have their records decoded, so memory
    follows how many keys are asked for, not how large the state is.
    """
    wanted = pa.chunked_array([keys], pa.string()).combine_chunks()
    empty = pa.table({"key": pa.array([], pa.string()), "record": pa.array([], pa.string())})
    if not len(wanted):
        return empty
    while True:
        version = current_version(store, sync)
        found_in: list[tuple[int, int, pa.Table]] = [
            (seg_id, seq, segments.decode(blob))
            for seg_id, seq, _, blob in _segment_pages(store, sync, "keys")
        ]
        # One membership test over every segment's keys, then rows grouped by segment.
        starts = list(itertools.accumulate((t.num_rows for _, _, t in found_in), initial=0))
        every = pa.chunked_array([c for _, _, t in found_in for c in t["key"].chunks],
                                 pa.string())
        hits: dict[int, list[int]] = {}
        for i in pc.indices_nonzero(pc.is_in(every, value_set=wanted)).to_pylist():
            at = bisect.bisect_right(starts, i) - 1
            hits.setdefault(at, []).append(i - starts[at])
        parts = []
        ids = {found_in[at][0]: at for at in hits}
        for chunk in _chunks(list(ids), 500):
            with store.transaction() as tx:
                rows = tx.execute(
                    "select id, records from tidegate_state_segments "
                    f"where id in ({', '.join('?' * len(chunk))})", chunk)
            for seg_id, recs in rows:
                at = ids[int(seg_id)]
                _, seq, table = found_in[at]
                take = pa.array(hits[at], pa.int64())
                part = table.take(take).append_column(
                    "record", segments.decode(recs)["record"].take(take))
                parts.append(part.append_column("seq", _constant(seq, len(take))))
        if current_version(store, sync) == version:  # else compacted or changed meanwhile
            break
    if not parts:
        return empty
    return _latest(pa.concat_tables(parts), ["record"])


def reset(store: Store, sync: str) -> int:
    """Forget everything acknowledged for ``sync``; the next run sends every row."""
    forgotten = count(store, sync)
    with store.transaction() as tx:
        tx.execute("delete from tidegate_state_segments where sync = ?", (sync,))
        _bump(tx, sync)
    return forgotten


# One statement, not two, in every commit; SQLite has RETURNING since 3.35.
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


def _bump(tx: Tx, sync: str, *, returning: bool = _RETURNING) -> int:
    """Advance the sync's state version inside the caller's transaction."""
    bump = ("insert into tidegate_state_versions (sync, version) values (?, 1) "
            "on conflict (sync) do update set version = tidegate_state_versions.version + 1")
    if returning or tx.dialect != "sqlite":
        return int(tx.scalar(bump + " returning version", (sync,)))
    tx.execute(bump, (sync,))
    return int(tx.scalar("select version from tidegate_state_versions where sync = ?", (sync,)))


@dataclass
class Committed:
    delivered: dict[str, int]
    kept: pa.Table  # (key, hash) written
    dropped: pa.Array  # keys removed
    version: int


def commit_batches(
    store: Store,
    *,
    sync: str,
    run_id: int,
    acknowledged: Sequence[tuple[Outgoing, dict[str, str]]],
) -> Committed:
    """Advance state for the acknowledged records of each batch and record the rejected.

    ``acknowledged`` pairs each batch with its rejected keys (key → reason).
    The accepted records become one segment; with the run's progress, the
    rejected rows and the state version, that is one transaction. Returns what
    changed: delivered counts, the keys kept or dropped, and the state version
    after it.
    """
    # One table for the whole group, so each step below is one Arrow call, not one a
    # batch: each call lets go of the interpreter lock, and on a busy run getting it
    # back costs more than the call.
    metas = []
    for out, rejected in acknowledged:
        meta = out.meta
        if rejected:
            refused = pa.array(list(rejected), pa.string())
            meta = meta.filter(pc.invert(pc.is_in(meta["__key"], value_set=refused)))
        metas.append(meta)
    group = _group_table(acknowledged[0][0], metas)
    rows = group.num_rows
    categories = group["cat"]
    operations = {out.batch.operation for out, _ in acknowledged}
    live: pa.Array | None = None  # None: every key stays
    if operations == {"delete"}:
        what: pa.Array | pa.ChunkedArray = pa.repeat(_DELETED, rows)
        live = _whole(pc.not_equal(categories, _REMOVED))
        created, deleted = 0, rows
    elif operations == {"update"}:  # an update never creates
        what, created, deleted = pa.repeat(_UPDATED, rows), 0, 0
    elif "delete" not in operations and "update" not in operations:
        # Inserts and upserts: a key added to the model is created.
        is_new = pc.equal(categories, _ADDED)
        created, deleted = int(pc.sum(is_new).as_py() or 0), 0
        what = (pa.repeat(_CREATED if created else _UPDATED, rows) if created in (0, rows)
                else pc.if_else(is_new, _CREATED, _UPDATED))
    else:  # a mirror's upserts and deletes, or any other mix
        op = pa.concat_arrays([pa.repeat(_OPS[out.batch.operation], meta.num_rows)
                               for (out, _), meta in zip(acknowledged, metas, strict=True)])
        deleting = pc.equal(op, _OPS["delete"])
        deleted = int(pc.sum(deleting).as_py() or 0)
        is_new = pc.and_(pc.equal(categories, _ADDED), pc.not_equal(op, _OPS["update"]))
        is_new = pc.and_(is_new, pc.invert(deleting))
        live = _whole(pc.invert(pc.and_(deleting, pc.equal(categories, _REMOVED))))
        what = pc.if_else(deleting, _DELETED, pc.if_else(is_new, _CREATED, _UPDATED))
        created = int(pc.sum(is_new).as_py() or 0)
    delivered = {"created": created, "updated": rows - created - deleted, "deleted": deleted}
    key, hash_ = _whole(group["key"]), _whole(group["hash"])
    refused_total = sum(len(rejected) for _, rejected in acknowledged)
    stamp = now().isoformat()
    records = segments.records_blob(_whole(group["fields"])) if rows else b""
    # The audit log's new values are the records state keeps, unless fields are masked:
    # then the same bytes serve both, compressed once.
    new_values = (segments.records_blob(_whole(group["__audit_new"]))
                  if "__audit_new" in group.column_names else records)
    changes = pa.table({"key": key, "op": what, "old": group["old"]})
    with store.transaction() as tx:
        version = _bump(tx, sync)
        if rows:
            tx.execute(
                "insert into tidegate_state_segments (sync, seq, run_id, rows, created_at, "
                "keys, records) values (?, ?, ?, ?, ?, ?, ?)",
                (sync, version, run_id, rows, stamp,
                 segments.keys_blob(key, hash_, _all_true(rows) if live is None else live),
                 records),
            )
            audit.append(tx, sync=sync, run_id=run_id, stamp=stamp, changes=changes,
                         new_values=new_values)
        for out, rejected in acknowledged:
            if rejected:
                _record_rejected(tx, sync, run_id, out, rejected)
        tx.execute(
            "update tidegate_runs set delivered_created = delivered_created + ?, "
            "delivered_updated = delivered_updated + ?, delivered_deleted = delivered_deleted + ?, "
            "rejected = rejected + ?, batches = batches + ?, heartbeat_at = ? where id = ?",
            (delivered["created"], delivered["updated"], delivered["deleted"], refused_total,
             len(acknowledged), stamp, run_id),
        )
    kept = pa.table({"key": key, "hash": hash_})
    if live is None:
        return Committed(delivered=delivered, kept=kept, dropped=_NO_KEYS, version=version)
    return Committed(delivered=delivered, kept=kept.filter(live),
                     dropped=key.filter(pc.invert(live)), version=version)


def _group_table(first: Outgoing, metas: list[pa.Table]) -> pa.Table:
    """key, hash, cat, fields, old (and __audit_new when fields are masked) of a group
    of batches of one plan, in one table."""
    group = pa.concat_tables(metas).combine_chunks()
    audit_new = ["__audit_new"] if "__audit_new" in group.column_names else []
    return pa.table([*(group[c] for c in ("__key", "__hash", "__cat", "__fields")),
                     first.audit_old(group), *(group[c] for c in audit_new)],
                    names=["key", "hash", "cat", "fields", "old", *audit_new])


def compaction_due(store: Store, sync: str, live: int) -> bool:
    """Whether ``sync``'s segments have grown many, or hold mostly superseded entries."""
    with store.transaction() as tx:
        found = tx.execute(
            "select count(*), coalesce(sum(rows), 0) from tidegate_state_segments where sync = ?",
            (sync,),
        )
    segs, stored = (int(v) for v in found[0])
    return (
        stored > 2 * live + segments.SEGMENT_ROWS
        or (segs > _SMALL_SEGMENTS and stored < _SMALL_ROWS * segs)
        or segs > _MAX_SEGMENTS
    )


def compact(
    store: Store, sync: str, *, memory_limit: str, spill: Path | None
) -> tuple[int, int]:
    """Rewrite ``sync``'s segments as few large ones holding only the live entries.

    One transaction: a crash leaves the old segments. DuckDB does the merge, so
    memory stays within ``memory_limit`` (spilling to ``spill``) however large
    the state. The content is unchanged, but the version is bumped so that a
    reader paging through the old segments notices. Returns the number of
    segments written and the new version.
    """
    con = duckdb.connect()
    try:
        con.execute(f"set memory_limit = '{memory_limit}'")
        if spill is not None:
            con.execute(f"set temp_directory = '{spill}'")
        con.execute("set preserve_insertion_order = false")
        con.execute("create table entries (key varchar, hash bigint, live boolean, "
                    "record varchar, seq bigint)")
        with store.transaction() as tx:
            tx.lock(f"tidegate-state:{sync}")
            top, seq_max, after = 0, 0, 0
            while True:
                page = tx.execute(
                    "select id, seq, rows, keys, records from tidegate_state_segments "
                    "where sync = ? and id > ? order by id limit ?", (sync, after, _PAGE))
                for seg_id, seq, rows, keys, recs in page:
                    part = segments.decode(keys)
                    part = part.append_column("record", segments.decode(recs)["record"])
                    part = part.append_column("seq", _constant(int(seq), int(rows)))
                    con.register("part", part)
                    con.execute("insert into entries select key, hash, live, record, seq from part")
                    con.unregister("part")
                    top, seq_max = max(top, int(seg_id)), max(seq_max, int(seq))
                if len(page) < _PAGE:
                    break
                after = int(page[-1][0])
            tx.execute("delete from tidegate_state_segments where sync = ? and id <= ?",
                       (sync, top))
            reader = con.sql(
                "select key, arg_max(hash, seq) as hash, arg_max(record, seq) as record "
                "from entries group by key having arg_max(live, seq)"
            ).to_arrow_reader(segments.SEGMENT_ROWS)
            written = 0
            stamp = now().isoformat()
            for chunk in _rebatched(reader, segments.SEGMENT_ROWS):
                n = chunk.num_rows
                tx.execute(
                    "insert into tidegate_state_segments (sync, seq, run_id, rows, created_at, "
                    "keys, records) values (?, ?, null, ?, ?, ?, ?)",
                    (sync, seq_max, n, stamp,
                     segments.keys_blob(chunk.column("key"), chunk.column("hash"),
                                        _all_true(n)),
                     segments.records_blob(chunk.column("record"))),
                )
                written += 1
            version = _bump(tx, sync)
        return written, version
    finally:
        con.close()


def _rebatched(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of ``rows`` (the last may be short): DuckDB hands out smaller vectors."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        pending.append(batch)
        held += batch.num_rows
        if held >= rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield from table.slice(0, rows).to_batches(max_chunksize=rows)
            rest = table.slice(rows)
            pending, held = ([*rest.to_batches()], rest.num_rows)
    if held:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches(
            max_chunksize=rows)


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
    record_of = dict(zip(out.batch.keys, out.meta["__fields"].to_pylist(), strict=True))
    tx.executemany(
        "insert into tidegate_row_errors (run_id, sync, key, kind, error, attempt, record) "
        "values (?, ?, ?, 'rejected', ?, ?, ?)",
        [(run_id, sync, k, err, attempts.get(k, 0) + 1, record_of.get(k))
         for k, err in rejected.items()],
    )


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
