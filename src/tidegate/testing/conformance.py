"""The destination conformance kit: shared scenarios every destination must pass.

A destination's test module subclasses ``ConformanceKit`` (plus
``RejectionScenarios`` and ``TransientScenarios`` when the destination can
reject records or fail transiently, and ``InvalidValueScenarios`` when its
schema refuses some values before anything is sent) and provides one fixture, ``target``,
returning an object that follows ``DestinationUnderTest``. Every scenario runs
the real engine (``Project``) over a real DuckDB model and compares what the
destination holds with what the model says it should hold.

    class TestWebhook(ConformanceKit, RejectionScenarios, TransientScenarios):
        @pytest.fixture
        def target(self, receiver): return WebhookUnderTest(receiver)
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar, Protocol

import duckdb
import pytest
import yaml

from tidegate.deliver import RetryPolicy
from tidegate.project import Project

Row = tuple[Any, ...]
COLUMNS = ("id", "name", "score", "active")


class DestinationUnderTest(Protocol):
    """What a destination's test module tells the kit."""

    modes: frozenset[str]

    def settings(self) -> dict[str, Any]:
        """The destination's entry in tidegate.yml."""

    def object_name(self, base: str) -> str:
        """The sync ``object`` to use for a fresh object named after ``base``."""

    def read_back(self, object_name: str) -> dict[str, dict[str, Any]]:
        """Current records by key JSON text (``"7"``), each with its mapped fields."""

    def row_count(self, object_name: str) -> int:
        """How many records the destination holds (duplicates counted)."""


def sync_options(target: DestinationUnderTest) -> dict[str, Any]:
    """Extra sync settings a destination needs (e.g. which of its fields matches ``id``):
    a target may define ``sync_options()``; most need none."""
    extra = getattr(target, "sync_options", None)
    return dict(extra()) if callable(extra) else {}


class Rejecting(DestinationUnderTest, Protocol):
    def reject(self, keys: Iterable[int], error: str) -> str | None:
        """Make the destination reject records with these ids until ``reject([])``.

        A destination whose rejections carry no message of the test's choosing
        (Iterable lists failing users by cause) returns the text it reports instead.
        """


class Unholding(DestinationUnderTest, Protocol):
    def unholdable(self) -> tuple[str, Any, str]:
        """A value the destination's schema cannot take for one of the kit's fields: the
        field (``name``, ``score`` or ``active``), a value of the model column's type, and
        a part of the reason the plan gives for it."""


class Failing(DestinationUnderTest, Protocol):
    def fail_next(self, n: int) -> None:
        """Make the next ``n`` requests fail transiently (5xx, dropped connection…)."""


def make_rows(n: int, start: int = 0, score_shift: int = 0) -> list[Row]:
    return [(i, f"name {i}", (i * 7 + score_shift) % 101, i % 3 == 0) for i in range(start, n)]


class KitEnv:
    """A project folder with a DuckDB model and one sync to the destination under test."""

    def __init__(self, root: Path, target: DestinationUnderTest, batch_size: int) -> None:
        self.root, self.target, self.batch_size = root, target, batch_size
        self.warehouse = root / "warehouse.duckdb"
        self.object = target.object_name(f"items_{root.name[-8:]}".replace("-", "_"))
        self.rows: list[Row] = []

    def set_model(self, rows: list[Row]) -> None:
        self.rows = list(rows)
        with duckdb.connect(str(self.warehouse)) as con:
            con.execute(
                "create or replace table items "
                "(id integer, name varchar, score integer, active boolean)"
            )
            if rows:
                con.executemany("insert into items values (?, ?, ?, ?)", rows)

    def write_project(
        self, mode: str, syncs: dict[str, str] | None = None, **options: Any
    ) -> None:
        """One sync per (name → mode); the default is ``items`` in ``mode``."""
        syncs = syncs or {"items": mode}
        config = {
            "name": "kit",
            "sources": {"warehouse": {"type": "duckdb", "path": "warehouse.duckdb"}},
            "destinations": {"dest": self.target.settings()},
            "syncs": {
                name: {
                    "source": "warehouse",
                    "table": "items",
                    "primary_key": "id",
                    "destination": "dest",
                    "object": self.object,
                    "mode": sync_mode,
                    "fields": ["name", "score", "active"],
                    "batch_size": self.batch_size,
                    **sync_options(self.target),
                    **options,
                }
                for name, sync_mode in syncs.items()
            },
        }
        (self.root / "tidegate.yml").write_text(yaml.safe_dump(config), encoding="utf-8")

    def project(self) -> Project:
        project = Project.load(self.root)
        project.retry = RetryPolicy(base_delay=0.01, max_delay=0.05)
        return project

    def run(self, sync: str = "items", *, full: bool = False) -> dict[str, Any]:
        with self.project() as project:
            return project.run(sync, full=full)

    def expected(self, rows: list[Row] | None = None) -> dict[str, dict[str, Any]]:
        rows = self.rows if rows is None else rows
        counts: dict[Any, int] = {}
        for r in rows:
            counts[r[0]] = counts.get(r[0], 0) + 1
        return {
            json.dumps(r[0]): {"name": r[1], "score": r[2], "active": r[3]}
            for r in rows
            if r[0] is not None and counts[r[0]] == 1
        }

    def held(self) -> dict[str, dict[str, Any]]:
        return self.target.read_back(self.object)

    def runs_table(self) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.root / ".tidegate" / "state.db", timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("select * from tidegate_runs order by id").fetchall()
        return [dict(r) for r in rows]


