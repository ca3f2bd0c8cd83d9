"""Account scoring: refresh the scores in the warehouse, send them to Salesforce, check the run.

The reverse ETL task runs right after the SQL that refreshes its model, so Salesforce
is fresh as soon as the data is. Connections it uses:

    warehouse           duckdb: host is the DuckDB file, e.g.
                        AIRFLOW_CONN_WAREHOUSE='{"conn_type": "duckdb", "host": "/data/wh.duckdb"}'
    salesforce_default  salesforce: extra consumer_key and consumer_secret (OAuth client
                        credentials), or consumer_key, private_key and login (JWT bearer);
                        domain, or host, names the login URL
    tidegate_state      tidegate: the PostgreSQL state store the workers share

The warehouse holds ``crm.accounts`` (account_id: the Salesforce Account Id, employees,
annual_revenue); the SQL task scores them into ``analytics.account_scores``.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pendulum
from airflow.sdk import DAG, BaseHook, task

from tidegate.airflow import ReverseETLOperator

with DAG(
    "account_scoring",
    schedule="@hourly",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["tidegate", "reverse-etl"],
) as dag:

    @task
    def refresh_scores() -> int:
        """The model: an account propensity score between 0 and 100."""
        path = BaseHook.get_connection("warehouse").host
        with duckdb.connect(path) as con:
            con.execute("create schema if not exists analytics")
            con.execute("""
                create or replace table analytics.account_scores as
                select account_id,
                       round(least(100, 10 * ln(1 + employees)
                                        + annual_revenue / 1000000.0), 2) as aps
                from crm.accounts
            """)
            scored = con.execute("select count(*) from analytics.account_scores").fetchall()
        return int(scored[0][0])

    run_aps = ReverseETLOperator(
        task_id="run_aps",
        query="select account_id, aps from analytics.account_scores",
        object="Account", fields=["APS__c"], job_type="update", batch_size=10000,
        source_conn_id="warehouse", destination_conn_id="salesforce_default",
        primary_key="account_id", state_conn_id="tidegate_state",
        guardrails={"max_changed_pct": 50,
                    "checks": [{"field": "APS__c", "not_null": True, "between": [0, 100]}]},
    )

    @task
    def check(summary: dict[str, Any], scored: int) -> str:
        """Read the run summary (run_aps's XCom): every scored account was planned, none
        was refused."""
        planned = summary["planned"]
        seen = sum(planned[k] for k in ("added", "changed", "unchanged", "invalid"))
        if seen != scored:
            raise ValueError(f"the run planned {seen} accounts, the model has {scored}")
        if summary["rejected"] or planned["invalid"]:
            raise ValueError(f"run {summary['run_id']}: {summary['rejected']} rejected, "
                             f"{planned['invalid']} invalid: `tidegate show` lists them")
        sent = sum(summary["delivered"].values())
        return f"run {summary['run_id']}: {sent} of {scored} accounts updated in Salesforce"

    scored = refresh_scores()
    scored >> run_aps
    check(run_aps.output, scored)
