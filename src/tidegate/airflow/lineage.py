"""OpenLineage datasets of a sync: the tables its model reads and the object it writes.

Names follow OpenLineage's dataset naming where it has one (PostgreSQL:
``postgres://host:port`` and ``database.schema.table``; Snowflake:
``snowflake://account``); for the rest the namespace is the system and where it
is (``duckdb:///path/warehouse.duckdb``, ``salesforce://login.salesforce.com``,
the webhook's URL) and the name is the table or the destination object. A
model given as a query is parsed with OpenLineage's SQL parser for the tables
it reads. Credentials never enter a name. The description is plain data, made
while the task runs; ``facets`` turns it into OpenLineage's objects, which only
the OpenLineage provider needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tidegate.project import Project

__all__ = ["Lineage", "describe", "facets"]


@dataclass
class Lineage:
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    query: str | None = None


def describe(project: Project, sync_name: str) -> Lineage:
    sync = project.sync(sync_name)
    source = project.settings.sources[sync.source]
    settings = source.model_dump()
    namespace, database, dialect = _source_namespace(settings, project.root)
    schema = {"postgres": "public", "snowflake": settings.get("schema_")}.get(dialect)
    lineage = Lineage(query=sync.query)
    tables = [sync.table] if sync.table else _tables(sync.query or "", dialect)
    for table in tables:
        parts = table.split(".")
        if database and len(parts) < 3:
            parts = [database, *([schema] if schema and len(parts) == 1 else []), *parts]
        if dialect == "snowflake":  # unquoted names, as Snowflake folds them
            parts = [p if p.startswith('"') else p.upper() for p in parts]
        lineage.inputs.append((namespace, ".".join(parts)))
    destination = project.settings.destinations[sync.destination]
    lineage.outputs.append(_destination_dataset(destination, sync.object, project.root))
    return lineage


def facets(lineage: Lineage) -> Any:
    """``OperatorLineage`` for the OpenLineage provider."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import sql_job

    job = {"sql": sql_job.SQLJobFacet(query=lineage.query)} if lineage.query else {}
    return OperatorLineage(
        inputs=[Dataset(namespace=ns, name=name) for ns, name in lineage.inputs],
        outputs=[Dataset(namespace=ns, name=name) for ns, name in lineage.outputs],
        job_facets=job,
    )


def _tables(query: str, dialect: str) -> list[str]:
    try:
        from openlineage_sql import parse
    except ImportError:  # the OpenLineage provider brings it; without it, no inputs
        return []
    meta = parse([query], dialect=dialect)
    return [t.qualified_name for t in meta.in_tables] if meta is not None else []


def _source_namespace(source: dict[str, Any], root: Path) -> tuple[str, str | None, str]:
    """(namespace, database to qualify names with, SQL dialect) of a source."""
    kind = source["type"]
    if kind == "duckdb":
        path = source.get("path") or ":memory:"
        where = path if path == ":memory:" else str((root / path).resolve())
        return f"duckdb://{where}", None, "duckdb"
    if kind == "sqlite":
        url = source.get("url") or ""
        path = source.get("path") or url.removeprefix("sqlite:///")
        return f"sqlite://{(root / path).resolve()}", None, "sqlite"
    if kind == "snowflake":  # OpenLineage: snowflake://{account identifier}
        return (f"snowflake://{str(source['account']).lower()}", source.get("database"),
                "snowflake")
    if kind == "bigquery":  # OpenLineage: bigquery, names project.dataset.table
        return "bigquery", source.get("project"), "bigquery"
    url = source["url"].get_secret_value() if hasattr(source["url"], "get_secret_value") \
        else str(source["url"])
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme in ("postgres", "postgresql"):
        port = parts.port or 5432
        return f"postgres://{parts.hostname}:{port}", parts.path.strip("/") or None, "postgres"
    if scheme == "snowflake":
        database = parts.path.strip("/").split("/")[0] or None
        return f"snowflake://{parts.hostname}", database, "snowflake"
    return f"{scheme}://{parts.hostname or ''}", None, "generic"


def _destination_dataset(settings: dict[str, Any], obj: str, root: Path) -> tuple[str, str]:
    kind = str(settings.get("type"))
    if kind == "postgres":
        parts = urlsplit(str(settings.get("url", "")))
        schema_table = obj if "." in obj else f"public.{obj}"
        return (f"postgres://{parts.hostname}:{parts.port or 5432}",
                f"{parts.path.strip('/') or 'postgres'}.{schema_table}")
    if kind == "file":
        return "file", str((root / str(settings.get("path", ""))).resolve() / obj)
    url = str(settings.get("url") or settings.get("login_url") or settings.get("base_url")
              or f"{kind}://")
    parts = urlsplit(url)
    where = parts.hostname or ""
    where += f":{parts.port}" if parts.port else ""
    if kind == "webhook":
        return f"{parts.scheme}://{where}{parts.path}", obj
    return f"{kind}://{where}", obj
