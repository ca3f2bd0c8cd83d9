"""The diff inside the warehouse (``diff: warehouse``): only the rows to send leave it.

The state store stays the truth: it keeps every acknowledged key, hash and
record (for audit and revert), committed per batch with the run's progress.
The warehouse holds a copy of its (key, hash) pairs, one table per sync in the
``tidegate_state`` schema, labelled with the state version it equals in
``tidegate_state.tidegate_versions`` — as the local Arrow snapshot is:

* After each commit to the store, the same keys and hashes are applied to the
  copy and its label moved to the new version, in one warehouse transaction.
  The copy is only ever written after the store committed, so it is never
  ahead of the store; a crash between the two leaves its label behind.
* Before a plan, a copy whose label is not the store's version is caught up:
  from the store's segments written since its label when they say exactly what
  changed, otherwise (compacted or reset since) rebuilt from the store's pairs.

Planning then runs in the warehouse's SQL: each model row's key as tidegate's
key text and a hash of its mapped values; one full outer join with the copy
gives added / changed / removed (and duplicate keys). Only those rows, their
keys and old hashes come out, and the ordinary planner makes the final plan
from them (checks, invalid rows, what each mode sends), with the warehouse's
hash instead of its own. The warehouse's count of unchanged rows is added.

Supported: DuckDB (a file opened for writing), PostgreSQL, Snowflake. A source
that is read-only (``read_only: true``, or no right to create the schema), of
another kind, with key columns that are not whole numbers or text, or with a
``unique`` check (which needs every row) is planned with the local store, and
the reason is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tidegate import segments, state
from tidegate.config import (
    DuckDBSourceConfig,
    SnowflakeSourceConfig,
    SQLAlchemySourceConfig,
    SyncConfig,
)
from tidegate.errors import SourceError
from tidegate.plan import Outgoing, Plan, Planner
from tidegate.redact import redact
from tidegate.sources.base import ModelQueryError
from tidegate.store import Store

log = logging.getLogger("tidegate")

SCHEMA = "tidegate_state"
VERSIONS = f"{SCHEMA}.tidegate_versions"
HASH_COLUMN = "__tidegate_hash"
_REMOVED = pa.scalar("removed", pa.string())
_ADDED = pa.scalar("added", pa.string())


class Unsupported(Exception):
    """The warehouse cannot hold this sync's diff: plan it with the local store."""


def copy_table(sync: str) -> str:
    """The warehouse table holding ``sync``'s (key, hash) copy."""
    slug = re.sub(r"[^a-z0-9_]", "_", sync.lower())[:40]
    return f"{SCHEMA}.keys_{slug}_{hashlib.sha256(sync.encode()).hexdigest()[:8]}"


# --- the warehouses --------------------------------------------------------------------


@dataclass
class Column:
    name: str  # as the warehouse's SQL names it
    kind: str  # "int", "float", "text" or "other"
    arrow: pa.DataType | None = None


class Warehouse(ABC):
    """One connection to a warehouse, and how its SQL spells what the diff needs."""

    kind: str

    @abstractmethod
    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def arrow(self, sql: str) -> pa.RecordBatchReader: ...

    @abstractmethod
    def columns(self, sql: str) -> list[Column]: ...

    @abstractmethod
    def load(self, table: str, keys: pa.Array, hashes: pa.Array) -> None:
        """Insert (key, hash) rows into ``table``."""

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[None]: ...

    @abstractmethod
    def close(self) -> None: ...

    def create_schema(self) -> None:
        self.execute(f"create schema if not exists {SCHEMA}")

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def literal(self, text: str) -> str:
        return _literal(text)

    @abstractmethod
    def key_text(self, column: str) -> str:
        """SQL for one key column as JSON text, exactly as the planner writes it."""

    @abstractmethod
    def hash_sql(self, mapped: list[tuple[str, Column]], signature: str) -> str:
        """SQL for a non-negative BIGINT hash of the mapped values."""

    temp_schema = ""  # where the session's temporary tables are, to name them safely

    def temp(self, name: str) -> str:
        return f"{self.temp_schema}tidegate_tmp_{name}"

    def create_temp(self, name: str, select: str) -> None:
        self.execute(f"create temporary table {name.split('.')[-1]} as {select}")

    def drop_temp(self, name: str) -> None:
        self.execute(f"drop table if exists {name}")


