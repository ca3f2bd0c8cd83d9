"""The audit log: every change a run delivered — key, field, old value, new value, time.

Each commit of acknowledged batches also appends what they changed to
``tidegate_changes``, in the same transaction as state: one row per commit
holding, per record, its key, what happened to it (created, updated, deleted)
and the record as last delivered before, and apart from those the records as
delivered now — the very bytes of the state segment the commit writes, unless
fields are masked — as compressed Arrow (``segments.CODEC``). Reading a run's
changes splits each record into one row per field whose value differs.

Fields listed under ``audit.mask`` are kept as salted hashes (``sha256:`` and
16 hex digits): a change still shows as a change, but the value is not stored.
The salt is made once per state store and kept in ``tidegate_meta``.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tidegate import segments
from tidegate.store import Store, Tx

CHANGES_SCHEMA = pa.schema([("key", pa.string()), ("op", pa.string()), ("old", pa.string())])
_SALT = "audit_salt"


def salt(store: Store) -> str:
    """The store's audit salt, made on first use."""
    with store.transaction() as tx:
        found = tx.scalar("select value from tidegate_meta where name = ?", (_SALT,))
        if found is None:
            found = secrets.token_hex(16)
            tx.execute("insert into tidegate_meta (name, value) values (?, ?)", (_SALT, found))
    return str(found)


def append(
    tx: Tx, *, sync: str, run_id: int, stamp: str, changes: pa.Table,
    new_values: segments.Blob,
) -> None:
    """Record ``changes`` (``CHANGES_SCHEMA``) and, row for row, ``new_values`` (a
    ``segments.records_blob``) inside the caller's commit."""
    tx.execute(
        "insert into tidegate_changes (run_id, sync, rows, created_at, changes, records) "
        "values (?, ?, ?, ?, ?, ?)",
        (run_id, sync, changes.num_rows, stamp,
         segments.encode(changes if changes.schema == CHANGES_SCHEMA
                         else changes.cast(CHANGES_SCHEMA), segments.CODEC), new_values),
    )


def changes(
    store: Store, run_id: int, *, limit: int | None = None, offset: int = 0
) -> list[dict[str, Any]]:
    """The changes run ``run_id`` delivered, one per key and field, in key order."""
    table = change_table(store, run_id, limit=limit, offset=offset)
    return [
        {"key": json.loads(k), "field": f, "old": _value(o), "new": _value(n), "op": op,
         "at": at}
        for k, f, o, n, op, at in zip(*(c.to_pylist() for c in table.columns), strict=True)
    ]


def change_table(
    store: Store, run_id: int, *, limit: int | None = None, offset: int = 0
) -> pa.Table:
    """The changes of run ``run_id`` as Arrow: key, field, old, new (JSON text), op, at.

    One row per key and field whose value differs, in key order; a record that
    carried no fields (a delete of a key never written) has one row with no field.
    """
    source = _entries(store, run_id)
    con = duckdb.connect()
    try:
        con.register("c", source)
        return con.sql(
            """
            with fields as (
                select key, op, stamp, old, new, unnest(coalesce(nullif(list_distinct(
                    list_concat(coalesce(json_keys(old), []), coalesce(json_keys(new), []))),
                    []), [null])) as field
                from c)
            select key, field, (old -> field)::varchar as old, (new -> field)::varchar as new,
                   op, stamp as at
            from fields
            where field is null or (old -> field) is distinct from (new -> field)
            order by key, field limit ? offset ?
            """,
            params=[limit if limit is not None else 2**62, offset],
        ).to_arrow_table()
    finally:
        con.close()


def _value(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def records(store: Store, run_id: int) -> pa.Table:
    """What run ``run_id`` delivered, one row per record: key, op, old and new record."""
    return _entries(store, run_id).select(["key", "op", "old", "new"])


def _entries(store: Store, run_id: int) -> pa.Table:
    """The run's records as committed: key, op, old, new (null for a delete), stamp."""
    with store.transaction() as tx:
        rows = tx.execute(
            "select created_at, changes, records from tidegate_changes where run_id = ? "
            "order by id", (run_id,),
        )
    parts = []
    for at, blob, recs in rows:
        table = segments.decode(blob)
        new = pc.if_else(pc.equal(table["op"], pa.scalar("deleted")),
                         pa.nulls(table.num_rows, pa.string()), segments.decode(recs)["record"])
        parts.append(table.append_column("new", new).append_column(
            "stamp", pa.repeat(pa.scalar(at, pa.string()), table.num_rows)))
    if not parts:
        names = ("key", "op", "old", "new", "stamp")
        return pa.table({n: pa.array([], pa.string()) for n in names})
    return pa.concat_tables(parts)
