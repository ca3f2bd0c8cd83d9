"""TidegateSyncOperator on a project folder: a plain run, and two syncs held by guardrails."""

import os

import pendulum
from airflow.sdk import DAG, task

from tidegate.airflow import TidegateSyncOperator

PROJECT = os.environ.get("TIDEGATE_TEST_PROJECT", "/nonexistent")

with DAG("tidegate_sync", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False) as tidegate_sync:
    TidegateSyncOperator(task_id="run", project_dir=PROJECT,
                         sync="{{ dag_run.conf.get('sync', 'accounts') }}")

with DAG("tidegate_held", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False) as tidegate_held:
    held_fail = TidegateSyncOperator(task_id="held_fail", project_dir=PROJECT, sync="guarded")
    held_skip = TidegateSyncOperator(task_id="held_skip", project_dir=PROJECT,
                                     sync="guarded_too", on_held="skip")

    @task
    def downstream() -> str:
        return "ran"

    held_skip >> downstream()

with DAG("tidegate_failed", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False) as tidegate_failed:
    TidegateSyncOperator(task_id="unreachable", project_dir=PROJECT, sync="down")
