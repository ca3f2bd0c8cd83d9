"""The provider as Airflow sees it: registration, the connection type's form, the hook's
connection test, and what each kind of Airflow connection becomes in tidegate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import SECRET
from helpers import project, sync, warehouse
from tidegate import ConfigError
from tidegate.airflow import connections, get_provider_info
from tidegate.sandbox.webhook import WebhookReceiver


def test_airflow_finds_the_provider_its_hook_and_its_connection_form(airflow_db: Path) -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert manager.providers["tidegate"].data["name"] == "tidegate"
    hook = ProvidersManagerTaskRuntime().hooks["tidegate"]
    assert hook is not None and hook.connection_testable
    assert hook.hook_class_name == "tidegate.airflow.hooks.tidegate.TidegateHook"
    # Declared the Airflow 3.2 way: read from provider info, without importing the hook.
    widgets = manager.connection_form_widgets
    assert widgets["extra__tidegate__url"].field["schema"]["title"] == "State store URL"
    assert manager.field_behaviours["tidegate"]["relabeling"]["schema"] == "Database"


def test_provider_info_follows_airflows_schema(airflow_db: Path) -> None:
    import importlib.resources

    import jsonschema

    schema = json.loads(importlib.resources.files("airflow").joinpath(
        "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)
    modules = [m for group in ("hooks", "operators", "sensors", "triggers")
               for entry in get_provider_info()[group]
               for m in entry["python-modules"]]
    for module in modules:
        __import__(module)


def conn(**fields: Any) -> Any:
    from airflow.sdk import Connection

    return Connection(conn_id=fields.pop("conn_id", "c"), **fields)


def test_the_hook_tests_source_destination_and_state(
    airflow_db: Path, tmp_path: Path, receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidegate.airflow import TidegateHook

    warehouse(tmp_path / "wh.duckdb", 5)
    monkeypatch.setenv("AIRFLOW_CONN_T_WH", json.dumps(
        {"conn_type": "duckdb", "host": str(tmp_path / "wh.duckdb")}))
    monkeypatch.setenv("AIRFLOW_CONN_T_HOOK", json.dumps(
        {"conn_type": "http", "host": receiver.url, "password": SECRET}))
    monkeypatch.setenv("AIRFLOW_CONN_T_DOWN", json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": 9, "login": "u",
         "password": "Down-Secret-0042", "schema": "db"}))
    monkeypatch.setenv("AIRFLOW_CONN_T_STATE", json.dumps(
        {"conn_type": "tidegate", "extra": {"url": f"sqlite:///{tmp_path / 'st.db'}"}}))
    ok, message = TidegateHook(source_conn_id="t_wh", destination_conn_id="t_hook",
                               state_conn_id="t_state", work_dir=tmp_path / "w").test_connection()
    assert ok, message
    assert "source 't_wh': reachable" in message and "destination 't_hook'" in message
    ok, message = TidegateHook(source_conn_id="t_wh", destination_conn_id="t_down",
                               work_dir=tmp_path / "w").test_connection()
    assert not ok and "destination 't_down'" in message and "cannot reach PostgreSQL" in message
    assert "Down-Secret-0042" not in message
    ok, message = TidegateHook("t_state").test_connection()  # the UI's Test button
    assert ok and "st.db: reachable" in message
    # A project folder: its own ends, checked the same way.
    (tmp_path / "proj").mkdir()
    project(tmp_path / "proj", {"hook": {"type": "webhook", "url": receiver.url}},
            {"accounts": sync()})
    warehouse(tmp_path / "proj" / "warehouse.duckdb", 5)
    ok, message = TidegateHook(project_dir=tmp_path / "proj").test_connection()
    assert ok and "source 'warehouse': reachable" in message


class Conn:
    """An Airflow connection's attributes, for the mapping alone."""

    def __init__(self, conn_type: str, conn_id: str = "c", host: str | None = None,
                 port: int | None = None, login: str | None = None,
                 password: str | None = None, schema: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.conn_id, self.conn_type, self.host, self.port = conn_id, conn_type, host, port
        self.login, self.password, self.schema = login, password, schema
        self.extra_dejson = extra or {}


def test_connections_become_tidegate_settings() -> None:
    pg = Conn("postgres", host="db.internal", port=5433, login="etl", password="p@ss/w:rd",
              schema="analytics", extra={"sslmode": "require", "cursor": "named"})
    assert connections.source_settings(pg) == {
        "type": "postgres",
        "url": "postgresql://etl:p%40ss%2Fw%3Ard@db.internal:5433/analytics?sslmode=require"}
    assert connections.state_url(pg).startswith("postgresql://etl:")
    assert connections.source_settings(Conn("sqlite", host="/data/app.db")) == {
        "type": "sqlite", "path": "/data/app.db"}
    assert connections.source_settings(Conn("duckdb", host="/data/wh.duckdb")) == {
        "type": "duckdb", "path": "/data/wh.duckdb"}
    snow = Conn("snowflake", login="etl", password="s3cret!", schema="marts",
                extra={"account": "xy12345", "region": "eu-west-1", "database": "PROD",
                       "warehouse": "TRANSFORM", "role": "REVERSE_ETL"})
    assert connections.source_settings(snow) == {
        "type": "snowflake", "account": "xy12345.eu-west-1", "user": "etl",
        "warehouse": "TRANSFORM", "database": "PROD", "role": "REVERSE_ETL",
        "schema": "marts", "password": "s3cret!"}
    http = Conn("http", host="hooks.example.com", schema="https", port=8443,
                password="whsec_abc", extra={"endpoint": "/in/tidegate", "X-Team": "ops",
                                             "max_records": 500})
    assert connections.destination_settings(http) == {
        "type": "webhook", "url": "https://hooks.example.com:8443/in/tidegate",
        "headers": {"X-Team": "ops"}, "max_records": 500, "secret": "whsec_abc"}
    jwt = Conn("salesforce", login="integration@acme.com",
               extra={"consumer_key": "3MVG9", "private_key": "-----BEGIN PRIVATE KEY-----",
                      "domain": "test", "version": "61.0"})
    assert connections.destination_settings(jwt) == {
        "type": "salesforce", "login_url": "https://test.salesforce.com", "api_version": "61.0",
        "auth": {"client_id": "3MVG9", "flow": "jwt_bearer", "username": "integration@acme.com",
                 "private_key": "-----BEGIN PRIVATE KEY-----"}}
    assert connections.destination_settings(
        Conn("salesforce", extra={"consumer_key": "k", "consumer_secret": "s"}),
        {"max_records": 50})["auth"] == {
        "client_id": "k", "flow": "client_credentials", "client_secret": "s"}


def test_connections_tidegate_cannot_use_say_what_to_do() -> None:
    for call, connection, words in (
        (connections.source_settings, Conn("mongo", conn_id="m"), "as a source"),
        (connections.destination_settings, Conn("ftp", conn_id="f"), "as a destination"),
        (connections.state_url, Conn("tidegate", conn_id="s"), "names no state store"),
        (connections.destination_settings, Conn("salesforce", conn_id="sf", login="u",
                                                password="pw"), "no consumer key"),
        (connections.source_settings, Conn("snowflake", extra={
            "account": "a", "private_key_content": "k"}), "neither PEM text nor base64"),
        (connections.source_settings, Conn("snowflake", extra={
            "account": "a", "private_key_content": "k", "private_key_file": "/k.p8"}),
         "both"),
        (connections.source_settings, Conn("snowflake", login="u", extra={"account": "a"}),
         "neither a password nor a private key"),
        (connections.source_settings, Conn("snowflake", login="u"), "no Snowflake account"),
    ):
        with pytest.raises(ConfigError, match=words) as caught:
            call(connection)  # type: ignore[operator]
        assert caught.value.problems[0].fix


def test_operators_refuse_bad_settings_when_the_dag_is_parsed(airflow_db: Path) -> None:
    from tidegate.airflow import ReverseETLOperator, TidegateSyncOperator
    from tidegate.airflow.errors import SyncConfigError

    common = {"object": "Account", "primary_key": "id", "source_conn_id": "a",
              "destination_conn_id": "b", "query": "select 1"}
    with pytest.raises(SyncConfigError, match="job_type"):
        ReverseETLOperator(task_id="x", job_type="merge", **common)
    with pytest.raises(SyncConfigError, match="on_held"):
        TidegateSyncOperator(task_id="y", project_dir=".", sync="s", on_held="ignore")
    assert {"query", "sync", "fields"} <= set(ReverseETLOperator.template_fields)
    assert {"sync", "project_dir"} <= set(TidegateSyncOperator.template_fields)
