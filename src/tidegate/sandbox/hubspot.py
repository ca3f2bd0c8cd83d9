"""A local HubSpot portal that follows HubSpot's CRM v3 contract, checked against its OpenAPI.

It owns the server side of what the HubSpot destination talks to: the
properties endpoint (``GET /crm/v3/properties/{objectType}``, and ``POST`` to
create a custom property), the batch
object endpoints (``create``, ``read``, ``update``, ``upsert``, ``archive``)
and a paged object listing, and the default associations of records
(``POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/associate/default``),
behind a private-app bearer token. Records live in
memory, one table per object type (contacts, companies, deals and any custom
type added with ``add_object``); tests read them back with ``records``,
``find`` and ``associations``.

Every request body is checked against HubSpot's published OpenAPI documents
(shipped in ``sandbox/specs/hubspot``, see ``sandbox/openapi.py``) before it is
looked at, so neither this server nor a client tested against it can drift
from the real API; with ``check_responses`` the server also checks its own
answers and keeps any violation in ``response_violations``.

Where HubSpot is strict this server is strict too, and each rule names its
source in a comment:

- values are strings (the spec), checked against the property's type: numbers,
  ``true``/``false``, an enumeration's options (``;``-joined for multiple
  checkboxes), dates as epoch milliseconds at midnight UTC, datetimes as epoch
  milliseconds or ISO 8601;
- unknown and read-only properties, and values a property cannot hold, refuse
  the whole request with 400 ``VALIDATION_ERROR`` (``Property values were not
  valid``) — except in ``batch/create`` when every input carries an
  ``objectWriteTraceId``, which turns on multi-status: then only the failing
  inputs are refused, in a 207;
- ``batch/update`` and ``batch/read`` answer 207 with an ``OBJECT_NOT_FOUND``
  error listing the ids that match no record; ``batch/archive`` answers 204
  whatever the ids;
- at most ``max_inputs`` (100) inputs a request (2,000 for associations);
- an association names two records that exist, else its input is refused with
  ``OBJECT_NOT_FOUND`` among the ``errors`` of a 200 (the v4 document declares
  no 207); associating twice changes nothing;
- the ten-secondly rolling limit and the daily limit answer 429 with the
  ``policyName`` that was hit, and every answer carries the
  ``X-HubSpot-RateLimit-*`` headers.

Fault knobs can be turned while it runs: ``fail_next`` (5xx), ``throttle_next``
(429 of a given policy), ``refuse`` (values a property refuses, as a portal's
validation rule would) and ``spend_daily``; ``on_request`` sees each request
first (the base's hook), so a test can hold one or fault the next.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tidegate.sandbox.openapi import Contract, load_documents
from tidegate.sandbox.server import LocalServer, Reply, exit_on_config_error, serve_forever

__all__ = ["MAX_INPUTS", "HubSpotSandbox", "ObjectType", "Property", "default_objects",
           "main", "serve"]

# The batch endpoints' often-quoted cap; the OpenAPI documents carry no maxItems.
MAX_INPUTS = 100
# https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines.md:
# Free and Starter private apps get 100 requests per 10 seconds and 250,000 a day.
DEFAULT_BURST = 100
DEFAULT_INTERVAL_MS = 10_000
DEFAULT_DAILY = 250_000
DEFAULT_TOKEN = "pat-na1-tidegate-sandbox"
MAX_STRING = 65_536  # characters a text property holds
_JSON = {"content-type": "application/json;charset=utf-8"}
_TYPES = frozenset({"bool", "enumeration", "date", "datetime", "string", "number",
                    "phone_number"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
# Inputs a v4 associations batch takes (HubSpot's associations guide: up to 2,000).
MAX_ASSOCIATIONS = 2_000
# HubSpot-defined default (unlabeled) association type ids, from HubSpot's list of
# association type ids; other pairs answer 1 here.
_DEFAULT_TYPE_IDS = {("contacts", "companies"): 279, ("companies", "contacts"): 280,
                     ("deals", "contacts"): 3, ("contacts", "deals"): 4,
                     ("deals", "companies"): 341, ("companies", "deals"): 342}
_DAY_MS = 86_400_000


# Schema ------------------------------------------------------------------------


@dataclass(frozen=True)
class Property:
    """One property of an object type, as ``GET /crm/v3/properties/{objectType}`` shows it."""

    name: str
    type: str
    field_type: str = ""
    options: tuple[str, ...] = ()
    unique: bool = False
    read_only: bool = False
    calculated: bool = False
    label: str = ""
    group: str = "tidegate"
    hubspot_defined: bool = False  # one of HubSpot's default properties

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"property {self.name}: unknown type {self.type!r}")

    @property
    def kind(self) -> str:
        """The value rule: bool, single, multiple, date, datetime, number or text."""
        if self.type == "bool" or self.field_type == "booleancheckbox":
            return "bool"
        if self.type == "enumeration":
            return "multiple" if self.field_type == "checkbox" else "single"
        if self.type in ("date", "datetime", "number"):
            return self.type
        return "text"

    def describe(self) -> dict[str, Any]:
        options = list(self.options)
        if self.field_type == "booleancheckbox" and not options:
            options = ["true", "false"]
        field_type = self.field_type or {
            "bool": "booleancheckbox", "enumeration": "select", "date": "date",
            "datetime": "date", "number": "number", "phone_number": "phonenumber",
        }.get(self.type, "text")
        return {
            "name": self.name, "label": self.label or self.name.replace("_", " ").title(),
            "type": self.type, "fieldType": field_type, "description": "",
            "groupName": self.group, "displayOrder": -1, "hidden": False,
            "hasUniqueValue": self.unique, "calculated": self.calculated,
            "formField": not (self.read_only or self.calculated),
            "hubspotDefined": self.hubspot_defined, "archived": False,
            "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z",
            "options": [{"label": o.title(), "value": o, "displayOrder": i, "hidden": False}
                        for i, o in enumerate(options)],
            "modificationMetadata": {"archivable": not self.hubspot_defined,
                                     "readOnlyDefinition": self.hubspot_defined,
                                     "readOnlyValue": self.read_only or self.calculated},
        }


@dataclass(frozen=True)
class ObjectType:
    """An object type: its name, HubSpot's id for it (``0-1``…), its properties."""

    name: str
    type_id: str
    properties: tuple[Property, ...]
    singular: str = ""
    # Properties that identify a record in update/upsert besides the unique ones:
    # contacts are upserted by email although email is not a unique-value property.
    id_properties: tuple[str, ...] = ()

    def prop(self, name: str) -> Property | None:
        return next((p for p in self.properties if p.name == name), None)

    @property
    def label(self) -> str:
        return (self.singular or self.name.removesuffix("s")).upper()

    def can_identify(self, name: str) -> bool:
        prop = self.prop(name)
        return prop is not None and (prop.unique or name in self.id_properties)


