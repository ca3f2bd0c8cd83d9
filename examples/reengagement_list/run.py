"""Run the re-engagement example: a DuckDB model of eligible users kept as an Iterable list.

    make example NAME=reengagement_list      # from the repository root
    python examples/reengagement_list/run.py  # or directly, with tidegate installed

Without ITERABLE_API_KEY it starts a local Iterable project (``tidegate sandbox
iterable``'s server) and checks at the end that the list holds exactly the
model's users; with it, it syncs into your project's list ITERABLE_LIST_ID.
EXAMPLE_WORKDIR, if set, is where the warehouse and state are kept (default:
this folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
LIST_ID = 1
KEY = "example-iterable-key"


def tidegate(root: Path, env: dict[str, str], *args: str) -> int:
    print(f"\n$ tidegate {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "tidegate", *args, "--project", str(root)],
                          env={**os.environ, **env}, check=False)
    return done.returncode


def eligible(root: Path) -> set[str]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return {r[0] for r in con.execute(
            "select email from analytics.reengagement_eligible").fetchall()}


def main() -> int:
    root = Path(os.environ.get("EXAMPLE_WORKDIR") or HERE)
    root.mkdir(parents=True, exist_ok=True)
    if root != HERE:
        shutil.copy(HERE / "tidegate.yml", root / "tidegate.yml")
    real = bool(os.environ.get("ITERABLE_API_KEY"))
    if not real:  # a fresh local project: start from a fresh state too
        shutil.rmtree(root / ".tidegate", ignore_errors=True)
        (root / "warehouse.duckdb").unlink(missing_ok=True)
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute("create schema if not exists analytics")
        con.execute("create or replace table analytics.clock as "
                    "select timestamp '2026-05-01 09:00:00' as today")
        con.execute((HERE / "warehouse.sql").read_text())
    if real:
        return run_twice(root, {})

    from tidegate.sandbox.iterable import IterableSandbox

    with IterableSandbox(api_key=KEY, lists={LIST_ID: "Re-engagement"}) as project:
        env = {"ITERABLE_BASE_URL": project.url, "ITERABLE_API_KEY": KEY,
               "ITERABLE_LIST_ID": str(LIST_ID)}
        print(f"a local Iterable project is listening on {project.url}")
        code = run_twice(root, env)
        if code != 0:
            return code
        members, wanted = set(project.members(LIST_ID)), eligible(root)
        subscribes = project.calls("/api/lists/subscribe")
        unsubscribes = project.calls("/api/lists/unsubscribe")
        print(f"\nIterable got {len(subscribes)} subscribe request(s) for {sum(subscribes):,} "
              f"user(s) and {len(unsubscribes)} unsubscribe request(s) for "
              f"{sum(unsubscribes):,} user(s).")
        print(f"List {LIST_ID} holds {len(members):,} users; the model says {len(wanted):,} "
              f"are eligible: {'the same users' if members == wanted else 'NOT the same'}.")
        return 0 if members == wanted else 1


def run_twice(root: Path, env: dict[str, str]) -> int:
    # The first run subscribes everyone eligible today.
    if tidegate(root, env, "run", "reengagement") != 0:
        return 1
    # Three days later: some users go quiet long enough to qualify, some have been
    # away too long, and 40 of the eligible came back on their own.
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute("update analytics.clock set today = today + interval 3 days")
        con.execute("""
            insert into raw.sessions
            select u.user_id, (select today from analytics.clock)
            from raw.users u join analytics.reengagement_eligible e using (email)
            order by u.user_id limit 40""")
    if tidegate(root, env, "plan", "reengagement") != 0:
        return 1
    return 0 if tidegate(root, env, "run", "reengagement") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
