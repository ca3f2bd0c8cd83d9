"""``tidegate serve``: one process with a REST API, a worker pool, a scheduler and a web page.

    service.py    what the server does, with no web framework in it: trigger, approve,
                  read; on start, the runs an earlier process left behind
    pool.py       the worker pool: one run per sync at a time, triggers queue behind it
    scheduler.py  each sync's cron schedule in UTC, no overlap, a missed tick runs once
    auth.py       the API token: bearer, Census's HTTP Basic form, the page's cookie
    api.py        tidegate's own REST API (``/api/…``)
    compat.py     endpoints that Census and Hightouch clients call (``/api/v1/…``)
    page.py       the web page: Jinja2 templates and a little JavaScript
    app.py        the FastAPI app, and ``serve`` under uvicorn

FastAPI, uvicorn and Jinja2 come with the ``server`` extra; nothing outside this
package imports them, so other commands start without paying for them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tidegate.errors import ConfigError, Problem

INSTALL_HINT = "pip install 'tidegate[server]'"
DEFAULT_PORT = 8787


def require() -> None:
    """Raise ConfigError with the install command when the server's libraries are missing."""
    missing = []
    for name in ("fastapi", "uvicorn", "jinja2"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(Problem(
            f"`tidegate serve` needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed",
            fix=INSTALL_HINT))


def serve(project_dir: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          workers: int = 2, schedule: bool = True, token: str | None = None) -> None:
    """Load the project and serve it until interrupted (see ``tidegate.server.app``)."""
    require()
    from tidegate.server.app import run

    run(project_dir, host=host, port=port, workers=workers, schedule=schedule, token=token)
