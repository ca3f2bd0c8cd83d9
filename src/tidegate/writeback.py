"""Warehouse write-back: run summaries and the change log as tables in the warehouse.

With ``writeback: {source: NAME, schema: tidegate}`` in ``tidegate.yml``, the
history tidegate keeps in its state store is also written into one of the
project's sources, so analysts can query it with SQL next to their models.
This module owns that: the ``writeback`` settings (``WritebackConfig``), the two
warehouse tables and their columns, how each kind of warehouse is written, and
the bookkeeping of which runs were written (``tidegate_writeback`` in the state
store).

    <schema>.sync_runs      one row per run: what it planned, delivered, and how it ended
    <schema>.sync_changes   one row per key and field a run changed (``audit.change_table``)

A run's rows are identified by (project, run_id): writing a run again replaces
them, in one warehouse transaction, so a write-back can always be repeated.
SQLite has no schemas; there the tables are ``<schema>_sync_runs`` and
``<schema>_sync_changes``.

Runs not yet written stay ``pending``: a write-back that fails (the warehouse is
down, the DuckDB file is locked) is caught up by the next one. A run that
finishes again after it was written (a held run, approved later) is pending
again, so the warehouse ends with its final outcome.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import weakref
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import Field, field_validator

from tidegate import audit, runs
from tidegate.config import (
    DuckDBSourceConfig,
    SQLAlchemySourceConfig,
    SQLiteSourceConfig,
    Strict,
)
from tidegate.errors import ConfigError, Problem, SourceError
from tidegate.redact import redact, register_url
from tidegate.store import Store

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "CHANGES_SCHEMA",
    "RUNS_SCHEMA",
    "WritebackConfig",
    "catch_up",
    "mark_written",
    "pending",
    "write_back",
]

WritebackSource = DuckDBSourceConfig | SQLiteSourceConfig | SQLAlchemySourceConfig

# PostgreSQL truncates longer identifiers silently; refuse them instead.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class WritebackConfig(Strict):
    """``writeback:`` in ``tidegate.yml``: which source receives the history, and where."""

    source: str
    schema_: str = Field(default="tidegate", alias="schema")
    changes: bool = True  # also write the per-field change log, not only run summaries

    @field_validator("schema_")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError(
                f"`schema` must be a plain identifier (a letter or underscore, then letters, "
                f"digits or underscores; at most 63), not {value!r}"
            )
        return value


# Column kinds, spelled per warehouse below. Times travel as ISO 8601 text (as the
# state store keeps them) and each warehouse parses them into its own timestamp type.
_TEXT, _INT, _BOOL, _FLOAT, _TIME = "text", "bigint", "bool", "double", "time"

_RUN_COLUMNS: tuple[tuple[str, str, bool], ...] = (  # name, kind, nullable
    ("project", _TEXT, False),
    ("run_id", _INT, False),
    ("sync", _TEXT, False),
    ("status", _TEXT, False),
    ("mode", _TEXT, False),
    ("destination", _TEXT, False),
    ("object", _TEXT, False),
    ("full_sync", _BOOL, False),
    ("forced", _BOOL, False),
    ("revert_of", _INT, True),
    ("started_at", _TIME, False),
    ("finished_at", _TIME, True),
    ("duration_s", _FLOAT, False),
    ("planned_added", _INT, False),
    ("planned_changed", _INT, False),
    ("planned_removed", _INT, False),
    ("planned_unchanged", _INT, False),
    ("planned_invalid", _INT, False),
    ("delivered_created", _INT, False),
    ("delivered_updated", _INT, False),
    ("delivered_deleted", _INT, False),
    ("rejected", _INT, False),
    ("error", _TEXT, True),
    ("verdict", _TEXT, True),
)

_CHANGE_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("project", _TEXT, False),
    ("run_id", _INT, False),
    ("sync", _TEXT, False),
    ("key", _TEXT, False),
    ("field", _TEXT, True),  # null: a record that carried no fields (see audit.change_table)
    ("old_value", _TEXT, True),
    ("new_value", _TEXT, True),
    ("op", _TEXT, False),
    ("changed_at", _TIME, False),
)

_ARROW = {_TEXT: pa.string(), _INT: pa.int64(), _BOOL: pa.bool_(), _FLOAT: pa.float64(),
          _TIME: pa.string()}
_DUCKDB = {_TEXT: "varchar", _INT: "bigint", _BOOL: "boolean", _FLOAT: "double",
           _TIME: "timestamptz"}


def _arrow_schema(columns: tuple[tuple[str, str, bool], ...]) -> pa.Schema:
    return pa.schema([pa.field(name, _ARROW[kind], nullable) for name, kind, nullable in columns])


RUNS_SCHEMA = _arrow_schema(_RUN_COLUMNS)
CHANGES_SCHEMA = _arrow_schema(_CHANGE_COLUMNS)

RUNS_TABLE, CHANGES_TABLE = "sync_runs", "sync_changes"
_CHUNK_ROWS = 50_000  # rows per COPY chunk or executemany call: bounds memory, not speed


def write_back(
    config: WritebackConfig,
    source_config: WritebackSource,
    root: Path,
    store: Store,
    run_ids: Sequence[int],
    *,
    project: str,
) -> None:
    """Write runs ``run_ids`` (and, with ``config.changes``, their changes) to the warehouse.

    Creates the schema and tables when absent (and a DuckDB or SQLite file that
    does not exist yet). Each run's earlier rows are replaced, all in one warehouse
    transaction. Raises SourceError naming the writeback source when the warehouse
    cannot be reached or written; nothing is then written.
    """
    ids = list(dict.fromkeys(int(i) for i in run_ids))
    if not ids:
        return
    records = []
    for run_id in ids:
        try:
            records.append(runs.get_run(store, run_id))
        except KeyError:
            raise ConfigError(Problem(f"there is no run {run_id}",
                                      fix="list runs with `tidegate runs`")) from None
    table = _run_rows(records, project)
    changes = (
        (_change_rows(store, r, project) for r in records) if config.changes else None
    )
    if isinstance(source_config, DuckDBSourceConfig):
        _write_duckdb(config, source_config, root, project, table, changes)
    else:
        _write_sqlalchemy(config, _sqlalchemy_url(source_config, root), project, table,
                          changes)


def _run_rows(records: Sequence[runs.RunRecord], project: str) -> pa.Table:
    """The ``sync_runs`` rows of ``records`` (``RUNS_SCHEMA``)."""
    rows = [
        {
            "project": project,
            "run_id": r.id,
            "sync": r.sync,
            "status": r.status,
            "mode": r.mode,
            "destination": r.destination,
            "object": r.object,
            "full_sync": r.full,
            "forced": r.forced,
            "revert_of": r.revert_of,
            "started_at": r.started_at.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "duration_s": r.duration_s,
            "planned_added": r.planned.added,
            "planned_changed": r.planned.changed,
            "planned_removed": r.planned.removed,
            "planned_unchanged": r.planned.unchanged,
            "planned_invalid": r.planned.invalid,
            "delivered_created": r.delivered.get("created", 0),
            "delivered_updated": r.delivered.get("updated", 0),
            "delivered_deleted": r.delivered.get("deleted", 0),
            "rejected": r.rejected,
            "error": r.error,
            "verdict": json.dumps(r.verdict) if r.verdict is not None else None,
        }
        for r in records
    ]
    return pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)


def _change_rows(store: Store, record: runs.RunRecord, project: str) -> pa.Table:
    """The ``sync_changes`` rows of one run (``CHANGES_SCHEMA``), from the audit log."""
    found = audit.change_table(store, record.id)
    n = found.num_rows

    def constant(value: Any, type_: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, type_), n)

    def text(name: str) -> pa.ChunkedArray:
        # DuckDB may hand back string views or large strings; every writer wants plain text.
        return found[name].cast(pa.string())

    return pa.Table.from_arrays(
        [constant(project, pa.string()), constant(record.id, pa.int64()),
         constant(record.sync, pa.string()), text("key"), text("field"), text("old"),
         text("new"), text("op"), text("at")],
        schema=CHANGES_SCHEMA,
    )


# ---------------------------------------------------------------- DuckDB


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _duckdb_path(source: DuckDBSourceConfig, root: Path) -> Path:
    path = Path(source.path)
    return path if path.is_absolute() else root / path


# How DuckDB says the file is held by another process, or by this one under other settings.
_IN_USE = ("lock", "different configuration", "already attached", "in use")


def _write_duckdb(
    config: WritebackConfig, source: DuckDBSourceConfig, root: Path, project: str,
    runs_data: pa.Table, changes: Iterator[pa.Table] | None,
) -> None:
    import duckdb

    name = config.source
    if source.path == ":memory:":
        raise SourceError(
            f"writeback source '{name}': an in-memory DuckDB database keeps nothing once "
            "tidegate exits; give the source a `path` to a DuckDB file"
        )
    path = _duckdb_path(source, root)
    # The planner opens this file read-only; DuckDB admits one writing process or
    # any number of reading ones, so the write holds it only as long as it lasts.
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        message = redact(str(exc))
        hint = ""
        if any(w in message.lower() for w in _IN_USE):
            hint = (" because it is open elsewhere (locked by another process, or open "
                    "read-only in this one); the runs stay pending for the next write-back")
        raise SourceError(
            f"writeback source '{name}': cannot open DuckDB file {path} for writing{hint}: "
            f"{message}"
        ) from exc
    schema = _quote(config.schema_)
    runs_name = f"{schema}.{_quote(RUNS_TABLE)}"
    changes_name = f"{schema}.{_quote(CHANGES_TABLE)}"
    try:
        con.begin()
        con.execute(f"create schema if not exists {schema}")
        con.execute(_duckdb_ddl(runs_name, _RUN_COLUMNS, "primary key (project, run_id)"))
        con.register("incoming_runs", runs_data)
        con.execute(f"delete from {runs_name} where project = ? and run_id in "
                    "(select run_id from incoming_runs)", [project])
        con.execute(_duckdb_insert(runs_name, "incoming_runs", _RUN_COLUMNS))
        if changes is not None:
            con.execute(_duckdb_ddl(changes_name, _CHANGE_COLUMNS, None))
            con.execute(f"delete from {changes_name} where project = ? and run_id in "
                        "(select run_id from incoming_runs)", [project])
            for part in changes:
                con.register("incoming_changes", part)
                con.execute(_duckdb_insert(changes_name, "incoming_changes", _CHANGE_COLUMNS))
                con.unregister("incoming_changes")
        con.commit()
    except duckdb.Error as exc:
        # The failed statement may already have ended the transaction.
        with contextlib.suppress(duckdb.Error):
            con.rollback()
        raise SourceError(
            f"writeback source '{name}': cannot write to {path}: {redact(str(exc))}"
        ) from exc
    finally:
        con.close()


def _duckdb_ddl(table: str, columns: tuple[tuple[str, str, bool], ...],
                constraint: str | None) -> str:
    parts = [f"{_quote(n)} {_DUCKDB[k]}{'' if nullable else ' not null'}"
             for n, k, nullable in columns]
    if constraint:
        parts.append(constraint)
    return f"create table if not exists {table} ({', '.join(parts)})"


def _duckdb_insert(table: str, view: str, columns: tuple[tuple[str, str, bool], ...]) -> str:
    names = ", ".join(_quote(n) for n, _, _ in columns)
    values = ", ".join(f"cast({_quote(n)} as timestamptz)" if k == _TIME else _quote(n)
                       for n, k, _ in columns)
    return f"insert into {table} ({names}) select {values} from {view}"


# ---------------------------------------------------------------- SQLAlchemy


def _sqlalchemy_url(source: SQLiteSourceConfig | SQLAlchemySourceConfig, root: Path) -> str:
    from tidegate.sources.sqlalchemy import engine_url

    if isinstance(source, SQLiteSourceConfig):
        if source.url is not None:
            return source.url
        path = Path(source.path or "")
        return f"sqlite:///{path if path.is_absolute() else root / path}"
    return engine_url(source.url.get_secret_value())


def _sa_tables(dialect: str, schema: str) -> tuple[sa.Table, sa.Table]:
    import sqlalchemy as sa

    # SQLite has no schemas (only attached files): the schema becomes a name prefix.
    on_sqlite = dialect == "sqlite"
    prefix, where = (f"{schema}_", None) if on_sqlite else ("", schema)
    types: dict[str, sa.types.TypeEngine[Any]] = {
        _TEXT: sa.Text(), _INT: sa.BigInteger(), _BOOL: sa.Boolean(),
        _FLOAT: sa.Double(),
        # SQLAlchemy's SQLite DATETIME drops the offset; keep tidegate's ISO text there.
        _TIME: sa.Text() if on_sqlite else sa.DateTime(timezone=True),
    }
    metadata = sa.MetaData()
    runs_t = sa.Table(
        prefix + RUNS_TABLE, metadata,
        *(sa.Column(n, types[k], nullable=nullable, primary_key=n in ("project", "run_id"))
          for n, k, nullable in _RUN_COLUMNS),
        schema=where,
    )
    changes_t = sa.Table(
        prefix + CHANGES_TABLE, metadata,
        *(sa.Column(n, types[k], nullable=nullable) for n, k, nullable in _CHANGE_COLUMNS),
        sa.Index(f"ix_{prefix}{CHANGES_TABLE}_run", "project", "run_id"),
        schema=where,
    )
    return runs_t, changes_t


def _write_sqlalchemy(
    config: WritebackConfig, url: str, project: str, runs_data: pa.Table,
    changes: Iterator[pa.Table] | None,
) -> None:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.pool import NullPool

    name = config.source
    register_url(url)  # the caller may not have loaded a project that registered it
    try:
        parsed = sa.make_url(url)
        driver = parsed.get_driver_name()
        connect_args = {"connect_timeout": 15} if driver == "psycopg" else {}
        engine = sa.create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise SourceError(
            f"writeback source '{name}': cannot use this URL ({redact(str(exc))}); "
            "install the driver for it, e.g. pip install 'tidegate[postgres]'"
        ) from exc
    others: tuple[type[Exception], ...] = (sa_exc.SQLAlchemyError,)
    if driver == "psycopg":
        import psycopg

        others = (*others, psycopg.Error)  # raised by COPY, which bypasses SQLAlchemy
    dialect = engine.dialect.name
    runs_t, changes_t = _sa_tables(dialect, config.schema_)
    ids = runs_data["run_id"].to_pylist()
    step = "connect"
    try:
        with engine.begin() as conn:
            step = "create its tables"
            if dialect == "postgresql":
                # Two write-backs at once would both delete nothing, then both insert.
                conn.execute(sa.text("select pg_advisory_xact_lock(:key)"),
                             {"key": _lock_key(f"tidegate-writeback:{config.schema_}")})
            if dialect != "sqlite" and not sa.inspect(conn).has_schema(config.schema_):
                conn.execute(sa.schema.CreateSchema(config.schema_, if_not_exists=True))
            tables = [runs_t, changes_t] if changes is not None else [runs_t]
            runs_t.metadata.create_all(conn, tables=tables, checkfirst=True)
            step = "write"
            for table in tables:
                conn.execute(table.delete().where(table.c.project == project,
                                                  table.c.run_id.in_(ids)))
            _insert(conn, runs_t, runs_data, driver)
            for part in changes or ():
                _insert(conn, changes_t, part, driver)
    except sa_exc.DBAPIError as exc:
        detail = _detail(exc.orig if exc.orig is not None else exc)
        raise SourceError(f"writeback source '{name}': cannot {step}: {detail}") from exc
    except others as exc:
        raise SourceError(f"writeback source '{name}': cannot {step}: {_detail(exc)}") from exc
    finally:
        engine.dispose()


def _detail(exc: BaseException) -> str:
    # PostgreSQL's DETAIL and CONTEXT quote the failing row, which may be customer
    # data from the change log: keep its primary message when it has one.
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return redact(primary if isinstance(primary, str) and primary else str(exc)).strip()


def _insert(conn: sa.Connection, table: sa.Table, data: pa.Table, driver: str) -> None:
    if data.num_rows == 0:
        return
    if driver == "psycopg":
        _copy(conn, table, data)
        return
    times = [] if conn.dialect.name == "sqlite" else [
        c.name for c in table.columns if c.type.python_type is datetime]
    for batch in data.to_batches(max_chunksize=_CHUNK_ROWS):
        rows = batch.to_pylist()
        for row in rows:
            for column in times:
                if row[column] is not None:
                    row[column] = datetime.fromisoformat(row[column])
        conn.execute(table.insert(), rows)


def _copy(conn: sa.Connection, table: sa.Table, data: pa.Table) -> None:
    """PostgreSQL's COPY, fed CSV that pyarrow writes: no Python object per value."""
    import pyarrow.csv as pa_csv

    prep = conn.dialect.identifier_preparer
    columns = ", ".join(prep.quote(c.name) for c in table.columns)
    sql = f"copy {prep.format_table(table)} ({columns}) from stdin with (format csv)"
    # pyarrow quotes every text value and leaves nulls empty and unquoted, which is
    # exactly how COPY's CSV tells NULL from the empty string.
    options = pa_csv.WriteOptions(include_header=False)
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(sql) as copy:
        for batch in data.select([c.name for c in table.columns]).to_batches(
                max_chunksize=_CHUNK_ROWS):
            sink = io.BytesIO()
            pa_csv.write_csv(batch, sink, options)
            copy.write(sink.getbuffer())


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31


