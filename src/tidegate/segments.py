"""State segments: how one acknowledged batch's state is encoded in the state store.

A segment is two Arrow IPC streams kept in one row of ``tidegate_state_segments``:

    keys     key (JSON text), hash (int64), live (false: the key was removed)
    records  record: the mapped values acknowledged, as JSON text (NULL when removed)

The two are separate so that reading (key, hash) pairs for a diff never reads
the records. Records are zstd-compressed: JSON text shrinks about tenfold
(LZ4, which the first stores used and which still reads, about fivefold), and a
first sync's commit time is mostly the bytes it writes — written twice, once in
the segment and once in the audit log, then again when SQLite checkpoints.
"""

from __future__ import annotations

import pyarrow as pa

KEYS_SCHEMA = pa.schema([("key", pa.string()), ("hash", pa.int64()), ("live", pa.bool_())])
RECORDS_SCHEMA = pa.schema([("record", pa.string())])
CODEC = "zstd"  # Arrow IPC names the codec per buffer, so older blobs read as they are
# Rows per segment written by compaction and migration: large enough that a big
# sync is a few hundred rows of the table, small enough to build in memory.
SEGMENT_ROWS = 100_000


Blob = bytes | memoryview  # what the store binds as a BLOB (SQLite and PostgreSQL alike)


def encode(table: pa.Table | pa.RecordBatch, compression: str | None = None) -> memoryview:
    """The IPC stream's bytes, as a view of Arrow's buffer: a store writes them from
    there, with no copy made first (a first sync's blobs are megabytes)."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write(table)
    return memoryview(sink.getvalue())


def decode(blob: Blob) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def keys_blob(keys: pa.Array, hashes: pa.Array, live: pa.Array) -> memoryview:
    return encode(pa.Table.from_arrays([keys, hashes, live], schema=KEYS_SCHEMA))


def records_blob(records: pa.Array) -> memoryview:
    return encode(pa.Table.from_arrays([records], schema=RECORDS_SCHEMA), CODEC)
