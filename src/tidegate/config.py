"""The configuration contract: pydantic models for ``tidegate.yml`` and ``syncs/*.yml``.

Loading reports every problem at once, each with file, line, key and the fix
(``ConfigError``). Destination settings are checked here only for their
``type``; each destination plugin validates the rest with its own model, using
``problems_from`` so its errors read the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tidegate import redact
from tidegate.errors import ConfigError, Problem
from tidegate.yamlfile import Path_, YamlDoc, load_yaml

PROJECT_FILE = "tidegate.yml"
SYNCS_DIR = "syncs"
DEFAULT_STATE = "sqlite:///.tidegate/state.db"

Mode = Literal["insert", "update", "upsert", "delete", "mirror"]
MODES: tuple[Mode, ...] = ("insert", "update", "upsert", "delete", "mirror")


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)


class DuckDBSourceConfig(Strict):
    type: Literal["duckdb"]
    path: str = ":memory:"
    read_only: bool = False  # `diff: warehouse` keeps its snapshot in the file unless set


class SQLiteSourceConfig(Strict):
    type: Literal["sqlite"]
    path: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SQLiteSourceConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of `path` or `url`")
        return self


class SQLAlchemySourceConfig(Strict):
    type: Literal["postgres", "postgresql", "sqlalchemy"]
    url: SecretStr
    read_only: bool = False


class SnowflakeSourceConfig(Strict):
    """Snowflake through its connector; password or key-pair auth, secrets from env."""

    type: Literal["snowflake"]
    account: str
    user: str
    password: SecretStr | None = None
    private_key: SecretStr | None = None  # PEM text, e.g. "${SNOWFLAKE_PRIVATE_KEY}"
    private_key_path: str | None = None
    private_key_passphrase: SecretStr | None = None
    warehouse: str | None = None
    database: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    role: str | None = None
    # A proxy, PrivateLink endpoint or local emulator instead of <account>.snowflakecomputing.com.
    host: str | None = None
    port: int | None = Field(default=None, gt=0, lt=65536)
    protocol: Literal["https", "http"] = "https"
    network_timeout: int | None = Field(default=None, gt=0)  # seconds, per request
    read_only: bool = False

    @model_validator(mode="after")
    def _one_auth(self) -> SnowflakeSourceConfig:
        given = [k for k in ("password", "private_key", "private_key_path")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `password`, `private_key` (PEM text from an "
                             "environment variable) or `private_key_path`")
        if self.private_key_passphrase is not None and given[0] == "password":
            raise ValueError("`private_key_passphrase` goes with `private_key` or "
                             "`private_key_path`, not `password`")
        return self


class BigQuerySourceConfig(Strict):
    """BigQuery through sqlalchemy-bigquery; credentials from a file, env, or the
    environment's Application Default Credentials."""

    type: Literal["bigquery"]
    project: str
    dataset: str | None = None
    location: str | None = None
    credentials_path: str | None = None
    credentials_base64: SecretStr | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> BigQuerySourceConfig:
        if self.credentials_path is not None and self.credentials_base64 is not None:
            raise ValueError("give at most one of `credentials_path` or `credentials_base64`")
        return self


SourceConfig = Annotated[
    DuckDBSourceConfig
    | SQLiteSourceConfig
    | SQLAlchemySourceConfig
    | SnowflakeSourceConfig
    | BigQuerySourceConfig,
    Field(discriminator="type"),
]


class MatchConfig(Strict):
    source: str | list[str]
    destination: str | list[str]


