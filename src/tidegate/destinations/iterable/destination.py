"""``type: iterable``: users, list membership and events, with the ``Api-Key`` header.

The sync's ``object`` picks what is written:

    users       upsert → POST /api/users/bulkUpdate (mapped fields are dataFields)
    list:<id>   membership of a static list: the model's rows are its members.
                insert / upsert → /api/lists/subscribe (with dataFields);
                update → the same with ``updateExistingUsersOnly`` (unknown users
                are rejected "not found"); delete → /api/lists/unsubscribe;
                mirror keeps the list equal to the model (SPEC §3)
    events      insert → POST /api/events/trackBulk, the key as the event id (so a
                resent event updates itself instead of counting twice)

Users are identified by ``email`` or ``userId``, the sync's match field
(``match.destination``). Values Iterable is certain to refuse — a blank
identifier, text that cannot be an email, NaN, a dataField value that cannot
become the type the project fixed for that field (``GET /api/users/getFields``),
an event without a name or a user — make their rows invalid in the plan
(``invalid_values``, see ``checks``), and they are never sent. Iterable answers
a bulk request 200 even when some
users fail; the failing emails and userIds it lists in ``failedUpdates`` reject
just their rows, with the cause. A user already gone from a list counts as
unsubscribed. The base URL is configurable: ``https://api.eu.iterable.com`` for
projects in Iterable's EU data center.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Literal

import httpx
import pyarrow as pa
from pydantic import Field, SecretStr, field_validator

from tidegate.config import Mode
from tidegate.destinations.base import (
    ALL_MODES,
    Batch,
    BatchResult,
    Capabilities,
    DestinationConfig,
    SyncTarget,
)
from tidegate.destinations.http import HttpDestination, body_preview, retry_after
from tidegate.destinations.iterable import checks
from tidegate.destinations.iterable.fields import (
    Unsendable,
    epoch_seconds,
    failures,
    identity,
    json_value,
)
from tidegate.errors import ConfigError, DestinationError, Problem, RetryableError
from tidegate.redact import redact

MAX_BODY = 4 * 1024 * 1024  # "Max size of request body: 4MB" (users/bulkUpdate)
MAX_ITEMS = 1000  # users or events a request: Iterable states no cap; kept configurable
IDENTIFIERS = ("email", "userId")
_EVENT_TOP = checks.EVENT_TOP
_LIST = re.compile(r"^list:(\d+)$")
# Per object: modes, and the rates Iterable's documentation states per project
# (bulkUpdate 5/s, trackBulk 10/s; subscribe and unsubscribe state none, so the
# more cautious figure is used).
_USERS = Capabilities(modes=frozenset({"upsert"}), max_records=MAX_ITEMS, max_bytes=MAX_BODY,
                      requests_per_second=5.0, concurrency=2,
                      matches_by="email or userId (`match.destination`)", checks_values=True)
_EVENTS = dataclasses.replace(_USERS, modes=frozenset({"insert"}), requests_per_second=10.0,
                              matches_by="the event id: `match.destination: id`")
_LISTS = dataclasses.replace(_USERS, modes=ALL_MODES)


class IterableConfig(DestinationConfig):
    """``type: iterable`` settings (SPEC §6 names ``base_url`` and ``api_key``)."""

    type: Literal["iterable"]
    base_url: str = "https://api.iterable.com"
    api_key: SecretStr
    max_records: int | None = Field(default=None, gt=0, le=10_000)
    max_bytes: int | None = Field(default=None, gt=1024, le=MAX_BODY)
    requests_per_second: float | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0, le=16)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("`base_url` must start with http:// or https:// (e.g. "
                             "https://api.iterable.com, or https://api.eu.iterable.com)")
        return value.rstrip("/").removesuffix("/api")


class IterableDestination(HttpDestination):
    """Writes users, list membership or events to one Iterable project."""

    kind = "iterable"
    config_model = IterableConfig
    capabilities: ClassVar[Capabilities] = dataclasses.replace(
        _LISTS, matches_by="email or userId for users and lists; the event id for events")

    def __init__(self, name: str, config: IterableConfig, target: SyncTarget) -> None:
        super().__init__(name, config, target)
        self.settings = config
        self.tls = config.base_url.startswith("https://")
        self._headers = {"api-key": config.api_key.get_secret_value(),
                         "content-type": "application/json"}
        self._timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))
        self._field_types: dict[str, str] | None = None

    @classmethod
    def modes_for(cls, object_name: str) -> frozenset[Mode]:
        return _caps_of(object_name).modes

    def limits(self) -> Capabilities:
        overrides = {name: value for name in ("max_records", "max_bytes",
                                              "requests_per_second", "concurrency")
                     if (value := getattr(self.settings, name)) is not None}
        return dataclasses.replace(_caps_of(self.target.object), **overrides)

    @property
    def list_id(self) -> int | None:
        found = _LIST.match(self.target.object)
        return int(found.group(1)) if found else None

    @property
    def key(self) -> str:
        return self.target.match_fields[0] if self.target.match_fields else ""

    # Before the run ------------------------------------------------------------

    def check(self) -> None:
        self._lists()

    def prepare(self, schema: pa.Schema) -> None:
        self._check_fields(set(schema.names))
        if self.list_id is not None:
            known = self.before_run("the lists request", self._lists)
            if self.list_id not in known:
                shown = ", ".join(f"{i} ({n})" for i, n in sorted(known.items())[:10])
                raise ConfigError(Problem(
                    f"the Iterable project has no list {self.list_id}", key="object",
                    fix=f"use the id of one of its static lists: {shown or 'none yet'}"))

    def invalid_values(self, table: pa.Table) -> pa.Array | None:
        """Rows holding values Iterable is certain to refuse, with the reason (``checks``)."""
        names = table.column_names
        self._check_fields(set(names))
        if self.target.object == "events":
            reasons = checks.events(table)
        else:
            data = [n for n in names if n != self.key]
            reasons = checks.users(table, self.key, self._user_fields() if data else {})
        return reasons if reasons.null_count < len(reasons) else None

    def _check_fields(self, names: set[str]) -> None:
        """Config problems of the sync's match and fields for its object."""
        if self.target.object == "events":
            missing = [n for n in ("eventName",) if n not in names]
            if self.key != "id":
                raise ConfigError(Problem(
                    f"events are matched by their event id, not {self.key!r}", key="match",
                    fix="match the key on the event id: match: {source: <key column>, "
                        "destination: id}"))
            if missing or not names & set(IDENTIFIERS):
                raise ConfigError(Problem(
                    "an event needs an eventName and the user's email or userId",
                    key="fields", fix="map columns to eventName and to email or userId "
                                      "(createdAt, campaignId, templateId are optional)"))
            return
        if len(self.target.match_fields) != 1 or self.key not in IDENTIFIERS:
            raise ConfigError(Problem(
                f"Iterable identifies users by email or userId, not {self.key!r}",
                key="match", fix="name the identifier in `match.destination` (email or "
                                 "userId), or call the key column so"))

    def _user_fields(self) -> dict[str, str]:
        """The project's user fields and the type each was fixed to (read once)."""
        if self._field_types is None:
            self._field_types = self.before_run("the user fields request", self._read_fields)
        return self._field_types

    def _read_fields(self) -> dict[str, str]:
        response = self._request("GET", "users/getFields")
        problem = self.classify(response)
        if problem is not None:
            raise DestinationError(f"reading the project's user fields failed: {problem}")
        fields = _doc(response).get("fields")
        return {str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {}

    def _lists(self) -> dict[int, str]:
        response = self._request("GET", "lists")
        problem = self.classify(response)
        if problem is not None:
            raise DestinationError(f"reading the project's lists failed: {problem}")
        return {int(item["id"]): str(item.get("name", "")) for item in
                response.json().get("lists", []) if isinstance(item, dict) and "id" in item}

    # Writing -------------------------------------------------------------------

    def write(self, batch: Batch) -> BatchResult:
        keys = batch.keys
        rejected: dict[str, str] = {}
        items: list[dict[str, Any]] = []
        sent: list[tuple[str, str, Any]] = []  # (row key, user identity, event name)
        events = self.target.object == "events"
        for key, row in zip(keys, batch.table.to_pylist(), strict=True):
            try:
                item = self._event(row) if events else self._user(row, batch.operation)
            except Unsendable as exc:
                rejected[key] = str(exc)
                continue
            by_email = "email" in item
            ident = identity(item.get("email", item.get("userId")), by_email)
            items.append(item)
            sent.append((key, ident, item.get("eventName")))
        if not items:
            return BatchResult(rejected=rejected)
        doc, refusal = self._post(batch.operation, items)
        if refusal is not None:  # the request was refused whole
            return BatchResult(rejected=rejected | {key: refusal for key, _, _ in sent})
        failed = failures(doc)
        disallowed = set(doc.get("disallowedEventNames") or []) if events else set()
        for key, ident, event_name in sent:
            cause, reason = failed.get(ident, ("", ""))
            if event_name is not None and event_name in disallowed:
                rejected[key] = f"Iterable does not accept events named {event_name!r} in this " \
                                "project (disallowedEventNames)"
            elif reason and not (cause == "notFound" and batch.operation == "delete"):
                # A user already gone cannot be on the list: unsubscribed as asked.
                if cause == "notFound" and batch.operation == "update":
                    reason += "; update mode subscribes only users that exist"
                rejected[key] = reason
        return BatchResult(rejected=rejected)

    def _user(self, row: dict[str, Any], operation: str) -> dict[str, Any]:
        value = row.get(self.key)
        if value is None or str(value) == "":
            raise Unsendable(f"the identifier {self.key} is empty")
        item: dict[str, Any] = {self.key: str(value)}
        if operation == "delete":
            return item
        item["dataFields"] = {name: json_value(v, name) for name, v in row.items()
                              if name != self.key}
        if self.key == "userId":
            item["preferUserId"] = True  # create users by userId in email-based projects too
        return item

    def _event(self, row: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = {"id": str(row["id"])}
        for name in _EVENT_TOP:
            value = row.get(name)
            if value is None:
                continue
            if name == "createdAt":
                item[name] = epoch_seconds(value, name)
            elif name in ("campaignId", "templateId"):
                try:
                    item[name] = int(value)
                except (TypeError, ValueError):
                    raise Unsendable(f"{name} must be a whole number (an Iterable "
                                     f"{name})") from None
            else:
                item[name] = str(value)
        if "eventName" not in item:
            raise Unsendable("eventName is empty")
        if "email" not in item and "userId" not in item:
            raise Unsendable("the event names no user: email and userId are both empty")
        if "email" in item and "userId" in item:
            del item["email"]  # Iterable wants one identifier: userId is the stable one
        item["dataFields"] = {name: json_value(v, name) for name, v in row.items()
                              if name not in (*_EVENT_TOP, "id")}
        return item

    def _post(self, operation: str, items: list[dict[str, Any]]
              ) -> tuple[dict[str, Any], str | None]:
        """The answer's body, or the reason the whole request was refused."""
        obj = self.target.object
        body: dict[str, Any]
        if obj == "users":
            path, body = "users/bulkUpdate", {"users": items}
        elif obj == "events":
            path, body = "events/trackBulk", {"events": items}
        elif operation == "delete":
            path, body = "lists/unsubscribe", {"listId": self.list_id, "subscribers": items}
        else:
            path, body = "lists/subscribe", {"listId": self.list_id, "subscribers": items}
            if operation == "update":
                body["updateExistingUsersOnly"] = True
        response = self._request("POST", path, json=body)
        problem = self.classify(response)
        return _doc(response), problem

    # Iterable's signals ------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.send(method, f"{self.settings.base_url}/api/{path}", headers=self._headers,
                         timeout=self._timeout, **kwargs)

    def classify(self, response: httpx.Response) -> str | None:
        status = response.status_code
        if status == 401:
            raise DestinationError(
                f"Iterable refused the API key (401 {_code(response)}). Fix: check `api_key` "
                "(a server-side key of the project) and `base_url` "
                "(https://api.eu.iterable.com for projects in the EU data center)")
        if status == 429:
            # Iterable is not documented to send a wait hint; back off unless it does.
            raise RetryableError("Iterable is rate limiting this project (429 "
                                 f"{_code(response)})", retry_after=retry_after(response))
        problem = super().classify(response)
        if problem is not None:
            return f"HTTP {status} {_code(response)}: {_msg(response)}"
        return None


def _caps_of(object_name: str) -> Capabilities:
    if object_name == "users":
        return _USERS
    if object_name == "events":
        return _EVENTS
    if _LIST.match(object_name):
        return _LISTS
    raise ValueError(f"Iterable objects are users, events or list:<id> (a static list's "
                     f"numeric id), not {object_name!r}")


def _doc(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _code(response: httpx.Response) -> str:
    return redact(str(_doc(response).get("code") or response.reason_phrase))


def _msg(response: httpx.Response) -> str:
    doc = _doc(response)
    if doc.get("msg"):
        params = doc.get("params")
        return redact(str(doc["msg"]) + (f" {params}" if params else ""))[:500]
    return body_preview(response)
