"""Findings and plans -> FHIR R4 RiskAssessment, CarePlan and OperationOutcome, validated with R4B models.

Ids are UUIDv5 of rule-set version, patient, evaluation time and finding, so the same input always gives
the same output.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from pydantic import ValidationError as PydanticValidationError

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

from service.fhir_input.concepts import Terminology
from service.fhir_output.wording import grade_text, reasons_text
from service.rules_engine.care_plan import CombinedPlan
from service.rules_engine.management import BLOCKED, CONDITIONAL, GIVE_NOW, PlannedAction
from service.rules_engine.model import Finding, GradeResult, MetricsFinding
from service.rules_engine.regimen import RegimenFinding
from service.rules_engine.phased import PhasedFinding, PhaseResult
from service.timeline.facts import Fact, InputNote, Timeline

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
_NAMESPACE = uuid.UUID("6f1d8f3e-9d6b-5c1e-9a57-2f0f3c7c5a11")
_NON_DRUG_KIND = {"alert-icu": "CommunicationRequest", "alert-neurology": "CommunicationRequest"}


def stable_id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))


def grade_code(grade: int | None) -> str:
    return "not-assessable" if grade is None else f"grade-{grade}"


@dataclass(frozen=True)
class OutputConfig:
    canonical_base: str

    @property
    def codesystem(self) -> str:
        return f"{self.canonical_base}/CodeSystem/cartox"

    def profile(self, name: str) -> str:
        return f"{self.canonical_base}/StructureDefinition/{name}"


def is_reference(source: str) -> bool:
    """Type/id references only: basis may cite only resources the caller sent with an id."""
    head, _, tail = source.partition("/")
    return bool(tail) and head[:1].isupper() and "/" not in tail and not source.startswith("urn:")


def subject_of(timeline: Timeline) -> dict[str, str]:
    if timeline.patient and is_reference(timeline.patient):
        return {"reference": timeline.patient}
    return {"display": "Patient not identified in the request"}


def risk_assessment(finding: Finding | MetricsFinding | PhasedFinding | RegimenFinding, timeline: Timeline, config: OutputConfig, resource_id: str,
                    management_guideline: str, terms: Terminology) -> dict[str, Any]:
    """The finding's RiskAssessment, by its kind's profile."""
    return _RISK_ASSESSMENT_BY_KIND[finding.kind](finding, timeline, config, resource_id, management_guideline, terms)


def _assessment_head(rule: Any, profile: str, extensions: list[dict[str, Any]], method_text: str, timeline: Timeline,
                     config: OutputConfig, resource_id: str) -> dict[str, Any]:
    """What every finding kind's RiskAssessment starts with: id, profile, extensions, code and method of the rule,
    subject, evaluation time."""
    cs = config.codesystem
    return {
        "resourceType": "RiskAssessment",
        "id": resource_id,
        "meta": {"profile": [profile]},
        "extension": extensions,
        "status": "final",
        "code": {"coding": [{"system": cs, "code": rule.assessment_code, "display": rule.title}], "text": rule.title},
        "subject": subject_of(timeline),
        "occurrenceDateTime": timeline.fhir_time(timeline.as_of),
        "method": {"coding": [{"system": cs, "code": rule.assessment_code, "version": rule.rule_version, "display": rule.title}],
                   "text": method_text},
    }


def _grading_risk_assessment(finding: Finding, timeline: Timeline, config: OutputConfig, resource_id: str,
                             management_guideline: str, terms: Terminology) -> dict[str, Any]:
    """Profile cartox-risk-assessment: prediction[0] the current grade, prediction[1] the maximum since day 0."""
    rule = finding.rule
    words = rule.presentation
    day_zero = timeline.day_zero
    missing = list(dict.fromkeys(finding.current.missing + finding.maximum.missing))
    method_text = (
        f"Rule {rule.rule_id} {rule.rule_version} (rule set {finding.rule_set_version}); "
        f"grading guideline {rule.guideline_id}: {rule.guideline_citation}; management guideline version {management_guideline}"
    )
    extensions = [
        {"url": config.profile("rule-set-version"), "valueString": finding.rule_set_version},
        {"url": config.profile("guideline-version"), "valueString": management_guideline},
    ] + [{"url": config.profile("missing-data"), "valueString": text} for text in missing]
    notes = [{"text": words.caveat}] if words.caveat else []
    if finding.onset is not None:
        day = f"day {finding.onset_day}" if finding.onset_day is not None else "day unknown (no day 0)"
        onset = f"{words.onset or 'Onset'} {timeline.fhir_time(finding.onset)} ({day})"
        notes.append({"text": onset + (f". {words.atypical_onset}" if finding.atypical_onset and words.atypical_onset else "")})
    if finding.episode is not None:
        notes.append({"text": f"Continuing episode since {timeline.fhir_time(finding.episode.start)}, "
                              f"{finding.episode.lasted_days(timeline.as_of):.1f} days at the evaluation time."})
    if day_zero is None:
        notes.append({"text": "Day 0 (CAR-T infusion) unknown: the maximum grade covers all data sent, and day-relative findings are unknown."})
    current_start = finding.current.window.start if day_zero is None else max(finding.current.window.start, day_zero.time)
    max_start = day_zero.time if day_zero else finding.maximum.window.start
    resource: dict[str, Any] = {
        **_assessment_head(rule, config.profile("cartox-risk-assessment"), extensions, method_text, timeline, config, resource_id),
        "prediction": [
            _prediction(finding, finding.current, config, f"current, last {rule.window_hours:g} h",
                        current_start, timeline, terms),
            _prediction(finding, finding.maximum, config, "maximum since day 0" if day_zero else "maximum over the data sent",
                        max_start, timeline, terms),
        ],
    }
    if notes:
        resource["note"] = notes
    basis = _basis(finding.current.evidence + finding.maximum.evidence)
    if basis:
        resource["basis"] = basis
    return resource


_QUANTITY_UNITS = ("mg", "mg/kg")


def _metric_extension(url: str, metric: Any) -> dict[str, Any]:
    if metric.unit in _QUANTITY_UNITS:
        return {"url": url, "valueQuantity": {"value": round(metric.value, 3), "unit": metric.unit, "system": UCUM, "code": metric.unit}}
    return {"url": url, "valueInteger": int(round(metric.value))}


def _metrics_risk_assessment(finding: MetricsFinding, timeline: Timeline, config: OutputConfig, resource_id: str,
                             management_guideline: str, terms: Terminology) -> dict[str, Any]:
    """The metrics kind's profile (the rule's `output.profile`): the values as extensions, one extension per
    threshold reached, prediction[0] the outcome of the default threshold set over day 0 -> evaluation time."""
    rule = finding.rule
    cs = config.codesystem
    extensions = [
        {"url": config.profile("rule-set-version"), "valueString": finding.rule_set_version},
        {"url": config.profile("guideline-version"), "valueString": management_guideline},
    ] + [{"url": config.profile("missing-data"), "valueString": text} for text in finding.missing]
    for name, extension in rule.extensions.items():
        metric = finding.metrics[name]
        if metric.value is not None:
            extensions.append(_metric_extension(config.profile(extension), metric))
    for threshold in finding.reached:
        extensions.append({"url": config.profile(rule.threshold_extension),
                           "valueCoding": {"system": cs, "code": threshold.code, "display": threshold.label}})
    outcome = finding.outcome or "not-assessable"
    summary = finding.summary()
    rationale = "; ".join(f"{m.label}: {m.shown}" for m in finding.metrics.values())
    if finding.reached:
        rationale += ". Thresholds reached: " + "; ".join(f"{t.code} ({t.text})" for t in finding.reached)
    notes = [{"text": text} for text in _metrics_notes(finding)]
    method = f"Rule {rule.rule_id} {rule.rule_version} (rule set {finding.rule_set_version}); sources {rule.guideline_id}: {rule.guideline_citation}"
    resource: dict[str, Any] = {
        **_assessment_head(rule, config.profile(rule.profile), extensions, method, timeline, config, resource_id),
        "prediction": [{
            "extension": [{"url": config.profile("data-completeness"), "valueCode": "incomplete" if finding.missing else "complete"}],
            "outcome": {"coding": [{"system": cs, "code": outcome, "display": rule.words[outcome].capitalize()}], "text": summary},
            "whenPeriod": {"start": timeline.fhir_time(finding.window.start), "end": timeline.fhir_time(timeline.as_of)},
            "rationale": rationale,
        }],
    }
    if notes:
        resource["note"] = notes
    basis = _basis(finding.evidence)
    if basis:
        resource["basis"] = basis
    return resource


def dose_runs(given: tuple[tuple[int, float | None], ...]) -> list[str]:
    """Daily doses given, as runs of consecutive days at one amount: "day 31-44: 40 mg/day"."""
    runs: list[list[Any]] = []  # [first day, last day, mg]
    for day, mg in given:
        if runs and runs[-1][1] == day - 1 and runs[-1][2] == mg:
            runs[-1][1] = day
        else:
            runs.append([day, day, mg])
    texts = []
    for first, last, mg in runs:
        days = f"day {first}" if first == last else f"day {first}-{last}"
        texts.append(f"{days}: {'dose not recorded' if mg is None else f'{mg:g} mg/day'}")
    return texts


def _regimen_risk_assessment(finding: RegimenFinding, timeline: Timeline, config: OutputConfig, resource_id: str,
                             management_guideline: str, terms: Terminology) -> dict[str, Any]:
    """Profile cartox-regimen-status: prediction[0].outcome = the regimen's state (a code of the project's
    CodeSystem) since the step that entered it; the steps and the dose history as notes; basis = the facts the
    steps rest on."""
    rule = finding.rule
    cs = config.codesystem
    spec = finding.spec
    step = finding.since
    start = step.time if step else finding.window.start
    rationale = spec.text
    if step is not None:
        rationale += f" Since day {step.day}: " + "; ".join(step.reasons) + "."
    if spec.prednisone:
        rationale += f" Prednisone dose: {finding.dose_words()}."
    notes = [f"Day {s.day}: {rule.states[s.state].display}" + (f" ({s.dose_mg:g} mg/day)" if s.dose_mg is not None else "") + " - " + "; ".join(s.reasons)
             for s in finding.steps]
    notes += [f"Prednisone given {text}" for text in dose_runs(finding.given)]
    notes += list(finding.warnings) + list(finding.notes)
    if rule.caveat:
        notes.append(rule.caveat)
    extensions = [{"url": config.profile("rule-set-version"), "valueString": finding.rule_set_version},
                  {"url": config.profile("guideline-version"), "valueString": rule.guideline_id}]
    method = f"Rule {rule.rule_id} {rule.rule_version} (rule set {finding.rule_set_version}); source {rule.guideline_id}: {rule.guideline_citation}"
    resource: dict[str, Any] = {
        **_assessment_head(rule, config.profile("cartox-regimen-status"), extensions, method, timeline, config, resource_id),
        "prediction": [{
            "outcome": {"coding": [{"system": cs, "code": finding.state, "display": spec.display}],
                        "text": finding.summary()},
            "whenPeriod": {"start": timeline.fhir_time(min(start, timeline.as_of)), "end": timeline.fhir_time(timeline.as_of)},
            "rationale": rationale,
        }],
        "note": [{"text": text} for text in notes] or [{"text": spec.text}],
    }
    basis = _basis(finding.evidence)
    if basis:
        resource["basis"] = basis
    return resource


def _metrics_notes(finding: MetricsFinding) -> list[str]:
    words = finding.rule.words
    notes = [f"{words[f'indication-{name}']}: {mg:.5g} mg" for name, mg in finding.by_indication.items() if mg]
    if len(notes) > 1:
        notes.append(words["total"].format(what=f"{sum(finding.by_indication.values()):.5g} mg"))
    if finding.before_day_zero_mg:
        notes.append(words["before_day_zero"].format(what=f"{finding.before_day_zero_mg:.5g} mg"))
    notes += list(finding.listed) + list(finding.notes)
    if words.get("caveat"):
        notes.append(words["caveat"])
    return notes


def _phased_risk_assessment(finding: PhasedFinding, timeline: Timeline, config: OutputConfig, resource_id: str,
                            management_guideline: str, terms: Terminology) -> dict[str, Any]:
    """Profile cartox-phased-risk-assessment: one prediction per phase of the rule, in rule order (ICAHT:
    prediction[0] early, prediction[1] late), each with the phase's period and the values it rests on in basis."""
    rule = finding.rule
    extensions = [
        {"url": config.profile("rule-set-version"), "valueString": finding.rule_set_version},
        {"url": config.profile("guideline-version"), "valueString": management_guideline},
    ] + [{"url": config.profile("missing-data"), "valueString": f"{p.label}: {text}"} for p in finding.phases for text in p.missing]
    notes = [{"text": rule.caveat}] if rule.caveat else []
    if not finding.day_zero_known:
        notes.append({"text": "Day 0 (CAR-T infusion) unknown: no phase can be placed, so none is assessable."})
    method = (f"Rule {rule.rule_id} {rule.rule_version} (rule set {finding.rule_set_version}); "
              f"grading guideline {rule.guideline_id}: {rule.guideline_citation}")
    resource: dict[str, Any] = {
        **_assessment_head(rule, config.profile(rule.profile), extensions, method, timeline, config, resource_id),
        "prediction": [_phase_prediction(finding, phase, config, timeline) for phase in finding.phases],
    }
    if notes:
        resource["note"] = notes
    basis = _basis(finding.evidence)
    if basis:
        resource["basis"] = basis
    return resource