class Check(Strict):
    """A check on one mapped field (its destination name).

    Row checks (``not_null`` … ``max_length``) make a failing row invalid — reported,
    never sent — or, with ``hold``, hold the run. Transition checks compare a changed
    row with the value last delivered and hold the run when more than ``max_rows``
    rows break them.
    """

    field: str
    not_null: bool = False
    between: tuple[float, float] | None = None
    accepted_values: list[str | int | float | bool] | None = None
    matches: str | None = None
    unique: bool = False
    max_length: int | None = Field(default=None, gt=0)
    hold: bool = False
    no_null_overwrite: bool = False
    no_zero_overwrite: bool = False
    max_change_pct: float | None = Field(default=None, gt=0)
    max_rows: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _something_to_check(self) -> Check:
        if not (self.row_rules or self.transition_rules):
            raise ValueError(
                "a check needs a rule: not_null, between, accepted_values, matches, unique, "
                "max_length, no_null_overwrite, no_zero_overwrite or max_change_pct"
            )
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError("`between` takes [low, high] with low <= high")
        if self.matches is not None:
            import re

            try:
                re.compile(self.matches)
            except re.error as exc:
                raise ValueError(f"`matches` is not a valid regular expression: {exc}") from None
        return self

    @property
    def row_rules(self) -> list[str]:
        return [name for name in ("not_null", "between", "accepted_values", "matches", "unique",
                                  "max_length") if getattr(self, name) not in (None, False)]

    @property
    def transition_rules(self) -> list[str]:
        return [name for name in ("no_null_overwrite", "no_zero_overwrite", "max_change_pct")
                if getattr(self, name) not in (None, False)]


class Deviation(Strict):
    """Hold when a count exceeds ``factor`` times its median over the last ``runs`` runs."""

    factor: float = Field(default=3.0, gt=1)
    runs: int = Field(default=10, ge=3)
    min_rows: int = Field(default=100, ge=0)  # counts at or below this never trip it


class Guardrails(Strict):
    """Rules judged on the plan before anything is sent; see docs/guardrails.md."""

    max_added_pct: float | None = Field(default=None, ge=0)
    max_changed_pct: float | None = Field(default=None, ge=0)
    max_removed_pct: float | None = Field(default=None, ge=0)
    min_rows: int | None = Field(default=None, ge=0)
    max_rows: int | None = Field(default=None, ge=0)
    max_deviation: float | Deviation | None = None
    checks: list[Check] = Field(default_factory=list)
    safe_defaults: bool = True

    @model_validator(mode="after")
    def _factor_above_one(self) -> Guardrails:
        if isinstance(self.max_deviation, (int, float)) and self.max_deviation <= 1:
            raise ValueError("`max_deviation` is a factor above 1 (e.g. 3: three times the "
                             "median of recent runs)")
        return self

    @property
    def deviation(self) -> Deviation | None:
        if isinstance(self.max_deviation, (int, float)):
            return Deviation(factor=float(self.max_deviation))
        return self.max_deviation


class DbtModelRef(Strict):
    """A dbt model by name, resolved from the dbt project's ``target/manifest.json``."""

    dbt: str
    dbt_project: str | None = None  # the folder with dbt_project.yml; default: the project's
    _resolved: Any = PrivateAttr(default=None)  # tidegate.dbt.DbtModel, set while loading


