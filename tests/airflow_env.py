"""Real Apache Airflow for the provider's tests (a pytest plugin of the suite).

A metadata database migrated into a temporary AIRFLOW_HOME, the test DAGs and the
example DAG in its dags folder, and ``dag.test()`` to run them in this process.
Airflow reads its configuration when it is first imported, so the environment is set
when this plugin loads, before any test imports Airflow; nothing here imports Airflow
until a test asks for it.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent / "airflow_provider"
REPO = HERE.parents[1]
HOME = Path(tempfile.mkdtemp(prefix="tidegate-airflow-"))
atexit.register(shutil.rmtree, HOME, True)
DAGS = HOME / "dags"
LINEAGE = HOME / "openlineage.jsonl"

os.environ.update({
    "AIRFLOW_HOME": str(HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
    "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
        {"type": "file", "log_file_path": str(LINEAGE), "append": True}),
})
DAGS.mkdir()
for dag_file in [*(HERE / "dags").glob("*.py"), *(REPO / "examples" / "airflow").glob("*.py")]:
    shutil.copy(dag_file, DAGS / dag_file.name)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """The migrated metadata database (once per session)."""
    done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Airflow's log handlers keep the streams they find when it configures logging; let
    # them keep the process's own (fd 1 and 2), which each test's capfd captures, and
    # not a capture object that is closed when its test ends.
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        import airflow.sdk  # noqa: F401
        from airflow.sdk.execution_time import supervisor  # noqa: F401
    finally:
        sys.stdout, sys.stderr = saved
    yield HOME


class DagResult:
    """What one ``dag.test()`` left: the run, its task states, XComs and the task logs."""

    def __init__(self, dag_run: Any, log: str) -> None:
        self.dag_run, self.log = dag_run, log

    @property
    def state(self) -> str:
        return str(self.dag_run.state)

    def states(self) -> dict[str, str]:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            tis = session.query(TaskInstance).filter_by(
                dag_id=self.dag_run.dag_id, run_id=self.dag_run.run_id).all()
            return {(ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"):
                    str(ti.state) for ti in tis}

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = session.query(XComModel).filter_by(
                dag_id=self.dag_run.dag_id, run_id=self.dag_run.run_id, task_id=task_id,
                key=key, map_index=map_index).one_or_none()
            return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture
def run_dag(airflow_db: Path, capfd: pytest.CaptureFixture[str]) -> Any:
    """``run_dag(dag_id, file, **conf)``: parse the DAG file now (tests set the environment
    it reads) and run it with ``dag.test()``; the result carries the task logs."""

    def run(dag_id: str, file: str, logical_date: Any = None, **conf: Any) -> DagResult:
        spec = importlib.util.spec_from_file_location(f"dag_{dag_id}", DAGS / file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dag = next(d for d in vars(module).values()
                   if getattr(d, "dag_id", None) == dag_id and hasattr(d, "test"))
        capfd.readouterr()
        at = {"logical_date": logical_date} if logical_date is not None else {}
        dag_run = dag.test(run_conf=conf or None, **at)
        out, err = capfd.readouterr()
        return DagResult(dag_run, out + err)

    return run


def lineage_events(job: str) -> list[dict[str, Any]]:
    """The OpenLineage events emitted for ``job`` (``dag_id.task_id``), oldest first."""
    if not LINEAGE.exists():
        return []
    events = [json.loads(line) for line in LINEAGE.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("job", {}).get("name") == job]
