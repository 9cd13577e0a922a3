"""A grading rule compiled: criteria + three-valued boolean expressions + grade levels -> Finding."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from service.errors import RulesError
from service.rules_engine.conditions import Compiled, Compiler, Context, compile_criterion
from service.rules_engine.model import Finding, GradeResult, Reason, RuleInfo, Window
from service.timeline.facts import Fact, Timeline

# An expression answers True / False / None (unknown) with the reasons that decided it.
Expression = Callable[[Context, Window], tuple[bool | None, list[Reason], list[str]]]


def compile_expression(spec: Any, criteria: Mapping[str, Compiled], rule_id: str) -> Expression:
    if isinstance(spec, str):
        spec = {"criterion": spec}
    if "criterion" in spec:
        name = spec["criterion"]
        if name not in criteria:
            raise RulesError(rule_id, f"expression names unknown criterion {name!r}")
        label = criteria[name].label
        at_least = spec.get("at_least")

        def criterion(ctx: Context, window: Window) -> tuple[bool | None, list[Reason], list[str]]:
            result = ctx.result(name, window)
            if result.value is None:
                return None, [], [result.missing or f"{label}: data missing"]
            truth = result.value >= at_least if at_least is not None else bool(result.value)
            return truth, [Reason(name, label, result.value, result.evidence)], []

        return criterion
    for operator in ("any", "all"):
        if operator in spec:
            parts = [compile_expression(part, criteria, rule_id) for part in spec[operator]]
            return _any(parts) if operator == "any" else _all(parts)
    raise RulesError(rule_id, f"cannot compile expression {spec!r}")


def _any(parts: list[Expression]) -> Expression:
    def evaluate(ctx: Context, window: Window) -> tuple[bool | None, list[Reason], list[str]]:
        unknown: list[str] = []
        for part in parts:
            truth, reasons, missing = part(ctx, window)
            if truth:
                return True, reasons, []
            if truth is None:
                unknown += missing
        return (None, [], unknown) if unknown else (False, [], [])

    return evaluate


def _all(parts: list[Expression]) -> Expression:
    def evaluate(ctx: Context, window: Window) -> tuple[bool | None, list[Reason], list[str]]:
        collected: list[Reason] = []
        unknown: list[str] = []
        for part in parts:
            truth, reasons, missing = part(ctx, window)
            if truth is False:
                return False, reasons, []
            if truth is None:
                unknown += missing
            collected += reasons
        return (None, collected, unknown) if unknown else (True, collected, [])

    return evaluate


@dataclass(frozen=True)
class Level:
    grade: int
    when: Expression


class GradingRule:
    """One grading rule file, compiled."""

    def __init__(self, document: Mapping[str, Any], params: Mapping[str, Any], compiler: Compiler) -> None:
        rule_id = document["id"]
        self.info = RuleInfo(
            rule_id=rule_id,
            rule_version=str(document["version"]),
            title=document["title"],
            toxicity=document["toxicity"],
            assessment_code=document["assessment_code"],
            guideline_id=document["guideline"]["id"],
            guideline_citation=" ".join(document["guideline"]["citation"].split()),
            guideline_url=document["guideline"]["url"],
            outcome_codes={int(k): str(v) for k, v in document.get("outcome_codes", {}).get("icd10cm", {}).items()},
        )
        self.params = params
        self.criteria = {name: compile_criterion(name, spec, compiler) for name, spec in document["criteria"].items()}
        grading = document["grading"]
        self.window = timedelta(hours=compiler.number(grading["window_hours"]))
        self.requires = compile_expression(grading["requires"], self.criteria, rule_id)
        self.levels = [Level(int(level["grade"]), compile_expression(level["when"], self.criteria, rule_id)) for level in grading["levels"]]
        self.atypical_after = int(compiler.number(grading["atypical_onset_after_day"])) if "atypical_onset_after_day" in grading else None
        self.onset_criterion = next((name for name, spec in document["criteria"].items() if spec["type"] == "first_occurrence"), None)

    def grade(self, ctx: Context, window: Window) -> GradeResult:
        truth, gate_reasons, gate_missing = self.requires(ctx, window)
        if truth is None:
            return GradeResult(None, window, (), (), tuple(gate_missing), self._notes(ctx, window))
        if truth is False:
            examined = tuple(fact for name in self.criteria for fact in ctx.memo.get((name, window.start, window.end), _EMPTY).evidence)
            return GradeResult(0, window, examined, (), (), self._notes(ctx, window))
        reasons = gate_reasons
        grade = 0
        for level in self.levels:
            level_truth, level_reasons, _missing = level.when(ctx, window)
            if level_truth:
                grade, reasons = level.grade, gate_reasons + level_reasons
                break
        # Every criterion without data in the window is reported, even one that could not change this grade:
        # the clinician sees that blood pressure or oxygen was not charted (clinical-spec section 1).
        undecided = [result.missing for result in (ctx.result(name, window) for name in self.criteria)
                     if result.value is None and result.missing]
        unique = tuple(_unique_reasons(reasons))
        return GradeResult(grade, window, _evidence(unique), unique, tuple(dict.fromkeys(undecided)), self._notes(ctx, window))

    def evaluate(self, timeline: Timeline, terminology, rule_set_version: str) -> Finding:
        ctx = Context(timeline, terminology, self.criteria)
        as_of = timeline.as_of
        current = self.grade(ctx, Window(as_of - self.window, as_of))
        maximum = self._maximum(ctx, current)
        onset = onset_day = None
        if self.onset_criterion:
            first = ctx.result(self.onset_criterion, ctx.since_day_zero(as_of))
            onset = first.first_positive
        if onset is not None and timeline.day_zero is not None:
            onset_day = timeline.day_zero.day_of(onset)
        atypical = onset_day is not None and self.atypical_after is not None and onset_day > self.atypical_after
        return Finding(self.info, rule_set_version, current, maximum, onset, onset_day, atypical, timeline.day_zero is not None)

    def _notes(self, ctx: Context, window: Window) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for name in self.criteria:
            for note in ctx.memo.get((name, window.start, window.end), _EMPTY).notes:
                seen[note] = None
        return tuple(seen)

    def grade_only(self, ctx: Context, window: Window) -> int | None:
        """The grade of a window without its evidence: the sweep over past windows needs only this."""
        truth = self.requires(ctx, window)[0]
        if not truth:
            return None if truth is None else 0
        for level in self.levels:
            if level.when(ctx, window)[0]:
                return level.grade
        return 0

    def _maximum(self, ctx: Context, current: GradeResult) -> GradeResult:
        """The worst window since day 0: windows ending where some criterion turns positive."""
        as_of = ctx.timeline.as_of
        span = ctx.since_day_zero(as_of)
        ends: set[datetime] = set()
        for compiled in self.criteria.values():
            ends.update(t for t in compiled.candidate_times(ctx, span) if span.start < t <= as_of)
        highest = max(level.grade for level in self.levels)
        best_grade, best_window = current.grade, current.window
        for end in sorted(ends, reverse=True):
            if (best_grade or 0) >= highest:
                break
            window = Window(max(end - self.window, span.start), end)
            grade = self.grade_only(ctx, window)
            if (grade or 0) > (best_grade or 0) or (best_grade is None and grade is not None):
                best_grade, best_window = grade, window
        best = current if best_window == current.window else self.grade(ctx, best_window)
        return best


class _Empty:
    evidence: tuple[Fact, ...] = ()
    notes: tuple[str, ...] = ()


_EMPTY = _Empty()


def _unique_reasons(reasons: list[Reason]) -> list[Reason]:
    seen: dict[str, Reason] = {}
    for reason in reasons:
        seen.setdefault(reason.criterion, reason)
    return list(seen.values())


def _evidence(reasons: tuple[Reason, ...]) -> tuple[Fact, ...]:
    seen: dict[int, Fact] = {}
    for reason in reasons:
        for fact in reason.evidence:
            seen.setdefault(id(fact), fact)
    return tuple(sorted(seen.values(), key=lambda f: f.time))
