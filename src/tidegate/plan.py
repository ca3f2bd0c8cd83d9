"""The planner: map fields, validate keys, hash, diff against state, decide what to send.

Everything here runs as SQL in DuckDB over Arrow: the model streams into a
table once, each row's mapped values are hashed there, and the diff against
the state's (key, hash) pairs is a join. Python only ever sees the rows that
will be sent (``Plan.outgoing``) and the invalid ones.

Tables of one plan (DuckDB, temporary):

    m      every model row: __key (JSON text), __invalid (reason or NULL),
           __hash, the record's columns under destination names
    diff   keys whose fate is not "unchanged": __key, __cat (added/changed/removed)
    send   what the sync's mode sends, in order: __op, __cat, __key, __hash,
           __fields (the mapped values as JSON text), the record's columns
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tidegate import plandb
from tidegate.config import Mode, SyncConfig
from tidegate.destinations.base import Batch, Operation, record_documents, text_bytes
from tidegate.errors import SourceError
from tidegate.guard import RowCheck, row_checks
from tidegate.shard import Shard
from tidegate.sources.base import ModelQueryError

# What each mode sends for each category of key (SPEC §3).
SENDS: dict[Mode, dict[str, Operation]] = {
    "insert": {"added": "insert"},
    "update": {"added": "update", "changed": "update"},
    "upsert": {"added": "upsert", "changed": "upsert"},
    "delete": {"added": "delete"},
    "mirror": {"added": "upsert", "changed": "update", "removed": "delete"},
}
_OP_ORDER = {"insert": 0, "upsert": 1, "update": 2, "delete": 3}
_RECORD_OVERHEAD = 24  # bytes a record adds to a JSON body beyond its key and fields
_CHUNK_ROWS = 20_000  # rows per read from DuckDB while cutting batches: bounds memory
_HASH_PIECE = 2047  # bytes per hashlib update: below 2 KiB it keeps the interpreter lock
# Compute functions get Arrow scalars: given a Python value, pyarrow looks for
# optional converters (an import attempt) on every call.
_ZERO = pa.scalar(0, pa.int64())
_EMPTY = pa.scalar("", pa.string())
_OVERHEAD = pa.scalar(_RECORD_OVERHEAD, pa.int64())


_ATTACHED = "__tidegate_model"


@dataclass
class AttachedModel:
    """A model that lives in a DuckDB file: the planner reads it in place, in parallel,
    instead of through an Arrow stream."""

    path: str
    sql: str
    home: str = ""


class MappingProblem(Exception):
    """The sync's keys or fields do not fit the model's columns."""

    def __init__(self, key: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.key, self.message, self.fix = key, message, fix


@dataclass
class PlanCounts:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    invalid: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Outgoing:
    """A batch ready for the destination, with what state needs once it is acknowledged.

    The state columns stay Arrow until the batch is committed, so batches in
    flight hold no Python object per record beyond their keys.
    """

    batch: Batch
    # __key, __hash, __cat, __fields, and for the audit log either __old (the record
    # last delivered) or, when fields are masked, __audit_old and __audit_new.
    meta: pa.Table

    def audit_old(self, meta: pa.Table) -> pa.ChunkedArray:
        return meta["__audit_old" if "__audit_old" in meta.column_names else "__old"]


@dataclass
class Plan:
    """What a run would do. Holds its DuckDB tables until closed."""

    sync: str
    mode: Mode
    counts: PlanCounts
    to_send: dict[Operation, int]
    record_fields: list[str]
    match_fields: list[str]
    mapped_fields: list[str]
    invalid_reasons: dict[str, int]
    schema: pa.Schema
    con: duckdb.DuckDBPyConnection = field(repr=False)
    known: pa.Table = field(repr=False)
    # Checks with ``hold`` that rows to send fail, and how many rows fail each.
    check_holds: list[tuple[RowCheck, int]] = field(default_factory=list)
    _typed: bool = field(default=True, repr=False)
    _old_loaded: bool = field(default=False, repr=False)
    _mask: list[str] = field(default_factory=list, repr=False)
    _salt: str = field(default="", repr=False)
    _workdir: Path | None = field(default=None, repr=False)

    @property
    def total_to_send(self) -> int:
        return sum(self.to_send.values())

    def load_old(self, read: Callable[[pa.Array], pa.Table]) -> None:
        """Fill ``old`` with the records last delivered for the changed and removed keys.

        ``read`` gets those keys and returns (key, record); done once per plan.
        """
        if self._old_loaded:
            return
        keys = self.con.sql(
            "select __key from diff where __cat in ('changed', 'removed')"
        ).to_arrow_table()["__key"].combine_chunks()
        if len(keys):
            found = read(keys)
            self.con.register("old_found", found)
            self.con.execute("insert into old select key, record from old_found")
            self.con.unregister("old_found")
        self._old_loaded = True

    def mask_audit(self, fields: Sequence[str], salt: str) -> None:
        """Store ``fields`` in the audit log as salted hashes instead of values."""
        self._mask = [f for f in fields if f in self.mapped_fields]
        self._salt = salt

    def _audit_sql(self, column: str) -> str:
        expr = column
        for name in self._mask:
            value = f"({expr} -> {_lit(name)})"
            masked = (f"json_merge_patch({expr}, json_object({_lit(name)}, 'sha256:' || "
                      f"left(sha256({_lit(self._salt)} || ({value})::varchar), 16)))")
            expr = (f"case when {value} is null or json_type({value}) = 'NULL' "
                    f"then {expr} else {masked} end")
        return expr

    def fields_json_sql(self, prefix: str = "") -> str:
        """SQL for a row's mapped values as JSON text, reading ``m`` under ``prefix``."""
        return f"to_json(struct_pack({_struct_args(self.mapped_fields, prefix)}))"

    def digest(self) -> str:
        """Names exactly what this plan sends (operation, key and hash of every row), so a
        held plan can be told apart from a new plan of a changed model."""
        ops = "case d.__cat " + " ".join(
            f"when '{cat}' then '{op}'" for cat, op in SENDS[self.mode].items()) + " end"
        row = self.con.execute(
            f"select count(*), coalesce(bit_xor(hash({ops}, d.__key, d.__hash)), 0) "
            f"from diff d where d.__cat in ({', '.join(repr(c) for c in SENDS[self.mode])})"
        ).fetchall()[0]
        return f"{row[0]}:{int(row[1]):016x}"

    def outgoing(
        self,
        max_records: int,
        max_bytes: int | None = None,
        *,
        typed: bool = True,
        measure: Callable[[pa.Table], pa.Array | None] | None = None,
    ) -> Iterator[Outgoing]:
        """The send table cut into batches: one operation each, within both limits.

        Without ``typed`` the batches carry the records as JSON only. ``measure``
        (a destination's ``record_bytes``) sizes rows for ``max_bytes`` instead of
        the JSON estimate.
        """
        self._typed = typed
        cols = "".join(", " + _q(c) for c in self.record_fields) if typed else ""
        audit = ", __old"
        if self._mask:
            audit += (f", {self._audit_sql('__old')} as __audit_old, "
                      f"{self._audit_sql('__fields')} as __audit_new")
        self.con.execute("set preserve_insertion_order = true")
        reader = self.con.sql(
            f"select __op, __cat, __key, __hash, __fields{audit}{cols} from send"
        ).to_arrow_reader(_CHUNK_ROWS)
        carry: pa.Table | None = None
        for chunk in reader:
            table = pa.Table.from_batches([chunk])
            if not typed:  # every batch's body is then a slice of this column's bytes
                table = table.append_column("__doc", record_documents(
                    table["__op"], table["__key"], table["__fields"]))
            if measure is not None and max_bytes is not None:
                sizes = measure(table)
                if sizes is not None:
                    table = table.append_column("__size", sizes.cast(pa.int64()))
            if carry is not None:
                table = pa.concat_tables([carry, table])
            cuts = _cuts(table, max_records, max_bytes)
            for start, stop in _pairs(cuts):
                yield self._outgoing(table.slice(start, stop - start))
            # The tail may still grow with the next chunk's rows of the same operation.
            carry = table.slice(cuts[-1]) if cuts[-1] < table.num_rows else None
        if carry is not None and carry.num_rows:
            for start, stop in _pairs(_cuts(carry, max_records, max_bytes, final=True)):
                yield self._outgoing(carry.slice(start, stop - start))

    def _outgoing(self, table: pa.Table) -> Outgoing:
        op: Operation = table.column("__op")[0].as_py()
        keys = pa.concat_arrays(table.column("__key").chunks)  # offset 0: whole buffers
        hashes = table.column("__hash")
        if hashes.null_count:
            hashes = hashes.fill_null(_ZERO)
        # The id is derived from the content, so a batch resent after a crash
        # usually carries the same id; keys and hashes go in as their Arrow bytes.
        # Python reads only buffer bounds here: a compute call per batch would hand
        # the interpreter lock to another thread and wait to get it back. For the same
        # reason the content is hashed in pieces below the size at which hashlib lets
        # go of the lock.
        content = memoryview(b"".join([
            f"{self.sync}\n{op}\n".encode(),
            keys.buffers()[1].slice(0, (len(keys) + 1) * 4),
            text_bytes(keys),
            *(part.buffers()[1].slice(part.offset * 8, len(part) * 8) for part in hashes.chunks),
        ]))
        digest = hashlib.sha256()
        for start in range(0, len(content), _HASH_PIECE):
            digest.update(content[start:start + _HASH_PIECE])
        batch = Batch(
            id="msg_" + digest.hexdigest()[:32],
            operation=op,
            key_text=keys,
            table=table.select(self.record_fields if self._typed else []),
            fields=None if op == "delete" else table.column("__fields"),
            documents=None if self._typed else table.column("__doc"),
        )
        audit = ["__audit_old", "__audit_new"] if self._mask else ["__old"]
        return Outgoing(batch=batch, meta=table.select(
            ["__key", "__hash", "__cat", "__fields", *audit]))

    def invalid_rows(self) -> Iterator[tuple[str, str, str]]:
        """(key, reason, record JSON) of every invalid row."""
        reader = self.con.sql(
            "select coalesce(__key, 'null'), __invalid, "
            f"to_json(struct_pack({_struct_args(self.record_fields)})) "
            "from m where __invalid is not null order by 1"
        ).to_arrow_reader(10_000)
        for chunk in reader:
            yield from zip(*(c.to_pylist() for c in chunk.columns), strict=True)

    def samples(self, limit: int = 5) -> dict[str, list[dict[str, Any]]]:
        """A few rows of each category, for people reading the plan."""
        out: dict[str, list[dict[str, Any]]] = {}
        fields_json = self.fields_json_sql("m.")
        for cat in ("added", "changed", "removed"):
            # Straight from diff: a top-N, not the full sort the send view does.
            rows = self.con.execute(
                f"with top as (select __key, __rid from diff where __cat = ? "
                f"order by __key limit ?) "
                f"select t.__key, case when t.__rid is null then null else {fields_json} end "
                "from top t left join m on m.rowid = t.__rid order by t.__key",
                [cat, limit],
            ).fetchall()
            if rows:
                out[cat] = [
                    {"key": json.loads(k), "fields": json.loads(f) if f else None}
                    for k, f in rows
                ]
        bad = self.con.execute(
            "select __key, __invalid from m where __invalid is not null order by 1 limit ?",
            [limit],
        ).fetchall()
        if bad:
            out["invalid"] = [
                {"key": json.loads(k) if k else None, "reason": r} for k, r in bad
            ]
        return out

    def state_after(self, kept: list[pa.Table], dropped: list[pa.Array]) -> pa.Table:
        """The (key, hash) state once ``kept`` were written and ``dropped`` removed."""
        if not self.known.num_rows and not any(len(d) for d in dropped):
            # A first run: what it kept is the whole state (a key is in one batch only).
            return pa.concat_tables(kept) if kept else self.known
        cur = self.con.cursor()
        try:
            cur.register("known_before", self.known)
            before = self.known.schema.empty_table()
            cur.register("kept", pa.concat_tables(kept) if kept else before)
            cur.register("dropped", pa.table({"key": pa.chunked_array(dropped, pa.string())}))
            return cur.sql(
                "select key, hash from known_before "
                "where key not in (select key from kept) and key not in (select key from dropped) "
                "union all select key, hash from kept"
            ).to_arrow_table()
        finally:
            cur.close()

    def close(self) -> None:
        spilled = (self._workdir is not None and self._workdir.exists()
                   and any(self._workdir.iterdir()))
        if spilled:  # DuckDB removes its spill files as it closes: wait for that
            self.con.close()
        else:
            plandb.close_behind(self.con)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


