"""Small builders shared by test modules: DuckDB warehouses and project folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import yaml


def warehouse(path: Path, rows: int = 100, *, shift: int = 0, sql: str | None = None) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute(
            sql
            or f"create or replace table accounts as select i as id, 'acct ' || i as name, "
            f"((i * 13 + {shift}) % 101)::integer as score from range({rows}) t(i)"
        )
    return path


def project(root: Path, destinations: dict[str, Any], syncs: dict[str, Any],
            **top: Any) -> Path:
    config = {
        "name": "test",
        "sources": {"warehouse": {"type": "duckdb", "path": "warehouse.duckdb"}},
        "destinations": destinations,
        "syncs": syncs,
        **top,
    }
    (root / "tidegate.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return root


def sync(destination: str = "hook", mode: str = "upsert", **extra: Any) -> dict[str, Any]:
    return {"source": "warehouse", "table": "accounts", "primary_key": "id",
            "destination": destination, "object": "Account", "mode": mode,
            "fields": ["name", "score"], **extra}


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``tidegate`` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "tidegate", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, **(env or {})},
    )


# A destination table that logs every write it takes, to count deliveries per key.
PG_TABLE = """
create table public.accounts (id bigint primary key, name text, score bigint);
create table writes (id bigint not null, op text not null);
create function log_write() returns trigger language plpgsql as
  $$ begin insert into writes values (new.id, tg_op); return new; end $$;
create trigger log_write after insert or update on public.accounts
  for each row execute function log_write();
"""


def write_log(url: str) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("select id, count(*) from writes group by id").fetchall())
