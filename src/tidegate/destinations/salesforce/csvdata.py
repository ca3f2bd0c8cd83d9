"""CSV as Bulk API 2.0 takes it and gives it back, made and read column at a time.

Uploads are comma-delimited with LF line endings (the job's defaults). Every
value is quoted, with quotes doubled, so a line's length is known exactly
before the file is written: the planner cuts batches by it (``line_bytes``).
An empty cell leaves a field as it is in Bulk CSV, so a null, or an empty
string, is written ``#N/A``, which sets the field to null, as JSON null does on
the Collections path.
https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/datafiles_prepare_csv.htm

Result files (``successfulResults``, ``failedResults``, ``unprocessedrecords``)
are read as text columns; a failed row's ``sf__Error`` reads
``STATUS_CODE:message:fields``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

NULL = "#N/A"
_QUOTE = pa.scalar('"')
_NULL = pa.scalar(NULL)
_NO_TEXT = pa.scalar(None, pa.string())


def header(names: list[str]) -> bytes:
    """The header line; API field names never need quoting."""
    return (",".join(names) + "\n").encode()


def lines(columns: Mapping[str, pa.Array]) -> pa.Array:
    """Each record's CSV line, newline included, from text columns of equal length."""
    cells = []
    for column in columns.values():
        text = pc.if_else(pc.equal(pc.binary_length(column), 0), _NO_TEXT, column)
        quoted = pc.binary_join_element_wise(
            _QUOTE, pc.replace_substring(text, '"', '""'), _QUOTE, "")
        cells.append(pc.fill_null(quoted, _NULL))
    joined = cells[0] if len(cells) == 1 else pc.binary_join_element_wise(*cells, ",")
    return pc.binary_join_element_wise(joined, "\n", "")


def line_bytes(columns: Mapping[str, pa.Array]) -> pa.Array:
    """Each record's line length in bytes (int64), as ``lines`` writes it."""
    return pc.binary_length(lines(columns)).cast(pa.int64())


def body(head: bytes, records: pa.Array) -> bytes:
    """The file to upload: ``head`` and the lines of ``records`` as they are in memory."""
    if not len(records):
        return head
    buffers = records.buffers()
    offsets = pa.Array.from_buffers(pa.int32(), len(records) + 1, [None, buffers[1]],
                                    offset=records.offset)
    start, stop = offsets[0].as_py(), offsets[len(records)].as_py()
    data: bytes = buffers[2].slice(start, stop - start).to_pybytes()
    return head + data


def parts(sizes: pa.Array, budget: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``budget`` bytes each, as few as the order allows.

    Greedy: each range takes rows until the next would not fit, which is the
    fewest ranges for records kept in order (one record always goes, even alone
    over the budget: Salesforce's record limit is far below any upload limit).
    """
    n = len(sizes)
    if not n:
        return []
    total = pc.cumulative_sum(sizes).to_pylist()
    out, start, base = [], 0, 0
    while start < n:
        limit = base + budget
        stop = start + 1
        # Binary search in the running totals for the last row that fits.
        low, high = stop, n
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if total[mid - 1] <= limit else (low, mid - 1)
        stop = max(stop, low)
        out.append((start, stop))
        base, start = total[stop - 1], stop
    return out


def read(data: bytes) -> pa.Table:
    """A result file as text columns (empty cells as empty strings, never null)."""
    first = data.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    if not first:
        return pa.table({})
    names = next(csv.reader([first]))
    return pacsv.read_csv(
        io.BytesIO(data),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False,
            quoted_strings_can_be_null=False),
    )


_FIELDS = re.compile(r"[\w\s,.]*(--)?\s*")


def error_text(sf_error: str) -> str:
    """``CODE:message:fields`` as ``CODE: message (fields)``, the Collections path's form."""
    code, _, rest = sf_error.partition(":")
    if not code or not rest:
        return sf_error or "refused"
    message, sep, tail = rest.rpartition(":")
    if sep and _FIELDS.fullmatch(tail):
        fields = tail.strip().removesuffix("--").strip().strip(",").strip()
    else:
        message, fields = rest, ""
    return f"{code}: {message.strip() or 'refused'}" + (f" ({fields})" if fields else "")
