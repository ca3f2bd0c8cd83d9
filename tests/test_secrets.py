"""No secret appears in logs, state, run records, exceptions or --json output."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

from conftest import SECRET
from helpers import cli, project, sync, warehouse
from tidegate import segments
from tidegate.sandbox.webhook import WebhookReceiver

PG_PASSWORD = "s3cret-pg-Passw0rd"
SLACK_TOKEN = "xoxSlackT0kenForAlerts"
SMTP_PASSWORD = "smtp-S3cret-Pw"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def everything_written(root: Path) -> str:
    """Every byte tidegate left in the project folder, plus every row of its state."""
    parts = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".duckdb":
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    db = root / ".tidegate" / "state.db"
    with sqlite3.connect(db) as conn:
        for (table,) in conn.execute("select name from sqlite_master where type = 'table'"):
            parts.append(json.dumps(conn.execute(f"select * from {table}").fetchall(),
                                    default=str))
        # State segments are Arrow with compressed records: read them decoded too.
        for keys, records in conn.execute("select keys, records from tidegate_state_segments"):
            parts.append(json.dumps(segments.decode(keys).to_pylist()))
            parts.append(json.dumps(segments.decode(records).to_pylist()))
    assert any('"record"' in p for p in parts), "the scan must see state records"
    return "\n".join(parts)


def test_secrets_never_leak(project_dir: Path, receiver: WebhookReceiver, pg_url: str) -> None:
    warehouse(project_dir / "warehouse.duckdb", 40)
    bad_pg = pg_url.replace("postgres@", f"postgres:{PG_PASSWORD}@").replace("127.0.0.1",
                                                                             "127.0.0.1")
    wrong_password_url = bad_pg.replace("postgres:", "nobody:")
    project(
        project_dir,
        {
            "hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"},
            "db": {"type": "postgres", "url": "${PG_URL}"},
        },
        {"accounts": sync(), "to_db": sync("db", object="public.accounts")},
        # Alert channels that cannot be reached: their failures are logged.
        alerts=[{"type": "slack", "webhook_url": "${SLACK_URL}"},
                {"type": "email", "host": "127.0.0.1", "port": closed_port(),
                 "starttls": False, "username": "alerts", "password": "${SMTP_PASSWORD}",
                 "from": "tidegate@example.com", "to": ["ops@example.com"], "timeout_s": 2}],
    )
    env = {"HOOK_SECRET": SECRET, "PG_URL": wrong_password_url, "TIDEGATE_LOG": "debug",
           "SLACK_URL": f"http://127.0.0.1:{closed_port()}/services/T1/B2/{SLACK_TOKEN}",
           "SMTP_PASSWORD": SMTP_PASSWORD}
    receiver.reject_keys([1], f"echoing your secret back: {SECRET}")
    outputs = []
    for args in (["run", "accounts"], ["run", "to_db"], ["runs"], ["show", "1"], ["show", "3"],
                 ["validate", "--connections"], ["plan", "accounts"]):
        for extra in ([], ["--json"]):
            result = cli(*args, *extra, "--project", str(project_dir), env=env)
            outputs += [result.stdout, result.stderr]
    runs = json.loads(cli("runs", "to_db", "--project", str(project_dir), "--json",
                          env=env).stdout)["runs"]
    assert runs[0]["status"] == "failed" and "***" in runs[0]["error"]  # the URL was there
    haystack = "\n".join(outputs) + everything_written(project_dir)
    key = SECRET.removeprefix("whsec_")
    assert "alerts[0]" in haystack and "alerts[1]" in haystack  # the failures were logged
    for secret in (SECRET, key, PG_PASSWORD, SLACK_TOKEN, SMTP_PASSWORD):
        assert secret not in haystack, f"{secret[:6]}… leaked"
    assert "echoing your secret back: ***" in haystack


def test_hubspot_tokens_and_iterable_keys_never_leak(project_dir: Path) -> None:
    from tidegate.sandbox.hubspot import HubSpotSandbox, Property
    from tidegate.sandbox.iterable import IterableSandbox

    token, api_key = "pat-na1-S3cretHubSpotToken", "it-S3cretIterableKey"
    warehouse(project_dir / "warehouse.duckdb", 30)
    with HubSpotSandbox(token=token) as portal, IterableSandbox(api_key=api_key) as it:
        portal.add_property("companies", Property("score", "number", "number"))
        portal.add_property("companies", Property("account_key", "string", "text",
                                                  unique=True))
        # A portal that echoes the token in a refusal: the reason is kept, the token not.
        portal.refuse("account_key", ["3"], f"was refused for {token}")
        project(project_dir,
                {"hs": {"type": "hubspot", "base_url": portal.url, "token": "${HS_TOKEN}"},
                 "it": {"type": "iterable", "base_url": it.url, "api_key": "${IT_KEY}"}},
                {"to_hs": sync("hs", object="companies",
                               match={"source": "id", "destination": "account_key"}),
                 "to_it": sync("it", object="list:1",
                               match={"source": "id", "destination": "userId"})})
        outputs = []
        env = {"HS_TOKEN": token, "IT_KEY": api_key, "TIDEGATE_LOG": "debug"}
        for args in (["run", "to_hs", "--json"], ["run", "to_it"], ["show", "1", "--json"],
                     ["validate", "--connections"]):
            result = cli(*args, "--project", str(project_dir), env=env)
            outputs += [result.stdout, result.stderr]
        assert len(portal.records("companies")) == 29 and len(it.members(1)) == 30
    haystack = "\n".join(outputs) + everything_written(project_dir)
    assert "was refused for ***" in haystack
    for secret in (token, api_key):
        assert secret not in haystack, f"{secret[:6]}… leaked"
