"""The sObject Collections write path, against the sandbox org."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidegate.destinations.salesforce import collections
from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi
from tidegate.sandbox.salesforce import SalesforceSandbox


@pytest.fixture
def org() -> Iterator[tuple[SalesforceSandbox, SalesforceApi]]:
    with SalesforceSandbox(client_id="t", client_secret="s") as sandbox:
        api = SalesforceApi(sandbox.url, AuthConfig(client_id="t", client_secret="s"), "62.0",
                            root=Path("."))
        yield sandbox, api
        api.close()


def by_external_id(sandbox: SalesforceSandbox) -> dict[str, dict[str, object]]:
    return {str(r["External_Id__c"]): r for r in sandbox.records("Account").values()}


def test_every_verb_reports_each_record(org: tuple[SalesforceSandbox, SalesforceApi]) -> None:
    sandbox, api = org
    made = collections.write(api, "Account", "upsert", [
        {"External_Id__c": f"acc-{i}", "Name": f"Account {i}", "APS__c": i * 1.5,
         "Active__c": True} for i in range(250)  # two requests
    ], external_id="External_Id__c")
    assert made == [None] * 250
    stored = by_external_id(sandbox)
    assert len(stored) == 250 and stored["acc-7"]["APS__c"] == 10.5

    again = collections.write(api, "Account", "upsert", [
        {"External_Id__c": "acc-1", "APS__c": 99.5},
        {"External_Id__c": "acc-2", "Industry": "Crypto"},  # not in the restricted picklist
    ], external_id="External_Id__c")
    assert again[0] is None
    assert again[1] is not None and again[1].startswith("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
    assert by_external_id(sandbox)["acc-1"]["APS__c"] == 99.5

    ids = {ext: r["Id"] for ext, r in by_external_id(sandbox).items()}
    updated = collections.write(api, "Account", "update", [
        {"Id": ids["acc-3"], "Name": "Renamed"}, {"Id": "001000000000000AAA", "Name": "x"}])
    assert updated[0] is None and updated[1] is not None
    assert by_external_id(sandbox)["acc-3"]["Name"] == "Renamed"

    deleted = collections.write(api, "Account", "delete", [{"Id": ids["acc-4"]}])
    assert deleted == [None] and "acc-4" not in by_external_id(sandbox)

    inserted = collections.write(api, "Account", "insert", [{"Name": "New", "Active__c": False},
                                                            {"Active__c": False}])
    assert inserted[0] is None and inserted[1] is not None
    assert inserted[1].startswith("REQUIRED_FIELD_MISSING")


def test_a_locked_row_is_sent_again_until_it_is_free(
    org: tuple[SalesforceSandbox, SalesforceApi],
) -> None:
    sandbox, api = org
    naps: list[float] = []
    sandbox.lock_rows(["acc-1"], times=2)
    result = collections.write(api, "Account", "upsert", [
        {"External_Id__c": "acc-1", "Name": "One", "Active__c": True},
        {"External_Id__c": "acc-2", "Name": "Two", "Active__c": True}],
        external_id="External_Id__c", sleep=naps.append)
    assert result == [None, None] and len(naps) == 2
    sandbox.lock_rows(["acc-2"], times=10)
    stuck = collections.write(api, "Account", "upsert", [
        {"External_Id__c": "acc-2", "Name": "Two again", "Active__c": True}],
        external_id="External_Id__c", sleep=naps.append)
    assert stuck[0] is not None and stuck[0].startswith("UNABLE_TO_LOCK_ROW")
