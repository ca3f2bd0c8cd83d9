"""The file destination: each batch becomes one change file (CSV, JSON lines or Parquet).

Files are named after the batch id and written to a temporary name first, then
renamed: a crash never leaves half a file, and a batch sent again after a crash
replaces its own file instead of adding a duplicate. Every file carries the
operation and key of each record, so ``read_changes`` can replay a folder into
the current records.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

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
    DestinationConfig,
    SyncTarget,
)
from tidegate.destinations.base import Destination as _Destination
from tidegate.errors import DestinationError

Format = Literal["csv", "jsonl", "parquet"]


class FileConfig(DestinationConfig):
    type: Literal["file"]
    path: str
    format: Format = "parquet"
    max_records: int = Field(default=25_000, gt=0)


class FileDestination(_Destination):
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
        self.folder = (root if root.is_absolute() else target.project_root / root) / target.object

    def check(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"cannot create {self.folder}: {exc.strerror}") from exc

    def write(self, batch: Batch) -> BatchResult:
        n = len(batch)
        table = batch.table.append_column(
            "_tidegate_op", pa.array([batch.operation] * n, pa.string())
        ).append_column("_tidegate_key", pa.array(batch.keys, pa.string())).append_column(
            "_tidegate_run_id", pa.array([self.target.run_id] * n, pa.int64())
        ).append_column(
            "_tidegate_written_at",
            pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{batch.id}.{self.settings.format}"
        temp = final.with_name(f".{final.name}.tmp")
        try:
            _WRITERS[self.settings.format](table, temp)
            os.replace(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise DestinationError(f"cannot write {final}: {exc.strerror}") from exc
        return BatchResult()


def _csv(table: pa.Table, path: Path) -> None:
    pa_csv.write_csv(table, path)


def _parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def _jsonl(table: pa.Table, path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in table.to_pylist():
            fh.write(json.dumps(row, default=str) + "\n")


_WRITERS = {"csv": _csv, "parquet": _parquet, "jsonl": _jsonl}
_READERS = {
    "csv": lambda p: pa_csv.read_csv(p),
    "parquet": lambda p: pq.read_table(p),
    "jsonl": lambda p: pa_json.read_json(p),
}


def read_changes(folder: Path, obj: str) -> dict[str, dict[str, Any]]:
    """Replay every change file of ``obj`` in write order: key JSON → current record."""
    files = [p for p in (folder / obj).glob("*.*") if not p.name.startswith(".")]
    current: dict[str, dict[str, Any]] = {}
    loaded = []
    for path in files:
        table = _READERS[path.suffix.lstrip(".")](path)
        rows = table.to_pylist()
        stamp = str(rows[0]["_tidegate_written_at"]) if rows else ""
        loaded.append((stamp, path.name, rows))
    for _, _, rows in sorted(loaded, key=lambda item: (item[0], item[1])):
        for row in rows:
            key = str(row.pop("_tidegate_key"))
            op = row.pop("_tidegate_op")
            for meta in ("_tidegate_run_id", "_tidegate_written_at"):
                row.pop(meta, None)
            if op == "delete":
                current.pop(key, None)
            else:
                current[key] = row
    return current
