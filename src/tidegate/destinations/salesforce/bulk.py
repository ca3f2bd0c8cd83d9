"""Bulk API 2.0 ingest: a batch's records written as CSV jobs that survive a crash.

One job per upload: create it (``POST jobs/ingest``), record its id in the
sync's journal, upload the CSV (``PUT`` its ``contentUrl``, once per job), mark it
``UploadComplete``, poll until it ends, then read ``successfulResults``,
``failedResults`` and ``unprocessedrecords``. Result rows come back in no
particular order, so each is matched to its record by the key column the upload
carried (the external id, or ``Id``), never by position.

A batch goes up in as few uploads as the limit allows: at most 150 MB of base64
content per upload, and since the documentation says base64 "can increase the
data size by approximately 50%", at most two thirds of that as CSV.
https://developer.salesforce.com/docs/platform/api-asynch/guide/upload-job-data.html

Crash safety: the journal entry of a batch names its jobs, written before each
upload and again once the upload is in. A rerun (or a retry of the batch) finds
the entry and carries each job on from its state instead of uploading again:
it waits for a running job, reads a finished one's results, closes an ``Open``
job whose upload went in, and aborts one whose upload may not have (nothing of
an open job is processed), uploading that part again. The entry stays until
the run is over and the batch's outcome committed (the destination forgets it
then), so a crash between reading the results and committing them reads them
again rather than uploading.

Records that fail with ``UNABLE_TO_LOCK_ROW`` are sent again, in a job of
their own, a few times before they are rejected.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from tidegate.destinations.salesforce import csvdata
from tidegate.destinations.salesforce.api import SalesforceApi
from tidegate.errors import DestinationError, RetryableError
from tidegate.journal import Journal
from tidegate.redact import redact

log = logging.getLogger("tidegate")

MAX_UPLOAD_BASE64 = 150_000_000  # "150 MB of base64 encoded content" per upload
MAX_RECORDS = 150_000_000  # records a day; no other per-job cap is documented
CONCURRENCY = 2  # jobs in flight per run: each holds up to 100 MB of CSV in memory
LOCK_RETRIES = 3
TERMINAL = ("JobComplete", "Failed", "Aborted")
PREFIX = "bulk:"  # journal names of this module
_LOCKED = "UNABLE_TO_LOCK_ROW"
_MAX_POLL_S = 30.0


def raw_budget(upload_limit: int = MAX_UPLOAD_BASE64) -> int:
    """CSV bytes one upload may carry: the base64 limit less the documented 50 % growth."""
    return upload_limit * 2 // 3


class JobFailed(DestinationError):
    """A Bulk job that ended ``Failed`` without processing a record."""


@dataclass
class Upload:
    """One operation's records as CSV: the header, a line per record, and per record
    the text of its key column (what a result row is matched on)."""

    operation: str  # insert, update, upsert, delete or hardDelete
    key_column: str
    head: bytes
    lines: pa.Array
    keys: pa.Array
    external_id: str | None = None


@dataclass
class Stats:
    jobs: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    resumed: int = 0
    records: int = 0
    lock_retries: int = 0
    wait_s: float = 0.0  # waiting for Salesforce to process jobs
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, float]:
        return {"bulk_jobs": self.jobs, "bulk_uploads": self.uploads,
                "bulk_upload_bytes": self.upload_bytes, "bulk_jobs_resumed": self.resumed,
                "bulk_records": self.records, "bulk_lock_retries": self.lock_retries,
                "bulk_wait_s": round(self.wait_s, 3)}


class BulkWriter:
    """Writes uploads through Bulk API 2.0 jobs, journaled under the batch's name."""

    def __init__(
        self,
        api: SalesforceApi,
        sobject: str,
        journal: Journal | None,
        *,
        budget: int,
        poll_interval: float = 1.0,
        timeout: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.sobject = sobject
        self.journal = journal
        self.budget = budget
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.sleep, self.clock = sleep, clock
        self.stats = Stats()

    # The batch --------------------------------------------------------------------

    def write(self, name: str, upload: Upload) -> list[str | None]:
        """Per line of ``upload``, None when Salesforce took the record, else why not."""
        entry = self._entry(name)
        outcome: list[str | None] = [None] * len(upload.lines)
        pending = pa.array(range(len(upload.lines)), pa.int64())
        for attempt in range(LOCK_RETRIES + 1):
            locked: list[int] = []
            lines = upload.lines.take(pending)
            sizes = pc.binary_length(lines).cast(pa.int64())
            for part, (start, stop) in enumerate(csvdata.parts(
                    sizes, max(1, self.budget - len(upload.head)))):
                rows = pending.slice(start, stop - start)
                try:
                    results = self._job(name, entry, f"{attempt}.{part}", upload,
                                        lines.slice(start, stop - start),
                                        upload.keys.take(rows))
                except JobFailed:
                    self._forget(name)  # a new job, not this one, next time
                    raise
                for i, why in zip(rows.to_pylist(), results, strict=True):
                    outcome[i] = why
                    if why is not None and why.startswith(_LOCKED) and attempt < LOCK_RETRIES:
                        locked.append(i)
            if not locked:
                break
            pending = pa.array(locked, pa.int64())
            self.stats.add(lock_retries=len(locked))
            # The other transaction usually holds the rows briefly: about a poll's wait.
            self.sleep(self.poll_interval * (attempt + 1))
        return outcome

    def _forget(self, name: str) -> None:
        if self.journal is not None:
            self.journal.forget(name)

    def _entry(self, name: str) -> dict[str, Any]:
        raw = self.journal.get(name) if self.journal is not None else None
        if raw:
            try:
                entry = json.loads(raw)
                if isinstance(entry, dict) and isinstance(entry.get("jobs"), dict):
                    return entry
            except ValueError:
                pass
        return {"jobs": {}}

    def _note(self, name: str, entry: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal.put(name, json.dumps(entry, sort_keys=True))

    # One job ---------------------------------------------------------------------

    def _job(self, name: str, entry: dict[str, Any], part: str, upload: Upload,
             lines: pa.Array, keys: pa.Array) -> list[str | None]:
        """Send one part as a job, or carry on its recorded job; per line, the outcome."""
        info = self._resume(entry["jobs"].get(part))
        if info is None:
            info = self._create(upload)
            entry["jobs"][part] = {"id": info["id"], "uploaded": False}
            self._note(name, entry)  # before the upload: a rerun must find this job
            data = csvdata.body(upload.head, lines)
            self._upload(info, data)
            entry["jobs"][part]["uploaded"] = True
            self._note(name, entry)
            self.close_job(str(info["id"]))
            self.stats.add(jobs=1, uploads=1, upload_bytes=len(data), records=len(lines))
        else:
            self.stats.add(resumed=1)
        done = self.wait(str(info["id"]))
        return self._outcome(done, upload, keys)

    def _resume(self, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
        """The job recorded for a part, carried on; None when a new one must be made."""
        if not recorded:
            return None
        job_id = str(recorded["id"])
        info = self.info(job_id)
        if info is None:  # deleted (jobs go after 7 days): its rows go up again
            return None
        if info.get("state") == "Aborted" and not recorded.get("uploaded"):
            return None  # aborted here, its upload never known to be in: upload anew
        if info.get("state") == "Open":
            if recorded.get("uploaded"):
                self.close_job(job_id)
                return info
            # The upload may have gone in or not; nothing of an open job is processed,
            # so it is aborted and the part uploaded again.
            self.set_state(job_id, "Aborted")
            return None
        log.info("Bulk job %s (%s) found in the journal, carried on", job_id, info.get("state"))
        return info

    def info(self, job_id: str) -> dict[str, Any] | None:
        response = self.api.request("GET", f"jobs/ingest/{job_id}")
        if response.status_code == 404:
            return None
        return _json(response, f"reading Bulk job {job_id}")

    def wait(self, job_id: str) -> dict[str, Any]:
        """Poll until the job ends, backing off; a timeout leaves it for the next run."""
        started = self.clock()
        try:
            return self._poll(job_id, started + self.timeout)
        finally:
            self.stats.add(wait_s=self.clock() - started)

    def _poll(self, job_id: str, deadline: float) -> dict[str, Any]:
        interval = self.poll_interval
        while True:
            try:
                info = self.info(job_id)
            except RetryableError as exc:  # throttled or a blip: polling is waiting anyway
                log.info("polling Bulk job %s: %s", job_id, exc)
                info = {"state": "?"}
            if info is None:
                raise DestinationError(f"Salesforce no longer has Bulk job {job_id}. Fix: run "
                                       "again; the records it held are sent again")
            if info.get("state") in TERMINAL:
                return info
            if self.clock() >= deadline:
                raise DestinationError(
                    f"Bulk job {job_id} is still {info.get('state')} after "
                    f"{self.timeout:.0f} s. The next run waits for it and reads its results "
                    "(raise `bulk_timeout_s` to wait longer)")
            self.sleep(interval)
            interval = min(interval * 1.5, max(self.poll_interval, _MAX_POLL_S))

    def _create(self, upload: Upload) -> dict[str, Any]:
        doc: dict[str, Any] = {"object": self.sobject, "operation": upload.operation,
                               "contentType": "CSV", "columnDelimiter": "COMMA",
                               "lineEnding": "LF"}
        if upload.operation == "upsert":
            doc["externalIdFieldName"] = upload.external_id
        response = self.api.request("POST", "jobs/ingest", json=doc)
        if response.status_code not in (200, 201):
            fix = (" Fix: the user needs the \"Bulk API Hard Delete\" permission, or set "
                   "`hard_delete: false`" if upload.operation == "hardDelete" else "")
            raise DestinationError(f"Salesforce refused to create a Bulk {upload.operation} "
                                   f"job on {self.sobject}: {_error(response)}.{fix}")
        return _json(response, "creating a Bulk job")

    def _upload(self, info: dict[str, Any], data: bytes) -> None:
        path = str(info.get("contentUrl") or f"jobs/ingest/{info['id']}/batches")
        if path.startswith("services/"):
            path = "/" + path  # contentUrl is relative to the instance
        response = self.api.request("PUT", path, content=data,
                                    headers={"content-type": "text/csv"})
        if response.status_code not in (200, 201):
            raise DestinationError(f"Salesforce refused the upload of Bulk job {info['id']} "
                                   f"({len(data):,} bytes): {_error(response)}")

    def close_job(self, job_id: str) -> None:
        self.set_state(job_id, "UploadComplete")

    def set_state(self, job_id: str, state: str) -> None:
        response = self.api.request("PATCH", f"jobs/ingest/{job_id}", json={"state": state})
        if response.status_code != 200:
            raise DestinationError(f"Salesforce refused to set Bulk job {job_id} to {state}: "
                                   f"{_error(response)}")

    # Results ---------------------------------------------------------------------

    def _outcome(self, info: dict[str, Any], upload: Upload, keys: pa.Array
                 ) -> list[str | None]:
        job_id = str(info["id"])
        processed = int(info.get("numberRecordsProcessed") or 0)
        failed = int(info.get("numberRecordsFailed") or 0)
        if info.get("state") == "Failed" and not processed:
            raise JobFailed(f"Salesforce's Bulk job {job_id} failed: "
                                   f"{info.get('errorMessage') or 'no reason given'}")
        why: list[str | None] = [f"Salesforce returned no result for this record (Bulk job "
                                 f"{job_id})"] * len(keys)
        if processed > failed:
            ok = self._results(job_id, "successfulResults", upload.key_column)
            for i in _positions(ok[upload.key_column], keys):
                why[i] = None
        if failed:
            bad = self._results(job_id, "failedResults", upload.key_column)
            errors = bad["sf__Error"].to_pylist() if "sf__Error" in bad.column_names else []
            for i, error in zip(_positions(bad[upload.key_column], keys, keep_missing=True),
                                errors, strict=True):
                if i >= 0:
                    why[i] = csvdata.error_text(str(error))
        if info.get("state") != "JobComplete" and processed < len(keys):
            left = self._results(job_id, "unprocessedrecords", upload.key_column)
            reason = (f"not processed: Bulk job {job_id} ended {info.get('state')}"
                      + (f" ({info['errorMessage']})" if info.get("errorMessage") else ""))
            for i in _positions(left[upload.key_column], keys):
                why[i] = reason
        return why

    def _results(self, job_id: str, kind: str, key_column: str) -> pa.Table:
        response = self.api.request("GET", f"jobs/ingest/{job_id}/{kind}/")
        if response.status_code != 200:
            raise DestinationError(f"reading the {kind} of Bulk job {job_id} failed: "
                                   f"{_error(response)}")
        table = csvdata.read(response.content)
        if key_column not in table.column_names:
            if not table.num_rows:
                return pa.table({key_column: pa.array([], pa.string()),
                                 "sf__Error": pa.array([], pa.string())})
            raise DestinationError(f"the {kind} of Bulk job {job_id} has no {key_column} "
                                   "column to match records by")
        return table


def _positions(found: pa.ChunkedArray | pa.Array, keys: pa.Array, *,
               keep_missing: bool = False) -> list[int]:
    """Where each result row's key is among ``keys`` (-1, or left out, if nowhere)."""
    at = pc.index_in(found, value_set=keys)
    if keep_missing:
        return [-1 if i is None else int(i) for i in at.to_pylist()]
    return [int(i) for i in pc.drop_null(at).to_pylist()]


def _json(response: httpx.Response, doing: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise DestinationError(f"{doing} failed: {_error(response)}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise DestinationError(f"{doing}: Salesforce answered something other than a JobInfo")
    return body


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code} {redact(response.text[:200])}"
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return (f"HTTP {response.status_code} {body[0].get('errorCode', '')}: "
                f"{redact(str(body[0].get('message', '')))}")
    return f"HTTP {response.status_code} {redact(json.dumps(body)[:200])}"
