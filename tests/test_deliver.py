"""Delivery: the token bucket, retries with backoff and Retry-After, bounded concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pytest

from tidegate.deliver import Deliverer, RetryPolicy, TokenBucket
from tidegate.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    SyncTarget,
)
from tidegate.errors import DestinationError, RetryableError
from tidegate.plan import Outgoing


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_token_bucket_never_exceeds_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(20):
        bucket.acquire()
        stamps.append(clock.now)
    # In any one-second window there are at most 5 requests.
    for i, start in enumerate(stamps):
        assert len([s for s in stamps[i:] if s < start + 1.0 - 1e-9]) <= 5
    assert stamps[-1] == pytest.approx(19 / 5)


def test_token_bucket_allows_a_burst_when_asked() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, burst=10, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        bucket.acquire()
    assert clock.now == 0.0
    bucket.acquire()
    assert clock.now == pytest.approx(0.1)


class Scripted(Destination):
    """Fails as told, records what it saw and how many writes ran at once."""

    kind = "scripted"
    config_model = DestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(modes=frozenset({"upsert"}))

    def __init__(self, failures: list[Exception | None], delay: float = 0.0) -> None:
        super().__init__("x", None, SyncTarget("s", "o", "upsert", (), (), Path(".")))
        self.failures = list(failures)
        self.delay = delay
        self.calls = 0
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def write(self, batch: Batch) -> BatchResult:
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            failure = self.failures.pop(0) if self.failures else None
        try:
            time.sleep(self.delay)
            if failure is not None:
                raise failure
            return BatchResult(rejected={batch.keys[0]: "nope"} if batch.keys[0] == '"bad"' else {})
        finally:
            with self.lock:
                self.active -= 1


def outgoing(key: str) -> Outgoing:
    batch = Batch(id=key, operation="upsert", key_text=pa.array([key]),
                  table=pa.table({"id": [key]}), fields=pa.array(["{}"]))
    meta = pa.table({"__key": [key], "__hash": [1], "__cat": ["added"], "__fields": ["{}"]})
    return Outgoing(batch=batch, meta=meta)


def test_retries_honour_retry_after_and_back_off() -> None:
    clock = FakeClock()
    dest = Scripted([RetryableError("busy", retry_after=7.0), RetryableError("busy"), None])
    results = []
    Deliverer(dest, concurrency=1, rate=None, sleep=clock.sleep, seed=1).run(
        [outgoing('"a"')], lambda settled: results.extend(res for _, res in settled))
    assert dest.calls == 3
    assert clock.sleeps[0] >= 7.0  # never sooner than the server asked
    assert 0 <= clock.sleeps[1] <= RetryPolicy().base_delay * 2
    assert results == [BatchResult()]


def test_a_destination_that_stays_down_fails_with_a_clear_message() -> None:
    clock = FakeClock()
    dest = Scripted([RetryableError("HTTP 503")] * 10)
    with pytest.raises(DestinationError) as info:
        Deliverer(dest, concurrency=1, rate=None, sleep=clock.sleep).run(
            [outgoing('"a"')], lambda settled: None)
    assert dest.calls == RetryPolicy().max_attempts
    assert "5 attempt(s)" in str(info.value) and "HTTP 503" in str(info.value)
    assert "next run sends" in str(info.value)


def test_a_retry_after_longer_than_allowed_fails_at_once() -> None:
    dest = Scripted([RetryableError("slow down", retry_after=3600)])
    with pytest.raises(DestinationError):
        Deliverer(dest, concurrency=1, rate=None, sleep=lambda s: None).run(
            [outgoing('"a"')], lambda settled: None)
    assert dest.calls == 1


def test_concurrency_is_bounded_and_every_result_is_reported_once() -> None:
    dest = Scripted([], delay=0.02)
    seen: list[str] = []
    keys = [f'"k{i}"' for i in range(12)] + ['"bad"']
    Deliverer(dest, concurrency=3, rate=None).run(
        (outgoing(k) for k in keys),
        lambda settled: seen.extend(out.batch.keys[0] for out, _ in settled))
    assert sorted(seen) == sorted(keys)
    assert dest.peak == 3


def test_the_first_fatal_error_stops_new_batches_but_settles_those_in_flight() -> None:
    dest = Scripted([DestinationError("auth refused")], delay=0.01)
    seen: list[str] = []
    with pytest.raises(DestinationError, match="auth refused"):
        Deliverer(dest, concurrency=2, rate=None).run(
            (outgoing(f'"k{i}"') for i in range(50)),
            lambda settled: seen.extend("x" for _ in settled))
    assert dest.calls < 50


def big_outgoing(n: int, rows: int) -> Outgoing:
    keys = [f'"b{n}-{i}"' for i in range(rows)]
    batch = Batch(id=f"b{n}", operation="upsert", key_text=pa.array(keys),
                  table=pa.table({"id": keys}), fields=pa.array(["{}"] * rows))
    meta = pa.table({"__key": keys, "__hash": [1] * rows, "__cat": ["added"] * rows,
                     "__fields": ["{}"] * rows})
    return Outgoing(batch=batch, meta=meta)


def test_a_slow_commit_takes_what_settled_meanwhile_within_a_bound() -> None:
    """While one commit writes, acknowledged batches wait for the next one — all of them in
    one call. Past the bound no new batch is cut, so a commit never holds more than the
    bound plus the batches that were in flight: memory stays bounded however slow commits
    are."""
    from tidegate.deliver import _WAITING_ROWS

    rows = _WAITING_ROWS // 4
    dest = Scripted([])
    calls: list[int] = []

    def batches() -> object:
        for n in range(40):
            yield big_outgoing(n, rows)

    def commit(settled: list[tuple[Outgoing, BatchResult]]) -> None:
        calls.append(sum(len(out.batch) for out, _ in settled))
        time.sleep(0.05)  # a commit far slower than the sends

    Deliverer(dest, concurrency=4, rate=None).run(batches(), commit)  # type: ignore[arg-type]
    assert sum(calls) == 40 * rows
    assert max(calls) > rows  # batches acknowledged meanwhile share a commit
    assert max(calls) <= _WAITING_ROWS + (4 + 1) * rows  # in flight: concurrency + 1
    assert len(calls) < 40
