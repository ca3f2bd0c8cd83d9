"""The postgres destination: a table kept in step by key, through COPY and one statement.

Each batch is COPYed (CSV from Arrow, no Python object per value) into a
temporary table, then applied with one statement per operation: ``INSERT …
ON CONFLICT`` for upserts, ``UPDATE … FROM`` and ``DELETE … USING`` by the
match columns. A batch that breaks a constraint is applied again record by
record inside savepoints, so only the offending records are rejected, each
with PostgreSQL's message.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import psycopg
import pyarrow as pa
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
from tidegate.errors import ConfigError, DestinationError, Problem, RetryableError
from tidegate.redact import redact, redact_url, register_url

_TEMP = "_tidegate_batch"


class PostgresConfig(DestinationConfig):
    type: Literal["postgres"]
    url: SecretStr
    max_records: int = Field(default=10_000, gt=0, le=100_000)
    concurrency: int = Field(default=2, gt=0, le=16)
    create_table: bool = True


def pg_type(t: pa.DataType) -> str:
    """The PostgreSQL column type for an Arrow type, for tables tidegate creates."""
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return "smallint"
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return "integer"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytea"
    if pa.types.is_nested(t):
        return "jsonb"
    return "text"


class PostgresDestination(Destination):
    kind = "postgres"
    config_model = PostgresConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES, max_records=10_000, concurrency=2,
        matches_by="the match columns, which need a primary key or unique index",
    )

    def __init__(self, name: str, config: PostgresConfig, target: SyncTarget) -> None:
        super().__init__(name, config, target)
        self.settings = config
        self.url = config.url.get_secret_value()
        register_url(self.url)
        schema, _, table = target.object.rpartition(".")
        self.schema, self.table = schema or "public", table
        self.ident = sql.Identifier(self.schema, self.table)
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    # Connections ------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            message = redact(str(exc)).strip()
            if any(s in message for s in ("authentication failed", "does not exist",
                                           "no password supplied", "role")):
                raise DestinationError(
                    f"postgres destination '{self.name}' refused the connection to "
                    f"{redact_url(self.url)}: {message}; check `url` and its credentials"
                ) from None
            raise RetryableError(f"cannot reach PostgreSQL at {redact_url(self.url)}: "
                                 f"{message}") from None

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def check(self) -> None:
        with self._connect() as conn:
            conn.execute("select 1")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    # Preparation ---------------------------------------------------------------

    def prepare(self, schema: pa.Schema) -> None:
        conn = self._conn()
        columns = self._columns(conn)
        match = list(self.target.match_fields)
        if not columns:
            if not self.settings.create_table:
                raise ConfigError(Problem(
                    f"table {self.schema}.{self.table} does not exist",
                    key="object", fix="create it, or set `create_table: true` on the destination"))
            self._create(conn, schema, match)
            return
        missing = [f.name for f in schema if f.name not in columns]
        if missing:
            raise ConfigError(Problem(
                f"table {self.schema}.{self.table} has no column(s) {', '.join(missing)}",
                key="fields",
                fix=f"ALTER TABLE {self.schema}.{self.table} ADD COLUMN …, or map to existing "
                    f"columns: {', '.join(columns)}"))
        if not self._has_unique(conn, match):
            raise ConfigError(Problem(
                f"table {self.schema}.{self.table} has no primary key or unique index on "
                f"({', '.join(match)})", key="match",
                fix=f"CREATE UNIQUE INDEX ON {self.schema}.{self.table} ({', '.join(match)})"))

    def _columns(self, conn: psycopg.Connection[Any]) -> list[str]:
        rows = conn.execute(
            "select column_name from information_schema.columns "
            "where table_schema = %s and table_name = %s order by ordinal_position",
            (self.schema, self.table),
        ).fetchall()
        conn.commit()
        return [r[0] for r in rows]

    def _has_unique(self, conn: psycopg.Connection[Any], match: list[str]) -> bool:
        rows = conn.execute(
            """
            select array_agg(a.attname order by a.attname)
            from pg_index i
            join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
            where i.indrelid = %s::regclass and i.indisunique and i.indpred is null
            group by i.indexrelid
            """,
            (f'"{self.schema}"."{self.table}"',),
        ).fetchall()
        conn.commit()
        return any(sorted(r[0]) == sorted(match) for r in rows)

    def _create(self, conn: psycopg.Connection[Any], schema: pa.Schema, match: list[str]) -> None:
        cols = [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(pg_type(f.type)))
                for f in schema]
        cols.append(sql.SQL("primary key ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, match))))
        with conn.transaction():
            conn.execute(sql.SQL("create schema if not exists {}").format(
                sql.Identifier(self.schema)))
            conn.execute(sql.SQL("create table if not exists {} ({})").format(
                self.ident, sql.SQL(", ").join(cols)))

    # Writing -------------------------------------------------------------------

    def write(self, batch: Batch) -> BatchResult:
        table = self._payload(batch)
        try:
            conn = self._conn()
            try:
                with conn.transaction():
                    missing = self._apply(conn, batch.operation, table)
                return BatchResult(rejected={batch.keys[i]: reason for i, reason in missing})
            except (pg_errors.DataError, pg_errors.IntegrityError):
                return self._one_by_one(conn, batch, table)
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            raise RetryableError(f"PostgreSQL: {redact(str(exc)).strip()}") from None
        except psycopg.OperationalError as exc:
            self._drop_conn()
            raise RetryableError(f"PostgreSQL connection lost: {redact(str(exc)).strip()}") \
                from None
        except psycopg.Error as exc:
            raise DestinationError(
                f"postgres destination '{self.name}' failed on {self.schema}.{self.table}: "
                f"{redact(str(exc)).strip()}") from None

    def _payload(self, batch: Batch) -> pa.Table:
        if batch.operation == "delete":
            return batch.table.select(list(self.target.match_fields))
        return batch.table

    def _apply(
        self, conn: psycopg.Connection[Any], op: str, table: pa.Table
    ) -> list[tuple[int, str]]:
        """Apply one batch; return (row index, reason) of rows the operation did not take."""
        names = table.column_names
        conn.execute(sql.SQL("create temp table {} on commit drop as select {} from {} "
                             "with no data").format(
            sql.Identifier(_TEMP), sql.SQL(", ").join(map(sql.Identifier, names)), self.ident))
        buffer = io.BytesIO()
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))
        with conn.cursor().copy(sql.SQL("copy {} ({}) from stdin (format csv)").format(
                sql.Identifier(_TEMP), sql.SQL(", ").join(map(sql.Identifier, names)))) as copy:
            copy.write(buffer.getvalue())
        match = list(self.target.match_fields)
        statement = self._statement(op, names, match)
        if op == "delete" or op == "upsert":
            conn.execute(statement)
            return []
        returned = {tuple(r) for r in conn.execute(statement).fetchall()}
        reason = "already exists" if op == "insert" else "not found"
        keys = table.select(match).to_pylist()
        return [(i, reason) for i, k in enumerate(keys)
                if tuple(k[m] for m in match) not in returned]

    def _statement(self, op: str, names: Sequence[str], match: list[str]) -> sql.Composed:
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        src = sql.Identifier(_TEMP)
        on = sql.SQL(" and ").join(
            sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(m)) for m in match)
        rest = [n for n in names if n not in match]
        returning = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(m)) for m in match)
        if op == "delete":
            return sql.SQL("delete from {} t using {} s where {}").format(self.ident, src, on)
        if op == "update":
            sets = sql.SQL(", ").join(
                sql.SQL("{c} = s.{c}").format(c=sql.Identifier(n)) for n in (rest or match))
            return sql.SQL("update {} t set {} from {} s where {} returning {}").format(
                self.ident, sets, src, on, returning)
        conflict = sql.SQL(", ").join(map(sql.Identifier, match))
        insert = sql.SQL("insert into {} as t ({}) select {} from {} s").format(
            self.ident, cols, cols, src)
        if op == "insert":
            return sql.SQL("{} on conflict ({}) do nothing returning {}").format(
                insert, conflict, returning)
        if not rest:
            return sql.SQL("{} on conflict ({}) do nothing").format(insert, conflict)
        sets = sql.SQL(", ").join(
            sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(n)) for n in rest)
        return sql.SQL("{} on conflict ({}) do update set {}").format(insert, conflict, sets)

    def _one_by_one(
        self, conn: psycopg.Connection[Any], batch: Batch, table: pa.Table
    ) -> BatchResult:
        """The batch broke a constraint: apply each record alone to find which ones."""
        rejected: dict[str, str] = {}
        with conn.transaction():
            for i in range(table.num_rows):
                try:
                    with conn.transaction():  # a savepoint per record
                        for _, reason in self._apply_one(conn, batch.operation, table.slice(i, 1)):
                            rejected[batch.keys[i]] = reason
                except (pg_errors.DataError, pg_errors.IntegrityError) as exc:
                    rejected[batch.keys[i]] = redact(str(exc).strip().splitlines()[0])
        return BatchResult(rejected=rejected)

    def _apply_one(
        self, conn: psycopg.Connection[Any], op: str, row: pa.Table
    ) -> list[tuple[int, str]]:
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(_TEMP)))
        return self._apply(conn, op, row)
