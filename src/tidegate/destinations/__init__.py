"""Destination plugins, found through the ``tidegate.destinations`` entry point group.

Built-in destinations are registered by the same entry points as third-party
ones, so ``kinds()`` lists them all; importing a plugin happens only when a
project uses it.
"""

from __future__ import annotations

from tidegate.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
    SyncTarget,
)
from tidegate.imports import quietly

__all__ = [
    "Batch",
    "BatchResult",
    "Capabilities",
    "Destination",
    "DestinationConfig",
    "Operation",
    "SyncTarget",
    "kinds",
    "load",
]

GROUP = "tidegate.destinations"

# tidegate's own destinations, also registered as entry points for ``kinds()``.
_BUILTIN = {
    "webhook": "tidegate.destinations.webhook:WebhookDestination",
    "postgres": "tidegate.destinations.postgres:PostgresDestination",
    "file": "tidegate.destinations.file:FileDestination",
    "salesforce": "tidegate.destinations.salesforce.destination:SalesforceDestination",
    "hubspot": "tidegate.destinations.hubspot.destination:HubSpotDestination",
    "iterable": "tidegate.destinations.iterable.destination:IterableDestination",
}


def kinds() -> list[str]:
    """Every destination type that can be named in ``type:``."""
    from importlib.metadata import entry_points

    return sorted({*_BUILTIN, *(ep.name for ep in entry_points(group=GROUP))})


def load(kind: str) -> type[Destination]:
    """The plugin class for ``kind``; KeyError if there is none."""
    if kind in _BUILTIN:  # ours need no metadata scan, which costs a run ~30 ms
        module, _, attr = _BUILTIN[kind].partition(":")
        with quietly():
            cls = getattr(__import__(module, fromlist=[attr]), attr)
        return _checked(kind, cls)
    from importlib.metadata import entry_points

    for ep in entry_points(group=GROUP):
        if ep.name == kind:
            with quietly():
                cls = ep.load()
            break
    else:
        raise KeyError(kind)
    return _checked(kind, cls)


def _checked(kind: str, cls: object) -> type[Destination]:
    if not (isinstance(cls, type) and issubclass(cls, Destination)):
        raise TypeError(f"entry point {kind!r} in {GROUP} is not a tidegate Destination")
    return cls
