"""Reverting a run: the model that puts back what one run changed, and nothing else.

From the run's audit log, every key it updated or deleted gets back the record
it had before, and every key it created is deleted where the sync's mode deletes
(mirror). A key changed again since — state no longer holds what the run
delivered — is a conflict: reported, left alone. The revert is then planned
against the state of just those keys, so nothing else can be touched, and runs
like any run: judged by the guardrails, delivered in batches, committed with
state and written to the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from tidegate import audit, state
from tidegate.config import SyncConfig
from tidegate.errors import ConfigError, Problem
from tidegate.runs import RunRecord
from tidegate.store import Store

_REVERTIBLE = ("succeeded", "partial", "failed")


@dataclass
class Revert:
    """What reverting run ``of`` involves, before it is planned."""

    of: int
    restore: pa.Table  # key, old: records to put back
    state: pa.Table  # (key, hash) of the keys the revert may touch
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # key, why
    notes: list[str] = field(default_factory=list)

    def model(self, sync: SyncConfig, schema: pa.Schema) -> pa.RecordBatchReader:
        """The rows to restore, typed as the sync's model (``schema``) types them."""
        con = duckdb.connect()
        try:
            con.register("proto", schema.empty_table())
            types = {r[0]: str(r[1]) for r in con.execute("describe proto").fetchall()}
            con.register("r", self.restore)
            keys = sync.key_columns
            mapping = sync.field_map or {c: c for c in schema.names if c not in keys}
            cols = []
            for name, sql_type in types.items():
                if name in keys:
                    path = "$" if len(keys) == 1 else f"$.{_json_key(name)}"
                    value = f"json_extract_string(r.key, {_lit(path)})"
                elif name in mapping:
                    value = f"json_extract_string(r.old, {_lit('$.' + _json_key(mapping[name]))})"
                    if any(ch in sql_type for ch in "[(<") or sql_type.startswith(
                            ("STRUCT", "MAP")):
                        value = f"json_extract(r.old, {_lit('$.' + _json_key(mapping[name]))})"
                else:
                    value = "null"
                cols.append(f"cast({value} as {sql_type}) as {_q(name)}")
            table = con.sql(f"select {', '.join(cols)} from r").to_arrow_table()
        finally:
            con.close()
        return table.cast(schema).to_reader()


def prepare(store: Store, sync_name: str, sync: SyncConfig, run: RunRecord,
            masked: list[str]) -> Revert:
    """Read what ``run`` delivered and what state holds now; find the conflicts."""
    if run.sync != sync_name or run.status not in _REVERTIBLE:
        raise ConfigError(Problem(
            f"run {run.id} is {run.status}: it delivered nothing to revert",
            fix="revert a run that delivered changes (see `tidegate runs`)"))
    mapped = set((sync.field_map or {}).values())
    hidden = sorted(set(masked) & mapped) if mapped else sorted(masked)
    if hidden:
        raise ConfigError(Problem(
            f"run {run.id}'s old values of {', '.join(hidden)} are kept only as hashes "
            "(audit.mask), so they cannot be put back", key="audit.mask",
            fix="restore those fields from another copy; a revert needs the values"))
    changes = audit.records(store, run.id)
    if not changes.num_rows:
        raise ConfigError(Problem(f"run {run.id} delivered no changes", fix="nothing to do"))
    now = state.records_of(store, sync_name, changes["key"].combine_chunks())
    con = duckdb.connect()
    try:
        con.register("c", changes)
        con.register("now", now)
        con.register("known", state.read_hashes(store, sync_name).table)
        # A key is the run's still when state holds exactly what the run delivered
        # (or, for a key it deleted, holds nothing).
        con.execute(
            "create table judged as select c.key, c.op, c.old, "
            "case when c.op = 'deleted' then n.key is not null "
            "else n.record is distinct from c.new end as moved "
            "from c left join now n on n.key = c.key")
        conflicts = con.execute(
            "select key, op from judged where moved order by key").fetchall()
        restore = con.sql(
            "select key, old from judged where not moved and op in ('updated', 'deleted')"
        ).to_arrow_table()
        touched = con.sql(
            "select k.key, k.hash from known k join judged j on j.key = k.key "
            "where not j.moved").to_arrow_table()
        created = con.execute(
            "select count(*) from judged where not moved and op = 'created'").fetchall()[0][0]
    finally:
        con.close()
    revert = Revert(
        of=run.id, restore=restore, state=touched,
        conflicts=[(k, f"changed again since run {run.id} {op} it; left alone")
                   for k, op in conflicts])
    if conflicts:
        revert.notes.append(f"{len(conflicts):,} key(s) changed again since run {run.id} "
                            "and were left alone (see `tidegate show`)")
    if created and sync.mode != "mirror":
        revert.notes.append(f"{created:,} record(s) run {run.id} created stay: {sync.mode} "
                            "mode does not delete")
    return revert


def _json_key(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
