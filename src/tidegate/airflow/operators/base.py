"""What tidegate's operators share: run one sync in the worker and turn its end into
the task's end.

A run that succeeded (or ended ``partial``, with rejected or invalid rows that the
next run retries) returns its summary (SPEC §4) as the task's XCom. A held run fails
the task (``SyncHeld``) or, with ``on_held="skip"``, skips it so that downstream tasks
do not act on data that was not sent; either way the guardrail's reasons are in the
task log. A failed run fails the task with the run's error (``SyncFailed``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from tidegate.airflow import lineage
from tidegate.airflow._sdk import AirflowSkipException, BaseOperator, Context
from tidegate.airflow.errors import SyncConfigError, SyncFailed, SyncHeld
from tidegate.errors import ConfigError, Problem
from tidegate.project import Project
from tidegate.redact import install_log_filter, redact

OnHeld = Literal["fail", "skip"]
_STEPS = 10  # progress lines per run


class LogReporter:
    """Progress as task log lines: the phases, then every tenth of the records sent."""

    def __init__(self, log: logging.Logger | Any, label: str) -> None:
        self.log, self.label = log, label
        self.total = self.done = self.next_at = 0

    def phase(self, text: str) -> None:
        self.log.info("%s: %s", self.label, text)

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.next_at = max(1, total // _STEPS)
        self.log.info("%s: sending %s record(s)", self.label, total)

    def advance(self, n: int) -> None:
        self.done += n
        if self.done >= self.next_at or self.done == self.total:
            self.log.info("%s: %s of %s record(s) acknowledged (%.0f %%)", self.label,
                          self.done, self.total, 100 * self.done / max(self.total, 1))
            self.next_at = self.done + max(1, self.total // _STEPS)

    def finish(self) -> None:
        pass


class TidegateRunOperator(BaseOperator):
    """Base of the operators that run a sync; subclasses say which project and sync.

    :param full: ignore state and send every row (``tidegate run --full``).
    :param force: skip the guardrails; the run records that it was forced.
    :param on_held: ``"fail"`` (the default) or ``"skip"`` when a guardrail holds the run.
    :param shard: with ``shards``, run only the keys of this shard (0 … shards-1); map
        it (``.partial(shards=4).expand(shard=[0, 1, 2, 3])``) to spread a sync over
        workers. The shards need a state store they share (PostgreSQL).
    :param shards: how many shards the sync is split into.
    """

    ui_color = "#d6f5f1"
    _lineage: lineage.Lineage | None = None
    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        full: bool = False,
        force: bool = False,
        on_held: OnHeld = "fail",
        shard: int | None = None,
        shards: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_held not in ("fail", "skip"):
            raise SyncConfigError(Problem(f"on_held is '{on_held}'", key="on_held",
                                          fix="use 'fail' or 'skip'"))
        self.full, self.force, self.on_held = full, force, on_held
        self.shard, self.shards = shard, shards

    def make_project(self, context: Context) -> tuple[Project, str]:
        """The project to run and the name of its sync."""
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        install_log_filter(logging.getLogger("tidegate"))
        project, name = self.make_project(context)
        label = name if self.shards is None else f"{name} (shard {self.shard}/{self.shards})"
        with project:
            try:
                self._lineage = lineage.describe(project, name)
            except Exception as exc:  # lineage is extra: it must never fail a run
                self.log.warning("no lineage for %s: %s", name, redact(str(exc)))
            self.log.info("running sync %s of project %s (state store %s)", label,
                          project.name, project.store.display_url)
            try:
                summary = project.run(name, full=self.full, force=self.force,
                                      reporter=LogReporter(self.log, label),
                                      shard=self.shard, shards=self.shards)
            except SyncConfigError:
                raise
            except ConfigError as exc:
                raise SyncConfigError(exc.problems) from None
        return self._outcome(context, label, summary)

    def _outcome(self, context: Context, label: str, summary: dict[str, Any]) -> dict[str, Any]:
        return conclude(self.log, self.on_held, context, label, summary)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The model's tables as inputs and the destination object as output."""
        return None if self._lineage is None else lineage.facets(self._lineage)


def conclude(log: Any, on_held: OnHeld, context: Context, label: str,
             summary: dict[str, Any]) -> dict[str, Any]:
    """End a task as its run ended: return the summary, skip, or raise with the reason."""
    status, run_id = summary["status"], summary["run_id"]
    log.info("run %s of sync %s: %s; planned %s; delivered %s; %s rejected; %.1f s",
             run_id, label, status, summary["planned"], summary["delivered"],
             summary["rejected"], summary["duration_s"])
    if status in ("succeeded", "partial"):
        if status == "partial":
            log.warning("run %s of sync %s: %s", run_id, label,
                        redact(summary.get("error") or f"{summary['rejected']} "
                               "record(s) rejected; the next run sends them again"))
        return summary
    context["ti"].xcom_push(key="summary", value=summary)
    if status == "held":
        for reason in (summary.get("verdict") or {}).get("reasons", []):
            log.warning("guardrail %s held the run: %s", reason.get("rule"),
                        redact(str(reason.get("message"))))
        message = redact(
            f"run {run_id} of sync {label} is {summary.get('error') or 'held'}; nothing "
            f"was sent. Release it with `tidegate approve {run_id}`, or run with "
            "force=True")
        if on_held == "skip":
            log.warning("%s", message)
            raise AirflowSkipException(message)
        raise SyncHeld(message, summary)
    raise SyncFailed(redact(f"run {run_id} of sync {label} failed: {summary.get('error')}"),
                     summary)
