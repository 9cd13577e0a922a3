"""The PHT prednisone regimen followed from day 28 to day 100 as a new user would: the reference course of the
issue (rules/prednisone_pht.cases.yaml, the case that runs to day 82, extended here to day 100) posted to
/evaluate at each step, sent to the CDS Hooks service as prefetch, and given to `cartox evaluate`.

The whole record is sent each time with an earlier evaluation time: what was recorded later is ignored (the
replay from day 0 sees only the record up to asOf), so each step checks the state that held on that day."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from service.cli import main
from service.resources import rules_dir
from service.rule_cases.cases import case_bundle, load_cases

CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"
DAY_0 = date(2026, 1, 5)
COURSE = "reference-day-82-re-treatment-full-dose"


def _at(day: int, clock: str = "14:00") -> str:
    return f"{(DAY_0 + timedelta(days=day)).isoformat()}T{clock}:00+01:00"


@pytest.fixture(scope="module")
def course() -> dict[str, Any]:
    """The reference course to day 82, then daily prednisone 40 mg and counts that hold to day 100."""
    directory = rules_dir()
    (case,) = [c for c in load_cases(directory / "prednisone_pht.cases.yaml", directory / "schema") if c.name == COURSE]
    bundle = case_bundle(case)
    extra = [{"resourceType": "MedicationAdministration", "id": f"pred{day}", "status": "completed",
              "subject": {"reference": "Patient/case-patient"}, "medicationCodeableConcept": {"text": "prednisone"},
              "effectiveDateTime": _at(day, "09:00"), "dosage": {"dose": {"value": 40, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}}
             for day in range(83, 101)]
    bundle["entry"] += [{"resource": r} for r in extra]
    return bundle


def _regimen(cards: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((c for c in cards if c["source"]["topic"]["code"] == "pht-status"), None)


def _resource(bundle: dict[str, Any], kind: str, code: str | None = None) -> dict[str, Any]:
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == kind and (code is None or resource["code"]["coding"][0]["code"] == code):
            return resource
    raise AssertionError(f"no {kind} {code or ''}")


def _prednisone(care_plan: dict[str, Any]) -> dict[str, Any]:
    (activity,) = [a for a in care_plan["activity"] if a["detail"].get("productCodeableConcept", {}).get("text") == "prednisone"]
    return activity["detail"]


# day, state, prednisone mg/day (None: no prednisone in the plan), card indicator (None: no card)
STEPS = [
    (27, "monitor", None, None),
    (28, "candidate", 40, "warning"),
    (31, "prednisone-full", 40, "info"),
    (38, "prednisone-full", 40, "info"),
    (45, "prednisone-half", 20, "info"),
    (52, "taper", 10, "info"),
    (59, "taper", 5, "info"),
    (66, "off", None, "info"),
    (73, "off", None, "info"),
    (80, "recurrence", 40, "warning"),
    (82, "prednisone-full", 40, "info"),
    (100, "prednisone-full", 40, "info"),
]


@pytest.mark.parametrize("day, state, dose, indicator", STEPS)
def test_state_and_dose_at_every_step_through_evaluate(post_evaluate, course, day, state, dose, indicator):
    response = post_evaluate(course, asOf=_at(day), _format="fhir")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    bundle = orjson.loads(response.get_data())
    ra = _resource(bundle, "RiskAssessment", "pht-status")
    (prediction,) = ra["prediction"]
    assert prediction["outcome"]["coding"] == [{"system": CARTOX_CS, "code": state, "display": prediction["outcome"]["coding"][0]["display"]}]
    assert ra["meta"]["profile"] == ["http://cartox.example.org/fhir/StructureDefinition/cartox-regimen-status"]
    plans = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan"]
    if dose is None:
        assert not any(a["detail"].get("productCodeableConcept", {}).get("text") == "prednisone" for p in plans for a in p["activity"])
    else:
        (care_plan,) = plans
        detail = _prednisone(care_plan)
        assert detail["dailyAmount"] == {"value": dose, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
        assert detail["quantity"]["value"] == dose  # once daily: the dose is the daily amount
        assert detail["scheduledTiming"]["repeat"] == {"frequency": 1, "period": 24.0, "periodUnit": "h"}
        assert detail["status"] == "not-started"  # give now
        codes = {a["detail"]["code"]["coding"][0]["code"] for a in care_plan["activity"] if "code" in a["detail"]}
        assert {"monitor-glucose", "monitor-blood-pressure", "prophylaxis-calcium", "prophylaxis-gastric", "prophylaxis-antifungal"} <= codes
    cards = orjson.loads(post_evaluate(course, asOf=_at(day)).get_data())["cards"]
    card = _regimen(cards)
    assert (card["indicator"] if card else None) == indicator
    if card and dose:
        assert f"{dose:g} mg/day" in card["summary"] + card["detail"]


def test_the_course_is_in_the_risk_assessment_notes(post_evaluate, course):
    bundle = orjson.loads(post_evaluate(course, asOf=_at(82), _format="fhir").get_data())
    notes = [n["text"] for n in _resource(bundle, "RiskAssessment", "pht-status")["note"]]
    assert any(n.startswith("Day 28: Prednisone candidate (40 mg/day)") for n in notes)
    assert any(n.startswith("Day 45: Prednisone, half dose (20 mg/day)") for n in notes)
    assert any(n.startswith("Day 66: Prednisone stopped") for n in notes)
    # the record: 40 mg daily from day 31 (day 45's morning dose before the half dose was planned), then 20, 10, 5
    assert [n for n in notes if n.startswith("Prednisone given")] == [
        "Prednisone given day 31-45: 40 mg/day", "Prednisone given day 46-52: 20 mg/day", "Prednisone given day 53-59: 10 mg/day",
        "Prednisone given day 60-66: 5 mg/day", "Prednisone given day 81-82: 40 mg/day"]


def test_cds_hooks_service_follows_the_same_course(client, course):
    resources = [e["resource"] for e in course["entry"]]

    def searchset(kind: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources if r["resourceType"] == kind]}

    request = {
        "hook": "patient-view", "hookInstance": "0b8f3c8e-8d0e-4d55-9a57-0d6f5c7e2a10", "fhirServer": "https://ehr.example.org/fhir",
        "context": {"userId": "Practitioner/p", "patientId": "case-patient"},
        "prefetch": {"patient": resources[0], "observations": searchset("Observation"),
                     "medicationAdministrations": searchset("MedicationAdministration"), "conditions": searchset("Condition")},
    }
    response = client.post(f"/cds-services/car-t-toxicity?asOf={_at(45).replace('+', '%2B')}", data=orjson.dumps(request),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    card = _regimen(orjson.loads(response.get_data())["cards"])
    assert card["summary"] == "PHT prednisone regimen: counts improved, half dose 20 mg/day since day 45"
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "prednisone-half"


def test_cartox_evaluate_follows_the_same_course(tmp_path, course):
    path = tmp_path / "course.json"
    path.write_bytes(orjson.dumps(course))
    result = CliRunner().invoke(main, ["evaluate", str(path), "--as-of", _at(80), "--format", "fhir"])
    assert result.exit_code == 0, result.output
    bundle = json.loads(result.output)
    assert _resource(bundle, "RiskAssessment", "pht-status")["prediction"][0]["outcome"]["coding"][0]["code"] == "recurrence"
    assert _prednisone(_resource(bundle, "CarePlan"))["dailyAmount"]["value"] == 40


def test_every_code_the_regimen_emits_is_defined(post_evaluate, course):
    codesystem = json.loads((Path(__file__).resolve().parents[2] / "fhir_profiles" / "CodeSystem-cartox.json").read_text(encoding="utf-8"))
    defined = {c["code"] for c in codesystem["concept"]}
    for day, *_ in STEPS:
        bundle = orjson.loads(post_evaluate(course, asOf=_at(day), _format="fhir").get_data())
        for entry in bundle["entry"]:
            resource = entry["resource"]
            codings = []
            if resource["resourceType"] == "RiskAssessment":
                codings += resource["code"]["coding"] + [c for p in resource["prediction"] for c in p["outcome"]["coding"]]
            if resource["resourceType"] == "CarePlan":
                codings += [c for a in resource["activity"] for c in a["detail"].get("code", {}).get("coding", [])]
            assert {c["code"] for c in codings if c["system"] == CARTOX_CS} <= defined


# The benchmark's 100-day patient (bench/generate.py, variant pht100): the team follows the regimen, so every step
# is recognised on its day and no deviation is reported.
BENCH_STEPS = [(20, "monitor", None), (26, "candidate", 40), (31, "prednisone-full", 40), (44, "prednisone-half", 20),
               (51, "taper", 10), (58, "taper", 5), (65, "off", None), (77, "recurrence", 40), (78, "prednisone-full", 40),
               (95, "prednisone-half", 20), (100, "prednisone-half", 20)]


@pytest.fixture(scope="module")
def pht100(generator) -> bytes:
    return orjson.dumps(generator.generate_bundle(7, "pht100"))


@pytest.mark.parametrize("day, state, dose", BENCH_STEPS)
def test_the_benchmark_100_day_patient_follows_the_regimen(post_evaluate, pht100, day, state, dose):
    as_of = f"{(date(2026, 3, 2) + timedelta(days=day)).isoformat()}T12:00:00+01:00"
    bundle = orjson.loads(post_evaluate(pht100, asOf=as_of, _format="fhir").get_data())
    ra = _resource(bundle, "RiskAssessment", "pht-status")
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == state
    assert not any(n["text"].startswith("prednisone given") for n in ra["note"])  # no deviation from the plan
    if dose is not None:
        assert _prednisone(_resource(bundle, "CarePlan"))["dailyAmount"]["value"] == dose


def test_cds_hooks_reads_an_exclusion_from_the_optional_procedures_prefetch(client, course):
    """A stem cell transplant on day 70 sent as the optional `procedures` prefetch: excluded, no prednisone."""
    resources = [e["resource"] for e in course["entry"]]
    transplant = {"resourceType": "Procedure", "id": "hsct", "status": "completed", "subject": {"reference": "Patient/case-patient"},
                  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "234336002"}]}, "performedDateTime": _at(70, "10:00")}

    def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}

    request = {
        "hook": "patient-view", "hookInstance": "5f1c2a9e-3b7d-4c1e-8f2a-6d9b0e4c7a21", "fhirServer": "https://ehr.example.org/fhir",
        "context": {"userId": "Practitioner/p", "patientId": "case-patient"},
        "prefetch": {"patient": resources[0], "conditions": searchset([]), "procedures": searchset([transplant]),
                     "observations": searchset([r for r in resources if r["resourceType"] == "Observation"]),
                     "medicationAdministrations": searchset([r for r in resources if r["resourceType"] == "MedicationAdministration"])},
    }
    response = client.post(f"/cds-services/car-t-toxicity?asOf={_at(80).replace('+', '%2B')}", data=orjson.dumps(request),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    card = _regimen(orjson.loads(response.get_data())["cards"])
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "excluded"
    assert {"reference": "Procedure/hsct"} in ra["basis"]
    assert "day 70" in card["summary"]
