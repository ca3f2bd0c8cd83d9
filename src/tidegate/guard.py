"""Guardrails: the rules a plan is judged by before anything is sent, and the verdict.

Row checks become SQL over the planner's ``m`` table (``row_checks``): a failing
row is invalid — reported, never sent — unless its check says ``hold``. Everything
else is judged on the finished plan (``judge``): run-level limits, deviation from
the sync's recent runs, transition checks against the values last delivered, the
checks that hold, and the safe defaults that apply with no configuration at all.
Any rule that trips holds the run: nothing is sent until someone approves it
(``tidegate approve``) or forces it (``run --force``).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tidegate.config import Check, Guardrails

if TYPE_CHECKING:
    from tidegate.plan import Plan, PlanCounts

SAMPLES = 5
SAFE_REMOVED_PCT = 50.0  # a mirror run may delete at most this share of known records


@dataclass
class Reason:
    """One rule that tripped: which, why, how many rows, and a few of them."""

    rule: str
    message: str
    rows: int = 0
    field: str | None = None
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclass
class Verdict:
    held: bool
    reasons: list[Reason] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    forced: bool = False
    approved: bool = False  # held, then approved: ``reasons`` are what it was held for

    def as_dict(self) -> dict[str, Any]:
        return {"held": self.held, "forced": self.forced, "approved": self.approved,
                "reasons": [asdict(r) for r in self.reasons], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(held=bool(data.get("held")), forced=bool(data.get("forced")),
                   approved=bool(data.get("approved")),
                   reasons=[Reason(**r) for r in data.get("reasons", [])],
                   notes=list(data.get("notes", [])))

    def summary(self) -> str:
        """One line naming every rule that tripped, for the run's error text."""
        return "held by guardrails: " + "; ".join(
            f"{r.message} [{r.rule}]" for r in self.reasons)


# --- row checks -------------------------------------------------------------------------


@dataclass(frozen=True)
class RowCheck:
    """One rule of a check as SQL: ``failing`` is true for a row that breaks it."""

    field: str
    rule: str
    failing: str
    reason: str
    hold: bool


def row_checks(checks: Sequence[Check]) -> list[RowCheck]:
    """The row rules of ``checks`` as conditions over ``m``'s columns (destination names)."""
    out = []
    for check in checks:
        col = _q(check.field)
        hold = check.hold
        if check.not_null:
            out.append(RowCheck(check.field, "not_null", f"{col} is null",
                                f"check failed: {check.field} is null", hold))
        if check.between is not None:
            low, high = check.between
            number = f"try_cast({col} as double)"
            out.append(RowCheck(
                check.field, "between",
                f"{col} is not null and ({number} is null or {number} < {float(low)!r} "
                f"or {number} > {float(high)!r})",
                f"check failed: {check.field} is not between {_num(low)} and {_num(high)}", hold))
        if check.accepted_values is not None:
            accepted = check.accepted_values
            if accepted and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in accepted):
                # Numbers compare as numbers: 1 accepts 1.0 from a DOUBLE column.
                values = ", ".join(repr(float(v)) for v in accepted)
                failing = f"{col} is not null and try_cast({col} as double) not in ({values})"
            else:
                values = ", ".join(_literal(v) for v in accepted)
                failing = f"{col} is not null and cast({col} as varchar) not in ({values})"
            out.append(RowCheck(
                check.field, "accepted_values", failing,
                f"check failed: {check.field} is not one of the accepted values", hold))
        if check.matches is not None:
            out.append(RowCheck(
                check.field, "matches",
                f"{col} is not null and not regexp_matches(cast({col} as varchar), "
                f"{_literal(check.matches)})",
                f"check failed: {check.field} does not match {check.matches}", hold))
        if check.unique:
            out.append(RowCheck(
                check.field, "unique",
                f"{col} is not null and {col} in (select {col} from m where __invalid is null "
                f"group by {col} having count(*) > 1)",
                f"check failed: {check.field} is not unique", hold))
        if check.max_length is not None:
            out.append(RowCheck(
                check.field, "max_length",
                f"{col} is not null and length(cast({col} as varchar)) > {check.max_length}",
                f"check failed: {check.field} is longer than {check.max_length} characters",
                hold))
    return out


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "'true'" if value else "'false'"
    return "'" + str(value).replace("'", "''") + "'"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- judging the plan -------------------------------------------------------------------


