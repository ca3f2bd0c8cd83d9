"""A destination's durable notes about work in flight, kept in the state store.

Some destinations hand work to the other side and learn its outcome later: a
Salesforce Bulk job is created, uploaded, then polled. If the process dies in
between, the next run must find that job instead of uploading the same rows
again. A destination writes down what it started (``put``) before it starts
it, reads it back (``get``) on the next attempt, and forgets it (``forget``)
once the outcome is known. Names are the destination's own (a batch id, say);
entries belong to one sync and outlive runs, so a rerun after a crash finds them.
"""

from __future__ import annotations

from tidegate.runs import stamp
from tidegate.store import Store


class Journal:
    """Notes of one sync's destination, each a name and a text value."""

    def __init__(self, store: Store, sync: str) -> None:
        self.store = store
        self.sync = sync

    def put(self, name: str, value: str) -> None:
        """Write ``value`` under ``name`` (replacing any), committed before returning."""
        with self.store.transaction() as tx:
            tx.execute(
                "insert into tidegate_journal (sync, name, value, updated_at) "
                "values (?, ?, ?, ?) on conflict (sync, name) do update set "
                "value = excluded.value, updated_at = excluded.updated_at",
                (self.sync, name, value, stamp()),
            )

    def get(self, name: str) -> str | None:
        with self.store.transaction() as tx:
            value = tx.scalar("select value from tidegate_journal where sync = ? and name = ?",
                              (self.sync, name))
        return None if value is None else str(value)

    def names(self, prefix: str = "") -> list[str]:
        """Every name written and not forgotten, optionally only those under ``prefix``."""
        with self.store.transaction() as tx:
            rows = tx.execute(
                "select name from tidegate_journal where sync = ? and name like ? "
                "order by name", (self.sync, prefix.replace("%", r"\%") + "%"))
        return [str(r[0]) for r in rows]

    def forget(self, name: str) -> None:
        with self.store.transaction() as tx:
            tx.execute("delete from tidegate_journal where sync = ? and name = ?",
                       (self.sync, name))
