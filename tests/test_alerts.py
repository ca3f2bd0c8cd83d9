"""Run alerts against real loopback receivers: an HTTP server, a Slack-like hook, an SMTP sink.

Nothing is patched: every channel talks over a socket to a server in this
process, and what arrives is read back from that server's records.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import TypeAdapter, ValidationError

from tidegate.alerts import (
    AlertConfig,
    EmailAlertConfig,
    SlackAlertConfig,
    WebhookAlertConfig,
    event_of,
    notify,
)

PROJECT = "acme"
SLACK_TOKEN = "xoxTokenQ9fJ2mZp7LwK4vRt"
SMTP_USER = "alerts@acme.test"
SMTP_PASSWORD = "smtp-Pa55word-7731"
HEADER_TOKEN = "hdr-token-5fd0c1e9a2"
CHANNELS: TypeAdapter[list[AlertConfig]] = TypeAdapter(list[AlertConfig])

# -- receivers ------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """A loopback HTTP server that records requests and answers from a queue of replies."""

    def __init__(self, default: tuple[int, str, bytes] = (200, "application/json", b"{}")) -> None:
        self.requests: list[Request] = []
        self.replies: list[tuple[int, str, bytes]] = []
        self.default = default
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                # A header sent twice shows up as "a, b", so doubling is visible.
                headers = {k.lower(): ", ".join(self.headers.get_all(k) or [])
                           for k in self.headers}
                receiver.requests.append(Request(self.path, headers, raw))
                status, kind, body = (receiver.replies.pop(0) if receiver.replies
                                      else receiver.default)
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def url(self, path: str = "/alerts") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def reply(self, status: int, body: bytes = b"", kind: str = "text/plain") -> None:
        self.replies.append((status, kind, body))


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: str | None


@dataclass
class SmtpSink:
    """What an aiosmtpd server on loopback received, and the logins it accepted."""

    port: int = 0
    mails: list[Mail] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    refused_logins: list[tuple[str, str]] = field(default_factory=list)  # (client, user)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message, login))
        return "250 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode()
        if (user, auth_data.password.decode()) == (SMTP_USER, SMTP_PASSWORD):
            self.logins.append(user)
            return AuthResult(success=True, auth_data=auth_data.login)
        self.refused_logins.append((str(session.peer), user))
        return AuthResult(success=False, handled=False)


def free_port() -> int:
    """A loopback port nothing listens on (it was just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def slack() -> Iterator[HttpReceiver]:
    """Answers like Slack's incoming webhooks: ``ok`` as plain text."""
    server = HttpReceiver(default=(200, "text/plain", b"ok"))
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    # AUTH over plain SMTP is refused by default; a loopback test server may allow it.
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port,
                            authenticator=sink.authenticate, auth_require_tls=False)
    controller.start()
    yield sink
    controller.stop()


# -- helpers --------------------------------------------------------------------


def run(status: str, *, rejected: int = 0, error: str | None = None,
        run_id: int = 42) -> dict[str, Any]:
    """A run summary as ``RunRecord.summary`` makes it."""
    return {
        "run_id": run_id,
        "sync": "aps_to_salesforce",
        "status": status,
        "planned": {"added": 10, "changed": 5, "removed": 0, "unchanged": 100, "invalid": 0},
        "delivered": {"created": 10, "updated": 5 - min(rejected, 5), "deleted": 0},
        "rejected": rejected,
        "duration_s": 1.25,
        "error": error,
    }


HELD = run("held", error="would delete 80% of the records (limit 10%)\nsee `tidegate approve`")
FAILED = run("failed", error="cannot reach http://crm.example: connection refused")
REJECTED = run("partial", rejected=3)
SUCCEEDED = run("succeeded")


def channels(*raw: dict[str, Any]) -> list[AlertConfig]:
    return CHANNELS.validate_python(list(raw))


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": url, **extra}


def slack_hook(server: HttpReceiver, **extra: Any) -> dict[str, Any]:
    return {"type": "slack",
            "webhook_url": server.url(f"/services/T0001/B0002/{SLACK_TOKEN}"), **extra}


def mail(sink: SmtpSink, **extra: Any) -> dict[str, Any]:
    return {"type": "email", "host": "127.0.0.1", "port": sink.port, "starttls": False,
            "from": "tidegate@acme.test", "to": ["ops@acme.test", "data@acme.test"],
            "timeout_s": 5, **extra}


