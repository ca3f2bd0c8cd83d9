"""``ReverseETLOperator``: the seed-style inline job, its ends taken from Airflow connections.

    ReverseETLOperator(task_id="run_aps",
        query="select account_id, aps from analytics.account_scores",
        object="Account", fields=["APS__c"], job_type="update", batch_size=10000,
        source_conn_id="warehouse", destination_conn_id="salesforce_default",
        primary_key="account_id", state_conn_id="tidegate_state")

The job is a tidegate sync like any other (same validation, planner, guardrails
and state), named ``<dag_id>.<task_id>`` unless ``sync`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from tidegate.airflow._sdk import Context
from tidegate.airflow.errors import SyncConfigError
from tidegate.airflow.hooks.tidegate import TidegateHook
from tidegate.airflow.operators.base import TidegateRunOperator
from tidegate.config import MODES
from tidegate.errors import Problem
from tidegate.project import Project

__all__ = ["ReverseETLOperator"]


class ReverseETLOperator(TidegateRunOperator):
    """Sync the rows of ``query`` (or ``table``) into ``object`` of a destination.

    :param query: the model's SQL, templated (``{{ ds }}`` works; a path ending in
        ``.sql`` is read as a template file).
    :param table: a table as the model, instead of ``query``.
    :param object: the destination object (``Account``, ``schema.table``, …).
    :param fields: destination field names: those of the query's columns after the
        key, in order (the seed's meaning), or the columns' own names; or a mapping
        ``{column: field}``. Without it, every non-key column is sent as named.
    :param job_type: ``insert``, ``update``, ``upsert``, ``delete`` or ``mirror``.
    :param primary_key: the model's key column(s).
    :param source_conn_id: the warehouse (postgres, sqlite, duckdb, snowflake).
    :param destination_conn_id: the destination (http → webhook, postgres, salesforce).
    :param state_conn_id: the state store (``tidegate``, ``postgres`` or ``sqlite``
        connection); without it, a SQLite file in ``work_dir``.
    :param match: the destination field the key matches (``"Id"``), or
        ``{"source": …, "destination": …}``; Salesforce updates and deletes match
        ``Id`` by default.
    :param batch_size: records per request, capped by what the destination allows.
    :param guardrails: tidegate guardrails as a dict (``{"max_changed_pct": 20}``).
    :param sync: the sync's name in state and run history.
    :param destination_options: destination settings the connection lacks.
    :param work_dir: where the job keeps ``.tidegate/``; ``$AIRFLOW_HOME/tidegate/<sync>``.
    """

    template_fields: Sequence[str] = (
        "query", "table", "object", "fields", "primary_key", "sync", "source_conn_id",
        "destination_conn_id", "state_conn_id")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"query": "sql"}

    def __init__(
        self,
        *,
        object: str,
        job_type: str,
        primary_key: str | list[str],
        source_conn_id: str,
        destination_conn_id: str,
        query: str | None = None,
        table: str | None = None,
        fields: list[str] | dict[str, str] | None = None,
        batch_size: int | None = None,
        state_conn_id: str | None = None,
        match: str | dict[str, Any] | None = None,
        guardrails: dict[str, Any] | None = None,
        sync: str | None = None,
        destination_options: dict[str, Any] | None = None,
        work_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if job_type not in MODES:
            raise SyncConfigError(Problem(f"job_type is '{job_type}'", key="job_type",
                                          fix=f"use one of: {', '.join(MODES)}"))
        if (query is None) == (table is None):
            raise SyncConfigError(Problem("give exactly one of `query` or `table`",
                                          key="query"))
        self.query, self.table, self.object, self.fields = query, table, object, fields
        self.job_type, self.primary_key, self.batch_size = job_type, primary_key, batch_size
        self.source_conn_id, self.destination_conn_id = source_conn_id, destination_conn_id
        self.state_conn_id, self.match, self.guardrails = state_conn_id, match, guardrails
        self.sync, self.destination_options = sync, destination_options
        self.work_dir = work_dir

    def job(self) -> dict[str, Any]:
        """The sync's settings, as ``tidegate.yml`` would hold them."""
        match = self.match
        if isinstance(match, str):
            match = {"source": self.primary_key, "destination": match}
        job = {"query": self.query, "table": self.table, "object": self.object,
               "mode": self.job_type, "primary_key": self.primary_key, "fields": self.fields,
               "batch_size": self.batch_size, "match": match, "guardrails": self.guardrails}
        return {k: v for k, v in job.items() if v is not None}

    def make_project(self, context: Context) -> tuple[Project, str]:
        name = self.sync or f"{self.dag_id}.{self.task_id}"
        hook = TidegateHook(source_conn_id=self.source_conn_id,
                            destination_conn_id=self.destination_conn_id,
                            state_conn_id=self.state_conn_id, work_dir=self.work_dir,
                            destination_options=self.destination_options)
        return hook.inline_project(name, self.job()), name
