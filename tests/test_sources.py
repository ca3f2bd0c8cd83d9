"""Sources: DuckDB (file and memory), SQLite and PostgreSQL through SQLAlchemy, as Arrow streams."""

from __future__ import annotations

import sqlite3
from datetime import date
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tidegate.config import DuckDBSourceConfig, SQLAlchemySourceConfig, SQLiteSourceConfig
from tidegate.errors import SourceError
from tidegate.sources import ModelQueryError, open_source


def drain(reader: pa.RecordBatchReader) -> tuple[list[int], pa.Table]:
    sizes, batches = [], []
    for batch in reader:
        sizes.append(batch.num_rows)
        batches.append(batch)
    return sizes, pa.Table.from_batches(batches, schema=reader.schema)


def test_duckdb_file_streams_in_batches(tmp_path: Path) -> None:
    import duckdb

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("create table t as select i as id, i * 2 as v from range(25000) t(i)")
    source = open_source("w", DuckDBSourceConfig(type="duckdb", path="w.duckdb"), tmp_path)
    sizes, table = drain(source.read("select * from t order by id", batch_rows=10_000))
    source.close()
    assert table.num_rows == 25000 and max(sizes) <= 10_240 and len(sizes) >= 3


def test_duckdb_in_memory_and_sql_errors(tmp_path: Path) -> None:
    source = open_source("m", DuckDBSourceConfig(type="duckdb"), tmp_path)
    _, table = drain(source.read("select 1 as id, 'x' as name"))
    assert table.to_pylist() == [{"id": 1, "name": "x"}]
    with pytest.raises(ModelQueryError, match="nosuch"):
        source.read("select * from nosuch")
    with pytest.raises(ModelQueryError):
        source.read("selec 1")
    source.close()


def test_a_missing_duckdb_file_is_a_clear_source_error(tmp_path: Path) -> None:
    source = open_source("w", DuckDBSourceConfig(type="duckdb", path="gone.duckdb"), tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        source.read("select 1")


def test_sqlite_source_types_and_streaming(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("create table t (id integer, name text, score real, note text)")
        conn.executemany("insert into t values (?, ?, ?, ?)",
                         [(i, f"n{i}", i / 2, None if i < 150_000 else "late")
                          for i in range(150_001)])
    source = open_source("s", SQLiteSourceConfig(type="sqlite", path="s.db"), tmp_path)
    with pytest.raises(SourceError, match="CAST"):
        drain(source.read("select * from t order by id", batch_rows=50_000))
    sizes, table = drain(source.read("select id, name, score, cast(note as text) as note "
                                     "from t where id < 10 order by id", batch_rows=4))
    assert sizes == [4, 4, 2]
    assert table.schema.field("score").type == pa.float64()
    with pytest.raises(ModelQueryError):
        source.read("select * from missing")
    source.close()


def test_postgres_source_through_sqlalchemy(pg_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("create table t (id int primary key, amount numeric(10,2), "
                             "day date, tags text)"))
        conn.execute(sa.text("insert into t values (1, 12.50, '2024-05-01', 'a'), "
                             "(2, null, null, null)"))
    engine.dispose()
    source = open_source("pg", SQLAlchemySourceConfig(type="postgres", url=pg_url), tmp_path)
    _, table = drain(source.read("select * from t order by id"))
    assert table.to_pylist()[0] == {"id": 1, "amount": Decimal("12.50"),
                                    "day": date(2024, 5, 1), "tags": "a"}
    _, empty = drain(source.read("select * from t where false"))
    assert empty.num_rows == 0 and empty.column_names == ["id", "amount", "day", "tags"]
    with pytest.raises(ModelQueryError, match="nosuch"):
        source.read("select * from nosuch")
    source.close()


def test_an_unreachable_postgres_is_a_source_error_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://u:hunter2secret@127.0.0.1:9/db"
    source = open_source("pg", SQLAlchemySourceConfig(type="postgres", url=url), tmp_path)
    with pytest.raises(SourceError) as info:
        source.check()
    assert "cannot connect" in str(info.value)
