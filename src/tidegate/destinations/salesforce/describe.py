"""An sObject's describe, and what it says a sync may write and how.

Before anything is written, the sync's fields are checked against the object's
describe (``GET sobjects/{object}/describe``): a field the object does not have,
or one the run's operation cannot write (not createable for an insert, not
updateable for an update, an upsert key that is not an external id), is a
problem naming the field. ``convert`` turns a batch's typed Arrow columns into the
text Salesforce takes for each field type, column at a time, and names the rows
whose value no field of that type can hold (too long, outside its precision, not
a value of a restricted picklist), so they are refused before a request is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tidegate.destinations.columns import calendar_day, plain
from tidegate.destinations.salesforce.api import SalesforceApi
from tidegate.errors import DestinationError

_NUMBER = frozenset({"double", "currency", "percent", "int", "long"})
_TEXT = frozenset({"string", "textarea", "email", "phone", "url", "picklist",
                   "multipicklist", "combobox", "id", "reference", "encryptedstring"})


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str
    createable: bool
    updateable: bool
    nillable: bool
    external_id: bool
    length: int
    precision: int
    scale: int
    picklist: tuple[str, ...]
    restricted: bool

    @classmethod
    def of(cls, raw: dict[str, Any]) -> FieldInfo:
        return cls(
            name=str(raw["name"]), type=str(raw["type"]),
            createable=bool(raw.get("createable")), updateable=bool(raw.get("updateable")),
            nillable=bool(raw.get("nillable", True)), external_id=bool(raw.get("externalId")),
            length=int(raw.get("length") or 0), precision=int(raw.get("precision") or 0),
            scale=int(raw.get("scale") or 0),
            picklist=tuple(str(v["value"]) for v in raw.get("picklistValues") or []
                           if v.get("active", True)),
            restricted=bool(raw.get("restrictedPicklist")),
        )


@dataclass(frozen=True)
class Describe:
    object: str
    fields: dict[str, FieldInfo]

    def problems(self, writes: list[str], operation: str, key: str | None = None) -> list[str]:
        """What stops ``operation`` from writing ``writes`` (and matching on ``key``)."""
        out = []
        for name in writes:
            info = self.fields.get(name)
            if info is None:
                close = sorted(f for f in self.fields if f.lower() == name.lower())
                hint = f" (did you mean {close[0]}?)" if close else ""
                out.append(f"{self.object} has no field {name}{hint}")
            elif operation in ("insert", "upsert") and not info.createable and name != key:
                out.append(f"{self.object}.{name} cannot be set on create (it is read-only)")
            elif operation in ("update", "upsert") and not info.updateable and name not in (
                    key, "Id"):
                out.append(f"{self.object}.{name} cannot be updated (it is read-only)")
        if key is not None and key != "Id":
            info = self.fields.get(key)
            if info is None:
                out.append(f"{self.object} has no field {key} to match records on")
            elif operation == "upsert" and not info.external_id:
                out.append(f"{self.object}.{key} is not an external id field, so records "
                           "cannot be upserted on it")
        return out


def fetch(api: SalesforceApi, sobject: str) -> Describe:
    response = api.request("GET", f"sobjects/{sobject}/describe")
    if response.status_code == 404:
        raise DestinationError(f"Salesforce has no object {sobject} (or this user cannot see "
                               "it). Fix: check `object` and the user's permissions")
    if response.status_code != 200:
        raise DestinationError(f"describing {sobject} failed: HTTP {response.status_code}")
    body = response.json()
    return Describe(str(body["name"]), {
        str(f["name"]): FieldInfo.of(f) for f in body.get("fields", [])})


def convert(column: pa.Array | pa.ChunkedArray, info: FieldInfo) -> tuple[pa.Array, pa.Array]:
    """``column`` as the text Salesforce takes for ``info``'s type, and per row the reason
    it cannot be sent (null where it can).

    Never raises for a value: one that cannot become the field's type (text that is
    not a number, a date that does not exist, NaN) gets a reason, and its text is null.
    """
    values = plain(column)
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    kind = info.type
    try:
        if kind == "boolean":
            text, reasons = _as_bool(values, info)
        elif kind == "date":
            text, reasons = _as_date(values, info)
        elif kind == "datetime":
            text, reasons = _as_datetime(values, info)
        elif kind in _NUMBER:
            text, reasons = _number(values, info)
        else:
            text, reasons = _as_text(values, info)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # A column of a type no value of which the field can take (a list into a number).
        text = pa.nulls(len(values), pa.string())
        reasons = _reason(pc.is_valid(values), f"{info.name} cannot hold a {values.type} "
                                                "value", _none(len(values)))
    return _unless(text, reasons), reasons


def screen(table: pa.Table, describe: Describe, writes: frozenset[str] | None = None
           ) -> pa.Array:
    """Per row of ``table``, the first reason Salesforce could not take its values (null
    when it can): conversions that fail, and empty values in required fields."""
    reasons = _none(table.num_rows)
    for name in table.column_names:
        info = describe.fields.get(name)
        if info is None or (writes is not None and name not in writes):
            continue
        column = table.column(name).combine_chunks()
        _, why = convert(column, info)
        reasons = pc.coalesce(reasons, why)
        if not info.nillable and info.type not in ("boolean", "id"):
            empty = pc.is_null(column)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                empty = pc.or_kleene(empty, pc.equal(pc.utf8_length(column), 0))
            reasons = _reason(empty, f"{name} is required and the value is empty", reasons)
    return reasons


_NUMBER_TEXT = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_DATETIME_TEXT = (r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?"
                  r"(Z|[+-]\d{2}:?\d{2})?$")
_EMAIL_TEXT = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_ID_TEXT = r"^[a-zA-Z0-9]{15}([a-zA-Z0-9]{3})?$"
_TRUE = pa.array(["true", "1", "yes", "y", "t"])
_FALSE = pa.array(["false", "0", "no", "n", "f"])


def _number(values: pa.Array, info: FieldInfo) -> tuple[pa.Array, pa.Array]:
    reasons = _none(len(values))
    if pa.types.is_boolean(values.type):
        raise pa.ArrowTypeError("a boolean is not a number")
    if pa.types.is_string(values.type):
        numeric = pc.match_substring_regex(values, _NUMBER_TEXT)
        reasons = _reason(pc.invert(numeric), f"{info.name} is not a number", reasons)
        values = pc.utf8_trim_whitespace(pc.if_else(numeric, values, pa.scalar(None,
                                                                                 pa.string())))
    number = values if pa.types.is_floating(values.type) or pa.types.is_integer(
        values.type) else pc.cast(values, pa.float64(), safe=False)
    as_float = number.cast(pa.float64())
    finite = pc.is_finite(as_float)
    reasons = _reason(pc.invert(finite), f"{info.name} is not a finite number", reasons)
    as_float = pc.if_else(finite, as_float, pa.scalar(None, pa.float64()))
    if info.precision:
        # Digits left of the point: precision minus scale (an APS__c of 5,2 holds 999.99).
        limit = 10.0 ** (info.precision - info.scale)
        too_big = pc.greater_equal(pc.abs(pc.round(as_float, info.scale)), limit)
        reasons = _reason(too_big, f"{info.name} does not fit {info.precision} digits with "
                                   f"{info.scale} after the point", reasons)
    if info.type in ("int", "long") or (info.scale == 0 and pa.types.is_integer(number.type)):
        text = pc.round(as_float, 0).cast(pa.int64()).cast(pa.string())
    else:
        rounded = pc.round(as_float, info.scale)
        text = rounded.cast(pa.string())
        # Arrow writes very large or small floats with an exponent, which a CSV
        # number cell does not take: those few are written out in full.
        exponent = pc.fill_null(pc.match_substring(text, "e"), False)
        if pc.any(exponent).as_py():
            full = pc.cast(pc.if_else(exponent, rounded, pa.scalar(None, pa.float64())),
                           pa.decimal128(38, info.scale), safe=False).cast(pa.string())
            text = pc.if_else(exponent, full, text)
    return _unless(text, reasons), reasons


def _as_bool(values: pa.Array, info: FieldInfo) -> tuple[pa.Array, pa.Array]:
    reasons = _none(len(values))
    if pa.types.is_string(values.type):
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        yes, no = pc.is_in(lowered, value_set=_TRUE), pc.is_in(lowered, value_set=_FALSE)
        reasons = _reason(pc.and_(pc.is_valid(values), pc.invert(pc.or_(yes, no))),
                          f"{info.name} is not true or false", reasons)
        flags = pc.if_else(yes, True, pc.if_else(no, False, pa.scalar(None, pa.bool_())))
    elif pa.types.is_boolean(values.type) or pa.types.is_integer(values.type):
        flags = values if pa.types.is_boolean(values.type) else pc.cast(values, pa.bool_())
    else:
        raise pa.ArrowTypeError(f"{values.type} is not a boolean")
    text = pc.if_else(flags, pa.scalar("true"), pa.scalar("false"))
    return _unless(text, reasons), reasons


def _as_date(values: pa.Array, info: FieldInfo) -> tuple[pa.Array, pa.Array]:
    reasons = _none(len(values))
    if pa.types.is_string(values.type):
        text = pc.strftime(calendar_day(values), format="%Y-%m-%d")
        reasons = _reason(pc.and_(pc.is_valid(values), pc.is_null(text)),
                          f"{info.name} is not a date (YYYY-MM-DD)", reasons)
        return _unless(text, reasons), reasons
    if pa.types.is_timestamp(values.type) and values.type.tz is not None:
        values = values.cast(pa.timestamp("s", tz="UTC"))
    text = pc.strftime(values.cast(pa.timestamp("s")) if not pa.types.is_timestamp(
        values.type) else values, format="%Y-%m-%d")
    return text, reasons


def _as_datetime(values: pa.Array, info: FieldInfo) -> tuple[pa.Array, pa.Array]:
    reasons = _none(len(values))
    if pa.types.is_string(values.type):
        good = pc.match_substring_regex(values, _DATETIME_TEXT)
        reasons = _reason(pc.invert(good), f"{info.name} is not an ISO 8601 date and time",
                          reasons)
        return _unless(values, reasons), reasons
    stamps = values
    if pa.types.is_timestamp(values.type) and values.type.tz is not None:
        stamps = values.cast(pa.timestamp("ms", tz="UTC"))
    elif pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        stamps = values.cast(pa.timestamp("ms"))  # naive stamps are taken as UTC
    else:
        raise pa.ArrowTypeError(f"{values.type} is not a date and time")
    # %S carries the milliseconds: 2024-01-02T03:04:05.000Z
    return pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%SZ"), reasons


def _as_text(values: pa.Array, info: FieldInfo) -> tuple[pa.Array, pa.Array]:
    text = values if pa.types.is_string(values.type) else values.cast(pa.string())
    reasons = _none(len(values))
    if info.length:
        too_long = pc.greater(pc.utf8_length(text), info.length)
        reasons = _reason(too_long, f"{info.name} is longer than {info.length} characters",
                          reasons)
    if info.type == "email":
        reasons = _reason(pc.invert(pc.match_substring_regex(text, _EMAIL_TEXT)),
                          f"{info.name} is not an email address", reasons)
    if info.type in ("id", "reference"):
        reasons = _reason(pc.invert(pc.match_substring_regex(text, _ID_TEXT)),
                          f"{info.name} is not a Salesforce record Id", reasons)
    if info.type == "picklist" and info.restricted and info.picklist:
        allowed = pa.array(list(info.picklist), pa.string())
        outside = pc.and_(pc.is_valid(text), pc.invert(pc.is_in(text, value_set=allowed)))
        reasons = _reason(outside, f"{info.name} is not one of its picklist values", reasons)
    return text, reasons


def _none(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def _unless(text: pa.Array, reasons: pa.Array) -> pa.Array:
    """``text`` where no reason was found, null where one was."""
    return pc.if_else(pc.is_null(reasons), text, pa.scalar(None, pa.string()))


def _reason(mask: pa.Array, reason: str, reasons: pa.Array) -> pa.Array:
    """Add ``reason`` to rows where ``mask`` is true and no earlier reason was found."""
    hit = pc.fill_null(mask, False)
    return pc.if_else(pc.and_(hit, pc.is_null(reasons)), pa.scalar(reason), reasons)
