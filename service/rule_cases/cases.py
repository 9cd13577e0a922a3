"""Rule test cases (rules/*.cases.yaml): compact clinical input -> real FHIR Bundle -> expected outcome.

Cases run the whole pipeline (decode, normalisation, rules, outputs), so they test what a hospital sees.
Compact resources keep cases readable; a full FHIR resource (with resourceType) is used as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

import jsonschema
import orjson

from service.errors import CartoxError
from service.fhir_input.times import parse_instant_parameter
from service.pipeline import Engine, Outcome, RequestOptions
from service.rules_engine.load import read_document
from service.settings import Settings

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PATIENT_ID = "case-patient"

# Compact observation keys: (LOINC code, display, default UCUM unit).
_OBSERVATIONS = {
    "temp": ("8310-5", "Body temperature", "Cel"),
    "sbp": ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    "dbp": ("8462-4", "Diastolic blood pressure", "mm[Hg]"),
    "spo2": ("59408-5", "Oxygen saturation by pulse oximetry", "%"),
    "o2_flow": ("3151-8", "Inhaled oxygen flow rate", "L/min"),
    "fio2": ("3150-0", "Inhaled oxygen concentration", "%"),
    "weight": ("29463-7", "Body weight", "kg"),
    "creatinine": ("2160-0", "Creatinine", "mg/dL"),
    "hb": ("718-7", "Hemoglobin", "g/dL"),
    "plt": ("777-3", "Platelets", "10*9/L"),
    "anc": ("751-8", "Neutrophils", "10*9/L"),
    "wbc": ("6690-2", "Leukocytes", "10*9/L"),
    "neut_pct": ("770-8", "Neutrophils/100 leukocytes", "%"),
}


CARTOX = "http://cartox.example.org/fhir/CodeSystem/cartox"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
# Compact neurological assessments (fhir_profiles: cartox-ice-score, cartox-loc-observation ...).
_SCORES = {"ice": "ice-total", "capd": "capd-total"}
_ANSWERS = {"loc": "loc-astct", "seizure": "seizure-astct", "motor": "motor-weakness-astct", "edema": "cerebral-edema-astct",
            "response": "disease-response"}


class CaseFailure(AssertionError):
    pass


@dataclass(frozen=True)
class Case:
    file: Path
    rule: str
    name: str
    spec: Mapping[str, Any]
    defaults: Mapping[str, Any]


def load_cases(path: Path, schema_dir: Path) -> list[Case]:
    document = read_document(path)
    schema = orjson.loads((schema_dir / "cases.schema.json").read_bytes())
    jsonschema.validate(document, schema)
    defaults = document.get("defaults", {})
    names = [case["name"] for case in document["cases"]]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"{path.name}: duplicate case names {sorted(duplicates)}")
    by_name = {case["name"]: case for case in document["cases"]}
    return [Case(path, document["rule"], case["name"], _extended(case, by_name, path), defaults) for case in document["cases"]]


def _extended(case: Mapping[str, Any], by_name: Mapping[str, Mapping[str, Any]], path: Path) -> Mapping[str, Any]:
    """`extends: <earlier case>`: that case's resources (and what it extends) come first: a course followed over
    weeks is written as one step after another."""
    if "extends" not in case:
        return case
    base = by_name.get(case["extends"])
    if base is None or base is case:
        raise ValueError(f"{path.name}: case {case['name']!r} extends unknown case {case['extends']!r}")
    earlier = _extended(base, by_name, path)
    return {**case, "resources": list(earlier.get("resources", [])) + list(case.get("resources", []))}


def _time(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _effective(item: Mapping[str, Any]) -> dict[str, Any]:
    if "period" in item:
        period = {k: _time(v) for k, v in item["period"].items()}
        return {"effectivePeriod": period}
    if "at" in item:
        return {"effectiveDateTime": _time(item["at"])}
    return {}


def _quantity(value: Any, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def compact_to_fhir(item: Mapping[str, Any], index: int) -> dict[str, Any]:
    """One compact case resource -> a FHIR R4 resource."""
    if "resourceType" in item:
        return dict(item)
    rid = str(item.get("id", f"c{index}"))
    subject = {"reference": f"Patient/{PATIENT_ID}"}
    for key, (code, display, default_unit) in _OBSERVATIONS.items():
        if key in item:
            unit = item.get("unit", default_unit)
            observation = {
                "resourceType": "Observation", "id": rid, "status": item.get("status", "final"),
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "subject": subject, **_effective(item),
                "valueQuantity": _quantity(item[key], unit),
            }
            if "low" in item:  # referenceRange.low in the value's unit
                observation["referenceRange"] = [{"low": _quantity(item["low"], unit)}]
            return observation
    if "procedure" in item:  # a SNOMED CT procedure performed at `at`
        return {"resourceType": "Procedure", "id": rid, "status": item.get("status", "completed"), "subject": subject,
                "code": {"coding": [{"system": SNOMED, "code": str(item["procedure"])}]}, "performedDateTime": _time(item["at"])}
    if "bp" in item:
        systolic, diastolic = item["bp"]
        return {
            "resourceType": "Observation", "id": rid, "status": item.get("status", "final"),
            "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
            "subject": subject, **_effective(item),
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _quantity(systolic, "mm[Hg]")},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _quantity(diastolic, "mm[Hg]")},
            ],
        }
    for key, code in _SCORES.items():
        if key in item:  # a score, or "not-done" (dataAbsentReason not-performed)
            resource = {"resourceType": "Observation", "id": rid, "status": item.get("status", "final"),
                        "code": {"coding": [{"system": CARTOX, "code": code}]}, "subject": subject, **_effective(item)}
            if item[key] == "not-done":
                resource["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-performed"}],
                                                "text": item.get("reason", "not performed")}
            else:
                resource["valueInteger"] = item[key]
            return resource
    for key, code in _ANSWERS.items():
        if key in item:
            return {"resourceType": "Observation", "id": rid, "status": item.get("status", "final"),
                    "code": {"coding": [{"system": CARTOX, "code": code}]}, "subject": subject, **_effective(item),
                    "valueCodeableConcept": {"coding": [{"system": CARTOX, "code": item[key]}]}}
    if "finding" in item:  # a SNOMED CT finding as a Condition (onset, optional abatement) or an Observation
        coding = {"coding": [{"system": SNOMED, "code": str(item["finding"])}]}
        if item.get("as") == "observation":
            return {"resourceType": "Observation", "id": rid, "status": item.get("status", "final"), "code": coding,
                    "subject": subject, **_effective(item), "valueBoolean": True}
        condition: dict[str, Any] = {
            "resourceType": "Condition", "id": rid, "code": coding, "subject": subject,
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": item.get("clinical", "active")}]},
            "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": item.get("verification", "confirmed")}]},
            "onsetDateTime": _time(item["at"]),
        }
        if "abated" in item:
            condition["abatementDateTime"] = _time(item["abated"])
        return condition
    if "device" in item:
        return {
            "resourceType": "Observation", "id": rid, "status": item.get("status", "final"),
            "code": {"coding": [{"system": LOINC, "code": item.get("device_code", "107117-4"), "display": "Method of oxygen delivery"}]},
            "subject": subject, **_effective(item),
            "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": str(item["device"])}]},
        }
    if "med" in item:  # optional: rxnorm, dose_mg or dose [value, unit], volume_ml, rate_ml_h or rate [value, unit], route, reason
        concept: dict[str, Any] = {"text": item["med"]}
        if "rxnorm" in item:
            concept["coding"] = [{"system": RXNORM, "code": str(item["rxnorm"])}]
        resource: dict[str, Any] = {
            "resourceType": "MedicationAdministration", "id": rid, "status": item.get("status", "completed"),
            "medicationCodeableConcept": concept, "subject": subject, **_effective(item),
        }
        dosage: dict[str, Any] = {}
        if "dose_mg" in item:
            dosage["dose"] = _quantity(item["dose_mg"], "mg")
        if "dose" in item:  # [value, UCUM unit], e.g. [1, g]
            dosage["dose"] = _quantity(*item["dose"])
        if "rate" in item:  # a mass or volume rate: [value, UCUM unit], e.g. [10, mg/h]
            dosage["rateQuantity"] = _quantity(*item["rate"])
        if "route" in item:  # as text, the way uncoded EHR routes arrive
            dosage["route"] = {"text": item["route"]}
        if "volume_ml" in item:  # a fluid: the dose is a volume
            dosage["dose"] = _quantity(item["volume_ml"], "mL")
        if "rate_ml_h" in item:
            dosage["rateQuantity"] = _quantity(item["rate_ml_h"], "mL/h")
        if dosage:
            resource["dosage"] = dosage
        if "reason" in item:  # a text, or [system, code]
            reason = item["reason"]
            resource["reasonCode"] = [{"text": reason} if isinstance(reason, str) else {"coding": [{"system": reason[0], "code": reason[1]}]}]
        return resource
    raise ValueError(f"cannot read compact resource {dict(item)!r}")


def case_bundle(case: Case) -> dict[str, Any]:
    spec, defaults = case.spec, case.defaults
    patient = {"resourceType": "Patient", "id": PATIENT_ID, **spec.get("patient", defaults.get("patient", {}))}
    patient = {k: _time(v) if k == "birthDate" else v for k, v in patient.items()}
    items = list(defaults.get("resources", [])) + list(spec.get("resources", []))
    entries = [{"fullUrl": f"urn:uuid:{PATIENT_ID}", "resource": patient}]
    entries += [{"resource": compact_to_fhir(item, i)} for i, item in enumerate(items)]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def run_case(case: Case, rules_dir: Path | None = None) -> Outcome | None:
    """Run one case; None when it expected (and got) an input error. Raises CaseFailure on a difference."""
    settings = Settings(**case.spec.get("settings", {}))
    engine = _engine(settings, rules_dir)
    body = orjson.dumps(case_bundle(case))
    infusion = case.spec.get("infusion_date")
    options = RequestOptions(
        as_of=parse_instant_parameter(_time(case.spec["as_of"])),
        guideline=case.spec.get("guideline"),
        infusion=parse_instant_parameter(_time(infusion)) if infusion else None,
    )
    try:
        outcome = engine.evaluate_bundle_bytes(body, options)
    except CartoxError as exc:
        expected_error = case.spec["expect"].get("error")
        if expected_error and any(issue.code == expected_error for issue in exc.issues):
            return None
        raise CaseFailure(f"unexpected error: {exc}") from exc
    check(case, outcome, _graded_rule(engine, case.rule))
    return outcome


_ENGINES: dict[tuple[Any, ...], Engine] = {}


def _engine(settings: Settings, rules_dir: Path | None) -> Engine:
    key = (repr(settings), str(rules_dir))
    if key not in _ENGINES:
        from service.rules_engine.load import load_rule_set

        rules = load_rule_set(rules_dir, settings.canonical_base, settings.rule_overrides)
        _ENGINES[key] = Engine(settings, rules)
    return _ENGINES[key]


def _graded_rule(engine: Engine, rule: str) -> str:
    """A management rule's cases check the finding of the grading rule it applies to."""
    for management in engine.rules.management.values():
        if management.rule_id == rule:
            return management.applies_to
    return rule


