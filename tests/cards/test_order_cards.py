"""The order-sign cards render as the patient-view cards do: valid CommonMark, plain summaries, and draft
texts from the EHR shown as literal text."""

from __future__ import annotations

from typing import Any

import orjson

UCUM = "http://unitsofmeasure.org"
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"


def _request(medication_text: str) -> dict[str, Any]:
    subject = {"reference": "Patient/r1"}
    observations = [
        {"resourceType": "Observation", "id": "ice", "status": "final", "subject": subject,
         "code": {"coding": [{"system": CARTOX_CS, "code": "ice-total"}]}, "effectiveDateTime": "2026-03-05T08:00:00+01:00", "valueInteger": 2},
        {"resourceType": "Observation", "id": "w", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "effectiveDateTime": "2026-03-05T08:00:00+01:00",
         "valueQuantity": {"value": 70, "unit": "kg", "system": UCUM, "code": "kg"}},
    ]
    cart = {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed", "subject": subject,
            "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"}

    def order(oid: str, text: str, dose: float, **extra: Any) -> dict[str, Any]:
        return {"resourceType": "MedicationRequest", "id": oid, "status": "draft", "intent": "order", "subject": subject,
                "medicationCodeableConcept": {"text": text, **extra},
                "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}},
                                       "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg", "system": UCUM, "code": "mg"}}]}]}

    unfinished = order("u", medication_text, 1)
    del unfinished["status"]
    drafts = [order("g", medication_text, 10, coding=[{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "3264"}]),
              order("t", "tocilizumab", 900), unfinished]
    searchset = lambda items: {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}  # noqa: E731
    return {"hook": "order-sign", "hookInstance": "5d3c1b2a-0f9e-4c8d-a7b6-e5f4d3c2b1a0",
            "context": {"userId": "Practitioner/x", "patientId": "r1", "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "r1", "birthDate": "1970-01-01"}, "observations": searchset(observations),
                         "medicationAdministrations": searchset([cart]), "conditions": None}}


def test_order_cards_render_and_escape_the_draft_text(client, assert_card_markdown, assert_plain_summary, hostile):
    response = client.post("/cds-services/car-t-glucocorticoid-order-check?asOf=2026-03-05T12:00:00%2B01:00",
                           data=orjson.dumps(_request(f"dexamethasone {hostile}")), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    cards = orjson.loads(response.get_data())["cards"]
    assert [card["indicator"] for card in cards] == ["critical", "warning", "info"]  # tocilizumab 900 mg; plan differs; unfinished
    for card in cards:
        assert_card_markdown(card["detail"], (hostile,))
        assert_plain_summary(card["summary"], (hostile,))
