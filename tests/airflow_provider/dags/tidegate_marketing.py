"""ReverseETLOperator into HubSpot and Iterable, each destination from its Airflow connection."""

import pendulum
from airflow.sdk import DAG

from tidegate.airflow import ReverseETLOperator

with DAG("tidegate_marketing", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False) as tidegate_marketing:
    ReverseETLOperator(
        task_id="contacts_to_hubspot",
        query="select email, firstname, lifecyclestage from people",
        object="contacts", fields=["firstname", "lifecyclestage"], job_type="upsert",
        primary_key="email", source_conn_id="test_people", destination_conn_id="test_hubspot",
        state_conn_id="test_state")
    ReverseETLOperator(
        task_id="eligible_to_iterable",
        query="select email, firstname from people where eligible",
        object="list:1", fields=["firstname"], job_type="mirror",
        primary_key="email", source_conn_id="test_people", destination_conn_id="test_iterable",
        state_conn_id="test_state")
