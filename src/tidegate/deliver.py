"""Delivery: send batches with bounded concurrency, a token-bucket rate limit and retries.

Batches are written by a pool of worker threads, at most ``concurrency`` at a
time; each request first takes a token from the bucket, so the destination's
declared rate is never exceeded. A ``RetryableError`` is retried with
exponential backoff and full jitter, never sooner than the server's
``Retry-After``. Results are handed back in the caller's thread (``on_result``),
where state is committed, one batch at a time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tidegate.destinations.base import BatchResult, Destination
from tidegate.errors import DestinationError, FatalError, RetryableError
from tidegate.plan import Outgoing
from tidegate.redact import redact

Sleep = Callable[[float], None]
_WAITING_ROWS = 20_000  # records acknowledged and not yet committed, at most (about)


class TokenBucket:
    """``rate`` requests per second on average, at most ``burst`` at once."""

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.rate = rate
        # Evenly spaced by default: no window of any length ever exceeds the rate.
        self.capacity = float(burst if burst is not None else 1)
        self.tokens = self.capacity
        self.clock, self.sleep = clock, sleep
        self.updated = clock()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                current = self.clock()
                self.tokens = min(
                    self.capacity, self.tokens + (current - self.updated) * self.rate
                )
                self.updated = current
                if self.tokens >= 1 - 1e-9:  # float error must not spin forever
                    self.tokens -= 1
                    return
                wait_s = (1 - self.tokens) / self.rate
            self.sleep(wait_s)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 30.0
    max_retry_after: float = 300.0  # a longer wait than this fails the run instead

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)


class Deliverer:
    """Sends outgoing batches to one destination and reports each batch's result."""

    def __init__(
        self,
        destination: Destination,
        *,
        concurrency: int,
        rate: float | None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
        seed: int | None = None,
    ) -> None:
        self.destination = destination
        self.concurrency = max(1, concurrency)
        self.bucket = TokenBucket(rate, sleep=sleep) if rate else None
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.rng = random.Random(seed)
        self.stop = threading.Event()

    def run(
        self,
        batches: Iterable[Outgoing],
        on_results: Callable[[list[tuple[Outgoing, BatchResult]]], None],
    ) -> None:
        """Deliver every batch; raise the first fatal error after in-flight ones settle.

        One batch more than ``concurrency`` is prepared ahead, so a sender
        never waits for the next batch to be cut. ``on_results`` runs on a
        thread of its own, one call at a time and in order, so cutting and
        sending go on while a commit writes; each call gets every batch that
        settled while the previous one ran, so a commit's fixed cost is paid
        once for as many batches as the destination acknowledged meanwhile.
        """
        failure: BaseException | None = None
        ahead = self.concurrency + 1
        # Settled batches wait in memory for their commit; past this many (or this
        # many records, for large batches), no new batch is cut until the commit in
        # flight is done.
        most_waiting = 8 * ahead
        with ThreadPoolExecutor(1, thread_name_prefix="tidegate-commit") as committer, \
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="tidegate-send") as pool:
            pending: dict[Future[BatchResult], Outgoing] = {}
            settled: list[tuple[Outgoing, BatchResult]] = []
            commit: Future[None] | None = None
            source: Iterator[Outgoing] = iter(batches)
            exhausted = False
            waiting_rows = 0
            while True:
                while (not exhausted and failure is None and len(pending) < ahead
                       and len(settled) < most_waiting and waiting_rows < _WAITING_ROWS):
                    out = next(source, None)
                    if out is None:
                        exhausted = True
                        break
                    pending[pool.submit(self._send, out)] = out
                if commit is None and settled:
                    commit = committer.submit(on_results, settled)
                    settled, waiting_rows = [], 0
                if not pending and commit is None:
                    break
                waiting: list[Future[Any]] = [*pending, *([commit] if commit else [])]
                done, _ = wait(waiting, return_when=FIRST_COMPLETED)
                for future in done:
                    if future is commit:
                        commit = None
                        try:
                            future.result()
                        except BaseException as exc:  # a failed commit stops the run
                            failure = failure or exc
                            self.stop.set()
                        continue
                    out = pending.pop(future)
                    try:
                        settled.append((out, future.result()))
                        waiting_rows += len(out.batch)
                    except BaseException as exc:
                        failure = failure or exc
                        self.stop.set()
                if failure is not None:
                    exhausted = True
        if failure is not None:
            raise failure

    def _send(self, out: Outgoing) -> BatchResult:
        attempt = 0
        while True:
            attempt += 1
            if self.stop.is_set():
                raise FatalError("stopped after another batch failed")
            if self.bucket is not None:
                self.bucket.acquire()
            try:
                return self.destination.write(out.batch)
            except RetryableError as exc:
                retry_after = exc.retry_after
                if attempt >= self.retry.max_attempts or (
                    retry_after is not None and retry_after > self.retry.max_retry_after
                ):
                    raise DestinationError(
                        f"{self.destination.describe()} did not accept a batch after "
                        f"{attempt} attempt(s): {redact(str(exc))}. Check that it is up; "
                        "the next run sends everything not yet acknowledged"
                    ) from exc
                self.sleep(self.retry.delay(attempt, retry_after, self.rng))
