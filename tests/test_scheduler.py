"""The scheduler, driven by an injected clock: ticks, catch-up after downtime, no overlap, UTC."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import SECRET
from helpers import project, sync, warehouse
from serverkit import LiveServer
from tidegate import ConfigError, Project
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.server.scheduler import Scheduler
from tidegate.store import Store


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def set(self, text: str) -> None:
        self.at = datetime.fromisoformat(text)


class Fired:
    """A fire callback that records (sync, tick) and can refuse, as an overlap would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.busy: set[str] = set()

    def __call__(self, sync: str, tick: datetime) -> bool:
        if sync in self.busy:
            return False
        self.calls.append((sync, tick.isoformat()))
        return True


@pytest.fixture
def store(tmp_path: Path) -> Any:
    db = Store("sqlite:///state.db", tmp_path)
    yield db
    db.close()


def at(text: str) -> Clock:
    return Clock(datetime.fromisoformat(text))


def test_a_new_schedule_waits_for_its_next_tick(store: Store) -> None:
    clock, fired = at("2026-03-02T10:07:00+00:00"), Fired()
    scheduler = Scheduler({"a": "*/15 * * * *"}, store, fired, clock)
    assert scheduler.tick() == []  # first sight: 10:00 has passed, it is not run late
    assert scheduler.next_run("a") == datetime(2026, 3, 2, 10, 15, tzinfo=UTC)
    clock.set("2026-03-02T10:14:59+00:00")
    assert scheduler.tick() == []
    clock.set("2026-03-02T10:15:00+00:00")
    assert scheduler.tick() == ["a"]
    clock.set("2026-03-02T10:16:00+00:00")
    assert scheduler.tick() == []
    clock.set("2026-03-02T10:30:01+00:00")
    assert scheduler.tick() == ["a"]
    assert fired.calls == [("a", "2026-03-02T10:15:00+00:00"), ("a", "2026-03-02T10:30:00+00:00")]


def test_ticks_missed_while_down_run_once_on_start(store: Store) -> None:
    clock, fired = at("2026-03-02T10:00:00+00:00"), Fired()
    Scheduler({"hourly": "0 * * * *", "daily": "@daily"}, store, fired, clock).tick()
    clock.set("2026-03-02T13:31:00+00:00")  # down across 11:00, 12:00 and 13:00
    restarted = Scheduler({"hourly": "0 * * * *", "daily": "@daily"}, store, fired, clock)
    assert restarted.tick() == ["hourly"]
    assert restarted.tick() == []
    assert fired.calls == [("hourly", "2026-03-02T13:00:00+00:00")]
    assert restarted.next_run("hourly") == datetime(2026, 3, 2, 14, tzinfo=UTC)
    assert restarted.next_run("daily") == datetime(2026, 3, 3, tzinfo=UTC)


def test_a_tick_that_finds_the_sync_running_is_skipped(store: Store) -> None:
    clock, fired = at("2026-03-02T10:00:30+00:00"), Fired()
    scheduler = Scheduler({"a": "* * * * *"}, store, fired, clock)
    scheduler.tick()
    fired.busy.add("a")
    clock.set("2026-03-02T10:01:00+00:00")
    assert scheduler.tick() == []
    fired.busy.clear()
    clock.set("2026-03-02T10:01:40+00:00")
    assert scheduler.tick() == []  # the skipped tick is not made up for later
    clock.set("2026-03-02T10:02:00+00:00")
    assert scheduler.tick() == ["a"]


def test_schedules_are_read_in_utc(store: Store) -> None:
    berlin = timezone(timedelta(hours=2))
    clock, fired = Clock(datetime(2026, 6, 1, 10, 0, tzinfo=berlin)), Fired()  # 08:00 UTC
    scheduler = Scheduler({"nine": "0 9 * * *"}, store, fired, clock)
    scheduler.tick()
    clock.at = datetime(2026, 6, 1, 10, 59, tzinfo=berlin)  # 08:59 UTC, 10:59 in Berlin
    assert scheduler.tick() == []
    clock.at = datetime(2026, 6, 1, 11, 0, tzinfo=berlin)  # 09:00 UTC
    assert scheduler.tick() == ["nine"]
    assert fired.calls == [("nine", "2026-06-01T09:00:00+00:00")]


def test_a_changed_expression_starts_afresh(store: Store) -> None:
    clock, fired = at("2026-03-02T10:00:00+00:00"), Fired()
    Scheduler({"a": "0 * * * *"}, store, fired, clock).tick()
    clock.set("2026-03-02T12:40:00+00:00")
    changed = Scheduler({"a": "30 * * * *"}, store, fired, clock)
    assert changed.tick() == []  # no catch-up for a tick the old expression had
    assert changed.next_run("a") == datetime(2026, 3, 2, 13, 30, tzinfo=UTC)


def test_run_forever_sleeps_until_each_tick(store: Store) -> None:
    clock, fired = at("2026-03-02T10:10:00+00:00"), Fired()
    scheduler = Scheduler({"a": "*/15 * * * *"}, store, fired, clock)
    slept: list[float] = []

    def sleep(seconds: float) -> bool:
        slept.append(seconds)
        clock.at += timedelta(seconds=seconds)
        return clock.at > datetime(2026, 3, 2, 10, 31, tzinfo=UTC)

    scheduler.run_forever(sleep)
    assert slept[:2] == [30.0, 30.0]  # never blind for longer than 30 s
    assert all(0 < s <= 30 for s in slept)
    assert [t for _, t in fired.calls] == ["2026-03-02T10:15:00+00:00",
                                           "2026-03-02T10:30:00+00:00"]


def test_a_bad_schedule_is_a_config_error_with_its_line(project_dir: Path) -> None:
    project(project_dir, {"out": {"type": "file", "path": "exports/"}},
            {"a": sync("out", schedule="61 * * * *"), "b": sync("out", schedule="@hourly")})
    with pytest.raises(ConfigError) as caught:
        Project.load(project_dir)
    (problem,) = caught.value.problems
    assert problem.key == "syncs.a.schedule" and problem.line is not None
    assert "not a valid cron expression: Bad minute" in problem.message


def test_a_scheduled_tick_runs_the_sync_in_the_server(project_dir: Path,
                                                      receiver: WebhookReceiver) -> None:
    warehouse(project_dir / "warehouse.duckdb", 10)
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(schedule="0 * * * *")})
    clock = at("2026-03-02T09:30:00+00:00")
    arrived, release = threading.Event(), threading.Event()
    receiver.before_apply = lambda body: bool(arrived.set() or release.wait(30))
    with LiveServer(project_dir, env={"HOOK_SECRET": SECRET}, schedule=True,
                    clock=clock) as server:
        scheduler = server.service.scheduler
        assert scheduler is not None
        listed = server.client.get("/api/syncs").json()["syncs"][0]
        clock.set("2026-03-02T10:00:00+00:00")
        assert scheduler.tick() == ["accounts"]
        assert arrived.wait(30)
        clock.set("2026-03-02T11:00:00+00:00")
        assert scheduler.tick() == []  # still running: no overlap, nothing piles up
        receiver.before_apply = None
        release.set()
        (run,) = server.client.get("/api/runs").json()["runs"]
        done = server.wait(run["run_id"])
    assert listed["scheduled"] and listed["next_run_at"] == "2026-03-02T10:00:00+00:00"
    assert done["status"] == "succeeded" and done["delivered"]["created"] == 10
    assert done["triggered_by"] == "schedule 2026-03-02T10:00:00+00:00"
