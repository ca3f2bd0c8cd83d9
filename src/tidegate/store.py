"""The state database: SQLite by default, PostgreSQL by URL; its tables and migrations.

One database holds both what was acknowledged (``tidegate_state``) and what was
done (``tidegate_runs``, ``tidegate_row_errors``), so a batch's state and the
run's progress commit in one transaction. Migrations are numbered lists of DDL
applied in order; the applied number is kept in ``tidegate_schema``.

The store speaks DB-API directly (``sqlite3``, ``psycopg``) through ``Tx``:
its SQL is a few dozen plain statements, and every command line run would
otherwise pay for importing a whole SQL toolkit before doing anything.
Statements use ``?`` placeholders; ``Tx`` adapts them for psycopg.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tidegate.errors import ConfigError, FatalError, Problem
from tidegate.redact import redact, redact_url

# (sqlite, postgresql) spellings of the few types that differ.
_TYPES = {
    "serial": ("integer primary key autoincrement", "bigserial primary key"),
    "bool": ("integer", "boolean"),
    "blob": ("blob", "bytea"),
}


def _ddl(dialect: str, text: str) -> str:
    i = 0 if dialect == "sqlite" else 1
    for name, spelled in _TYPES.items():
        text = text.replace("{" + name + "}", spelled[i])
    return text


V1: list[str | Callable[[Tx], None]] = [
    """create table if not exists tidegate_runs (
        id {serial},
        sync text not null,
        status text not null,
        mode text not null,
        destination text not null,
        object text not null,
        full_sync {bool} not null default false,
        started_at text not null,
        finished_at text,
        heartbeat_at text,
        pid integer,
        host text,
        planned_added bigint not null default 0,
        planned_changed bigint not null default 0,
        planned_removed bigint not null default 0,
        planned_unchanged bigint not null default 0,
        planned_invalid bigint not null default 0,
        to_send bigint not null default 0,
        delivered_created bigint not null default 0,
        delivered_updated bigint not null default 0,
        delivered_deleted bigint not null default 0,
        rejected bigint not null default 0,
        batches bigint not null default 0,
        error text,
        timings text
    )""",
    "create index if not exists ix_tidegate_runs_sync on tidegate_runs (sync, id)",
    """create table if not exists tidegate_state (
        sync text not null,
        key text not null,
        hash bigint,
        record text,
        run_id bigint,
        updated_at text,
        primary key (sync, key)
    )""",
    """create table if not exists tidegate_row_errors (
        id {serial},
        run_id bigint not null,
        sync text not null,
        key text not null,
        kind text not null,
        error text not null,
        attempt integer not null default 1,
        record text
    )""",
    "create index if not exists ix_tidegate_row_errors_run on tidegate_row_errors (run_id)",
    "create index if not exists ix_tidegate_row_errors_sync_key "
    "on tidegate_row_errors (sync, key)",
    # One row per sync, bumped in every transaction that changes its state, so a
    # local snapshot of (key, hash) can tell whether it is still the truth.
    """create table if not exists tidegate_state_versions (
        sync text primary key,
        version bigint not null
    )""",
]



def _rows_to_segments(tx: Tx) -> None:
    """Move V1's row-per-key state into segments, a sync at a time, in large parts."""
    import pyarrow as pa

    from tidegate import segments

    syncs = [r[0] for r in tx.execute("select distinct sync from tidegate_state")]
    for sync in syncs:
        seq = int(tx.scalar("select version from tidegate_state_versions where sync = ?",
                            (sync,)) or 0)
        after = ""
        while True:
            rows = tx.execute(
                "select key, hash, record from tidegate_state where sync = ? and key > ? "
                "order by key limit ?", (sync, after, segments.SEGMENT_ROWS))
            if not rows:
                break
            keys, hashes, records = zip(*rows, strict=True)
            tx.execute(
                "insert into tidegate_state_segments (sync, seq, run_id, rows, created_at, "
                "keys, records) values (?, ?, null, ?, ?, ?, ?)",
                (sync, seq, len(rows), _now_text(),
                 segments.keys_blob(pa.array(keys, pa.string()), pa.array(hashes, pa.int64()),
                                    pa.array([True] * len(rows), pa.bool_())),
                 segments.records_blob(pa.array(records, pa.string()))),
            )
            after = keys[-1]


# State moves from one row per key to one row per acknowledged batch (see
# ``segments``): committing a batch costs one insert however many records it has.
V2: list[str | Callable[[Tx], None]] = [
    """create table if not exists tidegate_state_segments (
        id {serial},
        sync text not null,
        seq bigint not null,
        run_id bigint,
        rows bigint not null,
        created_at text not null,
        keys {blob} not null,
        records {blob} not null
    )""",
    "create index if not exists ix_tidegate_state_segments_sync "
    "on tidegate_state_segments (sync, id)",
    _rows_to_segments,
    "drop table tidegate_state",
]

