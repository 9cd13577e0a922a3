"""A regimen rule compiled (rule kind `regimen`): a state machine replayed over the record from day 0.

The first regimen is the low-dose prednisone course for prolonged hematologic toxicity
(rules/prednisone_pht.yaml). Its states, transitions, conditions, doses, plans and words are rule data; this
module knows only how to replay them. At each moment that can change something (a count, a dose given, a
support or an exclusion recorded, a day threshold, a timer of the current state) the transitions from the
current state are tried in file order and the first whose conditions all hold is taken; chained transitions at
one moment follow each other. Lineage grades are the grading rules' own grades of the latest value within the
rule's count age, so that the regimen and the cytopenia RiskAssessments never disagree.

Conditions are three-valued: a condition that cannot be told (no counts) never holds, and neither does its
negation, so missing data never moves the regimen on.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any, Callable, Mapping

from service.errors import RulesError
from service.rules_engine.conditions import Compiler
from service.rules_engine.management import GIVE_NOW, Plan, PlannedAction
from service.rules_engine.model import RuleIdentity, Window
from service.rules_engine.presentation import bind_template
from service.timeline.facts import Fact, Measurement, Timeline

ANY_STATE = "any"
PREVIOUS_STATE = "previous"
_STATUSES_GIVEN = ("completed", "in-progress")
_REFUTED = ("refuted", "entered-in-error")


@dataclass(frozen=True, slots=True)
class RegimenStep:
    """One transition taken: the state entered, when, the daily dose it set and why."""

    time: datetime
    day: int | None
    state: str
    dose_mg: float | None
    reasons: tuple[str, ...]
    evidence: tuple[Fact, ...]
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class LineagePoint:
    """A lineage's grade from one of its counts (for the replay and the picture)."""

    time: datetime
    grade: int | None
    evidence: tuple[Fact, ...]


@dataclass(frozen=True, slots=True)
class StateSpec:
    code: str
    display: str  # the state in a few words
    text: str
    indicator: str | None  # None: no card in this state
    summary: str | None
    when_warned: bool  # a card only when a warning holds
    prednisone: bool  # the plan gives the regimen's drug at the state's dose
    plan: tuple[Mapping[str, Any], ...]
    warnings: tuple[tuple[tuple[tuple[str, bool], ...], str], ...]  # ((condition, negated) ...), text


@dataclass(frozen=True)
class RegimenInfo(RuleIdentity):
    name: str
    long_name: str
    caveat: str | None
    words: Mapping[str, str]
    states: Mapping[str, StateSpec]
    lineage_names: Mapping[str, str]  # grading rule id -> its finding's name (Anemia ...)
    initial: str  # the state from day 0 until the first transition
    drug_name: str


@dataclass(frozen=True)
class RegimenFinding:
    """Where the patient is in the regimen at the evaluation time, with every step since day 0."""

    rule: RegimenInfo
    rule_set_version: str
    state: str
    steps: tuple[RegimenStep, ...]  # the transitions taken, oldest first (empty: still in the initial state)
    dose_mg: float | None  # the state's daily dose; None when no drug or no usable weight
    mg_per_kg: float | None  # the dose per kg (said when there is no usable weight)
    weight: Measurement | None
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    given: tuple[tuple[int, float | None], ...]  # (day, mg given that day; None = a dose without amount)
    lineages: Mapping[str, tuple[LineagePoint, ...]]  # grading rule id -> grades over time
    day: int | None  # the evaluation day after infusion
    exclusion: str | None
    evidence: tuple[Fact, ...]
    window: Window
    day_zero_known: bool

    kind = "regimen"
    level = None

    @property
    def spec(self) -> StateSpec:
        return self.rule.states[self.state]

    @property
    def severity(self) -> int:
        """A state asking for action weighs like a grade 1 finding: CRS or ICANS of grade 2 and more lead."""
        return 1 if self.spec.indicator == "warning" else 0

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def label(self) -> str:
        return self.rule.words["plan_label"]

    @property
    def since(self) -> RegimenStep | None:
        return self.steps[-1] if self.steps else None

    @property
    def shows(self) -> bool:
        spec = self.spec
        return spec.indicator is not None and (not spec.when_warned or bool(self.warnings))

    def dose_words(self) -> str:
        if self.dose_mg is not None:
            return f"{self.dose_mg:g} mg/day"
        return f"{self.mg_per_kg:g} mg/kg/day" if self.mg_per_kg is not None else "none"

    def summary(self) -> str:
        step = self.since
        fields = {"dose": self.dose_words(), "day": self.day if self.day is not None else "?",
                  "since_day": step.day if step and step.day is not None else "?", "exclusion": self.exclusion or ""}
        return (self.spec.summary or self.spec.text).format(**fields)

    def digest_parts(self) -> list[str]:
        return [self.state, str(self.dose_mg), *(f"{s.state}@{s.time.isoformat()}" for s in self.steps),
                *sorted({fact.source for fact in self.evidence})]


