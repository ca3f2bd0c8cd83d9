"""Contacts associated with their companies through a mapped `associations.*` field,
against the local HubSpot portal (which checks each request against HubSpot's v4
associations document)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from helpers import cli, project
from tidegate import Project
from tidegate.deliver import RetryPolicy
from tidegate.destinations.hubspot import associations
from tidegate.sandbox.hubspot import HubSpotSandbox, Property

ENV = {"HUBSPOT_TOKEN": "pat-na1-assoc-token"}
FIELDS = {"firstname": "firstname", "company": "associations.companies.account_id"}


@pytest.fixture
def portal() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(token=ENV["HUBSPOT_TOKEN"], burst=100_000,
                        check_responses=True) as server:
        server.add_property("companies", Property("account_id", "string", "text", unique=True))
        yield server
        assert server.response_violations == []


def people(root: Path, rows: str) -> None:
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute("create or replace table people as select * from (values "
                    f"{rows}) t(email, firstname, company)")


def setup(root: Path, portal: HubSpotSandbox, rows: str, *, mode: str = "upsert",
          fields: dict[str, str] | None = None) -> None:
    people(root, rows)
    project(root, {"hs": {"type": "hubspot", "base_url": portal.url,
                          "token": "${HUBSPOT_TOKEN}", "requests_per_second": 500}},
            {"people": {"source": "warehouse", "table": "people", "primary_key": "email",
                        "destination": "hs", "object": "contacts", "mode": mode,
                        "fields": fields or FIELDS}})


def run(root: Path) -> dict[str, Any]:
    with Project.load(root, env=ENV) as p:
        p.retry = RetryPolicy(base_delay=0.01, max_delay=0.05)
        return p.run("people")


def linked(portal: HubSpotSandbox) -> set[tuple[str, str]]:
    """(contact email, company account_id) of every contact → company association."""
    emails = {i: r["email"] for i, r in portal.records("contacts").items()}
    accounts = {i: r["account_id"] for i, r in portal.records("companies").items()}
    return {(emails[a], accounts[b]) for a, b in portal.associations("contacts", "companies")}


ROWS = """('ada@example.com', 'Ada', 'A1'), ('bob@example.com', 'Bob', 'A2'),
          ('cy@example.com', 'Cy', 'A1'), ('dee@example.com', 'Dee', null),
          ('eve@example.com', 'Eve', 'A9')"""


def test_contacts_are_associated_with_the_companies_their_rows_name(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    portal.put("companies", {"name": "Acme", "account_id": "A1"})
    portal.put("companies", {"name": "Globex", "account_id": "A2"})
    setup(project_dir, portal, ROWS)
    first = run(project_dir)
    assert first["status"] == "partial" and first["rejected"] == 1
    assert linked(portal) == {("ada@example.com", "A1"), ("bob@example.com", "A2"),
                              ("cy@example.com", "A1")}
    emails = {r["email"] for r in portal.records("contacts").values()}
    # A company HubSpot does not have: the row is rejected with the reason, and not sent.
    assert emails == {"ada@example.com", "bob@example.com", "cy@example.com",
                      "dee@example.com"}
    with Project.load(project_dir, env=ENV) as p:
        rejected = p.show(first["run_id"])["rows"]
    assert [(r["key"], r["error"]) for r in rejected] == [
        ("eve@example.com", "no companies record has account_id 'A9' to associate with")]
    assert "firstname" in next(iter(portal.records("contacts").values()))
    assert all("company" not in r for r in portal.records("contacts").values())

    # The company arrives; Bob moves to Acme: the next run associates Eve and Bob.
    portal.put("companies", {"name": "Initech", "account_id": "A9"})
    people(project_dir, ROWS.replace("'Bob', 'A2'", "'Bob', 'A1'"))
    second = run(project_dir)
    assert second["status"] == "succeeded", second
    assert second["planned"]["changed"] == 1 and second["delivered"]["created"] == 1
    # Associations are only added: Bob stays associated with Globex as well.
    assert linked(portal) == {("ada@example.com", "A1"), ("bob@example.com", "A2"),
                              ("bob@example.com", "A1"), ("cy@example.com", "A1"),
                              ("eve@example.com", "A9")}
    associate = "/crm/v4/associations/contacts/companies/batch/associate/default"
    assert portal.writes(associate) == [3, 2]  # one request a batch, only rows that name one
    # The companies' properties are read as often as the contacts' (once by the plan's
    # check, once before delivery), not once a batch.
    reads = portal.writes("/crm/v3/properties/companies")
    assert len(reads) == len(portal.writes("/crm/v3/properties/contacts")) <= 4


def test_an_association_that_fails_after_the_write_rejects_its_row_until_it_holds(
        project_dir: Path, portal: HubSpotSandbox) -> None:
    acme = portal.put("companies", {"name": "Acme", "account_id": "A1"})
    setup(project_dir, portal, "('ada@example.com', 'Ada', 'A1'), ('bob@example.com', 'Bob', null)")

    def gone(method: str, path: str) -> None:  # the company is deleted mid-run
        if path.endswith("/batch/associate/default"):
            portal.archive("companies", acme)

    portal.on_request = gone
    first = run(project_dir)
    assert first["rejected"] == 1 and first["delivered"]["created"] == 1
    with Project.load(project_dir, env=ENV) as p:
        [row] = p.show(first["run_id"])["rows"]
    assert row["key"] == "ada@example.com" and "the association failed (OBJECT_NOT_FOUND" \
        in row["error"]
    portal.on_request = None
    portal.put("companies", {"name": "Acme again", "account_id": "A1"})
    again = run(project_dir)
    # Never acknowledged, the row is sent again: upserted (nothing changes) and associated.
    assert again["status"] == "succeeded" and again["planned"]["added"] == 1
    assert linked(portal) == {("ada@example.com", "A1")}


@pytest.mark.parametrize(("mode", "fields", "message"), [
    ("upsert", {"company": "associations.companies.name"},
     "companies.name is not a unique-value property, so associations.companies.name cannot "
     "find the record to associate with"),
    ("upsert", {"company": "associations.companies.acct"},
     "companies has no property acct"),
    ("upsert", {"company": "associations.companies"}, "names no association"),
    ("upsert", {"company": "associations.widgets.id"}, "HubSpot has no object type 'widgets'"),
    ("insert", {"company": "associations.companies.account_id"},
     "mode insert cannot keep associations"),
])
def test_association_fields_that_cannot_work_are_config_errors(
        project_dir: Path, portal: HubSpotSandbox, mode: str, fields: dict[str, str],
        message: str) -> None:
    setup(project_dir, portal, ROWS, mode=mode, fields={"firstname": "firstname", **fields})
    done = cli("run", "people", "--project", str(project_dir), env=ENV)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert portal.records("contacts") == {}


def test_an_answer_names_the_pairs_it_associated() -> None:
    pairs = [("1", "9"), ("2", "9")]
    doc = {"results": [{"from": {"id": "1"}, "to": {"id": "9"}}],
           "errors": [{"category": "OBJECT_NOT_FOUND", "message": "gone"}]}
    assert associations.outcome(doc, pairs) == [
        None, "the association failed (OBJECT_NOT_FOUND: gone)"]
    assert associations.inputs(pairs)[1] == {"from": {"id": "2"}, "to": {"id": "9"}}
