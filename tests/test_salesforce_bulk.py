"""The Salesforce destination on both write paths, through the real run, against the sandbox.

Collections for runs at or under ``bulk_threshold``, Bulk API 2.0 above it: every
mode, result rows matched by key however the org orders them, per-record
failures with Salesforce's message, locked rows, throttling, token expiry and
the daily limit mid-run, and the upload arithmetic.
"""

from __future__ import annotations

import csv
import io
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from helpers import project
from tidegate import Project
from tidegate.destinations.salesforce import bulk
from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi
from tidegate.sandbox.salesforce import SalesforceSandbox, salesforce_id

ENV = {"SF_SECRET": "bulk-s3cret"}
PATHS = {"collections": {}, "bulk": {"bulk_threshold": 0}}
NOWHERE = salesforce_id("001TG9999999999")  # a well-formed Account Id no record has


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(client_id="tg", client_secret=ENV["SF_SECRET"],
                           hard_delete_allowed=True) as sandbox:
        yield sandbox


def crm(org: SalesforceSandbox, **extra: Any) -> dict[str, Any]:
    return {"type": "salesforce", "login_url": org.url, "bulk_poll_interval_s": 0.005,
            "auth": {"client_id": "tg", "client_secret": "${SF_SECRET}"}, **extra}


DEFAULT_FIELDS = {"name": "Name", "aps": "APS__c"}


def sync(table: str, mode: str, key: str = "account_id", match: str = "External_Id__c",
         fields: dict[str, str] | None = DEFAULT_FIELDS, **extra: Any) -> dict[str, Any]:
    """A sync of ``table``; ``fields=None`` maps every column (none, for a key-only table)."""
    out = {"source": "warehouse", "table": table, "primary_key": key,
           "destination": extra.pop("destination", "crm"),
           "object": extra.pop("object", "Account"), "mode": mode,
           "match": {"source": key, "destination": match}, **extra}
    if fields is not None:
        out["fields"] = fields
    return out


def sql(root: Path, *statements: str) -> None:
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        for statement in statements:
            con.execute(statement)


def accts(root: Path, n: int) -> None:
    """Accounts a-0 … a-(n-1), named and scored by their number."""
    sql(root, "create table accts as select 'a-' || i as account_id, 'Acct ' || i as name, "
              f"i as aps from range({n}) t(i)")


def run(root: Path, name: str) -> dict[str, Any]:
    with Project.load(root, env=ENV) as p:
        summary = p.run(name)
        summary["report"] = p.show(summary["run_id"])["destination_report"]
        summary["rows"] = p.show(summary["run_id"])["rows"]
    return summary


def by_ext(org: SalesforceSandbox, obj: str = "Account") -> dict[str, dict[str, Any]]:
    return {str(r["External_Id__c"]): r for r in org.records(obj).values()}


