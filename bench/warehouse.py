"""Warehouse diff benchmark: the 1 %-changed plan with the local store and in the warehouse.

Two copies of the same 8-column DuckDB model (``scale.COLUMNS``), one synced with
``diff: local``, one with ``diff: warehouse``. Each does its first run (every row
to Parquet), then 1 % of the scores change and each sync is planned again, in a
fresh process (best of 3, the two taken in turns). Bytes out of the warehouse:
for the local store, the model as Arrow (every row's columns, which the planner
reads); for the warehouse diff, what its queries returned (``warehouse_bytes_out``).

    python bench/warehouse.py --rows 10000000 [--out docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import scale

START, END = "<!-- warehouse-diff -->", "<!-- /warehouse-diff -->"


def model_bytes(root: Path) -> int:
    """The model's size as Arrow: what reading it out of the warehouse moves."""
    total = 0
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        for batch in con.sql("select * from accounts").to_arrow_reader(1_000_000):
            total += batch.nbytes
    return total


def _project(root: Path, rows: int, diff: str) -> None:
    scale.build(root, rows)
    text = scale.PROJECT + f"    diff: {diff}\n"
    (root / "tidegate.yml").write_text(text, encoding="utf-8")


def _plan(root: Path) -> dict[str, Any]:
    from tidegate.project import Project
    from tidegate.sync import plan_only

    with Project.load(root) as project:
        return plan_only(project, "accounts")


def measure(rows: int, repeats: int = 3) -> dict[str, Any]:
    """Both first runs, then the 1 % plans taken in turns (local, warehouse, local, …), so
    that whatever else the machine does weighs on both alike."""
    out: dict[str, Any] = {"rows": rows}
    roots = {diff: Path(tempfile.mkdtemp(prefix=f"tidegate-wh-{diff}-"))
             for diff in ("local", "warehouse")}
    try:
        for diff, root in roots.items():
            _project(root, rows, diff)
            first = scale._child(root, "run")
            out[f"{diff}_first_run_s"] = round(first["total_s"], 1)
            out["changed_rows"] = scale.change(root)
        plans: dict[str, list[dict[str, Any]]] = {diff: [] for diff in roots}
        for _ in range(repeats):
            for diff, root in roots.items():
                plans[diff].append(scale._child(root, "plan"))
        for diff, taken in plans.items():
            best = min(taken, key=lambda r: r["plan_s"])
            out[f"{diff}_plan_s"] = round(best["plan_s"], 3)
            out[f"{diff}_peak_rss_mb"] = round(max(p["peak_rss_mb"] for p in taken))
        out["local_bytes_out"] = model_bytes(roots["local"])
        plan = _plan(roots["warehouse"])
        assert plan["planned"]["changed"] == out["changed_rows"], plan["planned"]
        out["warehouse_bytes_out"] = int(plan["timings"]["warehouse_bytes_out"])
    finally:
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
    return out


def render(r: dict[str, Any]) -> str:
    mb = 1024 * 1024
    ratio = r["warehouse_plan_s"] / r["local_plan_s"]
    return "\n".join([
        START,
        "## The diff in the warehouse (`diff: warehouse`)",
        "",
        f"The same {r['rows']:,}-row model, one sync planned with the local state store, one",
        "with its key-and-hash copy in the warehouse (`bench/warehouse.py`). After each",
        f"first run, 1 % of the scores change ({r['changed_rows']:,} rows) and the sync is",
        "planned again in a fresh process (best of 3, the two syncs' plans taken in turns).",
        "*Out of the warehouse*: for the local",
        "store, the model as Arrow (the planner reads every row); for the warehouse diff,",
        "what its queries returned: the changed rows, their keys and old hashes, and counts.",
        "",
        "| | 1 % plan | peak RSS | out of the warehouse | first run |",
        "|---|---:|---:|---:|---:|",
        f"| local store | {r['local_plan_s']:.2f} s | {r['local_peak_rss_mb']} MB | "
        f"{r['local_bytes_out'] / mb:,.1f} MiB | {r['local_first_run_s']:.1f} s |",
        f"| warehouse diff | {r['warehouse_plan_s']:.2f} s | {r['warehouse_peak_rss_mb']} MB | "
        f"{r['warehouse_bytes_out'] / mb:,.2f} MiB | {r['warehouse_first_run_s']:.1f} s |",
        "",
        f"In this run the warehouse diff planned in {ratio:.2f} of the local store's time "
        f"({'below' if ratio < 1 else 'not below'} it) and moved "
        f"{r['warehouse_bytes_out'] / r['local_bytes_out']:.2%} of the bytes out of the "
        "warehouse. With DuckDB the warehouse is a local file, so the figure that matters "
        "for a remote warehouse is the bytes: the local store must read every row over the "
        "network; the warehouse diff reads the changed ones.",
        END,
    ])


def write_section(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text,
                      flags=re.S)
    else:
        marker = "## Against a peer"
        text = (text.replace(marker, section + "\n\n" + marker, 1) if marker in text
                else text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.rows)
    print(json.dumps(result))
    if args.out is not None:
        write_section(args.out, render(result))


if __name__ == "__main__":
    main()
