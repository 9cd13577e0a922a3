"""A grading rule compiled: criteria + three-valued boolean expressions + grade levels -> Finding."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from service.errors import RulesError
from service.rules_engine.conditions import Compiled, Compiler, Context, compile_criterion
from service.rules_engine.model import Episode, Finding, GradeResult, Reason, RuleInfo, Window
from service.rules_engine.presentation import Presentation
from service.fhir_input.concepts import Terminology
from service.timeline.facts import Fact, Timeline

# An expression answers True / False / None (unknown) with the reasons that decided it.
Expression = Callable[[Context, Window], tuple[bool | None, list[Reason], list[str]]]


def compile_expression(spec: Any, criteria: Mapping[str, Compiled], rule_id: str, every_reason: bool = True) -> Expression:
    """`every_reason`: an `any` evaluates every part and gives the reasons of all that hold (what a card shows);
    without it, it stops at the first part that holds (enough for the truth alone, as the sweep needs)."""
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
                # unknown: missing data (named) or not applicable (nothing to name: it weighs as false in any)
                return None, [], [name] if result.missing else []
            truth = result.value >= at_least if at_least is not None else bool(result.value)
            return truth, [Reason(name, label, result.value, result.evidence)], []

        return criterion
    for operator in ("any", "all"):
        if operator in spec:
            parts = [compile_expression(part, criteria, rule_id, every_reason) for part in spec[operator]]
            return _any(parts, every_reason) if operator == "any" else _all(parts)
    raise RulesError(rule_id, f"cannot compile expression {spec!r}")


def _any(parts: list[Expression], every_reason: bool) -> Expression:
    """True with the reasons of every part that holds (a card names each criterion that reached the grade)."""
    def evaluate(ctx: Context, window: Window) -> tuple[bool | None, list[Reason], list[str]]:
        unknown: list[str] = []
        held: list[Reason] = []
        holds = False
        for part in parts:
            truth, reasons, missing = part(ctx, window)
            if truth:
                holds = True
                held += reasons
                if not every_reason:
                    break
            elif truth is None:
                unknown += missing
        if holds:
            return True, held, []
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
    when: Expression  # with every reason that holds
    holds: Expression  # the truth alone (stops at the first part that holds)


class GradingRule:
    """One grading rule file, compiled."""

    def __init__(self, document: Mapping[str, Any], params: Mapping[str, Any], compiler: Compiler) -> None:
        rule_id = document["id"]
        self.params = params
        self.criteria = {name: compile_criterion(name, spec, compiler) for name, spec in document["criteria"].items()}
        self.observed = frozenset(compiler.observed)  # the observation concepts its criteria read
        grading = document["grading"]
        self.window_hours = compiler.number(grading["window_hours"])
        self.presentation = Presentation.compile(document.get("presentation", {}), self.criteria, params, rule_id)
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
            presentation=self.presentation,
            window_hours=self.window_hours,
        )
        self.window = timedelta(hours=self.window_hours)
        self.requires = compile_expression(grading["requires"], self.criteria, rule_id)
        self.requires_holds = compile_expression(grading["requires"], self.criteria, rule_id, every_reason=False)
        self.levels = [Level(int(level["grade"]), compile_expression(level["when"], self.criteria, rule_id),
                             compile_expression(level["when"], self.criteria, rule_id, every_reason=False))
                       for level in grading["levels"]]
        self.atypical_after = int(compiler.number(grading["atypical_onset_after_day"])) if "atypical_onset_after_day" in grading else None
        self.onset_criterion = next((name for name, spec in document["criteria"].items() if spec["type"] == "first_occurrence"), None)
        self.episode = _EpisodeSpec.compile(grading["episode"], self.criteria, compiler) if "episode" in grading else None

    def grade(self, ctx: Context, window: Window) -> GradeResult:
        truth, gate_reasons, gate_missing = self.requires(ctx, window)
        partial = ctx.timeline.partial_data
        if truth is None:
            missing = tuple(dict.fromkeys(self._missing_text(ctx, name, window) for name in gate_missing)) + partial
            return GradeResult(None, window, (), (), missing, self._notes(ctx, window))
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
        undecided = [self._missing_text(ctx, name, window) for name in self.criteria
                     if (result := ctx.result(name, window)).value is None and result.missing]
        # A criterion that decided with partial data (e.g. oxygen given, device not charted) says what it lacked.
        undecided += [result.incomplete for result in (ctx.result(reason.criterion, window) for reason in reasons) if result.incomplete]
        unique = tuple(_unique_reasons(reasons))
        missing = tuple(dict.fromkeys(undecided)) + partial
        return GradeResult(grade, window, _evidence(unique), unique, missing, self._notes(ctx, window))

    def _missing_text(self, ctx: Context, name: str, window: Window) -> str:
        """What was not recorded, in the rule's words, and over which window (no timestamps: cards format times)."""
        worded = self.presentation.missing.get(name)
        if worded is None:
            return ctx.result(name, window).missing or f"{self.criteria[name].label}: data missing"
        if window.end == ctx.timeline.as_of:
            span = "since the CAR-T infusion" if window.start == ctx.floor() and window.end - window.start < self.window else f"in the last {self.window_hours:g} h"
        else:
            span = f"in the {self.window_hours:g} h window"
        return f"{worded} {span}"

    def evaluate(self, timeline: Timeline, terminology: Terminology, rule_set_version: str) -> Finding:
        return self.assess(timeline, terminology, rule_set_version)[0]

    def assess(self, timeline: Timeline, terminology: Terminology, rule_set_version: str) -> tuple[Finding, "RuleHistory"]:
        """The finding, and the rule's view of the past that management conditions may ask about."""
        ctx = Context(timeline, terminology, self.criteria)
        as_of = timeline.as_of
        current = self.grade(ctx, ctx.clipped(Window(as_of - self.window, as_of)))
        maximum = self._maximum(ctx, current)
        onset = onset_day = None
        if self.onset_criterion:
            first = ctx.result(self.onset_criterion, ctx.since_day_zero(as_of))
            onset = first.first_positive
        if onset is not None and timeline.day_zero is not None:
            onset_day = timeline.day_zero.day_of(onset)
        atypical = onset_day is not None and self.atypical_after is not None and onset_day > self.atypical_after
        episode = self.episode.find(ctx, self.window) if self.episode and current.grade else None
        day = timeline.day_zero.day_of(as_of) if timeline.day_zero is not None else None
        finding = Finding(self.info, rule_set_version, current, maximum, onset, onset_day, atypical,
                          timeline.day_zero is not None, episode, day)
        return finding, RuleHistory(self, ctx)

    def _notes(self, ctx: Context, window: Window) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for name in self.criteria:
            for note in ctx.memo.get((name, window.start, window.end), _EMPTY).notes:
                seen[note] = None
        return tuple(seen)

    def grade_only(self, ctx: Context, window: Window) -> int | None:
        """The grade of a window without its evidence: the sweep over past windows needs only this."""
        truth = self.requires_holds(ctx, window)[0]
        if not truth:
            return None if truth is None else 0
        for level in self.levels:
            if level.holds(ctx, window)[0]:
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
        if best_grade is None:
            # Nothing positive since day 0 and the current window cannot be assessed: any window with data
            # makes the maximum grade 0 rather than "not assessable" (the latest such window is shown).
            timeline = ctx.timeline
            times = {t for concept in self.observed
                     for t in (*timeline.measurement_times.get(concept, ()), *timeline.coded_times.get(concept, ()))
                     if span.start < t <= as_of}
            for end in sorted(times, reverse=True):
                window = Window(max(end - self.window, span.start), end)
                if self.grade_only(ctx, window) is not None:
                    best_window = window
                    break
        best = current if best_window == current.window else self.grade(ctx, best_window)
        return best


