"""The conformance kit over the HubSpot destination and the local portal.

The kit's items live in a custom object whose ``item_key`` property holds
unique values; every request the destination makes is checked against
HubSpot's OpenAPI documents by the portal, and so is every answer it gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from tidegate.destinations.hubspot.properties import MAX_TEXT
from tidegate.sandbox.hubspot import HubSpotSandbox, ObjectType, Property
from tidegate.testing.conformance import (
    ConformanceKit,
    InvalidValueScenarios,
    RejectionScenarios,
    TransientScenarios,
)

TOKEN = "pat-na1-kit"
KEY = "item_key"


def items_type(name: str) -> ObjectType:
    return ObjectType(name, f"2-{abs(hash(name)) % 10_000_000}", (
        Property("hs_object_id", "number", "number", read_only=True, group="system"),
        Property(KEY, "string", "text", unique=True),
        Property("name", "string", "text"),
        Property("score", "number", "number"),
        Property("active", "bool", "booleancheckbox"),
    ), singular=name.removeprefix("p_"))


class HubSpotUnderTest:
    modes = frozenset({"insert", "update", "upsert", "delete", "mirror"})

    def __init__(self, portal: HubSpotSandbox) -> None:
        self.portal = portal

    def settings(self) -> dict[str, Any]:
        return {"type": "hubspot", "base_url": self.portal.url, "token": TOKEN,
                "requests_per_second": 1000}

    def sync_options(self) -> dict[str, Any]:
        return {"match": {"source": "id", "destination": KEY}}

    def object_name(self, base: str) -> str:
        name = f"p_{base}"
        self.portal.add_object(items_type(name))
        return name

    def read_back(self, object_name: str) -> dict[str, dict[str, Any]]:
        return {json.dumps(int(r[KEY])): {"name": r["name"], "score": int(r["score"]),
                                          "active": r["active"] == "true"}
                for r in self.portal.records(object_name).values()}

    def row_count(self, object_name: str) -> int:
        return len(self.portal.records(object_name))

    def reject(self, keys: Iterable[int], error: str) -> None:
        self.portal.refuse(KEY, [str(k) for k in keys], error)

    def fail_next(self, n: int) -> None:
        self.portal.fail_next(n, 502)

    def unholdable(self) -> tuple[str, Any, str]:
        return "name", "x" * (MAX_TEXT + 1), f"name is longer than {MAX_TEXT:,} characters"


class TestHubSpotConformance(ConformanceKit, RejectionScenarios, TransientScenarios,
                             InvalidValueScenarios):
    @pytest.fixture
    def target(self) -> Iterator[HubSpotUnderTest]:
        with HubSpotSandbox(token=TOKEN, burst=100_000, check_responses=True) as portal:
            yield HubSpotUnderTest(portal)
            assert portal.response_violations == []