# ---------------------------------------------------------------- what was written

_BOOKKEEPING = ("create table if not exists tidegate_writeback "
                "(run_id bigint primary key, written_at text not null)")
_ready: weakref.WeakSet[Store] = weakref.WeakSet()


def _ensure_bookkeeping(store: Store) -> None:
    if store in _ready:
        return
    with store.transaction() as tx:
        tx.lock("tidegate-writeback")  # two processes creating it at once collide on PostgreSQL
        tx.execute(_BOOKKEEPING)
    _ready.add(store)


def pending(store: Store, limit: int = 100) -> list[int]:
    """Finished runs not written back since they finished, oldest first, at most ``limit``."""
    _ensure_bookkeeping(store)
    with store.transaction() as tx:
        rows = tx.execute(
            "select r.id from tidegate_runs r "
            "left join tidegate_writeback w on w.run_id = r.id "
            "where r.status <> 'running' and (w.run_id is null or "
            "w.written_at < coalesce(r.finished_at, r.started_at)) "
            "order by r.id limit ?",
            (limit,),
        )
    return [int(r[0]) for r in rows]


def mark_written(store: Store, run_ids: Sequence[int], *, at: datetime | None = None) -> None:
    """Record that ``run_ids`` were written back.

    ``at`` is when the write began (default: now). A run that finishes again after
    it is no longer counted as written, so passing the start of the write keeps a
    run that finished during the write pending.
    """
    _ensure_bookkeeping(store)
    when = runs.stamp(at)
    with store.transaction() as tx:
        tx.executemany(
            "insert into tidegate_writeback (run_id, written_at) values (?, ?) "
            "on conflict (run_id) do update set written_at = excluded.written_at",
            [(int(i), when) for i in dict.fromkeys(run_ids)],
        )


def catch_up(
    config: WritebackConfig,
    source_config: WritebackSource,
    root: Path,
    store: Store,
    *,
    project: str,
    limit: int = 100,
) -> list[int]:
    """Write back every pending run (at most ``limit``) and mark it written; return their ids.

    On SourceError nothing is marked: the runs stay pending for the next call.
    """
    ids = pending(store, limit)
    if ids:
        began = runs.now()
        write_back(config, source_config, root, store, ids, project=project)
        mark_written(store, ids, at=began)
    return ids