def _finding(outcome: Outcome, rule: str):
    for finding in outcome.evaluation.findings:
        if finding.rule.rule_id == rule:
            return finding
    raise CaseFailure(f"no finding of rule {rule}")


def _grade(value: int | None) -> int | str:
    return "not-assessable" if value is None else value


def _expect_equal(what: str, actual: Any, expected: Any) -> None:
    if actual != expected:
        raise CaseFailure(f"{what}: expected {expected!r}, got {actual!r}")


def _actions(outcome: Outcome, rule: str):
    plan = next((p for p in outcome.evaluation.plans if p.finding.rule.rule_id == rule), None)
    return plan, (plan.actions if plan else ())


def check(case: Case, outcome: Outcome, graded_rule: str) -> None:
    """Compare an outcome with the case's `expect` block; raise CaseFailure naming the first difference."""
    expect = case.spec["expect"]

    def finding():  # a care-plan case names no single finding: looked up only by the checks that need it
        return _finding(outcome, graded_rule)

    checks: dict[str, Callable[[Any], None]] = {
        "current_grade": lambda v: _expect_equal("current grade", _grade(finding().current.grade), v),
        "max_grade": lambda v: _expect_equal("maximum grade", _grade(finding().maximum.grade), v),
        "onset_day": lambda v: _expect_equal("onset day", finding().onset_day, v),
        "atypical_onset": lambda v: _expect_equal("atypical onset", finding().atypical_onset, v),
        "incomplete": lambda v: _expect_equal("incomplete", finding().current.incomplete, v),
        "reasons_include": lambda v: _include("reasons", [r.criterion for r in finding().current.reasons], v),
        "evidence_includes": lambda v: _include("evidence", [f.source for f in _evidence(finding())], v),
        "evidence_excludes": lambda v: _exclude("evidence", [f.source for f in _evidence(finding(), everything=True)], v),
        "missing_includes": lambda v: _include_text("missing data", _missing(finding()), v),
        "notes_include": lambda v: _include_text("notes", _notes(finding()), v),
        "metrics": lambda v: _check_metrics(finding(), v),
        "thresholds_reached": lambda v: _expect_equal("thresholds reached", sorted(t.code for t in finding().reached), sorted(v)),
        "outcome": lambda v: _expect_equal("outcome", finding().outcome or "not-assessable", v),
        "listed_include": lambda v: _include_text("not counted", finding().listed, v),
        "input_notes_include": lambda v: _include("input notes", [n.code for n in outcome.timeline.notes], v),
        "day_zero_known": lambda v: _expect_equal("day 0 known", finding().day_zero_known, v),
        "cards": lambda v: _expect_equal("number of cards", len(_cards_of(outcome, finding())), v),
        "card_indicator": lambda v: _expect_equal("card indicator", next((c["indicator"] for c in _cards_of(outcome, finding())), None), v),
        "plan": lambda v: _check_plan(outcome, graded_rule, v),
        "grades": lambda v: [_expect_equal(f"{rule} current grade", _grade(_finding(outcome, rule).current.grade), grade)
                             for rule, grade in v.items()],
        "care_plan": lambda v: _check_care_plan(outcome, v),
        "card_order": lambda v: _expect_equal("card order", [c["source"]["topic"]["code"] for c in outcome.cards], v),
        "regimen": lambda v: _check_regimen(outcome, case.rule, v),
        "phases": lambda v: [_expect_equal(f"{name} grade", _grade(_phase(finding(), name).grade), grade) for name, grade in v.items()],
        "phase_reasons_include": lambda v: [_include_text(f"{name} reasons", _phase(finding(), name).why + _phase(finding(), name).missing, texts)
                                            for name, texts in v.items()],
    }
    for key, value in expect.items():
        if key == "error":
            raise CaseFailure(f"expected error {value}, but the evaluation succeeded")
        if key not in checks:
            raise CaseFailure(f"unknown expectation {key!r}")
        checks[key](value)