def _phase_prediction(finding: PhasedFinding, phase: PhaseResult, config: OutputConfig, timeline: Timeline) -> dict[str, Any]:
    rule = finding.rule
    prediction: dict[str, Any] = {
        "extension": [{"url": config.profile("data-completeness"), "valueCode": "incomplete" if phase.incomplete else "complete"},
                      {"url": config.profile("grading-scale"), "valueCode": rule.guideline_id}],
        "outcome": {
            "coding": [{"system": config.codesystem, "code": grade_code(phase.grade), "display": grade_text(phase.grade).capitalize()}],
            "text": f"{rule.name} {phase.label} {grade_text(phase.grade)} ({phase.period})",
        },
        "rationale": "; ".join(phase.why + phase.notes) if phase.grade is not None else "Cannot assess: " + "; ".join(phase.missing),
    }
    if phase.start is not None:  # a phase not yet reached has only its start (an open period)
        period = {"start": timeline.fhir_time(phase.start)}
        if phase.end is not None:
            period["end"] = timeline.fhir_time(phase.end)
        prediction["whenPeriod"] = period
    return prediction


def _prediction(finding: Finding, result: GradeResult, config: OutputConfig, label: str,
                start: datetime, timeline: Timeline, terms: Terminology) -> dict[str, Any]:
    words = finding.rule.presentation
    coding = [{"system": config.codesystem, "code": grade_code(result.grade), "display": grade_text(result.grade).capitalize()}]
    icd = finding.rule.outcome_codes.get(result.grade or 0)
    if icd:
        coding.append({"system": ICD10CM, "code": icd, "display": f"{words.long_name}, grade {result.grade}"})
    rationale = "; ".join(reasons_text(finding, result.reasons, timeline, terms)) or _no_reason(result)
    return {
        "extension": [{"url": config.profile("data-completeness"), "valueCode": "incomplete" if result.incomplete else "complete"},
                      {"url": config.profile("grading-scale"), "valueCode": finding.rule.guideline_id}],
        "outcome": {"coding": coding, "text": f"{words.name} {grade_text(result.grade)} ({label})"},
        "whenPeriod": {"start": timeline.fhir_time(min(start, timeline.as_of)), "end": timeline.fhir_time(timeline.as_of)},
        "rationale": rationale,
    }


