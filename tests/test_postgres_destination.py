"""The postgres destination against a real PostgreSQL server: tables, modes, rejections, errors."""

from __future__ import annotations

import datetime as dt
import json
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from pgserver import PgServer, start_postgres
from tidegate.destinations.base import Batch, SyncTarget
from tidegate.destinations.postgres import PostgresConfig, PostgresDestination, pg_type
from tidegate.errors import ConfigError, DestinationError, RetryableError

PASSWORD = "Tide-s3cret-pw-9"

Make = Callable[..., PostgresDestination]


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    with start_postgres() as pg:
        yield pg


@pytest.fixture
def url(server: PgServer) -> str:
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def make(url: str, tmp_path: Path) -> Iterator[Make]:
    """Builds destinations on the test's database and closes them all afterwards."""
    made: list[PostgresDestination] = []

    def build(*, object: str = "crm.accounts", mode: str = "upsert",
              match: tuple[str, ...] = ("id",), fields: tuple[str, ...] = ("name", "score"),
              url: str = url, **settings: Any) -> PostgresDestination:
        config = PostgresConfig.model_validate({"type": "postgres", "url": url, **settings})
        target = SyncTarget(sync="accounts", object=object, mode=mode,  # type: ignore[arg-type]
                            match_fields=match, fields=fields, project_root=tmp_path, run_id=1)
        dest = PostgresDestination("db", config, target)
        made.append(dest)
        return dest

    yield build
    for dest in made:
        dest.close()


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def batch(op: str, rows: list[dict[str, Any]], match: tuple[str, ...] = ("id",),
          schema: pa.Schema | None = None, batch_id: str = "b1") -> Batch:
    table = pa.Table.from_pylist(rows, schema=schema)
    keys = [json.dumps(r[match[0]]) if len(match) == 1 else json.dumps({m: r[m] for m in match})
            for r in rows]
    return Batch(id=batch_id, operation=op, key_text=pa.array(keys, pa.string()), table=table)  # type: ignore[arg-type]


SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.int64())])


def accounts(n: int, start: int = 0, shift: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"name {i}", "score": (i + shift) % 100} for i in range(start, n)]


def held(url: str, table: str = "crm.accounts") -> dict[int, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in sql(url, f"select id, name, score from {table}")}


# Creating and checking the table --------------------------------------------------------


def test_first_batch_creates_the_table_with_a_primary_key(make: Make, url: str) -> None:
    dest = make()
    dest.prepare(SCHEMA)
    result = dest.write(batch("upsert", accounts(5), schema=SCHEMA))
    assert result.rejected == {}
    assert held(url) == {i: (f"name {i}", i) for i in range(5)}
    pk = sql(url, "select a.attname from pg_index i join pg_attribute a on a.attrelid = "
                  "i.indrelid and a.attnum = any(i.indkey) "
                  "where i.indrelid = 'crm.accounts'::regclass and i.indisprimary")
    assert pk == [("id",)]


def test_object_without_schema_goes_to_public(make: Make, url: str) -> None:
    dest = make(object="plain")
    dest.prepare(SCHEMA)
    dest.write(batch("upsert", accounts(2), schema=SCHEMA))
    assert sql(url, "select count(*) from public.plain") == [(2,)]