@dataclass(frozen=True)
class RuleHistory:
    """A grading rule over one timeline at past times (what "no improvement since the dose" compares)."""

    rule: GradingRule
    ctx: Context

    def grade_at(self, moment: datetime) -> int | None:
        return self.rule.grade_only(self.ctx, self.ctx.clipped(Window(moment - self.rule.window, moment)))

    def positive(self, criteria: tuple[str, ...], window: Window) -> tuple[Fact, ...] | None:
        """Evidence of the criteria that hold in the window; None when none holds and one lacked data."""
        facts: list[Fact] = []
        unknown = False
        for name in criteria:
            result = self.ctx.result(name, window)
            if result.value is None:
                unknown = True
            elif result.value:
                facts += result.evidence
        return tuple(facts) if facts or not unknown else None


@dataclass(frozen=True)
class _EpisodeSpec:
    """The continuing episode: positive findings of one criterion (fever) since day 0 with no gap longer than
    `gap` between them, a gap not ending it while the `continued_by` criterion (the fever waiver) holds."""

    criterion: str
    gap: timedelta
    continued_by: str | None

    @classmethod
    def compile(cls, spec: Mapping[str, Any], criteria: Mapping[str, Compiled], compiler: Compiler) -> "_EpisodeSpec":
        for name in (spec["criterion"], spec.get("continued_by")):
            if name is not None and name not in criteria:
                raise RulesError(compiler.rule_id, f"episode names unknown criterion {name!r}")
        return cls(spec["criterion"], timedelta(hours=compiler.number(spec["gap_hours"])), spec.get("continued_by"))

    def find(self, ctx: Context, window: timedelta) -> Episode | None:
        as_of = ctx.timeline.as_of
        positive = ctx.result(self.criterion, ctx.since_day_zero(as_of))
        if not positive.value or not positive.evidence:
            return None
        facts = sorted(positive.evidence, key=lambda f: f.time)

        def continued(moment: datetime) -> bool:
            return self.continued_by is not None and bool(ctx.result(self.continued_by, Window(moment - window, moment)).value)

        if as_of - facts[-1].time > self.gap and not continued(as_of):
            return None  # the last episode ended: nothing continues now
        first = len(facts) - 1
        while first > 0 and (facts[first].time - facts[first - 1].time <= self.gap or continued(facts[first].time)):
            first -= 1
        return Episode(facts[first].time, facts[-1].time, (facts[first], facts[-1]) if first < len(facts) - 1 else (facts[first],))


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
