"""The conformance kit over the postgres destination, on a real PostgreSQL server.

The table is created up front (the path of a user's existing table); rejection
is a CHECK constraint named after the error, transient failure a trigger that
raises ``serialization_failure`` while a sequence is under a threshold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg
import pytest

from tidegate.testing.conformance import ConformanceKit, RejectionScenarios, TransientScenarios


class PostgresUnderTest:
    modes = frozenset({"insert", "update", "upsert", "delete", "mirror"})

    def __init__(self, url: str) -> None:
        self.url = url
        self.table = ""

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def settings(self) -> dict[str, Any]:
        return {"type": "postgres", "url": self.url}

    def object_name(self, base: str) -> str:
        self.table = f"crm.{base}"
        self.sql("create schema if not exists crm")
        self.sql(f"create table {self.table} (id bigint primary key, name text, score bigint, "
                 "active boolean)")
        self.sql("create table if not exists crm.fail_budget (n int)")
        self.sql("insert into crm.fail_budget values (0)")
        self.sql("create sequence if not exists crm.fail_seq")
        self.sql("""
            create or replace function crm.flaky() returns trigger language plpgsql as $$
            begin
              if nextval('crm.fail_seq') <= (select n from crm.fail_budget) then
                raise exception 'injected conflict' using errcode = '40001';
              end if;
              return null;
            end $$""")
        for event in ("insert", "update", "delete"):
            self.sql(f"create trigger flaky_{event} before {event} on {self.table} "
                     "for each statement execute function crm.flaky()")
        return self.table

    def read_back(self, object_name: str) -> dict[str, dict[str, Any]]:
        rows = self.sql(f"select id, name, score, active from {object_name}")
        return {json.dumps(i): {"name": n, "score": s, "active": a} for i, n, s, a in rows}

    def row_count(self, object_name: str) -> int:
        return int(self.sql(f"select count(*) from {object_name}")[0][0])

    def reject(self, keys: Iterable[int], error: str) -> None:
        for (name,) in self.sql(
            "select conname from pg_constraint where conrelid = %s::regclass and contype = 'c'",
            (self.table,),
        ):
            self.sql(f'alter table {self.table} drop constraint "{name}"')
        ids = ", ".join(str(int(k)) for k in keys)
        if ids:
            self.sql(f'alter table {self.table} add constraint "{error}" check (id not in ({ids}))')

    def fail_next(self, n: int) -> None:
        self.sql("alter sequence crm.fail_seq restart with 1")
        self.sql("update crm.fail_budget set n = %s", (n,))


class TestPostgresConformance(ConformanceKit, RejectionScenarios, TransientScenarios):
    @pytest.fixture
    def target(self, pg_url: str) -> PostgresUnderTest:
        return PostgresUnderTest(pg_url)
