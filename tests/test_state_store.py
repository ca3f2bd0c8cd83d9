"""The state store on SQLite and PostgreSQL: migrations, versions, snapshots, shared state."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

from conftest import SECRET
from helpers import project, sync, warehouse
from tidegate import Project, audit, runs, segments, state
from tidegate.destinations.base import Batch
from tidegate.plan import Outgoing
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.store import MIGRATIONS, V1, Store


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
    # Someone changes state behind the snapshot's back (another machine, a manual fix):
    # keys 1 and 2 are forgotten by a segment that marks them removed.
    engine = sa.create_engine(f"sqlite:///{tmp_path / '.tidegate' / 'state.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("update tidegate_state_versions set version = version + 1"))
        conn.execute(sa.text(
            "insert into tidegate_state_segments (sync, seq, rows, created_at, keys, records) "
            "select 'accounts', version, 2, 'now', :keys, :records "
            "from tidegate_state_versions where sync = 'accounts'"),
            {"keys": segments.keys_blob(pa.array(["1", "2"]), pa.array([0, 0], pa.int64()),
                                        pa.array([False, False])),
             "records": segments.records_blob(pa.array([None, None], pa.string()))})
    engine.dispose()
    again = run(tmp_path)
    assert again["planned"]["added"] == 2


def test_state_keeps_the_acknowledged_record(tmp_path: Path, receiver: WebhookReceiver) -> None:
    warehouse(tmp_path / "warehouse.duckdb", 3)
    project(tmp_path, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}}, {"accounts": sync()})
    receiver.reject_keys([2])
    run(tmp_path)
    with Project.load(tmp_path, env={"HOOK_SECRET": SECRET}) as p:
        rows = state.records(p.store, "accounts")
    assert sorted(rows) == ["0", "1"]  # the rejected row is not in state
    assert json.loads(rows["1"] or "") == {"name": "acct 1", "score": 13}


def test_records_an_older_store_compressed_with_lz4_still_read(
        tmp_path: Path, receiver: WebhookReceiver) -> None:
    warehouse(tmp_path / "warehouse.duckdb", 3)
    project(tmp_path, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}}, {"accounts": sync()})
    run(tmp_path)
    db = tmp_path / ".tidegate" / "state.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        for table in ("tidegate_state_segments", "tidegate_changes"):
            for rowid, blob in conn.execute(f"select rowid, records from {table}").fetchall():
                lz4 = segments.encode(segments.decode(blob), "lz4")
                assert lz4 != blob
                conn.execute(f"update {table} set records = ? where rowid = ?", (lz4, rowid))
    warehouse(tmp_path / "warehouse.duckdb", sql="update accounts set score = 99 where id = 1")
    assert run(tmp_path)["delivered"] == {"created": 0, "updated": 1, "deleted": 0}
    with Project.load(tmp_path, env={"HOOK_SECRET": SECRET}) as p:
        rows = state.records(p.store, "accounts")
        changed = audit.changes(p.store, 2)
    assert json.loads(rows["0"] or "") == {"name": "acct 0", "score": 0}
    assert [(c["key"], c["field"], c["old"], c["new"]) for c in changed] == [(1, "score", 13, 99)]


def test_a_later_segment_supersedes_an_earlier_one(tmp_path: Path,
                                                  receiver: WebhookReceiver) -> None:
    warehouse(tmp_path / "warehouse.duckdb", 10)
    project(tmp_path, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}}, {"accounts": sync(mode="mirror")})
    assert run(tmp_path)["status"] == "succeeded"
    warehouse(tmp_path / "warehouse.duckdb",
              sql="update accounts set score = 1000 + id where id < 3; delete from accounts "
                  "where id = 9")
    assert run(tmp_path)["delivered"] == {"created": 0, "updated": 3, "deleted": 1}
    for snapshot in (tmp_path / ".tidegate" / "snapshots").glob("*.arrow"):
        snapshot.unlink()  # the store alone must tell the truth
    with Project.load(tmp_path, env={"HOOK_SECRET": SECRET}) as p:
        rows = {k: json.loads(v or "") for k, v in state.records(p.store, "accounts").items()}
        known = state.read_hashes(p.store, "accounts")
    assert sorted(rows, key=int) == [str(i) for i in range(9)]  # 9 was removed
    assert rows["1"]["score"] == 1001 and rows["5"]["score"] == (5 * 13) % 101
    assert sorted(known.table["key"].to_pylist(), key=int) == [str(i) for i in range(9)]
    assert run(tmp_path)["planned"]["unchanged"] == 9


def test_compaction_keeps_exactly_the_live_state(tmp_path: Path, pg_url: str) -> None:
    for url in ("sqlite:///state.db", pg_url):
        store = Store(url, tmp_path)
        state.reset(store, "s")
        version = 0
        with store.transaction() as tx:
            for seq, (keys, live, score) in enumerate([
                (["1", "2", "3"], [True, True, True], 1),
                (["2", "4"], [True, True], 2),
                (["3"], [False], 0),
                (["4", "5"], [True, True], 3),
            ], start=1):
                tx.execute(
                    "insert into tidegate_state_segments (sync, seq, rows, created_at, keys, "
                    "records) values ('s', ?, ?, 'now', ?, ?)",
                    (seq, len(keys),
                     segments.keys_blob(pa.array(keys), pa.array([seq] * len(keys), pa.int64()),
                                        pa.array(live)),
                     segments.records_blob(pa.array(
                         [json.dumps({"score": score}) if alive else None for alive in live]))))
            version = int(tx.scalar("select version from tidegate_state_versions "
                                    "where sync = 's'"))
        before = state.records(store, "s")
        assert before == {"1": '{"score": 1}', "2": '{"score": 2}', "4": '{"score": 3}',
                          "5": '{"score": 3}'}
        assert state.compaction_due(store, "s", live=4) is False
        assert state.compact(store, "s", memory_limit="64MB", spill=tmp_path) == (1, version + 1)
        assert state.records(store, "s") == before
        hashes = state.read_hashes(store, "s").table
        assert dict(zip(hashes["key"].to_pylist(), hashes["hash"].to_pylist(),
                        strict=True)) == {"1": 1, "2": 2, "4": 4, "5": 4}
        # The content is the same, but a reader paging through the old segments must notice.
        assert state.current_version(store, "s") == version + 1
        with store.transaction() as tx:
            assert tx.scalar("select count(*) from tidegate_state_segments "
                             "where sync = 's'") == 1
        store.close()


def test_version_one_state_moves_into_segments(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("create table tidegate_schema (version integer not null)")
        conn.execute("insert into tidegate_schema values (1)")
        for statement in V1:
            assert isinstance(statement, str)
            conn.execute(statement.replace("{serial}", "integer primary key autoincrement")
                         .replace("{bool}", "integer"))
        conn.executemany(
            "insert into tidegate_state (sync, key, hash, record, run_id, updated_at) "
            "values (?, ?, ?, ?, 1, 'then')",
            [("a", str(i), i * 7, json.dumps({"v": i})) for i in range(250)]
            + [("b", "x", 1, '{"v": "x"}')])
        conn.execute("insert into tidegate_state_versions values ('a', 12), ('b', 3)")
    store = Store("sqlite:///state.db", tmp_path)
    assert state.records(store, "a") == {str(i): json.dumps({"v": i}) for i in range(250)}
    assert state.records(store, "b") == {"x": '{"v": "x"}'}
    assert state.current_version(store, "a") == 12
    table = state.read_hashes(store, "a").table
    assert sorted(table["hash"].to_pylist()) == [i * 7 for i in range(250)]
    with store.transaction() as tx:
        tables = {r[0] for r in tx.execute("select name from sqlite_master where type='table'")}
    assert "tidegate_state" not in tables
    store.close()


def test_a_run_that_leaves_many_small_segments_compacts_them(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """An hourly sync that changes a row or two each run: its segments grow many and
    small, until the run that leaves too many of them compacts them into one."""
    import duckdb

    warehouse(tmp_path / "warehouse.duckdb", 150)
    project(tmp_path, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}},
            {"accounts": sync()})
    assert run(tmp_path)["delivered"]["created"] == 150

    def segment_count() -> int:
        with Project.load(tmp_path, env={"HOOK_SECRET": SECRET}) as p, \
                p.store.transaction() as tx:
            return int(tx.scalar("select count(*) from tidegate_state_segments"))

    counts = []
    for hour in range(1, 80):
        with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
            con.execute(f"update accounts set score = score + 1 where id = {hour % 150}")
        assert run(tmp_path)["delivered"]["updated"] == 1
        counts.append(segment_count())
        if counts[-1] < hour + 1:
            break
    # One segment more each run, then compaction at the threshold: a single segment.
    assert counts[:-1] == list(range(2, len(counts) + 1)) and counts[-1] == 1
    assert len(counts) - 1 > 60
    with Project.load(tmp_path, env={"HOOK_SECRET": SECRET}) as p:
        assert state.compaction_due(p.store, "accounts", live=150) is False
        # The snapshot was relabelled with the version compaction left.
        assert state.read_hashes(p.store, "accounts", p.snapshot_dir).from_snapshot
        rows = state.records(p.store, "accounts")
    assert len(rows) == 150 and json.loads(rows["7"] or "") == {"name": "acct 7", "score": 92}
    for snapshot in (tmp_path / ".tidegate" / "snapshots").glob("*.arrow"):
        snapshot.unlink()
    assert run(tmp_path)["planned"]["unchanged"] == 150


def test_a_destinations_journal_outlives_the_process(tmp_path: Path, pg_url: str) -> None:
    from tidegate.journal import Journal

    for url in ("sqlite:///state.db", pg_url):
        store = Store(url, tmp_path)
        journal = Journal(store, "deals")
        journal.put("bulk:msg_1", '{"job": "750x1"}')
        journal.put("bulk:msg_2", "second")
        journal.put("bulk:msg_1", '{"job": "750x2"}')  # replaces
        Journal(store, "other").put("bulk:msg_1", "not ours")
        store.close()
        store = Store(url, tmp_path)  # as a rerun after a crash would
        journal = Journal(store, "deals")
        assert journal.get("bulk:msg_1") == '{"job": "750x2"}'
        assert journal.names("bulk:") == ["bulk:msg_1", "bulk:msg_2"]
        journal.forget("bulk:msg_1")
        assert journal.get("bulk:msg_1") is None and journal.names() == ["bulk:msg_2"]
        assert Journal(store, "other").get("bulk:msg_1") == "not ours"
        store.close()


def test_a_destination_learns_what_the_run_sends(tmp_path: Path,
                                                 receiver: WebhookReceiver) -> None:
    warehouse(tmp_path / "warehouse.duckdb", 7)
    project(tmp_path, {"hook": {"type": "webhook", "url": receiver.url,
                                "secret": "${HOOK_SECRET}"}}, {"accounts": sync(mode="mirror")})
    with Project.load(tmp_path, env={"HOOK_SECRET": SECRET}) as p:
        destination = p.destination("accounts", 1, {"update": 2, "delete": 1})
        assert dict(destination.target.to_send) == {"update": 2, "delete": 1}
        journal = destination.target.journal
        assert journal is not None
        journal.put("x", "y")
        assert p.destination("accounts").target.journal.get("x") == "y"  # type: ignore[union-attr]
        destination.close()


def _acknowledged(operation: str, rows: list[tuple[str, str, str | None]]) -> Outgoing:
    """A batch of (key, category, fields JSON) as the planner would cut it."""
    keys = [k for k, _, _ in rows]
    batch = Batch(id=f"{operation}-{keys[0]}", operation=operation,  # type: ignore[arg-type]
                  key_text=pa.array(keys, pa.string()), table=pa.table({}))
    meta = pa.table({"__key": pa.array(keys, pa.string()),
                     "__hash": pa.array([len(k) for k in keys], pa.int64()),
                     "__cat": pa.array([c for _, c, _ in rows], pa.string()),
                     "__fields": pa.array([f for _, _, f in rows], pa.string()),
                     "__old": pa.array([None] * len(rows), pa.string())})
    return Outgoing(batch=batch, meta=meta)


def test_a_commit_counts_and_keeps_each_operation_of_a_mixed_group(tmp_path: Path) -> None:
    store = Store("sqlite:///state.db", tmp_path)
    run_id = runs.start_run(store, sync="s", mode="mirror", destination="d", object="o",
                            full=False)
    upserts = _acknowledged("upsert", [('"a"', "added", '{"v":1}'),
                                       ('"b"', "changed", '{"v":2}'),
                                       ('"c"', "added", '{"v":3}')])
    deletes = _acknowledged("delete", [('"x"', "removed", None), ('"y"', "removed", None)])
    done = state.commit_batches(store, sync="s", run_id=run_id,
                                acknowledged=[(upserts, {'"c"': "refused"}), (deletes, {})])
    assert done.delivered == {"created": 1, "updated": 1, "deleted": 2}
    assert sorted(done.kept["key"].to_pylist()) == ['"a"', '"b"']
    assert sorted(done.dropped.to_pylist()) == ['"x"', '"y"']
    assert {c["key"]: c["op"] for c in audit.changes(store, run_id)} == {
        "a": "created", "b": "updated", "x": "deleted", "y": "deleted"}

    # A group of one operation takes the short way; the counts must be the same kind.
    only_deletes = _acknowledged("delete", [('"a"', "removed", None), ('"z"', "removed", None)])
    updates = _acknowledged("update", [('"b"', "changed", '{"v":5}'),
                                       ('"n"', "added", '{"v":6}')])
    gone = state.commit_batches(store, sync="s", run_id=run_id,
                                acknowledged=[(only_deletes, {})])
    assert gone.delivered == {"created": 0, "updated": 0, "deleted": 2}
    assert gone.dropped.to_pylist() == ['"a"', '"z"'] and gone.kept.num_rows == 0
    changed = state.commit_batches(store, sync="s", run_id=run_id,
                                   acknowledged=[(updates, {})])
    # An update never creates, even for a key new to the model.
    assert changed.delivered == {"created": 0, "updated": 2, "deleted": 0}
    assert state.records(store, "s") == {'"b"': '{"v":5}', '"n"': '{"v":6}'}
    with store.transaction() as tx:
        assert tx.execute("select delivered_created, delivered_updated, delivered_deleted, "
                          "rejected from tidegate_runs where id = ?", (run_id,)) == [(1, 3, 4, 1)]
    store.close()


def test_the_state_version_advances_by_one_each_commit_with_or_without_returning(
        tmp_path: Path, pg_url: str) -> None:
    for url, returning in (("sqlite:///a.db", True), ("sqlite:///b.db", False), (pg_url, True)):
        store = Store(url, tmp_path)
        state.reset(store, "v")
        start = state.current_version(store, "v")
        for n in range(1, 4):
            with store.transaction() as tx:
                assert state._bump(tx, "v", returning=returning) == start + n
        assert state.current_version(store, "v") == start + 3
        store.close()


def _write_blobs(store: Store, count: int, size: int) -> list[bytes]:
    blobs = [bytes([i]) * size for i in range(count)]
    for i, blob in enumerate(blobs):
        with store.transaction() as tx:
            tx.execute("insert into tidegate_meta (name, value) values (?, ?)", (f"b{i}", blob))
    return blobs


def _checkpointers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "tidegate-checkpoint"}


def test_the_log_is_copied_into_the_database_while_commits_go_on(tmp_path: Path) -> None:
    """Past a megabyte of blobs, a checkpoint runs on a thread of its own: the database
    file holds the commits while the store is still open, though the log is far below
    the size (``wal_autocheckpoint``) at which a commit would copy it inline."""
    others = _checkpointers()
    store = Store("sqlite:///state.db", tmp_path)
    blobs = _write_blobs(store, 4, 1 << 20)
    db = tmp_path / "state.db"
    deadline = time.monotonic() + 10
    while db.stat().st_size < 4 << 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert db.stat().st_size >= 3 << 20
    assert len(_checkpointers() - others) == 1
    store.close()
    assert not _checkpointers() - others  # closing ends it
    # Closed: the log went into the database and nothing is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]
    with closing(sqlite3.connect(db)) as conn:
        got = dict(conn.execute("select name, value from tidegate_meta where name like 'b%'"))
    assert got == {f"b{i}": blob for i, blob in enumerate(blobs)}


def test_small_commits_leave_the_log_to_sqlite(tmp_path: Path) -> None:
    """Commits without blobs (runs starting, heartbeats) or with few bytes of them never
    start the checkpoint thread."""
    others = _checkpointers()
    store = Store("sqlite:///state.db", tmp_path)
    for i in range(50):
        runs.start_run(store, sync=f"s{i}", mode="upsert", destination="d", object="o",
                       full=False)
    _write_blobs(store, 3, 100_000)
    assert not _checkpointers() - others
    store.close()
