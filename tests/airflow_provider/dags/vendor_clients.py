"""The Census and Hightouch providers from PyPI, unmodified, against a `tidegate serve`: their
connections' host is the server, their token its TIDEGATE_API_TOKEN."""

import pendulum
from airflow.sdk import DAG
from airflow_provider_census.operators.census import CensusOperator
from airflow_provider_census.sensors.census import CensusSensor
from airflow_provider_hightouch.operators.hightouch import HightouchTriggerSyncOperator

START = pendulum.datetime(2024, 1, 1)

with DAG("vendor_clients", schedule=None, start_date=START, catchup=False) as vendor_clients:
    census = CensusOperator(task_id="census_trigger", sync_id=1)
    census_wait = CensusSensor(task_id="census_wait",
                               sync_run_id="{{ ti.xcom_pull(task_ids='census_trigger') }}",
                               deferrable=True, poke_interval=1)
    hightouch = HightouchTriggerSyncOperator(task_id="hightouch_sync", sync_id="3",
                                             wait_seconds=0.5)
    by_slug = HightouchTriggerSyncOperator(task_id="hightouch_slug", sync_slug="contacts",
                                           wait_seconds=0.5)
    hightouch_async = HightouchTriggerSyncOperator(task_id="hightouch_async", sync_id="3",
                                                   synchronous=False)
    census >> census_wait >> hightouch >> by_slug >> hightouch_async