def _system() -> tuple[Property, ...]:
    return (
        Property("hs_object_id", "number", "number", read_only=True, group="system"),
        Property("createdate", "datetime", "date", read_only=True, group="system"),
        Property("hs_lastmodifieddate", "datetime", "date", read_only=True, group="system"),
    )


def _defaults(*props: Property) -> tuple[Property, ...]:
    return tuple(replace(p, hubspot_defined=True) for p in props)


def default_objects() -> list[ObjectType]:
    """Contacts, companies and deals with a few of HubSpot's default properties."""
    contacts = ObjectType("contacts", "0-1", _defaults(
        *_system(),
        Property("email", "string", "text", group="contactinformation"),
        Property("firstname", "string", "text", group="contactinformation"),
        Property("lastname", "string", "text", group="contactinformation"),
        Property("phone", "phone_number", "phonenumber", group="contactinformation"),
        Property("lifecyclestage", "enumeration", "radio", group="contactinformation", options=(
            "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead",
            "opportunity", "customer", "evangelist", "other")),
        Property("hs_email_optout", "bool", "booleancheckbox", group="contactinformation"),
    ), singular="contact", id_properties=("email",))
    companies = ObjectType("companies", "0-2", _defaults(
        *_system(),
        Property("name", "string", "text", group="companyinformation"),
        Property("domain", "string", "text", group="companyinformation"),
        Property("industry", "enumeration", "select", group="companyinformation", options=(
            "COMPUTER_SOFTWARE", "FINANCIAL_SERVICES", "HOSPITAL_HEALTH_CARE", "RETAIL",
            "EDUCATION_MANAGEMENT", "MARKETING_AND_ADVERTISING")),
        Property("numberofemployees", "number", "number", group="companyinformation"),
        Property("annualrevenue", "number", "number", group="companyinformation"),
    ), singular="company")
    deals = ObjectType("deals", "0-3", _defaults(
        *_system(),
        Property("dealname", "string", "text", group="dealinformation"),
        Property("amount", "number", "number", group="dealinformation"),
        Property("dealstage", "enumeration", "radio", group="dealinformation", options=(
            "appointmentscheduled", "qualifiedtobuy", "presentationscheduled",
            "decisionmakerboughtin", "contractsent", "closedwon", "closedlost")),
        Property("closedate", "datetime", "date", group="dealinformation"),
    ), singular="deal")
    return [contacts, companies, deals]


# Records and problems -------------------------------------------------------------


