"""A local Salesforce org that follows Salesforce's documented REST contract.

It owns the server side of what the Salesforce destination talks to: the OAuth
token endpoint (client credentials and JWT bearer), ``describe``, sObject
Collections (create, update, upsert by external ID, delete), Bulk API 2.0
ingest jobs, a small SOQL subset, the daily API request limit and its
``Sforce-Limit-Info`` header. Records live in memory, one table per sObject,
and tests read them back with ``records`` and ``find``.

Where Salesforce is strict, this server is strict too: unknown fields, read-only
fields, wrong types, numbers beyond a field's precision, bad restricted picklist
values and missing required fields are refused with Salesforce's status codes;
Bulk result files come back in a shuffled (seeded) order, so a client has to
match rows by Id or external ID, never by position; a Bulk job has to be closed
and then polled several times before it completes.

Its fault knobs can be turned while it runs: ``fail_next`` (5xx), ``throttle_next``
(403 ``REQUEST_LIMIT_EXCEEDED``), ``use_api`` (spend the daily allowance),
``lock_rows`` (``UNABLE_TO_LOCK_ROW`` for chosen records) and ``expire_tokens``;
``on_request`` sees each REST call first, so a test can hold one or fault the next.

Behaviour is taken from Salesforce's documentation; each rule cites its page.
Where the documentation does not say (the exact text of some error messages,
for instance), the comment says so and the behaviour follows what Salesforce
is commonly reported to answer.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import hmac
import io
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tidegate.sandbox.server import LocalServer, Reply, exit_on_config_error, serve_forever

__all__ = [
    "API_VERSION",
    "MAX_COLLECTION",
    "MAX_UPLOAD_BYTES",
    "Field",
    "SObject",
    "SalesforceSandbox",
    "default_objects",
    "main",
    "salesforce_id",
    "serve",
]

API_VERSION = "62.0"
# https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-create.html
MAX_COLLECTION = 200
# https://developer.salesforce.com/docs/platform/api-asynch/guide/upload-job-data.html:
# "CSV data that does not in total exceed 150 MB of base64 encoded content".
MAX_UPLOAD_BYTES = 150 * 1024 * 1024
DEFAULT_AUDIENCE = "https://login.salesforce.com"
_JSON = {"content-type": "application/json;charset=UTF-8"}
_CSV = {"content-type": "text/csv"}

# https://developer.salesforce.com/docs/platform/api-asynch/guide/create-job.html
_DELIMITERS = {"BACKQUOTE": "`", "CARET": "^", "COMMA": ",", "PIPE": "|",
               "SEMICOLON": ";", "TAB": "\t"}
_LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
_OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
_TERMINAL = ("JobComplete", "Failed", "Aborted")
_TYPES = frozenset({"id", "string", "boolean", "double", "currency", "percent", "int",
                    "date", "datetime", "picklist", "reference", "textarea", "email"})
_NUMERIC = frozenset({"double", "currency", "percent", "int"})
_TEXT = frozenset({"string", "textarea", "email", "picklist", "reference", "id"})
_ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


# Schema ------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of an sObject, as ``describe`` reports it."""

    name: str
    type: str
    createable: bool = True
    updateable: bool = True
    nillable: bool = True
    external_id: bool = False
    unique: bool = False
    length: int = 0
    precision: int = 0
    scale: int = 0
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    reference_to: tuple[str, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"field {self.name}: unknown type {self.type!r}")

    @property
    def writable(self) -> bool:
        return self.createable or self.updateable

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label or self.name.removesuffix("__c").replace("_", " "),
            "type": self.type,
            "soapType": _SOAP_TYPES[self.type],
            "length": self.length,
            "precision": self.precision,
            "scale": self.scale,
            "digits": self.precision if self.type == "int" else 0,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "externalId": self.external_id,
            "idLookup": self.external_id or self.type == "id",
            "unique": self.unique,
            "custom": self.name.endswith("__c"),
            "defaultedOnCreate": self.type == "boolean" or self.type == "id",
            "picklistValues": [{"active": True, "defaultValue": False, "label": v,
                                "validFor": None, "value": v} for v in self.picklist],
            "restrictedPicklist": self.restricted,
            "referenceTo": list(self.reference_to),
        }


_SOAP_TYPES = {"id": "tns:ID", "string": "xsd:string", "boolean": "xsd:boolean",
               "double": "xsd:double", "currency": "xsd:double", "percent": "xsd:double",
               "int": "xsd:int", "date": "xsd:date", "datetime": "xsd:dateTime",
               "picklist": "xsd:string", "reference": "tns:ID", "textarea": "xsd:string",
               "email": "xsd:string"}


@dataclass(frozen=True)
class SObject:
    """An sObject type: its name, the 3-character key prefix of its Ids, its fields."""

    name: str
    key_prefix: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        # Field names are case-insensitive everywhere in the API.
        found = self._by_name.get(name)
        return found if found is not None else self._by_name.get(name.lower())

    @cached_property
    def _by_name(self) -> dict[str, Field]:
        return {**{f.name.lower(): f for f in self.fields}, **{f.name: f for f in self.fields}}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.name, "keyPrefix": self.key_prefix,
                "custom": self.name.endswith("__c"), "createable": True, "updateable": True,
                "deletable": True, "queryable": True,
                "fields": [f.describe() for f in self.fields]}


def _system_fields() -> tuple[Field, ...]:
    return (
        Field("LastModifiedDate", "datetime", createable=False, updateable=False,
              nillable=False),
        Field("IsDeleted", "boolean", createable=False, updateable=False, nillable=False),
    )


def default_objects() -> list[SObject]:
    """``Account`` and ``Contact`` with one field of every type the server models."""
    account = SObject("Account", "001", (
        Field("Id", "id", createable=False, updateable=False, nillable=False, length=18),
        Field("Name", "string", nillable=False, length=255),
        Field("Industry", "picklist", length=255, restricted=True, picklist=(
            "Agriculture", "Banking", "Education", "Energy", "Healthcare", "Manufacturing",
            "Media", "Retail", "Technology", "Other")),
        Field("AnnualRevenue", "currency", precision=18, scale=0),
        Field("APS__c", "double", precision=5, scale=2),
        Field("NumberOfEmployees", "int", precision=8),
        Field("Description", "textarea", length=32000),
        Field("Customer_Since__c", "date"),
        Field("Active__c", "boolean", nillable=False),
        Field("External_Id__c", "string", length=255, external_id=True, unique=True),
        *_system_fields(),
    ))
    contact = SObject("Contact", "003", (
        Field("Id", "id", createable=False, updateable=False, nillable=False, length=18),
        Field("FirstName", "string", length=40),
        Field("LastName", "string", nillable=False, length=80),
        Field("Email", "email", length=80),
        Field("AccountId", "reference", length=18, reference_to=("Account",)),
        Field("Birthdate", "date"),
        Field("HasOptedOutOfEmail", "boolean", nillable=False),
        Field("Discount__c", "percent", precision=5, scale=2),
        Field("External_Id__c", "string", length=255, external_id=True, unique=True),
        *_system_fields(),
    ))
    return [account, contact]


def salesforce_id(base15: str) -> str:
    """The 18-character, case-safe form of a 15-character record Id."""
    # The 3-character suffix encodes which of the 15 characters are upper case,
    # five per suffix character, so case-insensitive tools can tell Ids apart.
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, c in enumerate(base15[start:start + 5]) if "A" <= c <= "Z")
        suffix += _SUFFIX[bits]
    return base15 + suffix


def _normal_id(value: str) -> str | None:
    if not _ID_RE.match(value):
        return None
    return salesforce_id(value[:15])


# Records and writes ------------------------------------------------------------


