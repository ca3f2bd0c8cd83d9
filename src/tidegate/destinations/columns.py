"""Arrow column helpers that the destinations' value conversions and checks share.

It owns the rules that must read the same for every destination: a column taken
whole and plain (one chunk, dictionaries decoded), what counts as text, and what
text is a day of the calendar.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_DAY = r"^\d{4}-\d{2}-\d{2}$"


def plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column as one array, a dictionary's values decoded."""
    whole = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return whole.dictionary_decode() if pa.types.is_dictionary(whole.type) else whole


def is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def calendar_day(text: pa.Array) -> pa.Array:
    """Each ``YYYY-MM-DD`` text that is a day of the calendar as a timestamp, else null."""
    shaped = pc.match_substring_regex(text, _DAY)
    kept = pc.if_else(shaped, text, pa.scalar(None, pa.string()))
    parsed = pc.strptime(kept, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime rolls 2026-02-30 over into March: a day must read back as it was written.
    exists = pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), kept), False)
    return pc.if_else(exists, parsed, pa.scalar(None, parsed.type))
