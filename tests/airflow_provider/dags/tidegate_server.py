"""Server mode: tidegate's trigger operator and deferrable sensor against a `tidegate serve`."""

import pendulum
from airflow.sdk import DAG

from tidegate.airflow import TidegateSyncSensor, TidegateTriggerSyncOperator

START = pendulum.datetime(2024, 1, 1)

with DAG("tidegate_server", schedule=None, start_date=START, catchup=False) as tidegate_server:
    trigger = TidegateTriggerSyncOperator(task_id="trigger", sync="accounts")
    wait = TidegateSyncSensor(task_id="wait",
                              run_id="{{ ti.xcom_pull(task_ids='trigger')['run_id'] }}",
                              deferrable=True, poke_interval=1)
    again = TidegateTriggerSyncOperator(task_id="again", sync="1", wait_for_completion=True,
                                        poll_interval=0.5)
    held = TidegateTriggerSyncOperator(task_id="held", sync="capped", wait_for_completion=True,
                                       deferrable=True, poll_interval=1)
    held_skip = TidegateTriggerSyncOperator(task_id="held_skip", sync="capped",
                                            wait_for_completion=True, poll_interval=0.5,
                                            on_held="skip")
    missing = TidegateSyncSensor(task_id="missing", run_id=999, poke_interval=1)
    trigger >> wait >> again >> [held, held_skip]