def _check_regimen(outcome: Outcome, rule: str, expected: Mapping[str, Any]) -> None:
    """A regimen finding: its state, dose, the states entered since day 0, warnings, notes and its card."""
    finding = _finding(outcome, rule)
    cards = _cards_of(outcome, finding)
    checks: dict[str, Callable[[Any], None]] = {
        "state": lambda v: _expect_equal("regimen state", finding.state, v),
        "dose_mg": lambda v: _expect_equal("prednisone dose (mg/day)", finding.dose_mg, v),
        "mg_per_kg": lambda v: _expect_equal("prednisone dose (mg/kg/day)", finding.mg_per_kg, v),
        "path": lambda v: _expect_equal("states entered", [step.state for step in finding.steps], v),
        "doses": lambda v: _expect_equal("doses of the steps", [step.dose_mg for step in finding.steps], v),
        "warnings": lambda v: _expect_equal("number of warnings", len(finding.warnings), v),
        "warnings_include": lambda v: _include_text("warnings", finding.warnings, v),
        "notes_include": lambda v: _include_text("notes", finding.notes, v),
        "cards": lambda v: _expect_equal("number of regimen cards", len(cards), v),
        "indicator": lambda v: _expect_equal("regimen card indicator", next((c["indicator"] for c in cards), None), v),
    }
    for key, value in expected.items():
        if key not in checks:
            raise CaseFailure(f"unknown regimen expectation {key!r}")
        checks[key](value)
