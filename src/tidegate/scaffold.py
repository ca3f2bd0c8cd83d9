"""``tidegate init``: a small project that works the moment it is created."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tidegate.errors import ConfigError, Problem

PROJECT_YML = """\
# tidegate project: sources (warehouses), destinations (tools), syncs (model → tool).
name: {name}
state: sqlite:///.tidegate/state.db       # postgresql://… to share state between machines

sources:
  warehouse:
    type: duckdb
    path: warehouse.duckdb

destinations:
  exports:
    type: file
    path: exports/
    format: csv                          # csv | jsonl | parquet
  # hook:
  #   type: webhook
  #   url: ${{HOOK_URL}}
  #   secret: ${{HOOK_SECRET}}            # whsec_…; signs every batch (Standard Webhooks)
"""

SYNC_YML = """\
# One sync: a model (SQL), a destination object, a mode and a field mapping.
source: warehouse
query: |
  select account_id, name, score from accounts
primary_key: account_id
destination: exports
object: account_scores
mode: mirror                             # insert | update | upsert | delete | mirror
fields: [name, score]
"""


def scaffold(directory: Path) -> list[str]:
    """Create a project in ``directory``; refuse to overwrite one."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "tidegate.yml").exists():
        raise ConfigError(Problem(f"{directory.resolve()} already has a tidegate.yml",
                                  fix="choose an empty folder"))
    (directory / "syncs").mkdir(exist_ok=True)
    files = {
        "tidegate.yml": PROJECT_YML.format(name=directory.resolve().name or "tidegate"),
        "syncs/accounts_to_csv.yml": SYNC_YML,
        ".gitignore": ".tidegate/\nexports/\n",
    }
    for rel, text in files.items():
        (directory / rel).write_text(text, encoding="utf-8")
    with duckdb.connect(str(directory / "warehouse.duckdb")) as con:
        con.execute(
            "create or replace table accounts as "
            "select 'acc_' || lpad(i::varchar, 4, '0') as account_id, "
            "'Account ' || i as name, (i * 37) % 101 as score from range(1, 101) t(i)"
        )
    return [*files, "warehouse.duckdb"]
