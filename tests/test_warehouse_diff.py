"""``diff: warehouse`` passes the conformance kit on DuckDB: every mode, bad keys, crash."""

from __future__ import annotations

from typing import Any

import pytest

from test_conformance_webhook import WebhookUnderTest
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.testing.conformance import ConformanceKit, RejectionScenarios, TransientScenarios


class WarehouseDiffWebhook(WebhookUnderTest):
    def sync_options(self) -> dict[str, Any]:
        return {"diff": "warehouse"}


class TestDuckDBWarehouseDiff(ConformanceKit, RejectionScenarios, TransientScenarios):
    @pytest.fixture
    def target(self, receiver: WebhookReceiver) -> WarehouseDiffWebhook:
        return WarehouseDiffWebhook(receiver)
