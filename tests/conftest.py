"""Shared fixtures: a real PostgreSQL server for the session, webhook receivers, projects."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["airflow_env"]  # real Airflow for tests/airflow_provider, loaded lazily

SECRET = "whsec_" + base64.b64encode(b"tidegate-test-signing-key-0123").decode()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    from pgserver import start_postgres

    with start_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def snowflake_server() -> Iterator[dict[str, Any]]:
    import logging

    import fakesnow

    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)
    with fakesnow.server() as kwargs:
        kwargs["network_timeout"] = 30
        yield kwargs


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def receiver() -> Iterator[object]:
    from tidegate.sandbox.webhook import WebhookReceiver

    with WebhookReceiver(secret=SECRET) as server:
        yield server


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path
