"""``TidegateHook``: tidegate projects built from a folder or from Airflow connections.

The hook owns turning what a task names (a project folder, connection ids, an
inline job) into a ``tidegate.Project``, and checking that its ends can be
reached (``test_connection``). Its own connection type, ``tidegate``, is a
state store: a PostgreSQL server shared by the workers, or any state URL in
the ``url`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidegate import redact
from tidegate.airflow import connections
from tidegate.airflow._sdk import BaseHook
from tidegate.airflow.errors import SyncConfigError
from tidegate.errors import ConfigError, Problem, TidegateError
from tidegate.project import Project
from tidegate.store import Store

__all__ = ["TidegateHook"]

SOURCE, DESTINATION = "source", "destination"


class TidegateHook(BaseHook):
    """Builds tidegate projects for tasks, from a project folder or from connections.

    :param tidegate_conn_id: a ``tidegate`` connection: the state store to use.
    :param project_dir: a tidegate project folder (``tidegate.yml``).
    :param source_conn_id: the warehouse of an inline job (postgres, sqlite, duckdb,
        snowflake).
    :param destination_conn_id: the destination of an inline job (http, postgres,
        salesforce).
    :param state_conn_id: the state store, if not the project's (or the work folder's
        SQLite file for an inline job); wins over ``tidegate_conn_id``.
    :param work_dir: where an inline job keeps ``.tidegate/`` (snapshots, work files
        and, without a state connection, its SQLite state).
    :param destination_options: settings of the destination type that the
        connection does not hold (e.g. ``{"create_table": False}``).
    """

    conn_name_attr = "tidegate_conn_id"
    default_conn_name = "tidegate_default"
    conn_type = "tidegate"
    hook_name = "tidegate"

    def __init__(
        self,
        tidegate_conn_id: str | None = None,
        *,
        project_dir: str | Path | None = None,
        source_conn_id: str | None = None,
        destination_conn_id: str | None = None,
        state_conn_id: str | None = None,
        work_dir: str | Path | None = None,
        destination_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.tidegate_conn_id = tidegate_conn_id
        self.project_dir = project_dir
        self.source_conn_id = source_conn_id
        self.destination_conn_id = destination_conn_id
        self.state_conn_id = state_conn_id
        self.work_dir = work_dir
        self.destination_options = destination_options or {}

    # Building projects -----------------------------------------------------------

    def state_url(self) -> str | None:
        """The state store the connections name, or None for the project's default."""
        conn_id = self.state_conn_id or self.tidegate_conn_id
        if not conn_id:
            return None
        return connections.state_url(self.get_connection(conn_id))

    def load_project(self) -> Project:
        """The project in ``project_dir``, with the state store of the connection if any."""
        if not self.project_dir:
            raise SyncConfigError(Problem("no project folder given", key="project_dir",
                                          fix="pass project_dir= (a folder with tidegate.yml)"))
        return self._typed(lambda: Project.load(self.project_dir or ".",
                                                state=self.state_url()))

    def inline_project(self, name: str, job: dict[str, Any] | None = None) -> Project:
        """A project of one sync ``name`` made of ``job`` (a sync's keys) and the connections.

        Its source is named ``source`` and its destination ``destination``. Without
        ``job`` the project has no sync (for checking the connections).
        """
        return self._typed(lambda: self._inline(name, job))

    def _inline(self, name: str, job: dict[str, Any] | None) -> Project:
        settings: dict[str, Any] = {"name": name, "sources": {}, "destinations": {}}
        if self.source_conn_id:
            settings["sources"][SOURCE] = connections.source_settings(
                self.get_connection(self.source_conn_id))
        if self.destination_conn_id:
            settings["destinations"][DESTINATION] = connections.destination_settings(
                self.get_connection(self.destination_conn_id), self.destination_options)
        state = self.state_url()
        if state is not None:
            settings["state"] = state
        root = Path(self.work_dir) if self.work_dir else default_work_dir(name)
        origin = f"task settings of sync '{name}'"
        if job is None:
            return Project.from_dict(settings, root, origin=origin)
        settings["syncs"] = {name: {"source": SOURCE, "destination": DESTINATION, **job}}
        _default_match(settings, name)
        project = Project.from_dict(settings, root, origin=origin)
        mapping = _positional_fields(project, name, job)
        if mapping is None:
            return project
        project.close()
        settings["syncs"][name]["fields"] = mapping
        return Project.from_dict(settings, root, origin=origin)

    def _typed(self, build: Callable[[], Project]) -> Project:
        try:
            project = build()
        except SyncConfigError:
            raise
        except ConfigError as exc:  # stays a ConfigError, and Airflow does not retry it
            raise SyncConfigError(exc.problems) from None
        return project

    # Checking ---------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Reach the source, the destination and the state store; ``(ok, message)``.

        The message names each end and what went wrong with it; secrets are masked.
        """
        lines: list[str] = []
        ok = True
        try:
            if self.project_dir:
                project = self.load_project()
            elif self.source_conn_id or self.destination_conn_id:
                project = self.inline_project("connection_test")
            else:
                project = None
            if project is None:
                url = self.state_url()
                if url is None:
                    return False, "nothing to check: name a tidegate connection, a project " \
                                  "folder or a source and destination connection"
                Store(url, Path(default_work_dir("connection_test"))).close()
                return True, f"state store {redact.redact_url(url)}: reachable"
            with project:
                for result in project.validate(connections=True):
                    ok = ok and result.ok
                    lines.append(f"{result.kind} {_label(self, result.kind, result.name)}: "
                                 f"{result.message}")
                project.store  # noqa: B018 - opening the store is the check
                lines.append(f"state store {project.store.display_url}: reachable")
        except TidegateError as exc:
            return False, redact.redact("; ".join([*lines, str(exc)]))
        return ok, redact.redact("; ".join(lines))


def _label(hook: TidegateHook, kind: str, name: str) -> str:
    conn_id = {SOURCE: hook.source_conn_id, DESTINATION: hook.destination_conn_id}.get(name)
    return f"'{conn_id}'" if conn_id and not hook.project_dir else f"'{name}'"


def default_work_dir(name: str) -> Path:
    """``$AIRFLOW_HOME/tidegate/<sync>``: where an inline job keeps its local files."""
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return home / "tidegate" / name.replace("/", "_")


def _default_match(settings: dict[str, Any], name: str) -> None:
    """Salesforce updates and deletes records by Id: the seed's primary key is the Id."""
    sync = settings["syncs"][name]
    destination = settings["destinations"].get(DESTINATION, {})
    mode = sync.get("mode", sync.get("job_type"))
    if (destination.get("type") == "salesforce" and mode in ("update", "delete")
            and sync.get("match") is None and isinstance(sync.get("primary_key"), str)):
        sync["match"] = {"source": sync["primary_key"], "destination": "Id"}


def _positional_fields(project: Project, name: str, job: dict[str, Any]
                       ) -> dict[str, str] | None:
    """The seed's ``fields``: destination names, in the order of the query's columns.

    A list of names the model has maps each to itself (tidegate's own meaning); a
    list naming columns the model lacks maps the model's columns after the key and
    match columns, in order, to those names.
    """
    fields = job.get("fields")
    if not isinstance(fields, list):
        return None
    sync = project.sync(name)
    source = project.source(sync.source)
    try:
        columns = source.read(f"select * from ({sync.sql}) as model limit 0").schema.names
    except TidegateError:
        return None  # the run reports the query's problem where it belongs
    finally:
        source.close()
    if all(f in columns for f in fields):
        return None
    taken = {*sync.key_columns, *(src for src, _ in sync.match_columns)}
    rest = [c for c in columns if c not in taken]
    if len(rest) != len(fields):
        raise ConfigError(Problem(
            f"`fields` names {len(fields)} destination field(s) ({', '.join(fields)}) but the "
            f"query returns {len(rest)} column(s) besides the key ({', '.join(rest)})",
            key="fields",
            fix="list one destination field per query column, in order, or give a "
                "mapping {column: field}"))
    return dict(zip(rest, fields, strict=True))
