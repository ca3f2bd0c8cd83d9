"""Values Iterable cannot take, known before the run: the rows holding them are invalid.

The planner asks the destination (``invalid_values``) with a chunk of the rows a run
would send; these functions name, column at a time, the rows Iterable is certain to
refuse, so they are reported with the reason and never sent:

- the identifier: a blank ``userId`` (Iterable takes none), or an ``email`` that no
  address can be — no ``@``, white space, a domain without a dot or with an empty
  label. Iterable checks emails with Apache Commons' EmailValidator, which also
  knows the valid top-level domains; that finer part is left to Iterable, which
  lists such users in ``failedUpdates.invalidEmails``;
- values JSON cannot carry, at any depth: NaN, infinity, binary data;
- for users and list members, a dataField whose type the project has already
  fixed (``GET /api/users/getFields``) given a value no coercion can turn into
  that type: text that is not a number into a long or double field, text other
  than true / false into a boolean, text or a boolean that is not a date into a
  date field, an object into any other field, anything but an object into an
  object field. Iterable coerces what it can ("a value that cannot be coerced
  into the appropriate type will fail"), so numbers into a string field, numeric
  text into a number field and the like are sent, and Iterable decides; a field
  the project does not have yet takes the type of the first value it is sent,
  which only the run itself settles;
- for events: an empty ``eventName``, no user (``email`` and ``userId`` both
  null), a ``createdAt`` that is not a timestamp or Unix seconds, a
  ``campaignId`` or ``templateId`` that is not a whole number. Event fields'
  types are not checked: Iterable documents no way to read them.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from tidegate.destinations.columns import calendar_day, is_text, plain

# Event fields Iterable takes at the top level; the rest of the mapping is dataFields.
EVENT_TOP = ("eventName", "email", "userId", "createdAt", "campaignId", "templateId")
_NUMBER = r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"
_WHOLE = r"^\s*[-+]?\d+\s*$"
# An address some validator could take: a local part (quoted, or without white space,
# "@" or quotes) and a dotted domain without white space or empty labels.
_MAYBE_EMAIL = r'^("([^"\\]|\\.)*"|[^\s@"]+)@[^\s@.]+(\.[^\s@.]+)+$'
_BOOLEANS = pa.array(["true", "false"])
# The project's field types (Iterable's "Field Data Types") whose values are checked.
_CHECKED_TYPES = frozenset({"string", "long", "double", "boolean", "date", "object"})


def users(table: pa.Table, key: str, field_types: Mapping[str, str]) -> pa.Array:
    """Per row of a users or list sync's chunk, the first reason Iterable cannot take it."""
    reasons = _none(table.num_rows)
    for name in table.column_names:
        column = plain(table.column(name))
        if name == key:
            reasons = _first(reasons, identifier(column, key))
            continue
        reasons = _first(reasons, _json_reasons(column, name))
        kind = field_types.get(name)
        if kind in _CHECKED_TYPES:
            reasons = _first(reasons, _reason(
                _misfits(column, kind),
                f"{name} is a {kind} field in the Iterable project, and this value cannot "
                "become one (a field's type never changes once set)"))
    return reasons


def events(table: pa.Table) -> pa.Array:
    """Per row of an events sync's chunk, the first reason Iterable cannot take it."""
    n = table.num_rows
    reasons = _none(n)
    name = _text(table, "eventName")
    reasons = _first(reasons, _reason(pc.fill_null(pc.equal(name, ""), True),
                                      "eventName is empty"))
    email, user_id = _text(table, "email"), _text(table, "userId")
    reasons = _first(reasons, _reason(pc.and_(pc.is_null(email), pc.is_null(user_id)),
                                      "the event names no user: email and userId are both "
                                      "empty"))
    # The event goes by userId when it has one, else by email.
    reasons = _first(reasons, _reason(pc.and_(pc.is_valid(user_id), _blank(user_id)),
                                      "the identifier userId is empty"))
    by_email = pc.and_(pc.is_null(user_id), pc.is_valid(email))
    reasons = _first(reasons, _reason(pc.and_(by_email, _not_an_email(email)),
                                      "email is not an email address"))
    if "createdAt" in table.column_names:
        reasons = _first(reasons, _reason(
            _not_a_moment(plain(table.column("createdAt"))),
            "createdAt must be a timestamp (or Unix seconds) for Iterable's createdAt"))
    for field in ("campaignId", "templateId"):
        if field in table.column_names:
            reasons = _first(reasons, _reason(_not_whole(plain(table.column(field))),
                                              f"{field} must be a whole number (an Iterable "
                                              f"{field})"))
    for field in table.column_names:
        if field not in (*EVENT_TOP, "id"):
            reasons = _first(reasons, _json_reasons(plain(table.column(field)), field))
    return reasons


def identifier(column: pa.Array, key: str) -> pa.Array:
    """Why each user's identifier (``email`` or ``userId``) cannot name an Iterable user."""
    text = _as_text(column)
    reasons = _reason(_blank(text), f"the identifier {key} is empty")
    if key == "email":
        reasons = _first(reasons, _reason(pc.and_(pc.invert(_blank(text)), _not_an_email(text)),
                                          "the identifier email is not an email address"))
    return reasons


