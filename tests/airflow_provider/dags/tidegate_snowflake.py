"""ReverseETLOperator reading a Snowflake model through an Airflow snowflake connection."""

import pendulum
from airflow.sdk import DAG

from tidegate.airflow import ReverseETLOperator

with DAG("tidegate_snowflake", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False) as tidegate_snowflake:
    ReverseETLOperator(
        task_id="scores_from_snowflake",
        query="select account_id, score from account_scores",
        object="Account", fields=["score"], job_type="upsert", primary_key="account_id",
        source_conn_id="test_snowflake", destination_conn_id="test_hook",
        state_conn_id="test_state")
