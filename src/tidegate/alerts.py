"""Run alerts: telling people when a run was held, failed, or rejected too many rows.

This module owns the ``alerts:`` list of ``tidegate.yml`` (one model per
channel kind: a generic JSON webhook, a Slack incoming webhook, email over
SMTP), the rule that decides which event a finished run fires for a channel
(``event_of``), and delivery (``notify``). Each channel kind's wire format is
fixed here because its readers are people and their scripts.

An alert is a side effect of a run, never a part of it: ``notify`` does not
raise, bounds its time, and reports each channel that could not be told as a
redacted, human-readable problem. Everything it sends, logs or returns passes
through ``tidegate.redact``, with the channels' own secrets (the Slack URL,
header values, the SMTP password) registered first.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from tidegate.config import Strict
from tidegate.destinations.http import (
    RETRYABLE_STATUS,
    body_preview,
    check_http_url,
    retry_after,
)
from tidegate.redact import redact, redact_url, register, register_url

log = logging.getLogger("tidegate")

Event = Literal["held", "failed", "rejected"]
EVENTS: tuple[Event, ...] = ("held", "failed", "rejected")
# Pauses between attempts: three tries in all, each bounded by what is left of the budget.
BACKOFF_S: tuple[float, ...] = (0.25, 1.0)
_SUBJECT_MAX = 200
_MAX_WORKERS = 8


# -- configuration ----------------------------------------------------------------


class _Channel(Strict):
    on: list[Event] = Field(default_factory=lambda: list(EVENTS), min_length=1)
    min_rejected: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true, which the loader
        # turns into the text "True"; nobody means a key called True here.
        if isinstance(data, dict) and "on" not in data:
            for odd in (True, "True"):
                if odd in data:
                    data = {("on" if k == odd else k): v for k, v in data.items()}
                    break
        return data


class WebhookAlertConfig(_Channel):
    """``type: webhook``: a JSON document POSTed to ``url``."""

    type: Literal["webhook"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        check_http_url(value, "url")
        return value


class SlackAlertConfig(_Channel):
    """``type: slack``: one line of text to a Slack incoming webhook."""

    type: Literal["slack"]
    webhook_url: SecretStr

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        check_http_url(value.get_secret_value(), "webhook_url")
        return value


class EmailAlertConfig(_Channel):
    """``type: email``: a plain-text message over SMTP (STARTTLS by default)."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(default=587, gt=0, lt=65536)
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("from_")
    @classmethod
    def _sender(cls, value: str) -> str:
        return check_address(value, "from")

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [check_address(v, "to") for v in value]

    @model_validator(mode="after")
    def _one_tls(self) -> EmailAlertConfig:
        if self.ssl and self.starttls and "starttls" in self.model_fields_set:
            raise ValueError("give `ssl: true` (TLS from the start) or `starttls: true`, not both")
        if self.ssl:
            self.starttls = False  # the connection is encrypted from the first byte
            # Implicit TLS has its own well-known port; 587 would only ever time out.
            if "port" not in self.model_fields_set:
                self.port = 465
        return self


AlertConfig = Annotated[
    WebhookAlertConfig | SlackAlertConfig | EmailAlertConfig,
    Field(discriminator="type"),
]


def check_address(value: str, key: str) -> str:
    """``value`` if it holds one mail address (``ops@acme.com`` or ``Ops <ops@acme.com>``)."""
    address = parseaddr(value)[1]
    if "@" not in address or any(c in value for c in "\r\n"):
        raise ValueError(f"`{key}`: '{value}' is not a mail address like ops@example.com")
    return value


def register_secrets(channels: Iterable[AlertConfig]) -> None:
    """Register every secret the channels hold, so that ``redact`` masks it everywhere."""
    for channel in channels:
        if isinstance(channel, WebhookAlertConfig):
            register_url(channel.url)
            for value in channel.headers.values():
                register(value)
                register(value.split()[-1] if value.split() else None)  # "Bearer <token>"
        elif isinstance(channel, SlackAlertConfig):
            url = channel.webhook_url.get_secret_value()
            register(url)
            register_url(url)
            path = urlsplit(url).path
            register(path)
            register(path.rstrip("/").rsplit("/", 1)[-1])
        elif channel.password is not None:
            register(channel.password.get_secret_value())


