"""A phased grading rule (rule kind `phased_grading`): one measurement series graded in named phases.

Each phase is a range of days after day 0 (the CAR-T infusion; day numbers are calendar days in the
infusion's UTC offset) with its own grade levels, from two generic criteria:

- `runs`: the duration of runs of the series at or below a threshold. A run lasts from the first to the last
  day with a value at or below it; days above it in between count to the run unless the series recovered
  stably (values above it spanning `recovery_days` days). A run still going at the phase's last day either
  stops there (`past_end: clip`) or is followed until it ends (`past_end: extend`).
- `confirmed`: a level holds when at least `values` values of the phase are at or below its threshold.

Values before day 0 never count. A phase before its first day, a phase without day 0, a phase whose series
has a gap longer than `max_gap_hours` (from the phase's start to its end or the evaluation time) and a phase
with too few values are not-assessable, with the reason in the rule's words. Every number and word is in the
rule file; this module only counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from service.errors import RulesError
from service.fhir_input.concepts import Terminology
from service.rules_engine.conditions import Compiler
from service.rules_engine.model import RuleIdentity
from service.rules_engine.presentation import bind_template
from service.timeline.facts import DayZero, Measurement, Timeline

CLIP, EXTEND = "clip", "extend"


@dataclass(frozen=True, slots=True)
class Run:
    """Values at or below a threshold from `first_day` to `last_day` (recovery gaps shorter than the rule's
    stable recovery included); `continuing`: no stable recovery after it by the last value counted."""

    threshold: float
    first_day: int
    last_day: int
    values: tuple[Measurement, ...]
    continuing: bool

    @property
    def days(self) -> int:
        return self.last_day - self.first_day + 1


@dataclass(frozen=True)
class PhaseResult:
    """One phase's grade (None = not-assessable) with the words that say why, and the values it rests on."""

    name: str
    label: str  # e.g. "early ICAHT"
    period: str  # e.g. "day 0-30"
    grade: int | None
    start: datetime | None  # the phase's first instant; None without day 0
    end: datetime | None  # its end so far (the evaluation time, or the end of its last day); None when not reached
    why: tuple[str, ...]  # the criteria that decided the grade, first the one that set it
    evidence: tuple[Measurement, ...]
    missing: tuple[str, ...]  # why it is not assessable
    notes: tuple[str, ...]

    @property
    def incomplete(self) -> bool:
        return self.grade is None or bool(self.missing)


@dataclass(frozen=True, slots=True)
class PhasedInfo(RuleIdentity):
    profile: str  # its RiskAssessment profile
    name: str  # e.g. "ICAHT"
    long_name: str
    caveat: str | None
    words: Mapping[str, str]  # the rule's presentation texts, runtime placeholders kept


@dataclass(frozen=True)
class PhasedFinding:
    """A measurement series graded per phase (rule kind `phased_grading`), with rule provenance. Offers the
    findings contract: `kind`, `level` (the worst phase grade), `severity`, `label`, `name`, `digest_parts`."""

    kind = "phased"

    rule: PhasedInfo
    rule_set_version: str
    phases: tuple[PhaseResult, ...]
    day_zero_known: bool

    @property
    def level(self) -> int | None:
        grades = [p.grade for p in self.phases if p.grade is not None]
        return max(grades) if grades else None

    @property
    def severity(self) -> int:
        return self.level or 0

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def label(self) -> str:
        return f"{self.rule.name} grade {self.level}"

    @property
    def worst(self) -> PhaseResult:
        """The phase with the highest grade (the first phase on a tie, or when none is assessable)."""
        return max(self.phases, key=lambda p: -1 if p.grade is None else p.grade)

    @property
    def evidence(self) -> tuple[Measurement, ...]:
        return tuple(dict.fromkeys(f for p in self.phases for f in p.evidence))

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for p in self.phases for m in p.missing))

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for p in self.phases for n in p.notes))

    def headline(self, phase: PhaseResult) -> str:
        """A graded phase in the rule's words: "ICAHT early grade 3: ANC ≤ 0.5 x10^9/L for 16 days (day 2-17)"."""
        return self.rule.words["headline"].format(name=self.name, phase=phase.label, grade=phase.grade, why=phase.why[0])

    def digest_parts(self) -> list[str]:
        """What the finding says, for output ids: each phase's grade and its evidence."""
        return [f"{p.name}={p.grade}" for p in self.phases] + sorted({f.source for f in self.evidence})


