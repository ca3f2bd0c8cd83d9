"""Importing heavy libraries without the garbage collector running meanwhile, or ahead.

Importing DuckDB, Arrow, pydantic, httpx and their kin allocates hundreds of
thousands of objects that live as long as the process; the collector, counting
those allocations, runs a hundred times over them during a command's start and
frees nothing. ``quietly()`` pauses it for the duration of an import and
restores whatever the process had chosen. Once it runs again, its first passes
would still walk every object the imports made; ``freeze=True`` (for a process
that is tidegate's own, the command line) moves them out of its sight for good.

``ahead()`` imports modules on a thread of their own. Importing holds the
interpreter lock, so this gains only while the caller waits on work that does
not: the command line calls it as a run starts to plan (in DuckDB), for the
modules the run's destination needs only once it sends.
"""

from __future__ import annotations

import gc
import importlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_SWITCH_S = 0.0005


@contextmanager
def quietly(*, freeze: bool = False) -> Iterator[None]:
    """Pause garbage collection inside the block (it is restored if it was on)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if collecting:
            gc.enable()


def ahead(*modules: str) -> threading.Thread:
    """Import ``modules`` in the background; whoever imports one meanwhile waits for it."""

    def load() -> None:
        # An import is Python through and through: it keeps the lock until the
        # interpreter's switch interval (5 ms) takes it away, and every call the
        # caller makes into DuckDB or SQLite meanwhile would wait that long to get it
        # back. A short interval while importing hands it back at once.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, _SWITCH_S))
        try:
            for name in modules:
                with suppress(ImportError):  # then the importer that needs it says why
                    importlib.import_module(name)
        finally:
            sys.setswitchinterval(interval)

    thread = threading.Thread(target=load, name="tidegate-import-ahead", daemon=True)
    thread.start()
    return thread