def _phase(finding, name: str):
    """A phased finding's phase by name."""
    for phase in getattr(finding, "phases", ()):
        if phase.name == name:
            return phase
    raise CaseFailure(f"no phase {name!r} in the finding of {finding.rule.rule_id}")


def _evidence(finding, everything: bool = False) -> tuple[Any, ...]:
    """The facts a finding rests on: a grade's current window (and the maximum's, with `everything`), the
    doses a metrics finding counted, or the values a phased finding's grades rest on."""
    if finding.kind != "grading":
        return finding.evidence
    return finding.current.evidence + (finding.maximum.evidence if everything else ())


def _missing(finding) -> tuple[str, ...]:
    return finding.missing if finding.kind != "grading" else finding.current.missing


def _notes(finding) -> tuple[str, ...]:
    return finding.notes if finding.kind != "grading" else finding.current.notes + finding.maximum.notes


def _check_metrics(finding, expected: Mapping[str, Any]) -> None:
    """Each metric equals the expected number (to 0.01), or is absent (null: not computed)."""
    for name, value in expected.items():
        actual = finding.metrics[name].value
        if value is None or actual is None:
            _expect_equal(name, actual, value)
        elif abs(actual - value) > 0.01:
            raise CaseFailure(f"{name}: expected {value!r}, got {actual!r}")