def _no_reason(result: GradeResult) -> str:
    if result.grade is None:
        return "Cannot assess: " + "; ".join(result.missing)
    return "No criterion for a grade above 0 was met"


def _basis(facts: tuple[Fact, ...]) -> list[dict[str, str]]:
    seen = dict.fromkeys(f.source for f in sorted(facts, key=lambda f: f.time) if is_reference(f.source))
    return [{"reference": reference} for reference in seen]


def care_plan(combined: CombinedPlan, timeline: Timeline, config: OutputConfig, resource_id: str,
              risk_assessment_ids: Mapping[str, str], terminology: Terminology) -> dict[str, Any]:
    """The patient's one CarePlan: every plan merged; each activity says which finding calls for it."""
    lead = combined.lead
    rule_set_version = lead.finding.rule_set_version
    sources = " ".join(
        f"{plan.finding.name}: rule {plan.rule_id} {plan.rule_version}, guideline version {plan.guideline_id} ({plan.guideline_citation})."
        for plan in combined.plans
    )
    description = f"{combined.title}. {sources} Merged by rule {combined.rule_id} {combined.rule_version} (rule set {rule_set_version})."
    if combined.notes:
        description += " " + " ".join(combined.notes)
    return {
        "resourceType": "CarePlan",
        "id": resource_id,
        "meta": {"profile": [config.profile("cartox-care-plan")]},
        "extension": [
            {"url": config.profile("rule-set-version"), "valueString": rule_set_version},
            {"url": config.profile("guideline-version"), "valueString": combined.guideline_id},
        ],
        "status": "active",
        "intent": "proposal",
        "title": combined.title,
        "description": description,
        "subject": subject_of(timeline),
        "created": timeline.fhir_time(timeline.as_of),
        "supportingInfo": [{"reference": f"urn:uuid:{risk_assessment_ids[plan.finding.rule.rule_id]}"} for plan in combined.plans],
        "activity": [{"detail": _activity_detail(action, config, terminology)} for action in combined.actions],
    }


