"""Sources: where models are read from, as streams of Arrow record batches.

A source turns a SQL text into a ``pyarrow.RecordBatchReader`` so the planner
never holds more than a batch of the model in Python. Heavy drivers are
imported only when a source of that kind is opened.
"""

from __future__ import annotations

from pathlib import Path

from tidegate.config import (
    BigQuerySourceConfig,
    DuckDBSourceConfig,
    SnowflakeSourceConfig,
    SQLAlchemySourceConfig,
    SQLiteSourceConfig,
)
from tidegate.imports import quietly
from tidegate.sources.base import ModelQueryError, Source

__all__ = ["ModelQueryError", "Source", "open_source"]


def open_source(
    name: str,
    config: DuckDBSourceConfig
    | SQLiteSourceConfig
    | SQLAlchemySourceConfig
    | SnowflakeSourceConfig
    | BigQuerySourceConfig,
    root: Path,
) -> Source:
    """Open the source ``name`` described by ``config``; paths are relative to ``root``."""
    if isinstance(config, DuckDBSourceConfig):
        from tidegate.sources.duckdb import DuckDBSource

        return DuckDBSource(name, config, root)
    # A driver and SQLAlchemy bring thousands of long-lived objects: import them quietly.
    if isinstance(config, SnowflakeSourceConfig):
        with quietly():
            from tidegate.sources.snowflake import SnowflakeSource

        return SnowflakeSource(name, config, root)
    if isinstance(config, BigQuerySourceConfig):
        with quietly():
            from tidegate.sources.bigquery import BigQuerySource

        return BigQuerySource(name, config, root)
    with quietly():
        from tidegate.sources.sqlalchemy import SQLAlchemySource

    return SQLAlchemySource(name, config, root)
