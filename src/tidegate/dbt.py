"""dbt models as sync models: ``model: {dbt: customers}`` resolved from the manifest.

A sync names a dbt model; its relation (database, schema, alias) is read from
``target/manifest.json`` of the dbt project (the tidegate project's folder, or
``model.dbt_project``). Without a ``primary_key``, the model's primary key
constraint or its one ``unique`` test (``dbt_utils.unique_combination_of_columns``
included) gives it. A manifest that does not know the model, or that was built
before the model's SQL file last changed (its checksum differs), is a config
problem with the fix (``dbt parse``), so ``tidegate validate`` reports it.

``select`` picks syncs by their model, dbt-style: ``tag:hourly``, a model name,
several separated by spaces (any) or commas (all).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidegate.config import Located, SyncConfig
from tidegate.errors import ConfigError, Problem

MANIFEST = "manifest.json"
# Source types whose SQL reads relations as schema.table within the connected database.
_TWO_PART = {"duckdb", "sqlite", "postgres", "postgresql", "sqlalchemy"}


@dataclass
class DbtModel:
    """What the manifest says of one model."""

    unique_id: str
    name: str
    database: str | None
    schema: str
    alias: str
    relation_name: str | None
    tags: list[str]
    primary_key: list[str] | None
    key_problem: str | None
    stale: str | None


@dataclass
class Manifest:
    path: Path
    project_dir: Path
    models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    root_package: str | None = None


def model_of(sync: SyncConfig) -> DbtModel | None:
    """The dbt model a loaded sync reads, if it names one."""
    resolved = sync.model._resolved if sync.model is not None else None
    return resolved if isinstance(resolved, DbtModel) else None


def resolve_models(
    root: Path, syncs: dict[str, SyncConfig], origin: dict[str, Located],
    source_types: dict[str, str],
) -> list[Problem]:
    """Fill in ``table`` and a missing ``primary_key`` of every sync naming a dbt model."""
    problems: list[Problem] = []
    manifests: dict[Path, Manifest | Problem] = {}
    for name, sync in syncs.items():
        if sync.model is None:
            continue
        loc = origin[name]
        path = (*loc.path, "model", "dbt")
        where: dict[str, Any] = {"file": loc.doc.file, "line": loc.doc.line_of(path),
                                 "key": ".".join(map(str, path))}
        project_dir = (root / sync.model.dbt_project) if sync.model.dbt_project else root
        project_dir = project_dir.resolve()
        if project_dir not in manifests:
            manifests[project_dir] = _load(project_dir)
        manifest = manifests[project_dir]
        if isinstance(manifest, Problem):
            problems.append(Problem(manifest.message, fix=manifest.fix, **where))
            continue
        found = _find(manifest, sync.model.dbt)
        if isinstance(found, Problem):
            problems.append(Problem(found.message, fix=found.fix, **where))
            continue
        if found.stale is not None:
            problems.append(Problem(found.stale, fix=f"run `dbt parse` (or `dbt build`) in "
                                    f"{manifest.project_dir} so the manifest is current",
                                    **where))
            continue
        if sync.primary_key is None:
            if found.primary_key is None:
                pk_path = (*loc.path, "model")
                problems.append(Problem(
                    found.key_problem or "no primary key", loc.doc.file,
                    loc.doc.line_of(pk_path), ".".join(map(str, (*loc.path, "primary_key"))),
                    "add a `unique` test (or a primary_key constraint) to the model's column, "
                    "or set the sync's `primary_key`"))
                continue
            sync.primary_key = (found.primary_key[0] if len(found.primary_key) == 1
                                else list(found.primary_key))
        sync.table = relation(found, source_types.get(sync.source, ""))
        sync.model._resolved = found
    return problems


def relation(model: DbtModel, source_type: str) -> str:
    """How the source's SQL names the model's relation."""
    if source_type in _TWO_PART or not model.relation_name:
        return f"{_quote(model.schema)}.{_quote(model.alias)}"
    return model.relation_name


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load(project_dir: Path) -> Manifest | Problem:
    project_file = project_dir / "dbt_project.yml"
    if not project_file.is_file():
        return Problem(f"no dbt project in {project_dir} (dbt_project.yml not found)",
                       fix="set `model.dbt_project` to the folder holding dbt_project.yml")
    try:
        project = yaml.safe_load(project_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return Problem(f"cannot read {project_file}: {exc}", fix="fix dbt_project.yml")
    target = str(project.get("target-path") or "target") if isinstance(project, dict) else "target"
    path = project_dir / target / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Problem(f"the dbt manifest {path} does not exist",
                       fix=f"run `dbt parse` (or `dbt build`) in {project_dir}")
    except (OSError, ValueError) as exc:
        return Problem(f"cannot read the dbt manifest {path}: {exc}",
                       fix=f"run `dbt parse` again in {project_dir}")
    manifest = Manifest(path=path, project_dir=project_dir,
                        root_package=project.get("name") if isinstance(project, dict) else None)
    for node in (data.get("nodes") or {}).values():
        kind = node.get("resource_type")
        if kind == "model":
            manifest.models.setdefault(str(node.get("name")), []).append(node)
        elif kind == "test":
            attached = node.get("attached_node") or next(
                iter((node.get("depends_on") or {}).get("nodes") or []), None)
            if attached:
                manifest.tests.setdefault(str(attached), []).append(node)
    return manifest


def _find(manifest: Manifest, name: str) -> DbtModel | Problem:
    nodes = manifest.models.get(name)
    if not nodes:
        close = difflib.get_close_matches(name, list(manifest.models), n=1)
        fix = (f"did you mean '{close[0]}'?" if close else
               f"use a model of the project ({', '.join(sorted(manifest.models)[:8]) or 'none'})"
               f", or run `dbt parse` if it is new")
        return Problem(f"the dbt manifest {manifest.path} has no model '{name}'", fix=fix)
    own = [n for n in nodes if n.get("package_name") == manifest.root_package] or nodes
    # A versioned model: its latest version, as `ref('name')` resolves it.
    latest = [n for n in own if n.get("version") in (None, n.get("latest_version"))] or own
    node = latest[0]
    primary_key, key_problem = _primary_key(node, manifest.tests.get(node["unique_id"], []))
    return DbtModel(
        unique_id=node["unique_id"], name=name, database=node.get("database"),
        schema=str(node.get("schema")), alias=str(node.get("alias") or name),
        relation_name=node.get("relation_name"), tags=list(node.get("tags") or []),
        primary_key=primary_key, key_problem=key_problem,
        stale=_stale(manifest.project_dir, node),
    )


def _primary_key(node: dict[str, Any],
                 tests: list[dict[str, Any]]) -> tuple[list[str] | None, str | None]:
    for constraint in node.get("constraints") or []:
        if constraint.get("type") == "primary_key" and constraint.get("columns"):
            return list(constraint["columns"]), None
    for column, spec in (node.get("columns") or {}).items():
        if any(c.get("type") == "primary_key" for c in spec.get("constraints") or []):
            return [column], None
    candidates: list[list[str]] = []
    for test in tests:
        meta = test.get("test_metadata") or {}
        kwargs = meta.get("kwargs") or {}
        if meta.get("name") == "unique" and test.get("column_name"):
            candidates.append([str(test["column_name"])])
        elif meta.get("name") == "unique_combination_of_columns":
            columns = kwargs.get("combination_of_columns")
            if isinstance(columns, list) and columns:
                candidates.append([str(c) for c in columns])
    distinct = sorted({tuple(c) for c in candidates})
    if len(distinct) == 1:
        return list(distinct[0]), None
    if not distinct:
        return None, f"dbt model '{node.get('name')}' has no unique test to take its key from"
    listed = "; ".join(", ".join(c) for c in distinct)
    return None, (f"dbt model '{node.get('name')}' has several unique tests ({listed}): "
                  "which one is the key is not clear")


def _stale(project_dir: Path, node: dict[str, Any]) -> str | None:
    """Why the manifest no longer describes the model's SQL file, or None."""
    rel = node.get("original_file_path")
    checksum = node.get("checksum") or {}
    if not rel or checksum.get("name") != "sha256":
        return None
    path = project_dir / rel
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return f"the dbt manifest is stale: {rel} (model '{node.get('name')}') no longer exists"
    # dbt hashes the file's text with surrounding whitespace stripped.
    if hashlib.sha256(text.strip().encode("utf-8")).hexdigest() != checksum.get("checksum"):
        return (f"the dbt manifest is stale: {rel} changed after it was built, so the "
                f"relation and tests it gives for model '{node.get('name')}' may be wrong")
    return None


def select(syncs: dict[str, SyncConfig], selectors: list[str]) -> list[str]:
    """The syncs whose dbt models match any of ``selectors`` (dbt's union and intersection)."""
    terms = [t for s in selectors for t in s.split()]
    chosen = []
    for name, sync in syncs.items():
        model = model_of(sync)
        if model is None:
            continue
        if any(all(_matches(model, part) for part in term.split(",") if part) for term in terms):
            chosen.append(name)
    if not chosen:
        tags = sorted({t for s in syncs.values() if (m := model_of(s)) for t in m.tags})
        raise ConfigError(Problem(
            f"no sync reads a dbt model matching --select {' '.join(selectors)}",
            fix=(f"tags on the syncs' models: {', '.join(tags)}" if tags else
                 "--select matches syncs whose `model: {dbt: …}` has the tag or name")))
    return sorted(chosen)


def _matches(model: DbtModel, part: str) -> bool:
    method, _, value = part.rpartition(":")
    if method == "tag":
        return value in model.tags
    if method in ("", "model"):
        return value == model.name
    raise ConfigError(Problem(f"--select does not know the method '{method}:'",
                              fix="use tag:NAME or a model name"))