# -- which event ------------------------------------------------------------------


def event_of(summary: dict[str, Any], channel: AlertConfig) -> Event | None:
    """The event a finished run fires for ``channel``, or None when it stays quiet.

    A held or failed run fires that event. Rows rejected above the channel's
    ``min_rejected`` fire ``rejected`` when no held/failed event fired for the
    channel, so one run sends each channel at most one message.
    """
    status = summary.get("status")
    if status in ("held", "failed") and status in channel.on:
        return "held" if status == "held" else "failed"
    if "rejected" in channel.on and _rejected(summary) > channel.min_rejected:
        return "rejected"
    return None


def _rejected(summary: dict[str, Any]) -> int:
    try:
        return int(summary.get("rejected") or 0)
    except (TypeError, ValueError):
        return 0


def reason_of(summary: dict[str, Any], event: Event, min_rejected: int = 0) -> str:
    """Why the alert fires, in words; the run's ``error`` when it recorded one."""
    error = str(summary.get("error") or "").strip()
    if event == "held":
        return error or "held by a guardrail"
    if event == "failed":
        return error or "failed without a recorded reason"
    count = _rejected(summary)
    text = f"{count} row{'' if count == 1 else 's'} rejected"
    if min_rejected:
        text += f" (more than the {min_rejected} allowed)"
    return f"{text}; {error}" if error else text


# -- the message ------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One message about one run, in the forms each channel sends."""

    project: str
    event: Event
    reason: str
    summary: dict[str, Any]

    @property
    def headline(self) -> str:
        """``acme/aps_to_salesforce run 42 held: <first line of the reason>``."""
        first = self.reason.splitlines()[0] if self.reason else self.event
        return redact(
            f"{self.project}/{self.summary.get('sync')} run {self.summary.get('run_id')} "
            f"{self.event}: {first}"
        )

    def counts(self) -> str:
        """Planned, delivered and rejected counts and the duration, on one line."""
        parts = []
        for label, key in (("planned", "planned"), ("delivered", "delivered")):
            numbers = self.summary.get(key)
            if isinstance(numbers, dict) and numbers:
                parts.append(f"{label} " + ", ".join(f"{v} {k}" for k, v in numbers.items()))
        parts.append(f"{_rejected(self.summary)} rejected")
        duration = self.summary.get("duration_s")
        if isinstance(duration, int | float):
            parts.append(f"{duration:.2f}s")
        return "; ".join(parts)

    def document(self) -> dict[str, Any]:
        """The generic webhook's JSON body."""
        document: dict[str, Any] = scrub({
            "type": "tidegate.alert",
            "event": self.event,
            "project": self.project,
            "sync": self.summary.get("sync"),
            "run_id": self.summary.get("run_id"),
            "reason": self.reason,
            "run": self.summary,
        })
        return document

    def slack_text(self) -> str:
        # Slack reads &, < and > as markup; anything else is shown as written.
        text = f"tidegate {self.headline} ({self.counts()})"
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def subject(self) -> str:
        subject = f"[tidegate] {self.headline}"
        return subject if len(subject) <= _SUBJECT_MAX else subject[: _SUBJECT_MAX - 1] + "…"

    def text(self) -> str:
        """The email body: the run in words, then the summary as JSON for scripts."""
        rows = [
            ("Project", self.project),
            ("Sync", str(self.summary.get("sync"))),
            ("Run", str(self.summary.get("run_id"))),
            ("Event", self.event),
            ("Status", str(self.summary.get("status"))),
            ("Reason", self.reason.replace("\n", "\n" + " " * 11)),
            ("Counts", self.counts()),
        ]
        lines = [f"tidegate run {self.event}", ""]
        lines += [f"{name + ':':<10} {value}" for name, value in rows]
        lines += ["", "Run summary (JSON):", json.dumps(self.summary, indent=2, default=str)]
        return redact("\n".join(lines) + "\n")


