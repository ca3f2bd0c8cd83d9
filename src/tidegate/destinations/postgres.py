"""The postgres destination: a PostgreSQL table kept in step with the model by key.

This module owns everything between a batch and a table: creating the table
from the model's Arrow schema (or checking that an existing one can take the
sync), connections (one per sending thread), loading each batch with a single
COPY, applying it with one statement per operation, finding the records
PostgreSQL refuses, and turning PostgreSQL's errors into tidegate's.

A batch is COPYed, as CSV written by Arrow, into a temporary table of text
columns numbered by row, then applied in one transaction:

    upsert  INSERT … SELECT … ON CONFLICT (match) DO UPDATE
    insert  INSERT … ON CONFLICT (match) DO NOTHING; rows not inserted "already exist"
    update  UPDATE … FROM; rows that matched nothing are "not found"
    delete  DELETE … USING; a key that is already gone is fine

Values are cast to the table's column types inside that statement, so a value
the table cannot take fails there and not in COPY. When the statement fails
on data (SQLSTATE classes 22 and 23, a trigger's RAISE) the batch is split in
halves inside savepoints until each failing record stands alone: only those
records are rejected, with PostgreSQL's message, and the rest commit.
"""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import Field, SecretStr

from tidegate.destinations.base import (
    ALL_MODES,
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    SyncTarget,
)
from tidegate.errors import (
    ConfigError,
    DestinationError,
    Problem,
    RetryableError,
    TidegateError,
)
from tidegate.redact import redact, redact_url, register_url

__all__ = ["PostgresConfig", "PostgresDestination", "pg_type"]

Connection = psycopg.Connection[Any]
Rejected = dict[int, str]  # row index in the batch → PostgreSQL's message

_STAGE = "_tidegate_stage"
_ROW = "_tidegate_row"
_ALREADY_EXISTS = "already exists"
_NOT_FOUND = "not found"
_INSERTING_MODES = frozenset({"insert", "upsert", "mirror"})

# Errors that belong to a record, not to the batch: bad values (22), broken
# constraints (23), a trigger's RAISE EXCEPTION, and two rows of one batch
# hitting the same target row (21000), which applying them apart resolves.
_RECORD_ERRORS: tuple[type[psycopg.Error], ...] = (
    pg_errors.DataError,
    pg_errors.IntegrityError,
    pg_errors.RaiseException,
    pg_errors.CardinalityViolation,
)
# Connection exceptions, serialization failures and deadlocks, too many
# connections / out of disk, shutdowns and cancels, system I/O errors.
_RETRYABLE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_RETRYABLE_STATES = frozenset({"55P03"})  # lock_not_available

# Connection refusals that no retry can fix, and what to do about each.
_REFUSALS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), fix)
    for pattern, fix in (
        (r"password authentication failed|no password supplied|authentication failed",
         "check the user and password in the destination's `url` "
         "(keep the password in an environment variable: url: ${PG_URL})"),
        (r'role "[^"]*" does not exist',
         "correct the user name in `url`, or CREATE ROLE … LOGIN on the server"),
        (r'database "[^"]*" does not exist',
         "correct the database name in `url`, or CREATE DATABASE it on the server"),
        (r"permission denied for database|CONNECT privilege",
         "GRANT CONNECT ON DATABASE … TO the user of `url`"),
        (r"pg_hba\.conf",
         "allow this client in the server's pg_hba.conf, or set the sslmode it requires "
         "in `url` (?sslmode=require)"),
        (r"does not support SSL|certificate|sslmode",
         "correct the SSL settings in `url` (sslmode, sslrootcert)"),
        (r"invalid (integer|connection option|URI|sslmode)|missing \"=\"|invalid port",
         "correct `url`: postgresql://user:password@host:5432/database"),
    )
)
# Permanent failures while writing, and the fix for each.
_WRITE_FIXES = {
    "42501": "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO the user of `url`",
    "42P01": "the table is gone; run again to create it (create_table: true) or create it",
    "42703": "ALTER TABLE {table} ADD COLUMN … for the missing column",
    "42P10": "CREATE UNIQUE INDEX ON {table} (the match columns)",
    "25006": "point `url` at the primary server, not a read-only replica",
}


