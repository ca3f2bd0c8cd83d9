"""Syncs into the local Iterable project: list membership, users, events, failures in a 200."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from helpers import cli, project
from tidegate import Project
from tidegate.deliver import RetryPolicy
from tidegate.sandbox.iterable import IterableSandbox

ENV = {"ITERABLE_KEY": "it-test-key"}


@pytest.fixture
def it() -> Iterator[IterableSandbox]:
    with IterableSandbox(api_key=ENV["ITERABLE_KEY"], lists={42: "Re-engagement"}) as server:
        yield server


def setup(root: Path, it: IterableSandbox, sync: dict[str, Any], sql: str,
          **destination: Any) -> None:
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute(sql)
    project(root, {"it": {"type": "iterable", "base_url": it.url, "api_key": "${ITERABLE_KEY}",
                          **destination}},
            {"s": {"source": "warehouse", "destination": "it", **sync}})


def run(root: Path, env: dict[str, str] = ENV) -> dict[str, Any]:
    with Project.load(root, env=env) as p:
        p.retry = RetryPolicy(base_delay=0.01, max_delay=0.05)
        return p.run("s")


def rows_of(root: Path, run_id: int) -> dict[Any, str]:
    with Project.load(root, env=ENV) as p:
        return {r["key"]: r["error"] for r in p.show(run_id)["rows"]}


ELIGIBLE = """create or replace table eligible as
              select 'user' || i || '@example.com' as email, i % 7 as days_idle
              from range({start}, {stop}) t(i)"""
LIST_SYNC = {"table": "eligible", "primary_key": "email", "object": "list:42", "mode": "mirror",
             "fields": ["days_idle"]}


def test_a_mirrored_list_sends_only_who_joined_and_who_left_in_the_fewest_requests(
        project_dir: Path, it: IterableSandbox) -> None:
    # 10,000 eligible users; the rate is raised so the test does not wait on it.
    setup(project_dir, it, LIST_SYNC, ELIGIBLE.format(start=0, stop=10_000),
          requests_per_second=100)
    first = run(project_dir)
    assert first["status"] == "succeeded" and first["delivered"]["created"] == 10_000
    assert len(it.members(42)) == 10_000
    assert it.calls("/api/lists/subscribe") == [1000] * 10
    before = it.request_count
    # 300 leave (0‥299) and 200 join (10,000‥10,199).
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute(ELIGIBLE.format(start=300, stop=10_200))
    second = run(project_dir)
    assert second["status"] == "succeeded", second
    assert second["planned"]["added"] == 200 and second["planned"]["removed"] == 300
    assert second["delivered"] == {"created": 200, "updated": 0, "deleted": 300}
    # One subscribe of 200 and one unsubscribe of 300 (1,000 a request), and before
    # anything is sent the user fields read that checks the dataFields' values against
    # their types, and the lists lookup that checks list:42 exists: nothing else.
    assert it.calls("/api/lists/subscribe")[10:] == [200]
    assert it.calls("/api/lists/unsubscribe") == [300]
    assert it.calls("/api/users/getFields") == [0, 0]  # one a run, none for its items
    assert it.request_count - before == 4
    members = it.members(42)
    assert len(members) == 9_900
    assert "user0@example.com" not in members and "user10199@example.com" in members


def plan_of(root: Path) -> dict[str, Any]:
    with Project.load(root, env=ENV) as p:
        return p.plan("s")


def test_users_failing_inside_a_200_reject_only_their_rows(project_dir: Path,
                                                           it: IterableSandbox) -> None:
    sql = """create or replace table people as select * from (values
               ('ada@example.com', 36, 'gold'), ('not-an-email', 41, 'gold'),
               ('bob@example.com', 52, 'silver'), ('gone@example.com', 29, 'gold'))
             t(email, age, tier)"""
    setup(project_dir, it, {"table": "people", "primary_key": "email", "object": "users",
                            "mode": "upsert", "fields": ["age", "tier"]}, sql)
    it.forget(["gone@example.com"])
    summary = run(project_dir)
    assert summary["status"] == "partial" and summary["rejected"] == 1
    # An identifier that cannot be an email is invalid in the plan: it is never sent.
    assert summary["planned"]["invalid"] == 1 and it.calls("/api/users/bulkUpdate") == [3]
    errors = rows_of(project_dir, summary["run_id"])
    assert errors["not-an-email"] == "the identifier email is not an email address"
    assert "forgotten (GDPR)" in errors["gone@example.com"]
    users = {u["email"]: u["dataFields"] for u in it.users()}
    assert users == {"ada@example.com": {"age": 36, "tier": "gold"},
                     "bob@example.com": {"age": 52, "tier": "silver"}}
    again = run(project_dir)  # the forgotten user is tried again, the invalid one is not
    assert again["rejected"] == 1 and again["planned"]["invalid"] == 1
    assert it.calls("/api/users/bulkUpdate") == [3, 1]


PEOPLE = """create or replace table people as select * from (values
              ('ada@example.com', 36, 'gold', date '2026-01-01'),
              ('bob@example.com', 52, 'silver', date '2026-01-01'),
              ('cy@example.com', 29, 'gold', date '2026-01-01'))
            t(email, age, tier, signup)"""


def test_a_value_that_cannot_become_its_fields_type_is_invalid_in_the_plan(
        project_dir: Path, it: IterableSandbox) -> None:
    setup(project_dir, it, {"table": "people", "primary_key": "email", "object": "users",
                            "mode": "upsert", "fields": ["age", "tier", "signup"]}, PEOPLE)
    assert run(project_dir)["delivered"]["created"] == 3  # age long, signup date from now on
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute("""create or replace table people as select * from (values
                         ('ada@example.com', '36 years', 'gold', '2026-01-01'),
                         ('bob@example.com', '52', 'silver', '2026-01-01'),
                         ('cy@example.com', null, 'gold', 'soon'))
                       t(email, age, tier, signup)""")
    plan = plan_of(project_dir)
    assert plan["planned"]["invalid"] == 2 and plan["planned"]["changed"] == 1
    assert plan["invalid_reasons"] == {
        "age is a long field in the Iterable project, and this value cannot become one (a "
        "field's type never changes once set)": 1,
        "signup is a date field in the Iterable project, and this value cannot become one (a "
        "field's type never changes once set)": 1}
    summary = run(project_dir)
    # '52' might be coerced into a long, so it is sent and Iterable decides: this project
    # refuses it inside its 200.
    assert summary["planned"]["invalid"] == 2 and summary["rejected"] == 1
    assert "(failedUpdates.invalidDataEmails)" in rows_of(project_dir, summary["run_id"])[
        "bob@example.com"]
    assert it.calls("/api/users/bulkUpdate") == [3, 1]
    again = run(project_dir)  # the model still holds them: still invalid, not sent
    assert again["planned"]["invalid"] == 2 and it.calls("/api/users/bulkUpdate") == [3, 1, 1]
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute(PEOPLE.replace("36, 'gold'", "37, 'gold'").replace(
            "29, 'gold', date '2026-01-01'", "29, 'gold', date '2026-02-01'"))
    fixed = run(project_dir)
    assert fixed["status"] == "succeeded" and fixed["delivered"]["updated"] == 2
    users = {u["email"]: u["dataFields"] for u in it.users()}
    assert users["ada@example.com"]["age"] == 37
    assert users["cy@example.com"]["signup"] == "2026-02-01"


def test_user_ids_and_values_json_cannot_carry(project_dir: Path, it: IterableSandbox) -> None:
    sql = """create or replace table accounts as select * from (values
               ('u-1', 1.5), ('   ', 2.0), ('u-3', 'nan'::double), ('ü-4', 4.0))
             t(user_id, score)"""
    setup(project_dir, it, {"table": "accounts", "primary_key": "user_id", "object": "users",
                            "mode": "upsert",
                            "match": {"source": "user_id", "destination": "userId"},
                            "fields": ["score"]}, sql)
    summary = run(project_dir)
    assert summary["planned"]["invalid"] == 2 and summary["rejected"] == 1
    errors = rows_of(project_dir, summary["run_id"])
    assert errors["   "] == "the identifier userId is empty"
    assert errors["u-3"] == "score holds NaN, infinity or binary data, which JSON cannot carry"
    # What Iterable alone knows stays its call: it refuses this userId inside its 200.
    assert "(failedUpdates.invalidUserIds)" in errors["ü-4"]
    assert it.calls("/api/users/bulkUpdate") == [2]
    assert {u["userId"] for u in it.users()} == {"u-1"}


EVENTS = """create or replace table usage_events as select * from (values
             ('e1', 'trial_expired', 'ada@example.com', timestamp '2026-04-01 09:00:00', 3),
             ('e2', 'trial_expired', 'bob@example.com', timestamp '2026-04-01 10:00:00', 1),
             ('e3', 'forbidden_event', 'bob@example.com', timestamp '2026-04-01 11:00:00', 2))
           t(event_id, eventName, email, createdAt, seats)"""
EVENT_SYNC = {"table": "usage_events", "primary_key": "event_id", "object": "events",
              "mode": "insert", "match": {"source": "event_id", "destination": "id"},
              "fields": ["eventName", "email", "createdAt", "seats"]}


def test_events_are_tracked_in_bulk_with_the_key_as_their_id(project_dir: Path,
                                                            it: IterableSandbox) -> None:
    setup(project_dir, it, EVENT_SYNC, EVENTS)
    it.disallow_events(["forbidden_event"])
    summary = run(project_dir)
    assert summary["delivered"]["created"] == 2 and summary["rejected"] == 1
    assert "does not accept events named 'forbidden_event'" in rows_of(
        project_dir, summary["run_id"])["e3"]
    events = it.events()
    assert events["e1"] == {"eventName": "trial_expired", "email": "ada@example.com",
                            "userId": None, "createdAt": 1775034000,
                            "dataFields": {"seats": 3}}
    it.disallow_events([])
    again = run(project_dir)
    assert again["delivered"]["created"] == 1 and set(it.events()) == {"e1", "e2", "e3"}
    assert it.calls("/api/events/trackBulk") == [3, 1]


def test_events_without_a_name_or_a_user_are_invalid_in_the_plan(project_dir: Path,
                                                                 it: IterableSandbox) -> None:
    sql = """create or replace table usage_events as select * from (values
               ('e1', 'trial_expired', 'ada@example.com', null, '12'),
               ('e2', '', 'ada@example.com', null, null),
               ('e3', 'trial_expired', null, null, null),
               ('e4', 'trial_expired', 'ada at example.com', null, null),
               ('e5', 'trial_expired', 'not an email', 'u-5', null),
               ('e6', 'trial_expired', 'ada@example.com', null, 'twelve'))
             t(event_id, eventName, email, userId, campaignId)"""
    setup(project_dir, it, {**EVENT_SYNC, "fields": ["eventName", "email", "userId",
                                                     "campaignId"]}, sql)
    known = httpx.post(f"{it.url}/api/users/bulkUpdate", headers={"Api-Key": ENV["ITERABLE_KEY"]},
                       json={"users": [{"userId": "u-5", "preferUserId": True}]})
    assert known.json()["successCount"] == 1
    summary = run(project_dir)
    assert summary["planned"]["invalid"] == 4 and summary["rejected"] == 0, summary
    assert rows_of(project_dir, summary["run_id"]) == {
        "e2": "eventName is empty",
        "e3": "the event names no user: email and userId are both empty",
        "e4": "email is not an email address",
        "e6": "campaignId must be a whole number (an Iterable campaignId)"}
    assert it.calls("/api/events/trackBulk") == [2]  # e5 goes by its userId
    assert it.calls("/api/users/getFields") == []  # event fields' types are not read
    assert set(it.events()) == {"e1", "e5"}


@pytest.mark.parametrize(("change", "message"), [
    ({"object": "list:7"}, "the Iterable project has no list 7"),
    ({"object": "segments"}, "Iterable objects are users, events or list:<id>"),
    ({"mode": "mirror"}, "does not support mode 'mirror' for object users"),
    ({"match": {"source": "email", "destination": "emailAddress"}},
     "Iterable identifies users by email or userId, not 'emailAddress'"),
])
def test_config_problems_are_named_before_anything_is_sent(
        project_dir: Path, it: IterableSandbox, change: dict[str, Any], message: str) -> None:
    sync = {"table": "eligible", "primary_key": "email", "object": "users", "mode": "upsert",
            "fields": ["days_idle"], **change}
    setup(project_dir, it, sync, ELIGIBLE.format(start=0, stop=5))
    result = cli("run", "s", "--project", str(project_dir), env=ENV)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "tidegate.yml:" in result.stderr
    assert it.calls("/api/users/bulkUpdate") == []


def test_a_missing_event_name_is_a_config_error(project_dir: Path, it: IterableSandbox) -> None:
    setup(project_dir, it, {**EVENT_SYNC, "fields": ["email", "seats"]}, EVENTS)
    result = cli("run", "s", "--project", str(project_dir), env=ENV)
    assert result.returncode == 2 and "an event needs an eventName" in result.stderr


def test_throttling_is_retried_and_a_wrong_key_stops_the_run(project_dir: Path,
                                                            it: IterableSandbox) -> None:
    setup(project_dir, it, LIST_SYNC, ELIGIBLE.format(start=0, stop=50), max_records=10)
    it.throttle_next(3)
    summary = run(project_dir)
    assert summary["status"] == "succeeded" and len(it.members(42)) == 50
    idle = run(project_dir, env={"ITERABLE_KEY": "wrong-key"})
    assert idle["status"] == "succeeded"  # nothing to send: the key is never used
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute(ELIGIBLE.format(start=0, stop=60))
    failed = run(project_dir, env={"ITERABLE_KEY": "wrong-key"})
    assert failed["status"] == "failed"
    assert "Iterable refused the API key (401 BadApiKey)" in failed["error"]
    assert "wrong-key" not in failed["error"]


def test_the_eu_base_url_is_taken_as_configured(tmp_path: Path) -> None:
    from tidegate.destinations.iterable.destination import IterableConfig

    config = IterableConfig.model_validate({"type": "iterable", "api_key": "k",
                                            "base_url": "https://api.eu.iterable.com/api/"})
    assert config.base_url == "https://api.eu.iterable.com"


def test_the_local_project_lists_field_types_and_types_an_array_by_its_items(
        it: IterableSandbox) -> None:
    def update(**data: Any) -> dict[str, Any]:
        answer = httpx.post(f"{it.url}/api/users/bulkUpdate",
                            headers={"Api-Key": ENV["ITERABLE_KEY"]},
                            json={"users": [{"email": "ada@example.com", "dataFields": data}]})
        return dict(answer.json())

    assert update(tags=[], age=36, seen="2026-01-01")["successCount"] == 1
    fields = httpx.get(f"{it.url}/api/users/getFields",
                       headers={"Api-Key": ENV["ITERABLE_KEY"]}).json()["fields"]
    assert fields == {"email": "string", "userId": "string", "age": "long", "seen": "date"}
    assert update(tags=["a", "b"])["successCount"] == 1  # the first items fix the type
    assert httpx.get(f"{it.url}/api/users/getFields", headers={"Api-Key": ENV["ITERABLE_KEY"]}
                     ).json()["fields"]["tags"] == "string"
    refused = update(tags=["c", 3])
    assert refused["failCount"] == 1
    assert refused["failedUpdates"]["invalidDataEmails"] == ["ada@example.com"]
