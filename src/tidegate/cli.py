"""The ``tidegate`` command line (SPEC §4): a thin face over ``Project``.

Every command takes ``--project DIR`` and ``--json``. Exit codes: 0 done,
1 run failed, 2 bad config or usage, 3 held by a guardrail, 4 completed with
rejected or invalid rows. No traceback ever reaches the user.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

from tidegate import imports
from tidegate.imports import quietly

# httpx imports its own command line (click, pygments, rich's syntax and progress
# modules) whenever those happen to be installed: 15-25 ms of every command, for a
# tool this process never runs. Marking it absent gives httpx its documented
# fallback; a process that already imported httpx keeps what it has.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

with quietly(freeze=True):  # this process is the command's own
    import typer
    from rich.console import Console
    from rich.markup import escape

    from tidegate import __version__, plandb
    from tidegate.errors import ConfigError, TidegateError
    from tidegate.progress import NullReporter, Reporter, RichReporter
    from tidegate.project import Project
    from tidegate.redact import install_log_filter, redact
    from tidegate.shard import Shard

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_HELD, EXIT_REJECTED = 0, 1, 2, 3, 4
STATUS_EXIT = {"succeeded": EXIT_OK, "planned": EXIT_OK, "partial": EXIT_REJECTED,
               "held": EXIT_HELD, "failed": EXIT_FAILED}

app = typer.Typer(
    help="tidegate: reverse ETL that sends only what changed, and never garbage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(help="Local servers that follow a destination's contract.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")

# Tables stay readable when stdout is a pipe or a CI log, where rich would assume 80 columns.
# No emoji codes: a sync or an error that says ":x:" must print as it is (and rich's
# table of codes is a few milliseconds of every command to load).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160,
              emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.",
                                          show_default="current folder")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", metavar="I/N",
    help="Only the keys of shard I of N (by a stable hash of the key); "
         "the N shards may run at once.")]


def _shard(spec: str | None) -> Shard | None:
    return None if spec is None else Shard.parse(spec)


def _emit_json(doc: Any) -> None:
    sys.stdout.write(redact(json.dumps(doc, default=str, indent=2)) + "\n")


def _fail(exc: TidegateError, as_json: bool) -> NoReturn:
    message = redact(str(exc))
    if as_json:
        problems = [redact(str(p)) for p in getattr(exc, "problems", [])] or [message]
        kind = "config" if isinstance(exc, ConfigError) else "fatal"
        _emit_json({"error": {"type": kind, "message": message, "problems": problems}})
    label = "config error" if isinstance(exc, ConfigError) else "error"
    for line in message.splitlines():
        err.print(f"[red]{label}:[/red] {escape(line)}", markup=True, highlight=False)
    raise typer.Exit(exc.exit_code)


def _load(project: Path, as_json: bool) -> Project:
    try:
        return Project.load(project)
    except TidegateError as exc:
        _fail(exc, as_json)


def _guard(as_json: bool, fn: Callable[[], int]) -> None:
    try:
        code = fn()
    except TidegateError as exc:
        _fail(exc, as_json)
    raise typer.Exit(code)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Show the version.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="More log lines on stderr.")] = 0,
) -> None:
    _setup_logging(verbose)
    if version:
        out.print(f"tidegate {__version__}")
        raise typer.Exit(0)


def _setup_logging(verbose: int) -> None:
    level_name = os.environ.get("TIDEGATE_LOG", "").upper()
    level = getattr(logging, level_name, None) if level_name else None
    if not isinstance(level, int):
        level = logging.WARNING - 10 * min(verbose, 2)
    logger = logging.getLogger("tidegate")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    install_log_filter(logger)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create.")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Scaffold a working example project (DuckDB warehouse, file export)."""
    from tidegate.scaffold import scaffold

    def go() -> int:
        created = scaffold(directory)
        if as_json:
            _emit_json({"project": str(directory.resolve()), "created": created})
        else:
            out.print(f"created a tidegate project in {directory.resolve()}")
            for path in created:
                out.print(f"  {path}")
            out.print(f"next: cd {directory} && tidegate run accounts_to_csv")
        return EXIT_OK

    _guard(as_json, go)