def _mg(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "mg", "system": UCUM, "code": "mg"}


# CarePlan.activity.detail.status per plan status: give now = not-started; conditional = on-hold;
# blocked = not-started with doNotPerform (the order must not be placed).
_DETAIL_STATUS = {GIVE_NOW: "not-started", CONDITIONAL: "on-hold", BLOCKED: "not-started"}


def _plan_extensions(action: PlannedAction, config: OutputConfig) -> list[dict[str, Any]]:
    """plan-status, activity-role, activity-condition(-met): fhir_profiles/StructureDefinition-*.json."""
    condition = action.condition
    code, text, met = ("none", "indicated at this grade", True) if condition is None else (condition.code, condition.text, condition.met)
    return [
        {"url": config.profile("plan-status"), "valueCode": action.status},
        {"url": config.profile("activity-role"), "valueCode": action.role or "first-line"},
        {"url": config.profile("activity-condition"),
         "valueCodeableConcept": {"coding": [{"system": config.codesystem, "code": code}], "text": text}},
        {"url": config.profile("activity-condition-met"), "valueBoolean": met},
    ]


def _reason(action: PlannedAction, config: OutputConfig) -> list[dict[str, Any]]:
    """The finding that calls for the activity (a merged plan answers several)."""
    return [{"coding": [{"system": config.codesystem, "code": action.driver_code}], "text": action.driver}]