def _cards_of(outcome: Outcome, finding) -> list[dict[str, Any]]:
    """The cards of the case's rule (a bundle may give cards of other rules too)."""
    return [card for card in outcome.cards if card["source"]["topic"]["code"] == finding.rule.assessment_code]


def _include(what: str, actual: list[str], expected: list[str]) -> None:
    missing = [item for item in expected if item not in actual]
    if missing:
        raise CaseFailure(f"{what} lack {missing}; have {actual}")


def _exclude(what: str, actual: list[str], unexpected: list[str]) -> None:
    found = [item for item in unexpected if item in actual]
    if found:
        raise CaseFailure(f"{what} must not include {found}")


def _include_text(what: str, actual: tuple[str, ...], fragments: list[str]) -> None:
    for fragment in fragments:
        if not any(fragment in text for text in actual):
            raise CaseFailure(f"{what} lack text {fragment!r}; have {list(actual)}")


def _check_plan(outcome: Outcome, graded_rule: str, expected: Mapping[str, Any] | None) -> None:
    plan, actions = _actions(outcome, graded_rule)
    if expected is None:
        _expect_equal("plan", plan is None, True)
        return
    if plan is None:
        raise CaseFailure("expected a plan, got none")
    _check_actions(plan, actions, expected)


def _check_care_plan(outcome: Outcome, expected: Mapping[str, Any] | None) -> None:
    """The patient's one plan, merged from every finding's (`drivers`: drug -> the finding it is for)."""
    combined = outcome.evaluation.care_plan
    if expected is None:
        _expect_equal("care plan", combined is None, True)
        return
    if combined is None:
        raise CaseFailure("expected a care plan, got none")
    rest = dict(expected)
    for key, value in (("title", rest.pop("title", None)), ("drivers", rest.pop("drivers", None))):
        if value is None:
            continue
        if key == "title":
            _expect_equal("care plan title", combined.title, value)
        else:
            drivers = {a.code: a.driver for a in combined.actions if a.kind == "drug"}
            for drug, driver in value.items():
                _expect_equal(f"{drug} is for", drivers.get(drug, "absent"), driver)
    drugs = [a.code for a in combined.actions if a.kind == "drug"]
    if len(drugs) != len(set(drugs)):
        raise CaseFailure(f"the same drug twice in the merged plan: {drugs}")
    _check_actions(combined, combined.actions, rest)


def _check_actions(plan: Any, actions: tuple[Any, ...], expected: Mapping[str, Any]) -> None:
    """A plan's (or the merged plan's) activities against a `plan` / `care_plan` expectation block."""
    codes = [a.code for a in actions]
    for key, value in expected.items():
        if key == "guideline":
            _expect_equal("plan guideline", plan.guideline_id, value)
        elif key == "actions_include":
            _include("plan actions", codes, value)
        elif key == "actions_exclude":
            _exclude("plan actions", codes, value)
        elif key == "doses_mg":
            doses = {a.code: a.dose_mg for a in actions if a.kind == "drug" and not a.do_not_perform}
            for drug, dose in value.items():
                _expect_equal(f"{drug} dose (mg)", doses.get(drug, "absent"), dose)
        elif key in ("give_now", "conditional", "blocked"):
            status = key.replace("_", "-")
            _include(f"{status} drugs", [a.code for a in actions if a.kind == "drug" and a.status == status], value)
        elif key == "not_give_now":
            _exclude("give-now drugs", [a.code for a in actions if a.kind == "drug" and a.status == "give-now"], value)
        elif key == "roles":
            for drug, role in value.items():
                _include(f"{drug} roles", [a.role for a in actions if a.code == drug], [role])
        elif key == "description_includes":
            texts = tuple(a.description for a in actions) + tuple(a.reason for a in actions if a.reason) + plan.notes
            texts += tuple(a.condition.status for a in actions if a.condition)
            _include_text("plan text", texts, value)
        elif key == "description_excludes":
            texts = tuple(a.description for a in actions) + tuple(a.reason for a in actions if a.reason) + plan.notes
            for fragment in value:
                if any(fragment in text for text in texts):
                    raise CaseFailure(f"plan text must not include {fragment!r}; have {list(texts)}")
        else:
            raise CaseFailure(f"unknown plan expectation {key!r}")