class SyncConfig(Strict):
    source: str
    query: str | None = None
    table: str | None = None
    model: DbtModelRef | None = None
    # Optional only for a dbt model, whose unique test gives the default (``tidegate.dbt``).
    primary_key: str | list[str] | None = None
    # Where added / changed / removed are computed: the local state store, or the warehouse.
    diff: Literal["local", "warehouse"] = "local"
    destination: str
    object: str
    mode: Mode
    match: MatchConfig | None = None
    fields: list[str] | dict[str, str] | None = None
    batch_size: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0, le=64)
    requests_per_second: float | None = Field(default=None, gt=0)
    schedule: str | None = None
    guardrails: Guardrails = Field(default_factory=Guardrails)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from tidegate.cron import expand  # cronsim loads only for projects with schedules

            expand(value)
        return value

    @model_validator(mode="after")
    def _model_given_once(self) -> SyncConfig:
        given = [k for k in ("query", "table", "model") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `query` or `table` (or `model: {dbt: NAME}`) "
                             "as the model")
        if self.primary_key is None and self.model is None:
            raise ValueError("required key 'primary_key' is missing; add `primary_key: ...`")
        return self

    @property
    def key_columns(self) -> list[str]:
        pk = self.primary_key
        if pk is None:
            return []
        return [pk] if isinstance(pk, str) else list(pk)

    @property
    def sql(self) -> str:
        return self.query if self.query is not None else f"select * from {self.table}"

    @property
    def match_columns(self) -> list[tuple[str, str]]:
        """(model column, destination field) pairs that identify a record."""
        if self.match is None:
            return [(c, c) for c in self.key_columns]
        src = [self.match.source] if isinstance(self.match.source, str) else self.match.source
        dst = (
            [self.match.destination]
            if isinstance(self.match.destination, str)
            else self.match.destination
        )
        return list(zip(src, dst, strict=False))

    @property
    def field_map(self) -> dict[str, str] | None:
        """Model column -> destination field, or None for every non-key column."""
        if self.fields is None:
            return None
        if isinstance(self.fields, list):
            return {f: f for f in self.fields}
        return dict(self.fields)


class AuditConfig(Strict):
    """The audit log of delivered changes; ``mask`` names fields kept only as salted hashes."""

    mask: list[str] = Field(default_factory=list)


class ProjectSettings(Strict):
    name: str = "tidegate"
    state: str = DEFAULT_STATE
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    destinations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    syncs: dict[str, Any] = Field(default_factory=dict)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    # Validated by ``tidegate.alerts``' and ``tidegate.writeback``'s models, which build
    # on this module (see ``_validate_alerts``, ``_validate_writeback``).
    alerts: list[dict[str, Any]] = Field(default_factory=list)
    writeback: dict[str, Any] | None = None


@dataclass
class Located:
    """Raw settings plus where they came from, for error messages."""

    data: dict[str, Any]
    doc: YamlDoc
    path: Path_


@dataclass
class ProjectConfig:
    """A whole project's configuration, validated except for destination settings."""

    root: Path
    settings: ProjectSettings
    syncs: dict[str, SyncConfig]
    sync_origin: dict[str, Located]
    destination_origin: dict[str, Located]
    env_vars: set[str] = field(default_factory=set)
    alerts: list[Any] = field(default_factory=list)  # tidegate.alerts.AlertConfig
    writeback: Any = None  # tidegate.writeback.WritebackConfig

    def sync(self, name: str) -> SyncConfig:
        if name not in self.syncs:
            raise ConfigError(unknown("sync", name, list(self.syncs)))
        return self.syncs[name]


def unknown(kind: str, name: str, known: list[str], **where: Any) -> Problem:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        fix = f"did you mean '{close[0]}'?"
    elif known:
        fix = f"use one of: {', '.join(sorted(known))}"
    else:
        fix = f"define a {kind} first"
    return Problem(f"unknown {kind} '{name}'", fix=fix, **where)


def problems_from(
    exc: ValidationError, doc: YamlDoc, base: Path_, model: type[BaseModel] | None = None
) -> list[Problem]:
    """Turn pydantic's errors into Problems with file, line and dotted key."""
    out: list[Problem] = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = _strip_union_tag(tuple(err["loc"]), base)
        path = (*base, *loc)
        if path in doc.unresolved:
            continue  # already reported: the variable that should fill it is not set
        key = ".".join(str(p) for p in path)
        kind = err["type"]
        line = doc.line_of(path)
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            fix = f"did you mean '{close[0]}'?" if close else "remove it"
            if allowed and not close:
                fix += f"; allowed keys here: {', '.join(allowed)}"
            out.append(Problem(f"unknown key '{loc[-1]}'", doc.file, line, key, fix))
        elif kind == "missing":
            out.append(
                Problem(
                    f"required key '{loc[-1]}' is missing",
                    doc.file,
                    line,
                    ".".join(str(p) for p in path[:-1]) or None,
                    f"add `{loc[-1]}: ...`",
                )
            )
        elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
            out.append(Problem(err["msg"], doc.file, line, key, "set `type` to a supported kind"))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(Problem(msg, doc.file, line, key))
    return out


