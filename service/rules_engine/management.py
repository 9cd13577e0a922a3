"""Management rules: the current grade -> recommended actions, each drug with a plan status.

Every drug activity is exactly one of
- give now (`give-now`): the guideline says give it at this grade and nothing it depends on is unmet;
- conditional (`conditional`): it depends on a condition the data do not show as met (persistence not
  reached, no improvement not shown, first line not failed, an alternative to the drug given now);
- blocked (`blocked`): a product-label limit forbids a dose now (with the time of the next possible dose).
Conditions are defined in the rule file (a closed vocabulary of condition types below), with their words.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Protocol

from service.errors import RulesError
from service.rules_engine.conditions import Compiler
from service.rules_engine.model import Finding, Window
from service.rules_engine.presentation import bind_template
from service.timeline.facts import Administration, Fact, Measurement, Timeline

GIVE_NOW, CONDITIONAL, BLOCKED = "give-now", "conditional", "blocked"
ROLES = ("first-line", "second-line", "alternative", "adjunct")
_DEFAULT_COUNTED = ("completed", "in-progress", "stopped")


class History(Protocol):
    """What management may ask of the graded finding's rule beyond the finding itself."""

    def grade_at(self, moment: datetime) -> int | None: ...

    def positive(self, criteria: tuple[str, ...], window: Window) -> tuple[Fact, ...] | None: ...


