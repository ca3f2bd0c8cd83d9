"""The conformance kit over the Iterable destination: membership of a static list.

The kit's rows are list members identified by userId, their mapped fields the
users' dataFields; mirror keeps the list equal to the model (SPEC §3).

The kit's ``InvalidValueScenarios`` is not taken: its model (integer ids as
userIds, then text, an integer and a boolean) holds nothing an Iterable project
is certain to refuse — the project fixes each field's type by the kit's own
first values, and Iterable limits no text or number a field of those types
takes. tests/test_iterable.py shows the rows Iterable would refuse (a blank
userId, text that cannot be an email, NaN, a value a field's type cannot take)
invalid in the plan, never sent, not retried, and sent once fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from tidegate.sandbox.iterable import IterableSandbox
from tidegate.testing.conformance import ConformanceKit, RejectionScenarios, TransientScenarios

KEY = "kit-api-key"


class IterableUnderTest:
    modes = frozenset({"insert", "update", "upsert", "delete", "mirror"})

    def __init__(self, project: IterableSandbox) -> None:
        self.project = project
        self.list_id = 0

    def settings(self) -> dict[str, Any]:
        return {"type": "iterable", "base_url": self.project.url, "api_key": KEY,
                "requests_per_second": 1000}

    def sync_options(self) -> dict[str, Any]:
        return {"match": {"source": "id", "destination": "userId"}}

    def object_name(self, base: str) -> str:
        self.list_id += 1
        self.project.add_list(self.list_id, base)
        return f"list:{self.list_id}"

    def read_back(self, object_name: str) -> dict[str, dict[str, Any]]:
        list_id = int(object_name.removeprefix("list:"))
        return {json.dumps(int(uid)): {k: data[k] for k in ("name", "score", "active")}
                for uid, data in self.project.members(list_id).items()}

    def row_count(self, object_name: str) -> int:
        return len(self.project.members(int(object_name.removeprefix("list:"))))

    def reject(self, keys: Iterable[int], error: str) -> str:
        self.project.forget(str(k) for k in keys)
        return "forgotten (GDPR)"

    def fail_next(self, n: int) -> None:
        self.project.fail_next(n, 503)


class TestIterableListConformance(ConformanceKit, RejectionScenarios, TransientScenarios):
    @pytest.fixture
    def target(self) -> Iterator[IterableUnderTest]:
        with IterableSandbox(api_key=KEY, lists={}) as project:
            yield IterableUnderTest(project)