def test_arrow_types_map_to_postgres_types_and_values_round_trip(make: Make, url: str) -> None:
    schema = pa.schema([
        ("id", pa.int64()), ("flag", pa.bool_()), ("small", pa.int16()), ("medium", pa.int32()),
        ("huge", pa.uint64()), ("ratio", pa.float64()), ("single", pa.float32()),
        ("amount", pa.decimal128(12, 2)), ("label", pa.string()), ("blob", pa.binary()),
        ("day", pa.date32()), ("clock", pa.time64("us")), ("naive", pa.timestamp("us")),
        ("stamp", pa.timestamp("us", tz="UTC")), ("took", pa.duration("ms")),
        ("tags", pa.list_(pa.string())), ("props", pa.struct([("a", pa.int64())])),
        ("kind", pa.dictionary(pa.int32(), pa.string())), ("span", pa.month_day_nano_interval()),
    ])
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
    row = {
        "id": 1, "flag": True, "small": -3, "medium": 70000, "huge": 2**64 - 1, "ratio": 0.1,
        "single": 0.5, "amount": Decimal("1234.50"), "label": 'a "quoted", multi\nline',
        "blob": b"\x00\xffab", "day": dt.date(2024, 2, 29), "clock": dt.time(23, 59, 1, 5),
        "naive": when, "stamp": when.replace(tzinfo=dt.UTC), "took": dt.timedelta(seconds=90),
        "tags": ["x", "y"], "props": {"a": 7}, "kind": "gold",
        "span": pa.MonthDayNano([1, 2, 3_000]),
    }
    empty = {name: None for name in schema.names} | {"id": 2, "label": ""}
    dest = make(fields=tuple(schema.names[1:]))
    dest.prepare(schema)
    assert dest.write(batch("upsert", [row, empty], schema=schema)).rejected == {}

    types = dict(sql(url, "select column_name, data_type from information_schema.columns "
                          "where table_schema = 'crm' and table_name = 'accounts'"))
    assert types["huge"] == "numeric" and types["single"] == "real"
    assert types["stamp"] == "timestamp with time zone" and types["naive"] == (
        "timestamp without time zone")
    assert types["tags"] == "jsonb" and types["took"] == "interval" and types["kind"] == "text"
    got = sql(url, "select flag, small, medium, huge, ratio, single, amount, label, blob, day, "
                   "clock, naive, stamp, took, tags, props, kind, span "
                   "from crm.accounts where id = 1")[0]
    assert got[:8] == (True, -3, 70000, Decimal(2**64 - 1), 0.1, 0.5, Decimal("1234.50"),
                       row["label"])
    assert bytes(got[8]) == b"\x00\xffab"
    assert got[9:13] == (dt.date(2024, 2, 29), dt.time(23, 59, 1, 5), when,
                         when.replace(tzinfo=dt.UTC))
    assert got[13] == dt.timedelta(seconds=90)
    assert got[14:17] == (["x", "y"], {"a": 7}, "gold")
    assert got[17] == dt.timedelta(days=32, microseconds=3)  # psycopg counts a month as 30 days
    # An empty string stays empty and a null stays null.
    assert sql(url, "select label, flag from crm.accounts where id = 2") == [("", None)]


def test_type_map() -> None:
    assert pg_type(pa.int8()) == "smallint" and pg_type(pa.uint32()) == "bigint"
    assert pg_type(pa.decimal256(50, 4)) == "numeric(50,4)"
    assert pg_type(pa.large_string()) == "text" and pg_type(pa.null()) == "text"
    assert pg_type(pa.map_(pa.string(), pa.int64())) == "jsonb"


def test_existing_table_missing_a_column_is_a_config_error(make: Make, url: str) -> None:
    sql(url, "create schema crm")
    sql(url, "create table crm.accounts (id bigint primary key, name text)")
    with pytest.raises(ConfigError) as info:
        make().prepare(SCHEMA)
    message = str(info.value)
    assert '"crm"."accounts"' in message and '"score"' in message
    assert 'ALTER TABLE "crm"."accounts" ADD COLUMN "score" bigint' in message


def test_existing_table_without_a_unique_key_is_a_config_error(make: Make, url: str) -> None:
    sql(url, "create schema crm")
    sql(url, "create table crm.accounts (id bigint, name text, score bigint)")
    with pytest.raises(ConfigError, match=r'CREATE UNIQUE INDEX ON "crm"."accounts" \("id"\)'):
        make().prepare(SCHEMA)
    sql(url, "create unique index on crm.accounts (id)")
    make().prepare(SCHEMA)  # a unique index is enough for ON CONFLICT


