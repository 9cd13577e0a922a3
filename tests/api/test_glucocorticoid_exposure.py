"""Glucocorticoid exposure end to end, as a new user would try it: a mixed regimen (dexamethasone q6h, then
methylprednisolone; an entered-in-error and a not-done dose ignored) and a child dosed by weight, through
POST /evaluate, the CDS Hooks service and `cartox evaluate`."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from service.cli import main

UCUM = "http://unitsofmeasure.org"
AS_OF = "2026-03-08T12:00:00+01:00"
SD = "http://cartox.example.org/fhir/StructureDefinition/"


def _given(mid: str, medication: str, at: str, dose: float, status: str = "completed", unit: str = "mg") -> dict[str, Any]:
    return {"resourceType": "MedicationAdministration", "id": mid, "status": status, "subject": {"reference": "Patient/gc"},
            "medicationCodeableConcept": {"text": medication}, "effectiveDateTime": at,
            "dosage": {"dose": {"value": dose, "unit": unit, "system": UCUM, "code": unit}, "route": {"text": "IV"}}}


def _bundle(birth_date: str, weight: float, doses: list[dict[str, Any]]) -> dict[str, Any]:
    resources = [
        {"resourceType": "Patient", "id": "gc", "birthDate": birth_date},
        {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed", "subject": {"reference": "Patient/gc"},
         "medicationCodeableConcept": {"text": "tisagenlecleucel"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"},
        {"resourceType": "Observation", "id": "w", "status": "final", "subject": {"reference": "Patient/gc"},
         "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "effectiveDateTime": "2026-03-07T08:00:00+01:00",
         "valueQuantity": {"value": weight, "unit": "kg", "system": UCUM, "code": "kg"}},
        *doses,
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


MIXED = [  # dexamethasone 10 mg q6h on day 3 (40 mg), methylprednisolone 1 g on day 5 (187.5 mg dexamethasone-equivalent)
    *(_given(f"dex{i}", "Dexamethasone sodium phosphate", f"2026-03-05T{6 * i:02d}:00:00+01:00", 10) for i in range(4)),
    _given("eie", "dexamethasone", "2026-03-05T03:00:00+01:00", 20, status="entered-in-error"),
    _given("nd", "dexamethasone", "2026-03-06T06:00:00+01:00", 20, status="not-done"),
    _given("mp", "Solu-Medrol", "2026-03-07T09:00:00+01:00", 1, unit="g"),
]
CHILD = [_given(f"mp{i}", "methylprednisolone", f"2026-03-0{4 + i}T08:00:00+01:00", 50) for i in range(4)]  # 200 mg / 20 kg


def _extensions(ra: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for extension in ra["extension"]:
        name = extension["url"].removeprefix(SD)
        value = next(v for k, v in extension.items() if k.startswith("value"))
        values.setdefault(name, []).append(value)
    return values


def _exposure(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (ra,) = [r for r in resources if r["resourceType"] == "RiskAssessment" and r["code"]["coding"][0]["code"] == "glucocorticoid-exposure"]
    return ra


def _check_mixed(ra: dict[str, Any]) -> None:
    values = _extensions(ra)
    assert values["cumulative-dexamethasone-equivalent"] == [{"value": 227.5, "unit": "mg", "system": UCUM, "code": "mg"}]
    assert values["cumulative-methylprednisolone-equivalent-per-kg"][0]["value"] == pytest.approx(1213.333 / 80, abs=0.01)
    assert values["exposure-days"] == [2] and values["first-dose-day"] == [3]
    assert sorted(c["code"] for c in values["glucocorticoid-threshold"]) == ["s000-cumulative-high", "s000-early"]
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "high-exposure"
    basis = {b["reference"] for b in ra["basis"]}
    assert basis == {"MedicationAdministration/dex0", "MedicationAdministration/dex1", "MedicationAdministration/dex2",
                     "MedicationAdministration/dex3", "MedicationAdministration/mp"}
    assert ra["meta"]["profile"] == [SD + "cartox-glucocorticoid-exposure"]


def test_mixed_regimen_through_evaluate(post_evaluate):
    response = post_evaluate(_bundle("1960-05-01", 80, MIXED), asOf=AS_OF, _format="fhir")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    _check_mixed(_exposure([e["resource"] for e in orjson.loads(response.get_data())["entry"]]))


def test_mixed_regimen_through_the_cds_hooks_service(client):
    bundle = _bundle("1960-05-01", 80, MIXED)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])

    def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}

    request = {"hook": "patient-view", "hookInstance": "3f0d5a1e-9b7c-4d2a-8e6f-1a2b3c4d5e6f",
               "context": {"userId": "Practitioner/x", "patientId": "gc"},
               "prefetch": {"patient": by_type["Patient"][0], "observations": searchset(by_type["Observation"]),
                            "medicationAdministrations": searchset(by_type["MedicationAdministration"]), "conditions": None}}
    response = client.post("/cds-services/car-t-toxicity?asOf=" + AS_OF.replace("+", "%2B"), data=orjson.dumps(request),
                           content_type="application/json")
    cards = orjson.loads(response.get_data())["cards"]
    (card,) = [c for c in cards if c["source"]["topic"]["code"] == "glucocorticoid-exposure"]
    assert card["summary"].startswith("Glucocorticoids since day 0: 227.5 mg dexamethasone-equivalent, 2 days with a dose")
    assert card["indicator"] == "info"  # more than 35 mg was first reached on 5 Mar 18:00, more than 24 h ago
    assert "not causation" in card["detail"].replace("\\", "")
    _check_mixed(card["suggestions"][0]["actions"][0]["resource"])


def test_mixed_regimen_through_cartox_evaluate(tmp_path):
    path = tmp_path / "gc.json"
    path.write_bytes(orjson.dumps(_bundle("1960-05-01", 80, MIXED)))
    result = CliRunner().invoke(main, ["evaluate", str(path), "--as-of", AS_OF, "--format", "fhir"])
    assert result.exit_code == 0, result.output
    _check_mixed(_exposure([e["resource"] for e in json.loads(result.output)["entry"]]))


def test_child_dosed_by_weight(post_evaluate):
    response = post_evaluate(_bundle("2017-06-01", 20, CHILD), asOf=AS_OF, _format="fhir")
    ra = _exposure([e["resource"] for e in orjson.loads(response.get_data())["entry"]])
    values = _extensions(ra)
    assert values["cumulative-methylprednisolone-equivalent-per-kg"][0]["value"] == 10  # 200 mg / 20 kg
    assert values["cumulative-dexamethasone-equivalent"][0]["value"] == 37.5
    assert "s002-pediatric-high" in {c["code"] for c in values["glucocorticoid-threshold"]}
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "high-exposure"
