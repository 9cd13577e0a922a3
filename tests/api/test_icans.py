"""ICANS end to end, as a new user would try it: the profiles' example instances (fhir_profiles/examples/)
posted to /evaluate, sent as CDS Hooks prefetch, and given to `cartox evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from service.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "fhir_profiles" / "examples"
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
INFUSION = {
    "resourceType": "MedicationAdministration", "id": "cart", "status": "completed", "subject": {"reference": "Patient/example"},
    "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00",
}
WEIGHT = {
    "resourceType": "Observation", "id": "weight", "status": "final", "subject": {"reference": "Patient/example"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "effectiveDateTime": "2026-03-05T08:00:00+01:00",
    "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
}


def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"Observation-example-{name}.json").read_text(encoding="utf-8"))


def _bundle(*examples: str, birth_date: str = "1970-05-01", extra: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "example", "birthDate": birth_date, "gender": "female"}
    resources = [patient, INFUSION, WEIGHT, *(_example(name) for name in examples), *extra]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _icans(cards: list[dict[str, Any]]) -> dict[str, Any]:
    (card,) = [c for c in cards if c["source"]["topic"]["code"] == "icans-grade-astct"]
    return card


def _codes(prediction: dict[str, Any]) -> dict[str, str]:
    return {c["system"]: c["code"] for c in prediction["outcome"]["coding"]}


@pytest.mark.parametrize("examples, as_of, birth_date, grade, icd", [
    (("ice-6", "loc-awakens-to-voice"), "2026-03-06T13:00:00+01:00", "1970-05-01", "grade-2", "G92.02"),
    # ICE 0 in an awake patient (global aphasia) is grade 3, never 4
    (("ice-0-awake", "loc-alert"), "2026-03-06T21:00:00+01:00", "1970-05-01", "grade-3", "G92.03"),
    # ICE 0 because unarousable is grade 4
    (("ice-0-unarousable", "loc-unarousable"), "2026-03-07T03:00:00+01:00", "1970-05-01", "grade-4", "G92.04"),
    (("seizure-rapidly-resolving", "loc-alert"), "2026-03-06T21:00:00+01:00", "1970-05-01", "grade-3", "G92.03"),
    (("motor-weakness",), "2026-03-07T11:00:00+01:00", "1970-05-01", "grade-4", "G92.04"),
    (("cerebral-edema-papilledema",), "2026-03-07T12:00:00+01:00", "1970-05-01", "grade-4", "G92.04"),
    # a child of 8: CAPD 12 (>= 9) is grade 3
    (("capd-12",), "2026-03-06T17:00:00+01:00", "2018-01-15", "grade-3", "G92.03"),
])
def test_examples_are_graded_through_evaluate(post_evaluate, examples, as_of, birth_date, grade, icd):
    response = post_evaluate(_bundle(*examples, birth_date=birth_date), asOf=as_of)
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    card = _icans(orjson.loads(response.get_data())["cards"])
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert _codes(ra["prediction"][0]) == {CARTOX_CS: grade, ICD10CM: icd}
    assert card["indicator"] == ("critical" if grade in ("grade-3", "grade-4") else "warning")
    assert f"ICANS {grade.replace('-', ' ')}" in card["summary"]


def test_ice_not_performed_alone_cannot_be_assessed(post_evaluate):
    response = post_evaluate(_bundle("ice-not-performed"), asOf="2026-03-07T09:00:00+01:00", _format="fhir")
    bundle = orjson.loads(response.get_data())
    (ra,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "RiskAssessment"
             and e["resource"]["code"]["coding"][0]["code"] == "icans-grade-astct"]
    assert _codes(ra["prediction"][0]) == {CARTOX_CS: "not-assessable"}


def test_grade_4_plan_through_evaluate(post_evaluate):
    """seed-S004 ICANS 4 (unarousable): methylprednisolone 1000 mg/day, no dexamethasone, transfer to the ICU."""
    response = post_evaluate(_bundle("ice-0-unarousable", "loc-unarousable"), asOf="2026-03-07T03:00:00+01:00", _format="fhir")
    bundle = orjson.loads(response.get_data())
    (care_plan,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan"]
    drugs = {a["detail"]["productCodeableConcept"]["text"]: a["detail"] for a in care_plan["activity"]
             if a["detail"]["kind"] == "MedicationRequest"}
    assert drugs["methylprednisolone"]["quantity"]["value"] == 1000
    assert "dexamethasone" not in drugs
    assert all(a["detail"]["reasonCode"][0]["text"] == "ICANS grade 4" for a in care_plan["activity"])


def test_cds_hooks_service_reads_a_seizure_condition(client):
    """A seizure recorded as a SNOMED CT Condition (prefetch `conditions`) grades 3 and brings the seizure items."""
    bundle = _bundle("ice-6", "loc-alert")
    resources = [e["resource"] for e in bundle["entry"]]
    seizure = {"resourceType": "Condition", "id": "sz", "subject": {"reference": "Patient/example"},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91175000", "display": "Seizure"}]},
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
               "onsetDateTime": "2026-03-06T19:00:00+01:00"}

    def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}

    request = {
        "hook": "patient-view", "hookInstance": "7a1d0a52-54b6-4c48-9d3c-6f0f2e2b1a01", "fhirServer": "https://ehr.example.org/fhir",
        "context": {"userId": "Practitioner/p", "patientId": "example"},
        "prefetch": {
            "patient": resources[0],
            "observations": searchset([r for r in resources if r["resourceType"] == "Observation"]),
            "medicationAdministrations": searchset([INFUSION]),
            "conditions": searchset([seizure]),
        },
    }
    response = client.post("/cds-services/car-t-toxicity?asOf=2026-03-06T21:00:00%2B01:00", data=orjson.dumps(request),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    cards = orjson.loads(response.get_data())["cards"]
    card = _icans(cards)
    assert card is cards[0] and card["indicator"] == "critical"
    ra, care_plan = (a["resource"] for a in card["suggestions"][0]["actions"])
    assert {"reference": "Condition/sz"} in ra["basis"]
    products = {a["detail"].get("productCodeableConcept", {}).get("text") for a in care_plan["activity"]}
    assert {"dexamethasone", "clonazepam", "levetiracetam"} <= products


def test_cartox_evaluate_grades_the_examples(tmp_path):
    path = tmp_path / "icans.json"
    path.write_bytes(orjson.dumps(_bundle("ice-0-awake", "loc-alert")))
    result = CliRunner().invoke(main, ["evaluate", str(path), "--as-of", "2026-03-06T21:00:00+01:00"])
    assert result.exit_code == 0, result.output
    card = _icans(json.loads(result.output)["cards"])
    assert card["summary"].startswith("ICANS grade 3 (ASTCT)")
    assert card["indicator"] == "critical"
