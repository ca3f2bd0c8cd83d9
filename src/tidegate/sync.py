"""One run of one sync: extract → plan → deliver → commit, and its run record.

Every run is recorded before anything is read; whatever happens, the record
ends with the truth (succeeded, partial, failed and why). State advances only
in ``state.commit_batch``, once the destination acknowledged a batch.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from tidegate import audit, guard, runs, state
from tidegate.config import BigQuerySourceConfig, Located, SnowflakeSourceConfig, SyncConfig
from tidegate.deliver import Deliverer
from tidegate.destinations.base import BatchResult, Destination
from tidegate.errors import ConfigError, FatalError, Problem, TidegateError
from tidegate.guard import Verdict
from tidegate.plan import AttachedModel, MappingProblem, Outgoing, Plan, Planner
from tidegate.progress import NullReporter, Reporter
from tidegate.redact import redact
from tidegate.revert import Revert
from tidegate.revert import prepare as prepare_revert
from tidegate.shard import Shard
from tidegate.sources import ModelQueryError, Source

if TYPE_CHECKING:
    from tidegate.project import Project
    from tidegate.warehouse_diff import WarehouseDiff

log = logging.getLogger("tidegate")
Screen = Callable[[pa.Table], pa.Array | None]


def plan_only(project: Project, name: str, *, full: bool = False,
              shard: Shard | None = None) -> dict[str, Any]:
    """The plan of ``name`` (of one shard of it) with samples; nothing is sent or recorded."""
    sync = project.sync(name)
    timings: dict[str, float] = {}
    try:
        plan, source, known, differ = _make_plan(project, name, sync, full, NullReporter(),
                                                 timings, shard=shard)
    except ConfigError as exc:
        raise _locate(exc, project, name) from None
    try:
        if differ is None and not known.from_snapshot and shard is None:
            state.save_snapshot(project.snapshot_dir, project.store, name, known.version,
                                known.table)
        latest = runs.list_runs(project.store, name, 1)
        verdict = guard.judge(
            plan, sync.guardrails, known=_known_rows(known, differ),
            history=runs.recent_counts(project.store, name, _history_runs(sync),
                                       before=(latest[0].id + 1) if latest else 1,
                                       shard=shard),
            old_records=lambda keys: state.records_of(project.store, name, keys),
        )
        return {
            "sync": name,
            "status": "planned",
            "mode": sync.mode,
            "verdict": verdict.as_dict(),
            "planned": plan.counts.as_dict(),
            "to_send": dict(plan.to_send),
            "invalid_reasons": plan.invalid_reasons,
            "samples": plan.samples(),
            "timings": timings,
            **({"shard": {"index": shard.index, "count": shard.count}} if shard else {}),
        }
    except duckdb.OutOfMemoryException as exc:
        raise out_of_memory(project) from exc
    finally:
        plan.close()
        source.close()
        if differ is not None:
            differ.finish()


def run_sync(
    project: Project,
    name: str,
    *,
    full: bool,
    reporter: Reporter,
    force: bool = False,
    approve: int | None = None,
    revert_of: int | None = None,
    shard: Shard | None = None,
    queued: int | None = None,
) -> dict[str, Any]:
    """Run ``name`` once; return its summary. Config problems found on the way raise.

    The plan is judged by the sync's guardrails first; a held run sends nothing.
    ``force`` skips the judging (and is recorded). ``approve`` takes held run
    ``approve`` up again: it is planned again and delivered if the plan is the one
    that was held, or judged afresh if the model or state changed since.
    ``revert_of`` plans, instead of the model, putting back what that run changed.
    ``shard`` plans and delivers only the keys that shard owns (see ``tidegate.shard``);
    the other shards of the split may run at the same time.
    ``queued`` takes up that queued run (a server's) instead of recording a new one.
    """
    sync = project.sync(name)
    store = project.store
    held: runs.RunRecord | None = None
    undo: Revert | None = None
    if revert_of is not None:
        undo = prepare_revert(store, name, sync, runs.get_run(store, revert_of),
                              project.settings.audit.mask)
    if approve is None:
        run_id = runs.start_run(
            store, sync=name, mode=sync.mode, destination=sync.destination,
            object=sync.object, full=full, revert_of=revert_of, shard=shard,
            queued=queued,
        )
    else:
        held = runs.resume_held(store, approve)
        run_id, full, shard = held.id, held.full, held.shard
    log.info("run %s of sync %s started", run_id, name)
    timings: dict[str, float] = {}
    status, error = "failed", None
    config_error: ConfigError | None = None
    plan: Plan | None = None
    source: Source | None = None
    destination: Destination | None = None
    progress: Progress | None = None
    try:
        plan, source, known, differ = _make_plan(project, name, sync, full, reporter, timings,
                                                 undo, shard=shard)
        # A revert, a shard or a plan made in the warehouse saw only part of state: its
        # plan cannot be kept as a snapshot of the whole (other shards commit while a
        # shard runs; the warehouse keeps its own copy of state).
        progress = Progress(known.version, whole=undo is None and differ is None
                            and shard is None, warehouse=differ)
        invalid = list(plan.invalid_rows()) if plan.counts.invalid else []
        verdict = _judge(project, name, sync, plan, known, run_id, force=force, held=held,
                         synthetic=undo is not None, known_rows=_known_rows(known, differ),
                         shard=shard)
        if undo is not None:
            verdict.notes[:0] = [f"reverts run {undo.of}", *undo.notes]
            runs.record_conflicts(store, run_id, name, undo.conflicts)
        runs.record_plan(
            store, run_id, plan.counts, plan.total_to_send, invalid, name,
            verdict=verdict.as_dict(), digest=plan.digest(),
            samples=plan.samples() if verdict.held else (held.plan_samples if held else None),
            forced=force, approved=verdict.approved,
        )
        log.info("planned %s: %s, sending %s", name, plan.counts.as_dict(), plan.total_to_send)
        if verdict.held:
            status, error = "held", verdict.summary()
            log.info("run %s of sync %s is %s", run_id, name, error)
        else:
            # The audit log records each change's old value: read it for the keys
            # that have one, before anything is sent.
            plan.load_old(lambda keys: state.records_of(store, name, keys))
            if project.settings.audit.mask:
                plan.mask_audit(project.settings.audit.mask, audit.salt(store))
            destination = project.destination(name, run_id, plan.to_send)
            started = time.perf_counter()
            _deliver(project, name, sync, run_id, plan, destination, reporter, progress)
            timings["deliver_s"] = round(time.perf_counter() - started, 3)
            record = runs.get_run(store, run_id)
            status = "partial" if record.rejected or plan.counts.invalid else "succeeded"
            if plan.counts.invalid:
                error = _invalid_summary(plan.invalid_reasons)
    except ConfigError as exc:
        config_error = _locate(exc, project, name)
        error = redact(str(config_error))
    except TidegateError as exc:
        error = redact(str(exc))
    except Exception as exc:  # a bug must still leave a truthful run record
        error = redact(f"unexpected {type(exc).__name__}: {exc}")
        log.debug("%s", redact(traceback.format_exc()))
    finally:
        reporter.finish()
        if plan is not None and progress is not None and progress.exact and progress.whole:
            after = _save_snapshot(project, name, plan, progress)
            if after is not None and progress.kept:
                _compact_if_due(project, name, after.num_rows, after)
        elif shard is not None and plan is not None and progress is not None and progress.kept:
            # The shards' keys are spread evenly: the whole state is about count times this one's.
            c = plan.counts
            _compact_if_due(project, name, (c.unchanged + c.changed + c.added) * shard.count)
        if progress is not None and progress.warehouse is not None:
            progress.warehouse.after_run(project, compact=progress.exact and bool(progress.kept))
        report = _report(destination)
        for closeable in (plan, source, destination):
            if closeable is not None:
                closeable.close()
        record = runs.finish_run(store, run_id, status, error, timings, report)
    log.info("run %s of sync %s %s", run_id, name, status)
    summary = record.summary()
    if project.config.alerts:
        from tidegate.alerts import notify  # mail and TLS modules load only when alerts exist

        notify(project.config.alerts, summary, project=project.name)
    if project.config.writeback is not None:
        _write_back(project)
    if config_error is not None:
        raise config_error
    return summary


def _judge(
    project: Project,
    name: str,
    sync: SyncConfig,
    plan: Plan,
    known: state.Known,
    run_id: int,
    *,
    force: bool,
    held: runs.RunRecord | None,
    synthetic: bool = False,
    known_rows: int | None = None,
    shard: Shard | None = None,
) -> Verdict:
    if force:
        return Verdict(held=False, forced=True,
                       notes=["forced: the guardrails were not judged (run --force)"])
    if held is not None and plan.digest() == held.plan_digest:
        # What it was held for stays on the record, with who let it through and when.
        before = Verdict.from_dict(held.verdict or {})
        return Verdict(held=False, approved=True, reasons=before.reasons, notes=[
            f"approved: run {run_id} sends exactly the plan that was held "
            f"({held.finished_at.isoformat() if held.finished_at else 'earlier'})",
            *before.notes])
    verdict = guard.judge(
        plan, sync.guardrails,
        known=known.table.num_rows if known_rows is None else known_rows,
        history=runs.recent_counts(project.store, name, _history_runs(sync), before=run_id,
                                   shard=shard),
        old_records=lambda keys: state.records_of(project.store, name, keys),
        model_rows=not synthetic,
    )
    if held is not None:
        verdict.notes.insert(0, "the model or state changed since this run was held: it was "
                                "planned and judged again")
        verdict.approved = not verdict.held
    return verdict


def _report(destination: Destination | None) -> dict[str, Any]:
    if destination is None:
        return {}
    try:
        return destination.report()
    except Exception as exc:  # a report is extra: it must not change how the run ended
        log.warning("could not read %s's report: %s", destination.describe(), redact(str(exc)))
        return {}


def _write_back(project: Project) -> None:
    """Copy finished runs and their changes into the warehouse; a failure waits for the
    next run, which writes everything still pending."""
    from tidegate.writeback import catch_up

    config = project.config.writeback
    source = project.settings.sources[config.source]
    assert not isinstance(source, SnowflakeSourceConfig | BigQuerySourceConfig)  # config.py
    try:
        written = catch_up(config, source, project.root,
                           project.store, project=project.name)
        log.info("wrote %s run(s) back to source %s", len(written), config.source)
    except TidegateError as exc:
        log.warning("could not write runs back to source %s (they stay pending): %s",
                    config.source, redact(str(exc)))


def _history_runs(sync: SyncConfig) -> int:
    deviation = sync.guardrails.deviation
    return deviation.runs if deviation is not None else 0


@dataclass
class Progress:
    """What this run committed, so the state it leaves can be kept as a snapshot."""

    version: int
    kept: list[pa.Table] = field(default_factory=list)
    dropped: list[pa.Array] = field(default_factory=list)
    exact: bool = True  # False once a commit may or may not have happened
    whole: bool = True  # False when the plan saw only part of state (a revert)
    warehouse: WarehouseDiff | None = None  # keeps the warehouse's copy of state current


def _known_rows(known: state.Known, differ: WarehouseDiff | None) -> int:
    return differ.known_rows if differ is not None else int(known.table.num_rows)


def _save_snapshot(
    project: Project, name: str, plan: Plan, progress: Progress
) -> pa.Table | None:
    """Keep the (key, hash) state this run left as a snapshot, and return it."""
    try:
        after = plan.state_after(progress.kept, progress.dropped)
        state.save_snapshot(project.snapshot_dir, project.store, name, progress.version, after)
    except (OSError, duckdb.Error) as exc:  # only a cache: the next run reads the store
        log.warning("could not keep the state snapshot of %s: %s", name, exc)
        return None
    return after


def _compact_if_due(project: Project, name: str, live: int, after: pa.Table | None = None
                    ) -> None:
    """Compact when due; keep ``after`` (the whole state this run left) as the snapshot."""
    try:
        if state.compaction_due(project.store, name, live):
            spill = project.root / ".tidegate" / "work"
            spill.mkdir(parents=True, exist_ok=True)
            written, version = state.compact(project.store, name,
                                             memory_limit=project.memory_limit, spill=spill)
            if after is not None:
                state.save_snapshot(project.snapshot_dir, project.store, name, version, after)
            log.info("compacted the state of %s into %s segment(s)", name, written)
    except (duckdb.Error, OSError) as exc:  # maintenance: the state is whole either way
        log.warning("could not compact the state of %s: %s", name, redact(str(exc)))


def _make_plan(
    project: Project,
    name: str,
    sync: SyncConfig,
    full: bool,
    reporter: Reporter,
    timings: dict[str, float],
    undo: Revert | None = None,
    shard: Shard | None = None,
) -> tuple[Plan, Source, state.Known, WarehouseDiff | None]:
    started = time.perf_counter()
    reporter.phase("planning")
    source = project.source(sync.source)
    try:
        with _screening(project, name) as screen:
            planner = Planner(
                name, sync, workdir=project.root / ".tidegate" / "work",
                memory_limit=project.memory_limit, shard=shard if undo is None else None,
                screen=screen,
            )
            plan, known, differ = _plan_with(project, name, sync, planner, source, full,
                                             undo, shard)
        if differ is not None:
            timings["warehouse_bytes_out"] = differ.pulled.bytes
    except ModelQueryError as exc:
        source.close()
        raise ConfigError(Problem(f"the model query failed: {exc}", key="query",
                                  fix="fix the SQL; run it in the warehouse to check")) from exc
    except MappingProblem as exc:
        source.close()
        raise ConfigError(Problem(exc.message, key=exc.key, fix=exc.fix)) from exc
    except duckdb.OutOfMemoryException as exc:
        source.close()
        raise out_of_memory(project) from exc
    except BaseException:
        source.close()
        raise
    timings["plan_s"] = round(time.perf_counter() - started, 3)
    return plan, source, known, differ


def _plan_with(
    project: Project,
    name: str,
    sync: SyncConfig,
    planner: Planner,
    source: Source,
    full: bool,
    undo: Revert | None,
    shard: Shard | None,
) -> tuple[Plan, state.Known, WarehouseDiff | None]:
    """Plan in the warehouse when the sync asks and can; else against the local store."""
    if undo is None and sync.diff == "warehouse" and shard is not None:
        log.warning("sync %s: a shard plans with the local state store; `diff: "
                    "warehouse` keeps one copy of state for the whole sync", name)
    elif undo is None and sync.diff == "warehouse":
        log.info("planning %s in source %s", name, sync.source)
        from tidegate.warehouse_diff import plan_in_warehouse  # only syncs that ask load it

        made = plan_in_warehouse(project, name, sync, source, planner, full=full)
        if made is not None:
            return made
    known = state.read_hashes(project.store, name, project.snapshot_dir)
    if shard is not None:  # only its own keys can be unchanged, changed or removed
        known = state.Known(shard.filter(known.table), known.version, known.from_snapshot)
    against = known.table
    model: pa.RecordBatchReader | AttachedModel
    if undo is None:
        log.info("extracting %s from source %s%s", name, sync.source,
                 f" (shard {shard})" if shard is not None else "")
        model = source.in_place(sync.sql) or source.read(sync.sql)
    else:  # the model's types, from a query that reads no rows
        schema = source.read(f"select * from ({sync.sql}) as model limit 0").schema
        model, against = undo.model(sync, schema), undo.state
    return planner.plan(model, against, full=full), known, None


@contextmanager
def _screening(project: Project, name: str) -> Iterator[Screen | None]:
    """The destination's check of values its schema cannot take, when it has one."""
    cls, _ = project.destination_settings(project.sync(name).destination)
    if not cls.capabilities.checks_values:
        yield None
        return
    checker = project.destination(name)
    try:
        yield checker.invalid_values
    finally:
        checker.close()


def _deliver(
    project: Project,
    name: str,
    sync: SyncConfig,
    run_id: int,
    plan: Plan,
    destination: Destination,
    reporter: Reporter,
    progress: Progress,
) -> None:
    total = plan.total_to_send
    if not total:
        return
    caps = destination.limits()
    destination.prepare(plan.schema)
    batch_size = min(sync.batch_size or caps.max_records, caps.max_records)
    concurrency = min(sync.concurrency or caps.concurrency, caps.concurrency)
    reporter.phase("sending")
    reporter.start(total)

    def on_results(settled: list[tuple[Outgoing, BatchResult]]) -> None:
        acknowledged = [(out, {k: redact(v) for k, v in result.rejected.items()})
                        for out, result in settled]
        progress.exact = False
        done = state.commit_batches(project.store, sync=name, run_id=run_id,
                                    acknowledged=acknowledged)
        progress.kept.append(done.kept)
        progress.dropped.append(done.dropped)
        progress.version = done.version
        progress.exact = True
        if progress.warehouse is not None:
            progress.warehouse.advance(acknowledged, done.version)
        for out, rejected in acknowledged:
            reporter.advance(len(out.batch))
            log.info("batch %s (%s, %s records, %s rejected) acknowledged",
                     out.batch.id, out.batch.operation, len(out.batch), len(rejected))

    rates = [r for r in (caps.requests_per_second, sync.requests_per_second) if r]
    deliverer = Deliverer(
        destination, concurrency=concurrency, rate=min(rates) if rates else None,
        retry=project.retry,
    )
    try:
        batches = plan.outgoing(batch_size, caps.max_bytes, typed=caps.typed_records,
                                measure=destination.record_bytes)
        deliverer.run(batches, on_results)
    except duckdb.OutOfMemoryException as exc:
        raise out_of_memory(project) from exc


def out_of_memory(project: Project) -> FatalError:
    return FatalError(
        f"planning needed more than its memory limit ({project.memory_limit}); set "
        "TIDEGATE_MEMORY_LIMIT higher (e.g. TIDEGATE_MEMORY_LIMIT=2GB) and run again"
    )


def _invalid_summary(reasons: dict[str, int]) -> str:
    parts = [f"{n} row(s): {reason}" for reason, n in sorted(reasons.items())]
    return "invalid rows were not sent: " + "; ".join(parts)


def _locate(exc: ConfigError, project: Project, name: str) -> ConfigError:
    """Point problems found while running at the sync's file and line."""
    origin: Located = project.config.sync_origin[name]
    located = []
    for p in exc.problems:
        if p.file is None and p.key:
            path = (*origin.path, p.key)
            located.append(Problem(p.message, origin.doc.file, origin.doc.line_of(path),
                                   ".".join(map(str, path)), p.fix))
        else:
            located.append(p)
    return ConfigError(located)
