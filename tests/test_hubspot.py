"""Syncs into the local HubSpot portal: property checks, value forms, throttling, 207s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from helpers import cli, project
from tidegate import Project
from tidegate.deliver import RetryPolicy
from tidegate.errors import ConfigError
from tidegate.sandbox.hubspot import HubSpotSandbox, Property

ENV = {"HUBSPOT_TOKEN": "pat-na1-test-token"}

USAGE = """
    create or replace table usage as
    select 'acct-' || i as account_id,
           'Company ' || i as name,
           (i * 3)::integer as weekly_active_users,
           date '2026-01-01' + (i % 28)::integer as last_active_date,
           timestamp '2026-01-01 08:30:00' + to_seconds(i * 3600) as last_seen_at,
           i % 2 = 0 as is_paying,
           case when i % 3 = 0 then 'enterprise' else 'starter' end as plan_tier,
           case when i % 2 = 0 then ['reports', 'api'] else ['reports'] end as features
    from range(250) t(i)
"""


@pytest.fixture
def portal() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(token=ENV["HUBSPOT_TOKEN"], burst=100_000,
                        check_responses=True) as server:
        for prop in (
            Property("tidegate_account_id", "string", "text", unique=True),
            Property("weekly_active_users", "number", "number"),
            Property("last_active_date", "date", "date"),
            Property("last_seen_at", "datetime", "date"),
            Property("is_paying", "bool", "booleancheckbox"),
            Property("plan_tier", "enumeration", "select", options=("starter", "enterprise")),
            Property("features_used", "enumeration", "checkbox",
                     options=("reports", "api", "sso")),
        ):
            server.add_property("companies", prop)
        yield server
        assert server.response_violations == []


FIELDS = {"name": "name", "weekly_active_users": "weekly_active_users",
          "last_active_date": "last_active_date", "last_seen_at": "last_seen_at",
          "is_paying": "is_paying", "plan_tier": "plan_tier", "features": "features_used"}


def setup(root: Path, portal: HubSpotSandbox, *, mode: str = "upsert", sql: str = USAGE,
          fields: dict[str, str] | None = None, **extra: Any) -> None:
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute(sql)
    project(root, {"hs": {"type": "hubspot", "base_url": portal.url,
                          "token": "${HUBSPOT_TOKEN}", "requests_per_second": 500,
                          **extra.pop("destination", {})}},
            {"usage": {"source": "warehouse", "table": "usage", "primary_key": "account_id",
                       "destination": "hs", "object": "companies", "mode": mode,
                       "match": {"source": "account_id", "destination": "tidegate_account_id"},
                       "fields": fields or FIELDS, **extra}})


def run(root: Path) -> dict[str, Any]:
    with Project.load(root, env=ENV) as p:
        p.retry = RetryPolicy(base_delay=0.01, max_delay=0.05)
        return p.run("usage")


def companies(portal: HubSpotSandbox) -> dict[str, dict[str, str]]:
    return {r["tidegate_account_id"]: r for r in portal.records("companies").values()}


def test_values_are_sent_in_hubspots_string_forms_at_most_100_inputs_a_request(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, batch_size=1000)
    summary = run(project_dir)
    assert summary["status"] == "succeeded", summary
    assert summary["delivered"]["created"] == 250
    assert sorted(portal.writes("batch/upsert")) == [50, 100, 100]
    acct = companies(portal)["acct-2"]
    assert acct["weekly_active_users"] == "6"
    assert acct["last_active_date"] == "1767398400000"  # 2026-01-03, midnight UTC
    assert acct["last_seen_at"] == "1767263400000"  # 2026-01-01 10:30 UTC
    assert acct["is_paying"] == "true" and companies(portal)["acct-1"]["is_paying"] == "false"
    assert acct["plan_tier"] == "starter" and companies(portal)["acct-3"]["plan_tier"] == \
        "enterprise"
    assert acct["features_used"] == "reports;api"


BAD_VALUES = """
    create or replace table usage as select * from (values
      ('ok', 1.5, '2026-02-01', 'starter', ['api']),
      ('nan', 'nan'::double, '2026-02-01', 'starter', ['api']),
      ('tier', 2.0, '2026-02-01', 'gold', ['api']),
      ('feature', 3.0, '2026-02-01', 'starter', ['api', 'teleport']),
      ('day', 4.0, '2026-02-30', 'starter', ['api']),
      ('', 5.0, '2026-02-01', 'starter', ['api']),
      ('cleared', 6.0, '', '', [])
    ) t(account_id, weekly_active_users, last_active_date, plan_tier, features)