SOURCE_TYPES = ("duckdb", "sqlite", "postgres", "postgresql", "sqlalchemy", "snowflake",
                "bigquery")


def _strip_union_tag(loc: tuple[Any, ...], base: Path_) -> tuple[Any, ...]:
    # pydantic puts the discriminator's value into the location: sources.wh.duckdb.path
    if not base and len(loc) > 2 and loc[0] == "sources" and loc[2] in SOURCE_TYPES:
        return (*loc[:2], *loc[3:])
    if base[:1] == ("alerts",) and loc and loc[0] in ALERT_TYPES:
        return loc[1:]
    return loc


def _allowed_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    if model is None:
        return []
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        current = fields[part].annotation
        inner = [a for a in getattr(current, "__args__", ()) if hasattr(a, "model_fields")]
        if inner:
            current = inner[0]
    fields = getattr(current, "model_fields", None)
    # Users write a field's YAML key, which is its alias when it has one (`from`, `schema`).
    return sorted(f.alias or name for name, f in fields.items()) if fields else []


ALERT_TYPES = ("webhook", "slack", "email")

ExtraCheck = Callable[
    [ProjectSettings, dict[str, SyncConfig], dict[str, Located], dict[str, Located]], list[Problem]
]


def load_project_config(
    root: Path, env: Mapping[str, str] | None = None, extra_check: ExtraCheck | None = None,
    *, data: dict[str, Any] | None = None, origin: str = PROJECT_FILE,
) -> ProjectConfig:
    """Load and validate a project folder; raise ConfigError listing every problem.

    ``extra_check`` adds problems found by code that knows more than this module
    (destination plugins validate their own settings), so all are reported at once.
    With ``data``, that is the project's settings instead of the folder's files
    (an inline job); problems then name ``origin`` instead of a file.
    """
    root = root.resolve()
    project_file = root / PROJECT_FILE
    if data is not None:
        docs = [YamlDoc(file=origin, data=data)]
    elif not project_file.is_file():
        raise ConfigError(
            Problem(
                f"no {PROJECT_FILE} in {root}",
                fix=f"run `tidegate init {root}` to create a project, or pass --project DIR",
            )
        )
    else:
        docs = [load_yaml(project_file, PROJECT_FILE, env)]
    syncs_dir = root / SYNCS_DIR
    if syncs_dir.is_dir() and data is None:
        for path in sorted([*syncs_dir.glob("*.yml"), *syncs_dir.glob("*.yaml")]):
            docs.append(load_yaml(path, f"{SYNCS_DIR}/{path.name}", env))
    problems = [p for d in docs for p in d.problems]
    main = docs[0]
    data = main.data if main.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(
            [*problems, Problem("the file must be a mapping of keys", main.file, 1)]
        )
    settings: ProjectSettings | None = None
    try:
        settings = ProjectSettings.model_validate(data)
    except ValidationError as exc:
        problems += problems_from(exc, main, (), ProjectSettings)

    raw_syncs: dict[str, Located] = {}
    for name, body in (data.get("syncs") or {}).items():
        raw_syncs[name] = Located(body, main, ("syncs", name))
    for doc in docs[1:]:
        problems += _collect_sync_file(doc, raw_syncs)

    syncs: dict[str, SyncConfig] = {}
    for name, loc in raw_syncs.items():
        sync = _validate_sync(name, loc, problems)
        if sync is not None:
            syncs[name] = sync
    if any(s.model is not None for s in syncs.values()):
        from tidegate.dbt import resolve_models  # reads manifests only for projects using dbt

        raw_sources = data.get("sources")
        sources: dict[str, Any] = raw_sources if isinstance(raw_sources, dict) else {}
        types = {n: str(b.get("type")) for n, b in sources.items() if isinstance(b, dict)}
        problems += resolve_models(root, syncs, raw_syncs, types)

    dest_origin = {
        name: Located(body if isinstance(body, dict) else {}, main, ("destinations", name))
        for name, body in (data.get("destinations") or {}).items()
    }
    alerts: list[Any] = []
    writeback: Any = None
    if settings is not None:
        alerts = _validate_alerts(settings.alerts, main, problems)
        writeback = _validate_writeback(settings, main, problems)
        problems += _cross_check(settings, syncs, raw_syncs)
        _register_secrets(settings)
        if extra_check is not None:
            problems += extra_check(settings, syncs, raw_syncs, dest_origin)
    if problems or settings is None:
        raise ConfigError(problems)
    return ProjectConfig(
        root=root,
        settings=settings,
        syncs=syncs,
        sync_origin=raw_syncs,
        destination_origin=dest_origin,
        env_vars={v for d in docs for v in d.env_vars},
        alerts=alerts,
        writeback=writeback,
    )


