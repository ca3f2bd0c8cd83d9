"""The conformance kit over the webhook destination and its sandbox receiver."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from conftest import SECRET
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.testing.conformance import ConformanceKit, RejectionScenarios, TransientScenarios


class WebhookUnderTest:
    modes = frozenset({"insert", "update", "upsert", "delete", "mirror"})

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver

    def settings(self) -> dict[str, Any]:
        return {"type": "webhook", "url": self.receiver.url, "secret": SECRET}

    def object_name(self, base: str) -> str:
        return base

    def read_back(self, object_name: str) -> dict[str, dict[str, Any]]:
        return self.receiver.records(object_name)

    def row_count(self, object_name: str) -> int:
        return len(self.receiver.records(object_name))

    def reject(self, keys: Iterable[int], error: str) -> None:
        self.receiver.reject_keys(list(keys), error)

    def fail_next(self, n: int) -> None:
        self.receiver.fail_next(n, status=503, retry_after=0)


class TestWebhookConformance(ConformanceKit, RejectionScenarios, TransientScenarios):
    @pytest.fixture
    def target(self, receiver: WebhookReceiver) -> WebhookUnderTest:
        return WebhookUnderTest(receiver)