@dataclass(frozen=True, slots=True)
class ConditionState:
    """A condition of a drug activity: its code and words, whether the data show it met, and why."""

    code: str
    text: str  # the condition in the guideline's words, e.g. "if symptoms persist for 3 days or more"
    met: bool
    status: str  # what the data show, e.g. "the CRS episode has lasted 1.2 days"
    evidence: tuple[Fact, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One CarePlan activity. kind "drug" (a medication) or "action" (a coded non-drug action)."""

    kind: str
    code: str  # activity code, or the medication concept for drugs
    description: str
    route: str | None = None
    dose_mg: float | None = None
    daily_mg: float | None = None
    every_hours: float | None = None
    every_hours_max: float | None = None
    duration_days: float | None = None
    status: str = GIVE_NOW
    reason: str | None = None  # why conditional or blocked (CarePlan statusReason)
    role: str | None = None
    condition: ConditionState | None = None
    evidence: tuple[Fact, ...] = ()
    key: str | None = None  # the rule's drug key (several regimens may share one medication)
    regimen: str | None = None  # the guideline's regimen in words ("dexamethasone 10 mg IV every 6 h")
    nominal_daily_mg: float | None = None  # the regimen's daily amount at the guideline's (adult) dose: compares regimens
    driver: str = ""  # the finding that calls for it, e.g. "ICANS grade 3"
    driver_code: str = ""  # that finding's assessment code, e.g. "icans-grade-astct"

    @property
    def do_not_perform(self) -> bool:
        return self.status == BLOCKED


@dataclass(frozen=True)
class Plan:
    rule_id: str
    rule_version: str
    guideline_id: str
    guideline_citation: str
    finding: Finding
    actions: tuple[PlannedAction, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Drug:
    key: str
    medication: str
    name: str  # how the drug reads in texts, e.g. "tocilizumab"
    route: str
    mg: float | None
    mg_per_kg: float | None
    max_mg: float | None
    low_weight_below_kg: float | None
    low_weight_mg_per_kg: float | None
    every_hours: float | None
    every_hours_max: float | None
    duration_days: float | None
    fixed_adult_dose: bool
    limits: Mapping[str, Any] | None
    regimen: str  # the regimen in words, e.g. "dexamethasone 10 mg IV every 6 h"
    dose_text: str | None  # the dose in words when the guideline gives no dose (e.g. "per institutional protocol")


@dataclass(frozen=True)
class _Request:
    """What one plan is evaluated against: its finding, and the findings of the rules it reads."""

    finding: Finding
    timeline: Timeline
    history: History
    findings: Mapping[str, Finding]


ConditionEvaluator = Callable[[_Request], ConditionState]


class ManagementRule:
    def __init__(self, document: Mapping[str, Any], compiler: Compiler) -> None:
        self.rule_id = document["id"]
        self.version = str(document["version"])
        self.title = document["title"]
        self.applies_to = document["applies_to"]
        self.default_guideline = document["default_guideline"]
        self.weight_concept = compiler.measurement(document["weight_concept"])
        self.weight_max_age = timedelta(days=compiler.number(compiler.params["weight_max_age_days"]))
        self.adult_from = compiler.number(compiler.params["adult_from_years"])
        self.terminology = compiler.terms
        self.drugs = {key: self._drug(key, spec, compiler) for key, spec in document["drugs"].items()}
        self.reads = tuple(document.get("reads", ()))
        self.conditions: dict[str, ConditionEvaluator] = {}
        for code, spec in document.get("conditions", {}).items():  # in file order: any_of names earlier ones
            self.conditions[code] = _compile_condition(code, spec, self, compiler)
        # criteria of the graded rule the conditions read (checked against it at load)
        self.criteria_read = {name for spec in document.get("conditions", {}).values() for name in spec.get("criteria", ())}
        self.guidelines = {name: self._guideline(name, spec, compiler) for name, spec in document["guidelines"].items()}
        if self.default_guideline not in self.guidelines:
            raise RulesError(self.rule_id, f"default_guideline {self.default_guideline!r} is not one of its guidelines")

    def _guideline(self, name: str, spec: Mapping[str, Any], compiler: Compiler) -> dict[str, Any]:
        grades = {int(grade): self._items(items, compiler, f"{self.rule_id}: {name} grade {grade}") for grade, items in spec.get("grades", {}).items()}
        # `always`: items for every state of the finding (a metrics finding has no grade), usually only_if-gated
        return {"citation": spec["citation"], "grades": grades, "always": self._items(spec.get("always", []), compiler, f"{self.rule_id}: {name} always")}

    def _items(self, items: list[Mapping[str, Any]], compiler: Compiler, where: str) -> list[dict[str, Any]]:
        """One grade's (or `always`) items checked against the drugs and conditions, texts bound."""
        compiled = []
        keys = [item["drug"] for item in items if "drug" in item]
        for item in items:
            for ref in ("only_if", "when", "repeat_when"):
                if ref in item and item[ref] not in self.conditions:
                    raise RulesError(where, f"unknown condition {item[ref]!r}")
            if "action" in item or "note" in item:
                compiled.append({**item, "text": bind_template(item["text"], compiler.params, (), where)})
                continue
            if item["drug"] not in self.drugs:
                raise RulesError(where, f"unknown drug {item['drug']!r}")
            for ref in ("alternative_to", "replaces"):
                if ref in item and item[ref] not in keys:
                    raise RulesError(where, f"{ref} names {item[ref]!r}, which is not a drug of this grade")
            if item["role"] == "alternative" and "alternative_to" not in item:
                raise RulesError(where, f"alternative {item['drug']!r} must name the drug it is an alternative to")
            texts = {k: bind_template(item[k], compiler.params, ("dose",), where) for k in ("text", "repeat_text") if k in item}
            compiled.append({**item, **texts})
        return compiled

    def _drug(self, key: str, spec: Mapping[str, Any], compiler: Compiler) -> _Drug:
        compiler.medications([spec["medication"]])
        dose = spec.get("dose", {})
        low = spec.get("low_weight", {})
        return _Drug(
            key, spec["medication"], spec.get("name", spec["medication"]), spec["route"], dose.get("mg"),
            dose.get("mg_per_kg"), dose.get("max_mg"), low.get("below_kg"), low.get("mg_per_kg"),
            spec.get("every_hours"), spec.get("every_hours_max"), spec.get("duration_days"),
            bool(spec.get("fixed_adult_dose")), spec.get("label_limits"), spec["regimen"], spec.get("dose_text"),
        )

    @property
    def guideline_ids(self) -> tuple[str, ...]:
        return tuple(self.guidelines)

    def given(self, drug: _Drug, timeline: Timeline, since: datetime | None = None) -> list[Administration]:
        """Doses of the drug's medication that happened (label-limit statuses), oldest first, since day 0
        (the label limits' safe reading) or since `since`."""
        statuses = set((drug.limits or {}).get("counted_statuses", _DEFAULT_COUNTED))
        if since is None and timeline.day_zero is not None:
            since = timeline.day_zero.time
        return [a for a in timeline.administrations.get(drug.medication, ())
                if a.status in statuses and (since is None or a.time >= since)]

    def episode_doses(self, drug: _Drug, request: "_Request") -> list[Administration]:
        """Doses given for the continuing episode: what "repeat" and "no improvement" refer to."""
        episode = request.finding.episode
        return self.given(drug, request.timeline, episode.start if episode else None)

    def plan(self, finding: Finding, timeline: Timeline, guideline: str | None, history: History,
             findings: Mapping[str, Finding] | None = None) -> Plan | None:
        """The plan for the finding's current grade; `findings` are those of the rules this rule reads."""
        level = finding.level
        chosen = guideline or self.default_guideline
        notes: list[str] = []
        if chosen not in self.guidelines:
            # A guideline another rule has but this one lacks: this rule's default, said on the plan.
            notes.append(f"{self.title} has no {chosen} version: {self.default_guideline} is shown.")
            chosen = self.default_guideline
        spec = self.guidelines[chosen]
        items = (spec["grades"].get(level, []) if level else []) + spec["always"]
        if not items:
            return None
        weight = self._weight(timeline)
        age = timeline.age_years()
        request = _Request(finding, timeline, history, findings or {})
        # `only_if` items (e.g. seizure management) are part of the plan only when the data show their condition
        shown = []
        for item in items:
            state = self.conditions[item["only_if"]](request) if "only_if" in item else None
            if state is None or state.met:
                shown.append((item, state))
        notes_shown = [item["text"] for item, _ in shown if "note" in item]
        notes += notes_shown
        shown = [(item, state) for item, state in shown if "note" not in item]
        actions = [self._action(item, request, weight, age, state) for item, state in shown]
        if not actions and not notes_shown:
            return None  # every item waited on a condition the data do not show
        # what dosing lacked, said only where a drug of the plan needs it
        drugs = [self.drugs[item["drug"]] for item, _ in shown if "drug" in item]
        if weight is None and any(drug.mg_per_kg is not None for drug in drugs):
            notes.append(f"No usable body weight (none recorded in the {self.weight_max_age.days} days before the evaluation): doses are given per kg.")
        if age is None and any(drug.fixed_adult_dose for drug in drugs):
            notes.append("Age unknown (no Patient.birthDate): adult dosing shown; confirm the patient is an adult.")
        resolved = [replace(action, driver=finding.label, driver_code=finding.rule.assessment_code)
                    for action in _resolve(actions, [item for item, _ in shown], self.drugs)]
        return Plan(self.rule_id, self.version, chosen, spec["citation"], finding, tuple(resolved), tuple(notes))

    def dose_now(self, key: str, timeline: Timeline) -> tuple[float | None, str]:
        """The rule's dose of drug `key` for this patient now (weight-based and capped), in mg and in words."""
        dose, text, _ = _dose(self.drugs[key], self._weight(timeline))
        return dose, text

    def blocked_now(self, key: str, timeline: Timeline) -> str | None:
        """Why a dose of drug `key` at the timeline's time would break its label limits; None when it would not."""
        drug = self.drugs[key]
        blocked, reason, _ = _limits(drug, self.given(drug, timeline), timeline)
        return reason if blocked else None

    def _weight(self, timeline: Timeline) -> Measurement | None:
        return timeline.latest_measurement(self.weight_concept, self.weight_max_age)

    def _action(self, item: Mapping[str, Any], request: _Request, weight: Measurement | None, age: int | None,
                shown_because: ConditionState | None) -> PlannedAction:
        if "action" in item:
            condition = shown_because
            if "when" in item:
                condition = self.conditions[item["when"]](request)
                if shown_because is not None:  # what made the item part of the plan is said with it
                    condition = replace(condition, status=f"{condition.status}; {shown_because.status}",
                                        evidence=condition.evidence + shown_because.evidence)
            if condition is not None and not condition.met:
                return PlannedAction("action", item["action"], item["text"], status=CONDITIONAL, condition=condition,
                                     reason=f"Only {condition.text}: {condition.status}.", evidence=condition.evidence)
            return PlannedAction("action", item["action"], item["text"], condition=condition,
                                 evidence=condition.evidence if condition else ())
        timeline = request.timeline
        drug = self.drugs[item["drug"]]
        prior = self.episode_doses(drug, request)
        repeat = bool(prior) and "repeat_when" in item
        template = item.get("repeat_text", item["text"]) if prior else item["text"]
        condition: ConditionState | None = shown_because
        if "when" in item:
            condition = self.conditions[item["when"]](request)
        elif repeat:
            condition = self.conditions[item["repeat_when"]](request)

        paediatric = drug.fixed_adult_dose and drug.mg is not None and age is not None and age < self.adult_from
        if paediatric:
            dose, dose_text, evidence = None, f"weight-based (the adult dose of {drug.mg:g} mg is the maximum; patient is {age} years old)", ()
        else:
            dose, dose_text, evidence = _dose(drug, weight)
        daily = dose * (24 / drug.every_hours) if dose is not None and drug.every_hours else None
        description = template.format(dose=dose_text)
        status, reason = GIVE_NOW, None
        if condition is not None and not condition.met:
            status, reason = CONDITIONAL, f"Only {condition.text}: {condition.status}."
        blocked, limit_reason, counted = _limits(drug, self.given(drug, timeline), timeline)
        if blocked:
            status, reason = BLOCKED, limit_reason
        evidence = evidence + tuple(counted) + (condition.evidence if condition else ())
        nominal_daily = drug.mg * (24 / drug.every_hours) if drug.mg is not None and drug.every_hours else daily
        return PlannedAction(
            "drug", drug.medication, description, drug.route, dose, daily, drug.every_hours, drug.every_hours_max,
            drug.duration_days, status, reason, item["role"], condition, evidence, drug.key, drug.regimen, nominal_daily,
        )


def _resolve(actions: list[PlannedAction], items: list[Mapping[str, Any]], drugs: Mapping[str, _Drug]) -> list[PlannedAction]:
    """Apply what items say of each other: an alternative waits while the drug it replaces is given now; a
    second-line drug given now puts the first line it replaces on hold."""
    by_key = {action.key: index for index, action in enumerate(actions) if action.key}
    resolved = list(actions)
    for index, item in enumerate(items):
        action = resolved[index]
        if "alternative_to" in item and action.status == GIVE_NOW and item["alternative_to"] in by_key:
            other = drugs[item["alternative_to"]]
            chosen = resolved[by_key[other.key]]
            if chosen.status == GIVE_NOW:
                state = ConditionState("alternative", f"instead of {other.regimen}", False, f"{other.regimen} is proposed now")
                resolved[index] = replace(action, status=CONDITIONAL, condition=state,
                                          reason=f"Alternative to {other.regimen}, which is proposed now.")
        if "replaces" in item and action.status == GIVE_NOW and item["replaces"] in by_key:
            first = resolved[by_key[item["replaces"]]]
            if first.status == GIVE_NOW:
                this = drugs[item["drug"]]
                state = ConditionState("replaced", f"unless switched to {this.name}", False, f"{this.name} is proposed instead")
                resolved[by_key[item["replaces"]]] = replace(first, status=CONDITIONAL, condition=state,
                                                             reason=f"Switch to {this.name} instead ({action.condition.status if action.condition else 'second line'}).")
    return resolved


def _dose(drug: _Drug, weight: Measurement | None) -> tuple[float | None, str, tuple[Fact, ...]]:
    """(mg per dose or None, the dose in words, the weight used)."""
    if drug.mg is not None:
        return float(drug.mg), f"{drug.mg:g} mg", ()
    per_kg = drug.mg_per_kg
    if per_kg is None:  # the guideline names the drug without a dose
        return None, drug.dose_text or "", ()
    if weight is None:
        cap = f", at most {drug.max_mg:g} mg" if drug.max_mg else ""
        low = f"; {drug.low_weight_mg_per_kg:g} mg/kg under {drug.low_weight_below_kg:g} kg" if drug.low_weight_below_kg else ""
        return None, f"{per_kg:g} mg/kg{cap}{low} (no current weight: weigh the patient)", ()
    if drug.low_weight_below_kg is not None and weight.value < drug.low_weight_below_kg:
        per_kg = drug.low_weight_mg_per_kg
    dose = per_kg * weight.value
    capped = drug.max_mg is not None and dose > drug.max_mg
    dose = float(round(drug.max_mg if capped else dose))
    basis = f"{per_kg:g} mg/kg x {weight.value:g} kg" + (f", capped at {drug.max_mg:g} mg" if capped else "")
    return dose, f"{dose:g} mg ({basis})", (weight,)


def _limits(drug: _Drug, given: list[Administration], timeline: Timeline) -> tuple[bool, str | None, list[Administration]]:
    limits = drug.limits
    if not limits or not given:
        return False, None, given
    as_of = timeline.as_of
    if len(given) >= limits["max_total"]:
        return True, (f"{len(given)} doses of {drug.name} already given; the label allows at most {limits['max_total']} in total. "
                      "No further dose is possible."), given
    reasons: list[str] = []
    next_possible: datetime | None = None
    last = given[-1]
    wait_until = last.time + timedelta(hours=limits["min_interval_hours"])
    if wait_until > as_of:
        reasons.append(f"last dose at {timeline.local(last.time)}, less than {limits['min_interval_hours']:g} h ago")
        next_possible = wait_until
    recent = [a for a in given if as_of - a.time < timedelta(hours=24)]
    if len(recent) >= limits["max_in_24_hours"]:
        free_at = recent[-limits["max_in_24_hours"]].time + timedelta(hours=24)
        reasons.append(f"{len(recent)} doses in the last 24 h (label maximum {limits['max_in_24_hours']})")
        next_possible = max(next_possible or free_at, free_at)
    if next_possible is None:
        return False, None, given
    return True, f"Not before {timeline.local(next_possible)}: " + "; ".join(reasons) + ".", given


# --- condition types: each compiles a rule's condition into (request) -> ConditionState --------------------

def _episode_lasted(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """The continuing episode (see the grading rule's `episode`) has lasted `days` (ge) or more than `days` (gt);
    `days_by_product` replaces `days` for named CAR-T products."""
    days = c.number(spec["days"])
    by_product = {product: c.number(value) for product, value in spec.get("days_by_product", {}).items()}
    strictly = spec["comparator"] == "gt"

    def evaluate(request: _Request) -> ConditionState:
        timeline, finding = request.timeline, request.finding
        product = timeline.day_zero.product if timeline.day_zero else None
        threshold = by_product.get(product or "", days)
        text = bind_template(spec["text"], {**c.params, "days": threshold, "hours": threshold * 24}, (), rule.rule_id)
        name = finding.rule.presentation.name
        episode = finding.episode
        if episode is None:
            return ConditionState(code, text, False, f"no continuing {name} episode")
        lasted = episode.lasted_days(timeline.as_of)
        met = lasted > threshold if strictly else lasted >= threshold
        status = f"the {name} episode has lasted {_duration(lasted)} (since {timeline.local(episode.start)})"
        return ConditionState(code, text, met, status, episode.evidence)

    return evaluate


def _no_improvement(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """The grade is not lower `after_hours` after the last dose of `drug` than it was when that dose was given.
    With `doses`, at least that many doses were given and the grade is not lower than at the first of them
    ("failed"); `or_label_limit` also counts the label's total limit reached as failure."""
    drug = rule.drugs[spec["drug"]] if spec["drug"] in rule.drugs else None
    if drug is None:
        raise RulesError(rule.rule_id, f"condition {code}: unknown drug {spec['drug']!r}")
    after = timedelta(hours=c.number(spec["after_hours"]))
    doses_needed = int(c.number(spec.get("doses", 1)))
    or_label_limit = bool(spec.get("or_label_limit"))
    text = bind_template(spec["text"], c.params, (), rule.rule_id)

    def evaluate(request: _Request) -> ConditionState:
        timeline, finding = request.timeline, request.finding
        limit = (drug.limits or {}).get("max_total")
        counted = rule.given(drug, timeline)
        if or_label_limit and limit is not None and len(counted) >= limit:
            return ConditionState(code, text, True, f"{len(counted)} doses given, the label maximum", tuple(counted))
        given = rule.episode_doses(drug, request)
        if len(given) < doses_needed:
            done = f"{len(given)} dose{'s' if len(given) != 1 else ''} of {drug.name} given" if given else f"no {drug.name} given yet"
            return ConditionState(code, text, False, done, tuple(given))
        last, reference = given[-1], given[-doses_needed]
        if timeline.as_of - last.time < after:
            return ConditionState(code, text, False, f"last dose at {timeline.local(last.time)}: reassess from {timeline.local(last.time + after)}", tuple(given))
        before = request.history.grade_at(reference.time)
        now = finding.current.grade
        if before is None or now is None:
            return ConditionState(code, text, False, f"the grade when {drug.name} was given at {timeline.local(reference.time)} is not known", tuple(given))
        met = now >= before
        status = f"grade {now} now, grade {before} at the dose of {timeline.local(reference.time)}"
        return ConditionState(code, text, met, status + ("" if met else ": improved"), tuple(given))

    return evaluate


def _criteria_after_doses(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """At least `doses` doses of `drug` were given and one of the grading rule's `criteria` is still positive
    after the last of them, within the current window (e.g. hypotension persists after tocilizumab)."""
    drug = rule.drugs[spec["drug"]]
    doses_needed = int(c.number(spec["doses"]))
    criteria = tuple(spec["criteria"])
    text = bind_template(spec["text"], c.params, (), rule.rule_id)
    what = spec["finding"]

    def evaluate(request: _Request) -> ConditionState:
        timeline, finding = request.timeline, request.finding
        given = rule.episode_doses(drug, request)
        if len(given) < doses_needed:
            return ConditionState(code, text, False, f"{len(given)} of {doses_needed} dose{'s' if doses_needed > 1 else ''} of {drug.name} given", tuple(given))
        start = max(given[-1].time, finding.current.window.start)
        facts = request.history.positive(criteria, Window(start, timeline.as_of))
        if facts is None:
            return ConditionState(code, text, False, f"{what} after the last dose cannot be told (data missing)", tuple(given))
        if not facts:
            return ConditionState(code, text, False, f"no {what} since the dose at {timeline.local(given[-1].time)}", tuple(given))
        return ConditionState(code, text, True, f"{what} since the dose at {timeline.local(given[-1].time)}", tuple(given) + facts)

    return evaluate


def _duration(days: float) -> str:
    hours = days * 24
    return f"{hours:.0f} h" if hours < 48 else f"{days:.1f} days"


def _finding_grade(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """Another rule's current grade is at least `at_least` (e.g. concurrent CRS for ICANS management) or at most
    `at_most`. The rule must be one this rule reads; a finding that cannot be assessed leaves the condition as
    `not_assessable` says (unmet by default), and the status says so."""
    other = spec["rule"]
    if other not in rule.reads:
        raise RulesError(rule.rule_id, f"condition {code}: rule {other!r} is not in reads")
    at_least = int(c.number(spec["at_least"])) if "at_least" in spec else None
    at_most = int(c.number(spec["at_most"])) if "at_most" in spec else None
    if (at_least is None) == (at_most is None):
        raise RulesError(rule.rule_id, f"condition {code}: give exactly one of at_least, at_most")
    unknown_met = spec.get("not_assessable", "unmet") == "met"
    text = bind_template(spec["text"], c.params, (), rule.rule_id)

    def evaluate(request: _Request) -> ConditionState:
        finding = request.findings[other]
        name, grade = finding.rule.presentation.name, finding.current.grade
        if grade is None:
            return ConditionState(code, text, unknown_met, f"{name} cannot be assessed")
        met = grade >= at_least if at_least is not None else grade <= at_most
        return ConditionState(code, text, met, f"{name} grade {grade} now", finding.current.evidence if met and grade else ())

    return evaluate


def _criterion_present(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """One of the graded rule's `criteria` holds in the current window, with one of the coded `values` when given
    (e.g. a seizure; papilloedema among the signs of raised intracranial pressure)."""
    criteria = tuple(spec["criteria"])
    values = frozenset(spec.get("values", ()))
    text = bind_template(spec["text"], c.params, (), rule.rule_id)

    def evaluate(request: _Request) -> ConditionState:
        timeline, finding = request.timeline, request.finding
        facts = request.history.positive(criteria, finding.current.window) or ()
        if values:
            facts = tuple(f for f in facts if getattr(f, "value", None) in values or f.concept in values)
        if not facts:
            return ConditionState(code, text, False, "not recorded in the current window")
        latest = max(facts, key=lambda f: f.time)
        what = rule.terminology.display(getattr(latest, "value", None) or latest.concept)
        return ConditionState(code, text, True, f"{what} recorded at {timeline.local(latest.time)}", facts)

    return evaluate


def _combined(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler, every: bool) -> ConditionEvaluator:
    """any_of / all_of: the named conditions (defined earlier in the file) combined. The status says what the
    data show: for any_of the parts met (or all when none is), for all_of the parts unmet (or all when met)."""
    parts = [rule.conditions[name] for name in spec["conditions"] if name in rule.conditions]
    if len(parts) != len(spec["conditions"]):
        raise RulesError(rule.rule_id, f"condition {code}: define {spec['conditions']} before it")
    text = bind_template(spec["text"], c.params, (), rule.rule_id)

    def evaluate(request: _Request) -> ConditionState:
        states = [part(request) for part in parts]
        met = all(s.met for s in states) if every else any(s.met for s in states)
        # what decided it: any_of met by its met parts, all_of failed by its unmet parts; else every part
        deciding = [s for s in states if s.met == (not every)]
        shown = deciding if met != every else states
        return ConditionState(code, text, met, "; ".join(dict.fromkeys(s.status for s in shown)),
                              tuple(f for s in shown for f in s.evidence))

    return evaluate


def _any_of(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """Met when one of the named conditions is met (e.g. ASCO ICANS 2: no concurrent CRS, or CRS that did not
    improve after tocilizumab)."""
    return _combined(code, spec, rule, c, every=False)


def _all_of(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """Met when every named condition is met (e.g. CRS and ICANS both grade 1 or lower)."""
    return _combined(code, spec, rule, c, every=True)


def _finding_metric(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """A metric of the metrics finding the rule applies to is at least / at most a number (e.g. the last dose
    of a glucocorticoid for CRS/ICANS within 24 h: still running); `show` adds other metrics to the status."""
    name = spec["metric"]
    comparator = "at_least" if "at_least" in spec else "at_most"
    limit = c.number(spec[comparator])
    shown_too = tuple(spec.get("show", ()))
    text = bind_template(spec["text"], c.params, (), rule.rule_id)

    def evaluate(request: _Request) -> ConditionState:
        metrics = request.finding.metrics
        metric = metrics[name]
        if metric.value is None:
            return ConditionState(code, text, False, f"{metric.label}: {metric.shown}")
        met = metric.value >= limit if comparator == "at_least" else metric.value <= limit
        status = "; ".join(f"{m.label} {m.shown}" for m in (metric, *(metrics[other] for other in shown_too)))
        return ConditionState(code, text, met, status, request.finding.evidence if met else ())

    return evaluate


def _clinical_judgement(code: str, spec: Mapping[str, Any], rule: ManagementRule, c: Compiler) -> ConditionEvaluator:
    """The guideline says "consider": the data never decide it, the clinician does (never give-now)."""
    text = bind_template(spec["text"], c.params, (), rule.rule_id)
    status = bind_template(spec.get("status", "a clinical decision the data cannot make"), c.params, (), rule.rule_id)

    def evaluate(request: _Request) -> ConditionState:
        return ConditionState(code, text, False, status)

    return evaluate


CONDITION_TYPES: dict[str, Callable[[str, Mapping[str, Any], ManagementRule, Compiler], ConditionEvaluator]] = {
    "episode_lasted": _episode_lasted,
    "no_improvement_after_dose": _no_improvement,
    "criteria_after_doses": _criteria_after_doses,
    "finding_grade": _finding_grade,
    "criterion_present": _criterion_present,
    "clinical_judgement": _clinical_judgement,
    "any_of": _any_of,
    "all_of": _all_of,
    "finding_metric": _finding_metric,
}


def _compile_condition(code: str, spec: Mapping[str, Any], rule: ManagementRule, compiler: Compiler) -> ConditionEvaluator:
    kind = spec["type"]
    if kind not in CONDITION_TYPES:
        raise RulesError(rule.rule_id, f"condition {code!r}: unknown condition type {kind!r}")
    return CONDITION_TYPES[kind](code, spec, rule, compiler)
