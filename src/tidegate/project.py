"""The public face of a project: load it, plan and run its syncs, read its history.

``Project`` is what the CLI, the Python API and later faces call; it resolves
names (sources, destinations, syncs) into objects and owns the state store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from tidegate import audit, destinations, redact, runs, state
from tidegate.config import (
    Located,
    ProjectConfig,
    ProjectSettings,
    SyncConfig,
    load_project_config,
    problems_from,
    unknown,
)
from tidegate.deliver import RetryPolicy
from tidegate.destinations.base import Destination, DestinationConfig, Operation, SyncTarget
from tidegate.errors import ConfigError, Problem, TidegateError
from tidegate.progress import NullReporter, Reporter
from tidegate.shard import Shard
from tidegate.sources import Source, open_source
from tidegate.store import Store

__all__ = ["Project"]


@dataclass(frozen=True)
class CheckResult:
    """One line of ``validate --connections``."""

    kind: str
    name: str
    ok: bool
    message: str


class Project:
    """A loaded, validated tidegate project."""

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self.root = config.root
        self._store: Store | None = None
        self.retry = RetryPolicy()
        self.memory_limit = os.environ.get("TIDEGATE_MEMORY_LIMIT", "256MB")

    @classmethod
    def load(cls, path: str | Path = ".", env: Mapping[str, str] | None = None, *,
             state: str | None = None) -> Project:
        """Load the project in ``path``; raise ConfigError listing every problem.

        ``state`` replaces the project's state store URL (e.g. one an orchestrator holds).
        """
        project = cls(load_project_config(Path(path), env, _check_destinations))
        if state is not None:
            redact.register_url(state)
            project.config.settings.state = state
        return project

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], root: str | Path, *,
                  origin: str = "inline project") -> Project:
        """A project from settings given as data (``tidegate.yml``'s keys), not files.

        ``root`` holds what a project folder would (``.tidegate/``: the default state
        store, snapshots, work files). Values are taken as given: no ``${VAR}``
        interpolation. Problems name ``origin`` where a file would be named.
        """
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        return cls(load_project_config(path, None, _check_destinations, data=dict(data),
                                       origin=origin))

    @property
    def name(self) -> str:
        return self.config.settings.name

    @property
    def settings(self) -> ProjectSettings:
        return self.config.settings

    @property
    def syncs(self) -> dict[str, SyncConfig]:
        return self.config.syncs

    @property
    def snapshot_dir(self) -> Path:
        return self.root / ".tidegate" / "snapshots"

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.state, self.root)
        return self._store

    def sync(self, name: str) -> SyncConfig:
        return self.config.sync(name)

    def source(self, name: str) -> Source:
        return open_source(name, self.settings.sources[name], self.root)

    def destination(self, sync_name: str, run_id: int | None = None,
                    to_send: Mapping[Operation, int] | None = None) -> Destination:
        from tidegate.journal import Journal

        sync = self.sync(sync_name)
        cls, settings = self.destination_settings(sync.destination)
        mapped = sync.field_map
        target = SyncTarget(
            sync=sync_name,
            object=sync.object,
            mode=sync.mode,
            match_fields=tuple(dst for _, dst in sync.match_columns),
            fields=tuple(mapped.values()) if mapped else (),
            project_root=self.root,
            run_id=run_id,
            to_send=dict(to_send or {}),
            journal=Journal(self.store, sync_name),
        )
        return cls(sync.destination, settings, target)

    def destination_settings(self, name: str) -> tuple[type[Destination], DestinationConfig]:
        raw = self.settings.destinations[name]
        cls = destinations.load(str(raw["type"]))
        return cls, cls.config_model.model_validate(raw)

    def plan(self, name: str, *, full: bool = False, shard: int | None = None,
             shards: int | None = None) -> dict[str, Any]:
        """What a run of ``name`` would do now; sends nothing, records nothing."""
        from tidegate.sync import plan_only

        return plan_only(self, name, full=full, shard=Shard.of(shard, shards))

    def run(
        self,
        name: str,
        *,
        full: bool = False,
        dry_run: bool = False,
        force: bool = False,
        reporter: Reporter | None = None,
        shard: int | None = None,
        shards: int | None = None,
        queued: int | None = None,
    ) -> dict[str, Any]:
        """Plan, judge and deliver ``name``; return the run summary (SPEC §4 ``--json``).

        A plan that trips a guardrail is held: status ``held``, nothing sent.
        ``force`` skips the guardrails, and the run records that it was forced.
        ``shard`` of ``shards`` runs only the keys whose stable hash falls in that
        shard (``tidegate.shard``); the shards of one split may run at the same time.
        ``queued`` runs that queued run (see ``enqueue``) rather than a new one.
        """
        from tidegate.sync import run_sync

        if dry_run:
            return self.plan(name, full=full, shard=shard, shards=shards)
        return run_sync(self, name, full=full, force=force,
                        reporter=reporter or NullReporter(), shard=Shard.of(shard, shards),
                        queued=queued)

    def enqueue(self, name: str, *, full: bool = False, force: bool = False,
                triggered_by: str | None = None) -> int:
        """Record a run of ``name`` as queued, for a worker to ``run(name, queued=id)``."""
        sync = self.sync(name)
        return runs.queue_run(self.store, sync=name, mode=sync.mode,
                              destination=sync.destination, object=sync.object, full=full,
                              forced=force, triggered_by=triggered_by)

    def sync_ids(self) -> dict[str, int]:
        """Each sync's stable numeric id (see ``tidegate.catalog``), by name."""
        from tidegate.catalog import sync_ids

        return sync_ids(self.store, sorted(self.syncs))

    def approve(self, run_id: int, *, reporter: Reporter | None = None) -> dict[str, Any]:
        """Deliver held run ``run_id`` as the approver saw it; return its summary.

        The sync is planned again: if that plan is exactly the held one it is sent;
        if the model or state changed since, it is judged again (and may be held again).
        """
        from tidegate.sync import run_sync

        record = self._run(run_id)
        self.sync(record.sync)
        return run_sync(self, record.sync, full=record.full, approve=run_id,
                        revert_of=record.revert_of, reporter=reporter or NullReporter())

    def revert(self, run_id: int, *, force: bool = False,
               reporter: Reporter | None = None) -> dict[str, Any]:
        """Put back what run ``run_id`` changed, as a new run; return its summary.

        Keys changed again since are conflicts: reported and left alone. The revert
        is judged by the guardrails like any run (``force`` skips them).
        """
        from tidegate.sync import run_sync

        record = self._run(run_id)
        self.sync(record.sync)
        return run_sync(self, record.sync, full=False, force=force, revert_of=run_id,
                        reporter=reporter or NullReporter())

    def _run(self, run_id: int) -> runs.RunRecord:
        try:
            return runs.get_run(self.store, run_id)
        except KeyError:
            raise ConfigError(
                Problem(f"there is no run {run_id}", fix="list runs with `tidegate runs`")
            ) from None

    def runs(self, sync: str | None = None, limit: int = 20) -> list[runs.RunRecord]:
        if sync is not None:
            self.sync(sync)
        return runs.list_runs(self.store, sync, limit)

    def show(self, run_id: int, *, changes: bool = False,
             limit: int | None = None) -> dict[str, Any]:
        """One run: its summary, timings and every rejected or invalid row; with
        ``changes``, also every change it delivered (key, field, old, new, time)."""
        record = self._run(run_id)
        out = record.summary()
        out.update(
            mode=record.mode,
            destination=record.destination,
            object=record.object,
            full=record.full,
            started_at=record.started_at.isoformat(),
            finished_at=record.finished_at.isoformat() if record.finished_at else None,
            to_send=record.to_send,
            batches=record.batches,
            timings=record.timings,
            forced=record.forced,
            revert_of=record.revert_of,
            destination_report=record.destination_report,
            approved_at=record.approved_at.isoformat() if record.approved_at else None,
            samples=record.plan_samples,
            rows=runs.row_errors(self.store, run_id),
        )
        if changes:
            out["changes"] = audit.changes(self.store, run_id, limit=limit)
        return out

    def reset(self, sync: str) -> int:
        """Forget the acknowledged state of ``sync``; returns how many keys were known."""
        self.sync(sync)
        return state.reset(self.store, sync)

    def validate(self, *, connections: bool = False) -> list[CheckResult]:
        """Config is already valid once loaded; with ``connections``, reach every end."""
        results: list[CheckResult] = []
        if not connections:
            return results
        for name in self.settings.sources:
            source = self.source(name)
            results.append(_probe("source", name, source.check))
            source.close()
        used = {s.destination: n for n, s in self.syncs.items()}
        for name in self.settings.destinations:
            if name not in used:
                cls, settings = self.destination_settings(name)
                target = SyncTarget("", "", "upsert", (), (), self.root)
                dest = cls(name, settings, target)
            else:
                dest = self.destination(used[name])
            results.append(_probe("destination", name, dest.check))
            dest.close()
        return results

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe(kind: str, name: str, check: Any) -> CheckResult:
    try:
        check()
    except TidegateError as exc:
        return CheckResult(kind, name, False, redact.redact(str(exc)))
    return CheckResult(kind, name, True, "reachable")


def _check_destinations(
    settings: ProjectSettings,
    syncs: dict[str, SyncConfig],
    sync_origin: dict[str, Located],
    dest_origin: dict[str, Located],
) -> list[Problem]:
    problems: list[Problem] = []
    plugins: dict[str, type[Destination]] = {}
    for name, raw in settings.destinations.items():
        loc = dest_origin[name]
        file, line = loc.doc.file, loc.doc.line_of((*loc.path, "type"))
        kind = raw.get("type") if isinstance(raw, dict) else None
        if not kind:
            problems.append(Problem("required key 'type' is missing",
                                    key=f"destinations.{name}",
                                    fix=f"set `type:` to one of {', '.join(destinations.kinds())}",
                                    file=loc.doc.file, line=loc.doc.line_of(loc.path)))
            continue
        try:
            cls = destinations.load(str(kind))
        except KeyError:
            problems.append(unknown("destination type", str(kind), destinations.kinds(),
                                    key=f"destinations.{name}.type", file=file, line=line))
            continue
        except ImportError as exc:
            problems.append(Problem(f"destination type '{kind}' cannot be loaded ({exc})",
                                    key=f"destinations.{name}.type",
                                    fix=f"pip install 'tidegate[{kind}]'", file=file,
                                    line=line))
            continue
        try:
            model = cls.config_model.model_validate(raw)
        except ValidationError as exc:
            problems += problems_from(exc, loc.doc, loc.path, cls.config_model)
            continue
        _register_secrets(model)
        plugins[name] = cls
    for sync_name, sync in syncs.items():
        cls_or_none = plugins.get(sync.destination)
        if cls_or_none is None:
            continue
        loc = sync_origin[sync_name]
        try:
            modes = cls_or_none.modes_for(sync.object)
        except ValueError as exc:
            problems.append(Problem(
                str(exc), file=loc.doc.file, line=loc.doc.line_of((*loc.path, "object")),
                key=".".join(map(str, (*loc.path, "object"))) or "object"))
            continue
        if sync.mode not in modes:
            problems.append(Problem(
                f"{cls_or_none.kind} destination '{sync.destination}' does not support "
                f"mode '{sync.mode}'" + (f" for object {sync.object}"
                                         if modes != cls_or_none.capabilities.modes else ""),
                file=loc.doc.file, line=loc.doc.line_of((*loc.path, "mode")),
                key=".".join(map(str, (*loc.path, "mode"))) or "mode",
                fix=f"use one of: {', '.join(sorted(modes))}"))
    return problems


def _register_secrets(model: BaseModel) -> None:
    for name, value in model:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            redact.register(secret)
            redact.register_url(secret)
        elif isinstance(value, str) and name in ("url", "base_url", "login_url"):
            redact.register_url(value)
        elif isinstance(value, BaseModel):
            _register_secrets(value)
