"""Run the product-usage example: usage metrics from DuckDB kept on HubSpot companies.

    make example NAME=product_usage_to_hubspot      # from the repository root
    python examples/product_usage_to_hubspot/run.py  # or directly, with tidegate installed

Without HUBSPOT_TOKEN it starts a local HubSpot portal (``tidegate sandbox
hubspot``'s server, which checks every request against HubSpot's OpenAPI
documents), gives it the custom company properties the README lists, and checks
at the end that every company holds the model's values; with it, it syncs into
your portal. EXAMPLE_WORKDIR, if set, is where the warehouse and state are kept
(default: this folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
TOKEN = "pat-na1-example"
# The custom company properties this sync writes (README: create them in HubSpot first).
CUSTOM = [
    ("tidegate_account_id", "string", "text", (), True),
    ("plan_tier", "enumeration", "select", ("free", "pro", "enterprise"), False),
    ("is_paying", "bool", "booleancheckbox", (), False),
    ("weekly_active_users", "number", "number", (), False),
    ("product_health_score", "number", "number", (), False),
    ("last_active_date", "date", "date", (), False),
    ("last_seen_at", "datetime", "date", (), False),
    ("features_used", "enumeration", "checkbox", ("reports", "api", "sso", "exports"), False),
]


def tidegate(root: Path, env: dict[str, str], *args: str) -> int:
    print(f"\n$ tidegate {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "tidegate", *args, "--project", str(root)],
                          env={**os.environ, **env}, check=False)
    return done.returncode


def model(root: Path) -> dict[str, dict[str, object]]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        cur = con.execute("select account_id, weekly_active_users, plan_tier, features_used "
                          "from analytics.company_usage")
        return {r[0]: {"weekly_active_users": str(r[1]), "plan_tier": r[2],
                       "features_used": ";".join(r[3])} for r in cur.fetchall()}


def main() -> int:
    root = Path(os.environ.get("EXAMPLE_WORKDIR") or HERE)
    root.mkdir(parents=True, exist_ok=True)
    if root != HERE:
        shutil.copy(HERE / "tidegate.yml", root / "tidegate.yml")
    real = bool(os.environ.get("HUBSPOT_TOKEN"))
    if not real:  # a fresh local portal: start from a fresh state too
        shutil.rmtree(root / ".tidegate", ignore_errors=True)
        (root / "warehouse.duckdb").unlink(missing_ok=True)
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute("create schema if not exists analytics")
        con.execute("create or replace table analytics.clock as "
                    "select timestamp '2026-06-01 12:00:00' as today")
        con.execute((HERE / "warehouse.sql").read_text())
    if real:
        return run_twice(root, {})

    from tidegate.sandbox.hubspot import HubSpotSandbox, Property

    with HubSpotSandbox(token=TOKEN) as portal:
        for name, kind, field_type, options, unique in CUSTOM:
            portal.add_property("companies", Property(name, kind, field_type, options=options,
                                                      unique=unique))
        env = {"HUBSPOT_BASE_URL": portal.url, "HUBSPOT_TOKEN": TOKEN}
        print(f"a local HubSpot portal is listening on {portal.url}")
        if run_twice(root, env) != 0:
            return 1
        held = {r["tidegate_account_id"]: r for r in portal.records("companies").values()}
        wanted = model(root)
        wrong = [k for k, v in wanted.items()
                 if any(held.get(k, {}).get(p) != value for p, value in v.items())]
        upserts = portal.writes("batch/upsert")
        print(f"\nHubSpot got {len(upserts)} batch/upsert request(s) for {sum(upserts):,} "
              f"companies (at most {max(upserts)} a request).")
        sample = held["acct-0007"]
        print("acct-0007 in HubSpot: " + ", ".join(
            f"{p}={sample.get(p, '')!r}" for p, *_ in CUSTOM))
        print(f"{len(held):,} companies in HubSpot, {len(wanted):,} in the model; "
              f"{len(wrong)} differ.")
        return 0 if not wrong and len(held) == len(wanted) else 1


def run_twice(root: Path, env: dict[str, str]) -> int:
    # The first run creates (or updates) every company.
    if tidegate(root, env, "run", "product_usage") != 0:
        return 1
    # Later that day, 25 accounts use the product again: only they change.
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute("""
            insert into raw.events
            select account_id, 100 + i, 'exports', (select today from analytics.clock)
            from (select account_id, row_number() over (order by account_id) as i
                  from raw.accounts) where i <= 25""")
    return 0 if tidegate(root, env, "run", "product_usage") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
