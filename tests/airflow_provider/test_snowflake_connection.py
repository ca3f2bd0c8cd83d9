"""ReverseETLOperator under real Airflow with its model in Snowflake (a local fakesnow
server), signed in by key pair from an Airflow snowflake connection, as the Snowflake
provider's connections hold it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from airflow_env import lineage_events
from conftest import SECRET
from tidegate.sandbox.webhook import WebhookReceiver

PASSPHRASE = "key-Passphrase-4417"


def encrypted_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(PASSPHRASE.encode())).decode()


@pytest.mark.parametrize("given", ["content", "base64 content", "file"])
def test_a_snowflake_connection_with_a_key_pair_feeds_an_inline_job(
    given: str, run_dag: Any, snowflake_server: dict[str, Any], receiver: WebhookReceiver,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import snowflake.connector

    con = snowflake.connector.connect(**snowflake_server, database="ANALYTICS",
                                      schema="SCORES")
    con.cursor().execute("create or replace table account_scores as select 'acc_' || i "
                         "as account_id, i * 3 as score from range(25) t(i)")
    con.close()
    pem = encrypted_pem()
    key: dict[str, str] = {}
    if given == "content":
        key = {"private_key_content": pem}
    elif given == "base64 content":
        key = {"private_key_content": base64.b64encode(pem.encode()).decode()}
    else:
        (tmp_path / "rsa_key.p8").write_text(pem)
        key = {"private_key_file": str(tmp_path / "rsa_key.p8")}
    monkeypatch.setenv("AIRFLOW_CONN_TEST_SNOWFLAKE", json.dumps({
        "conn_type": "snowflake", "login": "etl", "password": PASSPHRASE, "schema": "SCORES",
        "extra": {"account": "fakesnow", "database": "ANALYTICS", "warehouse": "XS",
                  "host": snowflake_server["host"], "port": snowflake_server["port"],
                  "protocol": "http", **key}}))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_HOOK", json.dumps(
        {"conn_type": "http", "host": receiver.url, "password": SECRET}))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_STATE", json.dumps(
        {"conn_type": "tidegate", "extra": {"url": f"sqlite:///{tmp_path / 'state.db'}"}}))

    result = run_dag("tidegate_snowflake", "tidegate_snowflake.py")
    assert result.state == "success", result.log[-4000:]
    assert result.xcom("scores_from_snowflake")["delivered"]["created"] == 25
    records = receiver.records("Account")
    assert len(records) == 25 and records[json.dumps("acc_7")] == {"score": 21}
    assert PASSPHRASE not in result.log and "PRIVATE KEY" not in result.log
    event = [e for e in lineage_events("tidegate_snowflake.scores_from_snowflake")
             if e["eventType"] == "COMPLETE"][-1]
    assert [d["namespace"] for d in event["inputs"]] == ["snowflake://fakesnow"]
    assert event["inputs"][0]["name"].lower() == "analytics.scores.account_scores"