# --- compiled conditions --------------------------------------------------------------------------------

Verdict = tuple[bool | None, tuple[Fact, ...], str | None]  # holds?, evidence, a note to say


class _Run:
    """The replay's state: where the regimen is, since when, at which dose, and its starting point."""

    def __init__(self, rule: "RegimenRule", timeline: Timeline, lineages: Mapping[str, tuple[LineagePoint, ...]],
                 names: Mapping[str, str]) -> None:
        self.rule = rule
        self.names = names  # grading rule id -> the lineage in words
        self.timeline = timeline
        self.lineages = lineages
        self.lineage_times = {name: [p.time for p in points] for name, points in lineages.items()}
        self.state = rule.initial
        self.entered = timeline.day_zero.time if timeline.day_zero else timeline.as_of
        self.dose: float | None = None
        self.mg_per_kg: float | None = None
        self.weight: Measurement | None = None
        self.path: list[tuple[str, float | None, float | None]] = []  # (state, dose, mg/kg) before each change
        self.treatment_start: datetime | None = None
        self.start_worst: int | None = None
        self.entry_grades: dict[str, int | None] = {}
        self.steps: list[RegimenStep] = []
        self.notes: dict[str, None] = {}  # about the current state: kept from the transition into it, and since

    def day(self, moment: datetime) -> int | None:
        zero = self.timeline.day_zero
        return zero.day_of(moment) if zero else None

    def lineage(self, name: str, moment: datetime) -> LineagePoint | None:
        """The lineage's point from its latest count at or before `moment`, if no older than the count age."""
        index = bisect_right(self.lineage_times[name], moment) - 1
        if index < 0:
            return None
        point = self.lineages[name][index]
        if point.grade is None or not point.evidence or moment - max(f.time for f in point.evidence) > self.rule.count_max_age:
            return None
        return point

    def grades(self, moment: datetime) -> dict[str, int | None]:
        return {name: (p.grade if (p := self.lineage(name, moment)) else None) for name in self.lineages}

    def worst(self, moment: datetime) -> tuple[int | None, tuple[Fact, ...]]:
        points = [p for name in self.lineages if (p := self.lineage(name, moment)) is not None]
        if not points:
            return None, ()
        top = max(p.grade or 0 for p in points)
        return top, tuple(f for p in points if (p.grade or 0) == top for f in p.evidence)

    def confounded(self, moment: datetime) -> list[str]:
        """Lineages whose latest count came soon after a transfusion of the lineage or its growth factor."""
        hit = []
        for name in self.lineages:
            point = self.lineage(name, moment)
            if point is None:
                continue
            counted = max(f.time for f in point.evidence)
            medications, procedures = self.rule.confounders[name]
            if self.rule.any_given(self.timeline, medications, procedures, counted - self.rule.confounding, counted):
                hit.append(name)
        return hit


Evaluator = Callable[[_Run, datetime], Verdict]
Compile = Callable[[Mapping[str, Any], "RegimenRule", Compiler], Evaluator]


def _day_start(run: _Run, day: float) -> datetime | None:
    zero = run.timeline.day_zero
    if zero is None:
        return None
    local = datetime.combine(zero.date + timedelta(days=day), time(0), zero.offset)
    return local.astimezone(zero.time.tzinfo)