@app.command()
def validate(
    project: ProjectOpt = Path("."),
    connections: Annotated[bool, typer.Option("--connections",
                                              help="Also reach every source and destination.")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the configuration; with --connections, reach every source and destination."""
    proj = _load(project, as_json)

    def go() -> int:
        with proj:
            checks = proj.validate(connections=connections)
        ok = all(c.ok for c in checks)
        if as_json:
            _emit_json({"valid": True, "syncs": sorted(proj.syncs),
                        "connections": [c.__dict__ for c in checks], "ok": ok})
        else:
            out.print(f"[green]valid[/green]: project '{proj.name}', "
                      f"{len(proj.syncs)} sync(s): {', '.join(sorted(proj.syncs)) or '-'}")
            for c in checks:
                mark = "[green]ok[/green]" if c.ok else "[red]FAILED[/red]"
                out.print(f"  {c.kind} {c.name}: {mark} {c.message}")
        return EXIT_OK if ok else EXIT_FAILED

    _guard(as_json, go)


@app.command()
def plan(
    sync: Annotated[str, typer.Argument(help="Sync name.")],
    project: ProjectOpt = Path("."),
    full: Annotated[bool, typer.Option("--full", help="Ignore state: plan every row.")] = False,
    shard: ShardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what a run would do: counts, sample rows per category. Sends nothing."""
    plandb.open_ahead()
    proj = _load(project, as_json)

    def go() -> int:
        part = _shard(shard)
        with proj:
            result = proj.plan(sync, full=full, shard=part.index if part else None,
                               shards=part.count if part else None)
        if as_json:
            _emit_json(result)
        else:
            _print_plan(result)
        return EXIT_OK

    _guard(as_json, go)


@app.command()
def run(
    syncs: Annotated[list[str] | None, typer.Argument(help="Sync names.")] = None,
    project: ProjectOpt = Path("."),
    all_syncs: Annotated[bool, typer.Option("--all", help="Run every sync.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; send nothing.")]
    = False,
    full: Annotated[bool, typer.Option("--full", help="Ignore state: send every row.")]
    = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Skip the guardrails (the run records that it was forced).")] = False,
    select: Annotated[list[str] | None, typer.Option(
        "--select", "-s", help="Syncs whose dbt models match, dbt-style: tag:hourly, a model "
        "name; spaces mean any, commas all.")] = None,
    shard: ShardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan, judge and deliver syncs, with a progress bar and a summary table."""
    plandb.open_ahead()
    proj = _load(project, as_json)
    names = sorted(proj.syncs) if all_syncs else list(syncs or [])
    if select:
        from tidegate.dbt import select as select_syncs

        try:
            names += [n for n in select_syncs(proj.syncs, select) if n not in names]
        except ConfigError as exc:
            _fail(exc, as_json)
    if not names:
        _fail(ConfigError("name at least one sync, or pass --all or --select"), as_json)

    def go() -> int:
        part = _shard(shard)
        results = []
        try:
            for name in names:
                proj.sync(name)
            if not dry_run:
                _import_ahead(proj, names)
            for name in names:
                reporter: Reporter = (
                    RichReporter(name) if sys.stderr.isatty() and not as_json else NullReporter()
                )
                results.append(proj.run(name, full=full, dry_run=dry_run, force=force,
                                        reporter=reporter, shard=part.index if part else None,
                                        shards=part.count if part else None))
        except BaseException:
            proj.close()
            raise
        # A SQLite store copies its log into the database file as it closes: file work
        # that needs no interpreter lock, done while the results print.
        failed: list[BaseException] = []

        def close() -> None:
            try:
                proj.close()
            except BaseException as exc:  # raised below, in this thread, as before
                failed.append(exc)

        closing = threading.Thread(target=close, name="tidegate-store-close")
        closing.start()
        try:
            if as_json:
                _emit_json(results[0] if len(results) == 1 else {"runs": results})
            elif dry_run:
                for result in results:
                    _print_plan(result)
            else:
                _print_summaries(results)
        finally:
            closing.join()
        if failed:
            raise failed[0]
        return _exit_code([r["status"] for r in results])

    _guard(as_json, go)


def _import_ahead(proj: Project, names: list[str]) -> None:
    """While the first sync plans, import what an HTTP destination needs to send, and
    what the summary is printed with."""
    from tidegate.destinations.http import HttpDestination

    used = {proj.destination_settings(proj.sync(name).destination)[0] for name in names}
    if any(issubclass(cls, HttpDestination) for cls in used):
        # encodings.idna: connecting by host name encodes it so, on the first request.
        imports.ahead("urllib.request", "httpx", "tidegate.destinations.transport",
                      "encodings.idna", "rich.table")
    else:
        imports.ahead("rich.table")  # for the summary


@app.command()
def approve(
    run_id: Annotated[int, typer.Argument(help="A held run (see `tidegate runs`).",
                                          metavar="RUN")],
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Deliver a held run as it was shown; if the model changed since, judge it again."""
    proj = _load(project, as_json)

    def go() -> int:
        with proj:
            reporter: Reporter = (
                RichReporter(str(run_id)) if sys.stderr.isatty() and not as_json
                else NullReporter()
            )
            result = proj.approve(run_id, reporter=reporter)
        if as_json:
            _emit_json(result)
        else:
            _print_summaries([result])
        return _exit_code([result["status"]])

    _guard(as_json, go)


@app.command()
def revert(
    run_id: Annotated[int, typer.Argument(help="The run to undo (see `tidegate runs`).",
                                          metavar="RUN")],
    project: ProjectOpt = Path("."),
    force: Annotated[bool, typer.Option(
        "--force", help="Skip the guardrails (the run records that it was forced).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put back what a run changed; keys changed again since are left alone and reported."""
    proj = _load(project, as_json)

    def go() -> int:
        with proj:
            reporter: Reporter = (
                RichReporter(f"revert {run_id}") if sys.stderr.isatty() and not as_json
                else NullReporter()
            )
            result = proj.revert(run_id, force=force, reporter=reporter)
        if as_json:
            _emit_json(result)
        else:
            _print_summaries([result])
            if result["status"] != "held":  # a held run's verdict is printed with it
                _print_verdict(result.get("verdict"))
        return _exit_code([result["status"]])

    _guard(as_json, go)


@app.command("runs")
def runs_cmd(
    sync: Annotated[str | None, typer.Argument(help="Only this sync.")] = None,
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The history of runs, newest first."""
    proj = _load(project, as_json)

    def go() -> int:
        with proj:
            records = proj.runs(sync, limit)
            ids = proj.sync_ids()
        summaries = [r.summary() | {"started_at": r.started_at.isoformat(),
                                    "sync_id": ids.get(r.sync)} for r in records]
        if as_json:
            _emit_json({"runs": summaries})
        else:
            _print_summaries(summaries, title="runs")
            if ids:
                out.print("sync ids (stable; Census / Hightouch clients address syncs by them): "
                          + ", ".join(f"{name} {i}" for name, i in ids.items()))
        return EXIT_OK

    _guard(as_json, go)


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="Run id (see `tidegate runs`).", metavar="RUN")],
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option("--limit", "-n", help="Rows to list.")] = 50,
    changes: Annotated[bool, typer.Option(
        "--changes", help="Also list every change the run delivered: key, field, old, new.")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """One run: counts, timings, its rejected and invalid rows, and (--changes) its changes."""
    proj = _load(project, as_json)

    def go() -> int:
        with proj:
            result = proj.show(run_id, changes=changes,
                               limit=None if as_json else limit + 1)
        if as_json:
            _emit_json(result)
            return EXIT_OK
        _print_summaries([result], title=f"run {run_id}")
        out.print(f"mode {result['mode']} → {result['destination']} / {result['object']}, "
                  f"started {result['started_at']}, {result['batches']} batch(es)")
        if result["error"]:
            out.print(f"[yellow]{escape(result['error'])}[/yellow]", markup=True)
        if result.get("destination_report"):
            out.print("destination: " + ", ".join(
                f"{k} {v}" for k, v in result["destination_report"].items()))
        rows = result["rows"]
        if rows:
            from rich.table import Table

            table = Table("kind", "key", "attempt", "error", title="rows not delivered")
            for row in rows[:limit]:
                table.add_row(row["kind"], escape(json.dumps(row["key"])), str(row["attempt"]),
                              escape(row["error"]))
            out.print(table)
            if len(rows) > limit:
                out.print(f"… and {len(rows) - limit} more (--limit, or --json for all)")
        _print_verdict(result.get("verdict"))
        if changes:
            _print_changes(result["changes"], limit)
        return EXIT_OK

    _guard(as_json, go)


@app.command()
def reset(
    sync: Annotated[str, typer.Argument(help="Sync name.")],
    project: ProjectOpt = Path("."),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Forget a sync's state: its next run sends every row again."""
    proj = _load(project, as_json)
    if not yes and sys.stdin.isatty() and not as_json:
        typer.confirm(f"forget everything sync '{sync}' has delivered?", abort=True)

    def go() -> int:
        with proj:
            forgotten = proj.reset(sync)
        if as_json:
            _emit_json({"sync": sync, "forgotten": forgotten})
        else:
            out.print(f"forgot {forgotten} key(s) of sync '{sync}'; its next run sends every row")
        return EXIT_OK

    _guard(as_json, go)


@app.command()
def serve(
    project: ProjectOpt = Path("."),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8787,
    workers: Annotated[int, typer.Option("--workers", help="Runs of different syncs at once.",
                                         min=1, max=64)] = 2,
    no_scheduler: Annotated[bool, typer.Option(
        "--no-scheduler", help="Do not fire syncs' schedules.")] = False,
) -> None:
    """REST API, scheduler and web page; beyond loopback only with TIDEGATE_API_TOKEN set."""
    from tidegate.server import serve as run_server  # FastAPI loads only for this command

    def go() -> int:
        run_server(project, host=host, port=port, workers=workers, schedule=not no_scheduler,
                   token=os.environ.get("TIDEGATE_API_TOKEN") or None)
        return EXIT_OK

    _guard(False, go)


@app.command()
def demo(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to build the demo.")]
    = None,
    rows: Annotated[int, typer.Option("--rows", help="Accounts in the warehouse.")] = 50_000,
    as_json: JsonOpt = False,
) -> None:
    """The whole story on embedded defaults: DuckDB warehouse → local webhook, twice."""
    from tidegate.demo import run_demo

    _guard(as_json, lambda: run_demo(directory, rows, out, as_json=as_json))


@sandbox_app.command("webhook")
def sandbox_webhook(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8790,
    secret: Annotated[str | None, typer.Option(
        "--secret", envvar="TIDEGATE_WEBHOOK_SECRET", help="whsec_… to verify signatures.")]
    = None,
) -> None:
    """A local webhook receiver that follows tidegate's webhook contract."""
    from tidegate.sandbox.webhook import serve

    _serve(lambda: serve(port, secret))


@sandbox_app.command("salesforce")
def sandbox_salesforce(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8791,
    client_id: Annotated[str, typer.Option(
        "--client-id", envvar="TIDEGATE_SF_CLIENT_ID", help="OAuth client id to accept.")]
    = "tidegate-sandbox-client",
    client_secret: Annotated[str, typer.Option(
        "--client-secret", envvar="TIDEGATE_SF_CLIENT_SECRET",
        help="OAuth client secret to accept.")] = "tidegate-sandbox-secret",
    consumer_key: Annotated[str | None, typer.Option(
        "--consumer-key", help="Connected app key for the JWT bearer flow.")] = None,
    public_key_file: Annotated[Path | None, typer.Option(
        "--public-key-file", help="PEM public key that JWT bearer assertions are signed for.")]
    = None,
    daily_limit: Annotated[int, typer.Option(
        "--daily-limit", help="API calls allowed before 403 REQUEST_LIMIT_EXCEEDED.")] = 100_000,
    hard_delete_allowed: Annotated[bool, typer.Option(
        "--hard-delete-allowed", help="Grant the Bulk API Hard Delete permission.")] = False,
) -> None:
    """A local org that follows Salesforce's REST contract: OAuth, describe, Collections,
    Bulk API 2.0, SOQL, limits and injected faults."""
    from tidegate.sandbox.salesforce import serve

    def start() -> None:
        public_key = public_key_file.read_text() if public_key_file is not None else None
        serve(port, client_id, client_secret, consumer_key=consumer_key, public_key=public_key,
              daily_limit=daily_limit, hard_delete_allowed=hard_delete_allowed)

    _serve(start)


@sandbox_app.command("hubspot")
def sandbox_hubspot(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8792,
    token: Annotated[str, typer.Option(
        "--token", envvar="TIDEGATE_HUBSPOT_TOKEN", help="Private app token to accept.")]
    = "pat-na1-tidegate-sandbox",
    burst: Annotated[int, typer.Option(
        "--burst", help="Requests per 10 seconds before 429 TEN_SECONDLY_ROLLING.")] = 100,
    daily_limit: Annotated[int, typer.Option(
        "--daily-limit", help="Requests a day before 429 DAILY.")] = 250_000,
) -> None:
    """A local portal that follows HubSpot's CRM v3 contract, every request checked against
    HubSpot's published OpenAPI documents: properties, batch create/read/update/upsert/archive,
    207 multi-status, rate limits."""
    from tidegate.sandbox.hubspot import serve

    _serve(lambda: serve(port, token, burst=burst, daily_limit=daily_limit))


@sandbox_app.command("iterable")
def sandbox_iterable(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8793,
    api_key: Annotated[str, typer.Option(
        "--api-key", envvar="TIDEGATE_ITERABLE_KEY", help="Api-Key to accept.")]
    = "tidegate-sandbox-iterable-key",
) -> None:
    """A local project that follows Iterable's API: users/bulkUpdate, lists subscribe and
    unsubscribe, events/trackBulk, failures reported inside a 200, rate limits."""
    from tidegate.sandbox.iterable import serve

    _serve(lambda: serve(port, api_key))


def _serve(start: Callable[[], None]) -> None:
    """Run a local server until it is stopped; a bad option is reported like any error."""

    def go() -> int:
        start()
        return EXIT_OK

    _guard(False, go)


def _exit_code(statuses: list[str]) -> int:
    codes = [STATUS_EXIT.get(s, EXIT_FAILED) for s in statuses]
    for code in (EXIT_FAILED, EXIT_HELD, EXIT_REJECTED):
        if code in codes:
            return code
    return EXIT_OK


def _print_plan(result: dict[str, Any]) -> None:
    p = result["planned"]
    out.print(f"[bold]plan for {result['sync']}[/bold] (mode {result['mode']})", markup=True)
    from rich.table import Table

    table = Table("added", "changed", "removed", "unchanged", "invalid", "to send")
    table.add_row(*(str(p[k]) for k in ("added", "changed", "removed", "unchanged", "invalid")),
                  ", ".join(f"{n} {op}" for op, n in result["to_send"].items()) or "nothing")
    out.print(table)
    for reason, n in result.get("invalid_reasons", {}).items():
        out.print(f"[yellow]{n} invalid row(s): {escape(reason)}[/yellow]", markup=True)
    _print_verdict(result.get("verdict"))
    for category, samples in result.get("samples", {}).items():
        out.print(f"{category}:")
        for s in samples:
            out.print("  " + json.dumps(s, default=str), markup=False, highlight=False)


def _print_summaries(results: list[dict[str, Any]], title: str = "summary") -> None:
    # Tables are imported where they are printed: most commands print none, and a
    # run imports them while it plans (_import_ahead).
    from rich.table import Table

    table = Table("run", "sync", "status", "added", "changed", "removed", "unchanged",
                  "invalid", "created", "updated", "deleted", "rejected", "seconds",
                  title=title)
    colours = {"succeeded": "green", "partial": "yellow", "failed": "red", "held": "magenta"}
    for r in results:
        p, d = r["planned"], r["delivered"]
        status = f"[{colours.get(r['status'], 'white')}]{r['status']}[/]"
        table.add_row(str(r["run_id"]), r["sync"], status,
                      *(str(p[k]) for k in ("added", "changed", "removed", "unchanged", "invalid")),
                      *(str(d[k]) for k in ("created", "updated", "deleted")),
                      str(r["rejected"]), f"{r['duration_s']:.2f}")
    out.print(table)
    for r in results:
        if r.get("error") and title == "summary":
            if r["status"] == "held":
                out.print(f"[magenta]run {r['run_id']} is held; nothing was sent. "
                          f"`tidegate approve {r['run_id']}` delivers it, "
                          "`tidegate run --force` skips the guardrails.[/magenta]", markup=True)
                _print_verdict(r.get("verdict"))
            else:
                out.print(f"[yellow]run {r['run_id']}: {escape(r['error'])}[/yellow]",
                          markup=True)


def _print_changes(changes: list[dict[str, Any]], limit: int) -> None:
    if not changes:
        out.print("no changes delivered")
        return
    from rich.table import Table

    table = Table("key", "field", "old", "new", "op", "at", title="changes delivered")
    for c in changes[:limit]:
        table.add_row(*(escape(v) for v in (
            json.dumps(c["key"]), c["field"] or "", json.dumps(c["old"]), json.dumps(c["new"]),
            c["op"], c["at"])))
    out.print(table)
    if len(changes) > limit:
        out.print("… and more (--limit, or --json for all)")


def _print_verdict(verdict: dict[str, Any] | None) -> None:
    if not verdict:
        return
    if verdict.get("approved"):
        out.print("[green]guardrails: approved after a hold[/green]", markup=True)
    elif verdict.get("forced"):
        out.print("[yellow]guardrails: forced, not judged[/yellow]", markup=True)
    elif not verdict["held"]:
        out.print("[green]guardrails: pass[/green]", markup=True)
    label = "held" if verdict["held"] else "was held"
    for reason in verdict["reasons"]:
        out.print(f"[magenta]{label}: {escape(reason['message'])}[/magenta] "
                  f"{escape('[' + reason['rule'] + ']')}", markup=True, highlight=False)
        for sample in reason["samples"]:
            out.print(f"  key {json.dumps(sample['key'])}: {json.dumps(sample['old'])} → "
                      f"{json.dumps(sample['new'])}", markup=False, highlight=False)
    for note in verdict["notes"]:
        out.print(f"  note: {note}", markup=False, highlight=False)


def _app_for(args: list[str]) -> typer.Typer:
    """``app``, or, when ``args`` start with one of its commands, ``app`` with that command
    alone: typer makes every command's click objects from its signature on each start,
    some milliseconds for all of them, and a command line runs one."""
    named = [info for info in app.registered_commands
             if args and (info.name or typer.main.get_command_name(
                 info.callback.__name__ if info.callback else "")) == args[0]]
    if len(named) != 1:
        return app
    one = copy.copy(app)
    one.registered_commands, one.registered_groups = named, []
    return one


def main() -> None:
    """Console entry point: never lets a traceback reach the user."""
    code = 0
    try:
        _app_for(sys.argv[1:])()
    except SystemExit as exc:
        code = _system_exit_code(exc.code)
    except KeyboardInterrupt:
        err.print("interrupted; what was acknowledged is kept, rerun to send the rest")
        code = 130
    except Exception as exc:  # a bug: say so briefly, keep secrets out
        err.print(f"internal error: {redact(type(exc).__name__ + ': ' + str(exc))}")
        err.print("please report it; rerun with TIDEGATE_LOG=debug for details")
        if os.environ.get("TIDEGATE_LOG", "").lower() == "debug":
            import traceback

            err.print(redact(traceback.format_exc()))
        code = 1
    _leave(code)


def _system_exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    err.print(str(code))
    return 1


def _leave(code: int) -> NoReturn:
    """End the process without tearing the interpreter down.

    By now the command has closed what it opened (state store, DuckDB, HTTP
    clients) and written its output; what teardown would add is freeing
    DuckDB, Arrow and a few hundred modules object by object, about a tenth
    of a second on every command.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)
