"""Associations of the records a HubSpot sync writes with records of another object.

A mapped destination field named ``associations.<toObjectType>.<property>``
is not a property: its value names the ``<toObjectType>`` record whose
``<property>`` (a unique-value property, or the record id ``hs_object_id``)
holds it, and each record written is given HubSpot's default association with
that record (``POST /crm/v4/associations/{from}/{to}/batch/associate/default``).
A contact's ``company_account_id`` mapped to
``associations.companies.tidegate_account_id`` associates every contact with
its company.

The records to associate with are looked up (batch/read by that property)
before the batch is written, so a row naming a record HubSpot does not have is
rejected with the reason and nothing of it is sent. After the write, the
association requests go out; a row whose association fails is rejected, and
the next run writes it again (an upsert or update, so writing twice changes
nothing) and associates it then. Only upsert, update and mirror syncs take
associations: an insert written again would create a second record. An empty
value associates nothing, and associations are only ever added: a contact
whose company changes is associated with the new one and stays associated
with the old one until someone removes it in HubSpot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PREFIX = "associations."
MODES = frozenset({"upsert", "update", "mirror"})


@dataclass(frozen=True)
class Association:
    field: str  # the destination field, ``associations.<to>.<property>``
    to: str  # the object type associated with
    by: str  # the property of ``to`` that the field's values are


def parse(field: str) -> Association | None:
    """The association a destination field names, or None for a property."""
    if not field.startswith(PREFIX):
        return None
    parts = field[len(PREFIX):].split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(field)
    return Association(field, parts[0], parts[1])


def is_association(field: str) -> bool:
    return field.startswith(PREFIX)


def inputs(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The batch/associate/default inputs for (from record id, to record id) pairs."""
    return [{"from": {"id": a}, "to": {"id": b}} for a, b in pairs]


def outcome(doc: dict[str, Any], pairs: list[tuple[str, str]]) -> list[str | None]:
    """Per pair, None when HubSpot's answer lists it as associated, else its error.

    Results name their pairs; errors may name no input (HubSpot's ``context`` is
    free-form), so a pair no result answers takes the first error's message.
    """
    done = {(str(r.get("from", {}).get("id")), str(r.get("to", {}).get("id")))
            for r in doc.get("results") or []}
    errors = doc.get("errors") or []
    why = (f"{errors[0].get('category', 'ERROR')}: {errors[0].get('message', '')}"
           if errors else "HubSpot did not associate it")
    return [None if pair in done else f"the association failed ({why})" for pair in pairs]