class Planner:
    """Builds a Plan for one sync from a model stream and the state's (key, hash) pairs."""

    def __init__(
        self,
        sync_name: str,
        sync: SyncConfig,
        *,
        workdir: Path | None = None,
        memory_limit: str = "1GB",
        shard: Shard | None = None,
        screen: Callable[[pa.Table], pa.Array | None] | None = None,
    ) -> None:
        self.sync_name = sync_name
        self.sync = sync
        self.workdir = workdir
        self.memory_limit = memory_limit
        self.shard = shard  # plan only the model rows whose key this shard owns
        # The destination's check of values its schema cannot take (``invalid_values``).
        self.screen = screen

    def plan(
        self, model: pa.RecordBatchReader | AttachedModel, state: pa.Table, *, full: bool = False,
        hash_column: str | None = None,
    ) -> Plan:
        """``hash_column`` names a model column that already holds each row's hash (the
        warehouse diff's), used instead of hashing here."""
        con, workdir = self._connect()
        try:
            return self._plan(con, workdir, model, state, full, hash_column)
        except BaseException:
            con.close()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _connect(self) -> tuple[duckdb.DuckDBPyConnection, Path | None]:
        workdir: Path | None = None
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="plan-", dir=self.workdir))
            # In memory, spilling to the work folder past the memory limit: a database
            # file would only add its creation and removal to every run.
            con = plandb.connect()
            spill = f"set temp_directory = '{workdir / 'spill'}'; "
        else:
            con = plandb.connect()
            spill = ""
        # One call, not four: each call lets go of the interpreter lock, and while the
        # run imports ahead, getting it back costs more than a setting.
        con.execute(f"{spill}set memory_limit = '{self.memory_limit}'; "
                    "set enable_progress_bar = false; set preserve_insertion_order = false")
        return con, workdir

    def _plan(
        self,
        con: duckdb.DuckDBPyConnection,
        workdir: Path | None,
        model: pa.RecordBatchReader | AttachedModel,
        state: pa.Table,
        full: bool,
        hash_column: str | None = None,
    ) -> Plan:
        sync = self.sync
        source_sql, schema = self._open_model(con, model)
        columns = [c for c in schema.names if c != hash_column]
        keys = sync.key_columns
        match = sync.match_columns
        mapping = self._mapping(columns)
        record: dict[str, str] = {dst: src for src, dst in match}
        for src, dst in mapping.items():
            if dst in record and record[dst] != src:
                raise MappingProblem(
                    "fields",
                    f"destination field '{dst}' is mapped from both '{record[dst]}' and '{src}'",
                    "map each destination field from one column",
                )
            record[dst] = src
        mapped = [dst for dst in mapping.values() if dst not in dict(match).values()] or [
            dst for dst in mapping.values()
        ]
        types = {f.name: f.type for f in schema}
        exprs = {dst: _normalised(_q(src), types[src]) for dst, src in record.items()}
        signature = json.dumps(
            {"object": sync.object, "record": list(record), "mapped": mapped}, sort_keys=True
        )
        key_json = (
            f"to_json({_q(keys[0])})"
            if len(keys) == 1
            else f"to_json(struct_pack({_struct_args(keys)}))"
        )
        null_key = " or ".join(f"{_q(k)} is null" for k in keys)
        select = ", ".join(f"{expr} as {_q(dst)}" for dst, expr in exprs.items())
        fields_struct = ", ".join(f"{_q(f)} := {exprs[f]}" for f in mapped)
        hashed = (f"cast({_q(hash_column)} as bigint)" if hash_column else
                  f"cast(hash(struct_pack({fields_struct}), $sig) >> 1 as bigint)")
        try:
            con.execute(
                f"""
                create temp table m as
                select {key_json} as __key,
                       case when {null_key} then 'primary key ({", ".join(keys)}) is null' end
                           as __invalid,
                       {hashed} as __hash,
                       {select}
                from {source_sql}
                {"" if self.shard is None else "where " + self.shard.sql(key_json)}
                """,
                {} if hash_column else {"sig": signature},
            )
        except duckdb.Error as exc:
            if isinstance(model, AttachedModel):
                raise ModelQueryError(str(exc)) from exc
            raise
        finally:
            self._close_model(con, model)
        if con.execute(
            "create temp table dups as select __key, count(*) as n from m "
            "where __invalid is null group by __key having count(*) > 1; "
            "select count(*) from dups"
        ).fetchall() != [(0,)]:
            con.execute(
                "update m set __invalid = 'primary key appears ' || dups.n || ' times in the model'"
                " from dups where m.__key = dups.__key"
            )
        checks = self._row_checks(con, set(record))
        con.register("st", state)
        fresh = not state.num_rows
        self._diff(con, full, fresh=fresh)
        con.unregister("st")
        self._screen(con, list(record), fresh=fresh)
        holds = self._holds(con, checks)
        counts, reasons = self._counts(con)
        to_send = self._send_view(con, record, mapped, keys, fresh=fresh)
        schema = con.sql(
            f"select {', '.join(_q(c) for c in record)} from send limit 0"
        ).to_arrow_table().schema
        return Plan(
            sync=self.sync_name,
            mode=sync.mode,
            counts=counts,
            to_send=to_send,
            record_fields=list(record),
            match_fields=[dst for _, dst in match],
            mapped_fields=mapped,
            invalid_reasons=reasons,
            schema=schema,
            con=con,
            known=state,
            check_holds=holds,
            _workdir=workdir,
        )

    def _row_checks(self, con: duckdb.DuckDBPyConnection, fields: set[str]) -> list[RowCheck]:
        """Mark the rows that fail a check invalid; return the checks that hold instead."""
        checks = self.sync.guardrails.checks
        unknown = sorted({c.field for c in checks} - fields)
        if unknown:
            raise MappingProblem(
                "guardrails",
                f"check(s) on field(s) {', '.join(unknown)}, which the sync does not map",
                f"check the destination field names: {', '.join(sorted(fields))}",
            )
        rules = row_checks(checks)
        for rule in rules:
            try:
                con.execute(f"select count(*) from m where {rule.failing}").fetchall()
            except duckdb.Error as exc:  # e.g. a pattern RE2 does not take (lookarounds)
                raise MappingProblem(
                    "guardrails",
                    f"the `{rule.rule}` check on {rule.field} cannot be evaluated: "
                    f"{str(exc).splitlines()[0]}",
                    "`matches` takes RE2 syntax (no lookarounds or backreferences)"
                    if rule.rule == "matches" else "check the rule's value",
                ) from exc
            if not rule.hold:
                con.execute(
                    f"update m set __invalid = $why where __invalid is null and ({rule.failing})",
                    {"why": rule.reason},
                )
        return [r for r in rules if r.hold]

    def _screen(self, con: duckdb.DuckDBPyConnection, record: list[str], *,
                fresh: bool = False) -> None:
        """Rows the destination's schema cannot take become invalid and leave the diff.

        Only rows the mode sends with values (not deletes) are shown to ``screen``, a
        chunk at a time, so memory stays bounded and an unchanged model costs nothing.
        """
        cats = [cat for cat, op in SENDS[self.sync.mode].items() if op != "delete"]
        if self.screen is None or not cats:
            return
        cols = ", ".join(f"m.{_q(c)}" for c in record)
        reader = con.sql(
            f"select d.__key, {cols} from diff d join m on m.rowid = d.__rid "
            f"where d.__cat in ({', '.join(_lit(c) for c in cats)})"
        ).to_arrow_reader(_CHUNK_ROWS)
        found: list[pa.Table] = []
        for chunk in reader:
            reasons = self.screen(pa.Table.from_batches([chunk]).drop_columns(["__key"]))
            if reasons is not None:
                hit = pc.is_valid(reasons)
                found.append(pa.table({"key": chunk.column(0).filter(hit),
                                       "reason": pc.filter(reasons, hit)}))
        screened = pa.concat_tables(found) if found else None
        if screened is None or not screened.num_rows:
            return
        con.register("screened", screened)
        con.execute("update m set __invalid = s.reason from screened s "
                    "where m.__key = s.key and m.__invalid is null")
        if not fresh:  # a fresh diff is a view of the valid rows of ``m``
            con.execute("delete from diff where __key in (select key from screened)")
        con.unregister("screened")

    def _holds(
        self, con: duckdb.DuckDBPyConnection, rules: list[RowCheck]
    ) -> list[tuple[RowCheck, int]]:
        out = []
        # Only rows the mode sends: a changed row in insert mode stays put.
        cats = ", ".join(f"'{c}'" for c in SENDS[self.sync.mode] if c != "removed")
        for rule in rules:
            failing = con.execute(
                "select count(*) from diff d join m on m.rowid = d.__rid "
                f"where d.__cat in ({cats}) and ({rule.failing})"
            ).fetchall()[0][0]
            if failing:
                out.append((rule, int(failing)))
        return out

    def _open_model(
        self, con: duckdb.DuckDBPyConnection, model: pa.RecordBatchReader | AttachedModel
    ) -> tuple[str, pa.Schema]:
        """The FROM clause that reads the model in ``con``, and the model's schema."""
        if not isinstance(model, AttachedModel):
            con.register("model_stream", model)
            return "model_stream", model.schema
        home = con.execute("select current_database()").fetchall()[0][0]
        path = model.path.replace("'", "''")
        try:
            # use: the model's SQL names its tables unqualified.
            con.execute(f"attach '{path}' as {_ATTACHED} (read_only); use {_ATTACHED}")
        except duckdb.Error as exc:  # locked by a writer, unreadable, not a DuckDB file
            raise SourceError(f"cannot open the DuckDB file {model.path}: {exc}") from exc
        model.home = str(home)
        try:
            schema = con.sql(f"select * from ({model.sql}) limit 0").to_arrow_table().schema
        except duckdb.Error as exc:
            self._close_model(con, model)
            raise ModelQueryError(str(exc)) from exc
        return f"({model.sql})", schema

    def _close_model(
        self, con: duckdb.DuckDBPyConnection, model: pa.RecordBatchReader | AttachedModel
    ) -> None:
        if isinstance(model, AttachedModel):
            con.execute(f'use "{model.home}"; detach {_ATTACHED}')
        else:
            con.unregister("model_stream")

    def _mapping(self, columns: list[str]) -> dict[str, str]:
        keys = self.sync.key_columns
        missing = [k for k in keys if k not in columns]
        if missing:
            raise MappingProblem(
                "primary_key",
                f"primary key column(s) {', '.join(missing)} not in the model",
                f"use columns the query returns: {', '.join(columns)}",
            )
        missing = [s for s, _ in self.sync.match_columns if s not in columns]
        if missing:
            raise MappingProblem(
                "match", f"match column(s) {', '.join(missing)} not in the model",
                f"use columns the query returns: {', '.join(columns)}",
            )
        mapping = self.sync.field_map
        if mapping is None:
            return {c: c for c in columns if c not in keys}
        missing = [s for s in mapping if s not in columns]
        if missing:
            raise MappingProblem(
                "fields",
                f"field(s) {', '.join(missing)} not in the model",
                f"map columns the query returns: {', '.join(columns)}",
            )
        return mapping

    def _counts(self, con: duckdb.DuckDBPyConnection) -> tuple[PlanCounts, dict[str, int]]:
        """The plan's counts, and how many invalid rows have each reason."""
        # The model's rows by reason (valid ones under none), then the diff's categories.
        rows = con.execute(
            "select 'm', __invalid, count(*) from m group by 2 "
            "union all select 'diff', __cat, count(*) from diff group by 2"
        ).fetchall()
        reasons = {reason: n for part, reason, n in rows if part == "m" and reason is not None}
        valid = sum(n for part, reason, n in rows if part == "m" and reason is None)
        cats = {cat: n for part, cat, n in rows if part == "diff"}
        added, changed = cats.get("added", 0), cats.get("changed", 0)
        counts = PlanCounts(
            added=added,
            changed=changed,
            removed=cats.get("removed", 0),
            unchanged=valid - added - changed,
            invalid=sum(reasons.values()),
        )
        return counts, reasons

    def _diff(self, con: duckdb.DuckDBPyConnection, full: bool, *, fresh: bool = False) -> None:
        """One join with state keeps every key whose fate is not "unchanged".

        Only keys, hashes and the model row's id are kept: the record itself is
        read from ``m`` when it is sent, so a first run does not copy the model.
        Against empty state (``fresh``) every valid row is added: ``diff`` is then
        a view of them, which rows found invalid later leave by themselves.
        """
        if fresh:
            con.execute(
                "create temp view diff as select __key, 'added' as __cat, __hash, "
                "rowid as __rid from m where __invalid is null"
            )
            return
        changed = "true" if full else "v.__hash <> s.hash"
        con.execute(
            f"""
            create temp table diff as
            select coalesce(v.__key, s.key) as __key,
                   case when v.__key is null then 'removed'
                        when s.key is null then 'added' else 'changed' end as __cat,
                   v.__hash, v.__rid
            from (select __key, __hash, rowid as __rid from m where __invalid is null) v
            full outer join st s on v.__key = s.key
            where v.__key is null or s.key is null or {changed};
            -- A key whose row is invalid is still in the model: never treat it as removed.
            delete from diff where __cat = 'removed' and __key in
                (select __key from m where __invalid is not null and __key is not null)
            """
        )

    def _record_columns(
        self, con: duckdb.DuckDBPyConnection, record: dict[str, str], keys: list[str]
    ) -> list[str]:
        """The record's columns from ``m``; a removed key's match fields from its JSON."""
        match = dict(self.sync.match_columns)
        m_types = {r[0]: str(r[1]) for r in con.execute("describe m").fetchall()}
        cols = []
        for dst, src in record.items():
            if src in keys and match.get(src) == dst:
                path = "$" if len(keys) == 1 else f"$.{json.dumps(src)}"
                sql_type = m_types.get(dst, "VARCHAR")
                sql_type = "VARCHAR" if sql_type.strip('"') == "NULL" else sql_type
                removed = f"cast(json_extract_string(d.__key, '{path}') as {sql_type})"
                cols.append(f"case when d.__rid is null then {removed} else m.{_q(dst)} end "
                            f"as {_q(dst)}")
            else:
                cols.append(f"m.{_q(dst)}")
        return cols

    def _send_view(
        self,
        con: duckdb.DuckDBPyConnection,
        record: dict[str, str],
        mapped: list[str],
        keys: list[str],
        *,
        fresh: bool = False,
    ) -> dict[Operation, int]:
        """``fresh``: state is empty, so the diff holds exactly the valid model rows, all
        added, and the view reads them from ``m`` without joining the diff."""
        sends = SENDS[self.sync.mode]
        op_case = "case d.__cat " + " ".join(
            f"when '{cat}' then '{op}'" for cat, op in sends.items()
        ) + " end"
        ord_case = "case d.__cat " + " ".join(
            f"when '{cat}' then {_OP_ORDER[op]}" for cat, op in sends.items()
        ) + " end"
        present = "__cat <> 'removed'"
        fields_json = f"to_json(struct_pack({_struct_args(mapped)}))"
        cats = ", ".join(f"'{c}'" for c in sends)
        cols = ", ".join(self._record_columns(con, record, keys))
        # What state last acknowledged for changed and removed keys: filled before
        # a run delivers (``Plan.load_old``), empty for a plan that is only shown.
        old = "create temp table old (key varchar primary key, record varchar);"
        record_cols = ", ".join(_q(c) for c in record)
        # The table, the view and their count in one call: each call lets go of the
        # interpreter lock, which another thread of the run may then keep a while.
        if fresh:
            # A first run's send is most of its time to the first batch: no joins here.
            return dict(con.execute(
                f"""
                {old}
                create temp view send as
                select __op, __ord, __cat, __key, __hash, {fields_json} as __fields, __old,
                       {record_cols}
                from (select {_lit(sends["added"])} as __op, {_OP_ORDER[sends["added"]]}
                             as __ord, 'added' as __cat, __key, __hash, null::varchar as __old,
                             {", ".join(f"m.{_q(c)}" for c in record)}
                      from m where __invalid is null order by __key);
                select {_lit(sends["added"])}, count(*) from diff having count(*) > 0
                """
            ).fetchall())
        # JSON is made after the sort, so the sort moves narrow rows.
        return dict(con.execute(
            f"""
            {old}
            create temp view send as
            select * from (select __op, __ord, __cat, __key, __hash,
                         case when {present} then {fields_json} end as __fields, __old,
                         {record_cols}
                  from (select {op_case} as __op, {ord_case} as __ord, d.__cat, d.__key,
                               d.__hash, o.record as __old, {cols}
                        from diff d left join m on m.rowid = d.__rid
                        left join old o on o.key = d.__key
                        where d.__cat in ({cats}) order by __ord, __key));
            select __op, count(*) from (select {op_case} as __op from diff d
                                        where d.__cat in ({cats})) group by 1
            """
        ).fetchall())


