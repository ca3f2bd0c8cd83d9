"""The FastAPI app (routes, the token check, Host and Origin guards) and ``run`` under uvicorn.

Guards that apply to every request:

- with no token the server listens on loopback only, and also answers only
  requests addressed to a loopback name (``Host``), so a web page elsewhere
  cannot reach it through DNS rebinding;
- a write (POST) whose ``Origin`` names another site is refused, so a form on
  another site cannot trigger or approve runs from a browser.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tidegate import __version__, redact
from tidegate.errors import ConfigError, Problem
from tidegate.project import Project
from tidegate.server import api, compat, page
from tidegate.server.auth import COOKIE, MIN_TOKEN_LENGTH, PAGE_HEADER, Auth
from tidegate.server.service import Service, ServiceError

log = logging.getLogger("tidegate")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DESCRIPTION = """\
tidegate's REST API (`/api`), endpoints that Census and Hightouch clients call
(`/api/v1`), and a web page (`/`). Send the token as `Authorization: Bearer <token>`
(Census clients may use HTTP Basic with user `bearer`). See docs/server.md.
"""


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def check_listen(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, or with a guessable one."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(Problem(
            f"TIDEGATE_API_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters",
            fix="use a long random value, e.g. export TIDEGATE_API_TOKEN=$(openssl rand -hex 32)"))
    if token is None and not is_loopback(host):
        raise ConfigError(Problem(
            f"refusing to listen on {host} without an API token: anyone who can reach it "
            "could trigger and approve runs",
            fix="export TIDEGATE_API_TOKEN=$(openssl rand -hex 32), or listen on 127.0.0.1"))


def allowed(request: Request, auth: Auth) -> bool:
    if not auth.required:
        return True
    if auth.header_ok(request.headers.get("authorization")):
        return True
    if auth.cookie_ok(request.cookies.get(COOKIE)):
        return request.method in SAFE_METHODS or PAGE_HEADER in request.headers
    return False


def _error_response(request: Request, exc: ServiceError) -> Response:
    path = request.url.path
    headers = ({"WWW-Authenticate": 'Bearer realm="tidegate", Basic realm="tidegate"'}
               if exc.status == 401 else None)
    if path.startswith("/api/v1/"):  # each vendor's error shape, with tidegate's fix
        hightouch = path == "/api/v1/syncs/trigger" or path.endswith("/runs")
        body: dict[str, Any] = {"message": exc.message, "fix": exc.fix}
        if not hightouch:
            body = {"status": "error", **body}
    else:
        body = {"error": {"message": exc.message, "fix": exc.fix}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


def create_app(service: Service, auth: Auth,
               on_ready: Callable[[], None] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="tidegate", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, redoc_url=None)
    app.state.service = service

    def authorized(request: Request) -> None:
        if not allowed(request, auth):
            raise ServiceError(401, "a valid API token is required",
                               "send Authorization: Bearer <TIDEGATE_API_TOKEN>")

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return _error_response(request, exc)

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = request.headers.get("host", "")
        if not auth.required and not is_loopback(_host_name(host)):
            return JSONResponse({"error": {"message": f"this server answers only on loopback "
                                           f"names without a token, not '{host}'"}},
                                status_code=421)
        origin = request.headers.get("origin")
        if request.method not in SAFE_METHODS and origin is not None \
                and urlsplit(origin).netloc != host:
            return JSONResponse({"error": {"message": "cross-site requests are refused"}},
                                status_code=403)
        return await call_next(request)

    app.include_router(api.health_router())
    app.include_router(api.router(authorized))
    app.include_router(compat.router(authorized))
    page.mount(app, auth, lambda request: allowed(request, auth))
    return app


def run(project_dir: Path, *, host: str, port: int, workers: int, schedule: bool,
        token: str | None) -> None:
    import uvicorn

    token = token or None
    check_listen(host, token)
    if token:
        redact.register(token)
    project = Project.load(project_dir)
    logger = logging.getLogger("tidegate")
    if not os.environ.get("TIDEGATE_LOG") and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # a server's log is its history: say what it does
    service = Service(project, workers=workers, schedule=schedule)
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        scheduled = len(service.scheduler.schedules) if service.scheduler else 0
        sys.stdout.write(
            f"tidegate serve: http://{shown}:{port} — project {project.name}, "
            f"{len(project.syncs)} sync(s), {scheduled} scheduled, {workers} worker(s), "
            f"{'token required' if token else 'no token (loopback only)'}\n")
        sys.stdout.flush()

    config = uvicorn.Config(create_app(service, Auth(token), ready), host=host, port=port,
                            log_level="info", server_header=False, lifespan="on")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        redact.install_log_filter(logging.getLogger(name))
    uvicorn.Server(config).run()