def _activity_detail(action: PlannedAction, config: OutputConfig, terminology: Terminology) -> dict[str, Any]:
    if action.kind == "action":
        detail = {
            "kind": _NON_DRUG_KIND.get(action.code, "ServiceRequest"),
            "code": {"coding": [{"system": config.codesystem, "code": action.code}], "text": action.description},
            "reasonCode": _reason(action, config),
            "status": _DETAIL_STATUS[action.status],  # a conditional action (e.g. a taper) waits on hold
            "description": action.description,
        }
        if action.reason:
            detail["statusReason"] = {"text": action.reason}
        return detail
    name = terminology.display(action.code)
    product: dict[str, Any] = {"text": name}
    coding = terminology.output_coding(action.code)
    if coding is not None:
        product["coding"] = [{"system": coding.system, "code": coding.code, "display": name}]
    detail: dict[str, Any] = {
        "extension": _plan_extensions(action, config),
        "kind": "MedicationRequest",
        "reasonCode": _reason(action, config),
        "status": _DETAIL_STATUS[action.status],
        "productCodeableConcept": product,
        "description": action.description,
    }
    if action.reason:
        detail["statusReason"] = {"text": action.reason}
    if action.do_not_perform:
        detail["doNotPerform"] = True
    if action.dose_mg is not None:
        detail["quantity"] = _mg(action.dose_mg)
    if action.daily_mg is not None:
        detail["dailyAmount"] = _mg(action.daily_mg)
    if action.every_hours:
        repeat: dict[str, Any] = {"frequency": 1, "period": action.every_hours, "periodUnit": "h"}
        if action.every_hours_max:
            repeat["periodMax"] = action.every_hours_max
        if action.duration_days:
            repeat["boundsDuration"] = {"value": action.duration_days, "unit": "d", "system": UCUM, "code": "d"}
        detail["scheduledTiming"] = {"repeat": repeat}
    return detail