@dataclass
class _Record:
    id: str
    properties: dict[str, str]
    created: str
    updated: str

    def json(self, names: Iterable[str] | None = None, **extra: Any) -> dict[str, Any]:
        shown = self.properties if names is None else {
            n: self.properties[n] for n in names if n in self.properties}
        return {"id": self.id, "properties": dict(shown), "createdAt": self.created,
                "updatedAt": self.updated, "archived": False, **extra}


@dataclass
class _Table:
    rows: dict[str, _Record] = field(default_factory=dict)


@dataclass(frozen=True)
class _Invalid:
    """One property value HubSpot would not take."""

    name: str
    code: str
    message: str

    def detail(self) -> dict[str, Any]:
        return {"isValid": False, "message": self.message, "error": self.code,
                "name": self.name}


class _Refusal(Exception):
    """A whole request refused with HubSpot's error body."""

    def __init__(self, status: int, category: str, message: str,
                 errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.category, self.message = status, category, message
        self.errors, self.headers, self.extra = errors, headers or {}, extra

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": "error", "message": self.message,
                               "correlationId": str(uuid.uuid4()), "category": self.category,
                               **self.extra}
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc


def _values_refused(problems: list[_Invalid]) -> str:
    return "Property values were not valid: " + json.dumps(
        [p.detail() for p in problems], separators=(",", ":"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# The server --------------------------------------------------------------------


class HubSpotSandbox(LocalServer):
    """An in-memory, thread-safe HubSpot portal on ``host:port``; a context manager.

    ``token`` is the private-app access token it accepts. ``burst`` requests per
    ``interval_ms`` and ``daily_limit`` a day are the portal's rate limits.
    ``retry_after`` adds a ``Retry-After`` header to ten-secondly 429s, which
    HubSpot is not documented to send.
    """

    name = "hubspot"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str = DEFAULT_TOKEN,
        objects: Iterable[ObjectType] | None = None,
        max_inputs: int = MAX_INPUTS,
        burst: int = DEFAULT_BURST,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        daily_limit: int = DEFAULT_DAILY,
        retry_after: bool = False,
        check_responses: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.contract = Contract(load_documents("hubspot"))
        self.token = token
        self.max_inputs = max_inputs
        self.burst, self.interval_ms, self.daily_limit = burst, interval_ms, daily_limit
        self.retry_after = retry_after
        self.check_responses = check_responses
        # What tests read back.
        self.request_count = 0
        self.requests: list[tuple[str, str, int]] = []  # method, path, inputs
        self.daily_used = 0
        self.throttled: list[str] = []  # the policy of every 429 answered
        self.response_violations: list[str] = []
        self._lock = threading.RLock()
        self._objects: dict[str, ObjectType] = {}
        self._tables: dict[str, _Table] = {}
        for obj in objects if objects is not None else default_objects():
            self.add_object(obj)
        self._serial = 1000
        self._window: deque[float] = deque()
        self._failures: list[int] = []
        self._throttles: list[str] = []
        self._refused: dict[tuple[str, str], str] = {}
        self._associated: set[tuple[str, str, str, str]] = set()  # from type, id, to type, id
        super().__init__(host, port, log)

    # Setup -----------------------------------------------------------------------

    def add_object(self, obj: ObjectType) -> None:
        """Add (or replace the schema of) an object type, e.g. a custom object."""
        with self._lock:
            self._objects[obj.name] = obj
            self._tables.setdefault(obj.name, _Table())

    def add_property(self, object_type: str, prop: Property) -> None:
        """Add (or replace) a property of an object type, as a portal admin would."""
        with self._lock:
            obj = self._object(object_type)
            kept = tuple(p for p in obj.properties if p.name != prop.name)
            self._objects[obj.name] = ObjectType(obj.name, obj.type_id, (*kept, prop),
                                                 obj.singular, obj.id_properties)

    def put(self, object_type: str, properties: Mapping[str, str]) -> str:
        """Store a record directly, skipping validation and limits; its new id."""
        with self._lock:
            obj = self._object(object_type)
            record = self._new_record(dict(properties))
            self._tables[obj.name].rows[record.id] = record
            return record.id

    # Fault knobs ---------------------------------------------------------------

    def fail_next(self, n: int, status: int = 502) -> None:
        """Answer the next ``n`` requests with ``status`` (a 5xx), applying nothing."""
        with self._lock:
            self._failures = [status] * n

    def throttle_next(self, n: int, policy: str = "TEN_SECONDLY_ROLLING") -> None:
        """Answer the next ``n`` requests with 429 for ``policy`` (TEN_SECONDLY_ROLLING,
        SECONDLY or DAILY)."""
        with self._lock:
            self._throttles = [policy] * n

    def spend_daily(self, calls: int) -> None:
        """Spend ``calls`` of the daily allowance, as other integrations would."""
        with self._lock:
            self.daily_used += calls

    def refuse(self, prop: str, values: Iterable[str], message: str = "is not allowed") -> None:
        """Make writes that set ``prop`` to one of ``values`` invalid (an empty list clears)."""
        with self._lock:
            self._refused = {k: v for k, v in self._refused.items() if k[0] != prop}
            for value in values:
                self._refused[(prop, str(value))] = message

    # Inspection ----------------------------------------------------------------

    def records(self, object_type: str) -> dict[str, dict[str, str]]:
        """The records of an object type: id → properties."""
        with self._lock:
            table = self._tables[self._object(object_type).name]
            return {rid: dict(r.properties) for rid, r in table.rows.items()}

    def archive(self, object_type: str, record_id: str) -> None:
        """Remove a record directly, as someone deleting it in HubSpot would."""
        with self._lock:
            self._tables[self._object(object_type).name].rows.pop(record_id, None)

    def associations(self, from_type: str, to_type: str) -> set[tuple[str, str]]:
        """(from record id, to record id) of every association between the two types."""
        a, b = self._object(from_type).name, self._object(to_type).name
        with self._lock:
            return {(f, t) for fo, f, to, t in self._associated if (fo, to) == (a, b)}

    def find(self, object_type: str, prop: str, value: str) -> list[dict[str, str]]:
        return [r for r in self.records(object_type).values() if r.get(prop) == value]

    def writes(self, suffix: str) -> list[int]:
        """Inputs per request of every request whose path ends with ``suffix``."""
        with self._lock:
            return [n for _, path, n in self.requests if path.endswith(suffix)]

    # Request handling ------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        self.observe(method, path)
        try:
            body = self._parse(raw) if raw else None
            inputs = body.get("inputs") if isinstance(body, dict) else None
            with self._lock:
                self.request_count += 1
                self.requests.append((method, path, len(inputs) if isinstance(inputs, list)
                                      else 0))
            self._authenticate(headers)
            limits = self._admit()
            status, doc = self._route(method, path, query, body)
        except _Refusal as exc:
            status, doc, limits = exc.status, exc.body(), exc.headers
        if self.check_responses:
            self._check_response(method, path, status, doc)
        extra = {**(_JSON if doc is not None else {}), **limits}
        return status, extra, b"" if doc is None else json.dumps(doc).encode()

    def _parse(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _Refusal(400, "VALIDATION_ERROR", f"Invalid input JSON: {exc}") from None

    def _authenticate(self, headers: dict[str, str]) -> None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            raise _Refusal(401, "INVALID_AUTHENTICATION",
                           "Authentication credentials not found. This API supports OAuth 2.0 "
                           "authentication and you can find more details at "
                           "https://developers.hubspot.com/docs/methods/auth/oauth-overview")

    def _admit(self) -> dict[str, str]:
        """Count the request against the limits; 429 (or an injected fault) when over."""
        with self._lock:
            if self._failures:
                status = self._failures.pop(0)
                self.say(f"injected failure: HTTP {status}")
                raise _Refusal(status, "INTERNAL_ERROR", "internal error, try again")
            now = time.monotonic()
            while self._window and now - self._window[0] >= self.interval_ms / 1000:
                self._window.popleft()
            policy = self._throttles.pop(0) if self._throttles else None
            if policy is None and self.daily_used >= self.daily_limit:
                policy = "DAILY"
            if policy is None and len(self._window) >= self.burst:
                policy = "TEN_SECONDLY_ROLLING"
            if policy is None:
                self._window.append(now)
                self.daily_used += 1
            headers = {
                "x-hubspot-ratelimit-max": str(self.burst),
                "x-hubspot-ratelimit-remaining": str(max(0, self.burst - len(self._window))),
                "x-hubspot-ratelimit-interval-milliseconds": str(self.interval_ms),
                "x-hubspot-ratelimit-daily": str(self.daily_limit),
                "x-hubspot-ratelimit-daily-remaining": str(
                    max(0, self.daily_limit - self.daily_used)),
            }
        if policy is not None:
            with self._lock:
                self.throttled.append(policy)
            self.say(f"throttled: {policy}")
            if policy == "TEN_SECONDLY_ROLLING" and self.retry_after:
                headers["retry-after"] = str(max(1, self.interval_ms // 1000))
            # The 429 body of https://developers.hubspot.com/docs/api/usage-details,
            # with the category the spec's Error schema requires.
            raise _Refusal(429, "RATE_LIMITS", f"You have reached your {policy.lower()} limit.",
                           headers=headers, errorType="RATE_LIMIT", policyName=policy,
                           requestId=str(uuid.uuid4()))
        return headers

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               body: Any) -> tuple[int, Any]:
        segs = [s for s in path.split("/") if s]
        if segs[:2] not in (["crm", "v3"], ["crm", "v4"]) or len(segs) < 4:
            raise _Refusal(404, "OBJECT_NOT_FOUND", f"resource not found: {path}")
        if method in ("POST", "PATCH", "PUT"):
            problems = self.contract.request_problems(method, path, body)
            if problems:
                raise _Refusal(400, "VALIDATION_ERROR",
                               "Invalid input JSON: " + "; ".join(problems),
                               errors=[{"message": p} for p in problems])
        if segs[1] == "v4":
            if (method == "POST" and len(segs) == 8 and segs[2] == "associations"
                    and segs[5:] == ["batch", "associate", "default"]):
                with self._lock:
                    return self._associate(self._object_for(segs[3]),
                                           self._object_for(segs[4]), body["inputs"])
            raise _Refusal(404, "VALIDATION_ERROR", f"{method} {path} is not supported")
        obj = self._object_for(segs[3])
        if segs[2] == "properties" and len(segs) == 4 and method == "GET":
            return 200, {"results": [p.describe() for p in obj.properties]}
        if segs[2] == "properties" and len(segs) == 4 and method == "POST":
            return self._create_property(obj, body)
        if segs[2] != "objects":
            raise _Refusal(404, "OBJECT_NOT_FOUND", f"resource not found: {path}")
        if len(segs) == 4 and method == "GET":
            return self._list(obj, query)
        if len(segs) == 6 and segs[4] == "batch" and method == "POST":
            inputs = body["inputs"]
            if len(inputs) > self.max_inputs:
                # The limit is widely reported; HubSpot's exact wording is not documented.
                raise _Refusal(400, "VALIDATION_ERROR",
                               f"Batch input limit exceeded: {len(inputs)} inputs sent, at most "
                               f"{self.max_inputs} are allowed")
            action = segs[5]
            with self._lock:
                if action == "create":
                    return self._create(obj, inputs)
                if action == "update":
                    return self._update(obj, inputs, upsert=False)
                if action == "upsert":
                    return self._update(obj, inputs, upsert=True)
                if action == "archive":
                    return self._archive(obj, inputs)
                if action == "read":
                    return self._read(obj, body)
        raise _Refusal(405 if segs[2] == "objects" else 404, "VALIDATION_ERROR",
                       f"{method} {path} is not supported")

    def _create_property(self, obj: ObjectType, body: dict[str, Any]) -> tuple[int, Any]:
        # What a portal admin does in Settings › Properties, so a sandbox can be set up
        # for a sync's custom properties with one request each.
        name = str(body["name"])
        if obj.prop(name) is not None:
            raise _Refusal(409, "OBJECT_ALREADY_EXISTS",
                           f"A property named '{name}' already exists.")
        if body["type"] not in _TYPES:
            raise _Refusal(400, "VALIDATION_ERROR", f"Invalid property type {body['type']}")
        prop = Property(name, str(body["type"]), str(body["fieldType"]),
                        options=tuple(str(o["value"]) for o in body.get("options") or []),
                        unique=bool(body.get("hasUniqueValue")), label=str(body["label"]),
                        group=str(body["groupName"]))
        self.add_property(obj.name, prop)
        self.say(f"created property {obj.name}.{name} ({prop.type})")
        return 201, prop.describe()

    # Batch operations ----------------------------------------------------------

    def _create(self, obj: ObjectType, inputs: list[dict[str, Any]]) -> tuple[int, Any]:
        # Multi-status is opted into by giving every input a unique objectWriteTraceId:
        # https://developers.hubspot.com/docs/api-reference/error-handling#multi-status-errors
        traces = [i.get("objectWriteTraceId") for i in inputs]
        multi = all(traces) and len(set(traces)) == len(traces)
        table = self._tables[obj.name]
        results, errors = [], []
        seen: dict[tuple[str, str], int] = {}
        for n, item in enumerate(inputs):
            values, problems = self._values(obj, item["properties"], creating=True)
            conflict = self._conflict(obj, values, None, seen, n)
            if problems or conflict:
                if not multi:  # one bad input sinks the request
                    if problems:
                        raise _Refusal(400, "VALIDATION_ERROR", _values_refused(problems))
                    raise _Refusal(409, "CONFLICT", str(conflict))
                errors.append(_error("VALIDATION_ERROR" if problems else "CONFLICT",
                                     _values_refused(problems) if problems else str(conflict),
                                     {"objectWriteTraceId": [str(traces[n])]}))
                continue
            results.append((n, values))
        created = []
        for n, values in results:
            record = self._new_record(values)
            table.rows[record.id] = record
            extra = {"objectWriteTraceId": traces[n]} if traces[n] else {}
            created.append(record.json(values, **extra))
        self.say(f"create {obj.name}: {len(created)} created, {len(errors)} refused")
        return self._batch_reply(201, created, errors)

    def _update(self, obj: ObjectType, inputs: list[dict[str, Any]],
                upsert: bool) -> tuple[int, Any]:
        id_props = {i.get("idProperty") for i in inputs}
        for name in id_props:
            if name is not None and not obj.can_identify(name):
                # Segment's connector quotes this answer (segmentio/action-destinations#3957).
                raise _Refusal(400, "VALIDATION_ERROR",
                               f"Unable to perform update/upsert by non-unique {obj.type_id} "
                               f"property {name}")
            if name is None and upsert:
                raise _Refusal(400, "VALIDATION_ERROR",
                               "Upsert requires an idProperty naming a unique property")
        counts = Counter(str(i["id"]) for i in inputs)
        duplicates = sorted(k for k, n in counts.items() if n > 1)
        if duplicates:
            raise _Refusal(400, "VALIDATION_ERROR",
                           f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique")
        table = self._tables[obj.name]
        planned: list[tuple[dict[str, Any], _Record | None, dict[str, str]]] = []
        missing: list[str] = []
        seen: dict[tuple[str, str], int] = {}
        problems_all: list[_Invalid] = []
        for n, item in enumerate(inputs):
            record = self._lookup(obj, item.get("idProperty"), str(item["id"]))
            if record is None and not upsert:
                missing.append(str(item["id"]))
                continue
            values, problems = self._values(obj, item["properties"], creating=record is None)
            if record is None and item.get("idProperty"):
                values.setdefault(item["idProperty"], str(item["id"]))
            conflict = self._conflict(obj, values, record, seen, n)
            if conflict:
                problems.append(_Invalid(next(iter(values)), "CONFLICT", conflict))
            problems_all += problems
            planned.append((item, record, values))
        if problems_all:
            # Observed behaviour: a value one input cannot take refuses the whole batch.
            raise _Refusal(400, "VALIDATION_ERROR", _values_refused(problems_all))
        results = []
        stamp = _now()
        for _item, record, values in planned:
            if record is None:
                record = self._new_record(values)
                table.rows[record.id] = record
                results.append(record.json(values, new=True))
                continue
            record.properties.update(values)
            record.updated = stamp
            shown = record.json(values, **({"new": False} if upsert else {}))
            results.append(shown)
        errors = [] if not missing else [_error(
            "OBJECT_NOT_FOUND", f"Could not get some {obj.label} objects, they may be deleted "
                                "or not exist. Check that ids are valid.", {"ids": missing})]
        self.say(f"{'upsert' if upsert else 'update'} {obj.name}: {len(results)} written, "
                 f"{len(missing)} not found")
        return self._batch_reply(200, results, errors)

    def _archive(self, obj: ObjectType, inputs: list[dict[str, Any]]) -> tuple[int, Any]:
        table = self._tables[obj.name]
        gone = sum(1 for i in inputs if table.rows.pop(str(i["id"]), None) is not None)
        self.say(f"archive {obj.name}: {gone} of {len(inputs)} archived")
        return 204, None

    def _associate(self, source: ObjectType, target: ObjectType, inputs: list[dict[str, Any]]
                   ) -> tuple[int, Any]:
        if len(inputs) > MAX_ASSOCIATIONS:
            raise _Refusal(400, "VALIDATION_ERROR",
                           f"Batch input limit exceeded: {len(inputs)} inputs sent, at most "
                           f"{MAX_ASSOCIATIONS} are allowed")
        spec = {"associationCategory": "HUBSPOT_DEFINED",
                "associationTypeId": _DEFAULT_TYPE_IDS.get((source.name, target.name), 1)}
        results, missing = [], []
        for item in inputs:
            a, b = str(item["from"]["id"]), str(item["to"]["id"])
            if a not in self._tables[source.name].rows or b not in self._tables[target.name].rows:
                missing.append(a)
                continue
            self._associated.add((source.name, a, target.name, b))
            results.append({"from": {"id": a}, "to": {"id": b}, "associationSpec": spec})
        self.say(f"associate {source.name} → {target.name}: {len(results)} of {len(inputs)}")
        # The error's wording and context are not documented; OBJECT_NOT_FOUND is what
        # HubSpot's other batch endpoints answer for ids that match no record.
        _, doc = self._batch_reply(200, results, [] if not missing else [_error(
            "OBJECT_NOT_FOUND", f"Could not associate some {source.label} objects: a record "
                                "does not exist", {"ids": missing})])
        # The v4 document answers 200 only, its errors inside (``numErrors``), not a 207.
        return 200, doc

    def _read(self, obj: ObjectType, body: dict[str, Any]) -> tuple[int, Any]:
        id_prop = body.get("idProperty")
        if id_prop is not None and not obj.can_identify(id_prop):
            raise _Refusal(400, "VALIDATION_ERROR",
                           f"Unable to read by non-unique {obj.type_id} property {id_prop}")
        names = list(body.get("properties") or [])
        results, missing = [], []
        for item in body["inputs"]:
            record = self._lookup(obj, id_prop, str(item["id"]))
            if record is None:
                missing.append(str(item["id"]))
            else:
                results.append(record.json([*names, "hs_object_id"]))
        errors = [] if not missing else [_error(
            "OBJECT_NOT_FOUND", f"Could not get some {obj.label} objects, they may be deleted "
                                "or not exist. Check that ids are valid.", {"ids": missing})]
        return self._batch_reply(200, results, errors)

    def _list(self, obj: ObjectType, query: dict[str, list[str]]) -> tuple[int, Any]:
        limit = min(100, int((query.get("limit") or ["10"])[0] or 10))
        after = int((query.get("after") or ["0"])[0] or 0)
        names = [n for v in query.get("properties", []) for n in v.split(",") if n]
        with self._lock:
            rows = list(self._tables[obj.name].rows.values())
        page = rows[after:after + limit]
        doc: dict[str, Any] = {"results": [r.json(names or None) for r in page]}
        if after + limit < len(rows):
            doc["paging"] = {"next": {"after": str(after + limit),
                                      "link": f"?after={after + limit}"}}
        return 200, doc

    @staticmethod
    def _batch_reply(ok: int, results: list[dict[str, Any]], errors: list[dict[str, Any]]
                     ) -> tuple[int, Any]:
        stamp = _now()
        doc: dict[str, Any] = {"status": "COMPLETE", "results": results, "requestedAt": stamp,
                               "startedAt": stamp, "completedAt": stamp, "links": {}}
        if errors:
            doc["errors"] = errors
            doc["numErrors"] = sum(len(next(iter(e["context"].values()), [""])) for e in errors)
            return 207, doc
        return ok, doc

    # Values --------------------------------------------------------------------

    def _values(self, obj: ObjectType, given: dict[str, str], *, creating: bool
                ) -> tuple[dict[str, str], list[_Invalid]]:
        """The values to store, and what HubSpot would say is wrong with them."""
        values: dict[str, str] = {}
        problems: list[_Invalid] = []
        for name, value in given.items():
            prop = obj.prop(name)
            if prop is None:
                problems.append(_Invalid(name, "PROPERTY_DOESNT_EXIST",
                                         f'Property "{name}" does not exist'))
                continue
            if prop.read_only or prop.calculated:
                problems.append(_Invalid(name, "READ_ONLY_VALUE",
                                         f"{name} is a read only property; its value cannot be "
                                         "set"))
                continue
            refused = self._refused.get((name, value))
            if refused is not None:
                problems.append(_Invalid(name, "INVALID_VALUE", f"{value} {refused}"))
                continue
            if value == "":  # an empty string clears the property
                values[name] = ""
                continue
            normal, problem = _check(obj, prop, value)
            if problem is not None:
                problems.append(problem)
            else:
                values[name] = normal
        return values, problems

    def _conflict(self, obj: ObjectType, values: dict[str, str], record: _Record | None,
                  seen: dict[tuple[str, str], int], n: int) -> str | None:
        """A unique value another record (or another input) already holds."""
        for name, value in values.items():
            if not value or not obj.can_identify(name):
                continue
            other = self._lookup(obj, name, value)
            if other is not None and other is not record:
                return f"{obj.label.title()} already exists. Existing ID: {other.id}"
            if seen.setdefault((name, value), n) != n:
                return f"Duplicate value {value} of {name} in the batch"
        return None

    def _lookup(self, obj: ObjectType, id_prop: str | None, value: str) -> _Record | None:
        table = self._tables[obj.name]
        if id_prop is None or id_prop == "hs_object_id":
            return table.rows.get(value)
        # Email addresses match whatever their case.
        fold = str.lower if id_prop == "email" else str
        wanted = fold(value)
        return next((r for r in table.rows.values()
                     if fold(r.properties.get(id_prop, "")) == wanted), None)

    def _new_record(self, values: dict[str, str]) -> _Record:
        with self._lock:
            self._serial += 1
            record_id = str(self._serial)
        stamp = _now()
        props = {**values, "hs_object_id": record_id,
                 "createdate": stamp, "hs_lastmodifieddate": stamp}
        return _Record(record_id, props, stamp, stamp)

    # Plumbing --------------------------------------------------------------------

    def _object(self, name: str) -> ObjectType:
        obj = self._object_or_none(name)
        if obj is None:
            raise KeyError(f"no object type {name}")
        return obj

    def _object_or_none(self, name: str) -> ObjectType | None:
        with self._lock:
            for obj in self._objects.values():
                if name in (obj.name, obj.type_id, obj.singular):
                    return obj
        return None

    def _object_for(self, name: str) -> ObjectType:
        obj = self._object_or_none(name)
        if obj is None:
            raise _Refusal(400, "VALIDATION_ERROR", f"Unable to infer object type from: {name}")
        return obj

    def _check_response(self, method: str, path: str, status: int, doc: Any) -> None:
        problems = self.contract.response_problems(method, path, status, doc)
        if problems:
            with self._lock:
                self.response_violations += [f"{method} {path} {status}: {p}" for p in problems]


def _error(category: str, message: str, context: dict[str, list[str]]) -> dict[str, Any]:
    # StandardError: category, context, errors, links, message and status are required.
    return {"status": "error", "category": category, "message": message, "context": context,
            "errors": [], "links": {}}


def _check(obj: ObjectType, prop: Property, value: str) -> tuple[str, _Invalid | None]:
    """``value`` as stored, or what HubSpot would say is wrong with it."""
    kind = prop.kind

    def bad(code: str, message: str) -> tuple[str, _Invalid]:
        return value, _Invalid(prop.name, code, message)

    if kind == "text":
        if len(value) > MAX_STRING:
            return bad("INVALID_STRING_LENGTH", f"{prop.name} is longer than {MAX_STRING} "
                                                "characters")
        if prop.name == "email" and obj.name == "contacts" and not _EMAIL.match(value):
            return bad("INVALID_EMAIL", f"Email address {value} is invalid")
        return value, None
    if kind == "number":
        try:
            number = Decimal(value)
        except InvalidOperation:
            return bad("INVALID_FLOAT", f"{value} is not a valid number")
        if not number.is_finite():
            return bad("INVALID_FLOAT", f"{value} is not a valid number")
        return value, None
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            return bad("INVALID_OPTION", f"{value} was not one of the allowed options: "
                                         "[true, false]")
        return value.lower(), None
    if kind in ("single", "multiple"):
        chosen = value.split(";") if kind == "multiple" else [value]
        wrong = [c for c in chosen if c not in prop.options]
        if wrong:
            return bad("INVALID_OPTION", f"{wrong[0]} was not one of the allowed options: "
                                         f"[{', '.join(prop.options)}]")
        return value, None
    # Dates and datetimes: epoch milliseconds, or ISO 8601
    # (https://developers.hubspot.com/docs/faq/how-should-timestamps-be-formatted-for-hubspots-apis).
    millis = _millis(value)
    if millis is None:
        return bad("INVALID_DATE" if kind == "date" else "INVALID_DATETIME",
                   f"{value} is not a valid {kind}")
    if kind == "date" and millis % _DAY_MS:
        # "If you try to set a value that is not midnight UTC, you will receive an error."
        return bad("INVALID_DATE", f"{value} is a date property value that is not midnight UTC")
    return str(millis), None


def _millis(value: str) -> int | None:
    if re.fullmatch(r"-?\d{1,15}", value):
        return int(value)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = date.fromisoformat(value)
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def serve(port: int, token: str = DEFAULT_TOKEN, *, burst: int = DEFAULT_BURST,
          daily_limit: int = DEFAULT_DAILY) -> None:
    """Run a sandbox portal on 127.0.0.1 in the foreground, printing one line per batch."""
    def make() -> HubSpotSandbox:
        return HubSpotSandbox(port=port, token=token, burst=burst, daily_limit=daily_limit,
                              log=lambda line: print(line, flush=True))

    def banner(server: HubSpotSandbox) -> str:
        return (f"hubspot sandbox listening on {server.url}\n"
                f"  base_url: {server.url}\n"
                f"  token:    {token}\n"
                f"  objects:  {', '.join(sorted(server._objects))}\n"
                f"  limits:   {burst} requests / 10 s, {daily_limit:,} a day, "
                f"{MAX_INPUTS} inputs a request")

    serve_forever(make, port, banner)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tidegate.sandbox.hubspot",
                                     description="Run a local HubSpot sandbox portal.")
    parser.add_argument("--port", type=int, default=8792)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST)
    parser.add_argument("--daily-limit", type=int, default=DEFAULT_DAILY)
    args = parser.parse_args(argv)
    exit_on_config_error(lambda: serve(args.port, args.token, burst=args.burst,
                                       daily_limit=args.daily_limit))


if __name__ == "__main__":
    main()
