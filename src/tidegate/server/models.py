"""The shapes of tidegate's own API, as the OpenAPI document shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "running", "succeeded", "partial", "held", "failed"]


class Open(BaseModel):
    """A document that may carry more keys than it lists (later versions add some)."""

    model_config = ConfigDict(extra="allow")


class Planned(BaseModel):
    added: int
    changed: int
    removed: int
    unchanged: int
    invalid: int


class Delivered(BaseModel):
    created: int
    updated: int
    deleted: int


class RunSummary(Open):
    """The ``--json`` run summary (SPEC §4), with when it was queued, started and finished."""

    run_id: int
    sync: str
    status: Status
    planned: Planned
    delivered: Delivered
    rejected: int = Field(description="rows the destination rejected")
    duration_s: float
    error: str | None = Field(description="why the run failed or was held, or which rows "
                                          "were invalid")
    verdict: dict[str, Any] | None = Field(description="the guardrails' verdict")
    mode: str
    full: bool
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    triggered_by: str | None


class RunDetail(Open):
    """One run as ``tidegate show --json`` gives it, without its rows (see ``/rejected``)."""

    run_id: int
    sync: str
    sync_id: int | None
    status: Status
    planned: Planned
    delivered: Delivered
    rejected: int
    duration_s: float
    error: str | None
    verdict: dict[str, Any] | None
    mode: str
    destination: str
    object: str
    full: bool
    queued_at: str | None
    started_at: str
    finished_at: str | None
    triggered_by: str | None
    approving: bool = Field(description="approved, waiting for a worker to send it")
    to_send: int
    batches: int
    timings: dict[str, float]
    forced: bool
    samples: dict[str, Any] | None = Field(description="sample rows of a held run's plan")


class SyncInfo(BaseModel):
    id: int = Field(description="stable numeric id (Census / Hightouch clients use it)")
    name: str
    source: str
    destination: str
    object: str
    mode: str
    schedule: str | None = Field(description="cron expression, UTC")
    schedule_text: str | None
    next_run_at: str | None
    scheduled: bool = Field(description="whether this server's scheduler fires it")
    busy: bool = Field(description="a run of it is running or queued here")
    last_run: RunSummary | None


class SyncList(BaseModel):
    syncs: list[SyncInfo]


class RunList(BaseModel):
    runs: list[RunSummary]


class Row(BaseModel):
    key: Any
    kind: str = Field(description="rejected (by the destination), invalid (never sent) or "
                                  "conflict (a revert left it alone)")
    error: str
    attempt: int
    record: Any


class RowPage(BaseModel):
    run_id: int
    rows: list[Row]
    limit: int
    offset: int
    next_offset: int | None


class TriggerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full: bool = Field(default=False, description="ignore state: send every row")
    force: bool = Field(default=False, description="skip the guardrails (recorded on the run)")


class Health(Open):
    status: Literal["ok"]
    project: str
    syncs: int
    running: int = Field(description="runs in progress")
    queued: int = Field(description="runs waiting for a worker")
    scheduler: bool


class ErrorBody(BaseModel):
    message: str
    fix: str | None = None


class Error(BaseModel):
    error: ErrorBody