def operation_outcome_of_notes(notes: tuple[InputNote, ...], config: OutputConfig, resource_id: str) -> dict[str, Any]:
    issues = []
    for note in notes:
        issue: dict[str, Any] = {
            "severity": note.severity,
            "code": "informational",
            "details": {"coding": [{"system": config.codesystem, "code": note.code}], "text": note_text(note)},
        }
        if note.location:
            issue["expression"] = [note.location]
        issues.append(issue)
    if not issues:
        issues.append({"severity": "information", "code": "informational", "details": {"text": "All input resources were used."}})
    return {"resourceType": "OperationOutcome", "id": resource_id, "issue": issues}


def note_text(note: InputNote) -> str:
    return f"{note.message} (x{note.count})" if note.count > 1 else note.message


def valid_medication_request(resource: dict[str, Any], patient: str | None) -> dict[str, Any] | None:
    """A corrected draft order as the EHR will update it: its subject filled from the request's patient when
    the draft had none, checked with the R4B model; None when the draft as sent was not valid FHIR to begin with."""
    if "subject" not in resource and patient is not None and is_reference(patient):
        resource = {**resource, "subject": {"reference": patient}}
    try:
        MedicationRequest.model_validate(resource)
    except PydanticValidationError:
        return None
    return resource


_RISK_ASSESSMENT_BY_KIND = {"grading": _grading_risk_assessment, "metrics": _metrics_risk_assessment,
                            "regimen": _regimen_risk_assessment, "phased": _phased_risk_assessment}
_VALIDATORS = {"RiskAssessment": RiskAssessment, "CarePlan": CarePlan, "OperationOutcome": OperationOutcome}


def validated(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate with the fhir.resources R4B model (raises on a bug) and return the resource as built: it is
    already R4 JSON, and re-serialising the model would cost more than the validation."""
    _VALIDATORS[resource["resourceType"]].model_validate(resource)
    return resource
