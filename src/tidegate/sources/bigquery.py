"""BigQuery source, through sqlalchemy-bigquery (``pip install 'tidegate[bigquery]'``).

The connection URL is built from the config (``bigquery_url``); rows are read
a page at a time and turned into Arrow with the column types BigQuery declares
(``bigquery_type``), so a column whose first rows are all NULL still gets its
type. Credentials are a service-account key file, the same key base64-encoded
in an environment variable, or, with neither, the environment's Application
Default Credentials.

Tested without Google's servers: URL building, config errors and the type
mapping. Reading a real dataset is left to the user's own project.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pyarrow as pa

from tidegate.config import BigQuerySourceConfig
from tidegate.errors import ConfigError, Problem, SourceError
from tidegate.redact import redact
from tidegate.sources.base import ModelQueryError, Source

INSTALL_HINT = "pip install 'tidegate[bigquery]'"

_TYPES: dict[str, pa.DataType] = {
    "INTEGER": pa.int64(), "INT64": pa.int64(),
    "FLOAT": pa.float64(), "FLOAT64": pa.float64(),
    "NUMERIC": pa.decimal128(38, 9), "BIGNUMERIC": pa.decimal256(76, 38),
    "BOOLEAN": pa.bool_(), "BOOL": pa.bool_(),
    "STRING": pa.string(), "BYTES": pa.binary(),
    "DATE": pa.date32(), "DATETIME": pa.timestamp("us"),
    "TIMESTAMP": pa.timestamp("us", "UTC"), "TIME": pa.time64("us"),
}


def bigquery_type(type_code: str | None) -> pa.DataType:
    """The Arrow type a BigQuery column is read as; JSON, GEOGRAPHY, INTERVAL, RECORD
    and repeated columns arrive as text (JSON for records and arrays)."""
    return _TYPES.get((type_code or "").upper(), pa.string())


def bigquery_url(config: BigQuerySourceConfig, root: Path) -> str:
    """The sqlalchemy-bigquery URL: ``bigquery://PROJECT[/DATASET][?location=…&…]``."""
    url = f"bigquery://{quote(config.project, safe='')}"
    if config.dataset:
        url += "/" + quote(config.dataset, safe="")
    query: dict[str, str] = {}
    if config.location:
        query["location"] = config.location
    if config.credentials_path:
        path = Path(config.credentials_path)
        query["credentials_path"] = str(path if path.is_absolute() else root / path)
    if config.credentials_base64 is not None:
        query["credentials_base64"] = config.credentials_base64.get_secret_value()
    return url + ("?" + urlencode(query) if query else "")


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, sort_keys=True)
    return value


def to_batch(rows: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Rows from the DB-API as an Arrow batch of ``schema``."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for f, values in zip(schema, columns, strict=True):
        if pa.types.is_string(f.type):
            values = tuple(_cell(v) for v in values)
        arrays.append(pa.array(values, type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class BigQuerySource(Source):
    def __init__(self, name: str, config: BigQuerySourceConfig, root: Path) -> None:
        super().__init__(name)
        self.url = bigquery_url(config, root)
        if config.credentials_path and not Path(
                dict(_query(self.url))["credentials_path"]).is_file():
            raise ConfigError(Problem(
                f"source '{name}': the credentials file {config.credentials_path} does not exist",
                fix="point `credentials_path` at a service-account key file, or leave it out "
                    "to use Application Default Credentials"))
        self._engine: Any = None

    def _engine_or_raise(self) -> Any:
        if self._engine is None:
            try:
                import sqlalchemy as sa
                import sqlalchemy_bigquery  # noqa: F401 - registers the dialect
            except ImportError as exc:
                raise ConfigError(Problem(
                    "a bigquery source needs sqlalchemy-bigquery, which is not installed",
                    fix=INSTALL_HINT)) from exc
            self._engine = sa.create_engine(self.url)
        return self._engine

    def read(self, sql: str, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        rows = self._rows(sql, batch_rows)
        schema = next(rows)
        assert isinstance(schema, pa.Schema)
        return pa.RecordBatchReader.from_batches(
            schema, (to_batch(part, schema) for part in rows))

    def _rows(self, sql: str, batch_rows: int) -> Iterator[Any]:
        import sqlalchemy as sa
        from sqlalchemy import exc as sa_exc

        engine = self._engine_or_raise()
        try:
            conn = engine.connect()
            result = conn.execution_options(stream_results=True).execute(sa.text(sql))
        except sa_exc.DBAPIError as exc:
            message = redact(str(exc.orig or exc)).strip()
            if "400" in message or "not found" in message.lower():
                raise ModelQueryError(message) from exc
            raise SourceError(f"source '{self.name}': {message}") from exc
        except Exception as exc:  # google-auth raises its own errors for missing credentials
            raise SourceError(f"source '{self.name}': {redact(str(exc))}") from exc
        try:
            description = result.cursor.description
            yield pa.schema([pa.field(c[0], bigquery_type(c[1])) for c in description])
            yield from result.partitions(batch_rows)
        finally:
            conn.close()

    def check(self) -> None:
        self.read("select 1").read_all()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _query(url: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    return parse_qsl(urlsplit(url).query)