def _day_reached(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    day = c.number(spec["day"]) - c.number(spec.get("minus", 0)) + c.number(spec.get("plus", 0))
    rule.day_marks.add(day)

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        start = _day_start(run, day)
        return (None if start is None else moment >= start), (), None

    return evaluate


def _cytopenia(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    """Some lineage graded >= 1 now; with `after_first_of`, on counts recorded after the first support."""
    after = spec.get("after_first_of")
    if after is not None:
        rule.support_conditions.add(after)

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        worst, facts = run.worst(moment)
        if worst is None:
            return None, (), None
        if after is not None:
            first = rule.first_given(run, after, moment)
            if first is None or not facts or max(f.time for f in facts) <= first:
                return False, (), None
        return worst >= 1, facts, None

    return evaluate


def _counts_recorded(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    from_day = c.number(spec["from_day"]) - c.number(spec.get("minus", 0))

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        start = _day_start(run, from_day)
        if start is None:
            return None, (), None
        recent = [p for name in run.lineages if (p := run.lineage(name, moment)) is not None
                  and max(f.time for f in p.evidence) >= start]
        return bool(recent), (), None

    return evaluate


def _given(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    medications = c.medications(spec.get("medications", []))
    procedures = frozenset(rule.procedure(name, c) for name in spec.get("procedures", []))
    since = spec.get("since", "day")
    from_day = c.number(spec.get("from_day", 0))
    rule.watched_medications |= medications
    rule.watched_procedures |= procedures

    def start_of(run: _Run) -> datetime | None:
        if since == "state_entry":
            return run.entered
        if since == "treatment_start":
            return run.treatment_start
        return _day_start(run, from_day)

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        start = start_of(run)
        if start is None:
            return None, (), None
        found = rule.any_given(run.timeline, medications, procedures, start, moment)
        return bool(found), tuple(found[:3]), None

    rule.given_sources[spec["_name"]] = (medications, procedures, start_of)
    return evaluate


def _answer(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    concept = c.coded_observation(spec["concept"])
    rule.watched_coded.add(concept)
    answers = frozenset(spec["answers"])
    met_when_missing = spec.get("missing", "unknown") == "met"

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        recorded = [v for v in run.timeline.coded.get(concept, ()) if v.time <= moment and v.value is not None]
        if not recorded:
            return (True if met_when_missing else None), (), rule.words["no_remission_assessment"]
        latest = recorded[-1]
        return latest.value in answers, (latest,), None

    return evaluate


def _improved(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    grades = int(c.number(spec["grades"]))

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        worst, facts = run.worst(moment)
        if worst is None or run.start_worst is None:
            return None, (), None
        if worst > run.start_worst - grades:
            return False, (), None
        confounded = run.confounded(moment)
        if confounded:
            names = ", ".join(run.names[n] for n in confounded)
            return False, (), rule.words["confounded"].format(lineage=names, day=run.day(moment), days=rule.confounding.days)
        return True, facts, None

    return evaluate


def _held(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    """The state's interval has passed, counts recorded since its start are no worse, and not confounded."""
    interval = timedelta(days=c.number(spec["days"]))
    rule.timers.add(interval)

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        if moment - run.entered < interval:
            return False, (), None
        worst, facts = run.worst(moment)
        entry_worst = max((g for g in run.entry_grades.values() if g is not None), default=None)
        if worst is None or entry_worst is None or not facts or max(f.time for f in facts) <= run.entered:
            return None, (), None
        if worst > entry_worst or run.confounded(moment):
            return False, (), None
        return True, facts, None

    return evaluate


def _worsened(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    grades = int(c.number(spec["grades"]))

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        worst, facts = run.worst(moment)
        entry_worst = max((g for g in run.entry_grades.values() if g is not None), default=None)
        if worst is None or entry_worst is None:
            return None, (), None
        return worst >= entry_worst + grades, facts, None

    return evaluate


def _next_dose_below(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    factor, minimum = c.number(spec["factor"]), c.number(spec["minimum"])

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        if run.dose is None:
            return None, (), None
        return rule.rounded(run.dose * factor) < minimum, (), None

    return evaluate


def _counts_normal(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    def evaluate(run: _Run, moment: datetime) -> Verdict:
        grades = run.grades(moment)
        if any(g is None for g in grades.values()):
            return None, (), None
        return all(g == 0 for g in grades.values()) and not run.confounded(moment), run.worst(moment)[1], None

    return evaluate


def _lineage_fell(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    """A lineage at least `grades` worse than when the state began, and at least `to_at_least` (recurrence)."""
    grades, floor = int(c.number(spec["grades"])), int(c.number(spec["to_at_least"]))

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        unknown = True
        for name in run.lineages:
            point = run.lineage(name, moment)
            if point is None or point.grade is None:
                continue
            unknown = False
            before = run.entry_grades.get(name)
            if point.grade >= max((before or 0) + grades, floor):
                return True, point.evidence, None
        return (None if unknown else False), (), None

    return evaluate


def _exclusion(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    def evaluate(run: _Run, moment: datetime) -> Verdict:
        found = rule.excluding_fact(run, moment)
        return found is not None, ((found,) if found else ()), None

    return evaluate


def _elapsed(spec: Mapping[str, Any], rule: "RegimenRule", c: Compiler) -> Evaluator:
    days = timedelta(days=c.number(spec["days"]))
    rule.timers.add(days)
    since = spec["since"]

    def evaluate(run: _Run, moment: datetime) -> Verdict:
        start = run.treatment_start if since == "treatment_start" else run.entered
        if start is None:
            return None, (), None
        return moment - start >= days, (), None

    return evaluate


REGIMEN_CONDITIONS: dict[str, Compile] = {
    "day_reached": _day_reached,
    "cytopenia": _cytopenia,
    "counts_recorded": _counts_recorded,
    "given": _given,
    "answer": _answer,
    "improved": _improved,
    "held": _held,
    "worsened": _worsened,
    "next_dose_below": _next_dose_below,
    "counts_normal": _counts_normal,
    "lineage_fell": _lineage_fell,
    "exclusion": _exclusion,
    "elapsed": _elapsed,
}


@dataclass(frozen=True)
class _Transition:
    sources: frozenset[str] | None  # None = from any state
    when: tuple[tuple[str, bool], ...]  # (condition, negated)
    target: str
    dose: Any  # "start" | "keep" | "stop" | "previous" | {"factor": n}
    treatment_start: bool
    warning: str | None


def _clauses(names: list[str], known: Mapping[str, Any], where: str) -> tuple[tuple[str, bool], ...]:
    clauses = []
    for name in names:
        negated = name.startswith("not ")
        bare = name[4:] if negated else name
        if bare not in known:
            raise RulesError(where, f"unknown condition {bare!r}")
        clauses.append((bare, negated))
    return tuple(clauses)


class RegimenRule:
    """rules/<regimen>.yaml compiled."""

    def __init__(self, document: Mapping[str, Any], params: Mapping[str, Any], compiler: Compiler) -> None:
        self.rule_id = document["id"]
        c = compiler
        self.params = params
        self.reads = tuple(document.get("reads", ()))
        self.count_max_age = timedelta(days=c.number(params["count_max_age_days"]))
        self.confounding = timedelta(days=c.number(params["confounding_days"]))
        self.weight_max_age = timedelta(days=c.number(params["weight_max_age_days"]))
        self.mg_per_kg = c.number(params["dose_mg_per_kg"])
        self.step = c.number(params["tablet_step_mg"])
        self.deviation = c.number(params["deviation_fraction"])
        drug = document["drug"]
        self.medication = next(iter(c.medications([drug["medication"]])))
        self.drug_name = drug["name"]
        self.route = drug["route"]
        self.weight_concept = c.measurement(drug["weight_concept"])
        self.day_marks: set[float] = set()
        self.timers: set[timedelta] = set()
        self.watched_medications: set[str] = {self.medication}
        self.watched_procedures: set[str] = set()
        self.watched_coded: set[str] = set()
        self.terminology = c.terms
        # `given` conditions by name, what `cytopenia ... after_first_of` reads: (medications, procedures, start)
        self.given_sources: dict[str, tuple[frozenset[str], frozenset[str], Callable[[_Run], datetime | None]]] = {}
        self.support_conditions: set[str] = set()
        self.confounders: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        for name, spec in document["lineages"].items():
            if name not in self.reads:
                raise RulesError(self.rule_id, f"lineage {name!r} must be one of the rules it reads")
            by = spec.get("confounded_by", {})
            medications = c.medications(by.get("medications", []))
            procedures = frozenset(self.procedure(p, c) for p in by.get("procedures", []))
            self.watched_medications |= medications
            self.watched_procedures |= procedures
            self.confounders[name] = (medications, procedures)
        exclusions = document.get("exclusions", {})
        self.excluding_procedures = frozenset(self.procedure(p, c) for p in exclusions.get("procedures", []))
        self.excluding_medications = c.medications(exclusions.get("medications", []))
        self.excluding_findings = frozenset(c.finding(f) for f in exclusions.get("findings", []))
        self.exclusions_checked_by = frozenset(exclusions.get("checked_by", ()))
        self.watched_medications |= self.excluding_medications
        self.watched_procedures |= self.excluding_procedures
        words = document["presentation"]
        self.words = {k: v for k, v in words.items() if isinstance(v, str)}
        self.conditions: dict[str, Evaluator] = {}
        self.condition_texts: dict[str, str] = {}
        for name, spec in document["conditions"].items():
            kind = spec["type"]
            if kind not in REGIMEN_CONDITIONS:
                raise RulesError(self.rule_id, f"condition {name!r}: unknown type {kind!r}")
            self.condition_texts[name] = spec["text"]
            self.conditions[name] = REGIMEN_CONDITIONS[kind]({**spec, "_name": name}, self, c)
        unknown = sorted(self.support_conditions - set(self.given_sources))
        if unknown:
            raise RulesError(self.rule_id, f"after_first_of names {unknown}, which are not conditions of type given")
        self.initial = document["initial"]
        states = document["states"]
        self.states = {code: self._state(code, spec, params) for code, spec in states.items()}
        if self.initial not in self.states:
            raise RulesError(self.rule_id, f"initial state {self.initial!r} is not a state")
        self.transitions = [self._transition(i, spec) for i, spec in enumerate(document["transitions"])]
        guideline = document["guideline"]
        self.info = RegimenInfo(
            rule_id=self.rule_id, rule_version=str(document["version"]), title=document["title"],
            assessment_code=document["assessment_code"], guideline_id=guideline["id"],
            guideline_citation=" ".join(guideline["citation"].split()), guideline_url=guideline["url"],
            name=words["name"], long_name=words["long_name"],
            caveat=bind_template(words["caveat"], params, (), self.rule_id) if "caveat" in words else None,
            words=self.words, states=self.states, lineage_names={}, initial=self.initial,
            drug_name=document["drug"]["name"],
        )

    def procedure(self, concept: str, c: Compiler) -> str:
        if concept not in set(c.terms.procedure_by_code.values()):
            raise RulesError(self.rule_id, f"unknown procedure concept {concept!r}")
        c.observed.add(concept)
        return concept

    def _state(self, code: str, spec: Mapping[str, Any], params: Mapping[str, Any]) -> StateSpec:
        where = f"{self.rule_id}: state {code}"
        card = spec.get("card", {})
        warnings = tuple((_clauses(w["when"], self.conditions, where), bind_template(w["text"], params, (), where))
                         for w in spec.get("warnings", []))
        plan = tuple({**item, "text": bind_template(item["text"], params, ("exclusion",), where)} for item in spec.get("plan", []))
        summary = bind_template(card["summary"], params, ("dose", "day", "since_day", "exclusion"), where) if "summary" in card else None
        return StateSpec(code, spec["display"], bind_template(spec["text"], params, (), where), card.get("indicator"), summary,
                         bool(card.get("when_warned")), bool(spec.get("prednisone")), plan, warnings)

    def _transition(self, index: int, spec: Mapping[str, Any]) -> _Transition:
        where = f"{self.rule_id}: transition {index}"
        sources = None if spec["from"] == ANY_STATE else frozenset(spec["from"])
        for state in (sources or ()):
            if state not in self.states:
                raise RulesError(where, f"unknown state {state!r}")
        if spec["to"] != PREVIOUS_STATE and spec["to"] not in self.states:
            raise RulesError(where, f"unknown state {spec['to']!r}")
        dose = spec.get("dose", "keep")
        if isinstance(dose, dict):
            dose = {"factor": float(self.params[dose["factor"]["param"]]) if isinstance(dose["factor"], dict) else float(dose["factor"])}
        return _Transition(sources, _clauses(spec["when"], self.conditions, where), spec["to"], dose,
                           bool(spec.get("treatment_start")), spec.get("warning"))

    # --- facts -------------------------------------------------------------------------------------------

    def any_given(self, timeline: Timeline, medications: frozenset[str], procedures: frozenset[str],
                  start: datetime, end: datetime) -> list[Fact]:
        found: list[Fact] = [a for m in medications for a in timeline.administrations.get(m, ())
                             if start <= a.time <= end and a.status in _STATUSES_GIVEN]
        found += [p for name in procedures for p in timeline.procedures.get(name, ()) if start <= p.time <= end]
        return sorted(found, key=lambda f: (f.time, f.source))  # the same order whatever the sets' order

    def first_given(self, run: _Run, condition: str, moment: datetime) -> datetime | None:
        medications, procedures, start_of = self.given_sources[condition]
        start = start_of(run)
        if start is None:
            return None
        found = self.any_given(run.timeline, medications, procedures, start, moment)
        return found[0].time if found else None

    def excluding_fact(self, run: _Run, moment: datetime) -> Fact | None:
        """The first exclusion recorded by `moment`: HSCT, chemo- or radiotherapy after day 0, MDS or CHIP."""
        timeline = run.timeline
        zero = timeline.day_zero.time if timeline.day_zero else None
        found = [f for f in self.any_given(timeline, self.excluding_medications, self.excluding_procedures,
                                             zero or moment, moment)] if zero else []
        found += [f for name in self.excluding_findings for f in timeline.findings.get(name, ())
                  if f.time <= moment and f.verification_status not in _REFUTED]
        return min(found, key=lambda f: (f.time, f.source)) if found else None

    def rounded(self, mg: float) -> float:
        return math.floor(mg / self.step + 0.5) * self.step

    def _start_dose(self, timeline: Timeline, moment: datetime) -> tuple[float | None, float, Measurement | None]:
        weights = [w for w in timeline.measurements.get(self.weight_concept, ())
                   if w.time <= moment and moment - w.time <= self.weight_max_age]
        weight = weights[-1] if weights else None
        return (self.rounded(self.mg_per_kg * weight.value) if weight else None), self.mg_per_kg, weight

    # --- replay ------------------------------------------------------------------------------------------

    def holds(self, run: _Run, clauses: tuple[tuple[str, bool], ...], moment: datetime,
              reasons: list[str], evidence: list[Fact], notes: dict[str, None]) -> bool:
        for name, negated in clauses:
            truth, facts, note = self.conditions[name](run, moment)
            if note:
                notes[note] = None
            if truth is None or truth == negated:
                return False
            reasons.append(("not " if negated else "") + self.condition_texts[name])
            evidence += facts
        return True

    def _events(self, run: _Run, timeline: Timeline) -> list[datetime]:
        floor = timeline.day_zero.time if timeline.day_zero else None
        as_of = timeline.as_of
        moments: set[datetime] = {as_of}
        for points in run.lineages.values():
            moments.update(p.time for p in points)
        for medication in self.watched_medications:
            moments.update(a.time for a in timeline.administrations.get(medication, ()))
        for procedure in self.watched_procedures:
            moments.update(p.time for p in timeline.procedures.get(procedure, ()))
        for finding in self.excluding_findings:
            moments.update(f.time for f in timeline.findings.get(finding, ()))
        for concept in self.watched_coded:
            moments.update(v.time for v in timeline.coded.get(concept, ()))
        for day in self.day_marks:
            start = _day_start(run, day)
            if start is not None:
                moments.add(start)
        return sorted(m for m in moments if (floor is None or m >= floor) and m <= as_of)

    def replay(self, timeline: Timeline, lineages: Mapping[str, tuple[LineagePoint, ...]],
               names: Mapping[str, str]) -> _Run:
        run = _Run(self, timeline, lineages, names)
        if timeline.day_zero is None:
            return run
        queue = self._events(run, timeline)
        heapq.heapify(queue)
        seen: set[datetime] = set()
        while queue:
            moment = heapq.heappop(queue)
            if moment in seen:
                continue
            seen.add(moment)
            for _ in range(len(self.states)):  # chained transitions at one moment, bounded
                taken = self._take(run, moment)
                if not taken:
                    break
                for interval in self.timers:
                    due = moment + interval
                    if due <= timeline.as_of:
                        heapq.heappush(queue, due)
        return run

    def _take(self, run: _Run, moment: datetime) -> bool:
        """The first transition from the current state whose conditions all hold; what a condition noted on the
        way (e.g. an improvement not counted) stays with the current state, the notes of the transition taken
        with the state it enters."""
        for transition in self.transitions:
            if transition.sources is not None and run.state not in transition.sources:
                continue
            if transition.sources is None and run.state == transition.target:
                continue
            reasons: list[str] = []
            evidence: list[Fact] = []
            noted: dict[str, None] = {}
            if not self.holds(run, transition.when, moment, reasons, evidence, noted):
                run.notes.update(noted)
                continue
            self._enter(run, transition, moment, tuple(reasons), tuple(evidence))
            run.notes = noted
            return True
        return False

    def _enter(self, run: _Run, transition: _Transition, moment: datetime, reasons: tuple[str, ...],
               evidence: tuple[Fact, ...]) -> None:
        target = transition.target
        dose, mg_per_kg = run.dose, run.mg_per_kg
        if target == PREVIOUS_STATE:
            target, dose, mg_per_kg = run.path.pop() if run.path else (self.initial, None, None)
        else:
            run.path.append((run.state, run.dose, run.mg_per_kg))
            spec = transition.dose
            if spec == "start":
                dose, mg_per_kg, run.weight = self._start_dose(run.timeline, moment)
            elif spec == "stop":
                dose, mg_per_kg = None, None
            elif isinstance(spec, dict):
                dose = self.rounded(dose * spec["factor"]) if dose is not None else None
                mg_per_kg = mg_per_kg * spec["factor"] if mg_per_kg is not None else None
        run.state, run.entered, run.dose, run.mg_per_kg = target, moment, dose, mg_per_kg
        run.entry_grades = run.grades(moment)
        if transition.treatment_start:
            run.treatment_start = moment
            run.start_worst = run.worst(moment)[0]
        run.steps.append(RegimenStep(moment, run.day(moment), target, dose, reasons, evidence, transition.warning))

    # --- the finding and its plan ------------------------------------------------------------------------

    def assess(self, timeline: Timeline, histories: Mapping[str, Any], names: Mapping[str, str],
               rule_set_version: str) -> tuple[RegimenFinding, Plan | None]:
        lineages = {name: self._points(histories[name], timeline) for name in self.confounders}
        run = self.replay(timeline, lineages, names)
        notes = run.notes
        as_of = timeline.as_of
        spec = self.states[run.state]
        warnings: list[str] = []
        if run.steps and run.steps[-1].warning:
            warnings.append(run.steps[-1].warning)
        for clauses, text in spec.warnings:
            if self.holds(run, clauses, as_of, [], [], notes):
                warnings.append(text)
        given = self._given_by_day(run)
        deviation = self._deviation(run, given) if spec.prednisone and run.treatment_start else None
        if deviation:
            warnings.append(deviation)
        if not self.exclusions_checked_by & timeline.resource_types:
            notes[self.words["exclusions_unchecked"]] = None
        excluding = self.excluding_fact(run, as_of)  # the words of the states that name it ({exclusion})
        exclusion = None
        if excluding is not None:
            # the concept's words, never the sender's text: the summary is plain text
            what = self.terminology.display(excluding.concept)
            day = run.day(excluding.time)
            exclusion = f"{what} (day {day})" if day is not None else what
        dose = run.dose if spec.prednisone else None
        mg_per_kg = run.mg_per_kg if spec.prednisone and run.dose is None else None
        evidence = tuple(dict.fromkeys(f for step in run.steps for f in step.evidence))
        zero = timeline.day_zero
        finding = RegimenFinding(
            rule=replace(self.info, lineage_names=dict(names)),
            rule_set_version=rule_set_version, state=run.state, steps=tuple(run.steps), dose_mg=dose,
            mg_per_kg=mg_per_kg, weight=run.weight if spec.prednisone else None, warnings=tuple(dict.fromkeys(warnings)),
            notes=tuple(notes), given=given, lineages=lineages, day=run.day(as_of), exclusion=exclusion,
            evidence=evidence, window=Window(zero.time if zero else as_of, as_of), day_zero_known=zero is not None,
        )
        return finding, self._plan(finding)

    def _points(self, history: Any, timeline: Timeline) -> tuple[LineagePoint, ...]:
        """The lineage's grade at each of its counts since day 0 (the grading rule's own grade of that moment)."""
        ctx = history.ctx
        floor = ctx.floor()
        times = sorted({t for concept in history.rule.observed for t in timeline.measurement_times.get(concept, ())
                        if floor < t <= timeline.as_of})
        points = []
        for moment in times:
            result = history.rule.grade(ctx, ctx.clipped(Window(moment - self.count_max_age, moment)))
            points.append(LineagePoint(moment, result.grade, result.evidence))
        return tuple(points)

    def _given_by_day(self, run: _Run) -> tuple[tuple[int, float | None], ...]:
        """Prednisone given per day since the first PHT step (what the team actually did)."""
        start = next((s.time for s in run.steps if self.states[s.state].prednisone), None)
        if start is None:
            return ()
        days: dict[int, float | None] = {}
        for given in run.timeline.administrations.get(self.medication, ()):
            if given.time < start or given.status not in _STATUSES_GIVEN:
                continue
            day = run.day(given.time)
            if day is None:
                continue
            before = days.get(day, 0.0)
            days[day] = None if before is None or given.dose_mg is None else before + given.dose_mg
        return tuple(sorted(days.items()))

    def _deviation(self, run: _Run, given: tuple[tuple[int, float | None], ...]) -> str | None:
        """The latest day's prednisone against the regimen's dose (after the state's first full day)."""
        if not given or run.dose is None:
            return None
        day, mg = given[-1]
        entered_day = run.day(run.entered)
        if mg is None or (entered_day is not None and day <= entered_day):
            return None
        if abs(mg - run.dose) <= self.deviation * run.dose:
            return None
        return self.words["deviation"].format(given=f"{mg:g}", day=day, planned=f"{run.dose:g}")

    def _plan(self, finding: RegimenFinding) -> Plan | None:
        spec = finding.spec
        if not finding.shows:
            return None
        actions: list[PlannedAction] = []
        driver = dict(driver=finding.label, driver_code=finding.rule.assessment_code)
        if spec.prednisone:
            if finding.dose_mg is not None:
                weight = finding.weight
                per_kg = f"{self.mg_per_kg:g} mg/kg/day, {weight.value:g} kg" if weight else ""
                text = self.words["drug_text"].format(dose=f"{finding.dose_mg:g} mg", per_kg=per_kg)
            else:
                text = self.words["drug_text_no_weight"].format(mg_per_kg=finding.mg_per_kg or self.mg_per_kg,
                                                                days=self.weight_max_age.days)
            actions.append(PlannedAction(
                "drug", self.medication, text, self.route, finding.dose_mg, finding.dose_mg, 24.0, status=GIVE_NOW,
                role="first-line", key=self.medication, regimen=text, nominal_daily_mg=finding.dose_mg, **driver))
        for item in spec.plan:
            actions.append(PlannedAction("action", item["action"], item["text"].format(exclusion=finding.exclusion or ""), **driver))
        # warnings and notes stand on the regimen's own card and RiskAssessment, not twice in the plan
        return Plan(self.rule_id, self.info.rule_version, self.info.guideline_id, self.info.guideline_citation,
                    finding, tuple(actions), ())  # type: ignore[arg-type]