class PostgresConfig(DestinationConfig):
    """``{type: postgres, url: "${PG_URL}"}``; the sync's ``object`` is ``schema.table``."""

    type: Literal["postgres"]
    url: SecretStr
    max_records: int = Field(default=10_000, gt=0, le=100_000)
    concurrency: int = Field(default=2, gt=0, le=32)
    create_table: bool = True


# Arrow types → PostgreSQL types --------------------------------------------------


def pg_type(t: pa.DataType) -> str:
    """The PostgreSQL column type tidegate gives an Arrow type when it creates a table."""
    if isinstance(t, pa.ExtensionType):
        return "uuid" if t.extension_name == "arrow.uuid" else pg_type(t.storage_type)
    if pa.types.is_dictionary(t):
        return pg_type(t.value_type)
    for is_type, name in _SIMPLE_TYPES:
        if is_type(t):
            return name
    if pa.types.is_decimal(t):
        # numeric(p, s) allows 1000 digits at most; wider ones go unconstrained.
        return f"numeric({t.precision},{t.scale})" if t.precision <= 1000 else "numeric"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_nested(t):
        return "jsonb"
    return "text"


_SIMPLE_TYPES: tuple[tuple[Callable[[pa.DataType], bool], str], ...] = (
    (pa.types.is_boolean, "boolean"),
    (lambda t: pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t), "smallint"),
    (lambda t: pa.types.is_int32(t) or pa.types.is_uint16(t), "integer"),
    (lambda t: pa.types.is_int64(t) or pa.types.is_uint32(t), "bigint"),
    (pa.types.is_uint64, "numeric(20,0)"),  # beyond bigint's range
    (lambda t: pa.types.is_float16(t) or pa.types.is_float32(t), "real"),
    (pa.types.is_float64, "double precision"),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "text"),
    (lambda t: (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or pa.types.is_fixed_size_binary(t)), "bytea"),
    (pa.types.is_date, "date"),
    (pa.types.is_time, "time"),
    (pa.types.is_duration, "interval"),
    (pa.types.is_interval, "interval"),
)


# Arrow columns → CSV that COPY reads ---------------------------------------------


def _csv(table: pa.Table) -> bytes:
    """The table as headerless CSV: strings quoted, NULL as an empty unquoted field.

    That is exactly COPY's CSV convention, so empty strings and NULLs survive.
    """
    ready = pa.table({name: _copyable(table.column(name)) for name in table.column_names})
    buffer = io.BytesIO()
    pa_csv.write_csv(ready, buffer, pa_csv.WriteOptions(include_header=False))
    return buffer.getvalue()


