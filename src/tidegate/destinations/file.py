"""The file destination: a change log of CSV, JSON lines or Parquet files, one per batch.

This module owns the file layout of an export and its replay. Each batch is
written to ``<path>/<object>/<batch id>.<format>`` with the batch's columns
plus four of tidegate's own:

    _tidegate_op          insert | update | upsert | delete
    _tidegate_key         the record's primary key as JSON text
    _tidegate_run_id      the run that wrote the file
    _tidegate_written_at  when (UTC); the file's mtime is the same instant

A file is written under a hidden temporary name, flushed to disk, then renamed
into place: a crash never leaves half a file, and a batch sent again after a
crash (same content, same id) replaces its own file instead of duplicating it.
``read_changes`` replays a folder in write order into the current records.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import Field

from tidegate.destinations.base import (
    ALL_MODES,
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    SyncTarget,
)
from tidegate.errors import ConfigError, DestinationError, Problem

__all__ = ["FileConfig", "FileDestination", "Format", "read_changes"]

Format = Literal["csv", "jsonl", "parquet"]
Writer = Callable[[pa.Table, Path], None]

OP = "_tidegate_op"
KEY = "_tidegate_key"
RUN_ID = "_tidegate_run_id"
WRITTEN_AT = "_tidegate_written_at"
_META = (OP, KEY, RUN_ID, WRITTEN_AT)


class FileConfig(DestinationConfig):
    """``{type: file, path: exports/, format: parquet}``; the sync's ``object`` is a folder."""

    type: Literal["file"]
    path: str
    format: Format = "parquet"
    # Rows per file; the docs promise 25,000 (a file's rows are held in memory).
    max_records: int = Field(default=25_000, gt=0, le=1_000_000)


class _Clock:
    """Strictly increasing nanoseconds, so files written in one tick still sort in order.

    File systems keep mtimes at a coarse granularity (often a few milliseconds);
    ``read_changes`` orders by mtime, which is set to this instant explicitly.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1_000)  # 1 µs: what Arrow keeps
            return self._last


_clock = _Clock()


class FileDestination(Destination):
    """Writes every batch as one file of changes under ``<path>/<object>/``."""

    kind = "file"
    config_model = FileConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES, max_records=25_000, concurrency=2,
        matches_by="`_tidegate_key` in every file",
    )

    def __init__(self, name: str, config: FileConfig, target: SyncTarget) -> None:
        super().__init__(name, config, target)
        self.settings = config
        root = Path(config.path)
        self.root = root if root.is_absolute() else target.project_root / root
        self.folder = self.root / target.object
        self._writer: Writer = {"csv": _write_csv, "jsonl": self._write_jsonl,
                                "parquet": _write_parquet}[config.format]
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        self._make_folder(self.root)
        if not os.access(self.root, os.W_OK):
            raise DestinationError(
                f"{self.describe()} cannot write to {self.root}: permission denied. "
                "Fix: make the folder writable, or change `path`")

    def prepare(self, schema: pa.Schema) -> None:
        parts = Path(self.target.object).parts
        if not parts or Path(self.target.object).is_absolute() or ".." in parts:
            raise ConfigError(Problem(
                f"object {self.target.object!r} is not a folder name inside {self.root}",
                key="object", fix="use a plain name such as `accounts`"))
        self._make_folder(self.folder)

    def write(self, batch: Batch) -> BatchResult:
        stamp = _clock.now_ns()
        table = _with_meta(batch, self.target.run_id, stamp)
        self._make_folder(self.folder)
        final = self.folder / f"{batch.id}.{self.settings.format}"
        try:
            _replace_atomically(final, lambda path: self._writer(table, path), stamp)
        except (OSError, duckdb.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DestinationError(f"{self.describe()} cannot write {final}: {reason}") \
                from exc
        return BatchResult()

    def close(self) -> None:
        with self._lock:
            duck, self._duck = self._duck, None
        if duck is not None:
            duck.close()

    def _make_folder(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(
                f"{self.describe()} cannot create {folder}: {exc.strerror}. "
                "Fix: check `path` and its permissions") from exc

    def _write_jsonl(self, table: pa.Table, path: Path) -> None:
        # Arrow has no JSON writer; DuckDB writes one from Arrow without a
        # Python object per value, several times faster than json.dumps per row.
        with self._duckdb().cursor() as con:
            con.register("batch", table)
            quoted = str(path).replace("'", "''")
            con.execute(f"copy batch to '{quoted}' (format json)")

    def _duckdb(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._duck is None:
                self._duck = duckdb.connect()
                self._duck.execute("set global TimeZone = 'UTC'")
            return self._duck


def _with_meta(batch: Batch, run_id: int | None, stamp_ns: int) -> pa.Table:
    n = len(batch)
    return (
        batch.table
        .append_column(OP, pa.repeat(pa.scalar(batch.operation, pa.string()), n))
        .append_column(KEY, batch.key_text)
        .append_column(RUN_ID, pa.repeat(pa.scalar(run_id, pa.int64()), n))
        .append_column(WRITTEN_AT, pa.repeat(
            pa.scalar(stamp_ns // 1_000, pa.timestamp("us", tz="UTC")), n))
    )


def _replace_atomically(final: Path, write: Callable[[Path], None], stamp_ns: int) -> None:
    """Write ``final`` through a temporary file, so it is either whole or absent."""
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(temp)
        _fsync(temp)
        os.utime(temp, ns=(stamp_ns, stamp_ns))
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    _fsync(final.parent)  # the rename itself must survive a power cut too


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def _write_csv(table: pa.Table, path: Path) -> None:
    columns = {name: _csv_column(table.column(name)) for name in table.column_names}
    pa_csv.write_csv(pa.table(columns), path)


def _csv_column(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A column CSV can hold: nested values as JSON text, bytes as base64."""
    t = col.type
    if pa.types.is_dictionary(t):
        return _csv_column(col.cast(t.value_type))
    if pa.types.is_nested(t):
        return _each(col, lambda v: json.dumps(v, default=str))
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return _each(col, lambda v: base64.b64encode(v).decode("ascii"))
    if pa.types.is_interval(t):
        return _each(col, str)
    return col