def test_unmapped_not_null_column_is_a_config_error_for_inserting_modes(
    make: Make, url: str
) -> None:
    sql(url, "create schema crm")
    sql(url, "create table crm.accounts (id bigint primary key, name text, score bigint, "
             "owner text not null, created timestamptz not null default now())")
    with pytest.raises(ConfigError, match=r'"owner".*DROP NOT NULL'):
        make().prepare(SCHEMA)
    make(mode="update").prepare(SCHEMA)  # updates never create a record


def test_missing_table_without_create_table_is_a_config_error(make: Make, url: str) -> None:
    with pytest.raises(ConfigError, match=r'does not exist.*CREATE TABLE "crm"."accounts"'):
        make(create_table=False).prepare(SCHEMA)


# Modes ------------------------------------------------------------------------------------


def test_upsert_is_idempotent(make: Make, url: str) -> None:
    dest = make()
    dest.prepare(SCHEMA)
    first = batch("upsert", accounts(50), schema=SCHEMA)
    assert dest.write(first).rejected == {}
    assert dest.write(first).rejected == {}  # the same batch again, as after a crash
    assert sql(url, "select count(*) from crm.accounts") == [(50,)]
    changed = batch("upsert", accounts(60, start=40, shift=1), schema=SCHEMA)
    assert dest.write(changed).rejected == {}
    rows = held(url)
    assert len(rows) == 60 and rows[45] == ("name 45", 46) and rows[10] == ("name 10", 10)


def test_insert_rejects_keys_that_already_exist(make: Make, url: str) -> None:
    dest = make(mode="insert")
    dest.prepare(SCHEMA)
    dest.write(batch("insert", accounts(3), schema=SCHEMA))
    result = dest.write(batch("insert", accounts(6, start=1, shift=50), schema=SCHEMA))
    assert result.rejected == {"1": "already exists", "2": "already exists"}
    rows = held(url)
    assert rows[1] == ("name 1", 1)  # the existing record is untouched
    assert rows[5] == ("name 5", 55) and len(rows) == 6


def test_update_rejects_keys_that_are_not_found(make: Make, url: str) -> None:
    dest = make(mode="update")
    sql(url, "create schema crm")
    sql(url, "create table crm.accounts (id bigint primary key, name text, score bigint)")
    sql(url, "insert into crm.accounts values (1, 'one', 1), (2, 'two', 2)")
    dest.prepare(SCHEMA)
    result = dest.write(batch("update", accounts(4, shift=10), schema=SCHEMA))
    assert result.rejected == {"0": "not found", "3": "not found"}
    assert held(url) == {1: ("name 1", 11), 2: ("name 2", 12)}


def test_delete_removes_keys_and_ignores_missing_ones(make: Make, url: str) -> None:
    dest = make(mode="mirror")
    dest.prepare(SCHEMA)
    dest.write(batch("upsert", accounts(10), schema=SCHEMA))
    # Rows gone from the model carry only their match values.
    gone = [{"id": i, "name": None, "score": None} for i in (2, 4, 99)]
    assert dest.write(batch("delete", gone, schema=SCHEMA)).rejected == {}
    assert sorted(held(url)) == [0, 1, 3, 5, 6, 7, 8, 9]
    assert dest.write(batch("delete", gone, schema=SCHEMA)).rejected == {}  # again: no-op


def test_composite_keys(make: Make, url: str) -> None:
    schema = pa.schema([("tenant", pa.string()), ("id", pa.int32()), ("score", pa.float64())])
    match = ("tenant", "id")

    def rows(score: float, *pairs: tuple[str, int]) -> Batch:
        return batch("x", [{"tenant": t, "id": i, "score": score} for t, i in pairs],
                     match=match, schema=schema)

    dest = make(mode="mirror", match=match, fields=("score",))
    dest.prepare(schema)
    up = rows(1.5, ("a", 1), ("a", 2), ("b", 1))
    up.operation = "upsert"
    assert dest.write(up).rejected == {}
    pk = sql(url, "select count(*) from pg_index where indrelid = 'crm.accounts'::regclass "
                  "and indisprimary and indnatts = 2")
    assert pk == [(1,)]

    insert = rows(2.5, ("a", 1), ("b", 2))
    insert.operation = "insert"
    assert dest.write(insert).rejected == {json.dumps({"tenant": "a", "id": 1}): "already exists"}

    update = rows(3.5, ("b", 1), ("c", 1))
    update.operation = "update"
    assert dest.write(update).rejected == {json.dumps({"tenant": "c", "id": 1}): "not found"}

    delete = rows(0, ("a", 2), ("z", 9))
    delete.operation = "delete"
    assert dest.write(delete).rejected == {}
    assert sorted(sql(url, "select tenant, id, score from crm.accounts")) == [
        ("a", 1, 1.5), ("b", 1, 3.5), ("b", 2, 2.5)]


