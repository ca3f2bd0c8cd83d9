"""Run records: one row per run with its plan, progress, outcome and rejected rows.

A run is ``running`` until it ends as ``succeeded``, ``partial`` (some rows
rejected or invalid), or ``failed``. A run whose process died is found by the
next run of its sync (its pid is gone, or its heartbeat is stale on another
host) and marked ``failed`` with the reason, so the history tells the truth.
A server records a triggered run as ``queued`` before it starts (``queue_run``);
it becomes ``running`` when a worker takes it up, and ``recover`` finds, when
a server starts again, the runs its earlier process left behind.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tidegate.errors import ConfigError, FatalError, Problem
from tidegate.plan import PlanCounts
from tidegate.shard import Shard
from tidegate.store import Store, Tx

STALE_AFTER = timedelta(minutes=15)  # a run on another host silent this long is dead
HOST = socket.gethostname()


class AlreadyRunning(FatalError):
    """Another live process is running the sync; a queued run waits for it."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RunRecord:
    id: int
    sync: str
    status: str
    mode: str
    destination: str
    object: str
    full: bool
    started_at: datetime
    finished_at: datetime | None
    planned: PlanCounts
    to_send: int
    delivered: dict[str, int]
    rejected: int
    batches: int
    error: str | None
    timings: dict[str, float] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None
    plan_samples: dict[str, Any] | None = None
    plan_digest: str | None = None
    forced: bool = False
    approved_at: datetime | None = None
    revert_of: int | None = None
    destination_report: dict[str, Any] | None = None
    shard: Shard | None = None
    queued_at: datetime | None = None
    triggered_by: str | None = None

    @property
    def duration_s(self) -> float:
        end = self.finished_at or now()
        return round((_aware(end) - _aware(self.started_at)).total_seconds(), 3)

    def summary(self) -> dict[str, Any]:
        """The stable ``--json`` run summary (SPEC §4)."""
        return {
            "run_id": self.id,
            "sync": self.sync,
            "status": self.status,
            "planned": self.planned.as_dict(),
            "delivered": dict(self.delivered),
            "rejected": self.rejected,
            "duration_s": self.duration_s,
            "error": self.error,
            "verdict": self.verdict,
            **({"shard": {"index": self.shard.index, "count": self.shard.count}}
               if self.shard is not None else {}),
        }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stamp(value: datetime | None = None) -> str:
    """How times are stored: ISO 8601 in UTC, which sorts as text."""
    return (value or now()).isoformat()


def _time(value: str | None) -> datetime | None:
    return _aware(datetime.fromisoformat(value)) if value else None


def _record(m: dict[str, Any]) -> RunRecord:
    started = _time(m["started_at"])
    assert started is not None
    return RunRecord(
        id=int(m["id"]),
        sync=m["sync"],
        status=m["status"],
        mode=m["mode"],
        destination=m["destination"],
        object=m["object"],
        full=bool(m["full_sync"]),
        started_at=started,
        finished_at=_time(m["finished_at"]),
        planned=PlanCounts(
            added=m["planned_added"],
            changed=m["planned_changed"],
            removed=m["planned_removed"],
            unchanged=m["planned_unchanged"],
            invalid=m["planned_invalid"],
        ),
        to_send=m["to_send"],
        delivered={
            "created": m["delivered_created"],
            "updated": m["delivered_updated"],
            "deleted": m["delivered_deleted"],
        },
        rejected=m["rejected"],
        batches=m["batches"],
        error=m["error"],
        timings=json.loads(m["timings"]) if m["timings"] else {},
        verdict=json.loads(m["verdict"]) if m.get("verdict") else None,
        plan_samples=json.loads(m["plan_samples"]) if m.get("plan_samples") else None,
        plan_digest=m.get("plan_digest"),
        forced=bool(m.get("forced")),
        approved_at=_time(m.get("approved_at")),
        revert_of=int(m["revert_of"]) if m.get("revert_of") is not None else None,
        destination_report=(json.loads(m["destination_report"])
                            if m.get("destination_report") else None),
        shard=Shard(int(m["shard"]), int(m["shards"])) if m.get("shards") else None,
        queued_at=_time(m.get("queued_at")),
        triggered_by=m.get("triggered_by"),
    )


def _alive(pid: int | None, host: str | None, heartbeat: str | None) -> bool:
    if host == HOST and pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    beat = _time(heartbeat)
    return beat is not None and now() - beat < STALE_AFTER


def _overlaps(shard: Shard | None, other: Shard | None) -> bool:
    """Whether two runs of one sync may touch the same keys: only shards of one split don't."""
    if shard is None or other is None or shard.count != other.count:
        return True
    return shard.index == other.index


def _interrupted(tx: Tx, m: dict[str, Any], next_run: str) -> None:
    tx.execute(
        "update tidegate_runs set status = 'failed', finished_at = ?, error = ? where id = ?",
        (m["heartbeat_at"] or m["started_at"],
         "interrupted: the process stopped before the run finished "
         f"({m['batches']} batch(es) acknowledged); {next_run}",
         m["id"]),
    )


