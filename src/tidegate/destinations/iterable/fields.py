"""Rows as the JSON Iterable takes, and the failures Iterable reports inside a 200.

Values keep their JSON types (a field's type is fixed in an Iterable project by
the first value it gets, so an integer must stay an integer); dates become
Iterable's date text (``2016-08-02`` / ``2016-08-02 18:53:45 +00:00``) so the
project types them as dates; a number JSON cannot carry (NaN, infinity) refuses
its row. Iterable's bulk endpoints answer 200 with ``failCount`` and
``failedUpdates`` listing the emails and userIds that failed, by cause:
``failures`` reads them back into reasons per identifier.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

# failedUpdates cause (without its Emails/UserIds suffix) → what it means for the row.
CAUSES = {
    "invalid": "Iterable refused the identifier as malformed",
    "notFound": "no such user in Iterable",
    "invalidData": "a data field's value does not fit the type that field already has in "
                   "the Iterable project (types never change once set)",
    "conflict": "another Iterable user already has this identifier",
    "forgotten": "the user was forgotten (GDPR) in Iterable and cannot be written",
}
_SUFFIXES = ("Emails", "UserIds")


class Unsendable(ValueError):
    """A value Iterable's JSON cannot carry."""


def json_value(value: Any, name: str) -> Any:
    """``value`` as Iterable's JSON: dates as Iterable's date text, the rest as JSON types."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is None else value.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S +00:00")  # naive stamps are taken as UTC
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, Decimal):
        value = float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise Unsendable(f"{name} is {value}, which JSON cannot carry")
    if isinstance(value, bytes):
        raise Unsendable(f"{name} is binary, which JSON cannot carry")
    if isinstance(value, dict):
        return {str(k): json_value(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [json_value(v, name) for v in value]
    return value


def epoch_seconds(value: Any, name: str) -> int:
    """An event's ``createdAt``: the Unix timestamp Iterable expects, in seconds."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(moment.timestamp())
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise Unsendable(f"{name} must be a timestamp (or Unix seconds) for Iterable's createdAt")


def failures(doc: Any) -> dict[str, tuple[str, str]]:
    """(cause, reason) by failing email (lower-cased) or userId, from a bulk answer's body;
    the cause is failedUpdates' without its suffix (``notFound``, ``invalidData``…)."""
    if not isinstance(doc, dict):
        return {}
    out: dict[str, tuple[str, str]] = {}
    detailed = doc.get("failedUpdates")
    if isinstance(detailed, dict):
        for cause, idents in detailed.items():
            base = next((cause.removesuffix(s) for s in _SUFFIXES if cause.endswith(s)), cause)
            reason = f"{CAUSES.get(base, 'Iterable refused this user')} (failedUpdates.{cause})"
            for ident in _strings(idents):
                out.setdefault(_key(ident, cause.endswith("Emails")), (base, reason))
    # The deprecated top-level lists name every failure, whatever its cause.
    for cause, is_email in (("invalidEmails", True), ("invalidUserIds", False)):
        for ident in _strings(doc.get(cause)):
            out.setdefault(_key(ident, is_email),
                           ("invalid", f"Iterable refused this user ({cause})"))
    return out


def identity(value: Any, by_email: bool) -> str:
    return _key(str(value), by_email)


def _key(ident: str, is_email: bool) -> str:
    return ident.lower() if is_email else ident


def _strings(items: Any) -> Iterable[str]:
    return [str(i) for i in items] if isinstance(items, list) else []
