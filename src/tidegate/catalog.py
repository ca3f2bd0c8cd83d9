"""Stable numeric ids of syncs, kept in the state store.

Clients written for Census or Hightouch address a sync by a number. A sync's
number is given the first time any command sees its name (new names in
alphabetical order) and never changes: adding, removing or reordering syncs
leaves every other number alone, and a sync removed and added back under the
same name gets its old number again. Renaming a sync gives it a new number.
"""

from __future__ import annotations

from collections.abc import Iterable

from tidegate.runs import stamp
from tidegate.store import Store


def sync_ids(store: Store, names: Iterable[str]) -> dict[str, int]:
    """The id of each of ``names``, giving new names the next free ids."""
    wanted = list(names)
    with store.transaction() as tx:
        tx.lock("tidegate-sync-ids")
        known = {str(n): int(i) for n, i in tx.execute("select name, id from tidegate_syncs")}
        for name in sorted(set(wanted) - known.keys()):
            known[name] = tx.insert_id(
                "insert into tidegate_syncs (name, created_at) values (?, ?)", (name, stamp()))
    return {name: known[name] for name in wanted}
