"""Any SQLAlchemy 2 URL as a source (PostgreSQL, SQLite, and whatever has a dialect).

Rows arrive from the driver as Python tuples; they are turned into Arrow
record batches a partition at a time, so memory stays bounded by the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from tidegate.config import SQLAlchemySourceConfig, SQLiteSourceConfig
from tidegate.errors import SourceError
from tidegate.redact import redact
from tidegate.sources.base import ModelQueryError, Source

_QUERY_HINTS = ("syntax error", "no such table", "no such column", "does not exist", "undefined")


def engine_url(url: str) -> str:
    """Prefer psycopg 3 for PostgreSQL URLs that name no driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class SQLAlchemySource(Source):
    def __init__(
        self, name: str, config: SQLAlchemySourceConfig | SQLiteSourceConfig, root: Path
    ) -> None:
        super().__init__(name)
        if isinstance(config, SQLiteSourceConfig):
            if config.url is not None:
                url = config.url
            else:
                path = Path(config.path or "")
                url = f"sqlite:///{path if path.is_absolute() else root / path}"
        else:
            url = config.url.get_secret_value()
        self._url = engine_url(url)
        self._engine: sa.Engine | None = None

    def _engine_or_raise(self) -> sa.Engine:
        if self._engine is None:
            try:
                self._engine = sa.create_engine(self._url)
            except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
                raise SourceError(
                    f"source '{self.name}': cannot use this URL ({redact(str(exc))}); "
                    "install the driver for it, e.g. pip install 'tidegate[postgres]'"
                ) from exc
        return self._engine

    def read(self, sql: str, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        batches = self._batches(sql, batch_rows)
        try:
            first = next(batches)
        except StopIteration as exc:  # pragma: no cover - _batches always yields once
            raise SourceError(f"source '{self.name}': no result") from exc
        return pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches))

    def _batches(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        engine = self._engine_or_raise()
        try:
            conn = engine.connect()
        except sa_exc.DBAPIError as exc:
            raise SourceError(f"source '{self.name}': cannot connect: {_message(exc)}") from exc
        try:
            try:
                result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                    sa.text(sql)
                )
            except sa_exc.DBAPIError as exc:
                message = _message(exc)
                if isinstance(exc, sa_exc.ProgrammingError) or any(
                    h in message.lower() for h in _QUERY_HINTS
                ):
                    raise ModelQueryError(message) from exc
                raise SourceError(f"source '{self.name}': {message}") from exc
            names = list(result.keys())
            schema: pa.Schema | None = None
            for part in result.partitions(batch_rows):
                batch = _to_batch(part, names, schema)
                schema = batch.schema
                yield batch
            if schema is None:
                yield pa.RecordBatch.from_arrays(
                    [pa.array([], pa.null()) for _ in names], names=names
                )
        finally:
            conn.close()

    def check(self) -> None:
        try:
            with self._engine_or_raise().connect() as conn:
                conn.execute(sa.text("select 1"))
        except sa_exc.DBAPIError as exc:
            raise SourceError(f"source '{self.name}': cannot connect: {_message(exc)}") from exc

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    for batch in rest:
        yield batch.cast(first.schema) if batch.schema != first.schema else batch


def _to_batch(rows: Any, names: list[str], schema: pa.Schema | None) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for i, values in enumerate(columns):
        want = schema.field(i).type if schema is not None else None
        if want is not None and not pa.types.is_null(want):
            arrays.append(pa.array(values, type=want))
            continue
        array = pa.array(values)
        if want is not None and not pa.types.is_null(array.type):
            raise SourceError(
                f"column {names[i]} has only nulls in the first rows and values later; "
                f"cast it in the model's SQL (e.g. CAST({names[i]} AS TEXT))"
            )
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _message(exc: sa_exc.DBAPIError) -> str:
    return redact(str(exc.orig) if exc.orig is not None else str(exc)).strip()