# -- the generic webhook --------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "event", "reason"),
    [
        (HELD, "held", HELD["error"]),
        (FAILED, "failed", FAILED["error"]),
        (REJECTED, "rejected", "3 rows rejected"),
    ],
)
def test_webhook_posts_the_alert_document(hook: HttpReceiver, summary: dict[str, Any],
                                          event: str, reason: str) -> None:
    config = channels(webhook(hook.url(), headers={"Authorization": f"Bearer {HEADER_TOKEN}"}))
    assert notify(config, summary, project=PROJECT) == []
    [request] = hook.requests
    assert request.path == "/alerts"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {HEADER_TOKEN}"
    assert request.json() == {
        "type": "tidegate.alert",
        "event": event,
        "project": PROJECT,
        "sync": "aps_to_salesforce",
        "run_id": 42,
        "reason": reason,
        "run": summary,
    }


def test_webhook_configured_content_type_replaces_the_default(hook: HttpReceiver) -> None:
    config = channels(webhook(hook.url(), headers={"Content-Type": "application/vnd.acme+json"}))
    assert notify(config, HELD, project=PROJECT) == []
    assert hook.requests[0].headers["content-type"] == "application/vnd.acme+json"


def test_webhook_retries_a_server_error_then_delivers(hook: HttpReceiver) -> None:
    hook.reply(500, b"database is restarting")
    hook.reply(200, b"{}")
    assert notify(channels(webhook(hook.url())), FAILED, project=PROJECT) == []
    assert len(hook.requests) == 2
    assert hook.requests[0].body == hook.requests[1].body


