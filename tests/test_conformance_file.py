"""The conformance kit over the file destination, in each of its formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidegate.destinations.file import read_changes
from tidegate.testing.conformance import ConformanceKit


class FileUnderTest:
    modes = frozenset({"insert", "update", "upsert", "delete", "mirror"})

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder, self.fmt = folder, fmt

    def settings(self) -> dict[str, Any]:
        return {"type": "file", "path": str(self.folder), "format": self.fmt}

    def object_name(self, base: str) -> str:
        return base

    def read_back(self, object_name: str) -> dict[str, dict[str, Any]]:
        rows = read_changes(self.folder, object_name)
        return {k: {f: v[f] for f in ("name", "score", "active") if f in v}
                for k, v in rows.items()}

    def row_count(self, object_name: str) -> int:
        return len(read_changes(self.folder, object_name))


class TestFileConformance(ConformanceKit):
    @pytest.fixture(params=["parquet", "csv", "jsonl"])
    def target(self, request: pytest.FixtureRequest, tmp_path: Path) -> FileUnderTest:
        return FileUnderTest(tmp_path / "exports", request.param)