def _validate_writeback(settings: ProjectSettings, doc: YamlDoc, problems: list[Problem]) -> Any:
    if settings.writeback is None:
        return None
    from tidegate.writeback import WritebackConfig

    try:
        config = WritebackConfig.model_validate(settings.writeback)
    except ValidationError as exc:
        problems += problems_from(exc, doc, ("writeback",), WritebackConfig)
        return None
    if config.source not in settings.sources:
        path = ("writeback", "source")
        problems.append(unknown("source", config.source, list(settings.sources), file=doc.file,
                                line=doc.line_of(path), key="writeback.source"))
        return None
    if isinstance(settings.sources[config.source], SnowflakeSourceConfig | BigQuerySourceConfig):
        path = ("writeback", "source")
        problems.append(Problem("write-back goes to DuckDB, SQLite or PostgreSQL sources",
                                doc.file, doc.line_of(path), "writeback.source",
                                "name one of those sources"))
        return None
    return config


def _validate_alerts(raw: list[dict[str, Any]], doc: YamlDoc, problems: list[Problem]) -> list[Any]:
    if not raw:
        return []  # and the mail and TLS modules stay unloaded
    # The alert models live with the code that sends alerts, which builds on this module.
    from pydantic import TypeAdapter

    from tidegate.alerts import (
        AlertConfig,
        EmailAlertConfig,
        SlackAlertConfig,
        WebhookAlertConfig,
        register_secrets,
    )

    models: dict[str, type[BaseModel]] = {
        "webhook": WebhookAlertConfig, "slack": SlackAlertConfig, "email": EmailAlertConfig}
    adapter: TypeAdapter[Any] = TypeAdapter(AlertConfig)
    out = []
    for i, body in enumerate(raw):
        try:
            out.append(adapter.validate_python(body))
        except ValidationError as exc:
            kind = body.get("type") if isinstance(body, dict) else None
            problems += problems_from(exc, doc, ("alerts", i), models.get(str(kind)))
    register_secrets(out)
    return out


def _collect_sync_file(doc: YamlDoc, into: dict[str, Located]) -> list[Problem]:
    data = doc.data
    if data is None or doc.problems:
        return []
    if not isinstance(data, dict):
        return [Problem("a sync file must be a mapping", doc.file, 1, fix="see `tidegate init`")]
    problems: list[Problem] = []
    if "syncs" in data:
        extra = [k for k in data if k != "syncs"]
        for k in extra:
            problems.append(
                Problem(f"unknown key '{k}'", doc.file, doc.line_of((k,)), k,
                        "a sync file holds only `syncs:`, or one sync's keys")
            )
        entries: list[tuple[str, Any, Path_]] = [
            (n, b, ("syncs", n)) for n, b in (data["syncs"] or {}).items()
        ]
    else:
        name = str(data.get("name") or Path(doc.file).stem)
        body = {k: v for k, v in data.items() if k != "name"}
        entries = [(name, body, ())]
    for name, body, path in entries:
        if name in into:
            problems.append(
                Problem(f"sync '{name}' is defined twice (also in {into[name].doc.file})",
                        doc.file, doc.line_of(path) or 1, name, "rename one of them")
            )
            continue
        into[name] = Located(body, doc, path)
    return problems


