"""How a batch's recorded Bulk job is carried on, from each state a crash can leave it in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tidegate.destinations.salesforce import bulk, csvdata
from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi
from tidegate.journal import Journal
from tidegate.sandbox.salesforce import SalesforceSandbox
from tidegate.store import Store

NAME = "bulk:msg_test"


@pytest.fixture
def org(tmp_path: Path) -> Iterator[tuple[SalesforceSandbox, bulk.BulkWriter, Journal]]:
    store = Store("sqlite:///state.db", tmp_path)
    store.migrate()
    with SalesforceSandbox(client_id="t", client_secret="s") as sandbox:
        api = SalesforceApi(sandbox.url, AuthConfig(client_id="t", client_secret="s"), "62.0",
                            root=tmp_path)
        journal = Journal(store, "s")
        yield sandbox, bulk.BulkWriter(api, "Account", journal, budget=bulk.raw_budget(),
                                       poll_interval=0.001), journal
        api.close()
    store.close()


def upload(n: int = 5) -> bulk.Upload:
    columns = {"External_Id__c": pa.array([f"k{i}" for i in range(n)]),
               "Name": pa.array([f"N{i}" for i in range(n)])}
    return bulk.Upload("upsert", "External_Id__c", csvdata.header(list(columns)),
                       csvdata.lines(columns), columns["External_Id__c"],
                       external_id="External_Id__c")


def job(writer: bulk.BulkWriter, data: bytes | None, state: str | None) -> str:
    info = writer._create(upload())
    if data is not None:
        writer._upload(info, data)
    if state is not None:
        writer.set_state(str(info["id"]), state)
    return str(info["id"])


def record(journal: Journal, job_id: str, uploaded: bool) -> None:
    journal.put(NAME, json.dumps({"jobs": {"0.0": {"id": job_id, "uploaded": uploaded}}}))


def written(sandbox: SalesforceSandbox) -> dict[str, Any]:
    return {r["External_Id__c"]: r["Name"] for r in sandbox.records("Account").values()}


def test_an_open_job_whose_upload_went_in_is_closed_not_uploaded_again(
    org: tuple[SalesforceSandbox, bulk.BulkWriter, Journal],
) -> None:
    sandbox, writer, journal = org
    the_job = job(writer, csvdata.body(upload().head, upload().lines), None)
    record(journal, the_job, uploaded=True)
    assert writer.write(NAME, upload()) == [None] * 5
    assert sandbox.upload_count == 1 and sandbox.job_count == 1 and len(written(sandbox)) == 5
    assert writer.stats.resumed == 1 and writer.stats.uploads == 0


@pytest.mark.parametrize("left", ["open, upload unknown", "aborted here", "gone"])
def test_a_job_that_cannot_be_trusted_is_replaced(
    org: tuple[SalesforceSandbox, bulk.BulkWriter, Journal], left: str,
) -> None:
    sandbox, writer, journal = org
    the_job = job(writer, b"External_Id__c,Name\nk0,Half\n", "Aborted" if left == "aborted here"
                  else None)
    record(journal, "750TG0000009999AAA" if left == "gone" else the_job, uploaded=False)
    assert writer.write(NAME, upload()) == [None] * 5
    assert written(sandbox) == {f"k{i}": f"N{i}" for i in range(5)}
    if left != "gone":
        assert sandbox.job(the_job)["state"] == "Aborted"  # its part was never processed
    assert writer.stats.uploads == 1 and writer.stats.resumed == 0
    assert json.loads(journal.get(NAME) or "{}")["jobs"]["0.0"]["id"] != the_job


def test_a_finished_jobs_results_are_read_and_a_failed_one_is_forgotten(
    org: tuple[SalesforceSandbox, bulk.BulkWriter, Journal],
) -> None:
    sandbox, writer, journal = org
    done = job(writer, csvdata.body(upload().head, upload().lines), "UploadComplete")
    record(journal, done, uploaded=True)
    assert writer.write(NAME, upload()) == [None] * 5 and sandbox.upload_count == 1
    broken = job(writer, b"External_Id__c,Nope__c\nk0,x\n", "UploadComplete")
    record(journal, broken, uploaded=True)
    with pytest.raises(bulk.JobFailed, match="Field name not found : Nope__c"):
        writer.write(NAME, upload())
    assert journal.get(NAME) is None  # the next attempt makes a new job
