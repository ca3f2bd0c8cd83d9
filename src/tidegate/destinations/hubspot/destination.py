"""``type: hubspot``: a sync's batches written to CRM v3 objects through the batch endpoints.

Before the first batch the object type's properties are read: a mapped field
the object lacks or cannot write, or a match key that cannot identify a
record, stops the run as a config error naming it. Records are matched on a
unique-value property (``idProperty``; ``email`` for contacts) or on the
record id ``hs_object_id``:

    insert  → batch/create, every input with its own ``objectWriteTraceId`` so
              HubSpot answers 207 per input instead of failing the request
    upsert  → batch/upsert by ``idProperty``
    update  → batch/update by ``idProperty`` (or record id); ids HubSpot cannot
              find are rejected "not found"
    delete  → batch/read to learn record ids, then batch/archive; a record
              already gone counts as deleted

Values are converted per property type (``properties.convert``). A value a
property cannot hold, or an empty match value, makes its row invalid in the
plan (``invalid_values``), with the reason, and it is never sent; should a
property change between the plan and the write, the write refuses the row the
same way (it is then rejected, and invalid in the next plan). A request
HubSpot refuses whole (400 ``VALIDATION_ERROR``: one input's value)
is split in halves and sent again until the inputs at fault are found, so only
they are rejected. 429s are read by ``policyName``: ``TEN_SECONDLY_ROLLING``
(and ``SECONDLY``) wait and retry, ``DAILY`` stops the run with a message,
because waiting inside a run cannot cure a spent daily allowance.

A mapped field named ``associations.<toObjectType>.<property>`` associates each
record with another object's record (see ``associations``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import httpx
import pyarrow as pa
from pydantic import Field, SecretStr, field_validator

from tidegate.destinations.base import (
    ALL_MODES,
    Batch,
    BatchResult,
    Capabilities,
    DestinationConfig,
    SyncTarget,
)
from tidegate.destinations.http import HttpDestination, body_preview, retry_after
from tidegate.destinations.hubspot import associations
from tidegate.destinations.hubspot.associations import Association
from tidegate.destinations.hubspot.properties import (
    RECORD_ID,
    Properties,
    convert,
    parse,
    screen,
)
from tidegate.errors import ConfigError, DestinationError, Problem, RetryableError
from tidegate.redact import redact

MAX_INPUTS = 100  # per batch request; HubSpot refuses more
DEFAULT_RATE = 9.0  # requests a second: Free/Starter allow 100 per 10 s, kept 10 % under
_Outcome = list[str | None]


class HubSpotConfig(DestinationConfig):
    """``type: hubspot`` settings (SPEC §6 names ``base_url`` and ``token``)."""

    type: Literal["hubspot"]
    base_url: str = "https://api.hubapi.com"
    token: SecretStr
    max_records: int = Field(default=MAX_INPUTS, gt=0, le=1000)
    requests_per_second: float = Field(default=DEFAULT_RATE, gt=0)
    concurrency: int = Field(default=4, gt=0, le=16)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("`base_url` must start with http:// or https://")
        return value.rstrip("/")


class HubSpotDestination(HttpDestination):
    """Writes CRM records through ``/crm/v3/objects/{objectType}/batch/*``."""

    kind = "hubspot"
    config_model = HubSpotConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES, max_records=MAX_INPUTS, requests_per_second=DEFAULT_RATE,
        concurrency=4,
        matches_by="a unique-value property named in `match.destination` (email for "
                   "contacts), or the record id hs_object_id",
        checks_values=True,
    )

    def __init__(self, name: str, config: HubSpotConfig, target: SyncTarget) -> None:
        super().__init__(name, config, target)
        self.settings = config
        self.tls = config.base_url.startswith("https://")
        self._properties: Properties | None = None
        self._headers = {"authorization": f"Bearer {config.token.get_secret_value()}",
                         "content-type": "application/json"}
        self._timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))
        self._daily: tuple[int, int] | None = None  # (remaining, limit) as last seen
        self._associations: list[Association] = []
        self._others: dict[str, Properties] = {}  # other objects' properties, by name

    @property
    def key(self) -> str:
        return self.target.match_fields[0] if self.target.match_fields else RECORD_ID

    def _url(self, tail: str) -> str:
        return f"{self.settings.base_url}/crm/v3/{tail}"

    # Before the run ------------------------------------------------------------

    def check(self) -> None:
        # A destination no sync uses yet has no object: any readable one proves the token.
        self._fetch_properties(self.target.object or "contacts")

    def prepare(self, schema: pa.Schema) -> None:
        self._checked(list(schema.names))

    def invalid_values(self, table: pa.Table) -> pa.Array | None:
        """Rows whose values the object's properties cannot hold, with the reason."""
        reasons = screen(table, self._checked(table.column_names), self.key)
        return reasons if reasons.null_count < len(reasons) else None

    def _checked(self, names: list[str]) -> Properties:
        """The object's properties (read once), with the sync's fields checked against them."""
        if self._properties is None:
            self._properties = self.before_run("the properties request",
                                               self._fetch_properties)
        if len(self.target.match_fields) > 1:
            raise ConfigError(Problem("HubSpot matches records on one property", key="match",
                                      fix="match on one unique-value property"))
        writes = [n for n in names if n != self.key and not associations.is_association(n)]
        problems = [Problem(message, key=key, fix=fix) for key, message, fix in
                    self._properties.problems(writes, self.target.mode, self.key)]
        self._associations = []
        for name in names:
            if associations.is_association(name):
                problem, association = self._association(name)
                if problem is not None:
                    problems.append(problem)
                elif association is not None:
                    self._associations.append(association)
        if problems:
            raise ConfigError(problems)
        return self._properties

    def _association(self, name: str) -> tuple[Problem | None, Association | None]:
        """The association a field names, or the problem with it."""
        try:
            association = associations.parse(name)
        except ValueError:
            return Problem(f"field {name} names no association",
                           key="fields", fix="map to associations.<objectType>.<property>, "
                           "e.g. associations.companies.hs_object_id"), None
        assert association is not None
        if self.target.mode not in associations.MODES:
            return Problem(f"mode {self.target.mode} cannot keep associations ({name})",
                           key="mode", fix="use upsert, update or mirror: a record written "
                           "again after its association failed must not be created twice"
                           ), None
        target = self._others.get(association.to)
        if target is None:  # read once: the planner checks values chunk by chunk
            target = self._others[association.to] = self.before_run(
                "the properties request", lambda: self._fetch_properties(association.to))
        if association.by == RECORD_ID or target.identifies(association.by):
            return None, association
        if association.by not in target.by_name:
            why = f"{association.to} has no property {association.by}"
        else:
            why = f"{association.to}.{association.by} is not a unique-value property"
        return Problem(f"{why}, so {name} cannot find the record to associate with",
                       key="fields", fix=f"name a unique-value property of {association.to}, "
                       f"or {RECORD_ID}"), None

    def _fetch_properties(self, object_type: str = "") -> Properties:
        object_type = object_type or self.target.object
        response = self._request("GET", self._url(f"properties/{object_type}"))
        if response.status_code in (400, 404):
            raise ConfigError(Problem(
                f"HubSpot has no object type {object_type!r} ({_message(response)})",
                key="object", fix="use contacts, companies, deals, tickets or a custom "
                                  "object's name or type id (e.g. 2-1234567)"))
        problem = self.classify(response)
        if problem is not None:
            raise DestinationError(f"reading the properties of {object_type} failed: {problem}")
        return parse(object_type, response.json())

    # Writing -------------------------------------------------------------------

    def write(self, batch: Batch) -> BatchResult:
        properties = self._properties or self._fetch_properties()
        keys = batch.keys
        rows, refused = self._rows(batch.table, properties)
        linking = self._associations if batch.operation != "delete" else []
        targets = self._targets(linking, rows, refused)
        rejected = {keys[i]: why for i, why in refused.items()}
        todo = [i for i in range(len(keys)) if i not in refused]
        if todo:
            ids: dict[str, str] = {}
            outcome = self._send_rows(batch.operation, [rows[i] for i in todo], ids)
            written = []
            for i, why in zip(todo, outcome, strict=True):
                if why is not None:
                    rejected[keys[i]] = why
                else:
                    written.append(i)
            fold = self.key == "email"
            for association in linking:
                for i, why in self._associate(association, rows, written, targets[association],
                                              ids, fold).items():
                    rejected.setdefault(keys[i], why)
        return BatchResult(rejected=rejected)

    def _targets(self, linking: list[Association], rows: list[dict[str, str]],
                 refused: dict[int, str]) -> dict[Association, dict[str, str]]:
        """Per association, the record ids of the records the rows name; a row naming a
        record HubSpot does not have is refused (nothing of it is sent)."""
        out: dict[Association, dict[str, str]] = {}
        for association in linking:
            values = sorted({rows[i][association.field] for i in range(len(rows))
                             if i not in refused and rows[i][association.field]})
            if association.by == RECORD_ID:
                found = {v: v for v in values}
            else:
                found = self._record_ids(values, association.to, association.by)
            out[association] = found
            for i, row in enumerate(rows):
                value = row[association.field]
                if i not in refused and value and value not in found:
                    refused[i] = (f"no {association.to} record has {association.by} "
                                  f"{value!r} to associate with")
        return out

    def _associate(self, association: Association, rows: list[dict[str, str]],
                   written: list[int], targets: dict[str, str], ids: dict[str, str],
                   fold: bool) -> dict[int, str]:
        """Give each written row's record its association; the rows it failed for."""
        todo = [(i, ids.get(_fold(rows[i][self.key], fold)), targets[rows[i][association.field]])
                for i in written if rows[i][association.field]]
        failed = {i: "HubSpot answered without this record's id" for i, a, _ in todo if a is None}
        pairs = [(i, a, b) for i, a, b in todo if a is not None]
        url = (f"{self.settings.base_url}/crm/v4/associations/{self.target.object}/"
               f"{association.to}/batch/associate/default")
        for start in range(0, len(pairs), MAX_INPUTS):
            chunk = pairs[start:start + MAX_INPUTS]
            ab = [(a, b) for _, a, b in chunk]
            response = self._request("POST", url, json={"inputs": associations.inputs(ab)})
            problem = self.classify(response)
            outcome: _Outcome = (
                [f"the association failed (HTTP {response.status_code}: "
                 f"{_message(response)})"] * len(chunk) if problem is not None
                else associations.outcome(_body(response), ab))
            failed.update({i: why for (i, _, _), why in zip(chunk, outcome, strict=True)
                           if why is not None})
        return failed

    def _rows(self, table: pa.Table, properties: Properties
              ) -> tuple[list[dict[str, str]], dict[int, str]]:
        """Each row as HubSpot's property strings, and the rows that cannot be sent.

        The plan already left out rows with values the properties cannot hold; a row
        refused here met a property that changed since the plan was made.
        """
        columns: dict[str, list[str]] = {}
        refused: dict[int, str] = {}
        for name in table.column_names:
            info = properties.by_name.get(name)
            column = table.column(name)
            if info is None:  # the record id: sent as text, never as a property
                columns[name] = [("" if v is None else str(v)) for v in column.to_pylist()]
                continue
            email = name == "email" and properties.is_contacts
            text, reasons = convert(column, info, email=email)
            for i, why in enumerate(reasons.to_pylist()):
                if why is not None and i not in refused:
                    refused[i] = why
            columns[name] = text.to_pylist()
        for i, value in enumerate(columns.get(self.key, [])):
            if not value and i not in refused:
                refused[i] = f"the match property {self.key} is empty"
        names = list(columns)
        rows = [dict(zip(names, values, strict=True))
                for values in zip(*columns.values(), strict=True)]
        return rows or [{} for _ in range(table.num_rows)], refused

    def _send_rows(self, operation: str, rows: list[dict[str, str]],
                   ids: dict[str, str] | None = None) -> _Outcome:
        """Write the rows; per row None or HubSpot's reason. ``ids`` gets the record id
        of each upserted or updated record, by its (folded) match value."""
        key = self.key
        if operation == "insert":
            inputs = [{"properties": _props(r), "associations": [],
                       "objectWriteTraceId": str(n)} for n, r in enumerate(rows)]
            return self._batch("create", inputs, self._trace_outcome)
        if operation == "delete":
            return self._archive([r[key] for r in rows])
        inputs = []
        for row in rows:
            item: dict[str, Any] = {"id": row[key], "properties": _props(row)}
            if key != RECORD_ID:
                item["idProperty"] = key
            inputs.append(item)
        return self._batch("upsert" if operation == "upsert" else "update", inputs,
                           lambda doc, sent: self._id_outcome(doc, sent, ids))

    def _batch(self, action: str, inputs: list[dict[str, Any]],
               outcome_of: Callable[[dict[str, Any], list[dict[str, Any]]], _Outcome],
               extra: dict[str, Any] | None = None, object_type: str = "") -> _Outcome:
        """POST one batch request; per input, None when accepted or HubSpot's reason."""
        object_type = object_type or self.target.object
        response = self._request("POST", self._url(f"objects/{object_type}/batch/{action}"),
                                 json={"inputs": inputs, **(extra or {})})
        problem = self.classify(response)
        if problem is None:
            doc = response.json() if response.content else {}
            return outcome_of(doc, inputs)
        if len(inputs) > 1 and _input_at_fault(response):
            # HubSpot refuses a whole batch for one input's value without saying
            # which: halve it until the inputs at fault stand alone. Any other
            # refusal (a malformed request) would refuse every half too.
            half = len(inputs) // 2
            return (self._batch(action, inputs[:half], outcome_of, extra, object_type)
                    + self._batch(action, inputs[half:], outcome_of, extra, object_type))
        return [f"HTTP {response.status_code}: {_message(response)}"] * len(inputs)

    def _trace_outcome(self, doc: dict[str, Any], inputs: list[dict[str, Any]]) -> _Outcome:
        return _outcome(doc, [str(i["objectWriteTraceId"]) for i in inputs],
                        lambda r: str(r.get("objectWriteTraceId")), "objectWriteTraceId",
                        fold=False)

    def _id_outcome(self, doc: dict[str, Any], inputs: list[dict[str, Any]],
                    ids: dict[str, str] | None = None) -> _Outcome:
        fold = self.key == "email"
        key = self.key

        def result_ident(result: dict[str, Any]) -> str:
            if key == RECORD_ID:
                return str(result.get("id"))
            return str((result.get("properties") or {}).get(key, ""))

        if ids is not None:
            ids.update({_fold(result_ident(r), fold): str(r.get("id"))
                        for r in doc.get("results") or []})
        return _outcome(doc, [str(i["id"]) for i in inputs], result_ident, "ids", fold=fold)

    def _archive(self, values: list[str]) -> _Outcome:
        if self.key == RECORD_ID:
            ids: dict[str, str] = {v: v for v in values}
        else:
            ids = self._record_ids(values)
        found = [ids[v] for v in values if v in ids]
        for start in range(0, len(found), MAX_INPUTS):
            chunk = found[start:start + MAX_INPUTS]
            outcome = self._batch("archive", [{"id": i} for i in chunk],
                                  lambda _doc, inputs: [None] * len(inputs))
            refusal = next((o for o in outcome if o is not None), None)
            if refusal is not None:  # archive answers 204 or refuses the request whole
                return [refusal] * len(values)
        return [None] * len(values)  # a record already gone is as deleted as it gets

    def _record_ids(self, values: list[str], object_type: str = "", prop: str = ""
                    ) -> dict[str, str]:
        """Record ids by the value of ``prop`` (the match property) of ``object_type``
        (the sync's object); values HubSpot cannot find are left out."""
        prop = prop or self.key
        fold = prop == "email"
        found: dict[str, str] = {}

        def read(doc: dict[str, Any], inputs: list[dict[str, Any]]) -> _Outcome:
            for result in doc.get("results", []):
                value = result.get("properties", {}).get(prop)
                if value is not None:
                    found[_fold(str(value), fold)] = str(result["id"])
            return [None] * len(inputs)

        for start in range(0, len(values), MAX_INPUTS):
            self._batch("read", [{"id": v} for v in values[start:start + MAX_INPUTS]], read,
                        {"idProperty": prop, "properties": [prop],
                         "propertiesWithHistory": []}, object_type)
        return {v: found[_fold(v, fold)] for v in values if _fold(v, fold) in found}

    # HubSpot's signals -----------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.send(method, url, headers=self._headers, timeout=self._timeout,
                             **kwargs)
        remaining = response.headers.get("x-hubspot-ratelimit-daily-remaining")
        limit = response.headers.get("x-hubspot-ratelimit-daily")
        if remaining and limit and remaining.isdigit() and limit.isdigit():
            seen = (int(remaining), int(limit))
            with self._client_lock:  # concurrent answers arrive out of order: keep the lowest
                if self._daily is None or seen[0] <= self._daily[0]:
                    self._daily = seen
        return response

    def classify(self, response: httpx.Response) -> str | None:
        status = response.status_code
        if status == 429:
            raise self._throttled(response)
        if status == 401:
            raise DestinationError(
                f"HubSpot refused the token (401: {_message(response)}). Fix: check `token` "
                "(a private app's access token) and `base_url`")
        if status == 403:
            raise DestinationError(
                f"HubSpot refused access (403: {_message(response)}). Fix: give the private "
                f"app the scopes to read and write {self.target.object} (crm.objects.*.read "
                "and .write, crm.schemas.*.read)")
        return super().classify(response)

    def _throttled(self, response: httpx.Response) -> Exception:
        policy = str(_body(response).get("policyName") or "")
        if policy == "DAILY":
            return DestinationError(
                "HubSpot's daily API limit for this account is spent (429 DAILY). It resets at "
                "midnight in the account's time zone: run again then, or raise the limit with "
                "HubSpot's API add-on; what was acknowledged is kept")
        wait = retry_after(response)
        if wait is None and policy == "SECONDLY":
            wait = 1.0
        if wait is None:
            # The rolling window's length; HubSpot is not documented to send Retry-After.
            interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds", "")
            wait = int(interval) / 1000 if interval.isdigit() else 10.0
        return RetryableError(f"HubSpot is throttling this account (429 {policy or 'rate limit'})",
                              retry_after=wait)

    def report(self) -> dict[str, Any]:
        """The account's daily API allowance as its last answer showed it."""
        if self._daily is None:
            return {}
        remaining, limit = self._daily
        return {"daily_remaining": remaining, "daily_limit": limit}


def _props(row: dict[str, str]) -> dict[str, str]:
    # The match value is written as a property too (not the record id, which HubSpot
    # assigns), so each result names the input it answers.
    return {k: v for k, v in row.items()
            if k != RECORD_ID and not associations.is_association(k)}


def _outcome(doc: dict[str, Any], idents: list[str],
             result_ident: Callable[[dict[str, Any]], str], context_key: str, *, fold: bool
             ) -> _Outcome:
    """Per input (by ``idents``), HubSpot's error for it or None (accepted).

    Every input is in ``results`` or in ``errors``; errors name their inputs in
    their ``context``. An error that names none is matched by elimination: it
    goes to the inputs no result answers.
    """
    named: dict[str, str] = {}
    unnamed: list[str] = []
    for error in doc.get("errors") or []:
        message = redact(f"{error.get('category', 'ERROR')}: {error.get('message', '')}")
        owners = (error.get("context") or {}).get(context_key) or []
        for ident in owners:
            named[_fold(str(ident), fold)] = message
        if not owners:
            unnamed.append(message)
    answered = {_fold(result_ident(r), fold) for r in doc.get("results") or []}
    out: _Outcome = []
    for ident in (_fold(i, fold) for i in idents):
        if ident in named:
            out.append(named[ident])
        elif unnamed and ident not in answered:
            out.append(unnamed[0])
        else:
            out.append(None)
    return out


def _input_at_fault(response: httpx.Response) -> bool:
    """Whether a refused request names a value of some input (or a record conflict)."""
    doc = _body(response)
    category, message = str(doc.get("category", "")), str(doc.get("message", ""))
    return response.status_code in (400, 409) and (
        category == "CONFLICT" or message.startswith("Property values were not valid"))


def _fold(value: str, fold: bool) -> str:
    return value.lower() if fold else value


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _message(response: httpx.Response) -> str:
    doc = _body(response)
    if doc.get("message"):
        return redact(str(doc["message"])[:500])
    return body_preview(response)
