"""The example's warehouse: raw CRM accounts and product usage, and the score model over them.

    python warehouse.py DIR --hour 1    # build DIR/warehouse.duckdb: 5,000 accounts, 30 days
    python warehouse.py DIR --hour 2    # an hour later: new activity for about 1 in 40

The model is ``models/account_scores.sql`` (a view, as dbt would build it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
ACCOUNTS = 5_000
INDUSTRIES = ["Agriculture", "Banking", "Education", "Energy", "Healthcare", "Manufacturing",
              "Media", "Retail", "Technology", "Other"]


def build(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("create schema if not exists raw")
        con.execute("create schema if not exists analytics")
        con.execute(f"""
            create or replace table raw.crm_accounts as
            select 'ACC-' || lpad(i::varchar, 5, '0') as account_id,
                   'Account ' || i as name,
                   {INDUSTRIES}[1 + i % {len(INDUSTRIES)}] as industry
            from range({ACCOUNTS}) t(i)""")
        # Thirty days of usage; a quarter of the accounts were idle on any given day.
        con.execute(f"""
            create or replace table raw.product_usage as
            select 'ACC-' || lpad(i::varchar, 5, '0') as account_id,
                   date '2026-06-01' + d::integer as day,
                   10 + hash(i) % 40 as seats,
                   (hash(i * 31 + d) % (10 + hash(i) % 40))::integer as active_users
            from range({ACCOUNTS}) a(i), range(30) b(d)
            where hash(i * 7 + d) % 4 <> 0""")
        con.execute((HERE / "models" / "account_scores.sql").read_text())


def next_hour(path: Path) -> int:
    """New activity on the latest day for about one account in forty; how many rows moved."""
    with duckdb.connect(str(path)) as con:
        moved = con.execute("""
            update raw.product_usage set active_users = least(seats, active_users + 5)
            where day = (select max(day) from raw.product_usage)
              and hash(account_id) % 40 = 0 and active_users < seats""").fetchall()
    return int(moved[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--hour", type=int, default=1)
    args = parser.parse_args()
    path = args.dir / "warehouse.duckdb"
    if args.hour == 1:
        build(path)
        print(f"hour 1: built {path} with {ACCOUNTS:,} accounts and 30 days of usage")
    else:
        print(f"hour {args.hour}: new activity for {next_hour(path)} accounts")


if __name__ == "__main__":
    main()
