"""An object type's properties, what they let a sync write, and values as HubSpot takes them.

Before anything is sent the sync's fields are checked against
``GET /crm/v3/properties/{objectType}``: a property the object lacks, one whose
value is read-only or calculated, or a match key that cannot identify a record
(neither a unique-value property nor ``email`` on contacts nor the record id
``hs_object_id``) is a problem naming it. ``convert`` turns a batch's typed
Arrow columns into HubSpot's string forms column at a time — numbers as
decimal text, checkboxes ``true``/``false``, multiple checkboxes joined by
``;``, dates as epoch milliseconds at midnight UTC, datetimes as epoch
milliseconds — and names each row whose value no property of that type can
hold (an option the property lacks, a time of day in a date, a day that does
not exist, text beyond 65,536 characters). ``screen`` gives those reasons for
a whole row, with an empty match value, so the planner makes such rows
invalid before anything is sent. Nulls and empty text become the empty string,
which clears a property.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tidegate.destinations.columns import calendar_day, is_text, plain

RECORD_ID = "hs_object_id"
MAX_TEXT = 65_536
_DAY_MS = 86_400_000
_NUMBER = r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$"
_ISO_MOMENT = (r"^\d{4}-\d{2}-\d{2}[T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?"
               r"(Z|[+-]([01]\d|2[0-3]):?[0-5]\d)?$")
_RECORD_ID_TEXT = r"^\d+$"
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s.]+$"


@dataclass(frozen=True)
class PropertyInfo:
    name: str
    type: str  # bool, enumeration, date, datetime, string, number, phone_number
    field_type: str
    options: tuple[str, ...]
    unique: bool
    read_only: bool

    @classmethod
    def of(cls, raw: dict[str, Any]) -> PropertyInfo:
        meta = raw.get("modificationMetadata") or {}
        return cls(
            name=str(raw["name"]), type=str(raw.get("type", "string")),
            field_type=str(raw.get("fieldType", "")),
            options=tuple(str(o["value"]) for o in raw.get("options") or []),
            unique=bool(raw.get("hasUniqueValue")),
            read_only=bool(meta.get("readOnlyValue") or raw.get("calculated")),
        )

    @property
    def kind(self) -> str:
        """How values are written: bool, single, multiple, date, datetime, number or text."""
        if self.type == "bool" or self.field_type == "booleancheckbox":
            return "bool"
        if self.type == "enumeration":
            return "multiple" if self.field_type == "checkbox" else "single"
        if self.type in ("date", "datetime", "number"):
            return self.type
        return "text"


@dataclass(frozen=True)
class Properties:
    object_type: str
    by_name: dict[str, PropertyInfo]

    def identifies(self, name: str) -> bool:
        """Whether ``name`` can be an ``idProperty`` (or is the record id)."""
        if name == RECORD_ID:
            return True
        info = self.by_name.get(name)
        return info is not None and (info.unique or (name == "email" and self.is_contacts))

    @property
    def is_contacts(self) -> bool:
        return self.object_type in ("contacts", "contact", "0-1")

    def problems(self, writes: list[str], mode: str, key: str) -> list[tuple[str, str, str]]:
        """(key, message, fix) for each field the sync cannot write or match on."""
        out: list[tuple[str, str, str]] = []
        for name in writes:
            info = self.by_name.get(name)
            if info is None:
                close = difflib.get_close_matches(name, list(self.by_name), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                out.append(("fields", f"{self.object_type} has no property {name}{hint}",
                            "map to properties the object has (GET /crm/v3/properties/"
                            f"{self.object_type} lists them), or create the property in "
                            "HubSpot first"))
            elif info.read_only:
                out.append(("fields", f"{self.object_type}.{name} is read-only (its value is "
                                      "set or calculated by HubSpot)",
                            "remove it from `fields`"))
        if key != RECORD_ID and key not in self.by_name:
            out.append(("match", f"{self.object_type} has no property {key} to match records on",
                        "match on a unique-value property, on email for contacts, or on "
                        f"{RECORD_ID}"))
        elif mode in ("upsert", "mirror") and (key == RECORD_ID or not self.identifies(key)):
            out.append(("match", f"{self.object_type} records cannot be upserted by {key}: HubSpot "
                                 "upserts by a unique-value property (or email for contacts)",
                        "match on a property with unique values, or use mode update"))
        elif mode in ("update", "delete") and not self.identifies(key):
            out.append(("match", f"{self.object_type}.{key} is not a unique-value property, so "
                                 "it cannot identify a record",
                        f"match on a unique-value property or on {RECORD_ID}"))
        elif mode == "insert" and key == RECORD_ID:
            out.append(("match", f"records cannot be created with a given {RECORD_ID}: HubSpot "
                                 "assigns it", "match on the property your key is written to"))
        return out


def parse(object_type: str, body: dict[str, Any]) -> Properties:
    return Properties(object_type, {
        str(p["name"]): PropertyInfo.of(p) for p in body.get("results", [])})


def screen(table: pa.Table, properties: Properties, key: str) -> pa.Array:
    """Per row of ``table`` (the match and mapped fields, under property names), the first
    reason HubSpot could not take its values, null where it can: an empty match value, a
    record id that is not one, a value its property cannot hold."""
    reasons = pa.nulls(table.num_rows, pa.string())
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name == key:
            reasons = _first(reasons, _match_reasons(column, key))
        info = properties.by_name.get(name)
        if info is not None and name != RECORD_ID:
            _, why = convert(column, info, email=name == "email" and properties.is_contacts)
            reasons = _first(reasons, why)
    return reasons


def _match_reasons(column: pa.Array, key: str) -> pa.Array:
    text = _text_or_nothing(plain(column))
    empty = pc.or_(pc.is_null(text), pc.equal(text, ""))
    reasons = _reasons(empty, f"the match property {key} is empty")
    if key == RECORD_ID:
        not_an_id = pc.invert(pc.match_substring_regex(text, _RECORD_ID_TEXT))
        reasons = _first(reasons, _reasons(pc.and_(pc.invert(empty), not_an_id),
                                           f"{RECORD_ID} is a HubSpot record id (a whole "
                                           "number), and this value is not one"))
    return reasons


def convert(column: pa.Array | pa.ChunkedArray, info: PropertyInfo, *, email: bool = False
            ) -> tuple[pa.Array, pa.Array]:
    """``column`` as the strings HubSpot takes for ``info``, and per row the reason it cannot
    be sent (null where it can)."""
    values = plain(column)
    text, reasons = _convert(values, info, email=email)
    if is_text(values.type):  # empty text clears a property of any type, as a null does
        blank = pc.fill_null(pc.equal(values, ""), False)
        reasons = pc.if_else(blank, pa.scalar(None, pa.string()), reasons)
        text = pc.if_else(blank, pa.scalar(""), text.cast(pa.string()))
    return text, reasons


def _convert(values: pa.Array, info: PropertyInfo, *, email: bool) -> tuple[pa.Array, pa.Array]:
    kind = info.kind
    if kind == "bool":
        text, bad = _as_bool(values)
        why = f"{info.name} is a checkbox: it takes true or false"
    elif kind == "number":
        text, bad = _as_number(values)
        why = f"{info.name} is a number property: the value is not a finite number"
    elif kind == "date":
        text, bad = _as_date(values)
        why = (f"{info.name} is a date property: HubSpot takes midnight UTC, and this value "
               "has a time of day or is not a date that exists (cast it to a date in the "
               "model)")
    elif kind == "datetime":
        text, bad = _as_datetime(values)
        why = f"{info.name} is a datetime property: the value is not a date and time"
    elif kind in ("single", "multiple"):
        text, bad = _as_options(values, info, multiple=kind == "multiple")
        shown = ", ".join(info.options[:8]) + (", …" if len(info.options) > 8 else "")
        why = f"{info.name} takes only its options ({shown})"
    else:
        text, bad = _as_text(values)
        why = f"{info.name} is longer than {MAX_TEXT:,} characters or is not text"
        if email:
            invalid = pc.invert(pc.match_substring_regex(text, _EMAIL))
            invalid = pc.and_(invalid, pc.not_equal(text, ""))
            reasons = _reasons(invalid, f"{info.name}: not a valid email address")
            return _cleared(text), _first(_reasons(bad, why), reasons)
    return _cleared(text), _reasons(bad, why)


def _as_bool(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    if pa.types.is_boolean(values.type):
        return pc.if_else(values, "true", "false"), _no(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        lowered = pc.utf8_lower(values)
        ok = pc.is_in(lowered, value_set=pa.array(["true", "false"]))
        return lowered, pc.and_(pc.is_valid(values), pc.invert(ok))
    if pa.types.is_integer(values.type):
        ok = pc.is_in(values, value_set=pa.array([0, 1], values.type))
        return pc.if_else(pc.equal(values, 1), "true", "false"), pc.and_(
            pc.is_valid(values), pc.invert(ok))
    return _text_or_nothing(values), pc.is_valid(values)


def _as_number(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    if pa.types.is_integer(values.type) or pa.types.is_decimal(values.type):
        return values.cast(pa.string()), _no(values)
    if pa.types.is_floating(values.type):
        finite = pc.is_finite(values)
        return values.cast(pa.string()), pc.and_(pc.is_valid(values), pc.invert(finite))
    if pa.types.is_boolean(values.type):
        return _text_or_nothing(values), pc.is_valid(values)
    text = _text_or_nothing(values)
    return text, pc.and_(pc.is_valid(text), pc.invert(pc.match_substring_regex(text, _NUMBER)))


def _as_date(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    if pa.types.is_date(values.type):
        return values.cast(pa.timestamp("ms")).cast(pa.int64()).cast(pa.string()), _no(values)
    if pa.types.is_timestamp(values.type):
        millis = _epoch_ms(values)
        off_midnight = pc.not_equal(millis, _floor_day(millis))
        return millis.cast(pa.string()), pc.fill_null(off_midnight, False)
    if is_text(values.type):
        millis = _day_millis(values)
        return millis.cast(pa.string()), pc.and_(pc.is_valid(values), pc.is_null(millis))
    return _text_or_nothing(values), pc.is_valid(values)


def _day_millis(text: pa.Array) -> pa.Array:
    """Epoch milliseconds of each ``YYYY-MM-DD`` text that is a day of the calendar, else null."""
    return calendar_day(text).cast(pa.timestamp("ms")).cast(pa.int64())


def _as_datetime(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    if pa.types.is_timestamp(values.type):
        return _epoch_ms(values).cast(pa.string()), _no(values)
    if pa.types.is_date(values.type):
        return values.cast(pa.timestamp("ms")).cast(pa.int64()).cast(pa.string()), _no(values)
    if is_text(values.type):
        # HubSpot takes ISO 8601 as well as epoch milliseconds; text is sent as it is, once
        # its day is one of the calendar's.
        moment = pc.and_(pc.match_substring_regex(values, _ISO_MOMENT), pc.is_valid(
            calendar_day(pc.utf8_slice_codeunits(values, 0, 10))))
        ok = pc.or_(moment, pc.match_substring_regex(values, r"^-?\d{1,15}$"))
        return values, pc.and_(pc.is_valid(values), pc.invert(ok))
    return _text_or_nothing(values), pc.is_valid(values)


def _as_options(values: pa.Array, info: PropertyInfo, *, multiple: bool
                ) -> tuple[pa.Array, pa.Array]:
    allowed = pa.array(list(info.options), pa.string())
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        items = pc.list_flatten(values)
        if not pa.types.is_string(items.type):
            items = items.cast(pa.string())
            values = pa.ListArray.from_arrays(values.offsets, items, mask=pc.is_null(values))
        text = pc.binary_join(values, ";")
        if not multiple:
            return text, pc.and_(pc.is_valid(values), pc.not_equal(pc.list_value_length(
                values), 1))
    else:
        text = _text_or_nothing(values)
        if not multiple:
            wrong = pc.and_(pc.is_valid(text), pc.invert(pc.is_in(text, value_set=allowed)))
            return text, wrong
        values = pc.split_pattern(text, ";")
        items = pc.list_flatten(values)
    outside = pc.invert(pc.is_in(items, value_set=allowed))
    parents = pc.list_parent_indices(values)
    hit = pc.filter(parents, outside)
    mask = pc.is_in(pa.array(range(len(text)), pa.int64()), value_set=hit.cast(pa.int64()))
    return text, mask


def _as_text(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    text = _text_or_nothing(values)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        return pa.nulls(len(values), pa.string()), pc.is_valid(values)
    too_long = pc.greater(pc.utf8_length(text), MAX_TEXT)
    unsendable = pc.and_(pc.is_valid(values), pc.is_null(text))
    return text, pc.or_(pc.fill_null(too_long, False), unsendable)


def _text_or_nothing(values: pa.Array) -> pa.Array:
    """The values as text, or nulls when they have no text form (lists, structs)."""
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_large_string(values.type):
        return values.cast(pa.string())
    try:
        return values.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.nulls(len(values), pa.string())


def _epoch_ms(values: pa.Array) -> pa.Array:
    # Naive timestamps are taken as UTC, as everywhere in tidegate.
    target = pa.timestamp("ms", tz="UTC") if values.type.tz else pa.timestamp("ms")
    return values.cast(target).cast(pa.int64())


def _floor_day(millis: pa.Array) -> pa.Array:
    return pc.multiply(pc.floor(pc.divide(millis.cast(pa.float64()), _DAY_MS)).cast(
        pa.int64()), _DAY_MS)


def _cleared(text: pa.Array) -> pa.Array:
    """Nulls as the empty string, which is how HubSpot clears a property."""
    return pc.fill_null(text.cast(pa.string()), "")


def _no(values: pa.Array) -> pa.Array:
    return pa.repeat(pa.scalar(False), len(values))


def _reasons(bad: pa.Array, reason: str) -> pa.Array:
    return pc.if_else(pc.fill_null(bad, False), pa.scalar(reason),
                      pa.scalar(None, pa.string()))


def _first(a: pa.Array, b: pa.Array) -> pa.Array:
    return pc.coalesce(a, b)
