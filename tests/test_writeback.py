"""Warehouse write-back: run summaries and change logs as tables in DuckDB, PostgreSQL, SQLite."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from pydantic import SecretStr, ValidationError

from conftest import SECRET
from helpers import cli, project, sync, warehouse
from tidegate import Project, audit, runs
from tidegate.config import DuckDBSourceConfig, SQLAlchemySourceConfig
from tidegate.errors import SourceError
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.store import Store
from tidegate.writeback import WritebackConfig, catch_up, mark_written, pending, write_back

ENV = {"HOOK_SECRET": SECRET}
DUCKDB_SOURCE = {"type": "duckdb", "path": "warehouse.duckdb"}
RUN_COLUMNS = [
    "project", "run_id", "sync", "status", "mode", "destination", "object", "full_sync",
    "forced", "revert_of", "started_at", "finished_at", "duration_s", "planned_added",
    "planned_changed", "planned_removed", "planned_unchanged", "planned_invalid",
    "delivered_created", "delivered_updated", "delivered_deleted", "rejected", "error",
    "verdict",
]
CHANGE_COLUMNS = ["project", "run_id", "sync", "key", "field", "old_value", "new_value", "op",
                  "changed_at"]

Rows = tuple[list[dict[str, Any]], list[tuple[Any, ...]]]


def setup(root: Path, receiver: WebhookReceiver, sources: dict[str, Any] | None = None,
          **sync_options: Any) -> None:
    warehouse(root / "warehouse.duckdb", 6)
    project(root, {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(mode="mirror", **sync_options)},
            sources={"warehouse": DUCKDB_SOURCE, **(sources or {})})


def run(root: Path) -> dict[str, Any]:
    with Project.load(root, env=ENV) as p:
        return p.run("accounts")


def two_runs(root: Path, receiver: WebhookReceiver) -> tuple[int, int]:
    """A first run that creates six records, and a second that updates, deletes, rejects."""
    first = run(root)
    warehouse(root / "warehouse.duckdb",
              sql="update accounts set score = 99 where id = 2; delete from accounts where id = 5;"
                  "update accounts set name = 'x' where id = 3")
    receiver.reject_keys([3])
    second = run(root)
    assert first["status"] == "succeeded" and second["status"] == "partial"
    return first["run_id"], second["run_id"]


def write(root: Path, config: WritebackConfig, ids: list[int]) -> None:
    with Project.load(root, env=ENV) as p:
        write_back(config, p.settings.sources[config.source], p.root, p.store, ids,
                   project=p.name)


def expected(root: Path, ids: list[int]) -> Rows:
    """What the warehouse should hold for ``ids``, straight from the state store."""
    with Project.load(root, env=ENV) as p:
        records = [runs.get_run(p.store, i) for i in ids]
        run_rows = [
            {"project": "test", "run_id": r.id, "sync": r.sync, "status": r.status,
             "mode": r.mode, "destination": r.destination, "object": r.object,
             "full_sync": r.full, "forced": r.forced, "revert_of": r.revert_of,
             "started_at": r.started_at, "finished_at": r.finished_at,
             "duration_s": r.duration_s, "planned_added": r.planned.added,
             "planned_changed": r.planned.changed, "planned_removed": r.planned.removed,
             "planned_unchanged": r.planned.unchanged, "planned_invalid": r.planned.invalid,
             "delivered_created": r.delivered["created"],
             "delivered_updated": r.delivered["updated"],
             "delivered_deleted": r.delivered["deleted"], "rejected": r.rejected,
             "error": r.error, "verdict": r.verdict}
            for r in records
        ]
        change_rows = [
            ("test", r.id, r.sync, c["key"], c["field"], c["old"], c["new"], c["op"],
             datetime.fromisoformat(c["at"]))
            for r in records for c in audit.change_table(p.store, r.id).to_pylist()
        ]
    return run_rows, sorted(change_rows, key=_order)


def _order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple("" if v is None else str(v) for v in row[:6])


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int):  # DuckDB's epoch_us
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
    if isinstance(value, str):  # SQLite keeps ISO 8601 text
        return datetime.fromisoformat(value)
    assert isinstance(value, datetime) and value.tzinfo is not None
    return value.astimezone(UTC)


def normal(names: list[str], run_rows: list[tuple[Any, ...]], change_names: list[str],
           change_rows: list[tuple[Any, ...]]) -> Rows:
    """Rows read back from any warehouse, in the types ``expected`` uses."""
    assert names == RUN_COLUMNS and change_names == CHANGE_COLUMNS
    out = []
    for row in run_rows:
        m = dict(zip(names, row, strict=True))
        m.update(started_at=_time(m["started_at"]), finished_at=_time(m["finished_at"]),
                 full_sync=bool(m["full_sync"]), forced=bool(m["forced"]),
                 verdict=json.loads(m["verdict"]) if m["verdict"] is not None else None)
        out.append(m)
    changes = [(*row[:8], _time(row[8])) for row in change_rows]
    return out, sorted(changes, key=_order)


def duckdb_rows(path: Path, schema: str = "tidegate") -> Rows:
    with duckdb.connect(str(path), read_only=True) as con:
        # epoch_us: reading TIMESTAMPTZ as datetime would need pytz
        got = con.sql(f"select * replace (epoch_us(started_at) as started_at, "
                      f"epoch_us(finished_at) as finished_at) from {schema}.sync_runs "
                      "order by run_id")
        names, rows = got.columns, got.fetchall()
        changes = con.sql(f"select * replace (epoch_us(changed_at) as changed_at) "
                          f"from {schema}.sync_changes")
        return normal(names, rows, changes.columns, changes.fetchall())


def postgres_rows(url: str, schema: str) -> Rows:
    with psycopg.connect(url) as conn:
        cur = conn.execute(f"select * from {schema}.sync_runs order by run_id")
        names, rows = [d.name for d in cur.description or ()], cur.fetchall()
        cur = conn.execute(f"select * from {schema}.sync_changes")
        return normal(names, rows, [d.name for d in cur.description or ()], cur.fetchall())


def sqlite_rows(path: Path, prefix: str = "tidegate") -> Rows:
    with closing(sqlite3.connect(path)) as conn:
        cur = conn.execute(f"select * from {prefix}_sync_runs order by run_id")
        names, rows = [d[0] for d in cur.description], cur.fetchall()
        cur = conn.execute(f"select * from {prefix}_sync_changes")
        return normal(names, rows, [d[0] for d in cur.description], cur.fetchall())


def check_history(root: Path, receiver: WebhookReceiver, config: WritebackConfig,
                  read: Callable[[], Rows]) -> None:
    """Two runs written back: rows equal the run records and the audit log; idempotent."""
    first, second = two_runs(root, receiver)
    with Project.load(root, env=ENV) as p:
        ids = pending(p.store)
    assert ids == [first, second]
    write(root, config, ids)
    want = expected(root, ids)
    got = read()
    assert got == want
    run_rows, change_rows = got
    assert [(r["status"], r["delivered_updated"], r["delivered_deleted"], r["rejected"])
            for r in run_rows] == [("succeeded", 0, 0, 0), ("partial", 1, 1, 1)]
    assert len(change_rows) == 6 * 2 + 3
    assert ("test", second, "accounts", "2", "score", "26", "99", "updated") in \
        [c[:8] for c in change_rows]
    assert ("test", second, "accounts", "5", "name", '"acct 5"', None, "deleted") in \
        [c[:8] for c in change_rows]

    write(root, config, ids)  # again: each run's rows are replaced, never duplicated
    assert read() == want
    with Project.load(root, env=ENV) as p:
        mark_written(p.store, ids)
        assert pending(p.store) == []

    # The next run still reads its model (nothing is left open), and is caught up.
    warehouse(root / "warehouse.duckdb", sql="update accounts set score = 7 where id = 1")
    third = run(root)["run_id"]
    with Project.load(root, env=ENV) as p:
        assert pending(p.store) == [third]
        source = p.settings.sources[config.source]
        assert catch_up(config, source, p.root, p.store, project=p.name) == [third]
        assert pending(p.store) == []
    assert read() == expected(root, [first, second, third])


def test_duckdb_warehouse_gets_history_in_the_model_file(
    project_dir: Path, receiver: WebhookReceiver
) -> None:
    setup(project_dir, receiver)
    path = project_dir / "warehouse.duckdb"
    check_history(project_dir, receiver, WritebackConfig(source="warehouse"),
                  lambda: duckdb_rows(path))
    with duckdb.connect(str(path), read_only=True) as con:
        types = dict(con.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'tidegate' and table_name in ('sync_runs', 'sync_changes')"
        ).fetchall())
        assert con.execute("select count(*) from main.accounts").fetchone() == (5,)
    assert types["started_at"] == types["changed_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["run_id"] == "BIGINT" and types["full_sync"] == "BOOLEAN"


def test_postgres_warehouse_gets_history_in_its_schema(
    project_dir: Path, receiver: WebhookReceiver, pg_url: str
) -> None:
    setup(project_dir, receiver, {"pg": {"type": "postgres", "url": pg_url}})
    config = WritebackConfig.model_validate({"source": "pg", "schema": "analytics"})
    check_history(project_dir, receiver, config, lambda: postgres_rows(pg_url, "analytics"))
    with psycopg.connect(pg_url) as conn:
        types = dict(conn.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'analytics'").fetchall())
        keys = conn.execute(
            "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
            "and a.attnum = any(i.indkey) where i.indrelid = 'analytics.sync_runs'::regclass "
            "and i.indisprimary order by a.attname").fetchall()
    assert types["started_at"] == types["changed_at"] == "timestamp with time zone"
    assert types["verdict"] == types["key"] == "text"
    assert keys == [("project",), ("run_id",)]


def test_a_failed_write_changes_nothing_in_the_warehouse(
    project_dir: Path, receiver: WebhookReceiver, pg_url: str
) -> None:
    setup(project_dir, receiver, {"pg": {"type": "postgres", "url": pg_url}})
    first, second = two_runs(project_dir, receiver)
    config = WritebackConfig(source="pg")
    write(project_dir, config, [first])
    before = postgres_rows(pg_url, "tidegate")
    with psycopg.connect(pg_url) as conn:
        # The second run deleted a record: its change rows break this, mid-COPY.
        conn.execute("alter table tidegate.sync_changes add constraint no_deletes "
                     "check (op <> 'deleted')")
    with pytest.raises(SourceError) as caught:
        write(project_dir, config, [first, second])
    assert str(caught.value) == ("writeback source 'pg': cannot write: new row for relation "
                                 '"sync_changes" violates check constraint "no_deletes"')
    assert postgres_rows(pg_url, "tidegate") == before  # run 1 was not deleted either


def test_bookkeeping_works_on_a_postgres_state_store(project_dir: Path, pg_url: str) -> None:
    store = Store(pg_url, project_dir)
    try:
        ids = [runs.start_run(store, sync=name, mode="upsert", destination="hook",
                              object="Account", full=False) for name in ("a", "b", "c")]
        assert pending(store) == []
        for run_id in ids:
            runs.finish_run(store, run_id, "succeeded", None, {})
        assert pending(store) == ids and pending(store, limit=2) == ids[:2]
        mark_written(store, ids[:2])
        mark_written(store, ids[:2])  # marking again only moves the time
        assert pending(store) == [ids[2]]
    finally:
        store.close()
    again = Store(pg_url, project_dir)  # the table survives; a new store finds it
    try:
        assert pending(again) == [ids[2]]
    finally:
        again.close()


def test_sqlite_warehouse_gets_history_in_prefixed_tables(
    project_dir: Path, receiver: WebhookReceiver
) -> None:
    setup(project_dir, receiver, {"lite": {"type": "sqlite", "path": "history.db"}})
    check_history(project_dir, receiver, WritebackConfig(source="lite"),
                  lambda: sqlite_rows(project_dir / "history.db"))


def test_without_changes_only_runs_are_written(project_dir: Path,
                                               receiver: WebhookReceiver) -> None:
    setup(project_dir, receiver, {"lite": {"type": "sqlite", "path": "history.db"}})
    first = run(project_dir)["run_id"]
    write(project_dir, WritebackConfig(source="lite", changes=False), [first])
    with closing(sqlite3.connect(project_dir / "history.db")) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        assert conn.execute("select run_id, status from tidegate_sync_runs").fetchall() == \
            [(first, "succeeded")]
    assert "tidegate_sync_changes" not in tables


def test_a_held_run_is_written_again_once_approved(project_dir: Path,
                                                   receiver: WebhookReceiver) -> None:
    setup(project_dir, receiver, guardrails={"max_changed_pct": 10})
    config = WritebackConfig(source="warehouse")
    path = project_dir / "warehouse.duckdb"
    first = run(project_dir)["run_id"]
    warehouse(path, sql="update accounts set score = 0 where id in (1, 2)")
    held = run(project_dir)
    assert held["status"] == "held"
    with Project.load(project_dir, env=ENV) as p:
        source = p.settings.sources["warehouse"]
        assert catch_up(config, source, p.root, p.store, project=p.name) == [first, held["run_id"]]
        assert pending(p.store) == []
    assert [r["status"] for r in duckdb_rows(path)[0]] == ["succeeded", "held"]

    with Project.load(project_dir, env=ENV) as p:
        assert p.approve(held["run_id"])["status"] == "succeeded"
        # It finished again after it was written: its final outcome is pending.
        assert pending(p.store) == [held["run_id"]]
        assert catch_up(config, source, p.root, p.store, project=p.name) == [held["run_id"]]
        # A run still going is not pending until it ends.
        going = runs.start_run(p.store, sync="other", mode="upsert", destination="hook",
                               object="Account", full=False)
        assert pending(p.store) == []
        runs.finish_run(p.store, going, "failed", "stopped", {})
        assert pending(p.store) == [going]
    run_rows, change_rows = duckdb_rows(path)
    assert [(r["run_id"], r["status"], r["delivered_updated"]) for r in run_rows] == \
        [(first, "succeeded", 0), (held["run_id"], "succeeded", 2)]
    assert sorted(c[3:5] for c in change_rows if c[1] == held["run_id"]) == \
        [("1", "score"), ("2", "score")]
    assert (run_rows, change_rows) == expected(project_dir, [first, held["run_id"]])


def test_a_locked_duckdb_file_is_a_clear_error_and_the_runs_stay_pending(
    project_dir: Path, receiver: WebhookReceiver
) -> None:
    setup(project_dir, receiver)
    first = run(project_dir)["run_id"]
    path = project_dir / "warehouse.duckdb"
    with subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
         "print('open', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as holder:  # holds the file open for writing until its stdin closes
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "open"
            with Project.load(project_dir, env=ENV) as p:
                with pytest.raises(SourceError) as caught:
                    catch_up(WritebackConfig(source="warehouse"),
                             p.settings.sources["warehouse"], p.root, p.store, project=p.name)
                assert pending(p.store) == [first]
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
    message = str(caught.value)
    assert "writeback source 'warehouse'" in message and "lock" in message
    assert str(path) in message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_warehouse_is_a_source_error_without_the_password(
    project_dir: Path, receiver: WebhookReceiver
) -> None:
    setup(project_dir, receiver)
    first = run(project_dir)["run_id"]
    password = "Wb-s3cret-pw-42"
    down = SQLAlchemySourceConfig(
        type="postgres",
        url=SecretStr(f"postgresql://analyst:{password}@127.0.0.1:{free_port()}/warehouse"))
    with Project.load(project_dir, env=ENV) as p:
        with pytest.raises(SourceError) as caught:
            catch_up(WritebackConfig(source="history"), down, p.root, p.store, project=p.name)
        assert pending(p.store) == [first]  # the next write-back catches up
        message = str(caught.value)
        assert message.startswith("writeback source 'history': cannot connect")
        assert password not in message

        with pytest.raises(SourceError, match="writeback source 'mem': an in-memory"):
            write_back(WritebackConfig(source="mem"), DuckDBSourceConfig(type="duckdb"),
                       p.root, p.store, [first], project=p.name)
        nodriver = SQLAlchemySourceConfig(
            type="sqlalchemy", url=SecretStr(f"nosuchdb://u:{password}@host/db"))
        with pytest.raises(SourceError, match="writeback source 'odd': cannot use") as caught:
            write_back(WritebackConfig(source="odd"), nodriver, p.root, p.store, [first],
                       project=p.name)
        assert password not in str(caught.value)


def test_writeback_settings_are_validated() -> None:
    default = WritebackConfig.model_validate({"source": "warehouse"})
    assert (default.source, default.schema_, default.changes) == ("warehouse", "tidegate", True)
    given = WritebackConfig.model_validate({"source": "wh", "schema": "Sync_History2",
                                            "changes": False})
    assert (given.schema_, given.changes) == ("Sync_History2", False)

    for bad in ("sync-history", "1st", "a.b", "", "x" * 64, 'x"; drop table y; --'):
        with pytest.raises(ValidationError) as caught:
            WritebackConfig.model_validate({"source": "wh", "schema": bad})
        (error,) = caught.value.errors()
        assert error["loc"] == ("schema",) and "plain identifier" in error["msg"]

    with pytest.raises(ValidationError) as caught:
        WritebackConfig.model_validate({"source": "wh", "shcema": "x"})
    assert [(e["type"], e["loc"]) for e in caught.value.errors()] == \
        [("extra_forbidden", ("shcema",))]
    with pytest.raises(ValidationError) as caught:
        WritebackConfig.model_validate({"schema": "x"})
    assert [(e["type"], e["loc"]) for e in caught.value.errors()] == [("missing", ("source",))]


def test_runs_write_themselves_back_and_catch_up_after_a_failure(
    project_dir: Path, receiver: WebhookReceiver, pg_url: str
) -> None:
    warehouse(project_dir / "warehouse.duckdb", 6)
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(mode="mirror")},
            sources={"warehouse": DUCKDB_SOURCE, "history": {"type": "postgres", "url": pg_url}},
            writeback={"source": "history", "schema": "reverse_etl"})
    first = run(project_dir)

    def counts() -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_url) as conn:
            return conn.execute(
                "select r.run_id, r.status, count(c.run_id) from reverse_etl.sync_runs r "
                "left join reverse_etl.sync_changes c using (project, run_id) "
                "group by 1, 2 order by 1").fetchall()

    assert counts() == [(first["run_id"], "succeeded", 12)]  # six records, two fields each
    # The warehouse is down for the next run: the run succeeds, its history waits.
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(mode="mirror")},
            sources={"warehouse": DUCKDB_SOURCE,
                     "history": {"type": "postgres", "url": f"postgresql://nobody@127.0.0.1:"
                                                          f"{free_port()}/db"}},
            writeback={"source": "history", "schema": "reverse_etl"})
    warehouse(project_dir / "warehouse.duckdb", sql="update accounts set score = 1 where id = 0")
    second = run(project_dir)
    assert second["status"] == "succeeded"
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(mode="mirror")},
            sources={"warehouse": DUCKDB_SOURCE, "history": {"type": "postgres", "url": pg_url}},
            writeback={"source": "history", "schema": "reverse_etl"})
    third = run(project_dir)
    assert counts() == [(first["run_id"], "succeeded", 12), (second["run_id"], "succeeded", 1),
                        (third["run_id"], "succeeded", 0)]


def test_writeback_config_problems_name_the_line(project_dir: Path,
                                                 receiver: WebhookReceiver) -> None:
    setup(project_dir, receiver)
    config = (project_dir / "tidegate.yml").read_text()
    (project_dir / "tidegate.yml").write_text(
        config + "writeback:\n  source: warehouse\n  shcema: history\n")
    result = cli("validate", "--project", str(project_dir), env=ENV)
    assert result.returncode == 2
    assert "writeback.shcema: unknown key 'shcema'" in result.stderr
    assert "did you mean 'schema'" in result.stderr
    (project_dir / "tidegate.yml").write_text(config + "writeback:\n  source: warehous\n")
    result = cli("validate", "--project", str(project_dir), env=ENV)
    assert result.returncode == 2
    assert "writeback.source: unknown source 'warehous'" in result.stderr
    assert "did you mean 'warehouse'" in result.stderr
