"""What the server does, with no web framework in it.

``Service`` owns the loaded project, the worker pool and the scheduler. The
API, the compatible endpoints and the page call it; it calls ``Project``.
Every run a request asks for is recorded as ``queued`` first, so it has an id
to answer with and survives a restart; a worker then runs it. Each worker has
its own ``Project`` (its own state store connection); requests share one.

On start it marks the runs a killed server left ``running`` as interrupted
(state advanced only per acknowledged batch, so the next run sends the rest)
and queues again the runs that were waiting.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from tidegate import cron, runs
from tidegate.config import unknown
from tidegate.errors import ConfigError, TidegateError
from tidegate.project import Project
from tidegate.redact import redact
from tidegate.server.pool import Busy, Job, WorkerPool
from tidegate.server.scheduler import Clock, Scheduler, utcnow

log = logging.getLogger("tidegate")

RETRY_S = 2.0  # how often a queued run looks again when another process runs its sync


class ServiceError(Exception):
    """A request that cannot be done: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fix = fix


def _problem(exc: ConfigError) -> tuple[str, str | None]:
    first = exc.problems[0] if exc.problems else None
    if first is None:
        return redact(str(exc)), None
    return redact(first.message), redact(first.fix) if first.fix else None


class Service:
    def __init__(self, project: Project, *, workers: int = 2, schedule: bool = True,
                 clock: Clock = utcnow) -> None:
        self.project = project
        self.clock = clock
        self.ids = project.sync_ids()
        self.names = {i: n for n, i in self.ids.items()}
        self.pool = WorkerPool(self._execute, workers)
        self._local = threading.local()
        self._workers: list[Project] = []
        self._workers_lock = threading.Lock()
        self._approving: set[int] = set()
        self._queue_lock = threading.Lock()
        schedules = {n: s.schedule for n, s in project.syncs.items() if s.schedule}
        self.scheduler = (Scheduler(schedules, project.store, self.fire_scheduled, clock)
                          if schedule and schedules else None)

    # Lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        store = self.project.store
        for run_id in runs.recover(store):
            log.warning("run %s was interrupted when the server stopped; the next run of its "
                        "sync sends what it did not deliver", run_id)
        for record in runs.queued_runs(store):
            if record.sync in self.project.syncs:
                self.pool.submit(Job("run", record.sync, record.id, record.full, record.forced))
            else:
                runs.finish_run(store, record.id, "failed",
                                f"sync '{record.sync}' is no longer in the project", {})
        self.pool.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.pool.stop(timeout)
        with self._workers_lock:
            for project in self._workers:
                project.close()
            self._workers.clear()
        self.project.close()

    # Addressing ----------------------------------------------------------------

    def resolve(self, ref: str | int) -> str:
        """A sync's name from its name or its stable numeric id."""
        text = str(ref).strip()
        if text in self.project.syncs:
            return text
        if text.isdigit() and int(text) in self.names:
            return self.names[int(text)]
        problem = unknown("sync", text, list(self.project.syncs))
        raise ServiceError(404, problem.message, problem.fix)

    def record(self, run_id: int) -> runs.RunRecord:
        try:
            return runs.get_run(self.project.store, run_id)
        except KeyError:
            raise ServiceError(404, f"there is no run {run_id}",
                               "list runs with GET /api/runs") from None

    # Actions -------------------------------------------------------------------

    def trigger(self, ref: str | int, *, full: bool = False, force: bool = False,
                by: str = "api") -> runs.RunRecord:
        """Queue a run of the sync; a worker starts it when the sync is free."""
        name = self.resolve(ref)
        with self._queue_lock:  # runs of a sync start in the order of their ids
            run_id = self.project.enqueue(name, full=full, force=force, triggered_by=by)
            record = self.record(run_id)  # as queued: a worker may take it up at once
            self.pool.submit(Job("run", name, run_id, full, force))
        log.info("run %s of sync %s queued (%s)", run_id, name, by)
        return record

    def approve(self, run_id: int) -> runs.RunRecord:
        """Queue the delivery of held run ``run_id``."""
        record = self.record(run_id)
        if run_id in self._approving:
            raise ServiceError(409, f"run {run_id} is already approved and waiting to be sent")
        try:
            runs.check_approvable(self.project.store, run_id)
        except ConfigError as exc:
            raise ServiceError(409, *_problem(exc)) from None
        self._approving.add(run_id)
        self.pool.submit(Job("approve", record.sync, run_id))
        log.info("held run %s of sync %s approved; queued to be sent", run_id, record.sync)
        return record

    def fire_scheduled(self, name: str, tick: datetime) -> bool:
        if self.pool.pending(name):
            return False
        self.trigger(name, by=f"schedule {tick.isoformat()}")
        return True

    def plan(self, ref: str | int, *, full: bool = False) -> dict[str, Any]:
        """The plan of a sync now; refused while it runs or has runs waiting."""
        name = self.resolve(ref)
        try:
            with self.pool.hold(name):
                return self._worker_project().plan(name, full=full)
        except Busy:
            raise ServiceError(409, f"sync '{name}' is running or has runs waiting",
                               "preview it when they have finished") from None
        except ConfigError as exc:
            raise ServiceError(422, *_problem(exc)) from None
        except TidegateError as exc:
            raise ServiceError(502, redact(str(exc))) from None

    # Reads ---------------------------------------------------------------------

    def approving(self, run_id: int) -> bool:
        return run_id in self._approving

    def runs(self, ref: str | int | None = None, limit: int = 20) -> list[runs.RunRecord]:
        name = self.resolve(ref) if ref is not None else None
        return runs.list_runs(self.project.store, name, limit)

    def detail(self, run_id: int) -> dict[str, Any]:
        """One run as ``tidegate show`` gives it, without its rows (see ``rows``)."""
        record = self.record(run_id)
        out = self.project.show(run_id)
        out.pop("rows", None)
        out.update(sync_id=self.ids.get(record.sync),
                   queued_at=record.queued_at.isoformat() if record.queued_at else None,
                   triggered_by=record.triggered_by, approving=self.approving(run_id))
        return out

    def rows(self, run_id: int, *, limit: int, offset: int) -> list[dict[str, Any]]:
        self.record(run_id)
        return runs.row_errors(self.project.store, run_id, limit=limit, offset=offset)

    def next_run(self, name: str) -> datetime | None:
        schedule = self.project.syncs[name].schedule
        if not schedule:
            return None
        if self.scheduler is not None:
            return self.scheduler.next_run(name)
        return cron.next_after(schedule, self.clock())

    def syncs(self) -> list[dict[str, Any]]:
        out = []
        for name, sync in sorted(self.project.syncs.items()):
            latest = runs.list_runs(self.project.store, name, 1)
            upcoming = self.next_run(name)
            out.append({
                "id": self.ids[name],
                "name": name,
                "source": sync.source,
                "destination": sync.destination,
                "object": sync.object,
                "mode": sync.mode,
                "schedule": sync.schedule,
                "schedule_text": cron.describe(sync.schedule) + " (UTC)" if sync.schedule
                else None,
                "next_run_at": upcoming.isoformat() if upcoming else None,
                "scheduled": self.scheduler is not None and sync.schedule is not None,
                "busy": self.pool.pending(name),
                "last_run": summary(latest[0]) if latest else None,
            })
        return out

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "project": self.project.name,
            "syncs": len(self.project.syncs),
            "running": len(self.pool.running()),
            "queued": len(self.pool.waiting()),
            "scheduler": self.scheduler is not None,
            "time": datetime.now(UTC).isoformat(),
        }

    # Workers -------------------------------------------------------------------

    def _worker_project(self) -> Project:
        project: Project | None = getattr(self._local, "project", None)
        if project is None:
            project = Project(self.project.config)
            project.retry = self.project.retry
            self._local.project = project
            with self._workers_lock:
                self._workers.append(project)
        return project

    def _execute(self, job: Job) -> float | None:
        project = self._worker_project()
        try:
            if job.kind == "approve":
                project.approve(job.run_id)
            else:
                project.run(job.sync, full=job.full, force=job.force, queued=job.run_id)
        except runs.AlreadyRunning as exc:
            log.info("run %s waits: %s", job.run_id, redact(str(exc)))
            return RETRY_S
        except TidegateError as exc:  # the run record holds the reason already
            log.warning("run %s of sync %s: %s", job.run_id, job.sync, redact(str(exc)))
            self._fail_if_queued(project, job.run_id, redact(str(exc)))
        except Exception as exc:  # a bug: the run must not stay queued for ever
            log.exception("run %s of sync %s failed unexpectedly", job.run_id, job.sync)
            self._fail_if_queued(project, job.run_id,
                                 redact(f"unexpected {type(exc).__name__}: {exc}"))
        finally:
            if job.kind == "approve":
                self._approving.discard(job.run_id)
        return None

    @staticmethod
    def _fail_if_queued(project: Project, run_id: int, error: str) -> None:
        if runs.get_run(project.store, run_id).status == "queued":
            runs.finish_run(project.store, run_id, "failed", error, {})


def summary(record: runs.RunRecord) -> dict[str, Any]:
    """The ``--json`` run summary plus when it was queued, started and finished."""
    out = record.summary()
    if record.status == "queued":
        out["duration_s"] = 0.0
    out.update(
        mode=record.mode,
        full=record.full,
        queued_at=record.queued_at.isoformat() if record.queued_at else None,
        started_at=record.started_at.isoformat() if record.status != "queued" else None,
        finished_at=record.finished_at.isoformat() if record.finished_at else None,
        triggered_by=record.triggered_by,
    )
    return out