# Column tests: a boolean per row, never null --------------------------------------


def _misfits(values: pa.Array, kind: str) -> pa.Array:
    """Rows whose value no coercion can make a value of an Iterable field of type ``kind``."""
    t = values.type
    valid = pc.is_valid(values)
    if _is_list(t):  # an array field takes the type of its elements
        return _any_of_items(values, _misfits(values.flatten(), kind))
    whole = pa.types.is_struct(t) or pa.types.is_map(t)
    if kind == "object":
        return _no(values) if whole else valid
    if whole:
        return valid
    if pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t):
        # Sent as date text: a date field (or a string) takes it, a number or boolean cannot.
        return valid if kind in ("long", "double", "boolean") or (
            kind == "date" and pa.types.is_time(t)) else _no(values)
    if pa.types.is_boolean(t):
        return valid if kind == "date" else _no(values)
    if not is_text(t):
        return _no(values)  # numbers: Iterable may coerce them into any scalar type
    text = pc.utf8_trim_whitespace(values)
    filled = pc.fill_null(text, "")
    given = pc.not_equal(filled, "")
    if kind in ("long", "double"):
        wrong = pc.invert(pc.match_substring_regex(filled, _NUMBER))
    elif kind == "boolean":
        wrong = pc.invert(pc.is_in(pc.utf8_lower(filled), value_set=_BOOLEANS))
    elif kind == "date":
        wrong = pc.invert(_starts_with_a_day(filled))
    else:
        return _no(values)
    return pc.and_(given, wrong)


def _unsendable(values: pa.Array) -> pa.Array:
    """Rows holding a value JSON cannot carry (NaN, infinity, binary), at any depth."""
    t = values.type
    if pa.types.is_floating(t):
        return pc.fill_null(pc.invert(pc.is_finite(values.cast(pa.float64()))), False)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pc.is_valid(values)
    if pa.types.is_map(t):  # its values count (keys become JSON text)
        values = pa.ListArray.from_arrays(values.offsets, values.items, mask=pc.is_null(values))
    if _is_list(values.type):
        return _any_of_items(values, _unsendable(plain(values.flatten())))
    if pa.types.is_struct(t):
        hit = _no(values)
        for child in values.flatten():
            hit = pc.or_(hit, _unsendable(plain(child)))
        return hit
    return _no(values)


def _not_an_email(text: pa.Array) -> pa.Array:
    trimmed = pc.fill_null(pc.utf8_trim_whitespace(text), "")
    return pc.and_(pc.is_valid(text), pc.invert(pc.match_substring_regex(trimmed,
                                                                           _MAYBE_EMAIL)))


def _not_a_moment(values: pa.Array) -> pa.Array:
    t = values.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_null(t) or (
            pa.types.is_integer(t)):
        return _no(values)
    return pc.is_valid(values)


def _not_whole(values: pa.Array) -> pa.Array:
    t = values.type
    if pa.types.is_integer(t) or pa.types.is_null(t):
        return _no(values)
    if is_text(t):
        return pc.fill_null(pc.invert(pc.match_substring_regex(values, _WHOLE)), False)
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        number = values.cast(pa.float64())
        whole = pc.and_(pc.is_finite(number), pc.equal(pc.floor(number), number))
        return pc.fill_null(pc.invert(whole), False)
    return pc.is_valid(values)


def _starts_with_a_day(text: pa.Array) -> pa.Array:
    """Whether each text begins with a ``YYYY-MM-DD`` that is a day of the calendar."""
    return pc.is_valid(calendar_day(pc.utf8_slice_codeunits(text, 0, 10)))


# Helpers ---------------------------------------------------------------------------


def _json_reasons(values: pa.Array, name: str) -> pa.Array:
    return _reason(_unsendable(values),
                   f"{name} holds NaN, infinity or binary data, which JSON cannot carry")


def _any_of_items(lists: pa.Array, items: pa.Array) -> pa.Array:
    """Per list, whether any of its items (``items``, one per flattened item) is true."""
    parents = pc.list_parent_indices(lists)
    hit = pc.filter(parents, items).cast(pa.int64())
    return pc.is_in(pa.array(range(len(lists)), pa.int64()), value_set=hit)


def _text(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    return _as_text(plain(table.column(name)))


def _as_text(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type):
        return values
    try:
        return values.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # lists, structs: str() of them
        return pc.if_else(pc.is_valid(values), pa.scalar("?"), pa.scalar(None, pa.string()))


def _blank(text: pa.Array) -> pa.Array:
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True)


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t)
                or pa.types.is_fixed_size_list(t))


def _none(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def _no(values: pa.Array) -> pa.Array:
    return pa.repeat(pa.scalar(False), len(values))


def _reason(mask: pa.Array, reason: str) -> pa.Array:
    return pc.if_else(pc.fill_null(mask, False), pa.scalar(reason), pa.scalar(None, pa.string()))


def _first(a: pa.Array, b: pa.Array) -> pa.Array:
    return pc.coalesce(a, b)
