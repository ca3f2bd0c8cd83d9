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
    it cannot be sent (null where it can)."""
    values = pa.chunked_array([column]).combine_chunks() if isinstance(
        column, pa.Array) else column.combine_chunks()
    no_reason = pa.nulls(len(values), pa.string())
    kind = info.type
    if kind == "boolean":
        return _text(_as_bool(values)), no_reason
    if kind == "date":
        return _text(pc.strftime(values.cast(pa.timestamp("s")), format="%Y-%m-%d")
                     if not pa.types.is_string(values.type) else values), no_reason
    if kind == "datetime":
        return _text(_as_datetime(values)), no_reason
    if kind in _NUMBER:
        return _number(values, info)
    text = values if pa.types.is_string(values.type) else values.cast(pa.string())
    reasons = no_reason
    if info.length:
        too_long = pc.greater(pc.utf8_length(text), info.length)
        reasons = _reason(too_long, f"{info.name} is longer than {info.length} characters",
                          reasons)
    if kind == "picklist" and info.restricted and info.picklist:
        allowed = pa.array(list(info.picklist), pa.string())
        outside = pc.and_(pc.is_valid(text), pc.invert(pc.is_in(text, value_set=allowed)))
        reasons = _reason(outside, f"{info.name} is not one of its picklist values", reasons)
    return text, reasons


def _number(values: pa.Array, info: FieldInfo) -> tuple[pa.Array, pa.Array]:
    number = values if pa.types.is_floating(values.type) or pa.types.is_integer(
        values.type) else pc.cast(values, pa.float64(), safe=False)
    as_float = number.cast(pa.float64())
    reasons = pa.nulls(len(values), pa.string())
    if info.precision:
        # Digits left of the point: precision minus scale (an APS__c of 5,2 holds 999.99).
        limit = 10.0 ** (info.precision - info.scale)
        too_big = pc.greater_equal(pc.abs(as_float), limit)
        reasons = _reason(too_big, f"{info.name} does not fit {info.precision} digits with "
                                   f"{info.scale} after the point", reasons)
    if info.type == "int" or (info.scale == 0 and pa.types.is_integer(number.type)):
        text = pc.round(as_float, 0).cast(pa.int64()).cast(pa.string())
    else:
        text = pc.round(as_float, info.scale).cast(pa.string())
    return text, reasons


def _as_bool(values: pa.Array) -> pa.Array:
    flags = values if pa.types.is_boolean(values.type) else pc.cast(values, pa.bool_())
    return pc.if_else(flags, pa.scalar("true"), pa.scalar("false"))


def _as_datetime(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type):
        return values
    stamps = values
    if pa.types.is_timestamp(values.type) and values.type.tz is not None:
        stamps = values.cast(pa.timestamp("ms", tz="UTC"))
    elif pa.types.is_timestamp(values.type):
        stamps = values.cast(pa.timestamp("ms"))  # naive stamps are taken as UTC
    return pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%SZ")  # %S carries the milliseconds


def _text(values: pa.Array) -> pa.Array:
    return values if pa.types.is_string(values.type) else values.cast(pa.string())


def _reason(mask: pa.Array, reason: str, reasons: pa.Array) -> pa.Array:
    """Add ``reason`` to rows where ``mask`` is true and no earlier reason was found."""
    hit = pc.fill_null(mask, False)
    return pc.if_else(pc.and_(hit, pc.is_null(reasons)), pa.scalar(reason), reasons)
