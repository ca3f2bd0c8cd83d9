"""Airflow stays in ``tidegate.airflow``: the core neither imports it nor installs it."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "tidegate"
# Modules of the provider that are Airflow code by nature.
AIRFLOW_FACED = ("tidegate.airflow._sdk", "tidegate.airflow.errors", "tidegate.airflow.hooks",
                 "tidegate.airflow.operators", "tidegate.airflow.sensors",
                 "tidegate.airflow.triggers")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_outside_the_provider_imports_airflow() -> None:
    core = [p for p in SRC.rglob("*.py") if "airflow" not in p.relative_to(SRC).parts]
    assert len(core) > 30
    offenders = [str(p.relative_to(SRC)) for p in core if "airflow" in imported(p)]
    assert offenders == []


def test_importing_every_core_module_loads_no_airflow() -> None:
    script = f"""
import importlib, pkgutil, sys
import tidegate
for info in pkgutil.walk_packages(tidegate.__path__, "tidegate."):
    if not info.name.startswith({AIRFLOW_FACED!r}) and info.name != "tidegate.__main__":
        importlib.import_module(info.name)
import tidegate.airflow
assert tidegate.airflow.get_provider_info()["package-name"] == "tidegate"
loaded = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
print(loaded)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_plain_install_does_not_bring_airflow() -> None:
    plain = [r for r in requires("tidegate") or [] if "extra ==" not in r]
    assert plain and not [r for r in plain if "airflow" in r.lower()]
    assert any("apache-airflow" in r and "extra == 'airflow'" in r.replace('"', "'")
               for r in requires("tidegate") or [])