@dataclass(frozen=True)
class _Err:
    code: str
    message: str
    fields: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": list(self.fields)}

    def bulk(self) -> str:
        # sf__Error reads STATUS_CODE:message:fields, e.g.
        # "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --" and
        # "INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--". The " --"
        # terminator is how Salesforce writes it; the page
        # https://developer.salesforce.com/docs/platform/api-asynch/guide/get-job-failed-results.html
        # shows only the leading parts.
        names = f"{','.join(self.fields)} --" if self.fields else "--"
        return f"{self.code}:{self.message}:{names}"


@dataclass
class _Outcome:
    id: str | None = None
    created: bool = False
    errors: list[_Err] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.errors


@dataclass
class _Input:
    """One record to write: coerced values (None sets null) and any error found early."""

    values: dict[str, Any]
    id: str | None = None
    error: _Err | None = None


class _RequestError(Exception):
    """A whole request refused: REST error array ``[{"message","errorCode"}]``."""

    def __init__(self, status: int, code: str, message: str,
                 fields: Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = list(fields) if fields is not None else None

    def reply(self) -> Reply:
        doc: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            doc["fields"] = self.fields
        return self.status, dict(_JSON), json.dumps([doc]).encode()


class _TypeProblem(Exception):
    pass


class _Table:
    """The rows of one sObject; ``deleted`` holds Ids in the recycle bin or purged.

    ``index`` finds live rows by the value of each unique or external id field, so
    matching an upsert or checking uniqueness does not read every row.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.index: dict[str, dict[Any, str]] = {}
        self.unique: frozenset[str] = frozenset()

    def reindex(self, keys: Iterable[str], unique: Iterable[str]) -> None:
        self.unique = frozenset(unique)
        self.index = {k: {} for k in keys}
        for rid, row in self.rows.items():
            if rid not in self.deleted:
                for k, values in self.index.items():
                    if row.get(k) is not None:
                        values.setdefault(row[k], rid)


class _Tx:
    """A write in progress on one sObject; ``commit`` makes it visible at once.

    Rows are replaced, never changed in place, so copying the dicts is enough to
    roll back: that is what ``allOrNone`` needs.
    """

    def __init__(self, table: _Table) -> None:
        self.table = table
        self.rows = dict(table.rows)
        self.deleted = set(table.deleted)
        self.index = {k: dict(v) for k, v in table.index.items()}
        self.unique = table.unique

    def find(self, name: str, value: Any) -> str | None:
        """A live row whose ``name`` is ``value``."""
        values = self.index.get(name)
        if values is not None:
            return values.get(value)
        return next((rid for rid, row in self.rows.items()
                     if rid not in self.deleted and row.get(name) == value), None)

    def put_row(self, rid: str, row: dict[str, Any]) -> None:
        old = self.rows.get(rid) if rid not in self.deleted else None
        for name, values in self.index.items():
            before, after = (old or {}).get(name), row.get(name)
            if old is not None and before == after:
                continue
            if before is not None:
                self._drop(name, before, rid)
            if after is not None:
                values.setdefault(after, rid)
        self.rows[rid] = row

    def delete_row(self, rid: str, hard: bool) -> None:
        old = self.rows.get(rid) if rid not in self.deleted else None
        for name in self.index:
            if old is not None and old.get(name) is not None:
                self._drop(name, old[name], rid)
        self.deleted.add(rid)
        if hard:
            self.rows.pop(rid, None)
        else:
            self.rows[rid] = {**self.rows[rid], "IsDeleted": True, "LastModifiedDate": _now()}

    def _drop(self, name: str, value: Any, rid: str) -> None:
        values = self.index[name]
        if values.get(value) != rid:
            return
        del values[value]
        if name not in self.unique:  # a non-unique external id another row may hold too
            other = next((r for r, row in self.rows.items() if r != rid
                          and r not in self.deleted and row.get(name) == value), None)
            if other is not None:
                values[value] = other

    def commit(self) -> None:
        self.table.rows = self.rows
        self.table.deleted = self.deleted
        self.table.index = self.index


# Bulk jobs ---------------------------------------------------------------------


@dataclass
class _Job:
    id: str
    object: str
    operation: str
    external_id_field: str | None
    delimiter: str
    line_ending: str
    api_version: str
    created: str
    state: str = "Open"
    data: bytes | None = None
    polls: int = 0
    error_message: str | None = None
    header: list[str] = field(default_factory=list)
    successful: list[list[str]] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    processed: int = 0
    failures: int = 0
    modstamp: str = ""

    def info(self, base_path: str) -> dict[str, Any]:
        # JobInfo fields from
        # https://developer.salesforce.com/docs/platform/api-asynch/guide/get-job-info.html
        doc: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.object,
            "createdById": _USER_ID, "createdDate": self.created,
            "systemModstamp": self.modstamp or self.created, "state": self.state,
            "externalIdFieldName": self.external_id_field, "concurrencyMode": "Parallel",
            "contentType": "CSV", "apiVersion": float(self.api_version),
            "jobType": "V2Ingest", "lineEnding": _name_of(_LINE_ENDINGS, self.line_ending),
            "columnDelimiter": _name_of(_DELIMITERS, self.delimiter),
            "numberRecordsProcessed": self.processed, "numberRecordsFailed": self.failures,
            "retries": 0, "totalProcessingTime": 0, "apiActiveProcessingTime": 0,
            "apexProcessingTime": 0,
        }
        if self.state == "Open":
            doc["contentUrl"] = f"{base_path}/jobs/ingest/{self.id}/batches"
        if self.error_message is not None:
            doc["errorMessage"] = self.error_message
        return doc


def _name_of(table: Mapping[str, str], value: str) -> str:
    return next(k for k, v in table.items() if v == value)


_ORG_ID = salesforce_id("00DTG0000000001")
_USER_ID = salesforce_id("005TG0000000001")


def _now() -> str:
    # The API writes datetimes as 2024-05-01T12:00:00.000+0000.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


# The server --------------------------------------------------------------------


class SalesforceSandbox(LocalServer):
    """An in-memory, thread-safe Salesforce org on ``host:port``; a context manager.

    ``client_id``/``client_secret`` are what the client-credentials flow checks;
    the JWT bearer flow checks an RS256 assertion whose ``iss`` is
    ``consumer_key`` (default: ``client_id``) against ``public_key`` (PEM) and
    whose ``aud`` is ``audience``. ``polls_to_complete`` is how many job-info
    polls a closed Bulk job needs before it reaches ``JobComplete``. Its ``url``
    is the login host and the ``instance_url`` at once; ``on_request`` is called
    with (method, REST path after the version) before each REST call is answered.
    """

    name = "salesforce"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str = "tidegate-sandbox-client",
        client_secret: str = "tidegate-sandbox-secret",
        consumer_key: str | None = None,
        public_key: str | bytes | None = None,
        audience: str = DEFAULT_AUDIENCE,
        username: str | None = None,
        objects: Iterable[SObject] | None = None,
        daily_limit: int = 100_000,
        polls_to_complete: int = 2,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        hard_delete_allowed: bool = False,
        page_size: int = 2000,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.consumer_key = consumer_key or client_id
        self.public_key = public_key
        self.audience = audience
        self.username = username
        self.daily_limit = daily_limit
        self.polls_to_complete = polls_to_complete
        self.max_upload_bytes = max_upload_bytes
        self.hard_delete_allowed = hard_delete_allowed
        self.page_size = page_size
        # Counters tests read back.
        self.request_count = 0
        self.api_usage = 0
        self.upload_count = 0
        self.upload_bytes = 0
        self.uploads: list[int] = []  # bytes of each upload, in order
        self.tokens_issued = 0
        self.job_count = 0
        self._seed = seed
        self._lock = threading.RLock()
        self._objects: dict[str, SObject] = {}
        self._tables: dict[str, _Table] = {}
        for sobject in objects if objects is not None else default_objects():
            self.add_object(sobject)
        self._serial = 0
        self._tokens: dict[str, bool] = {}  # token -> still valid
        self._jobs: dict[str, _Job] = {}
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._failures: list[int] = []
        self._throttled = 0
        self._locks: dict[str, int] = {}
        super().__init__(host, port, log)

    @property
    def token_url(self) -> str:
        return f"{self.url}/services/oauth2/token"

    # Setup -----------------------------------------------------------------------

    def add_object(self, sobject: SObject) -> None:
        """Add (or replace the schema of) an sObject type."""
        with self._lock:
            self._objects[sobject.name] = sobject
            self._tables.setdefault(sobject.name, _Table()).reindex(
                [f.name for f in sobject.fields if f.unique or f.external_id],
                [f.name for f in sobject.fields if f.unique])

    def put(self, obj: str, fields: Mapping[str, Any]) -> str:
        """Store a record directly, skipping validation and limits; its new Id."""
        sobject = self._object(obj)
        with self._lock:
            record_id = self._new_id(sobject.key_prefix)
            row = self._blank(sobject)
            row.update(fields)
            row["Id"] = record_id
            tx = _Tx(self._tables[sobject.name])
            tx.put_row(record_id, row)
            tx.commit()
            return record_id

    # Fault knobs ---------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` REST calls with ``status`` (a 5xx), applying nothing."""
        with self._lock:
            self._failures = [status] * n

    def throttle_next(self, n: int) -> None:
        """Answer the next ``n`` REST calls with 403 ``REQUEST_LIMIT_EXCEEDED``."""
        with self._lock:
            self._throttled = n

    def use_api(self, calls: int) -> None:
        """Spend ``calls`` of the daily API allowance, as other integrations would."""
        with self._lock:
            self.api_usage += calls

    def lock_rows(self, keys: Iterable[str], times: int = 1) -> None:
        """Fail the next ``times`` writes of these records (by Id or external ID value)
        with ``UNABLE_TO_LOCK_ROW``, in Collections and in Bulk jobs alike."""
        with self._lock:
            for key in keys:
                self._locks[key] = times

    def expire_tokens(self) -> None:
        """Invalidate every access token issued so far: REST calls answer 401."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, False)

    # Inspection ----------------------------------------------------------------

    def records(self, obj: str) -> dict[str, dict[str, Any]]:
        """The live (not deleted) records of ``obj``: Id → fields."""
        sobject = self._object(obj)
        with self._lock:
            table = self._tables[sobject.name]
            return {k: dict(v) for k, v in table.rows.items() if k not in table.deleted}

    def deleted(self, obj: str) -> set[str]:
        """Ids of ``obj`` records deleted (recycle bin or hard-deleted)."""
        with self._lock:
            return set(self._tables[self._object(obj).name].deleted)

    def recycle_bin(self, obj: str) -> set[str]:
        """Ids of ``obj`` records deleted but not purged (``hardDelete`` purges)."""
        with self._lock:
            table = self._tables[self._object(obj).name]
            return {rid for rid in table.deleted if rid in table.rows}

    def find(self, obj: str, field_name: str, value: Any) -> list[dict[str, Any]]:
        """Live records of ``obj`` whose ``field_name`` equals ``value``."""
        return [r for r in self.records(obj).values() if r.get(field_name) == value]

    def jobs(self) -> list[dict[str, Any]]:
        """The JobInfo of every Bulk job, oldest first, without counting as polls."""
        with self._lock:
            return [j.info(f"/services/data/v{API_VERSION}") for j in self._jobs.values()]

    def job(self, job_id: str) -> dict[str, Any]:
        """The JobInfo of a Bulk job, without counting as a poll."""
        with self._lock:
            return self._jobs[job_id].info(f"/services/data/v{API_VERSION}")

    # Request handling ------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.request_count += 1
        try:
            if path == "/services/oauth2/token":
                if method != "POST":
                    raise _RequestError(405, "METHOD_NOT_ALLOWED", "HTTP Method not allowed")
                return self._token(headers, raw)
            match = re.fullmatch(r"/services/data/v(\d+\.\d)(/.*)?", path)
            if match is None:
                if path.rstrip("/") == "/services/data":
                    return 200, dict(_JSON), json.dumps([{
                        "label": "Sandbox", "url": f"/services/data/v{API_VERSION}",
                        "version": API_VERSION}]).encode()
                raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")
            return self._rest(method, match.group(1), match.group(2) or "/", query,
                              headers, raw)
        except _RequestError as exc:
            return exc.reply()

    def _rest(self, method: str, version: str, path: str, query: dict[str, list[str]],
              headers: dict[str, str], raw: bytes) -> Reply:
        self.observe(method, path)
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            self.say(f"injected failure: HTTP {failure}")
            return failure, dict(_JSON), json.dumps([{
                "message": "Service temporarily unavailable, try again later",
                "errorCode": "SERVER_UNAVAILABLE"}]).encode()
        self._authenticate(headers)
        with self._lock:
            # The 24-hour request allowance: Salesforce answers 403, not 429.
            # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm
            if self._throttled > 0 or self.api_usage >= self.daily_limit:
                self._throttled = max(0, self._throttled - 1)
                limit = {"sforce-limit-info": f"api-usage={self.api_usage}/{self.daily_limit}"}
                return 403, {**_JSON, **limit}, json.dumps([{
                    "message": "TotalRequests Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED"}]).encode()
            self.api_usage += 1
            usage = f"api-usage={self.api_usage}/{self.daily_limit}"
        try:
            status, extra, body = self._route(method, version, path, query, headers, raw)
        except _RequestError as exc:
            status, extra, body = exc.reply()
        # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm
        return status, {**extra, "sforce-limit-info": usage}, body

    def _authenticate(self, headers: dict[str, str]) -> None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            valid = scheme.lower() in ("bearer", "oauth") and self._tokens.get(token.strip())
        if not valid:
            raise _RequestError(401, "INVALID_SESSION_ID", "Session expired or invalid")

    def _route(self, method: str, version: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], raw: bytes) -> Reply:
        base = f"/services/data/v{version}"
        segs = [s for s in path.split("/") if s]
        if segs == ["limits"] and method == "GET":
            with self._lock:
                used = self.api_usage
            return _json_reply(200, {"DailyApiRequests": {
                "Max": self.daily_limit, "Remaining": max(0, self.daily_limit - used)}})
        if segs == ["sobjects"] and method == "GET":
            return _json_reply(200, {"encoding": "UTF-8", "maxBatchSize": MAX_COLLECTION,
                                     "sobjects": [{"name": o.name, "keyPrefix": o.key_prefix}
                                                  for o in self._objects.values()]})
        if len(segs) == 3 and segs[0] == "sobjects" and segs[2] == "describe":
            if method != "GET":
                raise _method_not_allowed()
            sobject = self._objects.get(segs[1])
            if sobject is None:
                raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")
            return _json_reply(200, sobject.describe())
        if segs[:2] == ["composite", "sobjects"]:
            return self._collections(method, segs[2:], query, raw, version)
        if segs[:2] == ["jobs", "ingest"]:
            return self._bulk(method, segs[2:], query, headers, raw, base, version)
        if segs and segs[0] in ("query", "queryAll") and method == "GET":
            if len(segs) == 2:
                return self._query_more(segs[1], base)
            return self._query(query.get("q", [""])[0], base, include_deleted=segs[0] == "queryAll")
        raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")

    # OAuth -----------------------------------------------------------------------

    def _token(self, headers: dict[str, str], raw: bytes) -> Reply:
        # https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_client_credentials_flow.htm
        # https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
            ok_id = hmac.compare_digest(form.get("client_id", ""), self.client_id)
            ok_secret = hmac.compare_digest(form.get("client_secret", ""), self.client_secret)
            if not (ok_id and ok_secret):
                return _oauth_error("invalid_client", "invalid client credentials")
            return self._issue({"token_format": "opaque"})
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            problem = self._check_assertion(form.get("assertion", ""))
            if problem is not None:
                return _oauth_error(*problem)
            return self._issue({"scope": "api"})
        return _oauth_error("unsupported_grant_type", "grant type not supported")

    def _check_assertion(self, assertion: str) -> tuple[str, str] | None:
        # The error texts are the ones Salesforce is commonly seen to answer; the
        # help page documents the checks (signature, iss, aud, exp), not the wording.
        try:
            import jwt  # pyjwt[crypto], only needed for this flow
        except ImportError:
            return "invalid_grant", "this sandbox needs pyjwt[crypto] for the JWT bearer flow"
        if self.public_key is None:
            return "invalid_grant", "no certificate is configured for this connected app"
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "invalid_grant", "invalid assertion"
        if unverified.get("iss") != self.consumer_key:
            return "invalid_client_id", "client identifier invalid"
        try:
            claims = jwt.decode(assertion, self.public_key, algorithms=["RS256"],
                                audience=self.audience, options={"require": ["exp", "aud"]})
        except jwt.ExpiredSignatureError:
            return "invalid_grant", "expired authorization code"
        except jwt.InvalidAudienceError:
            return "invalid_grant", "audience is invalid"
        except jwt.PyJWTError:
            return "invalid_grant", "invalid assertion"
        if self.username is not None and claims.get("sub") != self.username:
            return "invalid_grant", "user hasn't approved this consumer"
        return None

    def _issue(self, extra: dict[str, str]) -> Reply:
        token = f"{_ORG_ID}!{secrets.token_urlsafe(24)}"
        issued = str(int(time.time() * 1000))
        identity = f"{self.url}/id/{_ORG_ID}/{_USER_ID}"
        # signature: base64 HMAC-SHA256 of id + issued_at keyed by the client secret.
        mac = hmac.new(self.client_secret.encode(), (identity + issued).encode(), hashlib.sha256)
        with self._lock:
            self._tokens[token] = True
            self.tokens_issued += 1
        self.say("issued an access token")
        return _json_reply(200, {"access_token": token, "instance_url": self.url,
                                 "id": identity, "token_type": "Bearer", "issued_at": issued,
                                 "signature": base64.b64encode(mac.digest()).decode(),
                                 **extra})

    # sObject Collections ---------------------------------------------------------

    def _collections(self, method: str, rest: list[str], query: dict[str, list[str]],
                     raw: bytes, version: str) -> Reply:
        # https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-create.html
        # https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-update.html
        # https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html
        # https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-delete.html
        if method == "DELETE" and not rest:
            ids = [i for i in ",".join(query.get("ids", [])).split(",") if i]
            all_or_none = query.get("allOrNone", ["false"])[0].lower() == "true"
            _check_size(len(ids))
            by_object: list[tuple[str, _Input]] = []
            for record_id in ids:
                sobject = self._object_of_id(record_id)
                by_object.append((sobject.name if sobject else "", _Input({}, id=record_id)))
            return self._collection_reply(self._write_mixed("delete", by_object, all_or_none))
        if method not in ("POST", "PATCH"):
            raise _method_not_allowed()
        if (method == "POST" and rest) or (method == "PATCH" and len(rest) not in (0, 2)):
            raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        if rest and float(version) < 46.0:
            raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        body = _json_body(raw)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise _RequestError(400, "JSON_PARSER_ERROR",
                                "The request body must be an object with a records list")
        all_or_none = bool(body.get("allOrNone", False))
        _check_size(len(records))
        if rest:
            sobject = self._object(rest[0], status=404)
            ext = sobject.field(rest[1])
            if ext is None or not ext.external_id:
                raise _RequestError(400, "INVALID_FIELD",
                                    f"Field name provided, {rest[1]} is not an External ID or "
                                    f"indexed field for {sobject.name}")
            inputs = []
            for record in records:
                kind = _record_type(record)
                if kind != sobject.name:
                    raise _RequestError(400, "INVALID_TYPE",
                                        f"Only {sobject.name} records can be upserted here")
                inputs.append(self._json_input(sobject, record))
            _flag_duplicates(inputs, ext.name)
            outcomes = self._write(sobject, "upsert", inputs, all_or_none, ext.name)
            return self._collection_reply(outcomes, upsert=True)
        operation = "insert" if method == "POST" else "update"
        mixed = []
        for record in records:
            sobject = self._object(_record_type(record), status=400, code="INVALID_TYPE")
            mixed.append((sobject.name, self._json_input(sobject, record)))
        return self._collection_reply(self._write_mixed(operation, mixed, all_or_none))

    def _json_input(self, sobject: SObject, record: dict[str, Any]) -> _Input:
        values: dict[str, Any] = {}
        record_id: str | None = None
        for key, value in record.items():
            if key == "attributes":
                continue
            f = sobject.field(key)
            if f is None:
                # An unknown field cannot even be deserialised: the whole request fails.
                raise _RequestError(400, "INVALID_FIELD",
                                    f"No such column '{key}' on sobject of type {sobject.name}")
            if f.type == "id":
                record_id = value if isinstance(value, str) else None
                if record_id is None:
                    raise _RequestError(400, "JSON_PARSER_ERROR",
                                        f"Cannot deserialize instance of id from {value!r}")
                continue
            try:
                values[f.name] = _coerce(f, value, from_csv=False)
            except _TypeProblem:
                # JSON the API cannot turn into the field's type fails deserialisation
                # of the whole body (400), as for any malformed request; the Collections
                # pages document 400 for requests that are "not well formed".
                raise _RequestError(
                    400, "JSON_PARSER_ERROR",
                    f"Cannot deserialize instance of {f.type} from {json.dumps(value)} value "
                    f"or request may be missing a required field") from None
        return _Input(values, id=record_id)

    def _collection_reply(self, outcomes: list[_Outcome], upsert: bool = False) -> Reply:
        results = []
        for o in outcomes:
            # The documented examples omit "id" on failed records.
            doc: dict[str, Any] = {"id": o.id} if o.success else {}
            doc["success"] = o.success
            doc["errors"] = [e.json() for e in o.errors]
            if upsert:
                doc["created"] = o.created
            results.append(doc)
        return _json_reply(200, results)

    def _write_mixed(self, operation: str, items: list[tuple[str, _Input]],
                     all_or_none: bool) -> list[_Outcome]:
        """Write records of several types in request order, chunk by chunk of one type."""
        with self._lock:
            txs: dict[str, _Tx] = {}
            outcomes: list[_Outcome] = []
            for name, item in items:
                if not name:
                    outcomes.append(_Outcome(errors=[_Err(
                        "MALFORMED_ID" if _normal_id(item.id or "") is None
                        else "INVALID_CROSS_REFERENCE_KEY",
                        f"malformed id {item.id}" if _normal_id(item.id or "") is None
                        else "invalid cross reference id")]))
                    continue
                tx = txs.get(name) or txs.setdefault(name, _Tx(self._tables[name]))
                outcomes.append(self._write_one(self._objects[name], tx, operation, item, None))
            self._finish(txs.values(), outcomes, all_or_none)
            return outcomes

    def _write(self, sobject: SObject, operation: str, inputs: list[_Input],
               all_or_none: bool, ext_field: str | None) -> list[_Outcome]:
        with self._lock:
            tx = _Tx(self._tables[sobject.name])
            outcomes: list[_Outcome] = []
            for item in inputs:
                outcomes.append(self._write_one(sobject, tx, operation, item, ext_field))
            self._finish([tx], outcomes, all_or_none)
            return outcomes

    def _finish(self, txs: Iterable[_Tx], outcomes: list[_Outcome], all_or_none: bool) -> None:
        if all_or_none and any(not o.success for o in outcomes):
            # Nothing is saved; records that had no error of their own say so.
            for o in outcomes:
                o.created = False
                if o.success:
                    o.errors.append(_Err(
                        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "Record rolled back because not all records were valid and the "
                        "request was using AllOrNone header"))
                o.id = None
            return
        for tx in txs:
            tx.commit()

    def _write_one(self, sobject: SObject, tx: _Tx, operation: str, item: _Input,
                   ext_field: str | None) -> _Outcome:
        if item.error is not None:
            return _Outcome(errors=[item.error])
        if operation in ("delete", "hardDelete"):
            return self._delete_one(sobject, tx, item, hard=operation == "hardDelete")
        if operation == "upsert":
            assert ext_field is not None
            key = item.values.get(ext_field)
            if key is None or key == "":
                return _Outcome(errors=[_Err("MISSING_ARGUMENT", f"{ext_field} not specified",
                                             (ext_field,))])
            match = tx.find(ext_field, key)
            if match is not None:
                return self._update_one(sobject, tx, replace(item, id=match),
                                        keep=ext_field)
            outcome = self._insert_one(sobject, tx, item)
            outcome.created = outcome.success
            return outcome
        if operation == "insert":
            return self._insert_one(sobject, tx, item)
        return self._update_one(sobject, tx, item)

    def _insert_one(self, sobject: SObject, tx: _Tx, item: _Input) -> _Outcome:
        if item.id:
            return _Outcome(errors=[_Err("INVALID_FIELD_FOR_INSERT_UPDATE",
                                         "cannot specify Id in an insert call", ("Id",))])
        error = (self._read_only(sobject, item.values, creating=True)
                 or self._locked(sobject, None, item.values)
                 or self._invalid(sobject, tx, item.values, None))
        if error is None:
            missing = [f.name for f in sobject.fields
                       if f.createable and not f.nillable and f.type != "boolean"
                       and item.values.get(f.name) in (None, "")]
            if missing:
                error = _Err("REQUIRED_FIELD_MISSING",
                             f"Required fields are missing: [{', '.join(missing)}]",
                             tuple(missing))
        if error is not None:
            return _Outcome(errors=[error])
        record_id = self._new_id(sobject.key_prefix)
        row = self._blank(sobject)
        row.update(item.values)
        row["Id"] = record_id
        tx.put_row(record_id, row)
        return _Outcome(id=record_id, created=True)

    def _update_one(self, sobject: SObject, tx: _Tx, item: _Input,
                    keep: str | None = None) -> _Outcome:
        if not item.id:
            return _Outcome(errors=[_Err("MISSING_ARGUMENT",
                                         "Id not specified in an update call", ("Id",))])
        record_id, error = self._existing(sobject, tx, item.id)
        values = {k: v for k, v in item.values.items() if k != keep}
        if error is None:
            assert record_id is not None
            error = (self._read_only(sobject, values, creating=False)
                     or self._locked(sobject, record_id, item.values)
                     or self._invalid(sobject, tx, values, record_id))
        if error is None:
            cleared = [f.name for f in sobject.fields
                       if not f.nillable and f.name in values and values[f.name] is None]
            if cleared:
                error = _Err("REQUIRED_FIELD_MISSING",
                             f"Required fields are missing: [{', '.join(cleared)}]",
                             tuple(cleared))
        if error is not None:
            return _Outcome(errors=[error])
        assert record_id is not None
        tx.put_row(record_id, {**tx.rows[record_id], **values, "LastModifiedDate": _now()})
        return _Outcome(id=record_id, created=False)

    def _delete_one(self, sobject: SObject, tx: _Tx, item: _Input, hard: bool) -> _Outcome:
        record_id, error = self._existing(sobject, tx, item.id or "")
        if error is None:
            assert record_id is not None
            error = self._locked(sobject, record_id, {})
        if error is not None:
            return _Outcome(errors=[error])
        assert record_id is not None
        tx.delete_row(record_id, hard)
        return _Outcome(id=record_id)

    def _existing(self, sobject: SObject, tx: _Tx,
                  raw_id: str) -> tuple[str | None, _Err | None]:
        record_id = _normal_id(raw_id)
        if record_id is None or not record_id.startswith(sobject.key_prefix):
            return None, _Err("MALFORMED_ID", f"{sobject.name} ID: id value of incorrect type: "
                                              f"{raw_id}", ("Id",))
        # ENTITY_IS_DELETED for a record in the recycle bin (or purged);
        # INVALID_CROSS_REFERENCE_KEY for an Id that never existed. The status codes
        # are listed at
        # https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_concepts_core_data_objects.htm
        if record_id in tx.deleted:
            return None, _Err("ENTITY_IS_DELETED", "entity is deleted")
        if record_id not in tx.rows:
            return None, _Err("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        return record_id, None

    def _read_only(self, sobject: SObject, values: Mapping[str, Any],
                   creating: bool) -> _Err | None:
        names = [n for n in values
                 if not ((f := sobject.field(n)) and (f.createable if creating else f.updateable))]
        if not names:
            return None
        return _Err("INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {', '.join(names)}. Please check the "
                    "security settings of this field and verify that it is read/write for "
                    "your profile or permission set.", tuple(names))

    def _locked(self, sobject: SObject, record_id: str | None,
                values: Mapping[str, Any]) -> _Err | None:
        row = self._tables[sobject.name].rows.get(record_id or "", {})
        keys = {str(v) for f in sobject.fields if f.external_id
                for v in (values.get(f.name), row.get(f.name)) if v}
        for key, left in self._locks.items():
            hit = key in keys or (record_id is not None and _normal_id(key) == record_id)
            if hit and left > 0:
                self._locks[key] = left - 1
                return _Err("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this "
                                                  f"record or 1 records: {record_id or key}")
        return None

    def _invalid(self, sobject: SObject, tx: _Tx, values: Mapping[str, Any],
                 record_id: str | None) -> _Err | None:
        for name, value in values.items():
            f = sobject.field(name)
            if f is None or value is None:
                continue
            error = self._check_value(f, value)
            if error is not None:
                return error
            if f.unique:
                rid = tx.find(f.name, value)
                if rid is not None and rid != record_id:
                    return _Err("DUPLICATE_VALUE", f"duplicate value found: {f.name} "
                                                   f"duplicates value on record with id: {rid}",
                                (f.name,))
        return None

    def _check_value(self, f: Field, value: Any) -> _Err | None:
        if f.type in ("string", "textarea", "email", "picklist") and f.length \
                and len(value) > f.length:
            return _Err("STRING_TOO_LONG", f"{f.name}: data value too large: {value} "
                                           f"(max length={f.length})", (f.name,))
        if f.type == "email" and not _EMAIL_RE.match(value):
            return _Err("INVALID_EMAIL_ADDRESS", f"{f.name}: invalid email address: {value}",
                        (f.name,))
        if f.type == "picklist" and f.restricted and value not in f.picklist:
            return _Err("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        f"{f.name}: bad value for restricted picklist field: {value}", (f.name,))
        if f.type in _NUMERIC and f.precision:
            # precision counts all digits, scale those after the point: a
            # number(5,2) field holds at most 3 digits before it.
            whole = abs(int(Decimal(str(value))))
            if len(str(whole)) > f.precision - f.scale and whole != 0:
                return _Err("NUMBER_OUTSIDE_VALID_RANGE",
                            f"{f.name}: value outside of valid range on numeric field: {value}",
                            (f.name,))
        if f.type == "reference":
            target = _normal_id(value)
            kinds = [self._objects[t] for t in f.reference_to if t in self._objects]
            owner = next((o for o in kinds if target and target.startswith(o.key_prefix)), None)
            if target is None or owner is None:
                return _Err("MALFORMED_ID", f"{f.name}: id value of incorrect type: {value}",
                            (f.name,))
            table = self._tables[owner.name]
            if target not in table.rows or target in table.deleted:
                return _Err("INVALID_CROSS_REFERENCE_KEY",
                            "invalid cross reference id", (f.name,))
        return None

    # Bulk API 2.0 ingest -----------------------------------------------------------

    def _bulk(self, method: str, rest: list[str], query: dict[str, list[str]],
              headers: dict[str, str], raw: bytes, base: str, version: str) -> Reply:
        if float(version) < 41.0:
            raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        if not rest:
            if method == "POST":
                return self._create_job(raw, base, version)
            if method == "GET":
                # https://developer.salesforce.com/docs/platform/api-asynch/guide/get-all-jobs.html
                with self._lock:
                    jobs = [j.info(base) for j in self._jobs.values()]
                return _json_reply(200, {"done": True, "records": jobs, "nextRecordsUrl": None})
            raise _method_not_allowed()
        with self._lock:
            job = self._jobs.get(rest[0])
        if job is None:
            raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        if len(rest) == 1:
            if method == "GET":
                return _json_reply(200, self._poll(job, base))
            if method == "PATCH":
                return self._change_state(job, raw, base)
            if method == "DELETE":
                return self._delete_job(job)
            raise _method_not_allowed()
        if len(rest) == 2 and rest[1] == "batches":
            if method != "PUT":
                raise _method_not_allowed()
            return self._upload(job, headers, raw)
        if len(rest) == 2 and method == "GET":
            kind = {"successfulresults": "successful", "failedresults": "failed",
                    "unprocessedrecords": "unprocessed"}.get(rest[1].lower())
            if kind is not None:
                return self._results(job, kind)
        raise _RequestError(404, "NOT_FOUND", "The requested resource does not exist")

    def _create_job(self, raw: bytes, base: str, version: str) -> Reply:
        # https://developer.salesforce.com/docs/platform/api-asynch/guide/create-job.html
        body = _json_body(raw)
        if not isinstance(body, dict):
            raise _RequestError(400, "JSON_PARSER_ERROR", "The request body must be an object")
        operation = body.get("operation")
        if operation not in _OPERATIONS:
            raise _RequestError(400, "INVALIDJOB", f"Invalid operation: {operation}")
        obj = body.get("object")
        sobject = self._objects.get(obj) if isinstance(obj, str) else None
        if sobject is None:
            raise _RequestError(400, "INVALIDJOB", f"Unable to find object: {obj}")
        if body.get("contentType", "CSV") != "CSV":
            raise _RequestError(400, "INVALIDJOB", "Only CSV is supported for ingest jobs")
        delimiter = _DELIMITERS.get(body.get("columnDelimiter", "COMMA"))
        ending = _LINE_ENDINGS.get(body.get("lineEnding", "LF"))
        if delimiter is None or ending is None:
            raise _RequestError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
        ext_name = body.get("externalIdFieldName")
        ext: Field | None = None
        if operation == "upsert":
            ext = sobject.field(ext_name) if isinstance(ext_name, str) else None
            if ext is None or not ext.external_id:
                raise _RequestError(400, "INVALIDJOB",
                                    f"External ID was blank or invalid for {sobject.name}. An "
                                    "External ID must be specified for upsert.")
        if operation == "hardDelete" and not self.hard_delete_allowed:
            # hardDelete needs the "Bulk API Hard Delete" user permission, off by default.
            raise _RequestError(400, "FEATURENOTENABLED",
                                "hardDelete operation requires the Bulk API Hard Delete "
                                "permission")
        with self._lock:
            self.job_count += 1
            job = _Job(id=salesforce_id(f"750TG{self.job_count:010d}"), object=sobject.name,
                       operation=operation, external_id_field=ext.name if ext else None,
                       delimiter=delimiter, line_ending=ending, api_version=version,
                       created=_now())
            self._jobs[job.id] = job
            info = job.info(base)
        self.say(f"bulk job {job.id}: {operation} {sobject.name} created")
        return _json_reply(200, info)

    def _upload(self, job: _Job, headers: dict[str, str], raw: bytes) -> Reply:
        # https://developer.salesforce.com/docs/platform/api-asynch/guide/upload-job-data.html
        if not headers.get("content-type", "").lower().startswith("text/csv"):
            raise _RequestError(400, "INVALIDCONTENTTYPE", "Content-Type must be text/csv")
        with self._lock:
            if job.state != "Open":
                raise _RequestError(409, "INVALIDJOBSTATE",
                                    f"Job is not in Open state: {job.state}")
            if job.data is not None:
                # One PUT per job; the wording is what Salesforce answers, the docs
                # only say to upload the job's data in one request.
                raise _RequestError(
                    400, "BULK_API_ERROR",
                    f"Found multiple contents for job: <{job.id}>, please 'Close' / 'Abort' / "
                    "'Delete' the current Job then create a new Job and make sure you only do "
                    "'PUT' once on a given Job.")
            # The limit applies to the base64 form Salesforce stores (4/3 of the raw bytes).
            encoded = (len(raw) + 2) // 3 * 4
            if encoded > self.max_upload_bytes:
                raise _RequestError(413, "REQUEST_ENTITY_TOO_LARGE",
                                    f"The upload is {encoded} bytes base64-encoded; at most "
                                    f"{self.max_upload_bytes} are accepted")
            job.data = raw
            self.upload_count += 1
            self.upload_bytes += len(raw)
            self.uploads.append(len(raw))
        self.say(f"bulk job {job.id}: {len(raw)} bytes uploaded")
        return 201, {}, b""

    def _change_state(self, job: _Job, raw: bytes, base: str) -> Reply:
        # https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/close_job.htm
        body = _json_body(raw)
        state = body.get("state") if isinstance(body, dict) else None
        with self._lock:
            if state == "UploadComplete":
                if job.state != "Open":
                    raise _RequestError(409, "INVALIDJOBSTATE",
                                        f"Job is not in Open state: {job.state}")
                job.state, job.modstamp = "UploadComplete", _now()
            elif state == "Aborted":
                if job.state in _TERMINAL:
                    raise _RequestError(409, "INVALIDJOBSTATE",
                                        f"Job is already in a final state: {job.state}")
                job.state, job.modstamp = "Aborted", _now()
                job.unprocessed = self._rows(job)[1] if job.data else []
            else:
                raise _RequestError(400, "INVALIDJOBSTATE", f"Invalid state: {state}")
            return _json_reply(200, job.info(base))

    def _delete_job(self, job: _Job) -> Reply:
        with self._lock:
            if job.state in ("Open", "InProgress"):
                raise _RequestError(409, "INVALIDJOBSTATE",
                                    f"Job cannot be deleted in state {job.state}")
            self._jobs.pop(job.id, None)
        return 204, {}, b""

    def _poll(self, job: _Job, base: str) -> dict[str, Any]:
        # Job states: https://developer.salesforce.com/docs/platform/api-asynch/guide/bulk-api-2-job-states.md
        # A closed job moves on only as it is polled, so a client that does not
        # poll never sees JobComplete.
        with self._lock:
            if job.state in ("UploadComplete", "InProgress"):
                job.polls += 1
                if job.polls >= self.polls_to_complete:
                    self._process(job)
                else:
                    job.state, job.modstamp = "InProgress", _now()
            return job.info(base)

    def _rows(self, job: _Job) -> tuple[list[str], list[list[str]]]:
        text = (job.data or b"").decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=job.delimiter))
        rows = [r for r in rows if r != []]
        return (rows[0], rows[1:]) if rows else ([], [])

    def _process(self, job: _Job) -> None:
        job.modstamp = _now()
        header, rows = self._rows(job)
        job.header = header
        problem = self._job_problem(job, header)
        if problem is not None:
            # A file Salesforce cannot read fails the whole job; its rows stay unprocessed.
            job.state, job.error_message, job.unprocessed = "Failed", problem, rows
            return
        sobject = self._objects[job.object]
        columns = [sobject.field(h) for h in header]
        inputs = [self._csv_input(job, columns, row) for row in rows]
        outcomes = self._write(sobject, job.operation, inputs, False, job.external_id_field)
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome.success:
                created = "true" if outcome.created else "false"
                job.successful.append([outcome.id or "", created, *row])
            else:
                known = _input_id(columns, row) or ""
                job.failed.append([known, outcome.errors[0].bulk(), *row])
        # Result files come back in no particular order; the docs say to
        # correlate by Id or external ID, so this shuffles them on purpose.
        shuffle = random.Random(f"{self._seed}:{job.id}")
        shuffle.shuffle(job.successful)
        shuffle.shuffle(job.failed)
        job.processed, job.failures = len(rows), len(job.failed)
        job.state = "JobComplete"
        self.say(f"bulk job {job.id}: {len(job.successful)} succeeded, {len(job.failed)} failed")

    def _job_problem(self, job: _Job, header: list[str]) -> str | None:
        raw = job.data or b""
        if job.line_ending == "\n" and b"\r\n" in raw:
            return ("ClientInputError : LineEnding is invalid on user data. Current "
                    "LineEnding setting is LF")
        if job.line_ending == "\r\n" and raw.count(b"\n") != raw.count(b"\r\n"):
            return ("ClientInputError : LineEnding is invalid on user data. Current "
                    "LineEnding setting is CRLF")
        sobject = self._objects[job.object]
        for name in header:
            if sobject.field(name) is None:
                return f"InvalidBatch : Field name not found : {name}"
        lowered = [h.lower() for h in header]
        if job.operation in ("update", "delete", "hardDelete") and "id" not in lowered:
            return "InvalidBatch : Field name not found : Id"
        if job.operation in ("delete", "hardDelete") and len(header) != 1:
            return "InvalidBatch : Delete only supports the Id column"
        ext = job.external_id_field
        if ext is not None and ext.lower() not in lowered:
            return f"InvalidBatch : Field name not found : {ext}"
        return None

    def _csv_input(self, job: _Job, columns: list[Field | None], row: list[str]) -> _Input:
        if len(row) != len(columns):
            return _Input({}, error=_Err("INVALID_FIELD", "Incorrect number of columns"))
        values: dict[str, Any] = {}
        record_id: str | None = None
        for f, cell in zip(columns, row, strict=True):
            assert f is not None
            if f.type == "id":
                record_id = cell or None
                continue
            # In Bulk CSV an empty cell leaves the field as it is; #N/A sets null.
            # https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/datafiles_prepare_csv.htm
            if cell == "":
                continue
            if cell == "#N/A":
                values[f.name] = None
                continue
            try:
                values[f.name] = _coerce(f, cell, from_csv=True)
            except _TypeProblem:
                return _Input({}, error=_Err("INVALID_TYPE_ON_FIELD_IN_RECORD",
                                             f"{f.name}: value not of required type: {cell}",
                                             (f.name,)))
        return _Input(values, id=record_id)

    def _results(self, job: _Job, kind: str) -> Reply:
        # https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/get_job_successful_results.htm
        # https://developer.salesforce.com/docs/platform/api-asynch/guide/get-job-failed-results.html
        # https://developer.salesforce.com/docs/platform/api-asynch/guide/get-job-unprocessed-results.html
        with self._lock:
            if kind != "unprocessed" and job.state not in _TERMINAL:
                raise _RequestError(409, "INVALIDJOBSTATE",
                                    f"Job is not in a final state: {job.state}")
            header = job.header or self._rows(job)[0]
            if kind == "successful":
                head, rows = ["sf__Id", "sf__Created", *header], job.successful
            elif kind == "failed":
                head, rows = ["sf__Id", "sf__Error", *header], job.failed
            else:
                head, rows = header, job.unprocessed
            out = io.StringIO(newline="")
            writer = csv.writer(out, delimiter=job.delimiter, lineterminator=job.line_ending,
                                quoting=csv.QUOTE_ALL)
            if head:
                writer.writerow(head)
            writer.writerows(rows)
        return 200, dict(_CSV), out.getvalue().encode()

    # Query -----------------------------------------------------------------------

    def _query(self, soql: str, base: str, include_deleted: bool = False) -> Reply:
        # https://developer.salesforce.com/docs/platform/api-rest/guide/dome-query.md
        # Only the subset a sync needs: SELECT fields FROM Object
        # [WHERE Field = literal | WHERE Field IN (literals)] [LIMIT n].
        parsed = _parse_soql(soql)
        if parsed is None:
            raise _RequestError(400, "MALFORMED_QUERY", f"unexpected token in query: {soql}")
        names, obj, where, limit = parsed
        sobject = self._objects.get(obj) or next(
            (o for o in self._objects.values() if o.name.lower() == obj.lower()), None)
        if sobject is None:
            raise _RequestError(400, "INVALID_TYPE", f"sObject type '{obj}' is not supported.")
        fields = []
        for name in names:
            f = sobject.field(name)
            if f is None:
                raise _RequestError(400, "INVALID_FIELD",
                                    f"No such column '{name}' on entity '{sobject.name}'.")
            fields.append(f)
        column: Field | None = None
        wanted: set[Any] = set()
        if where is not None:
            column = sobject.field(where[0])
            if column is None:
                raise _RequestError(400, "INVALID_FIELD",
                                    f"No such column '{where[0]}' on entity '{sobject.name}'.")
            wanted = {_comparable(column, v) for v in where[1]}
        with self._lock:
            table = self._tables[sobject.name]
            rows = [r for rid, r in table.rows.items()
                    if (include_deleted or rid not in table.deleted)
                    and (column is None or _comparable(column, r.get(column.name)) in wanted)]
        if limit is not None:
            rows = rows[:limit]
        records = [{"attributes": {"type": sobject.name,
                                   "url": f"{base}/sobjects/{sobject.name}/{r['Id']}"},
                    **{f.name: r.get(f.name) for f in fields}} for r in rows]
        return self._page(records, base, locator=None, offset=0)

    def _page(self, records: list[dict[str, Any]], base: str, locator: str | None,
              offset: int) -> Reply:
        # At most page_size records a page; the rest through nextRecordsUrl.
        page = records[offset:offset + self.page_size]
        doc: dict[str, Any] = {"totalSize": len(records), "done": True, "records": page}
        if offset + self.page_size < len(records):
            if locator is None:
                with self._lock:
                    locator = salesforce_id(f"01gTG{len(self._cursors) + 1:010d}")
                    self._cursors[locator] = records
            doc["done"] = False
            doc["nextRecordsUrl"] = f"{base}/query/{locator}-{offset + self.page_size}"
        return _json_reply(200, doc)

    def _query_more(self, cursor: str, base: str) -> Reply:
        locator, _, offset = cursor.rpartition("-")
        with self._lock:
            records = self._cursors.get(locator)
        if records is None or not offset.isdigit():
            raise _RequestError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(records, base, locator, int(offset))

    # Plumbing --------------------------------------------------------------------

    def _object(self, name: str, status: int = 404, code: str = "NOT_FOUND") -> SObject:
        sobject = self._objects.get(name)
        if sobject is None:
            message = ("The requested resource does not exist" if status == 404
                       else f"sObject type '{name}' is not supported.")
            raise _RequestError(status, code, message)
        return sobject

    def _object_of_id(self, raw_id: str) -> SObject | None:
        record_id = _normal_id(raw_id)
        if record_id is None:
            return None
        return next((o for o in self._objects.values()
                     if record_id.startswith(o.key_prefix)), None)

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._serial += 1
            return salesforce_id(f"{prefix}TG{self._serial:010d}")

    def _blank(self, sobject: SObject) -> dict[str, Any]:
        row: dict[str, Any] = {f.name: None for f in sobject.fields}
        for f in sobject.fields:
            if f.type == "boolean":
                row[f.name] = False
        row["LastModifiedDate"] = _now()
        return row


# Helpers -------------------------------------------------------------------------


def _json_reply(status: int, doc: Any) -> Reply:
    return status, dict(_JSON), json.dumps(doc).encode()


def _oauth_error(error: str, description: str) -> Reply:
    # OAuth errors are an object, not the REST error array, and come with 400.
    return _json_reply(400, {"error": error, "error_description": description})


def _method_not_allowed() -> _RequestError:
    return _RequestError(405, "METHOD_NOT_ALLOWED", "HTTP Method not allowed")


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise _RequestError(400, "JSON_PARSER_ERROR", "The request body is not JSON") from None


def _check_size(n: int) -> None:
    if n > MAX_COLLECTION:
        # The pages cap Collections at 200 records; the code and message are what
        # Salesforce answers for more.
        raise _RequestError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit "
                                                      f"more than {MAX_COLLECTION} records "
                                                      "into this call")


def _record_type(record: dict[str, Any]) -> str:
    attributes = record.get("attributes")
    kind = attributes.get("type") if isinstance(attributes, dict) else None
    if not isinstance(kind, str) or not kind:
        raise _RequestError(400, "INVALID_TYPE", "Must send a concrete entity type.")
    return kind


def _flag_duplicates(inputs: list[_Input], ext_field: str) -> None:
    # Two records with one external ID in one upsert call would race for the
    # same row; Salesforce refuses each of them instead of picking one.
    counts: dict[Any, int] = {}
    for item in inputs:
        key = item.values.get(ext_field)
        if key not in (None, ""):
            counts[key] = counts.get(key, 0) + 1
    for item in inputs:
        key = item.values.get(ext_field)
        if item.error is None and key not in (None, "") and counts[key] > 1:
            item.error = _Err("DUPLICATE_EXTERNAL_ID",
                              f"Duplicate external id specified: {key}", (ext_field,))


def _input_id(columns: list[Field | None], row: list[str]) -> str | None:
    for f, cell in zip(columns, row, strict=False):
        if f is not None and f.type == "id" and cell:
            return cell
    return None


def _coerce(f: Field, value: Any, *, from_csv: bool) -> Any:
    """``value`` as the field's type; _TypeProblem when it cannot be one."""
    if value is None:
        return None
    kind = f.type
    if kind in _TEXT:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _TypeProblem
        return str(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0") and (
                from_csv or value.lower() in ("true", "false")):
            return value.lower() in ("true", "1")
        raise _TypeProblem
    if kind in _NUMERIC:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _TypeProblem
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise _TypeProblem from None
        if not number.is_finite():
            raise _TypeProblem
        if kind == "int":
            if number != number.to_integral_value():
                raise _TypeProblem
            return int(number)
        # Salesforce rounds to the field's scale rather than refusing extra decimals.
        return float(round(number, f.scale)) if f.precision else float(number)
    if kind == "date":
        if not isinstance(value, str):
            raise _TypeProblem
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise _TypeProblem from None
    if kind == "datetime":
        if not isinstance(value, str):
            raise _TypeProblem
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _TypeProblem from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    raise _TypeProblem


def _comparable(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.type in ("id", "reference") and isinstance(value, str):
        return _normal_id(value) or value
    if isinstance(value, str) and f.type in _TEXT:
        return value.lower()  # SOQL = and IN on text are case-insensitive
    if f.type in _NUMERIC:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return value
    return value


_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+(?P<obj>\w+)"
    r"(?:\s+WHERE\s+(?P<col>\w+)\s*(?:(?P<eq>=)\s*(?P<one>'(?:[^'\\]|\\.)*'|[\w.+-]+)"
    r"|\s+IN\s*\((?P<many>[^)]*)\)))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_LITERAL = re.compile(r"\s*('(?:[^'\\]|\\.)*'|[\w.+-]+)\s*(?:,|$)")


def _parse_soql(soql: str) -> tuple[list[str], str, tuple[str, list[Any]] | None,
                                    int | None] | None:
    match = _SOQL.match(soql)
    if match is None:
        return None
    names = [n.strip() for n in match.group("fields").split(",")]
    if not all(re.fullmatch(r"\w+", n) for n in names):
        return None
    where: tuple[str, list[Any]] | None = None
    if match.group("col"):
        if match.group("eq"):
            literals = [match.group("one")]
        else:
            text = match.group("many")
            literals, pos = [], 0
            while pos < len(text):
                item = _LITERAL.match(text, pos)
                if item is None or item.end() == pos:
                    return None
                literals.append(item.group(1))
                pos = item.end()
            if not literals:
                return None
        values = [_literal(t) for t in literals]
        if any(v is _BAD for v in values):
            return None
        where = (match.group("col"), values)
    limit = int(match.group("limit")) if match.group("limit") else None
    return names, match.group("obj"), where, limit


_BAD = object()


def _literal(token: str) -> Any:
    if token.startswith("'"):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    lowered = token.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return Decimal(token)
    except InvalidOperation:
        return _BAD


def serve(port: int, client_id: str = "tidegate-sandbox-client",
          client_secret: str = "tidegate-sandbox-secret", *,
          consumer_key: str | None = None, public_key: str | None = None,
          daily_limit: int = 100_000, polls_to_complete: int = 2,
          hard_delete_allowed: bool = False) -> None:
    """Run a sandbox org on 127.0.0.1 in the foreground, printing one line per event."""
    def make() -> SalesforceSandbox:
        return SalesforceSandbox(
            port=port, client_id=client_id, client_secret=client_secret,
            consumer_key=consumer_key, public_key=public_key, daily_limit=daily_limit,
            polls_to_complete=polls_to_complete, hard_delete_allowed=hard_delete_allowed,
            log=lambda line: print(line, flush=True))

    def banner(sandbox: SalesforceSandbox) -> str:
        return (f"salesforce sandbox listening on {sandbox.url}\n"
                f"  token endpoint: {sandbox.token_url}\n"
                f"  client_id:      {client_id}\n"
                f"  client_secret:  {client_secret}\n"
                f"  api version:    v{API_VERSION}")

    serve_forever(make, port, banner)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tidegate.sandbox.salesforce",
                                     description="Run a local Salesforce sandbox org.")
    parser.add_argument("--port", type=int, default=8788)
    parser.add_argument("--client-id", default="tidegate-sandbox-client")
    parser.add_argument("--client-secret", default="tidegate-sandbox-secret")
    parser.add_argument("--consumer-key", default=None,
                        help="the JWT bearer flow's iss (default: the client id)")
    parser.add_argument("--public-key-file", default=None,
                        help="PEM public key that verifies JWT bearer assertions")
    parser.add_argument("--daily-limit", type=int, default=100_000)
    parser.add_argument("--polls", type=int, default=2,
                        help="job-info polls a closed Bulk job needs to complete")
    parser.add_argument("--hard-delete-allowed", action="store_true")
    args = parser.parse_args(argv)
    public_key = None
    if args.public_key_file:
        with open(args.public_key_file, encoding="utf-8") as handle:
            public_key = handle.read()
    exit_on_config_error(lambda: serve(
        args.port, args.client_id, args.client_secret, consumer_key=args.consumer_key,
        public_key=public_key, daily_limit=args.daily_limit, polls_to_complete=args.polls,
        hard_delete_allowed=args.hard_delete_allowed))


if __name__ == "__main__":
    main()
