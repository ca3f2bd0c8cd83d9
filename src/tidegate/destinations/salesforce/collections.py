"""sObject Collections: the synchronous write path, up to 200 records a request.

Used for small runs. Results come back one per record, in request order
(unlike Bulk API results), each with its own success flag and errors, so one
bad record never sinks the others (``allOrNone`` is false). A record that fails
with ``UNABLE_TO_LOCK_ROW`` (another transaction holds it) is sent again on its
own a few times before it is rejected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from tidegate.destinations.salesforce.api import SalesforceApi
from tidegate.errors import DestinationError

MAX_RECORDS = 200
LOCK_RETRIES = 3
_LOCKED = "UNABLE_TO_LOCK_ROW"


def write(
    api: SalesforceApi,
    sobject: str,
    operation: str,
    records: Sequence[dict[str, Any]],
    *,
    external_id: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str | None]:
    """Send ``records``; per record, None when accepted or the reason it was refused.

    ``operation`` is ``insert``, ``update`` (records carry ``Id``), ``upsert``
    (records carry ``external_id``) or ``delete`` (records are ``{"Id": …}``).
    """
    outcome: list[str | None] = [None] * len(records)
    pending = list(range(len(records)))
    for attempt in range(LOCK_RETRIES + 1):
        locked = []
        for start in range(0, len(pending), MAX_RECORDS):
            part = pending[start:start + MAX_RECORDS]
            results = _send(api, sobject, operation, [records[i] for i in part], external_id)
            for i, result in zip(part, results, strict=True):
                error = _error(result)
                if error is not None and error[0] == _LOCKED and attempt < LOCK_RETRIES:
                    locked.append(i)
                outcome[i] = None if error is None else f"{error[0]}: {error[1]}"
        if not locked:
            break
        pending = locked
        sleep(0.2 * (attempt + 1))  # the other transaction usually holds the row briefly
    return outcome


def _send(api: SalesforceApi, sobject: str, operation: str, part: list[dict[str, Any]],
          external_id: str | None) -> list[dict[str, Any]]:
    typed = [{"attributes": {"type": sobject}, **r} for r in part]
    if operation == "insert":
        response = api.request("POST", "composite/sobjects",
                               json={"allOrNone": False, "records": typed})
    elif operation == "update":
        response = api.request("PATCH", "composite/sobjects",
                               json={"allOrNone": False, "records": typed})
    elif operation == "upsert":
        response = api.request("PATCH", f"composite/sobjects/{sobject}/{external_id}",
                               json={"allOrNone": False, "records": typed})
    else:
        response = api.request("DELETE", "composite/sobjects", params={
            "ids": ",".join(str(r["Id"]) for r in part), "allOrNone": "false"})
    if response.status_code != 200:
        raise DestinationError(f"Salesforce refused a {operation} of {len(part)} {sobject} "
                               f"record(s): HTTP {response.status_code} {_body(response.text)}")
    results = response.json()
    if not isinstance(results, list) or len(results) != len(part):
        raise DestinationError(f"Salesforce answered a {operation} of {len(part)} records with "
                               f"{len(results) if isinstance(results, list) else 'no'} results")
    return results


def _error(result: dict[str, Any]) -> tuple[str, str] | None:
    if result.get("success"):
        return None
    errors = result.get("errors") or [{}]
    first = errors[0]
    fields = first.get("fields") or []
    message = str(first.get("message", "refused"))
    if fields:
        message += f" ({', '.join(map(str, fields))})"
    return str(first.get("statusCode", "ERROR")), message


def _body(text: str) -> str:
    try:
        return json.dumps(json.loads(text))[:300]
    except ValueError:
        return text[:300]