def journal(root: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(root / ".tidegate" / "state.db") as conn:
        return list(conn.execute("select name, value from tidegate_journal"))


@pytest.mark.parametrize("path", PATHS)
def test_every_mode_on_both_paths(project_dir: Path, org: SalesforceSandbox, path: str) -> None:
    sql(project_dir, "create table accts as select 'a-' || i as account_id, 'Acct ' || i "
                     "as name, i * 1.5 as aps from range(12) t(i)")
    project(project_dir, {"crm": crm(org, **PATHS[path]),
                          "purger": crm(org, **PATHS[path], hard_delete=True)}, {
        "insert": sync("accts", "insert"),
        "update": sync("accts", "update", fields={"aps": "APS__c"}),
        "by_id": sync("by_id", "update", key="sf_id", match="Id", fields={"name": "Name"}),
        "upsert": sync("accts", "upsert"),
        "delete": sync("gone", "delete", fields=None),
        "purge": sync("purged", "delete", fields=None, destination="purger"),
        "mirror": sync("kept", "mirror"),
    })
    first = run(project_dir, "insert")
    assert first["delivered"]["created"] == 12 and first["report"]["write_path"] == path
    assert by_ext(org)["a-3"]["APS__c"] == 4.5 and len(org.records("Account")) == 12

    sql(project_dir, "update accts set aps = aps + 100 where account_id in ('a-0', 'a-1')",
        "insert into accts values ('a-12', 'Acct 12', 1)")  # not in the org yet
    updated = run(project_dir, "update")
    assert updated["status"] == "partial" and updated["delivered"]["updated"] == 12
    assert [(r["key"], r["error"]) for r in updated["rows"]] == [
        ("a-12", "no Account with External_Id__c a-12")]
    assert by_ext(org)["a-1"]["APS__c"] == 101.5 and "a-12" not in by_ext(org)

    ids = {ext: r["Id"] for ext, r in by_ext(org).items()}
    sql(project_dir, "create table by_id (sf_id varchar, name varchar)",
        *(f"insert into by_id values ('{ids[f'a-{i}']}', 'Renamed {i}')" for i in range(4)),
        f"insert into by_id values ('{NOWHERE}', 'Ghost')")
    renamed = run(project_dir, "by_id")
    assert renamed["delivered"]["updated"] == 4 and renamed["rejected"] == 1
    assert renamed["rows"][0]["error"] == "INVALID_CROSS_REFERENCE_KEY: invalid cross reference id"
    assert by_ext(org)["a-2"]["Name"] == "Renamed 2"

    upserted = run(project_dir, "upsert")  # updates the 12, creates a-12
    assert upserted["status"] == "succeeded" and len(org.records("Account")) == 13
    assert by_ext(org)["a-12"]["Name"] == "Acct 12" and by_ext(org)["a-2"]["Name"] == "Acct 2"

    sql(project_dir, "create table gone as select 'a-' || i as account_id from range(10, 12) t(i)")
    deleted = run(project_dir, "delete")
    assert deleted["delivered"]["deleted"] == 2
    assert {ids["a-10"], ids["a-11"]} <= org.recycle_bin("Account")

    sql(project_dir, "create table purged as select 'a-' || i as account_id from range(8, 10) t(i)")
    purged = run(project_dir, "purge")
    assert purged["delivered"]["deleted"] == 2 and purged["report"]["write_path"] == "bulk"
    assert not {ids["a-8"], ids["a-9"]} & (set(org.records("Account")) | org.recycle_bin(
        "Account"))

    sql(project_dir, "create table kept as select * from accts where account_id in "
                     "('a-0', 'a-1', 'a-2', 'a-3', 'a-4')")
    assert run(project_dir, "mirror")["delivered"]["created"] == 5
    sql(project_dir, "delete from kept where account_id = 'a-4'",
        "update kept set name = 'Mirrored' where account_id = 'a-0'")
    mirrored = run(project_dir, "mirror")
    assert mirrored["delivered"] == {"created": 0, "updated": 1, "deleted": 1}
    assert "a-4" not in by_ext(org) and by_ext(org)["a-0"]["Name"] == "Mirrored"
    # Collections made one Bulk job: the purge, since hardDelete exists only in Bulk API.
    assert org.job_count == 1 if path == "collections" else org.job_count >= 8


@pytest.mark.parametrize("path", PATHS)
def test_per_record_failures_reject_their_rows_with_salesforces_message(
    project_dir: Path, org: SalesforceSandbox, path: str,
) -> None:
    account = org.put("Account", {"Name": "Parent", "External_Id__c": "parent"})
    sql(project_dir, "create table people as select 'c-' || i as contact_id, "
                     "'Person ' || i as last_name, "
                     f"case when i % 7 = 0 then '{NOWHERE}' else '{account}' end as account "
                     "from range(30) t(i)")
    project(project_dir, {"crm": crm(org, **PATHS[path])}, {
        "contacts": sync("people", "upsert", key="contact_id", object="Contact",
                         fields={"last_name": "LastName", "account": "AccountId"})})
    result = run(project_dir, "contacts")
    assert result["status"] == "partial" and result["delivered"]["created"] == 25
    assert {r["key"]: r["error"] for r in result["rows"]} == dict.fromkeys(
        ["c-0", "c-14", "c-21", "c-28", "c-7"],
        "INVALID_CROSS_REFERENCE_KEY: invalid cross reference id (AccountId)")
    assert "c-7" not in by_ext(org, "Contact") and "c-8" in by_ext(org, "Contact")
    if path == "bulk":
        # The org answers in its own order: only matching by key finds the right rows.
        job = org.jobs()[0]["id"]
        api = SalesforceApi(org.url, AuthConfig(client_id="tg", client_secret=ENV["SF_SECRET"]),
                            "62.0", root=project_dir)
        text = api.request("GET", f"jobs/ingest/{job}/successfulResults/").text
        api.close()
        order = [r["External_Id__c"] for r in csv.DictReader(io.StringIO(text))]
        assert sorted(order) == sorted(set(order)) and order != sorted(order)
    again = run(project_dir, "contacts")  # rejected rows are tried again
    assert again["planned"]["added"] == 5 and again["rejected"] == 5


@pytest.mark.parametrize("path", PATHS)
def test_locked_rows_are_sent_again_until_free_or_rejected(
    project_dir: Path, org: SalesforceSandbox, path: str,
) -> None:
    accts(project_dir, 20)
    project(project_dir, {"crm": crm(org, **PATHS[path])}, {"s": sync("accts", "upsert")})
    org.lock_rows(["a-3", "a-4"], times=2)
    first = run(project_dir, "s")
    assert first["status"] == "succeeded" and len(by_ext(org)) == 20
    if path == "bulk":
        assert first["report"]["bulk_jobs"] == 3 and first["report"]["bulk_lock_retries"] == 4
    org.lock_rows(["a-5"], times=100)
    sql(project_dir, "update accts set aps = 50")
    stuck = run(project_dir, "s")
    assert stuck["rejected"] == 1 and stuck["rows"][0]["key"] == "a-5"
    assert stuck["rows"][0]["error"].startswith("UNABLE_TO_LOCK_ROW: unable to obtain exclusive")
    assert by_ext(org)["a-6"]["APS__c"] == 50 and by_ext(org)["a-5"]["APS__c"] == 5


@pytest.mark.parametrize("path", PATHS)
def test_throttling_and_an_expired_token_mid_run_are_waited_out(
    project_dir: Path, org: SalesforceSandbox, path: str,
) -> None:
    accts(project_dir, 450)
    project(project_dir, {"crm": crm(org, **PATHS[path])}, {"s": sync("accts", "upsert")})
    faults = {"done": False}

    def fault(method: str, path: str) -> None:
        writes = path.startswith("/composite/sobjects") or path.endswith("/batches")
        if writes and not faults["done"]:
            faults["done"] = True
            org.expire_tokens()  # this call answers 401; the next two 403
            org.throttle_next(2)

    org.on_request = fault
    tokens = org.tokens_issued
    result = run(project_dir, "s")
    assert result["status"] == "succeeded" and faults["done"]
    # Planning's describe, the delivery's first token, and the one replacing it mid-run.
    assert len(by_ext(org)) == 450 and org.tokens_issued == tokens + 3
    assert result["report"]["write_path"] == path


def test_a_spent_daily_limit_stops_the_run_and_the_rerun_carries_the_job_on(
    project_dir: Path, org: SalesforceSandbox,
) -> None:
    accts(project_dir, 40)
    project(project_dir, {"crm": crm(org, bulk_threshold=10)}, {"s": sync("accts", "upsert")})

    def spend(method: str, path: str) -> None:
        if method == "GET" and path.startswith("/jobs/ingest/"):
            org.on_request = None
            org.use_api(org.daily_limit)  # other integrations spent the allowance

    org.on_request = spend
    failed = run(project_dir, "s")
    assert failed["status"] == "failed" and "daily API limit is spent" in failed["error"]
    assert len(journal(project_dir)) == 1 and org.upload_count == 1
    org.api_usage = 0  # a new day
    again = run(project_dir, "s")
    assert again["status"] == "succeeded" and again["delivered"]["created"] == 40
    assert org.upload_count == 1 and org.job_count == 1  # not uploaded again
    assert again["report"]["bulk_jobs_resumed"] == 1 and again["report"]["bulk_uploads"] == 0
    assert len(by_ext(org)) == 40 and journal(project_dir) == []


def test_uploads_are_as_few_as_the_upload_limit_allows(project_dir: Path) -> None:
    limit = 6000  # base64 bytes an upload may carry, in this rehearsal
    org = SalesforceSandbox(client_id="tg", client_secret=ENV["SF_SECRET"],
                            max_upload_bytes=limit)
    sql(project_dir, "create table accts as select 'a-' || i as account_id, "
                     "'Acct \"' || repeat('x', i % 17) || '\", ' || i as name, "
                     "case when i % 5 = 0 then null else i / 4 end as aps from range(400) t(i)")
    with org:
        project(project_dir, {"crm": crm(org, bulk_threshold=100, bulk_upload_bytes=limit)},
                {"s": sync("accts", "upsert")})
        result = run(project_dir, "s")
        assert result["status"] == "succeeded" and len(by_ext(org)) == 400
        assert by_ext(org)["a-7"]["Name"] == 'Acct "xxxxxxx", 7'
        assert by_ext(org)["a-10"]["APS__c"] is None
    # The same CSV, written here another way: one quoted cell per value, #N/A for null.
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        rows = con.execute("select account_id, name, aps from accts order by account_id"
                           ).fetchall()
    head = len("External_Id__c,Name,APS__c\n")
    sizes = []
    for key, name, aps in rows:
        out = io.StringIO()
        cells = [key, name, "#N/A" if aps is None else f"{aps:g}"]
        csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(cells)
        sizes.append(len(out.getvalue().replace('"#N/A"', "#N/A").encode()))
    budget = bulk.raw_budget(limit) - head  # the docs' 50 % base64 growth
    fewest, room = 1, budget
    for size in sizes:  # greedy packing is the fewest uploads for records in order
        if size > room:
            fewest, room = fewest + 1, budget
        room -= size
    assert org.upload_count == fewest == result["report"]["bulk_uploads"] > 1
    assert org.upload_bytes == head * fewest + sum(sizes)
    assert all(u <= bulk.raw_budget(limit) for u in org.uploads)
    assert all(a + b - head > bulk.raw_budget(limit) for a, b in itertools.pairwise(
        org.uploads))  # no two neighbours would fit in one


def test_the_write_path_follows_what_the_run_sends(project_dir: Path,
                                                   org: SalesforceSandbox) -> None:
    sql(project_dir, "create table accts as select 'a-1' as account_id, 'A' as name, 1 as aps")
    project(project_dir, {"crm": crm(org, bulk_threshold=2000),
                          "hard": crm(org, hard_delete=True)},
            {"s": sync("accts", "mirror"), "h": sync("accts", "mirror", destination="hard")})
    with Project.load(project_dir, env=ENV) as p:
        small = p.destination("s", to_send={"upsert": 1500, "delete": 500})
        large = p.destination("s", to_send={"upsert": 1500, "delete": 501})
        assert not small.uses_bulk and large.uses_bulk  # type: ignore[attr-defined]
        assert small.limits().max_records == 200 and small.limits().max_bytes is None
        caps = large.limits()
        assert caps.max_records == bulk.MAX_RECORDS and caps.concurrency == 2
        assert caps.max_bytes == bulk.raw_budget() - len("External_Id__c,Name,APS__c\n")
        # hardDelete exists only in Bulk API: a run with deletes goes through it.
        assert p.destination("h", to_send={"upsert": 3, "delete": 1}).uses_bulk  # type: ignore[attr-defined]
        assert not p.destination("h", to_send={"upsert": 3}).uses_bulk  # type: ignore[attr-defined]


def test_hard_delete_without_the_permission_fails_the_run_with_the_fix(
    project_dir: Path,
) -> None:
    with SalesforceSandbox(client_id="tg", client_secret=ENV["SF_SECRET"]) as org:
        org.put("Account", {"Name": "Doomed", "External_Id__c": "a-1"})
        sql(project_dir, "create table purged as select 'a-1' as account_id")
        project(project_dir, {"crm": crm(org, hard_delete=True)},
                {"purge": sync("purged", "delete", fields=None)})
        result = run(project_dir, "purge")
        assert result["status"] == "failed"
        assert "Bulk API Hard Delete" in result["error"] and "hard_delete: false" in result["error"]
        assert len(org.records("Account")) == 1 and journal(project_dir) == []
