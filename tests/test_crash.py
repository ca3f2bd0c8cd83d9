"""SIGKILL a running sync at several points; the rerun makes the destination equal the model.

The receiver's hooks stop the sender at exact points: before a batch is
applied (between batches) and after it is applied but before it is answered
(inside a batch). A PostgreSQL query that sleeps holds the run in extraction.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import SECRET
from helpers import project, sync, warehouse
from tidegate import Project
from tidegate.sandbox.webhook import WebhookReceiver

ROWS, BATCH = 1000, 100
ENV = {"HOOK_SECRET": SECRET}


def start(root: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidegate", "run", "accounts", "--project", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ENV, **(env or {})},
    )


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()


def runs(root: Path) -> list[dict[str, Any]]:
    engine = sa.create_engine(f"sqlite:///{root / '.tidegate' / 'state.db'}")
    with engine.connect() as conn:
        out = [dict(r) for r in conn.execute(sa.text("select * from tidegate_runs order by id"))
               .mappings()]
    engine.dispose()
    return out


def expected() -> dict[str, dict[str, Any]]:
    return {json.dumps(i): {"name": f"acct {i}", "score": (i * 13) % 101} for i in range(ROWS)}


def rerun(root: Path) -> dict[str, Any]:
    os.environ.update(ENV)
    try:
        with Project.load(root) as p:
            return p.run("accounts")
    finally:
        for key in ENV:
            os.environ.pop(key, None)


@pytest.fixture
def setup(project_dir: Path, receiver: WebhookReceiver) -> Path:
    warehouse(project_dir / "warehouse.duckdb", ROWS)
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(batch_size=BATCH, concurrency=1)})
    return project_dir


def kill_at_batch(receiver: WebhookReceiver, root: Path, n: int, hook: str) -> None:
    """Kill the sender when the receiver is at batch ``n``, before or after applying it."""
    arrived, release = threading.Event(), threading.Event()
    seen = {"count": 0}

    def block(body: dict[str, Any]) -> bool:
        seen["count"] += 1
        if seen["count"] == n:
            arrived.set()
            release.wait(30)
            return False  # the sender is dead: this request is never answered
        return True

    setattr(receiver, hook, block)
    proc = start(root)
    try:
        assert arrived.wait(60), "the batch never arrived"
        # Batches are sent ahead of commits: let the ones before n commit first.
        deadline = time.monotonic() + 30
        while runs(root)[-1]["batches"] < n - 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        kill(proc)
        setattr(receiver, hook, None)
        release.set()


def test_killed_between_batches(setup: Path, receiver: WebhookReceiver) -> None:
    kill_at_batch(receiver, setup, 4, "before_apply")
    killed = runs(setup)[-1]
    assert killed["status"] == "running" and killed["batches"] == 3
    assert len(receiver.records("Account")) == 3 * BATCH
    summary = rerun(setup)
    assert summary["status"] == "succeeded"
    assert summary["planned"]["added"] == ROWS - 3 * BATCH  # exactly what was not acknowledged
    assert receiver.records("Account") == expected()
    history = runs(setup)
    assert history[0]["status"] == "failed" and "interrupted" in history[0]["error"]
    assert history[0]["delivered_created"] == 3 * BATCH
    assert history[1]["delivered_created"] == ROWS - 3 * BATCH


def test_killed_inside_a_batch(setup: Path, receiver: WebhookReceiver) -> None:
    kill_at_batch(receiver, setup, 4, "after_apply")
    assert len(receiver.records("Account")) == 4 * BATCH  # applied, never acknowledged
    assert runs(setup)[-1]["batches"] == 3
    before = len(receiver.batches)
    summary = rerun(setup)
    assert summary["status"] == "succeeded"
    assert summary["planned"]["added"] == ROWS - 3 * BATCH  # at-least-once: batch 4 again
    assert receiver.records("Account") == expected()
    # The resent batch carries the same webhook-id, so the receiver did not apply it twice.
    ids = [b["id"] for b in receiver.batches]
    assert len(ids) == len(set(ids)) == before + (ROWS - 4 * BATCH) // BATCH


def test_killed_while_extracting(project_dir: Path, receiver: WebhookReceiver,
                                 pg_url: str) -> None:
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text(
            f"create table accounts as select i as id, 'acct ' || i as name, "
            f"(i * 13) % 101 as score from generate_series(0, {ROWS - 1}) i"))
    engine.dispose()
    project(project_dir,
            {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": {**{k: v for k, v in sync(batch_size=BATCH).items() if k != "table"},
                          "query": "select a.* from accounts a, (select pg_sleep(${SLEEP:-0})) s",
                          "source": "pg"}},
            sources={"pg": {"type": "postgres", "url": pg_url}})
    proc = start(project_dir, {"SLEEP": "30", "TIDEGATE_LOG": "info"})
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "extracting" in line:
            break
    kill(proc)
    assert any("extracting" in line for line in lines), lines
    killed = runs(project_dir)[-1]
    assert killed["status"] == "running" and killed["batches"] == 0
    assert receiver.request_count == 0
    summary = rerun(project_dir)
    assert summary["status"] == "succeeded" and summary["planned"]["added"] == ROWS
    assert receiver.records("Account") == expected()
    assert runs(project_dir)[0]["status"] == "failed"
