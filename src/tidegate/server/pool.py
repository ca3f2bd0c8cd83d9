"""The worker pool: runs execute here, never in a request.

Jobs wait in one queue, oldest first. A worker takes the oldest job whose sync
is not busy, so a sync runs once at a time and a second trigger of it waits
behind the first, while other syncs go ahead on the other workers. A job can
ask to be tried again later (its sync is running in another process); it
keeps its place at the head of its sync's line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("tidegate")


@dataclass
class Job:
    """One thing to do to a sync: start queued run ``run_id``, or deliver held run ``run_id``."""

    kind: Literal["run", "approve"]
    sync: str
    run_id: int
    full: bool = False
    force: bool = False
    not_before: float = field(default=0.0, compare=False)  # monotonic seconds


class Busy(Exception):
    """The sync is running or has runs waiting."""


# Runs a job; returns None when done, or seconds to wait before trying it again.
Execute = Callable[[Job], float | None]


class WorkerPool:
    def __init__(self, execute: Execute, workers: int = 2) -> None:
        self._execute = execute
        self._size = max(1, workers)
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._busy: dict[str, Job | None] = {}  # sync -> its job (None: held for a preview)
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        for i in range(self._size):
            thread = threading.Thread(target=self._work, name=f"tidegate-worker-{i + 1}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Start no more jobs; wait up to ``timeout`` s for the running ones to end.

        Jobs still waiting stay queued in the state store and start when a server
        starts again.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()

    def pending(self, sync: str) -> bool:
        """Whether ``sync`` has a job running or waiting."""
        with self._cond:
            return sync in self._busy or any(j.sync == sync for j in self._queue)

    def waiting(self) -> list[Job]:
        with self._cond:
            return list(self._queue)

    def running(self) -> list[Job]:
        with self._cond:
            return [j for j in self._busy.values() if j is not None]

    @contextmanager
    def hold(self, sync: str) -> Iterator[None]:
        """Keep ``sync``'s runs from starting while the block runs; Busy if one is pending."""
        with self._cond:
            if sync in self._busy or any(j.sync == sync for j in self._queue):
                raise Busy(sync)
            self._busy[sync] = None
        try:
            yield
        finally:
            with self._cond:
                self._busy.pop(sync, None)
                self._cond.notify_all()

    def _next(self) -> tuple[Job | None, float]:
        """The job to start now, or how long to wait before looking again."""
        now, wait, blocked = time.monotonic(), 3600.0, set(self._busy)
        for i, job in enumerate(self._queue):
            if job.sync in blocked:
                continue
            if job.not_before > now:
                wait = min(wait, job.not_before - now)
                blocked.add(job.sync)  # later jobs of this sync wait behind it
                continue
            return self._queue.pop(i), 0.0
        return None, wait

    def _work(self) -> None:
        while True:
            with self._cond:
                job, wait = None, 0.0
                while not self._stopping:
                    job, wait = self._next()
                    if job is not None:
                        break
                    self._cond.wait(wait)
                if job is None:
                    return
                self._busy[job.sync] = job
            retry: float | None = None
            try:
                retry = self._execute(job)
            except Exception:  # the executor records failures; this only keeps the worker alive
                log.exception("worker failed on run %s of sync %s", job.run_id, job.sync)
            finally:
                with self._cond:
                    self._busy.pop(job.sync, None)
                    if retry is not None:
                        job.not_before = time.monotonic() + retry
                        self._queue.insert(0, job)
                    self._cond.notify_all()
