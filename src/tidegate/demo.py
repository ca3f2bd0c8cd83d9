"""``tidegate demo``: the whole story on embedded defaults.

A DuckDB warehouse of accounts with a propensity score, a local webhook
receiver that checks every signature, a first sync of everything, 1 % of the
scores changed, a second sync that sends exactly that 1 %, then an upstream bug
that zeroes 40 % of the scores — held by a guardrail, nothing sent — and the
history.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tidegate.project import Project

SYNC = "account_scores_to_crm"

PROJECT_YML = """\
name: demo
sources:
  warehouse: {type: duckdb, path: warehouse.duckdb}
destinations:
  crm:
    type: webhook
    url: ${TIDEGATE_DEMO_URL:-http://127.0.0.1:8790/hooks/tidegate}
    secret: ${TIDEGATE_DEMO_SECRET:-}
syncs:
  account_scores_to_crm:
    source: warehouse
    query: |
      select account_id, name, industry, aps from analytics.account_scores
    primary_key: account_id
    destination: crm
    object: Account
    mode: upsert
    fields: {name: Name, industry: Industry, aps: APS__c}
    batch_size: 1000
    guardrails:
      max_changed_pct: 20          # more than 20 % of known accounts changing is a bug
      checks:
        - {field: APS__c, not_null: true, between: [0, 100]}
"""


def build_warehouse(path: Path, rows: int) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("create schema if not exists analytics")
        con.execute(
            f"""
            create or replace table analytics.account_scores as
            select 'acc_' || lpad(i::varchar, 7, '0') as account_id,
                   'Account ' || i as name,
                   ['Software', 'Retail', 'Health', 'Finance', 'Energy'][1 + i % 5] as industry,
                   (hash(i) % 101)::integer as aps
            from range({rows}) t(i)
            """
        )


def change_one_percent(path: Path) -> int:
    """Move the score of every hundredth account; returns how many changed."""
    with duckdb.connect(str(path)) as con:
        row = con.execute(
            "update analytics.account_scores set aps = (aps + 7) % 101 "
            "where cast(substr(account_id, 5) as integer) % 100 = 0"
        ).fetchall()
    return int(row[0][0]) if row else 0


def zero_forty_percent(path: Path) -> int:
    """The upstream bug: two accounts in five get a score of 0."""
    with duckdb.connect(str(path)) as con:
        row = con.execute(
            "update analytics.account_scores set aps = 0 "
            "where cast(substr(account_id, 5) as integer) % 5 < 2 and aps <> 0"
        ).fetchall()
    return int(row[0][0]) if row else 0


def run_demo(directory: Path | None, rows: int, out: Console, *, as_json: bool = False) -> int:
    from tidegate.sandbox.webhook import WebhookReceiver

    root = directory or Path(tempfile.mkdtemp(prefix="tidegate-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    for stale in ("warehouse.duckdb", ".tidegate"):
        _remove(root / stale)
    (root / "tidegate.yml").write_text(PROJECT_YML, encoding="utf-8")
    build_warehouse(root / "warehouse.duckdb", rows)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    say: Callable[..., None] = (lambda *_: None) if as_json else out.print
    say(f"[bold]tidegate demo[/bold] in {root}: {rows:,} accounts in DuckDB → local webhook")
    with WebhookReceiver(secret=secret) as receiver:
        os.environ["TIDEGATE_DEMO_URL"] = receiver.url
        os.environ["TIDEGATE_DEMO_SECRET"] = secret
        summaries: list[dict[str, Any]] = []
        with Project.load(root) as project:
            say("1. first sync: every account is new")
            summaries.append(project.run(SYNC))
            _print_run(say, summaries[-1])
            changed = change_one_percent(root / "warehouse.duckdb")
            before = receiver.request_count
            say(f"2. changed the score of {changed:,} accounts (1 %); syncing again")
            summaries.append(project.run(SYNC))
            _print_run(say, summaries[-1])
            requests = receiver.request_count - before
            say(f"3. the receiver holds {len(receiver.records('Account')):,} accounts; the "
                f"second run sent {changed:,} records in {requests} request(s)")
            zeroed = zero_forty_percent(root / "warehouse.duckdb")
            before = receiver.request_count
            say(f"4. an upstream bug sets {zeroed:,} scores to 0; syncing again")
            summaries.append(project.run(SYNC))
            _print_run(say, summaries[-1])
            _print_hold(say, summaries[-1])
            untouched = receiver.request_count == before
            history = [r.summary() for r in project.runs(SYNC)]
        held = len(receiver.records("Account"))
    ok = (
        [s["status"] for s in summaries] == ["succeeded", "succeeded", "held"]
        and summaries[1]["delivered"]["updated"] == changed
        and held == rows and untouched
    )
    if as_json:
        print(json.dumps({"project": str(root), "runs": summaries, "changed": changed,
                          "zeroed": zeroed, "receiver_records": held,
                          "second_run_requests": requests, "held_run_sent_nothing": untouched,
                          "ok": ok}))
        return 0 if ok else 1
    say(f"   nothing was sent: the CRM never saw the zeros. `tidegate approve "
        f"{summaries[-1]['run_id']} --project {root}` would send them anyway.")
    table = Table("run", "status", "added", "changed", "unchanged", "sent", "seconds",
                  title="history (tidegate runs)")
    for r in history:
        sent = sum(r["delivered"].values())
        table.add_row(str(r["run_id"]), r["status"], str(r["planned"]["added"]),
                      str(r["planned"]["changed"]), str(r["planned"]["unchanged"]), str(sent),
                      f"{r['duration_s']:.2f}")
    out.print(table)
    out.print(f"try: tidegate runs --project {root}   ·   tidegate show 2 --project {root}")
    return 0 if ok else 1


def _print_run(say: Callable[..., None], s: dict[str, Any]) -> None:
    p, d = s["planned"], s["delivered"]
    say(f"   run {s['run_id']} {s['status']}: planned added {p['added']:,}, changed "
        f"{p['changed']:,}, unchanged {p['unchanged']:,} → created {d['created']:,}, "
        f"updated {d['updated']:,}, rejected {s['rejected']} in {s['duration_s']:.2f}s")


def _print_hold(say: Callable[..., None], s: dict[str, Any]) -> None:
    for reason in (s.get("verdict") or {}).get("reasons", []):
        say(f"   [magenta]held:[/magenta] {escape(reason['message'])} "
            f"{escape('[' + reason['rule'] + ']')}")
        for sample in reason["samples"][:3]:
            say(f"     key {escape(json.dumps(sample['key']))}: "
                f"{escape(json.dumps(sample['old']))} → {escape(json.dumps(sample['new']))}")


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
