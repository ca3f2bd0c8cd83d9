"""Scale benchmark: plan time and peak RSS for a large DuckDB model, against DuckDB's floor.

Each measurement runs in a fresh process so peak RSS belongs to that run alone.
The floor is what DuckDB itself takes to hash every row of two versions of the
table and diff them with a full outer join: no planner can beat it by much.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

COLUMNS = """
    i as id, 'user' || i || '@example.com' as email, 'Name ' || i as name,
    (hash(i) % 101)::integer as score, i % 3 = 0 as active, (i % 100000) * 1.25 as amount,
    timestamp '2024-01-01' + to_seconds(i) as updated_at, 'segment_' || (i % 50) as segment
"""

PROJECT = """\
name: bench
sources:
  warehouse: {type: duckdb, path: warehouse.duckdb}
destinations:
  out: {type: file, path: exports/, format: parquet}
syncs:
  accounts:
    source: warehouse
    table: accounts
    primary_key: id
    destination: out
    object: accounts
    mode: mirror
"""


def build(root: Path, rows: int) -> None:
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute(f"create or replace table accounts as select {COLUMNS} from range({rows}) t(i)")
    (root / "tidegate.yml").write_text(PROJECT, encoding="utf-8")


def change(root: Path, every: int = 100) -> int:
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        rows = con.execute(
            f"update accounts set score = (score + 1) % 101 where id % {every} = 0"
        ).fetchall()
    return int(rows[0][0])


def child(root: str, action: str) -> None:
    """In a fresh process: plan only, or a whole run; print its figures as JSON."""
    from tidegate.project import Project
    from tidegate.sync import plan_only

    started = time.perf_counter()
    with Project.load(root) as project:
        if action == "run":
            summary = project.run("accounts")
            assert summary["status"] == "succeeded", summary
            plan_s = float(project.show(summary["run_id"])["timings"]["plan_s"])
        else:
            plan_s = float(plan_only(project, "accounts")["timings"]["plan_s"])
    print(json.dumps({"plan_s": plan_s, "total_s": time.perf_counter() - started,
                      "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident set, in MiB.

    From ``VmHWM``, which starts afresh with the program: ``ru_maxrss`` is kept
    across exec, so a child would report its parent's peak if that was higher.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def floor(root: Path) -> float:
    """DuckDB alone: hash both versions of the table, full outer join, count differences."""
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        con.execute("create temp table before as select * replace "
                    "(case when id % 100 = 0 then (score + 100) % 101 else score end as score) "
                    "from accounts")
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            con.execute(
                "select count(*) from (select id, hash(a) h from accounts a) x "
                "full outer join (select id, hash(b) h from before b) y using (id) "
                "where x.h is distinct from y.h"
            ).fetchall()
            best = min(best, time.perf_counter() - started)
    return best


def measure(rows: int, repeats: int = 3) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"tidegate-scale-{rows}-"))
    try:
        build(root, rows)
        first_plan = _child(root, "plan")
        first_run = _child(root, "run")
        changed = change(root)
        incremental = [_child(root, "plan") for _ in range(repeats)]
        best = min(incremental, key=lambda r: r["plan_s"])
        return {
            "rows": rows,
            "first_plan_s": round(first_plan["plan_s"], 3),
            "first_plan_peak_rss_mb": round(first_plan["peak_rss_mb"]),
            "first_run_s": round(first_run["total_s"], 3),
            "first_run_peak_rss_mb": round(first_run["peak_rss_mb"]),
            "changed_rows": changed,
            "changed_plan_s": round(best["plan_s"], 3),
            "changed_plan_peak_rss_mb": round(max(r["peak_rss_mb"] for r in incremental)),
            "floor_s": round(floor(root), 3),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _child(root: Path, action: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root), "--action", action],
        check=True, capture_output=True, text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--child")
    parser.add_argument("--action", choices=["plan", "run"], default="plan")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.action)
        return
    for rows in args.rows:
        print(json.dumps(measure(rows)))


if __name__ == "__main__":
    main()
