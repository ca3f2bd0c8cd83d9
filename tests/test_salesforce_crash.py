"""SIGKILL a run while its Bulk job is in flight; the rerun carries the job on, uploading nothing.

The job's id is in the journal before its upload, so the rerun finds it: still
running (the sandbox holds it until the test lets it finish), it is waited for;
finished but with its results unread (the sandbox holds the results download),
its results are read. Either way nothing is uploaded again and every record
lands once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from helpers import project
from tidegate import Project
from tidegate.destinations import Batch
from tidegate.sandbox.salesforce import SalesforceSandbox

ENV = {"SF_SECRET": "crash-s3cret"}
ROWS = 60


def journal(root: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(root / ".tidegate" / "state.db", timeout=30) as conn:
        return list(conn.execute("select name, value from tidegate_journal"))


def last_run(root: Path) -> dict[str, object]:
    with sqlite3.connect(root / ".tidegate" / "state.db", timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("select * from tidegate_runs order by id desc").fetchone())


def upsert_project(root: Path, org: SalesforceSandbox) -> None:
    """Sync ``accts`` into Account by external id, through Bulk API 2.0 (threshold 0)."""
    project(root, {"crm": {
        "type": "salesforce", "login_url": org.url, "bulk_threshold": 0,
        "bulk_poll_interval_s": 0.01,
        "auth": {"client_id": "tg", "client_secret": "${SF_SECRET}"}}},
        {"s": {"source": "warehouse", "table": "accts", "primary_key": "account_id",
               "destination": "crm", "object": "Account", "mode": "upsert",
               "match": {"source": "account_id", "destination": "External_Id__c"},
               "fields": {"name": "Name", "aps": "APS__c"}}})


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the run ended before {what}: {err}")
        time.sleep(0.01)
    raise AssertionError(f"never saw {what}")


@pytest.mark.parametrize("moment", ["job running", "results unread"])
def test_killed_with_a_bulk_job_in_flight(project_dir: Path, moment: str) -> None:
    org = SalesforceSandbox(client_id="tg", client_secret=ENV["SF_SECRET"],
                            polls_to_complete=10**9 if moment == "job running" else 1)
    held, release = threading.Event(), threading.Event()

    def hold_results(method: str, path: str) -> None:
        if path.endswith("/successfulResults/"):
            held.set()
            release.wait(30)  # the client is killed while it waits for this answer

    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute(f"create table accts as select 'a-' || i as account_id, 'Acct ' || i "
                    f"as name, i as aps from range({ROWS}) t(i)")
    with org:
        upsert_project(project_dir, org)
        if moment == "results unread":
            org.on_request = hold_results
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidegate", "run", "s", "--project", str(project_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **ENV})
        try:
            if moment == "job running":
                wait_for(lambda: any(j["state"] == "InProgress" for j in org.jobs()),
                         "the job being polled", proc)
            else:
                wait_for(held.is_set, "the results being read", proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            if proc.stderr is not None:
                proc.stderr.close()
            org.on_request = None
            release.set()
        (job,) = org.jobs()
        assert org.upload_count == 1 and job["numberRecordsProcessed"] == (
            0 if moment == "job running" else ROWS)
        assert [job["id"] in value for _, value in journal(project_dir)] == [True]
        assert last_run(project_dir)["status"] == "running"  # killed, nothing acknowledged
        assert last_run(project_dir)["batches"] == 0

        org.polls_to_complete = 2  # the org gets on with the job
        with Project.load(project_dir, env=ENV) as p:
            summary = p.run("s")
            report = p.show(summary["run_id"])["destination_report"]
        assert summary["status"] == "succeeded" and summary["planned"]["added"] == ROWS
        assert org.upload_count == 1 and org.job_count == 1  # nothing uploaded again
        assert report["bulk_jobs_resumed"] == 1 and report["bulk_uploads"] == 0
        accounts = {r["External_Id__c"]: r for r in org.records("Account").values()}
        assert len(accounts) == ROWS and accounts["a-7"]["APS__c"] == 7
        assert journal(project_dir) == []


def test_a_batchs_job_stays_in_the_journal_until_the_run_is_over(project_dir: Path) -> None:
    """Its results are read, but the commit comes after: a crash between the two must
    find the job again, so the entry goes only when the destination closes."""
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute("create table accts as select 'a-1' as account_id, 'A' as name, 1 as aps")
    with SalesforceSandbox(client_id="tg", client_secret=ENV["SF_SECRET"]) as org:
        upsert_project(project_dir, org)
        with Project.load(project_dir, env=ENV) as p:
            plan = p.plan("s")
            assert plan["to_send"] == {"upsert": 1}
            destination = p.destination("s", to_send=plan["to_send"])
            batch = Batch(id="msg_one", operation="upsert", key_text=pa.array(['"a-1"']),
                          table=pa.table({"External_Id__c": ["a-1"], "Name": ["A"],
                                          "APS__c": [1.0]}))
            destination.prepare(batch.table.schema)
            assert destination.write(batch).rejected == {}
            assert [name for name, _ in journal(project_dir)] == ["bulk:msg_one"]
            destination.close()
            assert journal(project_dir) == []
