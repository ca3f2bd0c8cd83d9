"""``TidegateTriggerSyncOperator``: start a sync on a ``tidegate serve`` from a task.

The run executes on the server, not in the worker. With ``wait_for_completion``
the task waits for it (deferred to the triggerer with ``deferrable=True``) and
ends as the run ended, like ``TidegateSyncOperator``; without, it returns the
queued run's summary at once, for a ``TidegateSyncSensor`` to wait on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from tidegate.airflow._sdk import BaseOperator, Context
from tidegate.airflow.errors import SyncConfigError, SyncFailed
from tidegate.airflow.hooks.server import TidegateServerHook, run_summary
from tidegate.airflow.operators.base import OnHeld, conclude
from tidegate.airflow.triggers.server import TidegateRunTrigger, finished
from tidegate.errors import Problem, RetryableError

__all__ = ["TidegateTriggerSyncOperator", "complete"]


def complete(task: Any, context: Context, event: dict[str, Any] | None) -> dict[str, Any]:
    """End a task from its trigger's event, as the run ended."""
    if not event or event.get("status") != "done":
        message = (event or {}).get("message") or "the trigger ended without an event"
        raise SyncFailed(f"waiting for the tidegate run failed: {message}", {})
    summary = run_summary(event["run"])
    return conclude(task.log, task.on_held, context, summary["sync"], summary)


def _check_on_held(on_held: str) -> None:
    if on_held not in ("fail", "skip"):
        raise SyncConfigError(Problem(f"on_held is '{on_held}'", key="on_held",
                                      fix="use 'fail' or 'skip'"))


class TidegateTriggerSyncOperator(BaseOperator):
    """Queue a run of ``sync`` on a tidegate server; return its summary as XCom.

    :param sync: the sync's name or stable numeric id.
    :param server_conn_id: the server's connection (URL in host, token in password).
    :param full: ignore state and send every row.
    :param force: skip the guardrails; the run records that it was forced.
    :param wait_for_completion: wait for the run to end and end the task as it ended
        (a held run fails it, or skips it with ``on_held="skip"``); otherwise return
        the queued run's summary (``run_id`` for a ``TidegateSyncSensor``).
    :param deferrable: wait in the triggerer rather than in a worker slot.
    :param poll_interval: seconds between looks at the run.
    :param timeout: seconds to wait at most (``None``: as long as it takes).
    :param on_held: ``"fail"`` or ``"skip"``.
    """

    template_fields: Sequence[str] = ("sync", "server_conn_id")
    ui_color = "#d6f5f1"

    def __init__(self, *, sync: str | int,
                 server_conn_id: str = TidegateServerHook.default_conn_name,
                 full: bool = False, force: bool = False, wait_for_completion: bool = False,
                 deferrable: bool = False, poll_interval: float = 10.0,
                 timeout: float | None = None, on_held: OnHeld = "fail",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_on_held(on_held)
        self.sync, self.server_conn_id = str(sync), server_conn_id
        self.full, self.force = full, force
        self.wait_for_completion, self.deferrable = wait_for_completion, deferrable
        self.poll_interval, self.wait_timeout, self.on_held = poll_interval, timeout, on_held

    def execute(self, context: Context) -> dict[str, Any]:
        hook = TidegateServerHook(self.server_conn_id)
        queued = hook.trigger(self.sync, full=self.full, force=self.force)
        run_id = queued["run_id"]
        self.log.info("run %s of sync %s queued on the tidegate server", run_id, queued["sync"])
        if not self.wait_for_completion:
            return run_summary(queued)
        if self.deferrable:
            self.defer(trigger=TidegateRunTrigger(run_id, self.server_conn_id,
                                                  self.poll_interval),
                       method_name="execute_complete",
                       timeout=timedelta(seconds=self.wait_timeout) if self.wait_timeout
                       else None)
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        while True:
            try:
                run = hook.get_run(run_id)
            except RetryableError as exc:  # a server restarting: runs survive it
                self.log.warning("%s; looking again", exc)
            else:
                if finished(run):
                    summary = run_summary(run)
                    return conclude(self.log, self.on_held, context, summary["sync"], summary)
            if deadline is not None and time.monotonic() > deadline:
                raise SyncFailed(f"run {run_id} did not end within {self.wait_timeout} s; "
                                 "it goes on on the server", run_summary(queued))
            time.sleep(self.poll_interval)

    def execute_complete(self, context: Context,
                         event: dict[str, Any] | None = None) -> dict[str, Any]:
        return complete(self, context, event)