class ConformanceKit:
    """Scenarios every destination passes: sync, change, delete, mirror, bad keys, crash."""

    batch_size: ClassVar[int] = 50
    rows: ClassVar[int] = 240

    @pytest.fixture
    def env(self, tmp_path: Path, target: DestinationUnderTest) -> KitEnv:
        return KitEnv(tmp_path, target, self.batch_size)

    def _first_mode(self, env: KitEnv) -> str:
        for mode in ("upsert", "mirror", "insert"):
            if mode in env.target.modes:
                return mode
        raise AssertionError("a destination must support upsert, mirror or insert")

    def test_first_sync_sends_every_row(self, env: KitEnv) -> None:
        env.set_model(make_rows(self.rows))
        env.write_project(self._first_mode(env))
        summary = env.run()
        assert summary["status"] == "succeeded", summary
        assert summary["planned"]["added"] == self.rows
        assert summary["delivered"]["created"] == self.rows
        assert env.held() == env.expected()
        assert env.target.row_count(env.object) == self.rows

    def test_rerun_without_changes_sends_nothing(self, env: KitEnv) -> None:
        env.set_model(make_rows(self.rows))
        env.write_project(self._first_mode(env))
        env.run()
        summary = env.run()
        assert summary["planned"] == {"added": 0, "changed": 0, "removed": 0,
                                      "unchanged": self.rows, "invalid": 0}
        assert summary["delivered"] == {"created": 0, "updated": 0, "deleted": 0}

    def test_only_changed_and_new_rows_are_sent(self, env: KitEnv) -> None:
        mode = self._first_mode(env)
        rows = make_rows(self.rows)
        env.set_model(rows)
        env.write_project(mode)
        env.run()
        changed = [(i, n, (s + 1) % 101, a) if i % 10 == 0 else (i, n, s, a)
                   for i, n, s, a in rows]
        env.set_model(changed + make_rows(self.rows + 5, start=self.rows))
        summary = env.run()
        n_changed = len([r for r in rows if r[0] % 10 == 0])
        assert summary["planned"]["changed"] == n_changed
        assert summary["planned"]["added"] == 5
        assert summary["planned"]["unchanged"] == self.rows - n_changed
        if mode != "insert":
            assert summary["delivered"] == {"created": 5, "updated": n_changed, "deleted": 0}
            assert env.held() == env.expected()

    def test_mirror_deletes_rows_gone_from_the_model(self, env: KitEnv) -> None:
        if "mirror" not in env.target.modes:
            pytest.fail("every destination supports mirror (SPEC §3)")
        env.set_model(make_rows(self.rows))
        env.write_project("mirror")
        env.run()
        kept = [r for r in make_rows(self.rows) if r[0] % 4 != 0]
        env.set_model(kept)
        summary = env.run()
        assert summary["planned"]["removed"] == self.rows - len(kept)
        assert summary["delivered"]["deleted"] == self.rows - len(kept)
        assert env.held() == env.expected()

    def test_delete_mode_deletes_the_rows_the_model_lists(self, env: KitEnv) -> None:
        env.set_model(make_rows(self.rows))
        env.write_project("upsert", {"load": "upsert", "purge": "delete"})
        env.run("load")
        doomed = [r for r in make_rows(self.rows) if r[0] % 5 == 0]
        env.set_model(doomed)
        summary = env.run("purge")
        assert summary["delivered"]["deleted"] == len(doomed)
        remaining = {k: v for k, v in env.expected(make_rows(self.rows)).items()
                     if int(k) % 5 != 0}
        assert env.held() == remaining
        assert env.run("purge")["delivered"]["deleted"] == 0  # already done, not resent

    def test_insert_mode_never_sends_changes(self, env: KitEnv) -> None:
        rows = make_rows(self.rows)
        env.set_model(rows)
        env.write_project("insert")
        env.run()
        env.set_model(make_rows(self.rows, score_shift=1) + make_rows(self.rows + 3, self.rows))
        summary = env.run()
        assert summary["delivered"] == {"created": 3, "updated": 0, "deleted": 0}
        held = env.held()
        assert held[json.dumps(0)]["score"] == rows[0][2]  # the original, not the change
        assert len(held) == self.rows + 3

    def test_update_mode_updates_existing_records(self, env: KitEnv) -> None:
        env.set_model(make_rows(self.rows))
        env.write_project("upsert", {"load": "upsert", "touch": "update"})
        env.run("load")
        env.set_model(make_rows(self.rows, score_shift=3))
        summary = env.run("touch")
        assert summary["delivered"]["updated"] == self.rows
        assert env.held() == env.expected()

    def test_null_and_duplicate_keys_are_reported_and_never_sent(self, env: KitEnv) -> None:
        rows = make_rows(20)
        bad = [(None, "no key", 1, True), (7, "duplicate", 2, False)]
        env.set_model(rows + bad)
        env.write_project(self._first_mode(env))
        summary = env.run()
        assert summary["status"] == "partial"
        assert summary["planned"]["invalid"] == 3  # the null key and both rows of key 7
        assert env.held() == env.expected(rows + bad)
        assert json.dumps(7) not in env.held()
        with env.project() as project:
            shown = project.show(summary["run_id"])
        reasons = sorted(r["error"] for r in shown["rows"] if r["kind"] == "invalid")
        assert len(reasons) == 3
        assert any("null" in r for r in reasons) and any("2 times" in r for r in reasons)

    def test_full_resends_every_row(self, env: KitEnv) -> None:
        env.set_model(make_rows(self.rows))
        env.write_project(self._first_mode(env))
        env.run()
        summary = env.run(full=True)
        assert sum(summary["delivered"].values()) == self.rows
        assert env.held() == env.expected()
        assert env.target.row_count(env.object) == self.rows or "insert" in env.target.modes

    def test_crash_and_resume_loses_nothing(self, env: KitEnv) -> None:
        """SIGKILL the CLI after some batches were acknowledged; the rerun completes."""
        total = self.batch_size * 30
        env.set_model(make_rows(total))
        # A slow, steady pace so the kill lands between the 3rd and the 30th batch.
        env.write_project("upsert" if "upsert" in env.target.modes else "mirror",
                          requests_per_second=15, concurrency=1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidegate", "run", "items", "--project", str(env.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            _wait_for_batches(env, 3, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        killed = env.runs_table()[-1]
        assert killed["status"] == "running" and 3 <= killed["batches"] < 30, killed
        summary = env.run()
        assert summary["status"] == "succeeded"
        assert env.held() == env.expected()
        assert env.target.row_count(env.object) == total  # no duplicate records
        history = env.runs_table()
        assert history[0]["status"] == "failed" and "interrupted" in history[0]["error"]
        acked_before = history[0]["delivered_created"] + history[0]["delivered_updated"]
        assert acked_before + summary["planned"]["added"] == total


class RejectionScenarios:
    """For destinations that can reject single records."""

    def test_rejected_records_are_recorded_and_retried_next_run(
        self, env: KitEnv, target: Rejecting
    ) -> None:
        env.set_model(make_rows(60))
        env.write_project("upsert" if "upsert" in target.modes else "mirror")
        reported = target.reject([3, 4, 5], "no, not these") or "no, not these"
        summary = env.run()
        assert summary["status"] == "partial"
        assert summary["rejected"] == 3
        assert summary["delivered"]["created"] == 57
        with env.project() as project:
            rows = project.show(summary["run_id"])["rows"]
        assert sorted(r["key"] for r in rows if r["kind"] == "rejected") == [3, 4, 5]
        assert all(reported in r["error"] for r in rows)
        assert json.dumps(3) not in env.held()
        target.reject([], "")
        again = env.run()
        assert again["status"] == "succeeded"
        assert again["planned"]["added"] == 3 and again["delivered"]["created"] == 3
        assert env.held() == env.expected()

    def test_update_of_a_missing_record_is_rejected(self, env: KitEnv, target: Rejecting) -> None:
        env.set_model(make_rows(10))
        env.write_project("update")
        summary = env.run()
        assert summary["status"] == "partial"
        assert summary["rejected"] == 10
        assert env.held() == {}


class InvalidValueScenarios:
    """For destinations whose schema is known before the run (``checks_values``): a value
    it cannot take makes the row invalid in the plan, never sent, until the model fixes it."""

    def test_values_the_schema_cannot_take_are_invalid_and_never_sent(
        self, env: KitEnv, target: Unholding
    ) -> None:
        field, bad, reason = target.unholdable()
        column = COLUMNS.index(field)
        good = make_rows(40)
        spoiled = [(*r[:column], bad, *r[column + 1:]) if r[0] in (3, 4) else r for r in good]
        env.set_model(spoiled)
        env.write_project("upsert" if "upsert" in target.modes else "mirror")
        with env.project() as project:
            planned = project.plan("items")
        assert planned["planned"]["invalid"] == 2 and planned["planned"]["added"] == 38
        assert [n for why, n in planned["invalid_reasons"].items() if reason in why] == [2]
        summary = env.run()
        assert summary["status"] == "partial" and summary["rejected"] == 0, summary
        assert summary["planned"]["invalid"] == 2 and summary["delivered"]["created"] == 38
        with env.project() as project:
            rows = project.show(summary["run_id"])["rows"]
        assert sorted(r["key"] for r in rows if r["kind"] == "invalid") == [3, 4]
        assert all(reason in r["error"] for r in rows)
        held = env.held()
        assert json.dumps(3) not in held and json.dumps(4) not in held
        assert env.target.row_count(env.object) == 38

        again = env.run()  # the model still holds the values: nothing is tried again
        assert again["planned"]["invalid"] == 2 and again["planned"]["added"] == 0
        assert again["delivered"] == {"created": 0, "updated": 0, "deleted": 0}
        assert again["rejected"] == 0

        # A row already sent that takes such a value keeps its last good one downstream.
        env.set_model([(*r[:column], bad, *r[column + 1:]) if r[0] == 5 else r for r in good])
        fixed = env.run()
        assert fixed["planned"]["invalid"] == 1 and fixed["planned"]["changed"] == 0
        assert fixed["delivered"] == {"created": 2, "updated": 0, "deleted": 0}
        held = env.held()
        assert held[json.dumps(5)] == env.expected(good)[json.dumps(5)]
        assert {k: v for k, v in held.items() if k != json.dumps(5)} == {
            k: v for k, v in env.expected().items() if k != json.dumps(5)}


class TransientScenarios:
    """For destinations that can fail transiently."""

    def test_transient_failures_are_retried(self, env: KitEnv, target: Failing) -> None:
        env.set_model(make_rows(120))
        env.write_project("upsert" if "upsert" in target.modes else "mirror")
        target.fail_next(2)
        summary = env.run()
        assert summary["status"] == "succeeded", summary
        assert env.held() == env.expected()

    def test_a_destination_that_stays_down_fails_the_run_and_loses_nothing(
        self, env: KitEnv, target: Failing
    ) -> None:
        env.set_model(make_rows(120))
        env.write_project("upsert" if "upsert" in target.modes else "mirror")
        target.fail_next(1000)
        summary = env.run()
        assert summary["status"] == "failed"
        assert "attempt" in (summary["error"] or "")
        target.fail_next(0)
        again = env.run()
        assert again["status"] == "succeeded"
        assert again["planned"]["added"] == 120 - sum(summary["delivered"].values())
        assert env.held() == env.expected()


def _wait_for_batches(env: KitEnv, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"the run ended before it could be killed: {err}")
        try:
            runs = env.runs_table()
        except sqlite3.OperationalError:
            runs = []
        if runs and runs[-1]["batches"] >= n:
            return
        time.sleep(0.005)
    raise AssertionError("the run never acknowledged enough batches")