def _copyable(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A column Arrow's CSV writer can write in the text form PostgreSQL reads."""
    t = col.type
    if isinstance(t, pa.ExtensionType):
        if t.extension_name == "arrow.uuid":
            return _each(col, lambda v: str(uuid.UUID(bytes=v)) if isinstance(v, bytes) else str(v))
        return _copyable(pa.chunked_array([c.storage for c in col.chunks], t.storage_type))
    if pa.types.is_dictionary(t):
        return _copyable(col.cast(t.value_type))
    if pa.types.is_float16(t):
        return col.cast(pa.float32())
    if pa.types.is_duration(t):
        # Arrow writes a bare number; PostgreSQL reads a bare number as seconds.
        micros = col.cast(pa.duration("us"), safe=False).cast(pa.int64()).cast(pa.string())
        return pc.binary_join_element_wise(micros, " microseconds", "")
    # The rest have no text form in Arrow's CSV writer; these are rare types,
    # converted value by value.
    if pa.types.is_interval(t):
        return _each(col, lambda v: f"{v.months} mons {v.days} days {v.nanoseconds // 1000} us")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return _each(col, lambda v: "\\x" + v.hex())
    if pa.types.is_nested(t):
        return _each(col, lambda v: json.dumps(v, default=str))
    if any(is_type(t) for is_type in _CSV_NATIVE):
        return col
    return _each(col, str)


# The types Arrow's CSV writer writes as PostgreSQL reads them.
_CSV_NATIVE: tuple[Callable[[pa.DataType], bool], ...] = (
    pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal,
    pa.types.is_string, pa.types.is_large_string, pa.types.is_date, pa.types.is_time,
    pa.types.is_timestamp, pa.types.is_null,
)


def _each(col: pa.ChunkedArray, text: Callable[[Any], str]) -> pa.Array:
    return pa.array([None if v is None else text(v) for v in col.to_pylist()], pa.string())


# Error classification ------------------------------------------------------------


def _message(exc: psycopg.Error) -> str:
    """PostgreSQL's message and detail, one line, with every secret masked."""
    primary = exc.diag.message_primary or str(exc).strip()
    detail = exc.diag.message_detail
    text = f"{primary} ({detail})" if detail else primary
    return redact(" ".join(text.split()))[:500]


def _is_retryable(exc: psycopg.Error) -> bool:
    state = exc.sqlstate
    if not state:  # no answer from the server: the connection failed or was lost
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in _RETRYABLE_CLASSES or state in _RETRYABLE_STATES


def _refusal_fix(message: str) -> str | None:
    for pattern, fix in _REFUSALS:
        if pattern.search(message):
            return fix
    return None


def _quoted(*names: str) -> str:
    """An identifier as it can be pasted into SQL: ``"crm"."accounts"``."""
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


# The destination -----------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    """A column of the target table, as far as loading it is concerned."""

    cast: str  # the type staged text is cast to, without a length that would truncate
    not_null: bool
    filled: bool  # has a default, or is an identity or generated column


class PostgresDestination(Destination):
    """Keeps ``schema.table`` equal to the model, by the sync's match columns."""

    kind = "postgres"
    config_model = PostgresConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES, max_records=10_000, concurrency=2,
        matches_by="the match columns, which need a primary key or unique index",
    )

    def __init__(self, name: str, config: PostgresConfig, target: SyncTarget) -> None:
        super().__init__(name, config, target)
        self.settings = config
        self._url = config.url.get_secret_value()
        register_url(self._url)
        schema, _, table = target.object.rpartition(".")
        self.schema, self.table = schema or "public", table
        self.ident = sql.Identifier(self.schema, self.table)
        self.display = _quoted(self.schema, self.table)
        self._local = threading.local()
        self._open: list[Connection] = []
        self._lock = threading.Lock()
        self._columns: dict[str, _Column] | None = None

    # Connections ------------------------------------------------------------------

    def _connect(self) -> Connection:
        try:
            return psycopg.connect(
                self._url, autocommit=True, connect_timeout=10,
                client_encoding="utf8",  # the CSV that COPY reads is UTF-8
                fallback_application_name="tidegate",
            )
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None

    def _connect_error(self, exc: psycopg.Error) -> TidegateError:
        message = redact(" ".join(str(exc).split()))
        where = redact_url(self._url)
        fix = _refusal_fix(message)
        if fix is not None or not isinstance(exc, psycopg.OperationalError):
            return DestinationError(
                f"{self.describe()} cannot connect to {where}: {message}. "
                f"Fix: {fix or 'check `url`'}"
            )
        return RetryableError(f"cannot reach PostgreSQL at {where}: {message}")

    def _conn(self) -> Connection:
        """This thread's connection: each sending thread writes on its own."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._open.append(conn)
        return conn

    def _discard(self, conn: Connection) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)
        conn.close()

    def check(self) -> None:
        try:
            with self._connect() as conn:
                conn.execute("select 1")
        except RetryableError as exc:
            raise DestinationError(f"{self.describe()}: {exc}") from None
        except psycopg.Error as exc:
            raise DestinationError(f"{self.describe()}: {_message(exc)}") from None

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            conn.close()

    # Preparation ------------------------------------------------------------------

    def prepare(self, schema: pa.Schema) -> None:
        """Create the table, or check that the existing one can take every batch."""
        match = list(self.target.match_fields)
        if not match:
            raise ConfigError(Problem(
                f"no match columns for {self.display}", key="match",
                fix="set `match` or the sync's `primary_key`"))
        try:
            with self._connect() as conn:
                columns = self._describe(conn)
                if not columns:
                    self._create(conn, schema, match)
                    columns = self._describe(conn)
                else:
                    self._check_table(conn, columns, schema, match)
        except psycopg.Error as exc:
            raise self._write_error(exc) from None
        self._columns = columns

    def _describe(self, conn: Connection) -> dict[str, _Column]:
        """The table's columns by name; empty when there is no such table."""
        rows = conn.execute(
            """
            select a.attname,
                   case t.typname when 'bpchar' then 'bpchar' when '_bpchar' then 'bpchar[]'
                                  when 'bit' then 'varbit' when '_bit' then 'varbit[]'
                                  else format_type(a.atttypid, null) end,
                   a.attnotnull,
                   a.atthasdef or a.attidentity <> '' or a.attgenerated <> ''
            from pg_attribute a
            join pg_class c on c.oid = a.attrelid
            join pg_namespace n on n.oid = c.relnamespace
            join pg_type t on t.oid = a.atttypid
            where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped
            order by a.attnum
            """,
            (self.schema, self.table),
        ).fetchall()
        return {name: _Column(cast, not_null, filled) for name, cast, not_null, filled in rows}

    def _create(self, conn: Connection, schema: pa.Schema, match: list[str]) -> None:
        if not self.settings.create_table:
            raise ConfigError(Problem(
                f"table {self.display} does not exist", key="object",
                fix=f"{self._create_ddl(schema, match)}; or set `create_table: true` on "
                    f"destination '{self.name}'"))
        with conn.transaction():
            # Shards of one sync prepare at once; the first creates, the rest wait.
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (self.display,))
            exists = conn.execute(
                "select 1 from pg_namespace where nspname = %s", (self.schema,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("create schema if not exists {}").format(
                    sql.Identifier(self.schema)))
            conn.execute(sql.SQL(self._create_ddl(schema, match, if_not_exists=True)))

    def _create_ddl(self, schema: pa.Schema, match: list[str], *, if_not_exists: bool = False
                    ) -> str:
        columns = [f"{_quoted(f.name)} {pg_type(f.type)}" for f in schema]
        columns.append(f"primary key ({', '.join(_quoted(m) for m in match)})")
        guard = "if not exists " if if_not_exists else ""
        return f"CREATE TABLE {guard}{self.display} ({', '.join(columns)})"

    def _check_table(self, conn: Connection, columns: dict[str, _Column], schema: pa.Schema,
                     match: list[str]) -> None:
        # Deletes write only the match columns.
        needed = match if self.target.mode == "delete" else schema.names
        problems = [
            Problem(f"table {self.display} has no column {_quoted(f.name)}", key="fields",
                    fix=f"ALTER TABLE {self.display} ADD COLUMN {_quoted(f.name)} "
                        f"{pg_type(f.type)}, or map the field to one of its columns: "
                        f"{', '.join(columns)}")
            for f in schema if f.name in needed and f.name not in columns
        ]
        if not self._has_unique_index(conn, match):
            cols = ", ".join(_quoted(m) for m in match)
            problems.append(Problem(
                f"table {self.display} has no primary key or unique index on ({cols}), "
                "which matching needs", key="match",
                fix=f"CREATE UNIQUE INDEX ON {self.display} ({cols})"))
        if self.target.mode in _INSERTING_MODES:
            problems += [
                Problem(f"column {_quoted(name)} of {self.display} is NOT NULL without a "
                        "default and the sync maps no field to it, so no record could be "
                        "created", key="fields",
                        fix=f"map a field to {_quoted(name)}, or ALTER TABLE {self.display} "
                            f"ALTER COLUMN {_quoted(name)} DROP NOT NULL (or SET DEFAULT …)")
                for name, col in columns.items()
                if col.not_null and not col.filled and name not in schema.names
            ]
        if problems:
            raise ConfigError(problems)

    def _has_unique_index(self, conn: Connection, match: list[str]) -> bool:
        """Whether ON CONFLICT (match) has an arbiter: a plain, valid, immediate unique index."""
        rows = conn.execute(
            """
            select array(select a.attname
                         from unnest(i.indkey[0:i.indnkeyatts - 1]) k(num)
                         join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.num)
            from pg_index i
            join pg_class c on c.oid = i.indrelid
            join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = %s and c.relname = %s and i.indisunique and i.indisvalid
              and i.indimmediate and i.indpred is null and i.indexprs is null
            """,
            (self.schema, self.table),
        ).fetchall()
        return any(sorted(r[0]) == sorted(match) for r in rows)

    def _columns_of(self, conn: Connection, names: Iterable[str]) -> list[_Column]:
        """The target columns a batch writes; loaded here when ``prepare`` was skipped."""
        if self._columns is None:
            self._columns = self._describe(conn)
        missing = [n for n in names if n not in self._columns]
        if missing:
            raise ConfigError(Problem(
                f"table {self.display} has no column(s) {', '.join(map(_quoted, missing))}",
                key="fields", fix=f"ALTER TABLE {self.display} ADD COLUMN …"))
        return [self._columns[n] for n in names]

    # Writing ----------------------------------------------------------------------

    def write(self, batch: Batch) -> BatchResult:
        if not len(batch):
            return BatchResult()
        table = batch.table
        if batch.operation == "delete":  # rows gone from the model carry only their match
            table = table.select(list(self.target.match_fields))
        conn = self._conn()
        try:
            rejected = self._write(conn, batch.operation, table)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._discard(conn)
            raise self._write_error(exc) from None
        return BatchResult(rejected={batch.keys[i]: rejected[i] for i in sorted(rejected)})

    def _write_error(self, exc: psycopg.Error) -> TidegateError:
        message = _message(exc)
        if _is_retryable(exc):
            return RetryableError(f"PostgreSQL ({redact_url(self._url)}): {message}")
        fix = _WRITE_FIXES.get(exc.sqlstate or "", "")
        return DestinationError(
            f"{self.describe()} could not write to {self.display}: {message}"
            + (f". Fix: {fix.format(table=self.display)}" if fix else ""))

    def _write(self, conn: Connection, op: str, table: pa.Table) -> Rejected:
        """Stage and apply one batch in one transaction; the rows not applied, with why."""
        names = table.column_names
        casts = [c.cast for c in self._columns_of(conn, names)]
        staged = table.add_column(0, _ROW, pa.array(range(table.num_rows), pa.int32()))
        statement, reason = self._statement(op, names, casts)
        with conn.transaction():
            # A deferred constraint would fail at COMMIT, outside the savepoints that
            # single out the offending record; checked per statement, it fails inside.
            conn.execute("set constraints all immediate")
            conn.execute(sql.SQL("create temp table {} ({}) on commit drop").format(
                sql.Identifier(_STAGE),
                sql.SQL(", ").join([
                    sql.SQL("{} integer").format(sql.Identifier(_ROW)),
                    *(sql.SQL("{} text").format(sql.Identifier(n)) for n in names)])))
            rejected = _bisect(conn, 0, staged.num_rows, lambda lo, hi: _copy(
                conn, staged.slice(lo, hi - lo)))
            rejected |= _bisect(conn, 0, staged.num_rows, lambda lo, hi: _apply(
                conn, statement, reason, lo, hi))
        return rejected

    def _statement(self, op: str, names: list[str], casts: list[str]
                   ) -> tuple[sql.Composed, str]:
        """The statement that applies staged rows ``lo`` ≤ row < ``hi``.

        insert and update return the rows they did not apply; their reason comes along.
        """
        typed = {n: sql.SQL("s.{}::{}").format(sql.Identifier(n), sql.SQL(c))
                 for n, c in zip(names, casts, strict=True)}
        match = list(self.target.match_fields)
        rest = [n for n in names if n not in match]
        s = _Sql(
            target=self.ident, stage=sql.Identifier(_STAGE), row=sql.Identifier(_ROW),
            cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            values=sql.SQL(", ").join(typed[n] for n in names),
            conflict=sql.SQL(", ").join(map(sql.Identifier, match)),
            on=sql.SQL(" and ").join(
                sql.SQL("t.{} = {}").format(sql.Identifier(m), typed[m]) for m in match),
            in_range=sql.SQL("s.{row} >= %(lo)s and s.{row} < %(hi)s").format(
                row=sql.Identifier(_ROW)),
        )
        if op == "upsert":
            return s.upsert(rest), ""
        if op == "insert":
            return s.insert(match, typed), _ALREADY_EXISTS
        if op == "update":
            return s.update(rest or match, typed), _NOT_FOUND
        if op == "delete":
            return s.delete(), ""
        raise DestinationError(f"{self.describe()} cannot apply operation {op!r}")


@dataclass(frozen=True)
class _Sql:
    """The pieces every operation's statement is made of, already quoted."""

    target: sql.Identifier
    stage: sql.Identifier
    row: sql.Identifier
    cols: sql.Composable
    values: sql.Composable
    conflict: sql.Composable
    on: sql.Composable
    in_range: sql.Composable

    def _insert(self) -> sql.Composed:
        return sql.SQL("insert into {} as t ({}) select {} from {} s where {}").format(
            self.target, self.cols, self.values, self.stage, self.in_range)

    def upsert(self, rest: list[str]) -> sql.Composed:
        if not rest:
            return sql.SQL("{} on conflict ({}) do nothing").format(self._insert(), self.conflict)
        sets = sql.SQL(", ").join(
            sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(n)) for n in rest)
        return sql.SQL("{} on conflict ({}) do update set {}").format(
            self._insert(), self.conflict, sets)

    def insert(self, match: list[str], typed: dict[str, sql.Composed]) -> sql.Composed:
        # RETURNING sees only the inserted row, so rows are told apart by their
        # match values, compared by PostgreSQL after the same cast.
        returning = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(m)) for m in match)
        same = sql.SQL(" and ").join(
            sql.SQL("d.{} = {}").format(sql.Identifier(m), typed[m]) for m in match)
        return sql.SQL(
            "with done as ({} on conflict ({}) do nothing returning {}) "
            "select s.{} from {} s where {} and not exists (select from done d where {})"
        ).format(self._insert(), self.conflict, returning, self.row, self.stage,
                 self.in_range, same)

    def update(self, columns: list[str], typed: dict[str, sql.Composed]) -> sql.Composed:
        sets = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(n), typed[n]) for n in columns)
        return sql.SQL(
            "with done as (update {} t set {} from {} s where {} and {} returning s.{row}) "
            "select s.{row} from {} s where {} "
            "and not exists (select from done d where d.{row} = s.{row})"
        ).format(self.target, sets, self.stage, self.on, self.in_range, self.stage,
                 self.in_range, row=self.row)

    def delete(self) -> sql.Composed:
        return sql.SQL("delete from {} t using {} s where {} and {}").format(
            self.target, self.stage, self.on, self.in_range)