# Record-level rejections --------------------------------------------------------------------


def _strict_table(url: str) -> None:
    sql(url, "create schema crm")
    sql(url, "create table crm.accounts (id bigint primary key, name text not null, "
             "score integer constraint score_range check (score between 0 and 100))")


def test_a_check_or_not_null_violation_rejects_only_the_bad_records(make: Make, url: str) -> None:
    _strict_table(url)
    dest = make()
    dest.prepare(SCHEMA)
    rows = accounts(1000)
    rows[17]["score"] = 500
    rows[600]["name"] = None
    rows[999]["score"] = 2**40  # beyond integer: out of range
    result = dest.write(batch("upsert", rows, schema=SCHEMA))
    assert sorted(result.rejected) == ["17", "600", "999"]
    assert 'violates check constraint "score_range"' in result.rejected["17"]
    assert 'null value in column "name"' in result.rejected["600"]
    assert "out of range for type integer" in result.rejected["999"]
    assert sorted(held(url)) == [i for i in range(1000) if i not in (17, 600, 999)]


@pytest.mark.parametrize("mode", ["insert", "update"])
def test_rejections_combine_with_not_found_and_already_exists(
    make: Make, url: str, mode: str
) -> None:
    _strict_table(url)
    sql(url, "insert into crm.accounts values (1, 'one', 1)")
    if mode == "update":
        sql(url, "insert into crm.accounts values (2, 'two', 2)")
    dest = make(mode=mode)
    dest.prepare(SCHEMA)
    rows = [{"id": 1, "name": "uno", "score": 5}, {"id": 2, "name": "two", "score": -1},
            {"id": 3, "name": "three", "score": 3}]
    result = dest.write(batch(mode, rows, schema=SCHEMA))
    assert "score_range" in result.rejected.pop("2")
    if mode == "insert":
        assert result.rejected == {"1": "already exists"}
        assert held(url) == {1: ("one", 1), 3: ("three", 3)}
    else:
        assert result.rejected == {"3": "not found"}
        assert held(url) == {1: ("uno", 5), 2: ("two", 2)}


def test_a_deferred_foreign_key_rejects_only_the_orphan(make: Make, url: str) -> None:
    sql(url, "create schema crm")
    sql(url, "create table crm.owners (name text primary key)")
    sql(url, "insert into crm.owners values ('name 0'), ('name 2')")
    sql(url, "create table crm.accounts (id bigint primary key, score bigint, name text "
             "references crm.owners deferrable initially deferred)")
    dest = make()
    dest.prepare(SCHEMA)
    result = dest.write(batch("upsert", accounts(3), schema=SCHEMA))
    assert list(result.rejected) == ["1"] and "foreign key" in result.rejected["1"]
    assert sorted(held(url)) == [0, 2]


def test_a_string_postgres_cannot_store_rejects_only_that_record(make: Make, url: str) -> None:
    dest = make()
    dest.prepare(SCHEMA)
    rows = accounts(5)
    rows[3]["name"] = "nul\x00byte"
    result = dest.write(batch("upsert", rows, schema=SCHEMA))
    assert list(result.rejected) == ["3"] and "0x00" in result.rejected["3"]
    assert sorted(held(url)) == [0, 1, 2, 4]


