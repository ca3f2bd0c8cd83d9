"""``type: salesforce``: a sync's batches written to an sObject through sObject Collections.

Before the first batch the object is described: a mapped field the object does
not have, or cannot write for the sync's mode, stops the run as a config error
naming the field. Records are matched on ``Id`` or on an external id field (the
sync's ``match.destination``). Upserts go by external id; updates and deletes by
``Id``, looked up with SOQL when the match is an external id. Values are
converted per field type; a value the field cannot hold rejects its row with
the reason, and nothing is sent for it.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from tidegate.destinations.base import (
    ALL_MODES,
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    SyncTarget,
)
from tidegate.destinations.salesforce import collections
from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi
from tidegate.destinations.salesforce.describe import Describe, FieldInfo, convert, fetch
from tidegate.errors import ConfigError, DestinationError, Problem, RetryableError

_NUMBERS = frozenset({"double", "currency", "percent"})
_WHOLE = frozenset({"int", "long"})
_LOOKUP_CHUNK = 100  # values per SOQL IN clause: keeps the query URL short


class SalesforceConfig(DestinationConfig):
    type: Literal["salesforce"]
    login_url: str = "https://login.salesforce.com"
    auth: AuthConfig
    api_version: str = "62.0"
    max_records: int = Field(default=collections.MAX_RECORDS, gt=0,
                             le=collections.MAX_RECORDS)
    concurrency: int = Field(default=4, gt=0, le=16)
    requests_per_second: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)


class SalesforceDestination(Destination):
    kind = "salesforce"
    config_model = SalesforceConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES, max_records=collections.MAX_RECORDS, concurrency=4,
        matches_by="`Id`, or an external id field named in `match.destination`",
    )

    def __init__(self, name: str, config: SalesforceConfig, target: SyncTarget) -> None:
        super().__init__(name, config, target)
        self.settings = config
        self._api: SalesforceApi | None = None
        self._describe: Describe | None = None

    @property
    def api(self) -> SalesforceApi:
        if self._api is None:
            self._api = SalesforceApi(
                self.settings.login_url, self.settings.auth, self.settings.api_version,
                root=self.target.project_root, timeout=self.settings.timeout_s,
                verify=self.settings.login_url.startswith("https://"))
        return self._api

    @property
    def key(self) -> str:
        return self.target.match_fields[0] if self.target.match_fields else "Id"

    def check(self) -> None:
        fetch(self.api, self.target.object)

    def prepare(self, schema: pa.Schema) -> None:
        describe = self._describe_with_retries()
        writes = [n for n in schema.names if n not in ("Id", self.key)]
        operation = {"insert": "insert", "update": "update", "delete": "update"}.get(
            self.target.mode, "upsert")
        if len(self.target.match_fields) > 1:
            raise ConfigError(Problem("Salesforce matches records on one field",
                                      key="match", fix="match on `Id` or one external id field"))
        problems = describe.problems(writes, operation, self.key)
        if problems:
            raise ConfigError([Problem(p, key="fields", fix="map to fields the object has and "
                                                             "the sync's user can write")
                               for p in problems])
        self._describe = describe

    def _describe_with_retries(self, attempts: int = 5) -> Describe:
        # Runs before the first batch, outside the deliverer's retries: a blip here
        # must not fail a run that would otherwise go through.
        for attempt in range(1, attempts + 1):
            try:
                return fetch(self.api, self.target.object)
            except RetryableError as exc:
                if attempt == attempts:
                    raise DestinationError(
                        f"{self.describe()} did not answer describe after {attempt} "
                        f"attempt(s): {exc}. Check that it is up; nothing was sent") from exc
                time.sleep(0.1 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def write(self, batch: Batch) -> BatchResult:
        describe = self._describe or fetch(self.api, self.target.object)
        keys = batch.keys
        values, refused = self._values(batch.table, describe)
        rejected: dict[str, str] = {keys[i]: why for i, why in refused.items()}
        todo = [i for i in range(len(keys)) if i not in refused]
        if not todo:
            return BatchResult(rejected=rejected)
        op = batch.operation
        if op == "upsert" and self.key != "Id":
            records = [values[i] for i in todo]
            outcome = collections.write(self.api, describe.object, "upsert", records,
                                        external_id=self.key)
        elif op == "insert":
            outcome = collections.write(self.api, describe.object, "insert",
                                        [values[i] for i in todo])
        else:  # update, delete, and upsert on Id: they need the records' Ids
            ids = self._ids([values[i][self.key] for i in todo], describe)
            found = [i for i in todo if ids.get(_text(values[i][self.key]))]
            for i in todo:
                if i not in found and op != "delete":  # a delete of what is gone is done
                    rejected[keys[i]] = f"no {describe.object} with {self.key} " \
                                        f"{values[i][self.key]}"
            todo = found
            if op == "delete":
                records = [{"Id": ids[_text(values[i][self.key])]} for i in todo]
            else:
                records = [{**{k: v for k, v in values[i].items() if k != self.key},
                            "Id": ids[_text(values[i][self.key])]} for i in todo]
            outcome = collections.write(self.api, describe.object,
                                        "delete" if op == "delete" else "update", records)
        for i, why in zip(todo, outcome, strict=True):
            if why is not None:
                rejected[keys[i]] = why
        return BatchResult(rejected=rejected)

    def _values(self, table: pa.Table, describe: Describe
                ) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """Each row as the JSON Salesforce takes, and the rows that cannot be sent."""
        columns: dict[str, list[Any]] = {}
        refused: dict[int, str] = {}
        for name in table.column_names:
            info = describe.fields.get(name)
            if info is None:
                continue
            text, reasons = convert(table.column(name), info)
            for i, why in enumerate(reasons.to_pylist()):
                if why is not None and i not in refused:
                    refused[i] = why
            columns[name] = [_typed(v, info) for v in text.to_pylist()]
        rows = [dict(zip(columns, vals, strict=True)) for vals in zip(*columns.values(),
                                                                      strict=True)]
        return rows or [{} for _ in range(table.num_rows)], refused

    def _ids(self, values: list[Any], describe: Describe) -> dict[str, str]:
        """Record Ids by match value; an ``Id`` match is its own answer."""
        if self.key == "Id":
            return {_text(v): _text(v) for v in values}
        out: dict[str, str] = {}
        for start in range(0, len(values), _LOOKUP_CHUNK):
            chunk = values[start:start + _LOOKUP_CHUNK]
            quoted = ", ".join("'" + _text(v).replace("\\", "\\\\").replace("'", "\\'") + "'"
                               for v in chunk)
            soql = (f"SELECT Id, {self.key} FROM {describe.object} "
                    f"WHERE {self.key} IN ({quoted})")
            response = self.api.request("GET", "query", params={"q": soql})
            if response.status_code != 200:
                raise DestinationError(f"looking up {describe.object} Ids by {self.key} "
                                       f"failed: HTTP {response.status_code}")
            for record in response.json().get("records", []):
                out[_text(record[self.key])] = str(record["Id"])
        return out

    def report(self) -> dict[str, Any]:
        """The org's API usage as its last response said (``Sforce-Limit-Info``)."""
        if self._api is None or self._api.usage is None:
            return {}
        used, limit = self._api.usage
        return {"api_usage": used, "api_limit": limit}

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


def _typed(text: str | None, info: FieldInfo) -> Any:
    """Salesforce's JSON wants numbers and booleans as such, everything else as text."""
    if text is None:
        return None
    if info.type == "boolean":
        return text == "true"
    if info.type in _WHOLE or (info.type in _NUMBERS and info.scale == 0 and "." not in text):
        return int(float(text))
    if info.type in _NUMBERS:
        return float(text)
    return text


def _text(value: Any) -> str:
    return "" if value is None else str(value)