@dataclass(frozen=True)
class _RunLevel:
    threshold: float
    grades: tuple[tuple[int, int], ...]  # (grade, minimum run days), ascending


@dataclass(frozen=True)
class _Phase:
    name: str
    from_day: int
    to_day: int | None  # None: open (until the evaluation time)
    past_end: str
    max_gap: timedelta
    recovery_days: int
    runs: tuple[_RunLevel, ...]
    confirm_values: int
    confirmed: tuple[tuple[int, float], ...]  # (grade, threshold), ascending by grade
    label: str
    period: str


# The fields the texts of a phased rule's presentation may name, filled when a phase is assessed.
_RUNTIME = ("name", "phase", "grade", "why", "series", "threshold", "days", "duration", "span", "count", "have", "day",
            "value", "start", "end")


class PhasedRule:
    """One phased grading rule file, compiled."""

    def __init__(self, document: Mapping[str, Any], params: Mapping[str, Any], compiler: Compiler) -> None:
        self.rule_id = document["id"]
        self.series = compiler.measurement(document["series"])
        words = document["presentation"]
        bind = lambda text: bind_template(text, params, _RUNTIME, self.rule_id)  # noqa: E731
        self.words = {key: bind(text) for key, text in words.items() if isinstance(text, str)}
        phase_words = words["phases"]
        self.phases = [self._phase(name, spec, phase_words.get(name), compiler, params) for name, spec in document["phases"].items()]
        guideline = document["guideline"]
        self.info = PhasedInfo(
            rule_id=self.rule_id, rule_version=str(document["version"]), title=document["title"],
            assessment_code=document["assessment_code"], guideline_id=guideline["id"],
            guideline_citation=" ".join(guideline["citation"].split()), guideline_url=guideline["url"],
            profile=document["output"]["profile"], name=self.words["name"], long_name=self.words["long_name"],
            caveat=self.words.get("caveat"), words=self.words,
        )

    def _phase(self, name: str, spec: Mapping[str, Any], words: Mapping[str, str] | None, c: Compiler,
               params: Mapping[str, Any]) -> _Phase:
        if words is None:
            raise RulesError(self.rule_id, f"phase {name!r} has no words in presentation.phases")
        from_day = int(c.number(spec["from_day"]))
        to_day = int(c.number(spec["to_day"])) if "to_day" in spec else None
        if to_day is not None and to_day < from_day:
            raise RulesError(self.rule_id, f"phase {name!r} ends (day {to_day}) before it starts (day {from_day})")
        if from_day < 0:
            raise RulesError(self.rule_id, f"phase {name!r} starts before day 0: values before day 0 never count")
        runs = spec.get("runs", {})
        levels = []
        for level in runs.get("levels", ()):
            grades = tuple(sorted((int(g["grade"]), int(c.number(g["days"]))) for g in level["grades"]))
            levels.append(_RunLevel(c.number(level["at_most"]), grades))
        confirmed = spec.get("confirmed", {})
        if not levels and not confirmed:
            raise RulesError(self.rule_id, f"phase {name!r} grades by neither runs nor confirmed values")
        return _Phase(
            name=name, from_day=from_day, to_day=to_day, past_end=spec.get("past_end", CLIP),
            max_gap=timedelta(hours=c.number(spec["max_gap_hours"])),
            recovery_days=int(c.number(runs["recovery_days"])) if levels else 1,
            runs=tuple(levels),
            confirm_values=int(c.number(confirmed["values"])) if confirmed else 0,
            confirmed=tuple(sorted((int(l["grade"]), c.number(l["at_most"])) for l in confirmed.get("levels", ()))),
            label=bind_template(words["label"], params, (), self.rule_id),
            period=bind_template(words["period"], params, (), self.rule_id),
        )

    def _say(self, key: str, **fields: Any) -> str:
        """One of the rule's texts with its runtime fields filled (the series' name always available)."""
        return self.words[key].format(series=self.words["series"], **fields)

    # --- evaluation ----------------------------------------------------------------------------------------------

    def assess(self, timeline: Timeline, terminology: Terminology, rule_set_version: str) -> PhasedFinding:
        day_zero = timeline.day_zero
        phases = tuple(self._assess_phase(phase, timeline, day_zero) for phase in self.phases)
        return PhasedFinding(self.info, rule_set_version, phases, day_zero is not None)

    def _result(self, phase: _Phase, grade: int | None, start: datetime | None, end: datetime | None,
                why: tuple[str, ...] = (), evidence: tuple[Measurement, ...] = (), missing: tuple[str, ...] = (),
                notes: tuple[str, ...] = ()) -> PhaseResult:
        return PhaseResult(phase.name, phase.label, phase.period, grade, start, end, why, evidence, missing, notes)

    def _assess_phase(self, phase: _Phase, timeline: Timeline, day_zero: DayZero | None) -> PhaseResult:
        if day_zero is None:
            return self._result(phase, None, None, None, missing=(self._say("no_day_zero"),))
        start = max(day_zero.time, _day_start(day_zero, phase.from_day))
        if timeline.as_of < start:
            return self._result(phase, None, start, None, missing=(self._say("not_yet", day=phase.from_day),))
        phase_end = _day_start(day_zero, phase.to_day + 1) if phase.to_day is not None else None
        end = timeline.as_of if phase_end is None else min(phase_end, timeline.as_of)
        series = timeline.measurements.get(self.series, ())
        values = tuple(m for m in series if start <= m.time < end or (m.time == end and end == timeline.as_of))
        missing = self._gap(phase, values, start, end, day_zero)
        if missing:
            return self._result(phase, None, start, end, evidence=values, missing=(missing,))
        notes: list[str] = []
        if phase_end is not None and timeline.as_of < phase_end:
            notes.append(self._say("in_progress", phase=phase.label, day=phase.to_day))
        candidates: list[tuple[int, str, tuple[Measurement, ...]]] = []  # (grade, why, evidence)
        if phase.runs:
            after = self._after_end(phase, series, end, timeline.as_of) if phase.past_end == EXTEND and end < timeline.as_of else ()
            candidates += self._run_grades(phase, values, after, day_zero)
        if phase.confirmed:
            if len(values) < phase.confirm_values:
                return self._result(phase, None, start, end, evidence=values, missing=(
                    self._say("too_few", count=phase.confirm_values, have=len(values), phase=phase.label),))
            confirmed, unconfirmed = self._confirmed_grade(phase, values, day_zero)
            candidates += confirmed
            notes += unconfirmed
        graded = [c for c in candidates if c[0] > 0]
        if not graded:  # the criteria that found something below a threshold, else the first one's words
            quiet = tuple(c[1] for c in candidates if c[2]) or (candidates[0][1],)
            return self._result(phase, 0, start, end, quiet, values, notes=tuple(notes))
        top = max(c[0] for c in graded)
        ordered = sorted(graded, key=lambda c: c[0] != top)  # the criterion that set the grade first, rule order kept
        evidence = tuple(dict.fromkeys(f for c in ordered for f in c[2]))
        ordered += [c for c in candidates if c[0] == 0 and c[2]]  # a shorter run below a deeper threshold, said
        return self._result(phase, top, start, end, tuple(c[1] for c in ordered), evidence, notes=tuple(notes))

    def _gap(self, phase: _Phase, values: tuple[Measurement, ...], start: datetime, end: datetime, day_zero: DayZero) -> str | None:
        """The first stretch without a value longer than the phase's maximum gap, from its start to its end so far
        (the evaluation time within it), in words; None when the series is dense enough."""
        if not values:
            return self._say("no_values", phase=phase.label)
        previous = start
        for moment in [m.time for m in values] + [end]:
            if moment - previous > phase.max_gap:
                return self._say("gap", days=f"{(moment - previous).total_seconds() / 86400:.1f}",
                                 start=day_zero.day_of(previous), end=day_zero.day_of(moment))
            previous = max(previous, moment)
        return None

    def _run_grades(self, phase: _Phase, values: tuple[Measurement, ...], after: tuple[Measurement, ...],
                    day_zero: DayZero) -> list[tuple[int, str, tuple[Measurement, ...]]]:
        out = []
        for level in phase.runs:
            runs = [r for r in find_runs(values + after, level.threshold, phase.recovery_days, day_zero)
                    if r.first_day <= (phase.to_day if phase.to_day is not None else r.first_day)]
            if phase.past_end == CLIP and phase.to_day is not None:
                runs = [_clipped(r, phase.to_day) for r in runs]
            if not runs:
                out.append((0, self._say("no_run", threshold=level.threshold), ()))
                continue
            longest = max(runs, key=lambda r: (r.days, -r.first_day))
            grade = max((g for g, days in level.grades if longest.days >= days), default=0)
            span = f"day {longest.first_day}" if longest.first_day == longest.last_day else f"day {longest.first_day}-{longest.last_day}"
            text = self._say("run_continuing" if longest.continuing else "run", threshold=level.threshold,
                             duration=f"{longest.days} day{'' if longest.days == 1 else 's'}", span=span)
            out.append((grade, text, longest.values))
        return out

    def _after_end(self, phase: _Phase, series: tuple[Measurement, ...], end: datetime, as_of: datetime) -> tuple[Measurement, ...]:
        """Values after the phase's last day that can continue a run: up to the first gap longer than the
        maximum (a run is never bridged over missing data)."""
        kept: list[Measurement] = []
        previous = max((m.time for m in series if m.time < end), default=end)
        for m in series:
            if m.time < end or m.time > as_of:
                continue
            if m.time - previous > phase.max_gap:
                break
            kept.append(m)
            previous = m.time
        return tuple(kept)

    def _confirmed_grade(self, phase: _Phase, values: tuple[Measurement, ...], day_zero: DayZero
                         ) -> tuple[list[tuple[int, str, tuple[Measurement, ...]]], list[str]]:
        grade, threshold, confirming = 0, None, ()
        for level, limit in phase.confirmed:
            below = tuple(m for m in values if m.value <= limit)
            if len(below) >= phase.confirm_values:
                grade, threshold, confirming = level, limit, below
        notes = []
        lowest = min(values, key=lambda m: m.value)
        worse = [level for level, limit in phase.confirmed if lowest.value <= limit and level > grade]
        if worse:
            notes.append(self._say("unconfirmed", value=f"{lowest.value:g}", day=day_zero.day_of(lowest.time),
                                   count=phase.confirm_values))
        if threshold is None:
            first_limit = phase.confirmed[0][1]
            return [(0, self._say("not_confirmed", threshold=first_limit, count=phase.confirm_values), ())], notes
        days = ", ".join(str(day_zero.day_of(m.time)) for m in confirming)
        text = self._say("confirmed", threshold=threshold, count=len(confirming), days=days)
        return [(grade, text, confirming)], notes


