"""The state store on SQLite and PostgreSQL: migrations, versions, snapshots, shared state."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from conftest import SECRET
from helpers import project, sync, warehouse
from tidegate import Project
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.store import MIGRATIONS, Store


def test_migrations_are_recorded_and_idempotent(tmp_path: Path, pg_url: str) -> None:
    for url in ("sqlite:///state.db", pg_url):
        store = Store(url, tmp_path)
        store.migrate()
        store.close()
        store = Store(url, tmp_path)
        with store.transaction() as tx:
            assert tx.execute("select version from tidegate_schema") == [(len(MIGRATIONS),)]
            assert tx.scalar("select count(*) from tidegate_runs") == 0
        store.close()


def run(root: Path, full: bool = False) -> dict[str, object]:
    with Project.load(root, env={"HOOK_SECRET": SECRET}) as p:
        return p.run("accounts", full=full)


def test_state_on_postgresql_shared_by_two_project_folders(
    tmp_path: Path, receiver: WebhookReceiver, pg_url: str
) -> None:
    """Two machines' project folders, one PostgreSQL state: the second sees the first's work."""
    roots = []
    for name in ("worker-a", "worker-b"):
        root = tmp_path / name
        root.mkdir()
        warehouse(root / "warehouse.duckdb", 500)
        project(root, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}},
                {"accounts": sync()}, state=pg_url)
        roots.append(root)
    first = run(roots[0])
    assert first["delivered"] == {"created": 500, "updated": 0, "deleted": 0}
    second = run(roots[1])  # no local snapshot here: state is read from PostgreSQL
    assert second["planned"]["unchanged"] == 500 and sum(second["delivered"].values()) == 0
    warehouse(roots[0] / "warehouse.duckdb",
              sql="update accounts set score = score + 1 where id < 7")
    third = run(roots[0])  # its snapshot is stale now (worker-b ran): the store is read again
    assert third["delivered"]["updated"] == 7
    assert len(receiver.records("Account")) == 500


def test_a_stale_snapshot_is_never_used(tmp_path: Path, receiver: WebhookReceiver) -> None:
    warehouse(tmp_path / "warehouse.duckdb", 100)
    project(tmp_path, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}}, {"accounts": sync()})
    run(tmp_path)
    snapshots = list((tmp_path / ".tidegate" / "snapshots").glob("*.arrow"))
    assert len(snapshots) == 1
    # Someone changes state behind the snapshot's back (another machine, a manual fix).
    engine = sa.create_engine(f"sqlite:///{tmp_path / '.tidegate' / 'state.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("delete from tidegate_state where key in ('1', '2')"))
        conn.execute(sa.text("update tidegate_state_versions set version = version + 1"))
    engine.dispose()
    again = run(tmp_path)
    assert again["planned"]["added"] == 2


def test_state_keeps_the_acknowledged_record(tmp_path: Path, receiver: WebhookReceiver) -> None:
    warehouse(tmp_path / "warehouse.duckdb", 3)
    project(tmp_path, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}}, {"accounts": sync()})
    receiver.reject_keys([2])
    run(tmp_path)
    engine = sa.create_engine(f"sqlite:///{tmp_path / '.tidegate' / 'state.db'}")
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("select key, record from tidegate_state")).all())
    engine.dispose()
    assert sorted(rows) == ["0", "1"]  # the rejected row is not in state
    assert json.loads(rows["1"]) == {"id": 1, "name": "acct 1", "score": 13}
