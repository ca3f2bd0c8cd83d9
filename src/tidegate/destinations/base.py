"""What a destination is: declared capabilities, a config model, and ``write(batch)``.

A destination plugin subclasses ``Destination``, sets the class attributes
(``kind``, ``config_model``, ``capabilities``) and implements ``write``, which
takes one batch of one operation and returns the keys it rejected with the
destination's message. Everything else (batching by record and byte limits,
concurrency, rate limits, retries, state) is tidegate's job, not the plugin's.

``write`` raises ``RetryableError`` for a transient failure of the whole batch
(the same batch is sent again after a backoff) and ``DestinationError`` when
the destination refuses for good.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias, final

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from tidegate.config import MODES, Mode

if TYPE_CHECKING:
    from tidegate.journal import Journal

Operation = Literal["insert", "update", "upsert", "delete"]
_TUNABLE = ("max_records", "max_bytes", "requests_per_second", "concurrency")
ALL_MODES: frozenset[Mode] = frozenset(MODES)
# Compute functions get Arrow scalars: given a Python value, pyarrow looks for
# optional converters (an import attempt) on every call.
# Typed, too: an untyped scalar makes pyarrow import dateutil, if installed, to see
# whether the value is one of its types (about 9 ms, once).
_NOTHING, _NO_FIELDS = pa.scalar("", pa.string()), pa.scalar("{}", pa.string())
_OPEN, _FIELDS = pa.scalar('{"key":', pa.string()), pa.scalar(',"fields":', pa.string())
_CLOSE_NEXT, _DELETE = pa.scalar("},", pa.string()), pa.scalar("delete", pa.string())


def _whole(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one array; one chunk is taken as it is, not copied by a combine."""
    if isinstance(values, pa.Array):
        return values
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()


_Text: TypeAlias = pa.Array | pa.ChunkedArray


def record_documents(operations: _Text, keys: _Text, fields: _Text) -> _Text:
    """Per row, tidegate's JSON record document and a comma: ``{"key":K,"fields":F},``
    (``{"key":K},`` for a delete), from the key's and the fields' JSON text.

    The planner makes them for many batches at once (``Batch.documents``), so that
    a batch's records are one slice of their bytes.
    """
    whole: _Text = pc.binary_join_element_wise(
        _OPEN, keys, _FIELDS, pc.fill_null(fields, _NO_FIELDS), _CLOSE_NEXT, _NOTHING)
    deleting = pc.equal(operations, _DELETE)
    if not pc.any(deleting).as_py():
        return whole
    mixed: _Text = pc.if_else(
        deleting, pc.binary_join_element_wise(_OPEN, keys, _CLOSE_NEXT, _NOTHING), whole)
    return mixed


def text_bytes(values: pa.Array) -> memoryview:
    """The bytes of a string array's values, end to end, read from its buffers."""
    offsets, data = values.buffers()[1:3]
    if data is None or not len(values):
        return memoryview(b"")
    bounds = memoryview(offsets).cast("q" if pa.types.is_large_string(values.type) else "i")
    return memoryview(data)[bounds[values.offset]:bounds[values.offset + len(values)]]


class DestinationConfig(BaseModel):
    """Base of every destination's settings; ``type`` picks the plugin."""

    # Validators are built when first used, as the config's are: a run validates the
    # settings of its own destination only, and this base class's never.
    model_config = ConfigDict(extra="forbid", defer_build=True)

    type: str


@dataclass(frozen=True)
class Capabilities:
    """What a destination accepts; tidegate never exceeds these limits."""

    modes: frozenset[Mode]
    max_records: int = 1000
    max_bytes: int | None = None
    requests_per_second: float | None = None
    concurrency: int = 4
    matches_by: str = "the sync's match key"
    # False for a destination that sends only JSON (``Batch.fields``,
    # ``Batch.joined_documents``): the planner then leaves ``Batch.table`` without columns.
    typed_records: bool = True
    # True for a destination whose ``invalid_values`` names values its schema cannot
    # take: the planner asks it, and those rows are invalid and never sent.
    checks_values: bool = False


@dataclass(frozen=True)
class SyncTarget:
    """The part of a sync a destination needs to know."""

    sync: str
    object: str
    mode: Mode
    match_fields: tuple[str, ...]
    fields: tuple[str, ...]
    project_root: Path
    run_id: int | None = None
    # What this run sends, by operation: a destination with more than one way to
    # write (a bulk API for large runs) chooses by it.
    to_send: Mapping[Operation, int] = field(default_factory=dict)
    # Durable notes about work in flight, so a rerun after a crash finds it.
    journal: Journal | None = None


