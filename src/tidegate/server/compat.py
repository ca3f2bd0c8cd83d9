"""Endpoints that Census and Hightouch clients call, so they work with only their host changed.

What each vendor's client sends and reads is in docs/server.md. A sync is
addressed by its stable numeric id or by its name (Hightouch's ``syncSlug``).
Run statuses map like this:

    tidegate   Census      Hightouch
    queued     queued      queued
    running    working     processing
    succeeded  completed   success
    partial    completed   warning      (rows rejected or invalid: records_failed /
                                         records_invalid > 0, failedRows)
    held       failed      failed       (the guardrail's reason in error_message / error)
    failed     failed      failed       (the error; interrupted runs are Hightouch's
                                         ``interrupted``: the next run sends the rest)

``POST /api/v1/syncs/{id}/trigger`` is Census's trigger and Hightouch's
"TriggerRun" at once, so it answers both ways: ``data.sync_run_id`` and ``id``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request

from tidegate.runs import RunRecord
from tidegate.server.api import Svc
from tidegate.server.service import ServiceError

CENSUS_STATUS = {"queued": "queued", "running": "working", "succeeded": "completed",
                 "partial": "completed", "held": "failed", "failed": "failed"}
HIGHTOUCH_STATUS = {"queued": "queued", "running": "processing", "succeeded": "success",
                    "partial": "warning", "held": "failed", "failed": "failed"}
FINISHED = ("succeeded", "partial", "held", "failed")


def _when(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and ``Z``, as both vendors write times."""
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _interrupted(record: RunRecord) -> bool:
    return record.status == "failed" and (record.error or "").startswith("interrupted")


def _error(record: RunRecord) -> str | None:
    return record.error if record.status in ("held", "failed") else None


def _created(record: RunRecord) -> datetime:
    return record.queued_at or record.started_at


def _scheduled_at(record: RunRecord) -> str | None:
    by = record.triggered_by or ""
    return by.removeprefix("schedule ") if by.startswith("schedule ") else None


def census_run(record: RunRecord, sync_id: int | None) -> dict[str, Any]:
    p, d = record.planned, record.delivered
    delivered = d["created"] + d["updated"] + d["deleted"]
    held = record.status == "held"
    scheduled = _scheduled_at(record)
    return {
        "id": record.id,
        "sync_id": sync_id,
        "status": CENSUS_STATUS.get(record.status, "failed"),
        "source_record_count": p.added + p.changed + p.unchanged + p.invalid,
        "source_record_updates": p.added + p.changed,
        "source_record_deletes": p.removed,
        "source_record_invalids": p.invalid,
        "records_invalid": p.invalid,
        "records_processed": delivered + record.rejected,
        "records_updated": delivered,
        "records_failed": record.rejected,
        "created_at": _when(_created(record)),
        "updated_at": _when(record.finished_at or record.started_at),
        "completed_at": _when(record.finished_at) if record.status in FINISHED else None,
        "scheduled_execution_time": scheduled,
        "error_code": ("guardrail_held" if held else "interrupted" if _interrupted(record)
                       else "run_failed" if record.status == "failed" else None),
        "error_message": _error(record),
        "error_detail": (f"nothing was sent; approve it with `tidegate approve {record.id}` "
                         f"or POST /api/runs/{record.id}/approve" if held else None),
        "status_detail": record.status,
        "canceled": False,
        "full_sync": record.full,
        "current_step": {"queued": "Queued", "running": "Running Sync"}.get(record.status),
        "sync_trigger_reason": {"ui_tag": "Schedule" if scheduled else "API",
                                "ui_detail": record.triggered_by or "tidegate"},
    }


def _failed_rows(record: RunRecord) -> dict[str, int]:
    """Rejected rows by plan category. Runs record how many were rejected, not of which
    operation, so this counts what a finished run planned and did not deliver."""
    p, d, rejected = record.planned, record.delivered, record.rejected
    added = removed = 0
    if record.mode == "insert":
        added = rejected
    elif record.mode == "delete":
        removed = rejected
    elif record.status in ("succeeded", "partial") and record.mode in ("upsert", "mirror"):
        added = min(rejected, max(0, p.added - d["created"]))
        if record.mode == "mirror":
            removed = min(rejected - added, max(0, p.removed - d["deleted"]))
    return {"addedCount": added, "changedCount": rejected - added - removed,
            "removedCount": removed}


def hightouch_run(record: RunRecord, sync_id: int | None) -> dict[str, Any]:
    p, d = record.planned, record.delivered
    done = d["created"] + d["updated"] + d["deleted"] + record.rejected
    if record.status in ("succeeded", "partial"):
        ratio = 1.0
    else:
        ratio = round(done / record.to_send, 4) if record.to_send else 0.0
    status = "interrupted" if _interrupted(record) else HIGHTOUCH_STATUS.get(record.status,
                                                                             "failed")
    return {
        "id": str(record.id),
        "syncId": str(sync_id) if sync_id is not None else None,
        "status": status,
        "createdAt": _when(_created(record)),
        "startedAt": _when(record.started_at) if record.status != "queued" else None,
        "finishedAt": _when(record.finished_at) if record.status in FINISHED else None,
        "plannedRows": {"addedCount": p.added, "changedCount": p.changed,
                        "removedCount": p.removed},
        "successfulRows": {"addedCount": d["created"], "changedCount": d["updated"],
                           "removedCount": d["deleted"]},
        "failedRows": _failed_rows(record),
        "querySize": p.added + p.changed + p.unchanged + p.invalid,
        "completionRatio": ratio,
        "error": _error(record),
    }