def test_batches_from_several_threads_at_once(make: Make, url: str) -> None:
    dest = make(concurrency=4)
    dest.prepare(SCHEMA)
    batches = [batch("upsert", accounts(100 * (i + 1), start=100 * i), schema=SCHEMA,
                     batch_id=f"b{i}") for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(dest.write, batches))
    assert all(r.rejected == {} for r in results)
    assert sql(url, "select count(*) from crm.accounts") == [(800,)]


# Transient and permanent failures -------------------------------------------------------------


def test_a_server_that_is_down_is_retryable(make: Make, server: PgServer) -> None:
    with closed_port() as port:
        dest = make(url=f"postgresql://postgres@127.0.0.1:{port}/postgres")
        with pytest.raises(RetryableError, match="cannot reach PostgreSQL"):
            dest.write(batch("upsert", accounts(1), schema=SCHEMA))
        with pytest.raises(DestinationError):  # `validate --connections` says why
            dest.check()


def test_a_dropped_connection_is_retryable_and_the_next_write_reconnects(
    make: Make, url: str
) -> None:
    dest = make()
    dest.prepare(SCHEMA)
    dest.write(batch("upsert", accounts(2), schema=SCHEMA))
    database = url.rsplit("/", 1)[1]
    sql(url, "select pg_terminate_backend(pid) from pg_stat_activity "
             "where datname = %s and application_name = 'tidegate'", (database,))
    with pytest.raises(RetryableError, match=r"administrator command|closed"):
        dest.write(batch("upsert", accounts(4), schema=SCHEMA))
    assert dest.write(batch("upsert", accounts(4), schema=SCHEMA)).rejected == {}
    assert len(held(url)) == 4


def test_a_serialization_failure_is_retryable_and_nothing_is_half_written(
    make: Make, url: str
) -> None:
    dest = make()
    dest.prepare(SCHEMA)
    sql(url, """create function crm.conflict() returns trigger language plpgsql as $$
                begin raise exception 'injected' using errcode = '40001'; end $$""")
    sql(url, "create trigger conflict before insert on crm.accounts "
             "for each statement execute function crm.conflict()")
    with pytest.raises(RetryableError, match="injected"):
        dest.write(batch("upsert", accounts(3), schema=SCHEMA))
    assert held(url) == {}


def test_wrong_password_is_a_destination_error_without_the_password(
    make: Make, server: PgServer, url: str
) -> None:
    user = f"u_{uuid.uuid4().hex[:8]}"
    sql(server.url, f"create role {user} login password '{PASSWORD}'")
    require_password(server, user)
    host = url.split("@", 1)[1]
    good = make(url=f"postgresql://{user}:{PASSWORD}@{host}")
    good.check()  # the right password gets in, so the server does check passwords
    bad = make(url=f"postgresql://{user}:{PASSWORD}x@{host}")
    for attempt in (bad.check, lambda: bad.write(batch("upsert", accounts(1), schema=SCHEMA)),
                    lambda: bad.prepare(SCHEMA)):
        with pytest.raises(DestinationError) as info:
            attempt()
        message = str(info.value)
        assert "password authentication failed" in message and "Fix:" in message
        assert PASSWORD not in message and "***" in message


def test_a_missing_database_is_a_destination_error_with_the_fix(
    make: Make, server: PgServer
) -> None:
    dest = make(url=server.url.rsplit("/", 1)[0] + "/no_such_db")
    with pytest.raises(DestinationError, match=r'database "no_such_db" does not exist.*Fix:'):
        dest.write(batch("upsert", accounts(1), schema=SCHEMA))


# Helpers ----------------------------------------------------------------------------------------


@contextmanager
def closed_port() -> Iterator[int]:
    """A local port with nothing listening on it (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def require_password(server: PgServer, user: str) -> None:
    """Make the (trust-everyone) test server check ``user``'s password."""
    hba = Path(sql(server.url, "show hba_file")[0][0])
    lines = hba.read_text().splitlines()
    rule = f"host all {user} 127.0.0.1/32 scram-sha-256"
    hba.write_text("\n".join([rule, *lines]) + "\n")
    sql(server.url, "select pg_reload_conf()")