class DuckDBWarehouse(Warehouse):
    kind = "duckdb"
    temp_schema = "temp."

    def __init__(self, path: str, memory_limit: str | None = None) -> None:
        try:
            self.con = duckdb.connect(path)
        except duckdb.Error as exc:
            raise Unsupported(f"the DuckDB file cannot be opened for writing ({exc})") from exc
        self.con.execute("set preserve_insertion_order = false")
        if memory_limit is not None:
            # The diff joins the whole model with the copy of state: within tidegate's
            # limit it spills next to the file instead of growing the process.
            self.con.execute(f"set memory_limit = '{memory_limit}'")

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params).fetchall()

    def arrow(self, sql: str) -> pa.RecordBatchReader:
        return self.con.sql(sql).to_arrow_reader(100_000)

    def columns(self, sql: str) -> list[Column]:
        schema = self.con.sql(f"select * from ({sql}) q limit 0").to_arrow_table().schema
        return [Column(f.name, _arrow_kind(f.type), f.type) for f in schema]

    def load(self, table: str, keys: pa.Array, hashes: pa.Array) -> None:
        self.con.register("tg_rows", pa.table({"key": keys, "hash": hashes}))
        try:
            self.con.execute(f"insert into {table} select key, hash from tg_rows")
        finally:
            self.con.unregister("tg_rows")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("begin")
        try:
            yield
        except BaseException:
            self.con.execute("rollback")
            raise
        self.con.execute("commit")

    def close(self) -> None:
        self.con.close()

    def key_text(self, column: str) -> str:
        return f"to_json({column})"

    def hash_sql(self, mapped: list[tuple[str, Column]], signature: str) -> str:
        # The planner's own hash, so a DuckDB sync keeps its hashes when `diff` changes.
        from tidegate.plan import _normalised

        fields = ", ".join(
            f"{self.quote(dst)} := {_normalised(self.quote(col.name), col.arrow or pa.string())}"
            for dst, col in mapped)
        return f"cast(hash(struct_pack({fields}), {self.literal(signature)}) >> 1 as bigint)"