def judge(
    plan: Plan,
    rules: Guardrails,
    *,
    known: int,
    history: Sequence[PlanCounts],
    old_records: Callable[[pa.Array], pa.Table],
    model_rows: bool = True,
) -> Verdict:
    """Hold or pass ``plan``; ``known`` is how many keys state holds, ``history`` the
    planned counts of the sync's recent successful runs, newest first, and
    ``old_records`` reads the records last delivered for some keys (key, record).
    Without ``model_rows`` the plan's rows are not the sync's model (a revert), so
    the rules about how many rows the model returns are not judged."""
    judge_ = _Judge(plan, rules, known, list(history), old_records)
    judge_.model_rows = model_rows
    judge_.safe_defaults()
    judge_.run_limits()
    judge_.deviation()
    judge_.holding_checks()
    judge_.transitions()
    return Verdict(held=bool(judge_.reasons), reasons=judge_.reasons, notes=judge_.notes)


class _Judge:
    def __init__(self, plan: Plan, rules: Guardrails, known: int, history: list[PlanCounts],
                 old_records: Callable[[pa.Array], pa.Table]) -> None:
        self.plan, self.rules, self.known, self.history = plan, rules, known, history
        self.old_records = old_records
        self.counts = plan.counts
        self.reasons: list[Reason] = []
        self.notes: list[str] = []
        self.model_rows = True

    # Rules

    def safe_defaults(self) -> None:
        if not self.rules.safe_defaults:
            self.notes.append("safe defaults are off for this sync")
            return
        c = self.counts
        # In delete mode the model is a queue of deletions and state the keys already
        # deleted: an empty queue is normal, and there are no known records to protect.
        if self.plan.mode == "delete":
            return
        if self.model_rows and self.known and c.added + c.changed + c.unchanged + c.invalid == 0:
            self.reasons.append(Reason(
                "safe_defaults.zero_rows",
                f"the model returned no rows while state knows {self.known:,}",
                rows=self.known))
            return
        removing = self._removing()
        if (self.rules.max_removed_pct is None and self.known and removing
                and removing * 100 / self.known > SAFE_REMOVED_PCT):
            self.reasons.append(Reason(
                "safe_defaults.removed",
                f"{removing:,} of {self.known:,} known records "
                f"({removing * 100 / self.known:.1f} %) would be deleted (limit "
                f"{_num(SAFE_REMOVED_PCT)} % unless max_removed_pct says otherwise)",
                rows=removing, samples=self._samples("removed")))

    def run_limits(self) -> None:
        c, r = self.counts, self.rules
        for name, count, limit, verb in (
            ("max_added_pct", c.added, r.max_added_pct, "added"),
            ("max_changed_pct", c.changed, r.max_changed_pct, "changed"),
            ("max_removed_pct", self._removing(), r.max_removed_pct, "removed"),
        ):
            if limit is None:
                continue
            if verb not in self._sent():
                why = ("state holds the keys already deleted, not records to protect"
                       if self.plan.mode == "delete" else f"the mode sends no {verb} rows")
                self.notes.append(f"{name}: not judged in {self.plan.mode} mode, {why}")
                continue
            if not self.known:
                self.notes.append(f"{name}: not judged, state knows no rows yet")
                continue
            pct = count * 100 / self.known
            if pct > limit:
                self.reasons.append(Reason(
                    name, f"{pct:.1f} % of the {self.known:,} known rows would be {verb} "
                    f"({count:,} rows; limit {_num(limit)} %)", rows=count,
                    samples=self._samples(verb)))
        valid = c.added + c.changed + c.unchanged
        if not self.model_rows:
            return
        if r.min_rows is not None and valid < r.min_rows:
            self.reasons.append(Reason(
                "min_rows", f"the model has {valid:,} valid rows (at least {r.min_rows:,})",
                rows=valid))
        if r.max_rows is not None and valid > r.max_rows:
            self.reasons.append(Reason(
                "max_rows", f"the model has {valid:,} valid rows (at most {r.max_rows:,})",
                rows=valid))

    def deviation(self) -> None:
        rule = self.rules.deviation
        if rule is None:
            return
        past = self.history[: rule.runs]
        if len(past) < 3:
            self.notes.append(f"max_deviation: not judged, {len(past)} earlier run(s) "
                              "(it needs 3)")
            return
        for verb in self._sent():
            count = getattr(self.counts, verb)
            median = statistics.median(getattr(p, verb) for p in past)
            if count > rule.min_rows and count > rule.factor * median:
                self.reasons.append(Reason(
                    "max_deviation", f"{count:,} rows would be {verb}, {_ratio(count, median)} "
                    f"the median of the last {len(past)} runs ({_num(median)}; limit "
                    f"{_num(rule.factor)}×)", rows=count, samples=self._samples(verb)))

    def holding_checks(self) -> None:
        for check, rows in self.plan.check_holds:
            self.reasons.append(Reason(
                f"checks.{check.rule}", f"{rows:,} row(s) to send fail: {check.reason}",
                rows=rows, field=check.field, samples=self._check_samples(check)))

    def transitions(self) -> None:
        checks = [c for c in self.rules.checks if c.transition_rules]
        if not checks or not self.counts.changed or "changed" not in self._sent():
            return
        self._load_old()
        for check in checks:
            for rule in check.transition_rules:
                cond, what = _transition(check, rule)
                found = self.plan.con.execute(
                    f"select count(*) from diff d join m on m.rowid = d.__rid "
                    f"join old o on o.key = d.__key where d.__cat = 'changed' and {cond}"
                ).fetchall()[0][0]
                if found > check.max_rows:
                    self.reasons.append(Reason(
                        rule, f"{found:,} changed row(s) would {what} (allowed: "
                        f"{check.max_rows:,})", rows=found, field=check.field,
                        samples=self._transition_samples(check, cond)))
                elif found:
                    self.notes.append(f"{rule} on {check.field}: {found:,} row(s), within the "
                                      f"{check.max_rows:,} allowed")

    # Helpers

    def _sent(self) -> list[str]:
        """The categories this mode sends, so rules never judge rows that stay put."""
        from tidegate.plan import SENDS  # the planner's table of record (SPEC §3)

        return [c for c in ("added", "changed", "removed") if c in SENDS[self.plan.mode]]

    def _removing(self) -> int:
        return self.counts.removed if self.plan.mode == "mirror" else 0

    def _load_old(self) -> None:
        self.plan.load_old(self.old_records)

    def _samples(self, verb: str) -> list[dict[str, Any]]:
        cat = verb
        if cat in ("changed", "removed"):
            self._load_old()
            old = "o.record"
            join = "left join old o on o.key = d.__key"
        else:
            old, join = "null", ""
        rows = self.plan.con.execute(
            f"select d.__key, {old}, case when d.__rid is null then null else "
            f"{self.plan.fields_json_sql('m.')} end "
            f"from diff d left join m on m.rowid = d.__rid {join} "
            f"where d.__cat = ? order by d.__key limit {SAMPLES}", [cat]
        ).fetchall()
        return [{"key": json.loads(k), "old": _json(o), "new": _json(n)} for k, o, n in rows]

    def _check_samples(self, check: RowCheck) -> list[dict[str, Any]]:
        self._load_old()
        col = _q(check.field)
        cats = ", ".join(f"'{c}'" for c in self._sent() if c != "removed")
        rows = self.plan.con.execute(
            f"select d.__key, json_extract(o.record, {_path(check.field)}), to_json(m.{col}) "
            f"from diff d join m on m.rowid = d.__rid left join old o on o.key = d.__key "
            f"where d.__cat in ({cats}) and ({check.failing}) "
            f"order by d.__key limit {SAMPLES}"
        ).fetchall()
        return [{"key": json.loads(k), "old": _json(o), "new": _json(n)} for k, o, n in rows]

    def _transition_samples(self, check: Check, cond: str) -> list[dict[str, Any]]:
        rows = self.plan.con.execute(
            f"select d.__key, json_extract(o.record, {_path(check.field)}), "
            f"to_json(m.{_q(check.field)}) from diff d join m on m.rowid = d.__rid "
            f"join old o on o.key = d.__key where d.__cat = 'changed' and {cond} "
            f"order by d.__key limit {SAMPLES}"
        ).fetchall()
        return [{"key": json.loads(k), "old": _json(o), "new": _json(n)} for k, o, n in rows]


def _transition(check: Check, rule: str) -> tuple[str, str]:
    """The SQL condition (over ``m`` and ``old o``) a changed row breaks, and its words."""
    col, path = f"m.{_q(check.field)}", _path(check.field)
    old_json = f"json_extract(o.record, {path})"
    old_num = f"try_cast(json_extract_string(o.record, {path}) as double)"
    new_num = f"try_cast({col} as double)"
    if rule == "no_null_overwrite":
        return (f"{old_json} is not null and json_type({old_json}) <> 'NULL' and {col} is null",
                f"replace a value of {check.field} with null")
    if rule == "no_zero_overwrite":
        return (f"{old_num} <> 0 and {new_num} = 0",
                f"replace a non-zero {check.field} with 0")
    pct = check.max_change_pct
    return (f"{old_num} <> 0 and abs({new_num} - {old_num}) * 100 / abs({old_num}) > {pct!r}",
            f"change {check.field} by more than {_num(float(pct or 0))} %")


def _path(field_name: str) -> str:
    return "'$." + json.dumps(field_name).replace("'", "''") + "'"


def _json(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def _ratio(count: int, median: float) -> str:
    return f"{count / median:.1f}×" if median else "far above"