def scrub(value: Any) -> Any:
    """``value`` with every registered secret masked in each text inside it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


# -- delivery ---------------------------------------------------------------------


class AlertFailed(Exception):
    """A channel could not be told; the message is redacted and says why."""


class _Transient(AlertFailed):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def notify(
    channels: Sequence[AlertConfig],
    summary: dict[str, Any],
    *,
    project: str,
    timeout: float = 10.0,
) -> list[str]:
    """Send ``summary`` to every channel whose event fires; return the problems.

    Never raises. Channels are told in parallel, each within ``timeout``
    seconds, retries included. Each problem is redacted and also logged as a
    warning on the ``tidegate`` logger.
    """
    try:
        due = [(i, c, e) for i, c in enumerate(channels) if (e := event_of(summary, c))]
        if not due:
            return []
        register_secrets(channels)
        deadline = time.monotonic() + timeout

        def tell(item: tuple[int, AlertConfig, Event]) -> str | None:
            index, channel, event = item
            reason = reason_of(summary, event, channel.min_rejected)
            return _tell(index, channel, Alert(project, event, reason, summary), deadline)

        with ThreadPoolExecutor(min(len(due), _MAX_WORKERS), "tidegate-alert") as pool:
            outcomes = list(pool.map(tell, due))
        problems = [p for p in outcomes if p is not None]
    except Exception as exc:  # an alert must never break the run that caused it
        log.debug("%s", redact(traceback.format_exc()))
        problems = [redact(f"alerts not sent: unexpected {type(exc).__name__}: {exc}")]
    for problem in problems:
        log.warning("%s", problem)
    return problems


def _tell(index: int, channel: AlertConfig, alert: Alert, deadline: float) -> str | None:
    """Deliver one alert; the problem text when it could not be delivered."""
    where = f"alerts[{index}] ({describe(channel)})"
    try:
        _send(channel, alert, deadline)
    except AlertFailed as exc:
        return redact(f"{where} not sent: {exc}")
    except Exception as exc:  # a bug in one channel must not silence the others
        log.debug("%s", redact(traceback.format_exc()))
        return redact(f"{where} not sent: unexpected {type(exc).__name__}: {exc}")
    log.info("%s sent: %s", where, alert.headline)
    return None


def describe(channel: AlertConfig) -> str:
    """How problems name a channel: its kind and where it goes, without secrets."""
    if isinstance(channel, WebhookAlertConfig):
        return f"webhook to {_origin(channel.url)}"
    if isinstance(channel, SlackAlertConfig):
        # The whole path of a Slack URL is the credential; only the host is shown.
        return f"slack to {_origin(channel.webhook_url.get_secret_value())}"
    return f"email via {channel.host}:{channel.port}"


def _origin(url: str) -> str:
    try:
        parts = urlsplit(redact_url(url))
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an invalid URL"
    return redact(f"{parts.scheme}://{parts.hostname}{port}")


def _send(channel: AlertConfig, alert: Alert, deadline: float) -> None:
    if isinstance(channel, WebhookAlertConfig):
        # Lower-cased so that a configured Content-Type replaces ours instead of doubling it.
        headers = {"content-type": "application/json"} | {
            name.lower(): value for name, value in channel.headers.items()
        }
        body = json.dumps(alert.document(), default=str).encode()
        post_json(channel.url, body, headers, deadline)
    elif isinstance(channel, SlackAlertConfig):
        body = json.dumps({"text": alert.slack_text()}).encode()
        post_json(channel.webhook_url.get_secret_value(), body,
                  {"content-type": "application/json"}, deadline)
    else:
        send_email(channel, alert, deadline)


def with_retries(attempt: Callable[[float], None], deadline: float) -> None:
    """Run ``attempt(seconds_left)`` until it succeeds, fails for good, or time is up.

    ``attempt`` raises ``_Transient`` for what may pass (a 503, a refused
    connection) and ``AlertFailed`` for what will not.
    """
    for tries, pause in enumerate((*BACKOFF_S, None), start=1):
        try:
            attempt(max(0.01, deadline - time.monotonic()))
            return
        except _Transient as exc:
            wait = None if pause is None else max(pause, exc.retry_after or 0.0)
            if wait is None or time.monotonic() + wait >= deadline:
                raise AlertFailed(f"{exc} (after {tries} attempt{'s' * (tries > 1)})") from None
            time.sleep(wait)


def post_json(url: str, body: bytes, headers: dict[str, str], deadline: float) -> None:
    """POST ``body`` to ``url``; any 2xx is delivered. Raises ``AlertFailed``."""
    with httpx.Client(headers={"user-agent": "tidegate"}, follow_redirects=False) as client:
        with_retries(lambda left: _post_once(client, url, body, headers, left), deadline)


def _post_once(
    client: httpx.Client, url: str, body: bytes, headers: dict[str, str], left: float
) -> None:
    try:
        response = client.post(url, content=body, headers=headers,
                               timeout=httpx.Timeout(left, connect=min(left, 5.0)))
    except httpx.TimeoutException:
        raise _Transient(f"no answer within {left:.1f}s") from None
    except httpx.TransportError as exc:
        raise _Transient(f"cannot connect: {redact(str(exc)) or type(exc).__name__}") from None
    status = response.status_code
    if 200 <= status < 300:
        return
    problem = f"HTTP {status}: {body_preview(response) or '(empty body)'}"
    if status in RETRYABLE_STATUS:
        raise _Transient(problem, retry_after(response))
    raise AlertFailed(problem)


def send_email(channel: EmailAlertConfig, alert: Alert, deadline: float) -> None:
    """Send ``alert`` by SMTP as ``channel`` says. Raises ``AlertFailed``."""
    message = email_message(channel, alert)
    with_retries(lambda left: _smtp_once(channel, message, min(channel.timeout_s, left)),
                 deadline)


def email_message(channel: EmailAlertConfig, alert: Alert) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = alert.subject()
    message["From"] = channel.from_
    message["To"] = ", ".join(channel.to)
    message["Date"] = formatdate(localtime=True)
    # make_msgid's default asks DNS for this host's name, which can stall for seconds.
    domain = parseaddr(channel.from_)[1].rpartition("@")[2] or "tidegate.invalid"
    message["Message-ID"] = make_msgid("tidegate", domain=domain)
    message.set_content(alert.text())
    return message


def _smtp_once(channel: EmailAlertConfig, message: EmailMessage, timeout: float) -> None:
    try:
        smtp = _connect(channel, timeout)
    except (OSError, smtplib.SMTPException) as exc:
        raise _smtp_failure(exc) from None
    try:
        if channel.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if channel.username:
            password = channel.password.get_secret_value() if channel.password else ""
            smtp.login(channel.username, password)
        refused = smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise _smtp_failure(exc) from None
    finally:
        _quit(smtp)
    if refused:
        # Some recipients have it already: sending again would duplicate it for them.
        raise AlertFailed(redact(f"the server refused {', '.join(sorted(refused))}"))


def _connect(channel: EmailAlertConfig, timeout: float) -> smtplib.SMTP:
    if channel.ssl:
        return smtplib.SMTP_SSL(channel.host, channel.port, timeout=timeout,
                                context=ssl.create_default_context())
    return smtplib.SMTP(channel.host, channel.port, timeout=timeout)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def _smtp_failure(exc: Exception) -> AlertFailed:
    """Classify an SMTP error: 4xx replies and dropped connections may pass."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return AlertFailed(redact(f"SMTP login refused ({exc.smtp_code} {_text(exc.smtp_error)}); "
                                  "check `username` and `password`"))
    if isinstance(exc, smtplib.SMTPResponseException):
        problem = redact(f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}")
        return _Transient(problem) if 400 <= exc.smtp_code < 500 else AlertFailed(problem)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        refused = ", ".join(sorted(exc.recipients))
        problem = redact(f"the server refused every recipient ({refused})")
        return _Transient(problem) if all(400 <= c < 500 for c in codes) else AlertFailed(problem)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return AlertFailed(redact(f"the server does not support it: {exc}"))
    if isinstance(exc, ssl.SSLError):
        return AlertFailed(redact(f"TLS failed: {exc}"))
    if isinstance(exc, TimeoutError):
        return _Transient("no answer in time")
    detail = redact(str(exc) or type(exc).__name__)
    # Every SMTPException is an OSError; only a dropped or refused connection may pass.
    if isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(
        exc, smtplib.SMTPException
    ):
        return _Transient(f"cannot talk to the server: {detail}")
    return AlertFailed(f"SMTP failed: {detail}")


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