_RUNNING = ("select id, sync, pid, host, heartbeat_at, started_at, batches, shard, shards "
            "from tidegate_runs where status = 'running'")


def start_run(
    store: Store, *, sync: str, mode: str, destination: str, object: str, full: bool,
    revert_of: int | None = None, shard: Shard | None = None, queued: int | None = None,
) -> int:
    """Open a run for ``sync``; refuse if a live run of it that may touch the same keys is
    in progress (the other shards of one split run at once).

    ``queued`` takes up that queued run (see ``queue_run``) instead of opening a new one.
    """
    with store.transaction() as tx:
        tx.lock(f"sync:{sync}")
        running = tx.rows(_RUNNING + " and sync = ?", (sync,))
        for m in running:
            if not _overlaps(shard, Shard(m["shard"], m["shards"]) if m["shards"] else None):
                continue
            if _alive(m["pid"], m["host"], m["heartbeat_at"]):
                raise AlreadyRunning(
                    f"sync '{sync}' is already running as run {m['id']} "
                    f"(pid {m['pid']} on {m['host']}); wait for it to finish"
                )
            _interrupted(tx, m, "the next run sent the rest")
        at = stamp()
        if queued is not None:
            taken = tx.execute(
                "update tidegate_runs set status = 'running', mode = ?, destination = ?, "
                "object = ?, started_at = ?, heartbeat_at = ?, pid = ?, host = ? "
                "where id = ? and sync = ? and status = 'queued' returning id",
                (mode, destination, object, at, at, os.getpid(), HOST, queued, sync))
            if not taken:
                raise FatalError(f"run {queued} of sync '{sync}' is no longer queued")
            return queued
        return tx.insert_id(
            "insert into tidegate_runs (sync, status, mode, destination, object, full_sync, "
            "started_at, heartbeat_at, pid, host, revert_of, shard, shards) "
            "values (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sync, mode, destination, object, full, at, at, os.getpid(), HOST, revert_of,
             shard.index if shard else None, shard.count if shard else None),
        )


def queue_run(
    store: Store, *, sync: str, mode: str, destination: str, object: str, full: bool,
    forced: bool = False, triggered_by: str | None = None,
) -> int:
    """Record a run of ``sync`` that a worker will start later; return its id."""
    at = stamp()
    with store.transaction() as tx:
        return tx.insert_id(
            "insert into tidegate_runs (sync, status, mode, destination, object, full_sync, "
            "forced, started_at, queued_at, triggered_by) "
            "values (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
            (sync, mode, destination, object, full, forced, at, at, triggered_by),
        )


def recover(store: Store) -> list[int]:
    """Mark the runs a stopped process left ``running`` as interrupted; return their ids.

    Called by a server as it starts: a run recorded under this very process id
    cannot be alive, since this process has not started any yet.
    """
    with store.transaction() as tx:
        found = []
        for m in tx.rows(_RUNNING):
            mine = m["host"] == HOST and m["pid"] == os.getpid()
            if mine or not _alive(m["pid"], m["host"], m["heartbeat_at"]):
                _interrupted(tx, m, "the next run sends the rest")
                found.append(int(m["id"]))
    return found


def queued_runs(store: Store) -> list[RunRecord]:
    """Runs waiting to start, oldest first."""
    with store.transaction() as tx:
        rows = tx.rows("select * from tidegate_runs where status = 'queued' order by id")
    return [_record(r) for r in rows]


def record_plan(
    store: Store, run_id: int, counts: PlanCounts, to_send: int,
    invalid: list[tuple[str, str, str]], sync: str, *,
    verdict: dict[str, Any] | None = None, digest: str | None = None,
    samples: dict[str, Any] | None = None, forced: bool = False, approved: bool = False,
) -> None:
    """Keep what the run planned, how it was judged, and its invalid rows.

    A run planned again (an approved run) replaces what its earlier plan recorded.
    """
    with store.transaction() as tx:
        tx.execute(
            "update tidegate_runs set planned_added = ?, planned_changed = ?, "
            "planned_removed = ?, planned_unchanged = ?, planned_invalid = ?, to_send = ?, "
            "heartbeat_at = ?, verdict = ?, plan_digest = ?, plan_samples = ?, forced = ? "
            "where id = ?",
            (counts.added, counts.changed, counts.removed, counts.unchanged, counts.invalid,
             to_send, stamp(), json.dumps(verdict) if verdict else None, digest,
             json.dumps(samples, default=str) if samples else None, forced, run_id),
        )
        tx.execute("delete from tidegate_row_errors where run_id = ? and kind = 'invalid'",
                   (run_id,))
        if approved:
            tx.execute("update tidegate_runs set approved_at = ? where id = ?",
                       (stamp(), run_id))
        tx.executemany(
            "insert into tidegate_row_errors (run_id, sync, key, kind, error, attempt, record) "
            "values (?, ?, ?, 'invalid', ?, 1, ?)",
            [(run_id, sync, k, reason, rec) for k, reason, rec in invalid],
        )


def check_approvable(store: Store, run_id: int) -> None:
    """Raise ConfigError unless ``run_id`` is held and its sync's latest run."""
    with store.transaction() as tx:
        _approvable(tx, run_id)


