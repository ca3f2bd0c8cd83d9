"""``diff: warehouse``: the conformance kit's modes, bad keys and SIGKILL case with the model
and the state copy in DuckDB, a real PostgreSQL server and a local Snowflake (fakesnow);
what leaves the warehouse; the copy caught up after it falls behind the store."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import psycopg
import pytest
import yaml

from test_conformance_webhook import WebhookUnderTest
from tidegate import segments
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.testing.conformance import (
    ConformanceKit,
    DestinationUnderTest,
    KitEnv,
    RejectionScenarios,
    Row,
    TransientScenarios,
    make_rows,
)
from tidegate.warehouse_diff import VERSIONS, copy_table


class WarehouseDiffWebhook(WebhookUnderTest):
    def sync_options(self) -> dict[str, Any]:
        return {"diff": "warehouse"}


class RemoteKitEnv(KitEnv):
    """The kit's project with its model in another warehouse."""

    source: ClassVar[dict[str, Any]] = {}

    def write_project(self, mode: str, syncs: dict[str, str] | None = None,
                      **options: Any) -> None:
        super().write_project(mode, syncs, **options)
        path = self.root / "tidegate.yml"
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["sources"] = {"warehouse": self.source}
        path.write_text(yaml.safe_dump(config), encoding="utf-8")


class PostgresKitEnv(RemoteKitEnv):
    def __init__(self, root: Path, target: DestinationUnderTest, batch: int, url: str) -> None:
        super().__init__(root, target, batch)
        self.url = url
        self.source = {"type": "postgres", "url": url}

    def set_model(self, rows: list[Row]) -> None:
        self.rows = list(rows)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("drop table if exists items")
            conn.execute("create table items (id integer, name text, score integer, "
                         "active boolean)")
            if rows:
                with conn.cursor() as cur, cur.copy("copy items from stdin") as copy:
                    for row in rows:
                        copy.write_row(row)


class SnowflakeKitEnv(RemoteKitEnv):
    def __init__(self, root: Path, target: DestinationUnderTest, batch: int,
                 server: dict[str, Any]) -> None:
        super().__init__(root, target, batch)
        self.server = server
        self.database = f"KIT_{uuid.uuid4().hex[:8]}".upper()
        self.source = {"type": "snowflake", "account": server["account"],
                       "user": server["user"], "password": server["password"],
                       "host": server["host"], "port": server["port"], "protocol": "http",
                       "database": self.database, "schema": "PUBLIC", "network_timeout": 30}

    def set_model(self, rows: list[Row]) -> None:
        import snowflake.connector

        self.rows = list(rows)
        con = snowflake.connector.connect(**self.server, database=self.database,
                                          schema="PUBLIC")
        try:
            cur = con.cursor()
            cur.execute("create or replace table items (id integer, name varchar, "
                        "score integer, active boolean)")
            for start in range(0, len(rows), 5000):
                cur.executemany("insert into items values (%s, %s, %s, %s)",
                                rows[start:start + 5000])
        finally:
            con.close()


class TestDuckDBWarehouseDiff(ConformanceKit, RejectionScenarios, TransientScenarios):
    @pytest.fixture
    def target(self, receiver: WebhookReceiver) -> WarehouseDiffWebhook:
        return WarehouseDiffWebhook(receiver)


class TestPostgresWarehouseDiff(ConformanceKit, RejectionScenarios):
    @pytest.fixture
    def target(self, receiver: WebhookReceiver) -> WarehouseDiffWebhook:
        return WarehouseDiffWebhook(receiver)

    @pytest.fixture
    def env(self, tmp_path: Path, target: DestinationUnderTest, pg_url: str) -> KitEnv:
        return PostgresKitEnv(tmp_path, target, self.batch_size, pg_url)


class TestSnowflakeWarehouseDiff(ConformanceKit):
    rows = 120

    @pytest.fixture
    def target(self, receiver: WebhookReceiver) -> WarehouseDiffWebhook:
        return WarehouseDiffWebhook(receiver)

    @pytest.fixture
    def env(self, tmp_path: Path, target: DestinationUnderTest,
            snowflake_server: dict[str, Any]) -> KitEnv:
        return SnowflakeKitEnv(tmp_path, target, self.batch_size, snowflake_server)


# --- what leaves the warehouse, and the copy's label ----------------------------------


@pytest.fixture
def kit(tmp_path: Path, receiver: WebhookReceiver) -> KitEnv:
    env = KitEnv(tmp_path, WarehouseDiffWebhook(receiver), 100)
    env.set_model(make_rows(2000))
    env.write_project("mirror")
    return env


def _shown(env: KitEnv, summary: dict[str, Any]) -> dict[str, Any]:
    with env.project() as project:
        return project.show(summary["run_id"])


def _copy(env: KitEnv) -> tuple[dict[str, int], int | None]:
    with duckdb.connect(str(env.warehouse), read_only=True) as con:
        pairs = dict(con.execute(f"select key, hash from {copy_table('items')}").fetchall())
        label = con.execute(f"select version from {VERSIONS} where sync = 'items'").fetchall()
    return pairs, (label[0][0] if label else None)


def test_only_changed_rows_and_their_keys_leave_the_warehouse(kit: KitEnv) -> None:
    first = kit.run()
    assert first["planned"]["added"] == 2000
    rows = make_rows(2000)
    changed = [(i, n, (s + 1) % 101, a) if i % 100 == 0 else (i, n, s, a)
               for i, n, s, a in rows if i != 7]
    kit.set_model(changed)
    summary = kit.run()
    assert summary["planned"] == {"added": 0, "changed": 20, "removed": 1, "unchanged": 1979,
                                  "invalid": 0}
    timings = _shown(kit, summary)["timings"]
    # 20 rows of four columns plus their hashes, and 21 keys with old hashes: well under
    # a hundredth of the model.
    assert 0 < timings["warehouse_bytes_out"] < 2000
    assert kit.held() == kit.expected()
    pairs, _ = _copy(kit)
    assert len(pairs) == 1999 and json.dumps(7) not in pairs