def _validate_sync(name: str, loc: Located, problems: list[Problem]) -> SyncConfig | None:
    body = loc.data
    if not isinstance(body, dict):
        problems.append(Problem("a sync must be a mapping of keys", loc.doc.file,
                                loc.doc.line_of(loc.path), ".".join(map(str, loc.path)) or name))
        return None
    if "job_type" in body:
        if "mode" in body:
            problems.append(Problem("give `mode` or its alias `job_type`, not both",
                                    loc.doc.file, loc.doc.line_of((*loc.path, "job_type")),
                                    ".".join(map(str, (*loc.path, "job_type"))),
                                    "remove `job_type`"))
            return None
        body = {("mode" if k == "job_type" else k): v for k, v in body.items()}
        loc.doc.lines[(*loc.path, "mode")] = loc.doc.line_of((*loc.path, "job_type")) or 0
    try:
        return SyncConfig.model_validate(body)
    except ValidationError as exc:
        found = problems_from(exc, loc.doc, loc.path, SyncConfig)
        if "primary_key" not in body and "model" not in body and not any(
                "primary_key" in p.message for p in found):
            # Optional in the model (a dbt model can give it), so pydantic does not say so.
            found.append(Problem("required key 'primary_key' is missing", loc.doc.file,
                                 loc.doc.line_of(loc.path), ".".join(map(str, loc.path)) or None,
                                 "add `primary_key: ...`"))
        problems += found
        return None


def _cross_check(
    settings: ProjectSettings, syncs: dict[str, SyncConfig], origin: dict[str, Located]
) -> list[Problem]:
    problems: list[Problem] = []
    for name, sync in syncs.items():
        loc = origin[name]
        for attr, known, kind in (
            ("source", settings.sources, "source"),
            ("destination", settings.destinations, "destination"),
        ):
            value = getattr(sync, attr)
            if value not in known:
                path = (*loc.path, attr)
                problems.append(
                    unknown(kind, value, list(known), file=loc.doc.file,
                            line=loc.doc.line_of(path), key=".".join(map(str, path)) or attr)
                )
        if sync.match is not None:
            src = sync.match.source if isinstance(sync.match.source, list) else [sync.match.source]
            dst = (sync.match.destination if isinstance(sync.match.destination, list)
                   else [sync.match.destination])
            path = (*loc.path, "match")
            file, line, key = loc.doc.file, loc.doc.line_of(path), ".".join(map(str, path))
            if len(src) != len(dst):
                problems.append(Problem("`match.source` and `match.destination` must name "
                                        "as many columns each", file, line, key))
            elif sorted(src) != sorted(sync.key_columns):
                problems.append(Problem(
                    f"`match.source` ({', '.join(src)}) must be the primary key "
                    f"({', '.join(sync.key_columns)})", file, line, key,
                    "match on the primary key columns, or change `primary_key`"))
    return problems


def _register_secrets(settings: ProjectSettings) -> None:
    redact.register_url(settings.state)
    for source in settings.sources.values():
        if isinstance(source, SQLAlchemySourceConfig):
            redact.register_url(source.url.get_secret_value())
        elif isinstance(source, SQLiteSourceConfig):
            redact.register_url(source.url)
        for value in source.__dict__.values():
            if isinstance(value, SecretStr):
                redact.register(value.get_secret_value())
