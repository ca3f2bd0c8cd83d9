"""``type: salesforce``: a sync's batches written to an sObject, by Collections or Bulk API 2.0.

The write path is chosen per run from what the run sends (``SyncTarget.to_send``):
up to ``bulk_threshold`` records (2,000 by default, Salesforce's own advice) go
through sObject Collections, 200 a request; more go through Bulk API 2.0 ingest
jobs, one job per batch, each batch cut by the planner to the CSV bytes one
upload may carry (``record_bytes``), so a run makes as few uploads as the limit
allows. Either way state advances only for the records Salesforce acknowledged.

The object is described before anything is written: a mapped field it does not
have, or cannot write for the sync's mode, stops the run as a config error
naming the field. Values are converted per field type; a value the field cannot
hold makes its row invalid in the plan (``invalid_values``), with the reason,
and it is never sent. Records are matched on ``Id`` or an external id field
(the sync's ``match.destination``): upserts go by external id; updates and
deletes by ``Id``, looked up with SOQL ``IN`` queries when the match is an
external id. ``hard_delete`` purges instead of using the recycle bin (Bulk
``hardDelete``, so a run with deletes then goes through Bulk).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
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
from tidegate.destinations.salesforce import bulk, collections, csvdata
from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi
from tidegate.destinations.salesforce.describe import Describe, FieldInfo, convert, fetch, screen
from tidegate.errors import ConfigError, DestinationError, Problem, RetryableError

log = logging.getLogger("tidegate")

_NUMBERS = frozenset({"double", "currency", "percent"})
_WHOLE = frozenset({"int", "long"})
_LOOKUP_VALUES = 200  # values per SOQL IN clause, and at most _LOOKUP_CHARS of them:
_LOOKUP_CHARS = 4000  # Salesforce advises short query URIs (16,384 bytes with headers)
_HEADER_ALLOWANCE = 256 * 1024  # a CSV header when the sync's fields are not known yet
_ID_PLACEHOLDER = "0" * 18  # the width of a looked-up Id, for sizing update and delete lines


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
    # Runs that send more records than this go through Bulk API 2.0.
    bulk_threshold: int = Field(default=2000, ge=0)
    bulk_poll_interval_s: float = Field(default=1.0, gt=0)
    bulk_timeout_s: float = Field(default=3600.0, gt=0)
    # Base64 bytes one Bulk upload may carry: Salesforce's limit. Lower it only to
    # rehearse how a large run is split.
    bulk_upload_bytes: int = Field(default=bulk.MAX_UPLOAD_BASE64, ge=1000,
                                   le=bulk.MAX_UPLOAD_BASE64)
    hard_delete: bool = False


class SalesforceDestination(Destination):
    kind = "salesforce"
    config_model = SalesforceConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=ALL_MODES, max_records=collections.MAX_RECORDS, concurrency=4,
        matches_by="`Id`, or an external id field named in `match.destination`",
        checks_values=True,
    )

    def __init__(self, name: str, config: SalesforceConfig, target: SyncTarget) -> None:
        super().__init__(name, config, target)
        self.settings = config
        self._api: SalesforceApi | None = None
        self._writer: bulk.BulkWriter | None = None
        self._describe: Describe | None = None
        self._checked: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self._prepared = False
        self._failed = False
        self._orphans: list[str] = []
        self._written: list[str] = []  # journal names of batches this run wrote

    # Settings of this run ---------------------------------------------------------

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

    @property
    def uses_bulk(self) -> bool:
        """Whether this run writes through Bulk API 2.0."""
        sends = self.target.to_send
        return sum(sends.values()) > self.settings.bulk_threshold or bool(
            self.settings.hard_delete and sends.get("delete"))

    @property
    def writer(self) -> bulk.BulkWriter:
        with self._lock:
            if self._writer is None:
                self._writer = bulk.BulkWriter(
                    self.api, self._described().object, self.target.journal,
                    budget=bulk.raw_budget(self.settings.bulk_upload_bytes),
                    poll_interval=self.settings.bulk_poll_interval_s,
                    timeout=self.settings.bulk_timeout_s)
            return self._writer

    def limits(self) -> Capabilities:
        caps = super().limits()
        if not self.uses_bulk:
            return caps
        # One batch is one job: as many records as one upload's bytes allow.
        return dataclasses.replace(
            caps, max_records=bulk.MAX_RECORDS, concurrency=min(caps.concurrency,
                                                                bulk.CONCURRENCY),
            max_bytes=bulk.raw_budget(self.settings.bulk_upload_bytes) - self._header_room())

    def _header_room(self) -> int:
        """The longest header line of the run's uploads, so every batch fits with it."""
        if not self.target.fields:
            return _HEADER_ALLOWANCE
        fields = [f for f in self.target.fields if f not in (self.key, "Id")]
        heads = [["Id"] if op == "delete" else (["Id", *fields] if _by_id(op, self.key)
                                                else [self.key, *fields])
                 for op in self.target.to_send]
        return max((len(csvdata.header(h)) for h in heads), default=_HEADER_ALLOWANCE)

    # Describe --------------------------------------------------------------------

    def check(self) -> None:
        fetch(self.api, self.target.object)

    def _described(self, names: list[str] | None = None) -> Describe:
        """The object's describe (fetched once), with ``names`` checked against it."""
        if self._describe is None:
            self._describe = self._describe_with_retries()
        describe = self._describe
        if names is not None and tuple(names) not in self._checked:
            self._problems(describe, names)
            self._checked.add(tuple(names))
        return describe

    def _problems(self, describe: Describe, names: list[str]) -> None:
        if len(self.target.match_fields) > 1:
            raise ConfigError(Problem("Salesforce matches records on one field",
                                      key="match", fix="match on `Id` or one external id field"))
        if self.target.mode == "insert" and self.key == "Id":
            raise ConfigError(Problem(
                "insert mode cannot match on Id: Salesforce sets it", key="match",
                fix="match on an external id field the sync writes (`match.destination`)"))
        # A delete sends Ids only: what else the sync maps is never written.
        writes = [] if self.target.mode == "delete" else [
            n for n in names if n not in ("Id", self.key)]
        operation = {"insert": "insert", "update": "update", "delete": "update"}.get(
            self.target.mode, "upsert")
        problems = describe.problems(writes, operation, self.key)
        if problems:
            raise ConfigError([Problem(p, key="fields", fix="map to fields the object has and "
                                                             "the sync's user can write")
                               for p in problems])

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

    def invalid_values(self, table: pa.Table) -> pa.Array | None:
        """Rows whose values the object's fields cannot hold, with the reason."""
        describe = self._described(table.column_names)
        reasons = screen(table, describe)
        return reasons if reasons.null_count < len(reasons) else None

    # Before the first batch --------------------------------------------------------

    def prepare(self, schema: pa.Schema) -> None:
        self._described(list(schema.names))
        self._prepared = True
        self._settle_orphans()

    def _settle_orphans(self) -> None:
        """Wait for the Bulk jobs an earlier run left in flight, before sending anything.

        A crashed run's jobs may still be running: new writes of the same records must
        not race them. Their batches, planned again, read their results (``bulk``).
        """
        journal = self.target.journal
        if journal is None:
            return
        self._orphans = journal.names(bulk.PREFIX)
        for name in self._orphans:
            for part in _jobs(journal.get(name)):
                info = self.writer.info(part["id"])
                if info is None or info.get("state") in bulk.TERMINAL:
                    continue
                if info.get("state") == "Open" and not part.get("uploaded"):
                    continue  # nothing of it is processed; its batch aborts it or close does
                if info.get("state") == "Open":
                    self.writer.close_job(part["id"])
                log.info("waiting for Bulk job %s, left in flight by an earlier run",
                         part["id"])
                self.writer.wait(part["id"])

    # Writing -----------------------------------------------------------------------

    def write(self, batch: Batch) -> BatchResult:
        try:
            describe = self._described(batch.table.column_names)
            if self.uses_bulk:
                return self._write_bulk(batch, describe)
            return self._write_collections(batch, describe)
        except BaseException:
            self._failed = True
            raise

    def _write_collections(self, batch: Batch, describe: Describe) -> BatchResult:
        keys = batch.keys
        texts, refused = self._texts(batch.table, describe)
        rejected: dict[str, str] = {keys[i]: why for i, why in refused.items()}
        todo = [i for i in range(len(keys)) if i not in refused]
        if not todo:
            return BatchResult(rejected=rejected)
        values = _rows(texts, describe, len(keys))
        op = batch.operation
        if op == "insert" or (op == "upsert" and self.key != "Id"):
            outcome = collections.write(self.api, describe.object, op,
                                        [values[i] for i in todo],
                                        external_id=self.key if op == "upsert" else None)
        else:  # update, delete, and upsert on Id: they need the records' Ids
            key_text = texts[self.key].to_pylist()
            ids = self._ids([key_text[i] for i in todo], describe)
            for i in todo:
                if key_text[i] not in ids and op != "delete":
                    rejected[keys[i]] = f"no {describe.object} with {self.key} {key_text[i]}"
            todo = [i for i in todo if key_text[i] in ids]  # a delete of what is gone is done
            if op == "delete":
                records = [{"Id": ids[key_text[i]]} for i in todo]
            else:
                records = [{**{k: v for k, v in values[i].items() if k not in (self.key, "Id")},
                            "Id": ids[key_text[i]]} for i in todo]
            outcome = collections.write(self.api, describe.object,
                                        "delete" if op == "delete" else "update", records)
        for i, why in zip(todo, outcome, strict=True):
            if why is not None and not (op == "delete" and why.startswith("ENTITY_IS_DELETED")):
                rejected[keys[i]] = why
        return BatchResult(rejected=rejected)

    def _write_bulk(self, batch: Batch, describe: Describe) -> BatchResult:
        keys = batch.keys
        texts, refused = self._texts(batch.table, describe)
        rejected: dict[str, str] = {keys[i]: why for i, why in refused.items()}
        keep = [i for i in range(len(keys)) if i not in refused]
        op = batch.operation
        ids: pa.Array | None = None
        if _by_id(op, self.key):
            key_text = texts[self.key]
            if self.key == "Id":
                ids = key_text
            else:
                values = key_text.to_pylist()
                found = self._ids([values[i] for i in keep], describe)
                ids = pa.array([found.get(v) if v is not None else None for v in values],
                               pa.string())
                for i in keep:
                    if values[i] not in found and op != "delete":
                        rejected[keys[i]] = f"no {describe.object} with {self.key} {values[i]}"
                keep = [i for i in keep if values[i] in found]  # a delete of what is gone is done
        if not keep:
            return BatchResult(rejected=rejected)
        columns = self._bulk_columns(op, texts, ids)
        take = pa.array(keep, pa.int64())
        picked = {name: column.take(take) for name, column in columns.items()}
        key_column = "Id" if ids is not None else self.key
        sf_op = _bulk_operation(op, self.key, self.settings.hard_delete)
        upload = bulk.Upload(
            operation=sf_op, key_column=key_column, head=csvdata.header(list(picked)),
            lines=csvdata.lines(picked), keys=picked[key_column],
            external_id=self.key if sf_op == "upsert" else None)
        name = f"{bulk.PREFIX}{batch.id}"
        outcome = self.writer.write(name, upload)
        with self._lock:
            self._written.append(name)
        for i, why in zip(keep, outcome, strict=True):
            if why is not None and not (op == "delete" and why.startswith("ENTITY_IS_DELETED")):
                rejected[keys[i]] = why
        return BatchResult(rejected=rejected)

    def _bulk_columns(self, op: str, texts: dict[str, pa.Array], ids: pa.Array | None
                      ) -> dict[str, pa.Array]:
        """The upload's columns for ``op``: the key column first, then the fields it writes."""
        if ids is not None:
            if op == "delete":
                return {"Id": ids}
            return {"Id": ids, **{n: t for n, t in texts.items() if n not in (self.key, "Id")}}
        return {self.key: texts[self.key],
                **{n: t for n, t in texts.items() if n not in (self.key, "Id")}}

    def record_bytes(self, table: pa.Table) -> pa.Array | None:
        """Each row's line in the Bulk CSV upload, as ``csvdata.lines`` writes it."""
        if not self.uses_bulk or self._describe is None:
            return None
        texts, _ = self._texts(table, self._describe)
        ops = table.column("__op").combine_chunks()
        sizes: pa.Array | None = None
        for op in pc.unique(ops).to_pylist():
            ids: pa.Array | None = None
            if _by_id(op, self.key):
                ids = texts[self.key] if self.key == "Id" else pa.repeat(
                    pa.scalar(_ID_PLACEHOLDER), len(ops))
            these = csvdata.line_bytes(self._bulk_columns(op, texts, ids))
            sizes = these if sizes is None else pc.if_else(pc.equal(ops, op), these, sizes)
        return sizes

    def _texts(self, table: pa.Table, describe: Describe
               ) -> tuple[dict[str, pa.Array], dict[int, str]]:
        """Each known field's values as the text Salesforce takes, and rows that cannot go.

        The planner's screen already kept such rows out of the run; what is found here
        is refused rather than sent, should a value slip through.
        """
        texts: dict[str, pa.Array] = {}
        refused: dict[int, str] = {}
        for name in table.column_names:
            info = describe.fields.get(name)
            if info is None:
                continue
            text, reasons = convert(table.column(name), info)
            if reasons.null_count < len(reasons):
                for i, why in enumerate(reasons.to_pylist()):
                    if why is not None and i not in refused:
                        refused[i] = why
            texts[name] = text
        return texts, refused

    def _ids(self, values: list[str], describe: Describe) -> dict[str, str]:
        """Record Ids by match value; an ``Id`` match is its own answer."""
        if self.key == "Id":
            return {v: v for v in values if v}
        out: dict[str, str] = {}
        info = describe.fields[self.key]
        for chunk in _chunks([v for v in values if v]):
            quoted = ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
                               for v in chunk)
            soql = (f"SELECT Id, {self.key} FROM {describe.object} "
                    f"WHERE {self.key} IN ({quoted})")
            response = self.api.request("GET", "query", params={"q": soql})
            while True:
                if response.status_code != 200:
                    raise DestinationError(f"looking up {describe.object} Ids by {self.key} "
                                           f"failed: HTTP {response.status_code}")
                body = response.json()
                records = body.get("records", [])
                # The values as this run writes them, to meet the model's text.
                text, _ = convert(pa.array([r.get(self.key) for r in records]), info)
                for record, value in zip(records, text.to_pylist(), strict=True):
                    out[value if value is not None else str(record[self.key])] = \
                        str(record["Id"])
                if body.get("done", True) or not body.get("nextRecordsUrl"):
                    break
                response = self.api.request("GET", str(body["nextRecordsUrl"]))
        if info.type in ("string", "email", "phone", "url", "textarea"):
            # Text external ids match regardless of case, as SOQL's IN does.
            folded = {k.lower(): v for k, v in out.items()}
            out.update({v: folded[v.lower()] for v in values
                        if v and v not in out and v.lower() in folded})
        return out

    # After the run -----------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The org's API usage as its last response said (``Sforce-Limit-Info``), the
        write path of the run, and for Bulk its jobs and uploads."""
        out: dict[str, Any] = {}
        if self._api is not None and self._api.usage is not None:
            out["api_usage"], out["api_limit"] = self._api.usage
        if self._prepared:
            out["write_path"] = "bulk" if self.uses_bulk else "collections"
        if self._writer is not None:
            out.update(self._writer.stats.as_dict())
        return out

    def close(self) -> None:
        try:
            self._forget_settled()
        finally:
            if self._api is not None:
                self._api.close()
                self._api = None

    def _forget_settled(self) -> None:
        """Once a run has written everything it tried (the run is over: every outcome
        is committed), its batches' jobs are settled, and so are jobs left by earlier
        runs whose batches did not come again, their records having been sent anew.
        After a failure nothing is forgotten: the next run settles it all."""
        journal = self.target.journal
        if self._failed or journal is None:
            return
        for name in self._written:
            journal.forget(name)
        for name in self._orphans:
            raw = journal.get(name)
            if raw is None:
                continue  # its batch came again and read its results
            for part in _jobs(raw):
                if not part.get("uploaded"):
                    try:
                        info = self.writer.info(part["id"])
                        if info is not None and info.get("state") == "Open":
                            self.writer.set_state(part["id"], "Aborted")
                    except DestinationError as exc:  # tidying only
                        log.info("could not abort Bulk job %s: %s", part["id"], exc)
            journal.forget(name)


def _by_id(op: str, key: str) -> bool:
    """Whether ``op`` writes records by their ``Id`` (looked up unless the match is Id)."""
    return op in ("update", "delete") or (op == "upsert" and key == "Id")


def _bulk_operation(op: str, key: str, hard_delete: bool) -> str:
    if op == "delete":
        return "hardDelete" if hard_delete else "delete"
    if op == "upsert" and key == "Id":
        return "update"  # every record has an Id: there is nothing to create
    return op


def _jobs(raw: str | None) -> list[dict[str, Any]]:
    try:
        entry = json.loads(raw or "{}")
    except ValueError:
        return []
    jobs = entry.get("jobs") if isinstance(entry, dict) else None
    return [j for j in (jobs or {}).values() if isinstance(j, dict) and j.get("id")]


def _chunks(values: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for v in values:
        cost = len(quote(v)) + 8  # quotes, comma and space, URL-encoded
        if out[-1] and (len(out[-1]) >= _LOOKUP_VALUES or size + cost > _LOOKUP_CHARS):
            out.append([])
            size = 0
        out[-1].append(v)
        size += cost
    return [c for c in out if c]


def _rows(texts: dict[str, pa.Array], describe: Describe, n: int) -> list[dict[str, Any]]:
    """Each row as the JSON Salesforce takes (Collections)."""
    columns = {name: [_typed(v, describe.fields[name]) for v in text.to_pylist()]
               for name, text in texts.items()}
    rows = [dict(zip(columns, vals, strict=True)) for vals in zip(*columns.values(),
                                                                  strict=True)]
    return rows or [{} for _ in range(n)]


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
