"""The audit log: every delivered change, with old and new values, masking on request."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from conftest import SECRET
from helpers import cli, project, sync, warehouse
from tidegate import Project, segments
from tidegate.sandbox.webhook import WebhookReceiver

ENV = {"HOOK_SECRET": SECRET}


def setup(root: Path, receiver: WebhookReceiver, **top: Any) -> None:
    warehouse(root / "warehouse.duckdb", 6)
    project(root, {"hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}},
            {"accounts": sync(mode="mirror")}, **top)


def run(root: Path) -> dict[str, Any]:
    with Project.load(root, env=ENV) as p:
        return p.run("accounts")


def changes(root: Path, run_id: int) -> list[dict[str, Any]]:
    with Project.load(root, env=ENV) as p:
        return list(p.show(run_id, changes=True)["changes"])


def test_every_delivered_change_is_recorded_with_old_and_new(project_dir: Path,
                                                             receiver: WebhookReceiver) -> None:
    setup(project_dir, receiver)
    first = run(project_dir)
    created = changes(project_dir, first["run_id"])
    assert len(created) == 6 * 2  # name and score of six new records
    assert {(c["key"], c["field"], c["old"], c["new"], c["op"]) for c in created if c["key"] == 1} \
        == {(1, "name", None, "acct 1", "created"), (1, "score", None, 13, "created")}

    warehouse(project_dir / "warehouse.duckdb",
              sql="update accounts set score = 99 where id = 2; delete from accounts where id = 5")
    receiver.reject_keys([3])
    warehouse(project_dir / "warehouse.duckdb", sql="update accounts set name = 'x' where id = 3")
    second = run(project_dir)
    assert second["delivered"] == {"created": 0, "updated": 1, "deleted": 1}
    assert second["rejected"] == 1
    got = [(c["key"], c["field"], c["old"], c["new"], c["op"])
           for c in changes(project_dir, second["run_id"])]
    # Only fields that changed; the rejected key 3 was not delivered, so it is not there.
    assert got == [(2, "score", 26, 99, "updated"),
                   (5, "name", "acct 5", None, "deleted"), (5, "score", 65, None, "deleted")]

    shown = cli("show", str(second["run_id"]), "--changes", "--project", str(project_dir),
                env=ENV)
    assert shown.returncode == 0 and "changes delivered" in shown.stdout
    assert "99" in shown.stdout and "acct 5" in shown.stdout
    as_json = json.loads(cli("show", str(second["run_id"]), "--changes", "--json",
                             "--project", str(project_dir), env=ENV).stdout)
    assert [c["key"] for c in as_json["changes"]] == [2, 5, 5]


def test_masked_fields_are_stored_as_salted_hashes(project_dir: Path,
                                                   receiver: WebhookReceiver) -> None:
    setup(project_dir, receiver, audit={"mask": ["name"]})
    first = run(project_dir)
    warehouse(project_dir / "warehouse.duckdb",
              sql="update accounts set name = 'renamed' where id = 1; "
                  "update accounts set score = 0 where id = 2")
    second = run(project_dir)
    got = {(c["key"], c["field"]): c for c in changes(project_dir, second["run_id"])}
    renamed = got[(1, "name")]
    assert renamed["old"].startswith("sha256:") and renamed["new"].startswith("sha256:")
    assert renamed["old"] != renamed["new"]
    assert (2, "name") not in got  # an unchanged value hashes the same, so it is no change
    assert got[(2, "score")]["new"] == 0  # other fields keep their values
    first_names = {c["key"]: c["new"] for c in changes(project_dir, first["run_id"])
                   if c["field"] == "name"}
    assert first_names[1] == renamed["old"]
    # The values themselves are nowhere in the log.
    with closing(sqlite3.connect(project_dir / ".tidegate" / "state.db")) as conn:
        blobs = [segments.decode(b).to_pylist()
                 for row in conn.execute("select changes, records from tidegate_changes")
                 for b in row]
    text = json.dumps(blobs)
    assert "acct 1" not in text and "renamed" not in text and "acct 4" not in text
