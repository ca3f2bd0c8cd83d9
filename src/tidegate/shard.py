"""Shards: one run of a sync restricted to the keys whose stable hash falls in its part.

A sync split into ``count`` shards runs as ``count`` runs, one per ``index``,
which may run at once (Airflow mapped tasks against a shared PostgreSQL state
store). Shard ``index`` owns the keys whose hash is ``index`` modulo ``count``;
the shards never overlap and together cover every key.

The hash is the first eight bytes of the MD5 of the key's JSON text (the text
state stores, e.g. ``42`` or ``{"a":1,"b":"x"}``), read as a little-endian
unsigned integer: ``int.from_bytes(md5(key).digest()[:8], "little") % count``.
MD5 is fixed by its standard, so every worker, DuckDB version and language
agrees on which shard a key belongs to. It is computed in DuckDB, a column at
a time. Rows with a null key (invalid, never sent) are reported by shard 0.

Within a shard, everything a run judges is the shard's: added, changed and
removed keys, the guardrails' percentages (of the keys the shard knows) and
row counts.

What keeps shards that run at once apart in one state store:

- ``runs.start_run`` refuses a run only when a live run may touch the same
  keys: the other shards of the same split may run, nothing else may.
- Commits of one sync are serialised by the row of its state version, which a
  commit bumps first; a segment's id is therefore taken while no other commit
  of the sync is open, and compaction (which deletes the segments it read, by
  id) never deletes a segment it could not see.
- A shard reads all of state (from a snapshot when it is exactly the truth),
  keeps its own keys, and never writes the snapshot of the whole sync: other
  shards commit while it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from tidegate.errors import ConfigError, Problem

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 4096


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(Problem(
                f"shards must be between 1 and {MAX_SHARDS}, not {self.count}", key="shards",
                fix="split the sync into a few shards per worker (e.g. 4)"))
        if not 0 <= self.index < self.count:
            raise ConfigError(Problem(
                f"shard {self.index} does not exist in {self.count} shard(s)", key="shard",
                fix=f"number the shards 0 to {self.count - 1}"))

    @classmethod
    def of(cls, shard: int | None, shards: int | None) -> Shard | None:
        """The shard given by a run's ``shard`` and ``shards`` arguments (None: the whole sync)."""
        if shard is None and shards is None:
            return None
        if shard is None or shards is None:
            raise ConfigError(Problem(
                "give both `shard` and `shards` (e.g. shard=0, shards=4), or neither",
                key="shard" if shard is None else "shards"))
        found = cls(int(shard), int(shards))
        return None if found.count == 1 else found

    @classmethod
    def parse(cls, text: str) -> Shard | None:
        """``"I/N"`` as on the command line (``--shard 0/4``)."""
        matched = _SPEC.match(text)
        if matched is None:
            raise ConfigError(Problem(f"--shard takes INDEX/COUNT, not '{text}'", key="--shard",
                                      fix="e.g. --shard 0/4 for the first of four shards"))
        return cls.of(int(matched.group(1)), int(matched.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def sql(self, key: str) -> str:
        """A SQL condition true for the rows of SQL expression ``key`` (JSON text) it owns."""
        owned = f"md5_number_upper({key}) % {self.count} = {self.index}"
        return f"coalesce({owned}, {'true' if self.index == 0 else 'false'})"

    def filter(self, table: pa.Table, column: str = "key") -> pa.Table:
        """The rows of ``table`` whose ``column`` (key JSON text) this shard owns."""
        con = duckdb.connect()
        try:
            con.register("whole", table)
            return con.sql(
                f"select * from whole where {self.sql(_q(column))}"
            ).to_arrow_table().cast(table.schema)
        finally:
            con.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
