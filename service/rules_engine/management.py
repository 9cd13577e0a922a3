"""Management rules: the current grade -> recommended actions, with weight-based doses and label limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from service.errors import RulesError
from service.fhir_input.concepts import Terminology
from service.rules_engine.conditions import Compiler
from service.rules_engine.model import Finding
from service.timeline.facts import Administration, Fact, Measurement, Timeline


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One CarePlan activity. kind "drug" (a medication to give) or "action" (a coded non-drug action)."""

    kind: str
    code: str  # activity code, or the medication concept for drugs
    description: str
    route: str | None = None
    dose_mg: float | None = None
    daily_mg: float | None = None
    every_hours: float | None = None
    every_hours_max: float | None = None
    duration_days: float | None = None
    do_not_perform: bool = False
    reason: str | None = None
    line: str | None = None  # first (default), second, alternative, conditional
    evidence: tuple[Fact, ...] = ()


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


class ManagementRule:
    def __init__(self, document: Mapping[str, Any], compiler: Compiler) -> None:
        self.rule_id = document["id"]
        self.version = str(document["version"])
        self.applies_to = document["applies_to"]
        self.default_guideline = document["default_guideline"]
        self.weight_concept = compiler.measurement(document["weight_concept"])
        self.weight_max_age = timedelta(days=compiler.number(compiler.params["weight_max_age_days"]))
        self.adult_from = compiler.number(compiler.params["adult_from_years"])
        self.terminology = compiler.terms
        self.drugs = {key: self._drug(key, spec, compiler) for key, spec in document["drugs"].items()}
        self.guidelines = document["guidelines"]
        for guideline, spec in self.guidelines.items():
            for grade, items in spec["grades"].items():
                for item in items:
                    if "drug" in item and item["drug"] not in self.drugs:
                        raise RulesError(self.rule_id, f"{guideline} grade {grade}: unknown drug {item['drug']!r}")

    @staticmethod
    def _drug(key: str, spec: Mapping[str, Any], compiler: Compiler) -> _Drug:
        compiler.medications([spec["medication"]])
        dose = spec["dose"]
        low = spec.get("low_weight", {})
        return _Drug(
            key, spec["medication"], spec["route"], dose.get("mg"), dose.get("mg_per_kg"), dose.get("max_mg"),
            low.get("below_kg"), low.get("mg_per_kg"), spec.get("every_hours"), spec.get("every_hours_max"),
            spec.get("duration_days"), bool(spec.get("fixed_adult_dose")), spec.get("label_limits"),
        )

    @property
    def guideline_ids(self) -> tuple[str, ...]:
        return tuple(self.guidelines)

    def plan(self, finding: Finding, timeline: Timeline, guideline: str | None) -> Plan | None:
        grade = finding.current.grade
        chosen = guideline or self.default_guideline
        spec = self.guidelines[chosen]
        items = spec["grades"].get(grade) if grade else None
        if not items:
            return None
        weight = self._weight(timeline)
        age = timeline.age_years()
        notes: list[str] = []
        if weight is None:
            notes.append(f"No usable body weight (none recorded in the {self.weight_max_age.days} days before the evaluation): doses are given per kg.")
        if age is None:
            notes.append("Age unknown (no Patient.birthDate): adult dosing shown; confirm the patient is an adult.")
        actions = [self._action(item, finding, timeline, weight, age) for item in items]
        return Plan(self.rule_id, self.version, chosen, spec["citation"], finding, tuple(actions), tuple(notes))

    def _weight(self, timeline: Timeline) -> Measurement | None:
        weights = timeline.measurements.get(self.weight_concept, ())
        if not weights:
            return None
        latest = weights[-1]
        return latest if timeline.as_of - latest.time <= self.weight_max_age else None

    def _action(self, item: Mapping[str, Any], finding: Finding, timeline: Timeline,
                weight: Measurement | None, age: int | None) -> PlannedAction:
        if "action" in item:
            return PlannedAction("action", item["action"], item["text"])
        drug = self.drugs[item["drug"]]
        description = item["text"]
        persisting = item.get("when_persisting_days")
        if persisting is not None:
            description = self._persistence_note(item, finding, timeline, description)
        if drug.fixed_adult_dose and age is not None and age < self.adult_from:
            return PlannedAction(
                "drug", drug.medication,
                f"{description} Patient is {age} years old: the adult dose of {drug.mg:g} mg is the maximum; "
                "calculate a weight-based paediatric dose.",
                drug.route, None, None, drug.every_hours, drug.every_hours_max, drug.duration_days,
                line=item.get("line"),
            )
        dose, dose_text, evidence = self._dose(drug, weight)
        daily = dose * (24 / drug.every_hours) if dose is not None and drug.every_hours else None
        blocked, reason, prior = self._limits(drug, timeline)
        description = f"{description} {dose_text}".strip()
        if blocked:
            description = f"Do not give {drug.medication} now: {reason}"
        return PlannedAction(
            "drug", drug.medication, description, drug.route, dose, daily, drug.every_hours, drug.every_hours_max,
            drug.duration_days, blocked, reason, item.get("line"), evidence + prior,
        )

    def _persistence_note(self, item: Mapping[str, Any], finding: Finding, timeline: Timeline, text: str) -> str:
        days = item["when_persisting_days"]
        product = timeline.day_zero.product if timeline.day_zero else None
        days = item.get("persisting_days_by_product", {}).get(product, days)
        if finding.onset is None:
            return f"{text} (CRS onset time unknown.)"
        lasted = (timeline.as_of - finding.onset).total_seconds() / 86400
        if lasted > days or (lasted == days and not item.get("persisting_strictly")):
            return f"{text} Symptoms have lasted {lasted:.1f} days since onset: criterion met."
        return f"{text} Symptoms have lasted {lasted:.1f} days since onset: not yet indicated (threshold {days:g} days)."

    @staticmethod
    def _dose(drug: _Drug, weight: Measurement | None) -> tuple[float | None, str, tuple[Fact, ...]]:
        if drug.mg is not None:
            return float(drug.mg), "", ()
        per_kg = drug.mg_per_kg
        if weight is None:
            cap = f", at most {drug.max_mg:g} mg" if drug.max_mg else ""
            low = (f"; {drug.low_weight_mg_per_kg:g} mg/kg under {drug.low_weight_below_kg:g} kg"
                   if drug.low_weight_below_kg else "")
            return None, f"Dose {per_kg:g} mg/kg{cap}{low}: weight missing, weigh the patient.", ()
        if drug.low_weight_below_kg is not None and weight.value < drug.low_weight_below_kg:
            per_kg = drug.low_weight_mg_per_kg
        dose = per_kg * weight.value
        capped = drug.max_mg is not None and dose > drug.max_mg
        if capped:
            dose = drug.max_mg
        dose = float(round(dose))
        text = f"Dose {dose:g} mg ({per_kg:g} mg/kg x {weight.value:g} kg" + (f", capped at {drug.max_mg:g} mg)." if capped else ").")
        return dose, text, (weight,)

    def _limits(self, drug: _Drug, timeline: Timeline) -> tuple[bool, str | None, tuple[Fact, ...]]:
        limits = drug.limits
        if not limits:
            return False, None, ()
        statuses = set(limits["counted_statuses"])
        given: list[Administration] = [a for a in timeline.administrations.get(drug.medication, ()) if a.status in statuses]
        if not given:
            return False, None, ()
        as_of = timeline.as_of
        reasons: list[str] = []
        next_possible: datetime | None = None
        if len(given) >= limits["max_total"]:
            return True, (f"{len(given)} doses already given; the label allows at most {limits['max_total']} in total. "
                          "No further dose is possible."), tuple(given)
        last = given[-1]
        wait_until = last.time + timedelta(hours=limits["min_interval_hours"])
        if wait_until > as_of:
            reasons.append(f"last dose at {timeline.local(last.time)}, less than {limits['min_interval_hours']} h ago")
            next_possible = wait_until
        recent = [a for a in given if as_of - a.time < timedelta(hours=24)]
        if len(recent) >= limits["max_in_24_hours"]:
            free_at = recent[-limits["max_in_24_hours"]].time + timedelta(hours=24)
            reasons.append(f"{len(recent)} doses in the last 24 h (label maximum {limits['max_in_24_hours']})")
            next_possible = max(next_possible or free_at, free_at)
        if next_possible is None:
            return False, None, tuple(given)
        return True, "; ".join(reasons) + f". Next dose possible from {timeline.local(next_possible)}.", tuple(given)