class PostgresWarehouse(Warehouse):
    kind = "postgres"
    temp_schema = "pg_temp."

    def __init__(self, url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        try:
            self.con = psycopg.connect(_libpq_url(url), autocommit=True)
        except psycopg.Error as exc:
            raise SourceError(f"cannot connect to PostgreSQL: {redact(str(exc))}") from exc

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        try:
            cur = self.con.execute(sql.replace("?", "%s"), params)
        except self.psycopg.errors.InsufficientPrivilege as exc:
            raise Unsupported(f"no right to write the {SCHEMA} schema ({exc})") from exc
        except self.psycopg.errors.ReadOnlySqlTransaction as exc:
            raise Unsupported(f"the database is read-only ({exc})") from exc
        return cur.fetchall() if cur.description else []

    def arrow(self, sql: str) -> pa.RecordBatchReader:
        from tidegate.sources.sqlalchemy import _to_batch

        cur = self.con.cursor()
        cur.execute(sql)
        names = [d.name for d in cur.description or []]
        schema: pa.Schema | None = None
        batches = []
        while rows := cur.fetchmany(50_000):
            batch = _to_batch(rows, names, schema)
            schema = batch.schema
            batches.append(batch)
        if schema is None:
            empty = pa.RecordBatch.from_arrays([pa.array([], pa.null()) for _ in names],
                                               names=names)
            return pa.RecordBatchReader.from_batches(empty.schema, [empty])
        return pa.RecordBatchReader.from_batches(schema, batches)

    def columns(self, sql: str) -> list[Column]:
        cur = self.con.execute(f"select * from ({sql}) q limit 0")
        kinds = {20: "int", 21: "int", 23: "int", 25: "text", 1043: "text", 1042: "text",
                 700: "float", 701: "float"}
        return [Column(d.name, kinds.get(d.type_code, "other")) for d in cur.description or []]

    def load(self, table: str, keys: pa.Array, hashes: pa.Array) -> None:
        with self.con.cursor() as cur, cur.copy(f"copy {table} (key, hash) from stdin") as copy:
            for key, hash_ in zip(keys.to_pylist(), hashes.to_pylist(), strict=True):
                copy.write_row((key, hash_))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.con.transaction():
            yield

    def close(self) -> None:
        self.con.close()

    def key_text(self, column: str) -> str:
        return f"to_json({column})::text"

    def hash_sql(self, mapped: list[tuple[str, Column]], signature: str) -> str:
        values = ", ".join(self.quote(col.name) for _, col in mapped) or "null"
        # 60 bits of an md5 of the row's text form: non-negative as a BIGINT.
        return (f"('x' || substr(md5(row({values}, {self.literal(signature)})::text), 1, 15))"
                "::bit(60)::bigint")

    def create_temp(self, name: str, select: str) -> None:
        super().create_temp(name, select)
        self.execute(f"analyze {name}")


class SnowflakeWarehouse(Warehouse):
    kind = "snowflake"

    def __init__(self, source: Any) -> None:
        self.source = source
        self.con = source.connect()
        self.con.autocommit(True)

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        from tidegate.sources.snowflake import import_connector

        cur = self.con.cursor()
        try:
            cur.execute(sql.replace("?", "%s") if params else sql, params)
        except import_connector().errors.ProgrammingError as exc:
            if "privilege" in str(exc).lower() or "not authorized" in str(exc).lower():
                raise Unsupported(f"no right to write the {SCHEMA} schema ({exc})") from exc
            raise
        return list(cur.fetchall()) if cur.description else []

    def arrow(self, sql: str) -> pa.RecordBatchReader:
        from tidegate.sources.snowflake import _batches, arrow_schema

        cur = self.con.cursor()
        cur.execute(sql)
        schema = arrow_schema(cur.description)
        return pa.RecordBatchReader.from_batches(schema, _batches(cur, schema))

    def columns(self, sql: str) -> list[Column]:
        from tidegate.sources.snowflake import arrow_schema, tidegate_name

        cur = self.con.cursor()
        cur.execute(f"select * from ({sql}) q limit 0")
        schema = arrow_schema(cur.description)
        out = []
        for col, f in zip(cur.description, schema, strict=True):
            assert tidegate_name(col.name) == f.name
            out.append(Column(col.name, _arrow_kind(f.type), f.type))
        return out

    def literal(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"  # backslash escapes

    def create_schema(self) -> None:
        # CREATE SCHEMA makes the new schema the session's current one: do it on the side.
        side = SnowflakeWarehouse(self.source)
        try:
            side.execute(f"create schema if not exists {SCHEMA}")
        finally:
            side.close()

    def load(self, table: str, keys: pa.Array, hashes: pa.Array) -> None:
        rows = list(zip(keys.to_pylist(), hashes.to_pylist(), strict=True))
        cur = self.con.cursor()
        for start in range(0, len(rows), 16_384):
            cur.executemany(f"insert into {table} (key, hash) values (%s, %s)",
                            rows[start:start + 16_384])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("begin")
        try:
            yield
        except BaseException:
            self.execute("rollback")
            raise
        self.execute("commit")

    def close(self) -> None:
        self.con.close()

    def key_text(self, column: str) -> str:
        return f"to_varchar(to_json(to_variant({column})))"

    def hash_sql(self, mapped: list[tuple[str, Column]], signature: str) -> str:
        values = ", ".join(self.quote(col.name) for _, col in mapped)
        sep = ", " if values else ""
        return f"(hash({values}{sep}{self.literal(signature)}) % 4611686018427387904)"


def open_warehouse(
    config: Any, source: Any, root: Path, memory_limit: str | None = None
) -> Warehouse:
    """A writable connection to the sync's source, or Unsupported saying why not."""
    if getattr(config, "read_only", False):
        raise Unsupported("the source is marked `read_only: true`")
    if isinstance(config, DuckDBSourceConfig):
        if config.path == ":memory:":
            raise Unsupported("an in-memory DuckDB source keeps nothing between runs")
        path = Path(config.path)
        return DuckDBWarehouse(str(path if path.is_absolute() else root / path), memory_limit)
    if isinstance(config, SQLAlchemySourceConfig) and config.type in ("postgres", "postgresql"):
        return PostgresWarehouse(config.url.get_secret_value())
    if isinstance(config, SnowflakeSourceConfig):
        return SnowflakeWarehouse(source)
    raise Unsupported(f"sources of type {config.type} do not support it yet (DuckDB, "
                      "PostgreSQL and Snowflake do)")


# --- planning --------------------------------------------------------------------------


@dataclass
class Pulled:
    """What came out of the warehouse for one plan."""

    rows: int = 0
    bytes: int = 0


class WarehouseDiff:
    """Plans one sync in its warehouse and keeps the warehouse's copy of state current."""

    def __init__(self, sync_name: str, sync: SyncConfig, store: Store, wh: Warehouse) -> None:
        self.sync_name, self.sync, self.store, self.wh = sync_name, sync, store, wh
        self.table = copy_table(sync_name)
        self.known_rows = 0
        self.version = 0
        self.pulled = Pulled()
        self.broken = False  # a copy update failed: the next run catches it up

    # The copy and its label.

    def prepare(self) -> int:
        """Create the schema and tables if needed; catch the copy up with the store."""
        self.wh.create_schema()
        self.wh.execute(f"create table if not exists {VERSIONS} "
                        "(sync varchar(512) primary key, version bigint not null)")
        # PostgreSQL deletes a commit's keys through the index; DuckDB and Snowflake scan.
        pk = " primary key" if self.wh.kind == "postgres" else ""
        self.wh.execute(f"create table if not exists {self.table} (key varchar{pk}, hash bigint)")
        # Made here, outside the transactions that use it: fakesnow cannot create a table
        # inside a transaction that wrote.
        self.wh.execute(f"create temporary table if not exists "
                        f"{self.wh.temp('delta').split('.')[-1]} (key varchar, hash bigint)")
        while True:
            local = state.current_version(self.store, self.sync_name)
            label = self._label()
            if label == local:
                break
            self._catch_up(label, local)
        self.version = local
        self.known_rows = int(self.wh.execute(f"select count(*) from {self.table}")[0][0])
        return local

    def _label(self) -> int | None:
        rows = self.wh.execute(f"select version from {VERSIONS} where sync = ?",
                               (self.sync_name,))
        return int(rows[0][0]) if rows else None

    def _set_label(self, version: int) -> None:
        self.wh.execute(f"delete from {VERSIONS} where sync = ?", (self.sync_name,))
        self.wh.execute(f"insert into {VERSIONS} (sync, version) values (?, ?)",
                        (self.sync_name, version))

    def _catch_up(self, label: int | None, local: int) -> None:
        entries = _entries_since(self.store, self.sync_name, label) if label is not None else None
        after = state.current_version(self.store, self.sync_name)
        if after != local:
            return  # the store moved meanwhile: read again
        with self.wh.transaction():
            if entries is None:
                pairs = state.read_hashes(self.store, self.sync_name).table
                log.info("rebuilding the warehouse copy of %s's state (%s keys)",
                         self.sync_name, pairs.num_rows)
                self.wh.execute(f"delete from {self.table}")
                if pairs.num_rows:
                    self.wh.load(self.table, pairs["key"].combine_chunks(),
                                 pairs["hash"].combine_chunks())
            else:
                log.info("catching the warehouse copy of %s up from version %s to %s",
                         self.sync_name, label, local)
                self._apply(entries["key"], entries["hash"], entries["live"], every=True)
            self._set_label(local)

    def _apply(self, keys: pa.Array, hashes: pa.Array, live: pa.Array, *, every: bool,
               fresh: pa.Array | None = None) -> None:
        """Make the copy hold ``keys`` (latest entry last) with ``hashes`` where ``live``.

        ``fresh`` marks keys known not to be in the copy, which need no delete.
        """
        if not len(keys):
            return
        table = pa.table({"key": keys, "hash": hashes, "live": live})
        if every:  # several entries per key: keep each key's last
            table = _last_per_key(table)
        stale = table if fresh is None else table.filter(pc.invert(fresh))
        temp = self.wh.temp("delta")
        if stale.num_rows:
            self.wh.execute(f"delete from {temp}")
            self.wh.load(temp, stale["key"].combine_chunks(), stale["hash"].combine_chunks())
            self.wh.execute(f"delete from {self.table} where key in (select key from {temp})")
        kept = table.filter(table["live"])
        if kept.num_rows:
            self.wh.load(self.table, kept["key"].combine_chunks(),
                         kept["hash"].combine_chunks())

    def advance(self, acknowledged: list[tuple[Outgoing, dict[str, str]]], version: int) -> None:
        """Apply one commit of the store to the copy, and label it ``version``."""
        if self.broken:
            return
        keys, hashes, live, fresh = [], [], [], []
        for out, rejected in acknowledged:
            meta = out.meta
            if rejected:
                refused = pa.array(list(rejected), pa.string())
                meta = meta.filter(pc.invert(pc.is_in(meta["__key"], value_set=refused)))
            cats = meta["__cat"].combine_chunks()
            keys.append(meta["__key"].combine_chunks())
            hashes.append(meta["__hash"].combine_chunks().cast(pa.int64()))
            if out.batch.operation == "delete":
                live.append(pc.not_equal(cats, _REMOVED))
            else:
                live.append(pc.equal(cats, cats))
            fresh.append(pc.equal(cats, _ADDED))
        try:
            with self.wh.transaction():
                if self._label() != version - 1:
                    self.broken = True  # someone else moved the store: catch up next run
                    return
                if keys:
                    self._apply(pa.concat_arrays(keys), pa.concat_arrays(hashes),
                                pa.concat_arrays(live), every=False,
                                fresh=pa.concat_arrays(fresh))
                self._set_label(version)
            self.version = version
        except Exception as exc:  # the store has it: the copy is caught up next run
            self.broken = True
            log.warning("could not update the warehouse copy of %s's state (the next run "
                        "catches it up): %s", self.sync_name, redact(str(exc)))

    def relabel(self, before: int, after: int) -> None:
        """The store changed its version without changing its content (compaction)."""
        if self.broken:
            return
        with self.wh.transaction():
            if self._label() == before:
                self._set_label(after)

    # The plan.

    def plan(self, planner: Planner, *, full: bool) -> Plan:
        sql = self.sync.sql
        if any(c.unique for c in self.sync.guardrails.checks):
            raise Unsupported("a `unique` check needs every row of the model")
        try:
            columns = self.wh.columns(sql)
        except (duckdb.Error, Exception) as exc:
            if isinstance(exc, Unsupported):
                raise
            raise ModelQueryError(redact(str(exc))) from exc
        by_name = {_tidegate(self.wh, c.name): c for c in columns}
        mapping = planner._mapping(list(by_name))
        keys = self.sync.key_columns
        odd = [k for k in keys if by_name[k].kind not in ("int", "text")]
        if odd:
            raise Unsupported(f"key column(s) {', '.join(odd)} are neither whole numbers nor "
                              "text")
        match = self.sync.match_columns
        record: dict[str, str] = {dst: src for src, dst in match}
        for src, dst in mapping.items():
            record.setdefault(dst, src)
        mapped = [dst for dst in mapping.values() if dst not in dict(match).values()] or [
            dst for dst in mapping.values()]
        signature = json.dumps(
            {"object": self.sync.object, "record": list(record), "mapped": mapped},
            sort_keys=True)
        hash_sql = self.wh.hash_sql([(dst, by_name[record[dst]]) for dst in mapped], signature)
        key_sql = self._key_sql([by_name[k] for k in keys])
        null_key = " or ".join(f"{self.wh.quote(by_name[k].name)} is null" for k in keys)
        model = f"({sql}) q"
        g, w = self.wh.temp("g"), self.wh.temp("w")
        for t in (g, w):
            self.wh.drop_temp(t)
        # Grouped by the key's own columns (a number groups faster than its JSON text);
        # the JSON text is made once per key, after grouping. The key's columns travel
        # on, so the rows to send are found by them, not by each row's JSON text.
        quoted = [self.wh.quote(by_name[k].name) for k in keys]
        raw = [self.wh.quote(f"tg_k{i}") for i in range(len(keys))]
        key_cols = ", ".join(quoted)
        self.wh.create_temp(g, (
            f"select {', '.join(f'{c} as {r}' for c, r in zip(quoted, raw, strict=True))}, "
            f"case when {null_key} then null else {key_sql} end as k, h, n "
            f"from (select {key_cols}, min({hash_sql}) as h, count(*) as n from {model} "
            f"group by {key_cols}) q"))
        differs = "1 = 1" if full else "g.h <> s.hash"
        self.wh.create_temp(w, (
            "select coalesce(g.k, s.key) as key, s.hash as old, "
            "case when g.k is null then 'removed' when s.key is null then 'added' "
            f"else 'changed' end as cat, g.n as n, {', '.join(f'g.{r}' for r in raw)} "
            f"from (select * from {g} where k is not null) g "
            f"full outer join {self.table} s on g.k = s.key "
            f"where g.k is null or s.key is null or g.n > 1 or {differs}"))
        valid, null_rows, dup_rows = self.wh.execute(
            f"select coalesce(sum(case when k is not null and n = 1 then 1 else 0 end), 0), "
            f"coalesce(sum(case when k is null then n else 0 end), 0), "
            f"coalesce(sum(case when k is not null and n > 1 then n else 0 end), 0) from {g}")[0]
        cats = dict(self.wh.execute(f"select cat, count(*) from {w} group by cat"))
        # Valid (single-row) keys that are added or changed: the other valid ones are unchanged.
        sent_here = int(self.wh.execute(
            f"select count(*) from {w} where cat <> 'removed' and n = 1")[0][0])
        unchanged_here = int(valid) - sent_here
        self.pulled = Pulled()
        same_key = " and ".join(f"d.{r} = q.{c}" for r, c in zip(raw, quoted, strict=True))
        rows = self._pull(
            f"select q.*, {hash_sql} as {HASH_COLUMN} from {model} "
            f"where {null_key} or exists (select 1 from {w} d "
            f"where d.cat <> 'removed' and {same_key})")
        known = self._pull(f"select key, old as hash from {w} where old is not null")
        known = known.cast(pa.schema([("key", pa.string()), ("hash", pa.int64())]))
        log.info("planned %s in the warehouse: %s, %s null-key and %s duplicate-key rows; "
                 "%s rows and %s bytes came out", self.sync_name, cats, null_rows, dup_rows,
                 self.pulled.rows, self.pulled.bytes)
        reader = pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())
        plan = planner.plan(reader, known, full=full, hash_column=HASH_COLUMN)
        plan.counts.unchanged += max(unchanged_here, 0)
        return plan

    def _key_sql(self, columns: list[Column]) -> str:
        if len(columns) == 1:
            return self.wh.key_text(self.wh.quote(columns[0].name))
        parts = []
        for i, col in enumerate(columns):
            name = json.dumps(_tidegate(self.wh, col.name))
            lead = "{" if i == 0 else ","
            parts.append(f"{self.wh.literal(lead + name + ':')} || "
                         f"{self.wh.key_text(self.wh.quote(col.name))}")
        return "(" + " || ".join(parts) + " || '}')"

    def _pull(self, sql: str) -> pa.Table:
        table = self.wh.arrow(sql).read_all()
        table = table.rename_columns([_tidegate(self.wh, n) for n in table.column_names])
        self.pulled.rows += table.num_rows
        self.pulled.bytes += table.nbytes
        return table

    def after_run(self, project: Any, *, compact: bool) -> None:
        """Compact the store's segments when due (relabelling the copy), then close."""
        try:
            if compact and not self.broken:
                live = int(self.wh.execute(f"select count(*) from {self.table}")[0][0])
                if state.compaction_due(self.store, self.sync_name, live):
                    spill = project.root / ".tidegate" / "work"
                    spill.mkdir(parents=True, exist_ok=True)
                    before = state.current_version(self.store, self.sync_name)
                    written, after = state.compact(self.store, self.sync_name,
                                                   memory_limit=project.memory_limit, spill=spill)
                    self.relabel(before, after)
                    log.info("compacted the state of %s into %s segment(s)", self.sync_name,
                             written)
        except Exception as exc:  # maintenance: the state is whole either way
            log.warning("could not compact the state of %s: %s", self.sync_name,
                        redact(str(exc)))
        finally:
            self.finish()

    def finish(self) -> None:
        try:
            for t in ("g", "w", "delta"):
                self.wh.drop_temp(self.wh.temp(t))
        except Exception as exc:  # only tidying: temporary tables go with the session
            log.debug("could not drop temporary tables: %s", redact(str(exc)))
        self.wh.close()


def _tidegate(wh: Warehouse, name: str) -> str:
    if wh.kind == "snowflake":
        from tidegate.sources.snowflake import tidegate_name

        return tidegate_name(name)
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _arrow_kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    return "other"


def _libpq_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def _last_per_key(table: pa.Table) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("t", table.append_column("i", pa.array(range(table.num_rows), pa.int64())))
        return con.sql("select key, arg_max(hash, i) as hash, arg_max(live, i) as live "
                       "from t group by key").to_arrow_table()
    finally:
        con.close()


def _entries_since(store: Store, sync: str, version: int) -> pa.Table | None:
    """Every (key, hash, live) the store committed after ``version``, oldest first; None
    when its segments cannot say exactly what changed since (compacted or reset since)."""
    with store.transaction() as tx:
        older = tx.scalar("select count(*) from tidegate_state_segments "
                          "where sync = ? and seq <= ?", (sync, version))
        rows = tx.execute("select seq, run_id, keys from tidegate_state_segments "
                          "where sync = ? and seq > ? order by seq, id", (sync, version))
    if any(run_id is None for _, run_id, _ in rows):
        return None  # a compaction rewrote entries, dropping the removals among them
    if version > 0 and not older:
        return None  # reset since (or never held a key): rebuilding is exact and cheap
    parts = [segments.decode(blob) for _, _, blob in rows]
    if not parts:
        return segments.KEYS_SCHEMA.empty_table()
    return pa.concat_tables(parts).combine_chunks()


def plan_in_warehouse(
    project: Any, name: str, sync: SyncConfig, source: Any, planner: Planner, *, full: bool
) -> tuple[Plan, state.Known, WarehouseDiff] | None:
    """Plan ``name`` in its warehouse; None (with the reason logged) when it cannot be."""
    differ: WarehouseDiff | None = None
    try:
        wh = open_warehouse(project.settings.sources[sync.source], source, project.root,
                            project.memory_limit)
        differ = WarehouseDiff(name, sync, project.store, wh)
        version = differ.prepare()
        plan = differ.plan(planner, full=full)
    except Unsupported as exc:
        if differ is not None:
            differ.finish()
        log.warning("sync %s: `diff: warehouse` is not possible here (%s); planning with "
                    "the local state store instead", name, exc)
        return None
    except BaseException:
        if differ is not None:
            differ.finish()
        raise
    return plan, state.Known(plan.known, version, from_snapshot=True), differ

