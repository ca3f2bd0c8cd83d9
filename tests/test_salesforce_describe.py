"""Describe-based checks and value conversion, against the sandbox org's real describe."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi
from tidegate.destinations.salesforce.describe import Describe, convert, fetch, screen
from tidegate.errors import DestinationError
from tidegate.sandbox.salesforce import SalesforceSandbox


@pytest.fixture(scope="module")
def account() -> Iterator[Describe]:
    with SalesforceSandbox(client_id="t", client_secret="s") as org:
        api = SalesforceApi(org.url, AuthConfig(client_id="t", client_secret="s"), "62.0",
                            root=Path("."))
        yield fetch(api, "Account")
        with pytest.raises(DestinationError, match="no object Acount"):
            fetch(api, "Acount")
        api.close()


def test_a_mapping_to_unknown_or_read_only_fields_is_named(account: Describe) -> None:
    assert account.problems(["Name", "APS__c"], "upsert", "External_Id__c") == []
    problems = account.problems(["aps__c", "Nmae", "LastModifiedDate"], "update", "Id")
    assert problems == [
        "Account has no field aps__c (did you mean APS__c?)",
        "Account has no field Nmae",
        "Account.LastModifiedDate cannot be updated (it is read-only)",
    ]
    assert account.problems(["Name"], "upsert", "Name") == [
        "Account.Name is not an external id field, so records cannot be upserted on it"]
    assert account.problems(["Id"], "insert") == [
        "Account.Id cannot be set on create (it is read-only)"]


def test_values_become_salesforce_text_and_bad_ones_get_a_reason(account: Describe) -> None:
    f = account.fields
    text, why = convert(pa.array([12.346, 999.994, 1000.0, None]), f["APS__c"])
    assert text.to_pylist() == ["12.35", "999.99", None, None]
    assert why.to_pylist() == [None, None, "APS__c does not fit 5 digits with 2 after the point",
                               None]
    text, why = convert(pa.array(["Banking", "Crypto", None]), f["Industry"])
    assert text.to_pylist() == ["Banking", None, None]
    assert why.to_pylist() == [None, "Industry is not one of its picklist values", None]
    text, _ = convert(pa.array([True, False, None]), f["Active__c"])
    assert text.to_pylist() == ["true", "false", None]
    text, _ = convert(pa.array([dt.date(2024, 2, 29)]), f["Customer_Since__c"])
    assert text.to_pylist() == ["2024-02-29"]
    text, _ = convert(pa.array([dt.datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("us")),
                      f["LastModifiedDate"])
    assert text.to_pylist() == ["2024-01-02T03:04:05.000Z"]
    text, _ = convert(pa.array([1_000_000, 7], pa.int64()), f["AnnualRevenue"])
    assert text.to_pylist() == ["1000000", "7"]
    text, why = convert(pa.array(["x" * 256, "ok"]), f["Name"])
    assert why.to_pylist() == ["Name is longer than 255 characters", None]


def test_values_that_cannot_become_the_field_type_get_a_reason_instead_of_an_error(
    account: Describe,
) -> None:
    f = account.fields
    text, why = convert(pa.array(["12.5", " 7 ", "twelve", None, "nan"]), f["APS__c"])
    assert text.to_pylist() == ["12.5", "7", None, None, None]
    assert why.to_pylist() == [None, None, "APS__c is not a number", None,
                               "APS__c is not a number"]
    _, why = convert(pa.array([float("inf"), 1.0]), f["APS__c"])
    assert why.to_pylist() == ["APS__c is not a finite number", None]
    text, why = convert(pa.array(["TRUE", "0", "maybe", None]), f["Active__c"])
    assert text.to_pylist() == ["true", "false", None, None]
    assert why.to_pylist() == [None, None, "Active__c is not true or false", None]
    text, why = convert(pa.array(["2024-02-29", "2023-02-29", "soon"]), f["Customer_Since__c"])
    assert text.to_pylist() == ["2024-02-29", None, None]
    assert why.to_pylist() == [None] + ["Customer_Since__c is not a date (YYYY-MM-DD)"] * 2
    _, why = convert(pa.array(["2024-01-02T03:04:05Z", "yesterday"]), f["LastModifiedDate"])
    assert why.to_pylist() == [None, "LastModifiedDate is not an ISO 8601 date and time"]
    _, why = convert(pa.array([[1], None]), f["APS__c"])
    assert why.to_pylist() == ["APS__c cannot hold a list<item: int64> value", None]
    # Very large numbers are written out in full: a CSV number cell takes no exponent.
    text, _ = convert(pa.array([1e17]), f["AnnualRevenue"])
    assert text.to_pylist() == ["100000000000000000"]


def test_screen_names_the_first_reason_per_row_and_empty_required_values(
    account: Describe,
) -> None:
    table = pa.table({"Name": ["ok", "", None, "fine"], "APS__c": [1.0, 2.0, 3.0, 5000.0],
                      "External_Id__c": ["a", "b", "c", "d"]})
    assert screen(table, account).to_pylist() == [
        None, "Name is required and the value is empty",
        "Name is required and the value is empty",
        "APS__c does not fit 5 digits with 2 after the point"]
    assert screen(table, account, frozenset({"External_Id__c"})).to_pylist() == [None] * 4
