"""One sync spread over four mapped tasks, each a shard, against a shared state store."""

import os

import pendulum
from airflow.sdk import DAG

from tidegate.airflow import TidegateSyncOperator

with DAG("tidegate_shards", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False) as tidegate_shards:
    TidegateSyncOperator.partial(
        task_id="shard", project_dir=os.environ.get("TIDEGATE_TEST_PROJECT", "/nonexistent"),
        sync="accounts", state_conn_id="test_shared_state", shards=4,
    ).expand(shard=[0, 1, 2, 3])
