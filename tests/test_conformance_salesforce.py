"""The conformance kit over the Salesforce destination and the sandbox org, on both write
paths: sObject Collections, and Bulk API 2.0 (a target whose every run is over the threshold)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tidegate.sandbox.salesforce import Field, SalesforceSandbox, SObject
from tidegate.testing.conformance import ConformanceKit, InvalidValueScenarios, TransientScenarios

KEY = "Item_Key__c"


class SalesforceUnderTest:
    modes = frozenset({"insert", "update", "upsert", "delete", "mirror"})

    def __init__(self, org: SalesforceSandbox, **extra: Any) -> None:
        self.org = org
        self.extra = extra

    def settings(self) -> dict[str, Any]:
        return {"type": "salesforce", "login_url": self.org.url,
                "auth": {"client_id": "kit", "client_secret": "kit-secret"}, **self.extra}

    def sync_options(self) -> dict[str, Any]:
        return {"match": {"source": "id", "destination": KEY}}

    def object_name(self, base: str) -> str:
        name = f"{base}__c"
        self.org.add_object(SObject(name, "a01", (
            Field("Id", "id", createable=False, updateable=False, nillable=False, length=18),
            Field(KEY, "string", length=40, external_id=True, unique=True),
            Field("name", "string", length=255),
            Field("score", "int", precision=9),
            Field("active", "boolean", nillable=False),
        )))
        return name

    def read_back(self, object_name: str) -> dict[str, dict[str, Any]]:
        return {json.dumps(int(r[KEY])): {"name": r["name"], "score": r["score"],
                                          "active": r["active"]}
                for r in self.org.records(object_name).values()}

    def row_count(self, object_name: str) -> int:
        return len(self.org.records(object_name))

    def fail_next(self, n: int) -> None:
        self.org.fail_next(n, 503)

    def unholdable(self) -> tuple[str, Any, str]:
        return "name", "x" * 256, "name is longer than 255 characters"


class TestSalesforceConformance(ConformanceKit, TransientScenarios, InvalidValueScenarios):
    @pytest.fixture
    def target(self) -> Iterator[SalesforceUnderTest]:
        with SalesforceSandbox(client_id="kit", client_secret="kit-secret") as org:
            yield SalesforceUnderTest(org)


class TestSalesforceBulkConformance(ConformanceKit, TransientScenarios,
                                    InvalidValueScenarios):
    @pytest.fixture
    def target(self) -> Iterator[SalesforceUnderTest]:
        with SalesforceSandbox(client_id="kit", client_secret="kit-secret") as org:
            yield SalesforceUnderTest(org, bulk_threshold=0, bulk_poll_interval_s=0.005)
            assert org.job_count > 0, "every run went through Bulk API 2.0"