"""
BAD_FIELDS = {"weekly_active_users": "weekly_active_users", "last_active_date": "last_active_date",
              "plan_tier": "plan_tier", "features": "features_used"}


def test_values_a_property_cannot_hold_are_invalid_in_the_plan_and_never_sent(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, sql=BAD_VALUES, fields=BAD_FIELDS)
    planned = cli("plan", "usage", "--json", "--project", str(project_dir), env=ENV)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["planned"]["invalid"] == 5 and plan["planned"]["added"] == 2
    assert plan["invalid_reasons"] == {
        "weekly_active_users is a number property: the value is not a finite number": 1,
        "plan_tier takes only its options (starter, enterprise)": 1,
        "features_used takes only its options (reports, api, sso)": 1,
        "last_active_date is a date property: HubSpot takes midnight UTC, and this value has a "
        "time of day or is not a date that exists (cast it to a date in the model)": 1,
        "the match property tidegate_account_id is empty": 1}
    assert {s["key"] for s in plan["samples"]["invalid"]} == {"", "day", "feature", "nan",
                                                              "tier"}
    assert portal.writes("batch/upsert") == []  # a plan sends nothing
    shown = cli("plan", "usage", "--project", str(project_dir), env={**ENV, "COLUMNS": "200"})
    assert "1 invalid row(s): plan_tier takes only its options (starter, enterprise)" in \
        shown.stdout

    summary = run(project_dir)
    assert summary["status"] == "partial" and summary["rejected"] == 0, summary
    assert summary["planned"]["invalid"] == 5 and summary["delivered"]["created"] == 2
    assert portal.writes("batch/upsert") == [2]  # the five were never sent
    assert set(companies(portal)) == {"ok", "cleared"}
    assert companies(portal)["ok"]["weekly_active_users"] == "1.5"
    # Empty text clears a property of any type, as a null does: it is not invalid.
    assert companies(portal)["cleared"]["last_active_date"] == ""
    assert companies(portal)["cleared"]["plan_tier"] == ""
    with Project.load(project_dir, env=ENV) as p:
        rows = {r["key"]: r for r in p.show(summary["run_id"])["rows"]}
    assert rows["tier"]["kind"] == "invalid" and "starter, enterprise" in rows["tier"]["error"]
    assert "not a date that exists" in rows["day"]["error"]

    again = run(project_dir)  # the model still holds them: still invalid, not retried
    assert again["planned"]["invalid"] == 5 and again["planned"]["added"] == 0
    assert again["rejected"] == 0 and portal.writes("batch/upsert") == [2]

    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute("update usage set weekly_active_users = 7 where account_id = 'nan'")
        con.execute("update usage set plan_tier = 'enterprise' where account_id = 'tier'")
        con.execute("update usage set features = ['api', 'sso'] where account_id = 'feature'")
        con.execute("update usage set last_active_date = '2026-02-28' where account_id = 'day'")
        con.execute("update usage set plan_tier = 'gold' where account_id = 'ok'")
    fixed = run(project_dir)
    assert fixed["delivered"]["created"] == 4 and fixed["rejected"] == 0
    assert fixed["planned"]["invalid"] == 2  # the empty key, and 'ok' now holds 'gold'
    assert fixed["planned"]["changed"] == 0
    assert portal.writes("batch/upsert") == [2, 4]
    held = companies(portal)
    assert held["tier"]["plan_tier"] == "enterprise" and held["nan"]["weekly_active_users"] == "7"
    assert held["day"]["last_active_date"] == "1772236800000"  # 2026-02-28
    assert held["ok"]["plan_tier"] == "starter"  # its last good value stays in HubSpot


def test_a_date_with_a_time_of_day_is_invalid_in_the_plan(project_dir: Path,
                                                          portal: HubSpotSandbox) -> None:
    sql = """create or replace table usage as select * from (values
               ('a', timestamp '2026-03-01 00:00:00'), ('b', timestamp '2026-03-01 13:05:00')
             ) t(account_id, last_active_date)"""
    setup(project_dir, portal, sql=sql, fields={"last_active_date": "last_active_date"})
    summary = run(project_dir)
    assert summary["planned"]["invalid"] == 1 and summary["rejected"] == 0
    assert companies(portal)["a"]["last_active_date"] == "1772323200000"
    assert "b" not in companies(portal)


def test_text_is_checked_against_checkbox_and_datetime_properties(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    sql = """create or replace table usage as select * from (values
               ('iso', 'TRUE', '2026-01-01T10:00:00Z'), ('spaced', 'false', '2026-01-01 10:00'),
               ('offset', 'true', '2026-01-01T10:00:00.250+02:00'), ('millis', '', '1767261600000'),
               ('yes', 'yes', '2026-01-01T10:00:00Z'), ('hour', 'true', '2026-01-01T25:00:00Z'),
               ('feb30', 'true', '2026-02-30T10:00:00Z'), ('word', 'true', 'soon')
             ) t(account_id, is_paying, last_seen_at)"""
    setup(project_dir, portal, sql=sql, fields={"is_paying": "is_paying",
                                               "last_seen_at": "last_seen_at"})
    summary = run(project_dir)
    assert summary["rejected"] == 0 and summary["delivered"]["created"] == 4, summary
    with Project.load(project_dir, env=ENV) as p:
        rows = {r["key"]: r["error"] for r in p.show(summary["run_id"])["rows"]}
    assert rows == {"yes": "is_paying is a checkbox: it takes true or false",
                    **{k: "last_seen_at is a datetime property: the value is not a date and time"
                       for k in ("hour", "feb30", "word")}}
    held = companies(portal)
    assert held["iso"]["is_paying"] == "true" and held["millis"]["is_paying"] == ""
    assert held["iso"]["last_seen_at"] == held["millis"]["last_seen_at"] == \
        held["spaced"]["last_seen_at"] == "1767261600000"
    assert held["offset"]["last_seen_at"] == "1767254400250"


def test_update_by_record_id_needs_ids_that_can_be_record_ids(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    known = portal.put("companies", {"name": "before"})
    sql = f"""create or replace table usage as select * from (values
                ('{known}', 'after'), ('acct-9', 'never')) t(account_id, name)"""
    setup(project_dir, portal, sql=sql, mode="update", fields={"name": "name"})
    config = (project_dir / "tidegate.yml").read_text().replace(
        "destination: tidegate_account_id", "destination: hs_object_id")
    (project_dir / "tidegate.yml").write_text(config)
    summary = run(project_dir)
    assert summary["delivered"]["updated"] == 1 and summary["rejected"] == 0
    assert summary["planned"]["invalid"] == 1
    with Project.load(project_dir, env=ENV) as p:
        rows = p.show(summary["run_id"])["rows"]
    assert [(r["key"], r["kind"], r["error"]) for r in rows] == [("acct-9", "invalid", (
        "hs_object_id is a HubSpot record id (a whole number), and this value is not one"))]
    assert portal.records("companies")[known]["name"] == "after"
    assert portal.writes("batch/update") == [1]


def test_a_property_changed_after_the_plan_refuses_its_rows_at_write_time(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, fields={"plan_tier": "plan_tier"})
    reads: list[str] = []

    def narrow_on_second_read(method: str, path: str) -> None:
        if method == "GET" and path.endswith("/properties/companies"):
            reads.append(path)
            if len(reads) == 2:  # the delivery's read: an admin dropped an option meanwhile
                portal.add_property("companies", Property("plan_tier", "enumeration", "select",
                                                          options=("starter",)))

    portal.on_request = narrow_on_second_read
    summary = run(project_dir)
    enterprise = {f"acct-{i}" for i in range(0, 250, 3)}
    assert summary["rejected"] == len(enterprise) and summary["planned"]["invalid"] == 0
    assert summary["delivered"]["created"] == 250 - len(enterprise)
    assert sum(portal.writes("batch/upsert")) == 250 - len(enterprise)  # refused unsent
    with Project.load(project_dir, env=ENV) as p:
        rows = p.show(summary["run_id"])["rows"]
    assert {r["key"] for r in rows} == enterprise
    assert {r["error"] for r in rows} == {"plan_tier takes only its options (starter)"}
    again = run(project_dir)  # planned against the new options, they are invalid now
    assert again["planned"]["invalid"] == len(enterprise) and again["rejected"] == 0
    assert again["delivered"]["created"] == 0


def test_unknown_and_read_only_properties_are_config_errors_naming_them(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, fields={"name": "nmae", "weekly_active_users": "hs_object_id"})
    result = cli("run", "usage", "--project", str(project_dir), env=ENV)
    assert result.returncode == 2, result.stderr
    assert "companies has no property nmae (did you mean name?)" in result.stderr
    assert "companies.hs_object_id is read-only" in result.stderr
    assert "tidegate.yml:" in result.stderr and "Traceback" not in result.stderr
    assert portal.writes("batch/upsert") == []


def test_upsert_needs_a_unique_property_to_match_on(project_dir: Path,
                                                    portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, fields={"name": "name"})
    config = (project_dir / "tidegate.yml").read_text().replace(
        "destination: tidegate_account_id", "destination: domain")
    (project_dir / "tidegate.yml").write_text(config)
    with Project.load(project_dir, env=ENV) as p, pytest.raises(ConfigError) as raised:
        p.run("usage")
    assert "cannot be upserted by domain" in str(raised.value)


def test_ten_secondly_throttling_waits_and_the_run_completes(project_dir: Path) -> None:
    with HubSpotSandbox(token=ENV["HUBSPOT_TOKEN"], burst=3, interval_ms=300) as portal:
        portal.add_property("companies", Property("tidegate_account_id", "string", "text",
                                                  unique=True))
        setup(project_dir, portal, fields={"name": "name"}, batch_size=25,
              destination={"concurrency": 2})
        summary = run(project_dir)
        assert summary["status"] == "succeeded", summary
        assert len(companies(portal)) == 250
        assert "TEN_SECONDLY_ROLLING" in portal.throttled  # it was throttled, and waited


def test_a_spent_daily_limit_stops_the_run_and_the_rest_is_sent_next_time(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, fields={"name": "name"}, batch_size=50,
          destination={"concurrency": 1})
    portal.daily_limit = 4  # the properties read twice (to plan, to deliver), two batches
    summary = run(project_dir)
    assert summary["status"] == "failed"
    assert "daily API limit for this account is spent" in summary["error"]
    assert summary["delivered"]["created"] == 100
    portal.daily_limit = 1_000_000
    again = run(project_dir)
    assert again["status"] == "succeeded" and again["delivered"]["created"] == 150
    assert len(companies(portal)) == 250
    with Project.load(project_dir, env=ENV) as p:
        assert p.show(again["run_id"])["destination_report"]["daily_limit"] == 1_000_000


def test_inserts_answered_207_reject_only_the_inputs_at_fault(project_dir: Path,
                                                              portal: HubSpotSandbox) -> None:
    for i in (4, 7):
        portal.put("companies", {"tidegate_account_id": f"acct-{i}", "name": "existing"})
    setup(project_dir, portal, mode="insert", fields={"name": "name"})
    summary = run(project_dir)
    assert summary["rejected"] == 2 and summary["delivered"]["created"] == 248
    with Project.load(project_dir, env=ENV) as p:
        rows = p.show(summary["run_id"])["rows"]
    assert sorted(r["key"] for r in rows) == ["acct-4", "acct-7"]
    assert all("CONFLICT" in r["error"] for r in rows)
    assert companies(portal)["acct-4"]["name"] == "existing"


def test_deletes_look_records_up_and_archive_them(project_dir: Path,
                                                  portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, mode="mirror", fields={"name": "name"})
    assert run(project_dir)["delivered"]["created"] == 250
    gone_already = next(rid for rid, r in portal.records("companies").items()
                        if r["tidegate_account_id"] == "acct-0")
    portal.put("companies", {"tidegate_account_id": "unrelated"})
    with portal._lock:  # someone archived acct-0 in HubSpot meanwhile
        portal._tables["companies"].rows.pop(gone_already)
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute("delete from usage where account_id in ('acct-0', 'acct-1', 'acct-2')")
    summary = run(project_dir)
    assert summary["status"] == "succeeded" and summary["delivered"]["deleted"] == 3
    left = companies(portal)
    assert {"acct-0", "acct-1", "acct-2"} & set(left) == set() and "unrelated" in left
    assert len(left) == 248


def test_a_wrong_token_fails_the_run_with_the_fix(project_dir: Path,
                                                  portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, fields={"name": "name"})
    with Project.load(project_dir, env={"HUBSPOT_TOKEN": "pat-na1-wrong"}) as p:
        summary = p.run("usage")
    assert summary["status"] == "failed"
    assert "HubSpot refused the token (401" in summary["error"] and "`token`" in summary["error"]
    assert "pat-na1-wrong" not in summary["error"]


def test_the_shipped_openapi_documents_are_hubspots_unchanged() -> None:
    from importlib import resources

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "specs" / "hubspot"
    shipped = resources.files("tidegate.sandbox").joinpath("specs", "hubspot")
    names = sorted(p.name for p in shared.glob("*.json"))
    assert names == ["crm-contacts-v3.json", "crm-objects-v3.json", "crm-properties-v3.json"]
    for name in names:
        assert shipped.joinpath(name).read_bytes() == (shared / name).read_bytes(), name
    # The associations document is not among ../shared's: it is checked by its git blob
    # id in HubSpot's repository (specs/hubspot/README.md names the commit).
    import hashlib

    v4 = shipped.joinpath("crm-associations-v4.json").read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(v4) + v4).hexdigest()
    assert blob == "a010554b4656884d15455cf000fbb252c8123be1"
    assert sorted(e.name for e in shipped.iterdir() if e.name.endswith(".json")) == sorted(
        [*names, "crm-associations-v4.json"])


def test_a_207_error_naming_no_input_goes_to_the_inputs_no_result_answers() -> None:
    from tidegate.destinations.hubspot.destination import _outcome

    doc = {"results": [{"id": "1", "properties": {"email": "ADA@example.com"}}],
           "errors": [{"category": "OBJECT_NOT_FOUND", "message": "gone", "context": {}},
                      {"category": "VALIDATION_ERROR", "message": "bad",
                       "context": {"ids": ["Eve@example.com"]}}]}
    outcome = _outcome(doc, ["ada@example.com", "bob@example.com", "eve@example.com"],
                       lambda r: str(r["properties"]["email"]), "ids", fold=True)
    assert outcome == [None, "OBJECT_NOT_FOUND: gone", "VALIDATION_ERROR: bad"]


def test_a_secondly_429_waits_and_retries(project_dir: Path, portal: HubSpotSandbox) -> None:
    setup(project_dir, portal, fields={"name": "name"})
    portal.throttle_next(1, "SECONDLY")
    summary = run(project_dir)
    assert summary["status"] == "succeeded" and len(companies(portal)) == 250
    assert portal.throttled == ["SECONDLY"]


def test_a_request_refused_for_its_form_rejects_the_batch_without_splitting_it(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    portal.max_inputs = 10  # as if HubSpot lowered its cap below the configured 100
    setup(project_dir, portal, fields={"name": "name"})
    summary = run(project_dir)
    assert summary["rejected"] == 250
    assert sorted(portal.writes("batch/upsert")) == [50, 100, 100]  # one request each
    assert "Batch input limit exceeded" in next(iter(rows_of(project_dir, summary)))


def rows_of(root: Path, summary: dict[str, Any]) -> dict[str, str]:
    with Project.load(root, env=ENV) as p:
        return {r["error"]: r["key"] for r in p.show(summary["run_id"])["rows"]}