def test_the_copy_matches_the_store_after_every_run(kit: KitEnv) -> None:
    from tidegate import state

    kit.run()
    kit.set_model(make_rows(1900, score_shift=2))
    kit.run()
    pairs, label = _copy(kit)
    with kit.project() as project:
        known = state.read_hashes(project.store, "items")
        assert label == known.version == state.current_version(project.store, "items")
    table = known.table
    assert pairs == dict(zip(table["key"].to_pylist(), table["hash"].to_pylist(), strict=True))


def test_a_copy_left_behind_by_a_crash_is_caught_up_from_the_store(kit: KitEnv) -> None:
    """A crash after the store committed a batch and before the warehouse did: the copy
    lacks that batch's keys and carries the older label."""
    kit.write_project("mirror", batch_size=100, concurrency=1)
    kit.run()
    pairs, label = _copy(kit)
    assert label is not None
    with kit.project() as project, project.store.transaction() as tx:
        blob = tx.execute("select keys from tidegate_state_segments where sync = 'items' "
                          "order by seq desc limit 1")[0][0]
    lost = segments.decode(blob)["key"].to_pylist()  # the last commit's keys
    # A commit holds every batch acknowledged while the one before it was written.
    assert lost and len(lost) % 100 == 0 and len(lost) < 2000
    with duckdb.connect(str(kit.warehouse)) as con:
        con.execute(f"delete from {copy_table('items')} where key in "
                    f"({', '.join(repr(k) for k in lost)})")
        con.execute(f"update {VERSIONS} set version = version - 1 where sync = 'items'")
    summary = kit.run()
    assert summary["planned"]["added"] == 0 and summary["planned"]["unchanged"] == 2000
    assert sum(summary["delivered"].values()) == 0
    assert _copy(kit)[0] == pairs


def test_a_reset_or_a_local_run_between_warehouse_runs_is_followed(kit: KitEnv) -> None:
    kit.run()
    kit.write_project("mirror", diff="local")
    kit.set_model(make_rows(2000, score_shift=5))
    assert kit.run()["planned"]["changed"] > 0
    kit.write_project("mirror")
    assert kit.run()["planned"]["changed"] == 0  # the local run's commits were caught up
    with kit.project() as project:
        project.reset("items")
    again = kit.run()
    assert again["planned"]["added"] == 2000  # the copy was rebuilt empty, as the store is


def test_duckdb_hashes_are_the_local_planners(kit: KitEnv) -> None:
    kit.write_project("mirror", diff="local")
    kit.run()
    kit.write_project("mirror")
    summary = kit.run()  # the copy is built from the store, and nothing differs
    assert summary["planned"]["unchanged"] == 2000
    assert sum(summary["delivered"].values()) == 0


def test_a_read_only_source_falls_back_to_the_local_store(
    kit: KitEnv, caplog: pytest.LogCaptureFixture
) -> None:
    path = kit.root / "tidegate.yml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["sources"]["warehouse"]["read_only"] = True
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tidegate"):
        summary = kit.run()
    assert summary["status"] == "succeeded" and summary["planned"]["added"] == 2000
    assert "read_only" in caplog.text and "local state store" in caplog.text
    with duckdb.connect(str(kit.warehouse), read_only=True) as con:
        schemas = {r[0] for r in con.execute("select schema_name from "
                                             "information_schema.schemata").fetchall()}
    assert "tidegate_state" not in schemas
    assert kit.held() == kit.expected()


def test_key_text_is_the_planners_in_every_warehouse(
    tmp_path: Path, pg_url: str, snowflake_server: dict[str, Any]
) -> None:
    """The join in the warehouse meets the keys the store holds: strings with quotes,
    backslashes, newlines and non-ASCII letters are written the same way."""
    from tidegate.config import SnowflakeSourceConfig
    from tidegate.sources.snowflake import SnowflakeSource
    from tidegate.warehouse_diff import PostgresWarehouse, SnowflakeWarehouse

    values = ['plain', 'quote " here', "back \\ slash", "new\nline", "tab\tx", "é ß 漢",
              "it's"]
    with duckdb.connect() as con:
        expected = [con.execute("select to_json(?::varchar)", [v]).fetchall()[0][0]
                    for v in values]
    pg = PostgresWarehouse(pg_url)
    got_pg = [pg.execute(f"select {pg.key_text('%s::text')}", (v,))[0][0] for v in values]
    pg.close()
    assert got_pg == expected
    config = SnowflakeSourceConfig.model_validate(
        {"type": "snowflake", **{k: snowflake_server[k] for k in
                                 ("account", "user", "password", "host", "port")},
         "protocol": "http", "database": "KEYS", "schema": "PUBLIC"})
    sf = SnowflakeWarehouse(SnowflakeSource("sf", config, tmp_path))
    got_sf = [sf.execute(f"select {sf.key_text(sf.literal(v))}")[0][0] for v in values]
    sf.close()
    assert got_sf == expected


def test_diff_is_local_unless_asked() -> None:
    from tidegate.config import SyncConfig

    sync = SyncConfig.model_validate({"source": "w", "table": "t", "primary_key": "id",
                                      "destination": "d", "object": "o", "mode": "upsert"})
    assert sync.diff == "local"
