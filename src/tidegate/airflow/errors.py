"""How a tidegate task fails: tidegate's own error types, which Airflow also understands.

    SyncFailed       the run failed (the destination was down after retries, the source
                     could not be read): a tidegate FatalError; Airflow's retries apply
    SyncHeld         a guardrail held the run: nothing was sent; not retried, since a
                     retry would plan the same data and be held again
    SyncConfigError  the task's settings or connections are wrong: a tidegate ConfigError
                     naming each problem and its fix; not retried

Each carries the run summary (``summary``) when there was a run. The held and config
errors are also ``AirflowFailException``, which is how Airflow is told not to retry.
"""

from __future__ import annotations

from typing import Any

from tidegate.airflow._sdk import AirflowFailException
from tidegate.errors import ConfigError, FatalError, Problem

__all__ = ["SyncConfigError", "SyncFailed", "SyncHeld"]


class SyncFailed(FatalError):
    """The run ended ``failed``; the message is the run's error."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class SyncHeld(FatalError, AirflowFailException):
    """A guardrail held the run; the message names every rule that tripped."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class SyncConfigError(ConfigError, AirflowFailException):
    """The task's configuration is wrong; ``problems`` lists each with its fix."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        super().__init__(problems)
        self.summary: dict[str, Any] | None = None
