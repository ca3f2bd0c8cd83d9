"""``TidegateRunTrigger``: wait in the triggerer for a run on a ``tidegate serve`` to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tidegate.airflow._sdk import BaseTrigger, TriggerEvent
from tidegate.airflow.hooks.server import TIMEOUT_S, TidegateServerHook, answer
from tidegate.errors import RetryableError, TidegateError
from tidegate.redact import redact

__all__ = ["TidegateRunTrigger", "finished"]

MAX_TRANSIENT = 5  # server restarts or timeouts in a row before the trigger gives up


def finished(run: dict[str, Any]) -> bool:
    """Whether a run (``GET /api/runs/{id}``) has ended: not queued, running or being sent."""
    return run["status"] not in ("queued", "running") and not run.get("approving")


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]  # untyped in Airflow


class TidegateRunTrigger(BaseTrigger):
    """Polls ``GET /api/runs/{run_id}`` every ``poll_interval`` seconds.

    Yields one event: ``{"status": "done", "run": <run>}`` once the run ended, or
    ``{"status": "error", "message": …}`` when the server refused or stayed away.
    A server restarting meanwhile is waited for (runs survive a restart).
    """

    def __init__(self, run_id: int, server_conn_id: str, poll_interval: float = 10.0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's base is untyped
        self.run_id = int(run_id)
        self.server_conn_id = server_conn_id
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tidegate.airflow.triggers.server.TidegateRunTrigger",
                {"run_id": self.run_id, "server_conn_id": self.server_conn_id,
                 "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            base, headers = await TidegateServerHook(self.server_conn_id).asettings()
        except TidegateError as exc:
            yield _event({"status": "error", "message": redact(str(exc))})
            return
        transient = 0
        async with httpx.AsyncClient(base_url=base, headers=headers,
                                     timeout=TIMEOUT_S) as client:
            while True:
                try:
                    run = answer(await client.get(f"/api/runs/{self.run_id}"))
                    transient = 0
                except (RetryableError, httpx.TransportError) as exc:
                    transient += 1
                    if transient > MAX_TRANSIENT:
                        yield _event({"status": "error", "message": redact(str(exc))})
                        return
                    self.log.warning("tidegate server not answering (%s); trying again",
                                     redact(str(exc)))
                except TidegateError as exc:
                    yield _event({"status": "error", "message": redact(str(exc))})
                    return
                else:
                    if finished(run):
                        yield _event({"status": "done", "run": run})
                        return
                await asyncio.sleep(self.poll_interval)
