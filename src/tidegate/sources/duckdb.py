"""DuckDB source: a database file (opened read-only) or an in-memory database."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from tidegate.config import DuckDBSourceConfig
from tidegate.errors import SourceError
from tidegate.plan import AttachedModel
from tidegate.redact import redact
from tidegate.sources.base import ModelQueryError, Source

# DuckDB's own classes for "the SQL is wrong", as opposed to "the file is unreadable".
_QUERY_ERRORS = (
    duckdb.ParserException,
    duckdb.BinderException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
)


class DuckDBSource(Source):
    def __init__(self, name: str, config: DuckDBSourceConfig, root: Path) -> None:
        super().__init__(name)
        self.path = config.path
        if self.path != ":memory:" and not Path(self.path).is_absolute():
            self.path = str(root / self.path)
        self._con: duckdb.DuckDBPyConnection | None = None

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            if self.path != ":memory:" and not Path(self.path).exists():
                raise SourceError(
                    f"source '{self.name}': DuckDB file {self.path} does not exist; "
                    "check `path` in tidegate.yml"
                )
            try:
                self._con = duckdb.connect(self.path, read_only=self.path != ":memory:")
            except duckdb.Error as exc:
                raise SourceError(f"source '{self.name}': cannot open {self.path}: {exc}") from exc
        return self._con

    def read(self, sql: str, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        con = self._connect()
        try:
            return con.sql(sql).to_arrow_reader(batch_rows)
        except _QUERY_ERRORS as exc:
            raise ModelQueryError(redact(str(exc))) from exc
        except duckdb.Error as exc:
            raise SourceError(f"source '{self.name}': {redact(str(exc))}") from exc

    def in_place(self, sql: str) -> AttachedModel | None:
        if self.path == ":memory:":
            return None
        if not Path(self.path).exists():
            raise SourceError(
                f"source '{self.name}': DuckDB file {self.path} does not exist; "
                "check `path` in tidegate.yml"
            )
        return AttachedModel(path=self.path, sql=sql)

    def check(self) -> None:
        self._connect().execute("select 1").fetchall()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