def _day_start(day_zero: DayZero, day: int) -> datetime:
    """00:00 of a day after infusion, in the infusion's UTC offset."""
    local = datetime.combine(day_zero.date + timedelta(days=day), datetime.min.time(), tzinfo=day_zero.offset)
    return local.astimezone(day_zero.time.tzinfo)


def _clipped(run: Run, last_day: int) -> Run:
    if run.last_day <= last_day:
        return run
    return Run(run.threshold, run.first_day, last_day, run.values, run.continuing)


def find_runs(values: tuple[Measurement, ...], threshold: float, recovery_days: int, day_zero: DayZero) -> list[Run]:
    """Runs of a time-ordered series at or below `threshold`, by calendar day after infusion (a day with
    any value at or below it counts as a day below). A run ends only at a stable recovery: values above the
    threshold spanning at least `recovery_days` days (first to last such day) before the next value below;
    with daily values, that many days in a row."""
    runs: list[Run] = []
    first = last = None
    members: list[Measurement] = []
    above: tuple[int, int] | None = None  # first and last day above since the run's last day below
    pending: list[Measurement] = []  # the values above of that stretch
    by_day: dict[int, list[Measurement]] = {}
    for m in values:
        by_day.setdefault(day_zero.day_of(m.time), []).append(m)

    def recovered() -> bool:
        return above is not None and above[1] - above[0] + 1 >= recovery_days

    for day in sorted(by_day):
        day_values = by_day[day]
        if min(m.value for m in day_values) <= threshold:
            if first is not None and recovered():
                runs.append(Run(threshold, first, last, tuple(members), False))
                first = None
            if first is None:
                first, members = day, []
            else:
                members += pending
            members += day_values
            last = day
            above, pending = None, []
        elif first is not None:
            above = (day, day) if above is None else (above[0], day)
            pending += day_values
    if first is not None:
        runs.append(Run(threshold, first, last, tuple(members), not recovered()))
    return runs