def test_webhook_error_is_reported_not_raised(hook: HttpReceiver,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidegate")
    hook.reply(404, b"no such hook")
    problems = notify(channels(webhook(hook.url())), HELD, project=PROJECT)
    assert len(hook.requests) == 1, "a 404 will not pass: no retry"
    [problem] = problems
    assert "alerts[0]" in problem and "webhook" in problem
    assert "HTTP 404" in problem and "no such hook" in problem
    assert problem in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_webhook_that_is_down_is_reported_within_the_timeout() -> None:
    started = time.monotonic()
    problems = notify(channels(webhook(f"http://127.0.0.1:{free_port()}/x")), FAILED,
                      project=PROJECT, timeout=2.0)
    assert time.monotonic() - started < 4.0
    [problem] = problems
    assert "cannot connect" in problem and "3 attempts" in problem


def test_webhook_that_keeps_failing_gives_up_at_the_timeout(hook: HttpReceiver) -> None:
    hook.default = (503, "text/plain", b"overloaded")
    started = time.monotonic()
    [problem] = notify(channels(webhook(hook.url())), FAILED, project=PROJECT, timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert "HTTP 503" in problem
    assert 1 <= len(hook.requests) <= 3


def test_webhook_header_values_are_masked_in_problems(hook: HttpReceiver,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tidegate")
    hook.reply(401, f"bad credentials: Bearer {HEADER_TOKEN}".encode())
    config = channels(webhook(hook.url(), headers={"Authorization": f"Bearer {HEADER_TOKEN}"}))
    [problem] = notify(config, HELD, project=PROJECT)
    assert "HTTP 401" in problem and "***" in problem
    assert HEADER_TOKEN not in problem and HEADER_TOKEN not in caplog.text


# -- Slack ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "event", "reason"),
    [
        (HELD, "held", "would delete 80% of the records (limit 10%)"),
        (FAILED, "failed", "cannot reach http://crm.example: connection refused"),
        (REJECTED, "rejected", "3 rows rejected"),
    ],
)
def test_slack_gets_one_readable_line(slack: HttpReceiver, summary: dict[str, Any], event: str,
                                      reason: str) -> None:
    assert notify(channels(slack_hook(slack)), summary, project=PROJECT) == []
    [request] = slack.requests
    assert request.path == f"/services/T0001/B0002/{SLACK_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    text = request.json()["text"]
    assert set(request.json()) == {"text"}
    assert "\n" not in text
    assert f"{PROJECT}/aps_to_salesforce run 42 {event}: {reason}" in text
    assert "planned 10 added, 5 changed" in text
    assert f"{summary['rejected']} rejected" in text and "1.25s" in text


def test_slack_text_escapes_its_markup_characters(slack: HttpReceiver) -> None:
    notify(channels(slack_hook(slack)), run("failed", error="<script> & more"), project=PROJECT)
    assert "&lt;script&gt; &amp; more" in slack.requests[0].json()["text"]


def test_slack_error_never_shows_the_webhook_token(slack: HttpReceiver,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tidegate")
    slack.reply(404, f"no_service for /services/T0001/B0002/{SLACK_TOKEN}".encode())
    [problem] = notify(channels(slack_hook(slack)), FAILED, project=PROJECT)
    assert "slack" in problem and "HTTP 404" in problem and "no_service" in problem
    assert SLACK_TOKEN not in problem
    assert caplog.records and SLACK_TOKEN not in caplog.text


def test_slack_that_is_down_never_shows_the_webhook_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidegate")
    url = f"http://127.0.0.1:{free_port()}/services/T0001/B0002/{SLACK_TOKEN}"
    [problem] = notify(channels({"type": "slack", "webhook_url": url}), HELD, project=PROJECT,
                       timeout=1.0)
    assert "cannot connect" in problem
    assert SLACK_TOKEN not in problem and SLACK_TOKEN not in caplog.text


def test_slack_config_keeps_the_url_secret(slack: HttpReceiver) -> None:
    [config] = channels(slack_hook(slack))
    assert isinstance(config, SlackAlertConfig)
    assert SLACK_TOKEN not in repr(config) and SLACK_TOKEN not in str(config)


# -- email ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "event", "first_line"),
    [
        (HELD, "held", "would delete 80% of the records (limit 10%)"),
        (FAILED, "failed", "cannot reach http://crm.example: connection refused"),
        (REJECTED, "rejected", "3 rows rejected"),
    ],
)
def test_email_carries_subject_text_and_json(smtp: SmtpSink, summary: dict[str, Any], event: str,
                                             first_line: str) -> None:
    assert notify(channels(mail(smtp)), summary, project=PROJECT) == []
    [sent] = smtp.mails
    assert sent.mail_from == "tidegate@acme.test"
    assert sent.rcpt_tos == ["ops@acme.test", "data@acme.test"]
    message = sent.message
    assert message["Subject"] == f"[tidegate] acme/aps_to_salesforce run 42 {event}: {first_line}"
    assert message["From"] == "tidegate@acme.test"
    body = message.get_content()
    assert f"Event:     {event}" in body and "Sync:      aps_to_salesforce" in body
    assert "Counts:    planned 10 added" in body
    if summary["error"]:
        for line in summary["error"].splitlines():
            assert line in body, "the whole reason is in the body, not just its first line"
    assert json.loads(body.split("Run summary (JSON):", 1)[1]) == summary
    assert sent.login is None


def test_email_logs_in_with_username_and_password(smtp: SmtpSink,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tidegate")
    config = channels(mail(smtp, username=SMTP_USER, password=SMTP_PASSWORD))
    assert notify(config, FAILED, project=PROJECT) == []
    assert smtp.logins == [SMTP_USER]
    assert [m.login for m in smtp.mails] == [SMTP_USER]
    assert SMTP_PASSWORD not in caplog.text


def test_email_wrong_password_is_a_problem_without_the_password(
    smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidegate")
    wrong = "not-" + SMTP_PASSWORD
    config = channels(mail(smtp, username=SMTP_USER, password=wrong))
    [problem] = notify(config, HELD, project=PROJECT)
    assert "login refused" in problem and "alerts[0] (email via 127.0.0.1" in problem
    # smtplib tries each mechanism the server offers, but over one connection only.
    assert {user for _, user in smtp.refused_logins} == {SMTP_USER}
    assert len({peer for peer, _ in smtp.refused_logins}) == 1, "a refused login is not retried"
    assert smtp.mails == []
    for secret in (wrong, SMTP_PASSWORD):
        assert secret not in problem and secret not in caplog.text


def test_email_starttls_against_a_server_without_it_is_reported(smtp: SmtpSink) -> None:
    config = channels(mail(smtp, starttls=True))
    [problem] = notify(config, HELD, project=PROJECT)
    assert "STARTTLS" in problem
    assert smtp.mails == []


def test_email_server_down_is_reported() -> None:
    config = channels({"type": "email", "host": "127.0.0.1", "port": free_port(),
                       "starttls": False, "from": "t@acme.test", "to": ["ops@acme.test"],
                       "password": SMTP_PASSWORD, "username": SMTP_USER})
    [problem] = notify(config, FAILED, project=PROJECT, timeout=1.0)
    assert "cannot talk to the server" in problem
    assert SMTP_PASSWORD not in problem


# -- which runs alert ---------------------------------------------------------------


def test_succeeded_runs_send_nothing(hook: HttpReceiver, slack: HttpReceiver,
                                     smtp: SmtpSink) -> None:
    config = channels(webhook(hook.url()), slack_hook(slack), mail(smtp))
    assert notify(config, SUCCEEDED, project=PROJECT) == []
    assert notify(config, run("partial", error="2 invalid rows"), project=PROJECT) == []
    assert hook.requests == [] and slack.requests == [] and smtp.mails == []


def test_on_chooses_the_events_a_channel_hears(hook: HttpReceiver, smtp: SmtpSink) -> None:
    config = channels(webhook(hook.url(), on=["failed"]), mail(smtp, on=["held"]))
    notify(config, HELD, project=PROJECT)
    notify(config, FAILED, project=PROJECT)
    notify(config, REJECTED, project=PROJECT)
    assert [r.json()["event"] for r in hook.requests] == ["failed"]
    assert [m.message["Subject"].split()[4] for m in smtp.mails] == ["held:"]


def test_min_rejected_is_a_threshold_to_exceed(hook: HttpReceiver) -> None:
    config = channels(webhook(hook.url(), min_rejected=5))
    notify(config, run("partial", rejected=5, run_id=1), project=PROJECT)
    notify(config, run("partial", rejected=6, run_id=2), project=PROJECT)
    [request] = hook.requests
    assert request.json()["run_id"] == 2
    assert request.json()["reason"] == "6 rows rejected (more than the 5 allowed)"


def test_event_of() -> None:
    every, quiet_on_rejects, rejects_only = channels(
        webhook("http://x.test"),
        webhook("http://x.test", on=["held", "failed"]),
        webhook("http://x.test", on=["rejected"], min_rejected=10),
    )
    assert event_of(HELD, every) == "held"
    assert event_of(FAILED, every) == "failed"
    assert event_of(REJECTED, every) == "rejected"
    assert event_of(SUCCEEDED, every) is None
    assert event_of(run("partial", rejected=0), every) is None
    assert event_of(run("planned"), every) is None
    assert event_of(REJECTED, quiet_on_rejects) is None
    # A failed run that rejected rows fires `failed`, once, where `failed` is heard ...
    assert event_of(run("failed", rejected=50), every) == "failed"
    # ... and `rejected` where only rejections above the threshold are.
    assert event_of(run("failed", rejected=50), rejects_only) == "rejected"
    assert event_of(run("failed", rejected=10), rejects_only) is None
    assert event_of({"status": "partial", "rejected": "lots"}, every) is None


def test_one_broken_channel_does_not_stop_the_others(hook: HttpReceiver, slack: HttpReceiver,
                                                     smtp: SmtpSink) -> None:
    down = webhook(f"http://127.0.0.1:{free_port()}/x")
    config = channels(down, slack_hook(slack), mail(smtp))
    problems = notify(config, FAILED, project=PROJECT, timeout=1.0)
    assert len(problems) == 1 and problems[0].startswith("alerts[0] (webhook to http://127.0.0.1:")
    assert len(slack.requests) == 1 and len(smtp.mails) == 1


def test_notify_survives_a_malformed_summary(hook: HttpReceiver) -> None:
    odd = {"status": "failed", "run_id": None, "planned": "?", "duration_s": "slow",
           "rejected": None, "error": None, "extra": {1, 2}}
    assert notify(channels(webhook(hook.url())), odd, project=PROJECT) == []
    assert hook.requests[0].json()["reason"] == "failed without a recorded reason"


# -- configuration ----------------------------------------------------------------


def test_config_shapes_and_defaults(smtp: SmtpSink) -> None:
    text = f"""
alerts:
  - type: webhook
    url: https://ops.acme.test/hooks/tidegate
    headers: {{Authorization: Bearer x}}
    on: [held, failed]
  - type: slack
    webhook_url: https://hooks.slack.com/services/T/B/{SLACK_TOKEN}
    min_rejected: 100
  - type: email
    host: smtp.acme.test
    username: {SMTP_USER}
    password: {SMTP_PASSWORD}
    from: Tidegate <tidegate@acme.test>
    to: [ops@acme.test]
"""
    hook_, slack_, email_ = channels(*yaml.safe_load(text)["alerts"])
    assert isinstance(hook_, WebhookAlertConfig) and hook_.on == ["held", "failed"]
    assert isinstance(slack_, SlackAlertConfig)
    assert slack_.on == ["held", "failed", "rejected"] and slack_.min_rejected == 100
    assert isinstance(email_, EmailAlertConfig)
    assert (email_.port, email_.starttls, email_.ssl, email_.timeout_s) == (587, True, False, 10)
    assert email_.from_ == "Tidegate <tidegate@acme.test>"
    given = {k: v for k, v in mail(smtp).items() if k not in ("starttls", "port")}
    [implicit_tls] = channels({**given, "ssl": True})
    assert isinstance(implicit_tls, EmailAlertConfig)
    assert (implicit_tls.port, implicit_tls.starttls) == (465, False)


def errors_of(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        channels(raw)
    return [(".".join(str(p) for p in e["loc"]), e["type"])
            for e in info.value.errors(include_input=False)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (webhook("http://x.test", secret="s"), ("0.webhook.secret", "extra_forbidden")),
        ({"type": "slack", "webhook_url": "https://h.test/x", "channel": "#ops"},
         ("0.slack.channel", "extra_forbidden")),
        ({"type": "email", "host": "h", "from": "a@acme.test", "to": ["b@acme.test"], "cc": []},
         ("0.email.cc", "extra_forbidden")),
        ({"type": "email", "host": "h", "from": "a@acme.test"}, ("0.email.to", "missing")),
        ({"type": "email", "host": "h", "from": "a@acme.test", "to": []},
         ("0.email.to", "too_short")),
        ({"type": "email", "host": "h", "to": ["b@acme.test"]}, ("0.email.from", "missing")),
        ({"type": "email", "host": "h", "from": "a@acme.test", "to": ["nobody"]},
         ("0.email.to", "value_error")),
        (webhook("ftp://x.test"), ("0.webhook.url", "value_error")),
        (webhook("http://x.test", on=["exploded"]), ("0.webhook.on.0", "literal_error")),
        (webhook("http://x.test", min_rejected=-1), ("0.webhook.min_rejected",
                                                     "greater_than_equal")),
        ({"type": "pager", "url": "http://x.test"}, ("0", "union_tag_invalid")),
    ],
)
def test_config_rejects(raw: dict[str, Any], expected: tuple[str, str]) -> None:
    assert expected in errors_of(raw)


def test_config_rejects_ssl_with_starttls() -> None:
    raw = {"type": "email", "host": "h", "from": "a@acme.test", "to": ["b@acme.test"],
           "ssl": True, "starttls": True}
    assert errors_of(raw) == [("0.email", "value_error")]


def test_yaml_on_key_read_as_true_still_means_on() -> None:
    # YAML 1.1 reads a bare `on:` as the boolean true; tidegate's loader turns keys into text.
    raw = yaml.safe_load("type: webhook\nurl: http://x.test\non: [held]\n")
    assert True in raw
    [config] = channels({str(k): v for k, v in raw.items()})
    assert config.on == ["held"]
    [config] = channels(raw)
    assert config.on == ["held"]


# -- wired into runs --------------------------------------------------------------


def test_a_held_run_alerts_every_channel_of_the_project(tmp_path: Path, hook: HttpReceiver,
                                                       smtp: SmtpSink) -> None:
    from conftest import SECRET
    from helpers import warehouse
    from tidegate import Project
    from tidegate.sandbox.webhook import WebhookReceiver

    warehouse(tmp_path / "warehouse.duckdb", 50)
    with WebhookReceiver(secret=SECRET) as receiver:
        config = {
            "name": "acme",
            "sources": {"warehouse": {"type": "duckdb", "path": "warehouse.duckdb"}},
            "destinations": {"hook": {"type": "webhook", "url": receiver.url,
                                      "secret": "${HOOK_SECRET}"}},
            "syncs": {"accounts": {"source": "warehouse", "table": "accounts",
                                   "primary_key": "id", "destination": "hook",
                                   "object": "Account", "mode": "mirror",
                                   "fields": ["name", "score"]}},
            "alerts": [{"type": "webhook", "url": hook.url()},
                       {**mail(smtp), "on": ["held"]}],
        }
        (tmp_path / "tidegate.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        env = {"HOOK_SECRET": SECRET, "SMTP_PASSWORD": SMTP_PASSWORD}
        with Project.load(tmp_path, env=env) as p:
            assert p.run("accounts")["status"] == "succeeded"
        assert hook.requests == [] and smtp.mails == []  # a good run is quiet
        warehouse(tmp_path / "warehouse.duckdb", sql="delete from accounts")
        with Project.load(tmp_path, env=env) as p:
            held = p.run("accounts")
    assert held["status"] == "held"
    document = hook.requests[0].json()
    assert (document["event"], document["project"], document["run_id"]) == ("held", "acme", 2)
    assert "no rows" in document["reason"] and document["run"]["status"] == "held"
    assert len(smtp.mails) == 1 and "held" in str(smtp.mails[0].message["subject"])


def test_alert_config_problems_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "tidegate.yml").write_text(
        "name: acme\n"
        "alerts:\n"
        "  - type: email\n"
        "    host: smtp.example.com\n"
        "    from: tidegate@example.com\n"
        "    too: [ops@example.com]\n"
    )
    from tidegate import ConfigError, Project

    with pytest.raises(ConfigError) as info:
        Project.load(tmp_path)
    text = str(info.value)
    assert "tidegate.yml:6: alerts.0.too: unknown key 'too'" in text
    assert "did you mean 'to'" in text
