"""The state database: SQLite by default, PostgreSQL by URL; its tables and migrations.

One database holds both what was acknowledged (``tidegate_state``) and what was
done (``tidegate_runs``, ``tidegate_row_errors``), so a batch's state and the
run's progress commit in one transaction. Migrations are numbered functions
applied in order; the applied number is kept in ``tidegate_schema``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from tidegate.errors import ConfigError, FatalError, Problem
from tidegate.redact import redact, redact_url

metadata = sa.MetaData()

schema_table = sa.Table(
    "tidegate_schema", metadata, sa.Column("version", sa.Integer, nullable=False)
)

runs_table = sa.Table(
    "tidegate_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("destination", sa.String(200), nullable=False),
    sa.Column("object", sa.String(500), nullable=False),
    sa.Column("full_sync", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("pid", sa.Integer),
    sa.Column("host", sa.String(255)),
    sa.Column("planned_added", sa.Integer, nullable=False, default=0),
    sa.Column("planned_changed", sa.Integer, nullable=False, default=0),
    sa.Column("planned_removed", sa.Integer, nullable=False, default=0),
    sa.Column("planned_unchanged", sa.Integer, nullable=False, default=0),
    sa.Column("planned_invalid", sa.Integer, nullable=False, default=0),
    sa.Column("to_send", sa.Integer, nullable=False, default=0),
    sa.Column("delivered_created", sa.Integer, nullable=False, default=0),
    sa.Column("delivered_updated", sa.Integer, nullable=False, default=0),
    sa.Column("delivered_deleted", sa.Integer, nullable=False, default=0),
    sa.Column("rejected", sa.Integer, nullable=False, default=0),
    sa.Column("batches", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("timings", sa.JSON),
)

state_table = sa.Table(
    "tidegate_state",
    metadata,
    sa.Column("sync", sa.String(200), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("hash", sa.BigInteger),
    sa.Column("record", sa.Text),
    sa.Column("run_id", sa.Integer),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

row_errors_table = sa.Table(
    "tidegate_row_errors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("sync", sa.String(200), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # invalid | rejected
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("record", sa.Text),
    sa.Index("ix_tidegate_row_errors_sync_key", "sync", "key"),
)


# One row per sync, bumped in every transaction that changes its state, so a
# local snapshot of (key, hash) can tell whether it is still the truth.
versions_table = sa.Table(
    "tidegate_state_versions",
    metadata,
    sa.Column("sync", sa.String(200), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    for table in (runs_table, state_table, row_errors_table, versions_table):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v1]


class Store:
    """A migrated state database."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = _resolve(url, root)
        self.display_url = redact_url(self.url)
        self.dialect = self.url.split(":", 1)[0].split("+", 1)[0]
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(
                Problem(
                    f"state store '{self.display_url}' is not supported",
                    key="state",
                    fix="use sqlite:///path/state.db or postgresql://user@host/db",
                )
            )
        if self.dialect == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(_engine_url(self.url), **_engine_args(self.dialect))
        if self.dialect == "sqlite":
            _sqlite_transactions(self.engine)
        try:
            self.migrate()
        except sa_exc.OperationalError as exc:
            raise FatalError(
                f"cannot open the state store {self.display_url}: "
                f"{redact(str(exc.orig or exc)).strip()}"
            ) from exc

    def migrate(self) -> None:
        with self.engine.begin() as conn:
            self.lock(conn, "tidegate-migrate")
            schema_table.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar() or 0
            if current > len(MIGRATIONS):
                raise FatalError(
                    f"the state store {self.display_url} was written by a newer tidegate "
                    f"(schema {current}); upgrade tidegate"
                )
            for version in range(current, len(MIGRATIONS)):
                MIGRATIONS[version](conn)
            if current < len(MIGRATIONS):
                conn.execute(schema_table.delete())
                conn.execute(schema_table.insert().values(version=len(MIGRATIONS)))

    def lock(self, conn: sa.Connection, name: str) -> None:
        """Serialise writers on ``name`` until the transaction ends.

        SQLite transactions here begin IMMEDIATE, which already serialises writers.
        """
        if self.dialect == "postgresql":
            conn.execute(sa.text("select pg_advisory_xact_lock(:k)"), {"k": _lock_key(name)})

    @property
    def identity(self) -> str:
        """Names this store without its password, for labelling local snapshots."""
        return self.display_url

    def close(self) -> None:
        self.engine.dispose()


def _resolve(url: str, root: Path) -> str:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{(root / url.removeprefix('sqlite:///')).resolve()}"
    if url.startswith("postgres://"):
        return "postgresql://" + url.removeprefix("postgres://")
    return url


def _engine_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _engine_args(dialect: str) -> dict[str, Any]:
    if dialect == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _sqlite_transactions(engine: sa.Engine) -> None:
    # pysqlite defers BEGIN until the first write, so two runs could both read
    # "nothing running" before either writes; BEGIN IMMEDIATE takes the lock first.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("pragma journal_mode=wal")
        cur.execute("pragma synchronous=normal")
        cur.execute("pragma busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("begin immediate")


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31
