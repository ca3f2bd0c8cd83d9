"""``TidegateSyncOperator``: run one sync of a tidegate project inside the worker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tidegate.airflow._sdk import Context
from tidegate.airflow.hooks.tidegate import TidegateHook
from tidegate.airflow.operators.base import TidegateRunOperator
from tidegate.project import Project

__all__ = ["TidegateSyncOperator"]


class TidegateSyncOperator(TidegateRunOperator):
    """Plan, judge and deliver ``sync`` of the project in ``project_dir``.

    Returns the run summary (the ``--json`` document of ``tidegate run``) as XCom.

    :param project_dir: the project folder (``tidegate.yml``) as the worker sees it.
    :param sync: the sync's name.
    :param state_conn_id: a ``tidegate``, ``postgres`` or ``sqlite`` connection whose
        state store replaces the project's (workers running shards need a shared one).

    The other parameters (``full``, ``force``, ``on_held``, ``shard``, ``shards``) are
    ``TidegateRunOperator``'s.
    """

    template_fields: Sequence[str] = ("project_dir", "sync", "state_conn_id")

    def __init__(self, *, project_dir: str | Path, sync: str,
                 state_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project_dir = str(project_dir)
        self.sync = sync
        self.state_conn_id = state_conn_id

    def make_project(self, context: Context) -> tuple[Project, str]:
        hook = TidegateHook(project_dir=self.project_dir, state_conn_id=self.state_conn_id)
        return hook.load_project(), self.sync