def _each(col: pa.ChunkedArray, text: Callable[[Any], str]) -> pa.Array:
    return pa.array([None if v is None else text(v) for v in col.to_pylist()], pa.string())


# Replay --------------------------------------------------------------------------

_AS_TEXT = {OP: pa.string(), KEY: pa.string()}


def _read_csv(path: Path) -> pa.Table:
    # Strings are written quoted and NULL as an empty unquoted field; reading
    # them back that way keeps "" and NULL apart.
    options = pa_csv.ConvertOptions(column_types=_AS_TEXT, strings_can_be_null=True,
                                    quoted_strings_can_be_null=False)
    return pa_csv.read_csv(path, convert_options=options)


def _read_jsonl(path: Path) -> pa.Table:
    return pa_json.read_json(path)


def _read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path)


_READERS: dict[str, Callable[[Path], pa.Table]] = {
    ".csv": _read_csv, ".jsonl": _read_jsonl, ".parquet": _read_parquet,
}


def read_changes(directory: str | os.PathLike[str], object: str) -> dict[str, dict[str, Any]]:
    """Replay every change file of ``object`` in write order: key JSON text → current record.

    Write order is the files' mtime, then their name. insert, update and upsert
    set a record (its columns without tidegate's own), delete removes it.
    """
    folder = Path(directory) / object
    if not folder.is_dir():
        return {}
    files = [p for p in folder.iterdir()
             if p.suffix in _READERS and not p.name.startswith(".") and p.is_file()]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    current: dict[str, dict[str, Any]] = {}
    for path in files:
        for row in _READERS[path.suffix](path).to_pylist():
            key, op = str(row[KEY]), row[OP]
            if op == "delete":
                current.pop(key, None)
            else:
                current[key] = {k: v for k, v in row.items() if k not in _META}
    return current