def resume_held(store: Store, run_id: int) -> RunRecord:
    """Take a held run up again to deliver it: it must be held and its sync's latest run."""
    with store.transaction() as tx:
        _approvable(tx, run_id)
        tx.execute(
            "update tidegate_runs set status = 'running', error = null, finished_at = null, "
            "pid = ?, host = ?, heartbeat_at = ? where id = ?",
            (os.getpid(), HOST, stamp(), run_id),
        )
    return get_run(store, run_id)


def _approvable(tx: Tx, run_id: int) -> None:
    found = tx.rows("select * from tidegate_runs where id = ?", (run_id,))
    if not found:
        raise ConfigError(Problem(f"there is no run {run_id}",
                                  fix="list runs with `tidegate runs`"))
    m = found[0]
    sync = m["sync"]
    tx.lock(f"sync:{sync}")
    if m["status"] != "held":
        raise ConfigError(Problem(
            f"run {run_id} is {m['status']}, not held; only a held run can be approved",
            fix=f"run the sync again: `tidegate run {sync}`"))
    # A later run that failed before planning (a config error, a source down)
    # changed nothing; one that planned did, and the held plan is out of date.
    mine = Shard(m["shard"], m["shards"]) if m.get("shards") else None
    later = max((r[0] for r in tx.execute(
        "select id, shard, shards from tidegate_runs where sync = ? and id > ? "
        "and status in ('succeeded', 'partial', 'held', 'running')", (sync, run_id))
        if _overlaps(mine, Shard(r[1], r[2]) if r[2] else None)), default=None)
    if later is not None:
        raise ConfigError(Problem(
            f"run {run_id} is not the latest run of sync '{sync}' (run {later} is), so "
            "what it would send is out of date",
            fix=f"approve run {later} if it is held, or run the sync again"))


def record_conflicts(store: Store, run_id: int, sync: str,
                     conflicts: list[tuple[str, str]]) -> None:
    """Keys a revert left alone because they changed again since, each with why."""
    with store.transaction() as tx:
        tx.execute("delete from tidegate_row_errors where run_id = ? and kind = 'conflict'",
                   (run_id,))
        tx.executemany(
            "insert into tidegate_row_errors (run_id, sync, key, kind, error, attempt, record) "
            "values (?, ?, ?, 'conflict', ?, 1, null)",
            [(run_id, sync, key, why) for key, why in conflicts],
        )


def recent_counts(store: Store, sync: str, limit: int, *, before: int,
                  shard: Shard | None = None) -> list[PlanCounts]:
    """Planned counts of the sync's last successful runs before run ``before``, newest first;
    of a shard, that shard's runs."""
    with store.transaction() as tx:
        rows = tx.execute(
            "select planned_added, planned_changed, planned_removed, planned_unchanged, "
            "planned_invalid from tidegate_runs where sync = ? and id < ? "
            "and status in ('succeeded', 'partial') and revert_of is null "
            "and coalesce(shard, 0) = ? and coalesce(shards, 1) = ? "
            "order by id desc limit ?",
            (sync, before, shard.index if shard else 0, shard.count if shard else 1, limit),
        )
    return [PlanCounts(*(int(v) for v in r)) for r in rows]


def finish_run(
    store: Store, run_id: int, status: str, error: str | None, timings: dict[str, float],
    report: dict[str, Any] | None = None,
) -> RunRecord:
    with store.transaction() as tx:
        tx.execute(
            "update tidegate_runs set status = ?, error = ?, finished_at = ?, timings = ?, "
            "destination_report = ? where id = ?",
            (status, error, stamp(), json.dumps(timings),
             json.dumps(report, default=str) if report else None, run_id),
        )
    return get_run(store, run_id)


def get_run(store: Store, run_id: int) -> RunRecord:
    with store.transaction() as tx:
        rows = tx.rows("select * from tidegate_runs where id = ?", (run_id,))
    if not rows:
        raise KeyError(run_id)
    return _record(rows[0])


def list_runs(store: Store, sync: str | None = None, limit: int = 20) -> list[RunRecord]:
    where, params = ("where sync = ? ", (sync, limit)) if sync is not None else ("", (limit,))
    with store.transaction() as tx:
        rows = tx.rows(f"select * from tidegate_runs {where}order by id desc limit ?", params)
    return [_record(r) for r in rows]


def row_errors(
    store: Store, run_id: int, *, limit: int | None = None, offset: int = 0
) -> list[dict[str, Any]]:
    with store.transaction() as tx:
        rows = tx.rows(
            "select key, kind, error, attempt, record from tidegate_row_errors "
            "where run_id = ? order by id limit ? offset ?",
            (run_id, limit if limit is not None else -1 if store.dialect == "sqlite" else None,
             offset),
        )
    return [
        {
            "key": json.loads(r["key"]) if r["key"] not in ("", None) else None,
            "kind": r["kind"],
            "error": r["error"],
            "attempt": r["attempt"],
            "record": json.loads(r["record"]) if r["record"] else None,
        }
        for r in rows
    ]
