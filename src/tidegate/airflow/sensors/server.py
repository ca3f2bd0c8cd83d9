"""``TidegateSyncSensor``: wait for a run on a ``tidegate serve`` to end; deferrable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidegate.airflow._sdk import BaseSensorOperator, Context, PokeReturnValue
from tidegate.airflow.hooks.server import TidegateServerHook, run_summary
from tidegate.airflow.operators.base import OnHeld, conclude
from tidegate.airflow.operators.server import _check_on_held, complete
from tidegate.airflow.triggers.server import TidegateRunTrigger, finished
from tidegate.errors import RetryableError

__all__ = ["TidegateSyncSensor"]


class TidegateSyncSensor(BaseSensorOperator):
    """Wait until run ``run_id`` on the server has ended; return its summary as XCom.

    A run that succeeded (or ended ``partial``) succeeds the task; a held run fails it
    (or skips it with ``on_held="skip"``) with the guardrails' reasons in the log; a
    failed run fails it with the run's error.

    :param run_id: the run (templated, e.g. ``"{{ ti.xcom_pull('trigger')['run_id'] }}"``).
    :param server_conn_id: the server's connection (URL in host, token in password).
    :param deferrable: wait in the triggerer (``TidegateRunTrigger``), not a worker slot.
    :param on_held: ``"fail"`` or ``"skip"``.

    ``poke_interval`` and ``timeout`` are the sensor's usual ones.
    """

    template_fields: Sequence[str] = ("run_id", "server_conn_id")
    ui_color = "#d6f5f1"

    def __init__(self, *, run_id: int | str,
                 server_conn_id: str = TidegateServerHook.default_conn_name,
                 deferrable: bool = False, on_held: OnHeld = "fail", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_on_held(on_held)
        self.run_id, self.server_conn_id = run_id, server_conn_id
        self.deferrable, self.on_held = deferrable, on_held

    def poke(self, context: Context) -> PokeReturnValue | bool:
        try:
            run = TidegateServerHook(self.server_conn_id).get_run(int(self.run_id))
        except RetryableError as exc:  # a server restarting: its runs survive it
            self.log.warning("%s; looking again", exc)
            return False
        if not finished(run):
            self.log.info("run %s is %s", self.run_id, run["status"])
            return False
        summary = run_summary(run)
        return PokeReturnValue(is_done=True, xcom_value=conclude(
            self.log, self.on_held, context, summary["sync"], summary))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        done = self.poke(context)
        if isinstance(done, PokeReturnValue):
            return done.xcom_value
        self.defer(trigger=TidegateRunTrigger(int(self.run_id), self.server_conn_id,
                                              float(self.poke_interval)),
                   method_name="execute_complete", timeout=self.timeout)

    def execute_complete(self, context: Context,
                         event: dict[str, Any] | None = None) -> dict[str, Any]:
        return complete(self, context, event)
