"""Run records: one row per run with its plan, progress, outcome and rejected rows.

A run is ``running`` until it ends as ``succeeded``, ``partial`` (some rows
rejected or invalid), or ``failed``. A run whose process died is found by the
next run of its sync (its pid is gone, or its heartbeat is stale on another
host) and marked ``failed`` with the reason, so the history tells the truth.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tidegate.errors import FatalError
from tidegate.plan import PlanCounts
from tidegate.store import Store, row_errors_table, runs_table

STALE_AFTER = timedelta(minutes=15)  # a run on another host silent this long is dead
HOST = socket.gethostname()


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
        }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _record(row: sa.Row[Any]) -> RunRecord:
    m = row._mapping
    timings = m["timings"]
    if isinstance(timings, str):
        timings = json.loads(timings)
    return RunRecord(
        id=m["id"],
        sync=m["sync"],
        status=m["status"],
        mode=m["mode"],
        destination=m["destination"],
        object=m["object"],
        full=bool(m["full_sync"]),
        started_at=_aware(m["started_at"]),
        finished_at=_aware(m["finished_at"]) if m["finished_at"] else None,
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
        timings=timings or {},
    )


def _alive(pid: int | None, host: str | None, heartbeat: datetime | None) -> bool:
    if host == HOST and pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return heartbeat is not None and now() - _aware(heartbeat) < STALE_AFTER


def start_run(
    store: Store, *, sync: str, mode: str, destination: str, object: str, full: bool
) -> int:
    """Open a run for ``sync``; refuse if another live run of it is in progress."""
    with store.engine.begin() as conn:
        store.lock(conn, f"sync:{sync}")
        running = conn.execute(
            sa.select(runs_table).where(
                runs_table.c.sync == sync, runs_table.c.status == "running"
            )
        ).fetchall()
        for row in running:
            m = row._mapping
            if _alive(m["pid"], m["host"], m["heartbeat_at"]):
                raise FatalError(
                    f"sync '{sync}' is already running as run {m['id']} "
                    f"(pid {m['pid']} on {m['host']}); wait for it to finish"
                )
            conn.execute(
                runs_table.update()
                .where(runs_table.c.id == m["id"])
                .values(
                    status="failed",
                    finished_at=m["heartbeat_at"] or m["started_at"],
                    error=(
                        "interrupted: the process stopped before the run finished "
                        f"({m['batches']} batch(es) acknowledged); the next run sent the rest"
                    ),
                )
            )
        result = conn.execute(
            runs_table.insert().values(
                sync=sync,
                status="running",
                mode=mode,
                destination=destination,
                object=object,
                full_sync=full,
                started_at=now(),
                heartbeat_at=now(),
                pid=os.getpid(),
                host=HOST,
            )
        )
        run_id = result.inserted_primary_key
        assert run_id is not None
        return int(run_id[0])


def record_plan(
    store: Store, run_id: int, counts: PlanCounts, to_send: int,
    invalid: list[tuple[str, str, str]], sync: str,
) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            runs_table.update()
            .where(runs_table.c.id == run_id)
            .values(
                planned_added=counts.added,
                planned_changed=counts.changed,
                planned_removed=counts.removed,
                planned_unchanged=counts.unchanged,
                planned_invalid=counts.invalid,
                to_send=to_send,
                heartbeat_at=now(),
            )
        )
        if invalid:
            conn.execute(
                row_errors_table.insert(),
                [
                    {"run_id": run_id, "sync": sync, "key": k, "kind": "invalid",
                     "error": reason, "attempt": 1, "record": rec}
                    for k, reason, rec in invalid
                ],
            )


def finish_run(
    store: Store, run_id: int, status: str, error: str | None, timings: dict[str, float]
) -> RunRecord:
    with store.engine.begin() as conn:
        conn.execute(
            runs_table.update()
            .where(runs_table.c.id == run_id)
            .values(status=status, error=error, finished_at=now(), timings=timings)
        )
    return get_run(store, run_id)


def get_run(store: Store, run_id: int) -> RunRecord:
    with store.engine.begin() as conn:
        row = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id)).first()
    if row is None:
        raise KeyError(run_id)
    return _record(row)


def list_runs(store: Store, sync: str | None = None, limit: int = 20) -> list[RunRecord]:
    query = sa.select(runs_table).order_by(runs_table.c.id.desc()).limit(limit)
    if sync is not None:
        query = query.where(runs_table.c.sync == sync)
    with store.engine.begin() as conn:
        return [_record(r) for r in conn.execute(query).fetchall()]


def row_errors(
    store: Store, run_id: int, *, limit: int | None = None, offset: int = 0
) -> list[dict[str, Any]]:
    query = (
        sa.select(row_errors_table)
        .where(row_errors_table.c.run_id == run_id)
        .order_by(row_errors_table.c.id)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    with store.engine.begin() as conn:
        rows = conn.execute(query).fetchall()
    return [
        {
            "key": json.loads(r.key) if r.key not in ("", None) else None,
            "kind": r.kind,
            "error": r.error,
            "attempt": r.attempt,
            "record": json.loads(r.record) if r.record else None,
        }
        for r in rows
    ]
