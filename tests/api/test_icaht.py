"""ICAHT (EHA/EBMT 2023) end to end, as a new user would try it: an ANC series from day 0 to day 45 (severe
neutropenia days 1-16 with 7 days at or below 0.1, recovered from day 17; two values at or below 1.0 after day
30, sent in cells/uL) through POST /evaluate, the CDS Hooks service and `cartox evaluate`."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import orjson
from click.testing import CliRunner

from service.cli import main

UCUM = "http://unitsofmeasure.org"
AS_OF = "2026-04-16T12:00:00+02:00"  # day 45 in summer time: days count in the infusion's offset, times show in the data's
DAY_0 = date(2026, 3, 2)
CS = "http://cartox.example.org/fhir/CodeSystem/cartox"


def _anc(day: int, value: float, unit: str = "10*3/uL") -> dict[str, Any]:
    moment = f"{DAY_0 + timedelta(days=day)}T{'12' if day == 0 else '07'}:30:00+01:00"
    return {"resourceType": "Observation", "id": f"anc{day}", "status": "final", "subject": {"reference": "Patient/ic"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]}, "effectiveDateTime": moment,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def _series() -> list[dict[str, Any]]:
    values = {0: 1.2, **{d: 0.3 for d in range(1, 17)}, **{d: 0.05 for d in range(4, 11)}, **{d: 1.8 for d in range(17, 21)},
              24: 2.1, 28: 2.3}
    late = [_anc(-2, 0.2), _anc(35, 800, "/uL"), _anc(42, 900, "/uL"), _anc(44, 1600, "/uL")]  # day -2: before day 0
    return [_anc(day, value) for day, value in values.items()] + late


def _bundle() -> dict[str, Any]:
    resources = [
        {"resourceType": "Patient", "id": "ic", "birthDate": "1958-09-12"},
        {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed", "subject": {"reference": "Patient/ic"},
         "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"},
        *_series(),
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _icaht(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (ra,) = [r for r in resources if r["resourceType"] == "RiskAssessment" and r["code"]["coding"][0]["code"] == "icaht-grade"]
    return ra


def _check(ra: dict[str, Any]) -> None:
    early, late = ra["prediction"]
    assert [c["code"] for c in early["outcome"]["coding"] if c["system"] == CS] == ["grade-3"]
    assert early["rationale"] == "ANC ≤ 0.5 x10^9/L for 16 days (day 1-16); ANC ≤ 0.1 x10^9/L for 7 days (day 4-10)"
    assert early["whenPeriod"] == {"start": "2026-03-02T10:00:00+01:00", "end": "2026-04-02T00:00:00+01:00"}
    assert [c["code"] for c in late["outcome"]["coding"] if c["system"] == CS] == ["grade-2"]
    assert late["rationale"] == "ANC ≤ 1 x10^9/L on 2 values (day 35, 42)"
    assert late["whenPeriod"] == {"start": "2026-04-02T00:00:00+01:00", "end": "2026-04-16T11:00:00+01:00"}
    for prediction in (early, late):
        assert {"url": "http://cartox.example.org/fhir/StructureDefinition/grading-scale", "valueCode": "EHA-EBMT-2023"} in prediction["extension"]
    basis = {b["reference"] for b in ra["basis"]}
    assert {f"Observation/anc{d}" for d in range(1, 17)} | {"Observation/anc35", "Observation/anc42"} == basis
    assert ra["meta"]["profile"] == ["http://cartox.example.org/fhir/StructureDefinition/cartox-phased-risk-assessment"]


def test_anc_series_through_evaluate(post_evaluate):
    response = post_evaluate(_bundle(), asOf=AS_OF, _format="fhir")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    _check(_icaht([e["resource"] for e in orjson.loads(response.get_data())["entry"]]))


def test_anc_series_card_through_the_cds_hooks_service(client):
    bundle = _bundle()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])

    def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}

    request = {"hook": "patient-view", "hookInstance": "5b1e0c6a-2d4f-4a8e-9c3b-7f6e5d4c3b2a",
               "context": {"userId": "Practitioner/x", "patientId": "ic"},
               "prefetch": {"patient": by_type["Patient"][0], "observations": searchset(by_type["Observation"]),
                            "medicationAdministrations": searchset(by_type["MedicationAdministration"]), "conditions": None}}
    response = client.post("/cds-services/car-t-toxicity?asOf=" + AS_OF.replace("+", "%2B"), data=orjson.dumps(request),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    (card,) = [c for c in orjson.loads(response.get_data())["cards"] if c["source"]["topic"]["code"] == "icaht-grade"]
    assert card["summary"] == "ICAHT early grade 3: ANC ≤ 0.5 x10^9/L for 16 days (day 1-16)"
    assert card["indicator"] == "critical"
    detail = card["detail"].replace("\\", "")
    assert "Late (from day 31): grade 2 — ANC ≤ 1 x10^9/L on 2 values (day 35, 42)" in detail
    assert "Observation/anc1" in detail and "Observation/anc-2" not in detail
    _check(card["suggestions"][0]["actions"][0]["resource"])


def test_anc_series_through_cartox_evaluate(tmp_path):
    path = tmp_path / "icaht.json"
    path.write_bytes(orjson.dumps(_bundle()))
    result = CliRunner().invoke(main, ["evaluate", str(path), "--as-of", AS_OF, "--format", "fhir"])
    assert result.exit_code == 0, result.output
    _check(_icaht([e["resource"] for e in json.loads(result.output)["entry"]]))


def test_before_day_31_the_late_phase_is_not_yet_reached(post_evaluate):
    response = post_evaluate(_bundle(), asOf="2026-03-20T12:00:00+01:00", _format="fhir")
    early, late = _icaht([e["resource"] for e in orjson.loads(response.get_data())["entry"]])["prediction"]
    assert early["outcome"]["coding"][0]["code"] == "grade-3"
    assert early["rationale"].endswith("early phase still running until day 30: the grade so far")
    assert late["outcome"]["coding"][0]["code"] == "not-assessable"
    assert late["rationale"] == "Cannot assess: not yet reached (starts on day 31)"
    assert late["whenPeriod"] == {"start": "2026-04-02T00:00:00+01:00"}
