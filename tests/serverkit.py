"""A real ``tidegate serve`` app under uvicorn on a loopback port, in this process or a child."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tidegate import Project
from tidegate.server.app import create_app
from tidegate.server.auth import Auth
from tidegate.server.scheduler import Clock, utcnow
from tidegate.server.service import Service

FINISHED = ("succeeded", "partial", "held", "failed")
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The app on 127.0.0.1, in a thread; ``client`` speaks to it with the token if set."""

    def __init__(self, root: Path, *, token: str | None = None, env: dict[str, str] | None = None,
                 workers: int = 2, schedule: bool = False, clock: Clock = utcnow) -> None:
        project = Project.load(root, {**os.environ, **(env or {})})
        self.service = Service(project, workers=workers, schedule=schedule, clock=clock)
        self.token = token
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(self.service, Auth(token)), log_level="warning",
                                lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self._server.should_exit = True
        self._thread.join(60)
        self._sock.close()

    def wait(self, run_id: int, until: tuple[str, ...] = FINISHED,
             timeout: float = 60) -> dict[str, Any]:
        return wait_for(self.client, run_id, until, timeout)


def wait_for(client: httpx.Client, run_id: int, until: tuple[str, ...] = FINISHED,
             timeout: float = 60) -> dict[str, Any]:
    """Poll ``GET /api/runs/{id}`` until its status is one of ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.get(f"/api/runs/{run_id}").raise_for_status().json()
        if run["status"] in until and not run["approving"]:
            return run
        assert time.monotonic() < deadline, f"run {run_id} stayed {run['status']}"
        time.sleep(0.05)


def serve_process(root: Path, port: int, log: Path, env: dict[str, str] | None = None,
                  *args: str) -> subprocess.Popen[bytes]:
    """``tidegate serve`` in a child process logging to ``log``, once it answers ``/healthz``."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidegate", "serve", "--project", str(root), "--port",
             str(port), *args],
            stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"tidegate serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