def sync_object(info: dict[str, Any]) -> dict[str, Any]:
    """A sync as both vendors' clients read one (they need little: id, slug, status)."""
    last = info["last_run"]
    return {
        "id": info["id"],
        "slug": info["name"],
        "name": info["name"],
        "label": info["name"],
        "operation": info["mode"],
        "status": HIGHTOUCH_STATUS.get(last["status"], "failed") if last else "pending",
        "paused": False,
        "disabled": False,
        "schedule": {"type": "cron", "expression": info["schedule"]} if info["schedule"]
        else None,
        "source_attributes": {"connection_id": info["source"]},
        "destination_attributes": {"connection_id": info["destination"],
                                   "object": info["object"]},
        "destinationId": info["destination"],
        "lastRunAt": last["started_at"] if last else None,
    }


async def _body(request: Request) -> dict[str, Any]:
    """A JSON or form-encoded body (Hightouch's Airflow hook sends a form), or none."""
    raw = await request.body()
    if not raw.strip():
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ServiceError(400, "the body is neither JSON nor a form",
                           "send JSON with Content-Type: application/json") from None
    if not isinstance(doc, dict):
        raise ServiceError(400, "the body must be a JSON object")
    return doc


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def router(authorized: Any) -> APIRouter:
    v1 = APIRouter(prefix="/api/v1", dependencies=[Depends(authorized)],
                   tags=["Census and Hightouch compatible"])

    @v1.post("/syncs/trigger", summary="Hightouch: trigger a sync by syncId or syncSlug "
             "(JSON or form body; fullResync)")
    async def hightouch_trigger(request: Request, svc: Svc) -> Any:
        body = _body_or_query(await _body(request), request)
        ref = body.get("syncId") or body.get("syncSlug")
        if not ref:
            raise ServiceError(400, "give syncId or syncSlug")
        record = svc.trigger(str(ref), full=_flag(body.get("fullResync")),
                             by="hightouch api")
        return {"id": str(record.id)}

    @v1.post("/syncs/{sync_id}/trigger", summary="Census: trigger a sync "
             "(force_full_sync); also Hightouch's TriggerRun (fullResync)")
    async def census_trigger(sync_id: str, request: Request, svc: Svc) -> Any:
        body = _body_or_query(await _body(request), request)
        full = _flag(body.get("force_full_sync")) or _flag(body.get("fullResync"))
        record = svc.trigger(sync_id, full=full, by="census api")
        return {"status": "success", "data": {"sync_run_id": record.id, "id": str(record.id)},
                "id": str(record.id)}

    @v1.get("/sync_runs/{run_id}", summary="Census: one sync run")
    def census_sync_run(run_id: int, svc: Svc) -> Any:
        record = svc.record(run_id)
        return {"status": "success", "data": census_run(record, svc.ids.get(record.sync))}

    @v1.get("/syncs/{sync_id}/sync_runs", summary="Census: a sync's runs, newest first")
    def census_sync_runs(sync_id: str, svc: Svc,
                         page: Annotated[int, Query(ge=0)] = 1,
                         per_page: Annotated[int, Query(ge=1, le=100)] = 25) -> Any:
        name = svc.resolve(sync_id)
        page = max(page, 1)
        records = svc.runs(name, page * per_page + 1)
        chunk = records[(page - 1) * per_page: page * per_page]
        more = len(records) > page * per_page
        return {"status": "success",
                "data": [census_run(r, svc.ids[name]) for r in chunk],
                "pagination": _pagination(page, per_page, more,
                                          None if more else (page - 1) * per_page + len(chunk))}

    @v1.get("/syncs", summary="Census: list syncs (page, per_page); Hightouch: find by slug")
    def list_syncs(svc: Svc, slug: str | None = None,
                   page: Annotated[int, Query(ge=0)] = 1,
                   per_page: Annotated[int, Query(ge=1, le=100)] = 25) -> Any:
        syncs = [sync_object(s) for s in svc.syncs()]
        if slug is not None:
            syncs = [s for s in syncs if s["slug"] == slug]
        page = max(page, 1)
        chunk = syncs[(page - 1) * per_page: page * per_page]
        more = len(syncs) > page * per_page
        doc: dict[str, Any] = {"status": "success", "data": chunk,
                               "pagination": _pagination(page, per_page, more, len(syncs))}
        return doc

    @v1.get("/syncs/{sync_id}", summary="Census and Hightouch: one sync")
    def get_sync(sync_id: str, svc: Svc) -> Any:
        name = svc.resolve(sync_id)
        info = next(s for s in svc.syncs() if s["name"] == name)
        return {"status": "success", "data": sync_object(info)}

    @v1.get("/syncs/{sync_id}/runs", summary="Hightouch: a sync's runs (runId, limit, offset)")
    def hightouch_runs(sync_id: str, svc: Svc, runId: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 5,
                       offset: Annotated[int, Query(ge=0)] = 0) -> Any:
        name = svc.resolve(sync_id)
        if runId is not None:
            if not runId.strip().isdigit():
                raise ServiceError(404, f"there is no run {runId}")
            record = svc.record(int(runId))
            if record.sync != name:
                raise ServiceError(404, f"run {runId} is not a run of sync {sync_id}")
            records = [record]
        else:
            records = svc.runs(name, offset + limit)[offset:]
        return {"data": [hightouch_run(r, svc.ids[name]) for r in records]}

    return v1


def _body_or_query(body: dict[str, Any], request: Request) -> dict[str, Any]:
    """Prefect's Census client puts its flag in the query string."""
    return {**dict(request.query_params), **body}


def _pagination(page: int, per_page: int, more: bool, total: int | None) -> dict[str, Any]:
    """Census's pagination object; a total not counted is null."""
    last = max(1, -(-total // per_page)) if total is not None else None
    return {"total_records": total, "per_page": per_page, "prev_page": page - 1 or None,
            "page": page, "next_page": page + 1 if more else None, "last_page": last}