# Guardrails: what a run's plan was judged to be, and whether it was forced or approved;
# and the audit log of every delivered change.
V3: list[str | Callable[[Tx], None]] = [
    "alter table tidegate_runs add column verdict text",
    "alter table tidegate_runs add column plan_samples text",
    "alter table tidegate_runs add column plan_digest text",
    "alter table tidegate_runs add column forced {bool} not null default false",
    "alter table tidegate_runs add column approved_at text",
    "alter table tidegate_runs add column revert_of bigint",
    "alter table tidegate_runs add column destination_report text",
    # The audit log: a commit's delivered changes as Arrow (see ``tidegate.audit``).
    """create table if not exists tidegate_changes (
        id {serial},
        run_id bigint not null,
        sync text not null,
        rows bigint not null,
        created_at text not null,
        changes {blob} not null,
        records {blob} not null
    )""",
    "create index if not exists ix_tidegate_changes_run on tidegate_changes (run_id, id)",
    "create table if not exists tidegate_meta (name text primary key, value text not null)",
    # A destination's notes about work in flight (see ``tidegate.journal``).
    """create table if not exists tidegate_journal (
        sync text not null,
        name text not null,
        value text not null,
        updated_at text not null,
        primary key (sync, name)
    )""",
]

# Shards: a run may cover only the keys of one shard of its sync (see ``tidegate.shard``).
V4: list[str | Callable[[Tx], None]] = [
    "alter table tidegate_runs add column shard integer",
    "alter table tidegate_runs add column shards integer",
]

# `tidegate serve`: a stable numeric id per sync name (what Census- and Hightouch-style
# clients address), runs queued before they start, and each schedule's last tick.
V5: list[str | Callable[[Tx], None]] = [
    """create table if not exists tidegate_syncs (
        id {serial},
        name text not null unique,
        created_at text not null
    )""",
    "alter table tidegate_runs add column queued_at text",
    "alter table tidegate_runs add column triggered_by text",
    """create table if not exists tidegate_schedule (
        sync text primary key,
        cron text not null,
        last_tick text not null
    )""",
]

MIGRATIONS: list[list[str | Callable[[Tx], None]]] = [V1, V2, V3, V4, V5]


# Blob bytes committed between two background checkpoints (see ``_Checkpointer``).
_CHECKPOINT_BYTES = 1 << 20


