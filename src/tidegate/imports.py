"""Importing heavy libraries without the garbage collector running meanwhile.

Importing DuckDB, Arrow, pydantic, httpx and their kin allocates hundreds of
thousands of objects that live as long as the process; the collector, counting
those allocations, runs a hundred times over them during a command's start and
frees nothing. ``quietly()`` pauses it for the duration of an import and
restores whatever the process had chosen. Once it runs again, its first passes
would still walk every object the imports made; ``freeze=True`` (for a process
that is tidegate's own, the command line) moves them out of its sight for good.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


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
