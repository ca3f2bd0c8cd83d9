"""The in-memory DuckDB databases plans are made in: opened ahead, closed behind.

A new DuckDB database fills its catalog with every built-in function, about
15 ms, and closing one that held a plan's tables takes about as long again:
together a tenth of a small run. Both happen without the interpreter lock, so
neither needs to wait on the thread that plans:

- ``open_ahead()`` starts making one on a thread of its own. A command that is
  about to plan calls it first, so the database is made while the project loads;
  ``connect()`` hands it over (waiting for it if it is still being made) or,
  with none opened ahead, makes one.
- ``close_behind(con)`` closes a database on a thread of its own, so the run's
  record is finished and the summary printed meanwhile. Only a database that
  never spilled to disk goes this way (see ``Plan.close``): nothing is left for
  a process that exits first to leave behind.

An interpreter that shuts down waits for these threads (DuckDB must not be torn
down under it); the command line ends with ``os._exit`` and does not.
"""

from __future__ import annotations

import atexit
import threading

import duckdb

_lock = threading.Lock()
_ahead: list[tuple[threading.Thread, list[duckdb.DuckDBPyConnection]]] = []
_behind: list[threading.Thread] = []


def open_ahead() -> None:
    """Start making the next plan's database in the background (at most one waits)."""
    with _lock:
        if _ahead:
            return
        made: list[duckdb.DuckDBPyConnection] = []
        thread = threading.Thread(target=lambda: made.append(duckdb.connect()),
                                  name="tidegate-duckdb-open", daemon=True)
        thread.start()
        _ahead.append((thread, made))


def connect() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory database: the one opened ahead if there is one."""
    with _lock:
        ahead = _ahead.pop() if _ahead else None
    if ahead is not None:
        thread, made = ahead
        thread.join()
        if made:  # empty only if making it failed: then fail here, in the caller
            return made[0]
    return duckdb.connect()


def close_behind(con: duckdb.DuckDBPyConnection) -> None:
    """Close ``con`` on another thread; the caller goes on at once."""
    thread = threading.Thread(target=con.close, name="tidegate-duckdb-close", daemon=True)
    with _lock:
        _behind[:] = [t for t in _behind if t.is_alive()]
        thread.start()
        _behind.append(thread)


@atexit.register
def _settle() -> None:
    with _lock:
        threads = [t for t, _ in _ahead] + _behind
    for thread in threads:
        thread.join()