def _copy(conn: Connection, rows: pa.Table) -> Rejected:
    query = sql.SQL("copy {} from stdin (format csv)").format(sql.Identifier(_STAGE))
    with conn.cursor() as cur, cur.copy(query) as copy:
        copy.write(_csv(rows))
    return {}


def _apply(conn: Connection, statement: sql.Composed, reason: str, lo: int, hi: int
           ) -> Rejected:
    cur = conn.execute(statement, {"lo": lo, "hi": hi})
    if cur.description is None:
        return {}
    return {int(row): reason for (row,) in cur.fetchall()}


def _bisect(conn: Connection, lo: int, hi: int, attempt: Callable[[int, int], Rejected]
            ) -> Rejected:
    """Run ``attempt`` on rows [lo, hi) in a savepoint; on a record's error, split the range.

    A batch with one bad record costs about 2·log2(n) statements instead of n;
    each bad record ends up alone and is rejected with PostgreSQL's message.
    """
    if lo >= hi:
        return {}
    try:
        with conn.transaction():
            return attempt(lo, hi)
    except _RECORD_ERRORS as exc:
        if hi - lo == 1:
            return {lo: _message(exc)}
    mid = (lo + hi) // 2
    return _bisect(conn, lo, mid, attempt) | _bisect(conn, mid, hi, attempt)
