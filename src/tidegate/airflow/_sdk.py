"""The parts of Apache Airflow's task SDK the provider uses, with the install hint.

Only modules under ``tidegate.airflow`` import Airflow, and they do it here.
"""

from __future__ import annotations

try:
    from airflow.sdk import (
        BaseHook,
        BaseOperator,
        BaseSensorOperator,
        Connection,
        Context,
        PokeReturnValue,
    )
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
    from airflow.triggers.base import BaseTrigger, TriggerEvent
except ImportError as exc:  # pragma: no cover - the tests run with Airflow installed
    raise ImportError(
        "tidegate's Airflow provider needs Apache Airflow 3.2 or later: "
        "pip install 'tidegate[airflow]'"
    ) from exc

__all__ = [
    "AirflowFailException",
    "AirflowSkipException",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "BaseTrigger",
    "Connection",
    "Context",
    "PokeReturnValue",
    "TriggerEvent",
]
