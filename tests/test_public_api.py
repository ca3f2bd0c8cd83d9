"""The public names are few, stable and all exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tidegate
import tidegate.destinations
from conftest import SECRET


def test_top_level_exports_are_complete_and_importable() -> None:
    assert sorted(tidegate.__all__) == [
        "ConfigError", "DestinationError", "FatalError", "Problem", "Project",
        "RetryableError", "SourceError", "TidegateError", "__version__",
    ]
    for name in tidegate.__all__:
        assert getattr(tidegate, name) is not None


def test_every_error_is_a_tidegate_error_with_an_exit_code() -> None:
    for name in ("ConfigError", "DestinationError", "FatalError", "SourceError",
                 "RetryableError"):
        error = getattr(tidegate, name)
        assert issubclass(error, tidegate.TidegateError)
    assert tidegate.ConfigError.exit_code == 2
    assert tidegate.FatalError.exit_code == 1


def test_builtin_destinations_are_found_through_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="tidegate.destinations")}
    assert {"webhook", "postgres", "file"} <= names
    for kind in ("webhook", "postgres", "file"):
        cls = tidegate.destinations.load(kind)
        assert cls.kind == kind
        assert cls.capabilities.modes
    assert set(tidegate.destinations.__all__) >= {"Destination", "Batch", "BatchResult",
                                                   "Capabilities", "load", "kinds"}


def fresh_python(code: str, root: object) -> str:
    """What ``code`` prints in a new interpreter, given ``root`` as its argument."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_a_duckdb_project_runs_without_importing_sqlalchemy(tmp_path: object) -> None:
    """SQLAlchemy is for SQLAlchemy sources; every other run must not pay its import."""
    code = (
        "import sys, pathlib, duckdb\n"
        "root = pathlib.Path(sys.argv[1])\n"
        "duckdb.connect(str(root / 'w.duckdb')).execute("
        "'create table t as select 1 as id, 2 as v').close()\n"
        "(root / 'tidegate.yml').write_text('sources: {w: {type: duckdb, path: w.duckdb}}\\n'\n"
        "  'destinations: {f: {type: file, path: out}}\\n'\n"
        "  'syncs: {s: {source: w, table: t, primary_key: id, destination: f, object: o, '\n"
        "  'mode: upsert}}\\n')\n"
        "from tidegate.cli import app\n"
        "import tidegate\n"
        "assert tidegate.Project.load(root).run('s')['status'] == 'succeeded'\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    assert fresh_python(code, tmp_path) == "False"


def test_a_webhook_run_on_the_command_line_imports_only_what_it_uses(
        tmp_path: Path, receiver: Any) -> None:
    """Modules a run never uses must not be imported by it: httpx's own command line
    (click, pygments), dateutil (for pyarrow's type guessing), SQLAlchemy, rich's emoji
    codes, the warehouse diff. Each costs every command milliseconds."""
    import duckdb

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("create table t as select i as id, 'n' || i as name from range(50) t(i)")
    (tmp_path / "tidegate.yml").write_text(
        "sources: {w: {type: duckdb, path: w.duckdb}}\n"
        f"destinations: {{h: {{type: webhook, url: '{receiver.url}', secret: '{SECRET}'}}}}\n"
        "syncs: {s: {source: w, table: t, primary_key: id, destination: h, object: o, "
        "mode: upsert}}\n")
    code = (
        "import os, sys\n"
        "import tidegate.cli as cli\n"
        "def leave(code):\n"
        "    unwanted = ('sqlalchemy', 'dateutil', 'click', 'pygments', 'httpx._main',\n"
        "                'tidegate.warehouse_diff', 'rich._emoji_codes')\n"
        "    print(code, sorted(m for m in unwanted if sys.modules.get(m) is not None))\n"
        "    sys.stdout.flush()\n"
        "    os._exit(code)\n"
        "cli._leave = leave\n"
        "sys.argv = ['tidegate', 'run', 's', '--project', sys.argv[1]]\n"
        "cli.main()\n"
    )
    assert fresh_python(code, tmp_path).splitlines()[-1] == "0 []"
    assert len(receiver.records("o")) == 50


def test_checking_a_webhook_project_does_not_import_httpx(tmp_path: Path) -> None:
    """httpx loads when a destination connects; on the command line it loads meanwhile,
    while the run plans. Checking a configuration must not wait for it."""
    (tmp_path / "tidegate.yml").write_text(
        "sources: {w: {type: duckdb, path: w.duckdb}}\n"
        f"destinations: {{h: {{type: webhook, url: 'https://hooks.example.com/in', "
        f"secret: '{SECRET}'}}}}\n"
        "syncs: {s: {source: w, table: t, primary_key: id, destination: h, object: o, "
        "mode: upsert}}\n")
    code = (
        "import sys\n"
        "from tidegate import Project\n"
        "p = Project.load(sys.argv[1])\n"
        "p.destination_settings('h')\n"
        "print('httpx' in sys.modules)\n"
        "p.destination('s')\n"
        "print('httpx' in sys.modules)\n"
    )
    assert fresh_python(code, tmp_path).splitlines() == ["False", "True"]


@pytest.mark.parametrize("url", [
    "ftp://example.com/in", "https://", "http:///path", "https://exa mple.com/in",
    "https://example.com:port/in", "https://example.com:99999/in", "https://{x}.com/",
])
def test_a_webhook_url_that_is_not_http_with_a_host_is_a_config_error(
        tmp_path: Path, url: str) -> None:
    from tidegate.errors import ConfigError

    (tmp_path / "tidegate.yml").write_text(
        "sources: {w: {type: duckdb, path: w.duckdb}}\n"
        f"destinations: {{h: {{type: webhook, url: '{url}'}}}}\n"
        "syncs: {s: {source: w, table: t, primary_key: id, destination: h, object: o, "
        "mode: upsert}}\n")
    with pytest.raises(ConfigError) as info:
        tidegate.Project.load(tmp_path)
    assert "destinations.h.url" in str(info.value)
    assert "http" in str(info.value)


def test_a_webhook_url_with_a_port_a_path_and_a_query_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "tidegate.yml").write_text(
        "sources: {w: {type: duckdb, path: w.duckdb}}\n"
        "destinations: {h: {type: webhook, url: 'http://127.0.0.1:8799/in/x?token=abc'}}\n"
        "syncs: {s: {source: w, table: t, primary_key: id, destination: h, object: o, "
        "mode: upsert}}\n")
    tidegate.Project.load(tmp_path).close()


def test_modules_imported_ahead_arrive_and_leave_the_interpreter_as_it_was(
        tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from tidegate import imports\n"
        "before = sys.getswitchinterval()\n"
        "assert 'colorsys' not in sys.modules\n"
        "imports.ahead('tidegate_no_such_module', 'colorsys').join()\n"
        "print('colorsys' in sys.modules, sys.getswitchinterval() == before)\n"
    )
    assert fresh_python(code, tmp_path) == "True True"
