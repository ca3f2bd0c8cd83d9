"""Snowflake (against a local fakesnow server) and BigQuery (without Google: URL, config
errors, types) sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import SECRET
from helpers import cli
from tidegate.config import BigQuerySourceConfig, SnowflakeSourceConfig
from tidegate.errors import ConfigError
from tidegate.sandbox.webhook import WebhookReceiver
from tidegate.sources.bigquery import BigQuerySource, bigquery_type, bigquery_url, to_batch
from tidegate.sources.snowflake import connect_args, snowflake_type


def _pem(passphrase: bytes | None = None) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption).decode()


def _project(root: Path, sources: dict[str, Any], syncs: dict[str, Any], url: str) -> None:
    config = {"name": "wh", "sources": sources,
              "destinations": {"hook": {"type": "webhook", "url": url, "secret": SECRET}},
              "syncs": syncs}
    (root / "tidegate.yml").write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")


def test_a_snowflake_model_syncs_with_password_auth_from_env(
    project_dir: Path, receiver: WebhookReceiver, snowflake_server: dict[str, Any]
) -> None:
    import snowflake.connector

    con = snowflake.connector.connect(**snowflake_server, database="SALES", schema="PUBLIC")
    cur = con.cursor()
    cur.execute("create or replace table accounts (id integer, name varchar, "
                "arr number(12, 2), active boolean)")
    cur.execute("insert into accounts values (1, 'Acme', 1200.50, true), "
                "(2, 'Globex', 99.99, false), (3, 'Initech', 0, true)")
    con.close()
    source = {"type": "snowflake", "account": "${SF_ACCOUNT}", "user": "${SF_USER}",
              "password": "${SF_PASSWORD}", "database": "SALES", "schema": "PUBLIC",
              "host": snowflake_server["host"], "port": snowflake_server["port"],
              "protocol": "http", "network_timeout": 30}
    _project(project_dir, {"sf": source},
             {"accounts": {"source": "sf", "query": "select id, name, arr, active from accounts",
                           "primary_key": "id", "destination": "hook", "object": "Account",
                           "mode": "upsert"}}, receiver.url)
    env = {"SF_ACCOUNT": "fakesnow", "SF_USER": "fake", "SF_PASSWORD": "snow-secret-pw"}
    done = cli("run", "accounts", "--project", str(project_dir), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["delivered"]["created"] == 3
    # Upper-case names Snowflake folded come back as the SQL wrote them.
    assert receiver.records("Account")[json.dumps(1)] == {"name": "Acme", "arr": 1200.5,
                                                          "active": True}
    assert "snow-secret-pw" not in done.stdout + done.stderr
    bad = cli("plan", "accounts", "--project", str(project_dir), env=env | {
        "SF_PASSWORD": "x"}, timeout=60)
    assert bad.returncode == 0  # the local Snowflake takes any password; the query still ran
    (project_dir / "tidegate.yml").write_text(
        (project_dir / "tidegate.yml").read_text().replace("select id, name", "select idd, name"))
    broken = cli("plan", "accounts", "--project", str(project_dir), env=env)
    assert broken.returncode == 2 and "the model query failed" in broken.stderr
    assert "syncs.accounts.query" in broken.stderr and "Traceback" not in broken.stderr


def test_snowflake_key_pair_auth_reads_the_key_from_env_or_a_file(tmp_path: Path) -> None:
    pem = _pem(b"open sesame")
    config = SnowflakeSourceConfig.model_validate({
        "type": "snowflake", "account": "acme-xy123", "user": "svc_tidegate",
        "private_key": pem, "private_key_passphrase": "open sesame", "role": "REVERSE_ETL",
        "warehouse": "SYNC_WH", "database": "ANALYTICS", "schema": "MARTS"})
    args = connect_args(config, tmp_path)
    key = serialization.load_der_private_key(args["private_key"], password=None)
    assert key.key_size == 2048 and "password" not in args
    assert {k: args[k] for k in ("account", "user", "role", "warehouse", "database", "schema")} \
        == {"account": "acme-xy123", "user": "svc_tidegate", "role": "REVERSE_ETL",
            "warehouse": "SYNC_WH", "database": "ANALYTICS", "schema": "MARTS"}
    (tmp_path / "key.p8").write_text(_pem())
    from_file = SnowflakeSourceConfig.model_validate({
        "type": "snowflake", "account": "a", "user": "u", "private_key_path": "key.p8"})
    assert connect_args(from_file, tmp_path)["private_key"]
    wrong = config.model_copy(update={"private_key_passphrase": None})
    with pytest.raises(ConfigError, match="private key cannot be read"):
        connect_args(wrong, tmp_path)


def test_snowflake_config_errors_name_the_key_and_the_fix(
    project_dir: Path, receiver: WebhookReceiver
) -> None:
    base = {"type": "snowflake", "account": "a", "user": "u"}
    _project(project_dir, {"sf": {**base, "password": "p", "warehose": "W"}}, {}, receiver.url)
    done = cli("validate", "--project", str(project_dir))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "tidegate.yml:" in done.stderr and "sources.sf.warehose: unknown key" in done.stderr
    _project(project_dir, {"sf": {**base, "password": "p", "private_key_path": "k.p8"}}, {},
             receiver.url)
    done = cli("validate", "--project", str(project_dir))
    assert done.returncode == 2
    assert "sources.sf: give exactly one of `password`" in done.stderr


def test_snowflake_column_types_become_arrow_types() -> None:
    assert snowflake_type("FIXED", 38, 0) == pa.int64()
    assert snowflake_type("FIXED", 12, 2) == pa.decimal128(12, 2)
    assert snowflake_type("TIMESTAMP_TZ", None, None) == pa.timestamp("us", "UTC")
    assert snowflake_type("VARIANT", None, None) == pa.string()


def test_bigquery_urls_parse_as_sqlalchemy_bigquery_reads_them(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy_bigquery.parse_url import parse_url

    (tmp_path / "sa.json").write_text("{}")
    config = BigQuerySourceConfig.model_validate({
        "type": "bigquery", "project": "acme-prod", "dataset": "marts", "location": "EU",
        "credentials_path": "sa.json"})
    url = bigquery_url(config, tmp_path)
    project, location, dataset, _size, credentials_path, *_rest = parse_url(make_url(url))
    assert (project, location, dataset) == ("acme-prod", "EU", "marts")
    assert credentials_path == str(tmp_path / "sa.json")
    bare = BigQuerySourceConfig.model_validate({"type": "bigquery", "project": "p"})
    assert bigquery_url(bare, tmp_path) == "bigquery://p"
    missing = config.model_copy(update={"credentials_path": "nope.json"})
    with pytest.raises(ConfigError, match=r"credentials file nope\.json does not exist"):
        BigQuerySource("bq", missing, tmp_path)


def test_bigquery_config_errors(project_dir: Path, receiver: WebhookReceiver) -> None:
    _project(project_dir, {"bq": {"type": "bigquery", "dataset": "marts",
                                  "credentials_path": "a.json", "credentials_base64": "x"}},
             {}, receiver.url)
    done = cli("validate", "--project", str(project_dir))
    assert done.returncode == 2
    assert "required key 'project' is missing" in done.stderr
    assert "Traceback" not in done.stderr


def test_bigquery_types_become_arrow_types_even_for_all_null_columns() -> None:
    schema = pa.schema([(n, bigquery_type(t)) for n, t in (
        ("id", "INTEGER"), ("amount", "NUMERIC"), ("seen", "TIMESTAMP"), ("tags", "RECORD"),
        ("note", "STRING"), ("when", "DATE"))])
    assert schema.field("amount").type == pa.decimal128(38, 9)
    batch = to_batch([(1, None, None, {"a": [1, 2]}, None, None),
                      (2, None, None, ["x"], None, None)], schema)
    assert batch.schema == schema
    assert batch.column(3).to_pylist() == ['{"a": [1, 2]}', '["x"]']
    assert batch.column(1).null_count == 2