class Tx:
    """One open transaction: ``execute`` returns rows as tuples, ``rows`` as dicts."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self._cur = cursor
        self.dialect = dialect
        self.blob_bytes = 0  # bytes of the blobs written: what the log grows by, about

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.blob_bytes += sum(len(p) for p in params if isinstance(p, bytes | memoryview))
        self._cur.execute(self._sql(sql), tuple(params))
        return list(self._cur.fetchall()) if self._cur.description else []

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._cur.execute(self._sql(sql), tuple(params))
        names = [d[0] for d in self._cur.description]
        return [dict(zip(names, row, strict=True)) for row in self._cur.fetchall()]

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(self._sql(sql), rows)

    def cursor(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The DB-API cursor after ``sql``, for reading a large result in parts."""
        self._cur.execute(self._sql(sql), tuple(params))
        return self._cur

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        found = self.execute(sql, params)
        return found[0][0] if found else None

    def insert_id(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT into a table with an ``id`` column and return the new id."""
        if self.dialect == "sqlite":
            self._cur.execute(sql, tuple(params))
            return int(self._cur.lastrowid)
        self._cur.execute(self._sql(sql) + " returning id", tuple(params))
        return int(self._cur.fetchone()[0])

    def lock(self, name: str) -> None:
        """Serialise writers on ``name`` until the transaction ends.

        SQLite transactions here begin IMMEDIATE, which already serialises writers.
        """
        if self.dialect == "postgresql":
            self._cur.execute("select pg_advisory_xact_lock(%s)", (_lock_key(name),))


class _Checkpointer:
    """Copies a SQLite store's write-ahead log into the database file on a thread of its own.

    A commit only appends to the log; SQLite copies the log into the database
    (a checkpoint, with two fsyncs) inside the commit that finds it past
    ``wal_autocheckpoint`` pages, and once more as the store closes. A first
    sync writes megabytes of state: those inline copies held its commits up
    for tens of milliseconds each (cutting and sending wait on a commit that
    falls behind), and the copy at close was a run's last 40 ms. Here, once
    commits have written ``every`` bytes of blobs, a second connection makes a
    passive checkpoint meanwhile: it takes no lock that a commit waits for, and
    what is left for the close is at most about ``every`` bytes. SQLite's own
    checkpoints stay as they were, should the thread fall behind or fail; a
    process forked from the one that started it starts its own.
    """

    def __init__(self, path: Path, every: int) -> None:
        self._path, self._every = path, every
        self._pending = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = 0

    def wrote(self, blob_bytes: int) -> None:
        """Called after each commit with the bytes of blobs it wrote."""
        self._pending += blob_bytes
        if self._pending < self._every:
            return
        self._pending = 0
        if self._thread is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="tidegate-checkpoint",
                                            daemon=True)
            self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                # PASSIVE: copy what no reader still needs, wait for nobody.
                conn.execute("pragma wal_checkpoint(passive)").fetchall()
        except sqlite3.Error:
            return  # the inline checkpoints still happen: this only makes them small
        finally:
            conn.close()

    def stop(self) -> None:
        """Let a checkpoint in progress finish, then end the thread and its connection."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self._stopping = True
        self._wake.set()
        thread.join()


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
        self._lock = threading.RLock()
        self._conn: Any = None
        self._checkpointer: _Checkpointer | None = None
        try:
            self._conn = self._connect()
            self.migrate()
        except (sqlite3.Error, OSError) as exc:
            raise FatalError(
                f"cannot open the state store {self.display_url}: {redact(str(exc))}"
            ) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise FatalError(f"cannot open the state store {self.display_url}: "
                                 f"{redact(str(exc)).strip()}") from exc
            raise

    @property
    def identity(self) -> str:
        """Names this store without its password, for labelling local snapshots."""
        return self.display_url

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            path = Path(self.url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so two runs
            # cannot both read "nothing running" before either of them writes.
            conn = sqlite3.connect(path, timeout=60, isolation_level=None,
                                   check_same_thread=False)
            # Segments are blobs of hundreds of kilobytes: with SQLite's default 4 KiB
            # pages a first sync writes thousands of overflow pages one frame at a time.
            # Only a new database takes a page size; an existing one keeps its own.
            conn.execute("pragma page_size=16384")
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=normal")
            # A commit copies the log into the database (and syncs) itself only past 512
            # pages (8 MB): ``_Checkpointer`` does it first, on its own thread, after
            # every megabyte of blobs; a first sync of 200,000 rows writes ~10 MB.
            conn.execute("pragma wal_autocheckpoint=512")
            conn.execute("pragma busy_timeout=60000")
            self._checkpointer = _Checkpointer(path, _CHECKPOINT_BYTES)
            return conn
        import psycopg

        return psycopg.connect(self.url, connect_timeout=15, autocommit=True)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction that commits when the block ends and rolls back on error."""
        with self._lock:
            if self.dialect == "sqlite":
                cur = self._conn.cursor()
                cur.execute("begin immediate")
                tx = Tx(cur, self.dialect)
                try:
                    yield tx
                except BaseException:
                    cur.execute("rollback")
                    raise
                cur.execute("commit")
                cur.close()
                if tx.blob_bytes and self._checkpointer is not None:
                    self._checkpointer.wrote(tx.blob_bytes)
                return
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            with self._conn.transaction(), self._conn.cursor() as cur:
                yield Tx(cur, self.dialect)

    def migrate(self) -> None:
        with self.transaction() as tx:
            tx.lock("tidegate-migrate")
            tx.execute("create table if not exists tidegate_schema (version integer not null)")
            current = int(tx.scalar("select max(version) from tidegate_schema") or 0)
            if current > len(MIGRATIONS):
                raise FatalError(
                    f"the state store {self.display_url} was written by a newer tidegate "
                    f"(schema {current}); upgrade tidegate"
                )
            for version in range(current, len(MIGRATIONS)):
                for step in MIGRATIONS[version]:
                    if isinstance(step, str):
                        tx.execute(_ddl(self.dialect, step))
                    else:
                        step(tx)
            if current < len(MIGRATIONS):
                tx.execute("delete from tidegate_schema")
                tx.execute("insert into tidegate_schema (version) values (?)",
                           (len(MIGRATIONS),))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _resolve(url: str, root: Path) -> str:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{(root / url.removeprefix('sqlite:///')).resolve()}"
    if url.startswith("postgres://"):
        return "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql+psycopg://"):
        return "postgresql://" + url.removeprefix("postgresql+psycopg://")
    return url


def _now_text() -> str:
    return datetime.now(UTC).isoformat()


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31
