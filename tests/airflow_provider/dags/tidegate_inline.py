"""ReverseETLOperator from Airflow connections: a templated query, state in PostgreSQL."""

import pendulum
from airflow.sdk import DAG

from tidegate.airflow import ReverseETLOperator

with DAG("tidegate_inline", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False) as tidegate_inline:
    ReverseETLOperator(
        task_id="push_scores",
        query="select id, name, score, '{{ ds }}' as as_of from accounts where score >= 0",
        object="Account", fields=["name", "score", "as_of"], job_type="upsert",
        batch_size=40, primary_key="id",
        source_conn_id="test_warehouse", destination_conn_id="test_hook",
        state_conn_id="test_state")
