"""The web page: syncs with their last run and next scheduled time, runs, held runs to approve.

Server-rendered with Jinja2 (autoescaped); ``static/app.js`` adds the buttons
(run now, preview a plan, approve) over the JSON API, and refreshes a page
while something on it is still running. With a token configured, the page asks
for it once (``/login``) and keeps an HttpOnly session cookie that holds an
HMAC of the token, never the token itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from tidegate import __version__
from tidegate.server.api import Svc
from tidegate.server.auth import COOKIE, Auth
from tidegate.server.service import ServiceError, summary

HERE = Path(__file__).parent
ROWS_PER_PAGE = 50
LIVE = ("queued", "running")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def when(value: str | None) -> str:
    moment = _parse(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def ago(value: str | None) -> str:
    """'3 min ago', 'in 2 h': how far a time is from now, roughly."""
    moment = _parse(value)
    if moment is None:
        return "—"
    seconds = (moment - datetime.now(UTC)).total_seconds()
    size = abs(seconds)
    if size < 45:
        text = "a few seconds"
    elif size < 90 * 60:
        text = f"{max(1, round(size / 60))} min"
    elif size < 36 * 3600:
        text = f"{round(size / 3600)} h"
    else:
        text = f"{round(size / 86400)} days"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, ago=ago, number=number)
    env.globals.update(version=__version__, live_statuses=LIVE)
    return Jinja2Templates(env=env)


def _safe_next(target: str | None) -> str:
    """Only a path on this server: a login must not send anyone elsewhere."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def mount(app: FastAPI, auth: Auth, allowed: Any) -> None:
    pages = templates()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    ui = APIRouter(include_in_schema=False)

    def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        svc = request.app.state.service
        context.update(project=svc.project.name, signed_in=auth.cookie_ok(
            request.cookies.get(COOKIE)), token_required=auth.required)
        return pages.TemplateResponse(request, name, context, status_code=status)

    def gate(request: Request) -> Response | None:
        if allowed(request):
            return None
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    def missing(request: Request, exc: ServiceError) -> Response:
        return render(request, "missing.html", status=exc.status, message=exc.message,
                      fix=exc.fix)

    @ui.get("/", response_class=HTMLResponse)
    def index(request: Request, svc: Svc) -> Response:
        if (redirect := gate(request)) is not None:
            return redirect
        syncs = svc.syncs()
        recent = [summary(r) for r in svc.runs(None, 15)]
        live = any(r["status"] in LIVE for r in recent) or any(s["busy"] for s in syncs)
        return render(request, "index.html", syncs=syncs, runs=recent, live=live,
                      scheduler=svc.scheduler is not None, ids=svc.ids)

    @ui.get("/syncs/{name}", response_class=HTMLResponse)
    def sync_page(request: Request, name: str, svc: Svc) -> Response:
        if (redirect := gate(request)) is not None:
            return redirect
        try:
            resolved = svc.resolve(name)
        except ServiceError as exc:
            return missing(request, exc)
        info = next(s for s in svc.syncs() if s["name"] == resolved)
        history = [summary(r) for r in svc.runs(resolved, 50)]
        live = info["busy"] or any(r["status"] in LIVE for r in history)
        return render(request, "sync.html", sync=info, runs=history, live=live, ids=svc.ids)

    @ui.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: int, svc: Svc, page: int = 1) -> Response:
        if (redirect := gate(request)) is not None:
            return redirect
        try:
            run = svc.detail(run_id)
        except ServiceError as exc:
            return missing(request, exc)
        page = max(1, page)
        rows = svc.rows(run_id, limit=ROWS_PER_PAGE + 1, offset=(page - 1) * ROWS_PER_PAGE)
        live = run["status"] in LIVE or run["approving"]
        return render(request, "run.html", run=run, rows=rows[:ROWS_PER_PAGE], page=page,
                      more=len(rows) > ROWS_PER_PAGE, live=live, per_page=ROWS_PER_PAGE)

    @ui.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        if not auth.required:
            return RedirectResponse(_safe_next(next), status_code=303)
        return render(request, "login.html", next=_safe_next(next), failed=False)

    @ui.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        target = _safe_next(form.get("next"))
        if not auth.required:
            return RedirectResponse(target, status_code=303)
        if not auth.token_ok(form.get("token", "")):
            return render(request, "login.html", status=401, next=target, failed=True)
        done = RedirectResponse(target, status_code=303)
        done.set_cookie(COOKIE, auth.session or "", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
        return done

    @ui.post("/logout")
    def logout() -> Response:
        done = RedirectResponse("/login" if auth.required else "/", status_code=303)
        done.delete_cookie(COOKIE, path="/")
        return done

    app.include_router(ui)