def _cuts(
    table: pa.Table, max_records: int, max_bytes: int | None, *, final: bool = False
) -> list[int]:
    """Batch boundaries: a batch ends at an operation change or at either limit.

    Without ``final`` the last, possibly unfinished batch is left out. Python
    steps once per batch: sizes are summed in Arrow and read only at the cuts.
    """
    n = table.num_rows
    ops = table.column("__op").combine_chunks()
    changes = pc.indices_nonzero(pc.not_equal(ops.slice(1), ops.slice(0, n - 1))).to_pylist()
    ends = [*(c + 1 for c in changes), n]
    sizes: pa.Array | None = None
    if max_bytes is not None and "__size" in table.column_names:
        sizes = pc.cumulative_sum(table.column("__size")).combine_chunks()
    elif max_bytes is not None:
        lengths = pc.add(
            pc.binary_length(table.column("__key")).cast(pa.int64()),
            pc.binary_length(table.column("__fields").fill_null(_EMPTY)).cast(pa.int64()),
        )
        sizes = pc.cumulative_sum(pc.add(lengths, _OVERHEAD)).combine_chunks()

    def upto(i: int) -> int:  # bytes of rows [0, i)
        return int(sizes[i - 1].as_py()) if sizes is not None and i else 0

    cuts, start = [0], 0
    for end in ends:
        while start < end:
            stop = min(start + max_records, end)
            if max_bytes is not None and upto(stop) - upto(start) > max_bytes:
                base, low, high = upto(start), start + 1, stop  # one record always goes
                while low < high:
                    mid = (low + high + 1) // 2
                    low, high = (mid, high) if upto(mid) - base <= max_bytes else (low, mid - 1)
                stop = low
            if stop == n and not final and stop - start < max_records:
                return cuts
            cuts.append(stop)
            start = stop
    return cuts


def _pairs(cuts: list[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(cuts))


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _struct_args(names: list[str], prefix: str = "") -> str:
    return ", ".join(f"{_q(n)} := {prefix}{_q(n)}" for n in names)


def _normalised(expr: str, arrow_type: pa.DataType) -> str:
    # An INT column that becomes BIGINT upstream must not look like a changed value.
    if pa.types.is_integer(arrow_type):
        return f"cast({expr} as bigint)"
    if pa.types.is_floating(arrow_type):
        return f"cast({expr} as double)"
    return expr
