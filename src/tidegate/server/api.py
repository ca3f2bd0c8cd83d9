"""tidegate's own REST API under ``/api`` (documented in docs/server.md and ``/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from tidegate.server.models import (
    Error,
    Health,
    RowPage,
    RunDetail,
    RunList,
    RunSummary,
    SyncInfo,
    SyncList,
    TriggerRequest,
)
from tidegate.server.service import Service, summary


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


Svc = Annotated[Service, Depends(service)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "no valid token"},
    404: {"model": Error, "description": "no such sync or run"},
}


def router(authorized: Any) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(authorized)], responses=ERRORS,
                    tags=["tidegate"])

    @api.get("/syncs", response_model=SyncList, summary="Every sync, its last run and next "
             "scheduled time")
    def list_syncs(svc: Svc) -> dict[str, Any]:
        return {"syncs": svc.syncs()}

    @api.get("/syncs/{sync}", response_model=SyncInfo, summary="One sync (by name or id)")
    def get_sync(sync: str, svc: Svc) -> dict[str, Any]:
        name = svc.resolve(sync)
        return next(s for s in svc.syncs() if s["name"] == name)

    @api.post("/syncs/{sync}/runs", response_model=RunSummary, status_code=202,
              summary="Queue a run of a sync (by name or id)")
    def trigger(sync: str, svc: Svc, response: Response,
                options: Annotated[TriggerRequest | None, Body()] = None) -> dict[str, Any]:
        opts = options or TriggerRequest()
        record = svc.trigger(sync, full=opts.full, force=opts.force, by="api")
        response.headers["Location"] = f"/api/runs/{record.id}"
        return summary(record)

    @api.get("/syncs/{sync}/plan", summary="What a run would do now; sends nothing",
             responses={409: {"model": Error, "description": "the sync is running"},
                        422: {"model": Error, "description": "the plan failed (config)"}})
    def plan(sync: str, svc: Svc, full: bool = False) -> dict[str, Any]:
        return svc.plan(sync, full=full)

    @api.get("/runs", response_model=RunList, summary="Runs, newest first")
    def list_runs(svc: Svc, sync: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict[str, Any]:
        return {"runs": [summary(r) for r in svc.runs(sync, limit)]}

    @api.get("/runs/{run_id}", response_model=RunDetail, summary="One run")
    def get_run(run_id: int, svc: Svc) -> dict[str, Any]:
        return svc.detail(run_id)

    @api.get("/runs/{run_id}/rejected", response_model=RowPage,
             summary="A run's rows not delivered, with why (paged)")
    def rejected(run_id: int, svc: Svc,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        rows = svc.rows(run_id, limit=limit + 1, offset=offset)
        more = len(rows) > limit
        return {"run_id": run_id, "rows": rows[:limit], "limit": limit, "offset": offset,
                "next_offset": offset + limit if more else None}

    @api.post("/runs/{run_id}/approve", response_model=RunSummary, status_code=202,
              summary="Send a held run as it was planned",
              responses={409: {"model": Error, "description": "the run is not held, or "
                                                           "not its sync's latest"}})
    def approve(run_id: int, svc: Svc) -> dict[str, Any]:
        return summary(svc.approve(run_id))

    return api


def health_router() -> APIRouter:
    open_ = APIRouter(tags=["tidegate"])

    @open_.get("/healthz", response_model=Health, summary="Liveness (no token needed)")
    def healthz(svc: Svc) -> dict[str, Any]:
        return svc.health()

    return open_