@dataclass
class Batch:
    """One request's worth of records, all of one operation.

    ``key_text`` holds the records' primary keys as JSON text (a JSON object
    when the key has several columns); ``keys`` gives them as Python strings.
    ``table`` holds match fields and mapped fields as typed Arrow columns, in
    the same order; ``fields`` each record's mapped values (without the match
    fields) as JSON text. Python strings are made only for a destination that
    asks; ``joined_documents`` makes a whole JSON body's records in Arrow.
    """

    id: str
    operation: Operation
    key_text: pa.Array | pa.ChunkedArray
    table: pa.Table
    fields: pa.Array | pa.ChunkedArray | None = None
    # Each record's document followed by a comma (``record_documents``), when the
    # planner made them; ``joined_documents`` then only reads their bytes.
    documents: pa.Array | pa.ChunkedArray | None = None

    def __len__(self) -> int:
        return len(self.key_text)

    @cached_property
    def keys(self) -> list[str]:
        return list(self.key_text.to_pylist())

    @cached_property
    def fields_json(self) -> list[str]:
        if self.fields is None:
            return ["{}"] * len(self)
        return [f if f is not None else "{}" for f in self.fields.to_pylist()]

    def joined_documents(self) -> bytes:
        """Every record as tidegate's JSON record document, ``{"key": …, "fields": …}``
        (``{"key": …}`` in a delete), comma-separated UTF-8: a JSON array's inside.

        Read from ``documents`` (``record_documents``, made in Arrow from the keys' and
        fields' JSON text), with no Python string per record and no JSON decoded.
        """
        documents = self.documents
        if documents is None:  # a batch made by hand (a plugin's test): the same, made here
            n, bare = len(self), self.operation == "delete" or self.fields is None
            documents = record_documents(
                pa.repeat(pa.scalar("delete" if bare else self.operation, pa.string()), n),
                _whole(self.key_text),
                pa.nulls(n, pa.string()) if self.fields is None else _whole(self.fields))
        chunks = documents.chunks if isinstance(documents, pa.ChunkedArray) else [documents]
        views = [text_bytes(chunk) for chunk in chunks if len(chunk)]
        if not views:
            return b""
        views[-1] = views[-1][:-1]  # the last record's comma
        return b"".join(views)

    @cached_property
    def key_values(self) -> list[Any]:
        return [json.loads(k) for k in self.keys]


@dataclass
class BatchResult:
    """The destination's verdict: every key not in ``rejected`` was accepted."""

    rejected: dict[str, str] = field(default_factory=dict)


class Destination(ABC):
    """Base class of destination plugins."""

    kind: ClassVar[str]
    config_model: ClassVar[type[DestinationConfig]]
    capabilities: ClassVar[Capabilities]

    def __init__(self, name: str, config: Any, target: SyncTarget) -> None:
        self.name = name
        self.config = config
        self.target = target

    @classmethod
    def modes_for(cls, object_name: str) -> frozenset[Mode]:
        """The modes a sync to ``object_name`` may use: the declared ones, unless a
        destination's objects differ (an audience list, an event stream). Raises
        ValueError, with the fix in its message, for an object that cannot exist."""
        return cls.capabilities.modes

    def limits(self) -> Capabilities:
        """The declared capabilities, with any setting of the same name applied.

        A config model that has ``max_records``, ``max_bytes``,
        ``requests_per_second`` or ``concurrency`` lets users tune that limit
        (within the bounds its model allows).
        """
        overrides = {
            name: value
            for name in _TUNABLE
            if (value := getattr(self.config, name, None)) is not None
        }
        return dataclasses.replace(self.capabilities, **overrides)

    def check(self) -> None:  # noqa: B027 - a destination with nothing to reach
        """Reach the destination, or raise DestinationError saying why not."""

    def prepare(self, schema: pa.Schema) -> None:  # noqa: B027 - most need no preparation
        """Called once before the first batch of a run with the batches' schema."""

    def invalid_values(self, table: pa.Table) -> pa.Array | None:
        """Per row of ``table``, why the destination cannot take its values (null: it can).

        Called by the planner when ``capabilities.checks_values`` is set, a chunk at a
        time, with the rows a run would send with values (not deletes): the match and
        mapped fields under destination names, typed as in a batch. A row given a
        reason is invalid in the plan, reported with it and never sent. None: every
        row of the chunk can be sent.
        """
        return None

    def record_bytes(self, table: pa.Table) -> pa.Array | None:
        """Bytes each row of ``table`` adds to a request, for a destination whose requests
        are not JSON records (a CSV upload): batches are then cut to ``max_bytes`` by
        these sizes. ``table`` is a chunk of the rows to send with ``__op`` and the
        record's columns. None (for every chunk): tidegate's JSON estimate is used.
        """
        return None

    @abstractmethod
    def write(self, batch: Batch) -> BatchResult:
        """Deliver one batch; return the rejected keys with the destination's message."""

    def report(self) -> dict[str, Any]:
        """What the run's record should keep from this destination (API usage, jobs)."""
        return {}

    def close(self) -> None:  # noqa: B027 - most hold nothing
        """Release connections."""

    @final
    def describe(self) -> str:
        return f"{self.kind} destination '{self.name}'"
