"""The interface every source implements, and the error for a broken model query."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import pyarrow as pa

from tidegate.errors import SourceError

if TYPE_CHECKING:
    from tidegate.plan import AttachedModel


class ModelQueryError(SourceError):
    """The model's SQL is wrong (syntax, unknown table or column): a config problem."""


class Source(ABC):
    """A named warehouse connection that reads a model as Arrow record batches."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def read(self, sql: str, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        """Stream the rows of ``sql``; raise ModelQueryError or SourceError."""

    def in_place(self, sql: str) -> AttachedModel | None:
        """The model as a DuckDB file the planner can read in place, when it is one."""
        return None

    @abstractmethod
    def check(self) -> None:
        """Reach the source, or raise SourceError saying why not."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing between reads
        """Release connections."""
