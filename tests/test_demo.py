"""``tidegate demo``: the whole story runs, and the second run sends exactly the 1 %."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import cli


def test_demo_syncs_everything_then_exactly_the_changed_one_percent(tmp_path: Path) -> None:
    result = cli("demo", "--dir", str(tmp_path / "demo"), "--rows", "20000", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    first, second, third = doc["runs"]
    assert first["delivered"]["created"] == 20000
    assert doc["changed"] == 200
    assert second["planned"]["changed"] == 200 and second["delivered"]["updated"] == 200
    assert second["planned"]["unchanged"] == 19800
    assert doc["receiver_records"] == 20000 and doc["ok"] is True
    # The upstream bug is held by the demo's guardrail, and nothing reaches the receiver.
    assert third["status"] == "held" and doc["held_run_sent_nothing"] is True
    assert third["verdict"]["reasons"][0]["rule"] == "max_changed_pct"
    assert third["planned"]["changed"] == doc["zeroed"]
    history = cli("runs", "--project", str(tmp_path / "demo"), "--json")
    assert [r["status"] for r in json.loads(history.stdout)["runs"]] == [
        "held", "succeeded", "succeeded"]


def test_demo_prints_both_runs_counts(tmp_path: Path) -> None:
    result = cli("demo", "--dir", str(tmp_path / "demo"), "--rows", "3000")
    assert result.returncode == 0, result.stderr
    assert "created 3,000" in result.stdout and "updated 30," in result.stdout
    assert "held:" in result.stdout and "max_changed_pct" in result.stdout
