"""CDS Hooks order-sign service car-t-glucocorticoid-order-check: glucocorticoid orders projected onto the
exposure and compared with the plan, tocilizumab orders against the label, sloppy drafts tolerated."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest

SERVICE = "/cds-services/car-t-glucocorticoid-order-check"
AS_OF = "2026-03-05T12:00:00+01:00"  # day 3 after the infusion of 2 March 10:00
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
PATIENT = "Patient/p9"


def _obs(oid: str, system: str, code: str, *, value: float | None = None, unit: str | None = None, answer: str | None = None,
         at: str = "2026-03-05T08:00:00+01:00") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": PATIENT},
                                "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": at}
    if answer is not None:
        resource["valueCodeableConcept"] = {"coding": [{"system": CARTOX_CS, "code": answer}]}
    elif unit is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    else:
        resource["valueInteger"] = value
    return resource


def _given(mid: str, medication: str, at: str, dose_mg: float | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "MedicationAdministration", "id": mid, "status": "completed",
                                "subject": {"reference": PATIENT}, "medicationCodeableConcept": {"text": medication},
                                "effectiveDateTime": at}
    if dose_mg is not None:
        resource["dosage"] = {"dose": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}
    return resource


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _prefetch(*, temp: float = 37.0, ice: int = 10, weight: float | None = 70, birth_date: str = "1970-01-01",
              given: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    observations = [_obs("t1", "http://loinc.org", "8310-5", value=temp, unit="Cel"),
                    _obs("ice", CARTOX_CS, "ice-total", value=ice), _obs("loc", CARTOX_CS, "loc-astct", answer="alert")]
    if weight is not None:
        observations.append(_obs("w", "http://loinc.org", "29463-7", value=weight, unit="kg"))
    meds = [_given("cart", "axicabtagene ciloleucel", "2026-03-02T10:00:00+01:00"), *given]
    return {"patient": {"resourceType": "Patient", "id": "p9", "birthDate": birth_date},
            "observations": _searchset(observations), "medicationAdministrations": _searchset(meds), "conditions": None}


def _order(oid: str = "o1", medication: str = "dexamethasone", dose: float | None = 10, *, repeat: dict[str, Any] | None = None,
           reason: str | None = None, **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "MedicationRequest", "id": oid, "status": "draft", "intent": "order",
                                "subject": {"reference": PATIENT}, "medicationCodeableConcept": {"text": medication}}
    instruction: dict[str, Any] = {}
    if dose is not None:
        instruction["doseAndRate"] = [{"doseQuantity": {"value": dose, "unit": "mg", "system": UCUM, "code": "mg"}}]
    if repeat is not None:
        instruction["timing"] = {"repeat": repeat}
    if instruction:
        resource["dosageInstruction"] = [instruction]
    if reason is not None:
        resource["reasonCode"] = [{"text": reason}]
    resource.update(fields)
    return resource


def _request(prefetch: dict[str, Any], *orders: dict[str, Any], bundle_type: str | None = "collection") -> dict[str, Any]:
    drafts: dict[str, Any] = {"resourceType": "Bundle", "entry": [{"resource": order} for order in orders]}
    if bundle_type is not None:
        drafts["type"] = bundle_type
    return {"hook": "order-sign", "hookInstance": "a0c56c52-5a7b-4a6e-9d2b-3f6c1c9f0e11", "fhirServer": "https://ehr.example.org/fhir",
            "context": {"userId": "Practitioner/prn-1", "patientId": "p9", "draftOrders": drafts}, "prefetch": prefetch}


@pytest.fixture
def sign(client):
    def post(body: dict[str, Any] | bytes, as_of: str = AS_OF):
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return client.post(f"{SERVICE}?asOf={as_of.replace('+', '%2B')}", data=data, content_type="application/json")

    return post


def _cards(response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)[:600]
    document = orjson.loads(response.get_data())
    assert list(document) == ["cards"]
    for card in document["cards"]:
        assert 0 < len(card["summary"]) < 140 and card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["topic"] == {"system": CARTOX_CS, "code": "order-check", "display": card["source"]["topic"]["display"]}
    return document["cards"]


def _text(card: dict[str, Any]) -> str:
    return card["detail"].replace("\\", "")


# --- discovery ----------------------------------------------------------------------------------------------

def test_discovery_lists_the_order_sign_service_with_the_same_prefetch(client):
    services = {s["id"]: s for s in orjson.loads(client.get("/cds-services").get_data())["services"]}
    order_check, toxicity = services["car-t-glucocorticoid-order-check"], services["car-t-toxicity"]
    assert order_check["hook"] == "order-sign"
    assert order_check["prefetch"] == toxicity["prefetch"]
    assert order_check["title"] and order_check["description"]


# --- glucocorticoid orders: projection over each timing shape ---------------------------------------------------

@pytest.mark.parametrize(("repeat", "doses", "until"), [
    pytest.param({"frequency": 1, "period": 6, "periodUnit": "h", "boundsDuration": {"value": 2, "unit": "d", "system": UCUM, "code": "d"}},
                 8, "7 Mar 06:00", id="q6h for 2 days (boundsDuration)"),
    pytest.param({"frequency": 4, "period": 1, "periodUnit": "d", "boundsDuration": {"value": 24, "unit": "h", "system": UCUM, "code": "h"}},
                 4, "6 Mar 06:00", id="4 a day for 24 h"),
    pytest.param({"frequency": 1, "period": 12, "periodUnit": "h",
                  "boundsPeriod": {"start": "2026-03-05T14:00:00+01:00", "end": "2026-03-06T14:00:00+01:00"}},
                 2, "6 Mar 02:00", id="q12h within a boundsPeriod starting later"),
    pytest.param({"frequency": 1, "period": 8, "periodUnit": "h", "count": 3}, 3, "6 Mar 04:00", id="q8h, count 3"),
    pytest.param({"frequency": 1, "period": 6, "periodUnit": "h"}, 4, "6 Mar 06:00", id="q6h without a bound: the 24 h horizon"),
    pytest.param({"frequency": 2, "period": 1, "periodUnit": "d"}, 2, "6 Mar 00:00", id="twice a day without a bound"),
    pytest.param(None, 1, "12:00", id="a single dose (no timing)"),
])
def test_projection_over_each_timing_shape(sign, repeat, doses, until):
    """CRS grade 1 (38.5 °C) makes an order without a reason one for CRS; the plan (CRS 1) has no glucocorticoid."""
    cards = _cards(sign(_request(_prefetch(temp=38.5), _order(repeat=repeat))))
    (card,) = cards
    assert f"Projected: {doses} dose(s) of 10 mg until {until}" in _text(card)
    assert "the plan proposes no glucocorticoid now (CRS grade 1" in _text(card)
    assert "suggestions" not in card


def test_an_order_that_crosses_35_mg_warns_with_the_literature(sign):
    """30 mg dexamethasone so far; one more 10 mg dose makes 40 mg: the S000 high-dose group."""
    given = tuple(_given(f"d{i}", "dexamethasone", f"2026-03-04T{8 + 6 * i:02d}:00:00+01:00", 10) for i in range(3))
    (card,) = _cards(sign(_request(_prefetch(given=given), _order())))  # no reason, no CRS/ICANS now: toxicity-era use
    assert card["indicator"] == "warning"
    assert "signing it would reach more than 35 mg (S000)" in card["summary"]
    assert "If signed: Glucocorticoids since day 0: 40 mg dexamethasone-equivalent" in _text(card)
    assert "not associated with response or survival in myeloma" not in card["summary"]
    assert "What the literature found" in _text(card) and "Strati 2021" in _text(card)


def test_an_order_for_another_indication_gets_no_card(sign):
    """An antiemetic is not toxicity-era use: the thresholds do not read it and it is not compared with the plan."""
    assert _cards(sign(_request(_prefetch(), _order(dose=4, reason="antiemetic", repeat={"frequency": 1, "period": 8, "periodUnit": "h", "count": 1})),
                       as_of="2026-03-20T12:00:00+01:00")) == []


# --- glucocorticoid orders for CRS/ICANS: compared with the plan ----------------------------------------------

def test_an_order_for_icans_that_differs_from_the_plan_gets_an_update(sign):
    """ICANS grade 3 (ICE 2, no CRS): seed-S004 gives dexamethasone 20 mg IV every 6 h; the draft is 10 mg q6h."""
    draft = _order(repeat={"frequency": 1, "period": 6, "periodUnit": "h", "boundsDuration": {"value": 3, "unit": "d", "system": UCUM, "code": "d"}})
    cards = _cards(sign(_request(_prefetch(ice=2), draft)))
    (card,) = cards
    assert card["indicator"] == "warning"
    assert card["summary"] == "dexamethasone differs from the plan: dexamethasone 20 mg IV every 6 h (ICANS grade 3)"
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one"
    (action,) = suggestion["actions"]
    assert action["type"] == "update" and action["description"]
    corrected = action["resource"]
    MedicationRequest.model_validate(corrected)
    assert corrected["id"] == "o1" and corrected["status"] == "draft" and corrected["intent"] == "order"
    instruction = corrected["dosageInstruction"][0]
    assert instruction["doseAndRate"][0]["doseQuantity"] == {"value": 20.0, "unit": "mg", "system": UCUM, "code": "mg"}
    assert instruction["timing"]["repeat"]["period"] == 6 and instruction["timing"]["repeat"]["periodUnit"] == "h"
    assert instruction["timing"]["repeat"]["boundsDuration"]["value"] == 3  # the draft's bound is kept
    assert {"system": RXNORM, "code": "3264", "display": "dexamethasone"} in corrected["medicationCodeableConcept"]["coding"]
    assert "Overriding this card keeps the order as drafted." in _text(card)


def test_an_order_of_another_glucocorticoid_is_changed_to_the_plans_drug(sign):
    draft = _order(medication="methylprednisolone", dose=1000, repeat={"frequency": 1, "period": 24, "periodUnit": "h"}, reason="ICANS")
    (card,) = _cards(sign(_request(_prefetch(ice=2), draft)))
    corrected = card["suggestions"][0]["actions"][0]["resource"]
    assert corrected["medicationCodeableConcept"]["text"] == "dexamethasone"
    assert corrected["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 20.0


def test_an_order_that_matches_the_plan_says_so_without_a_suggestion(sign):
    draft = _order(dose=20, repeat={"frequency": 4, "period": 1, "periodUnit": "d"})
    (card,) = _cards(sign(_request(_prefetch(ice=2), draft)))
    assert card["indicator"] == "warning"  # 80 mg over the horizon: more than 35 mg (S000), with the literature
    assert "dexamethasone matches the plan (ICANS grade 3)" in _text(card)
    assert "suggestions" not in card


def test_for_a_child_the_plan_dose_is_weight_based_so_only_drug_and_frequency_are_compared(sign):
    draft = _order(dose=5, repeat={"frequency": 1, "period": 12, "periodUnit": "h"})
    (card,) = _cards(sign(_request(_prefetch(ice=2, weight=25, birth_date="2016-01-01"), draft)))
    corrected = card["suggestions"][0]["actions"][0]["resource"]
    instruction = corrected["dosageInstruction"][0]
    assert instruction["doseAndRate"][0]["doseQuantity"]["value"] == 5  # the drafted weight-based dose stays
    assert instruction["timing"]["repeat"]["period"] == 6


# --- tocilizumab: label dose and limits ---------------------------------------------------------------------

@pytest.mark.parametrize(("weight", "dose", "message"), [
    (80, 700, "700 mg is above the label dose of 640 mg (8 mg/kg x 80 kg)"),
    (120, 900, "900 mg is above the label dose of 800 mg (8 mg/kg x 120 kg, capped at 800 mg)"),
    (25, 320, "320 mg is above the label dose of 300 mg (12 mg/kg x 25 kg)"),
])
def test_a_tocilizumab_dose_above_the_label_is_critical(sign, weight, dose, message):
    (card,) = _cards(sign(_request(_prefetch(temp=39, weight=weight), _order(medication="tocilizumab", dose=dose))))
    assert card["indicator"] == "critical" and message in card["summary"]


def test_tocilizumab_within_the_label_gets_no_card(sign):
    assert _cards(sign(_request(_prefetch(temp=39), _order(medication="tocilizumab", dose=560)))) == []


def test_tocilizumab_less_than_8_h_after_the_last_dose_is_critical(sign):
    given = (_given("t0", "tocilizumab", "2026-03-05T08:00:00+01:00", 560),)
    (card,) = _cards(sign(_request(_prefetch(temp=39, given=given), _order(medication="tocilizumab", dose=560))))
    assert card["indicator"] == "critical"
    assert "breaks the label limits: Not before 16:00" in card["summary"]


def test_a_fifth_tocilizumab_dose_is_critical(sign):
    given = tuple(_given(f"t{i}", "tocilizumab", f"2026-03-0{3 + i // 2}T{8 + 10 * (i % 2):02d}:00:00+01:00", 560) for i in range(4))
    (card,) = _cards(sign(_request(_prefetch(temp=39, given=given), _order(medication="tocilizumab", dose=560))))
    assert "at most 4 in total" in card["summary"] or "at most 4 in total" in _text(card)


# --- what real EHR clients send --------------------------------------------------------------------------------

def test_drafts_still_being_written_are_listed_not_refused(sign):
    no_status = _order("o2")
    del no_status["status"]
    no_medication = _order("o3")
    del no_medication["medicationCodeableConcept"]
    wrong_type = _order("o4")
    wrong_type["dosageInstruction"] = "twice a day"
    lab = {"resourceType": "ServiceRequest", "id": "lab", "status": "draft", "intent": "order"}
    other = _order("o5", medication="acetaminophen", dose=1000)
    cards = _cards(sign(_request(_prefetch(), no_status, no_medication, wrong_type, lab, other, bundle_type=None)))
    assert [card["indicator"] for card in cards] == ["info", "info"]
    listed = " ".join(card["summary"] + _text(card) for card in cards)
    assert "dexamethasone (no status yet)" in listed
    assert "an order (no medication yet)" in listed
    assert "context.draftOrders.entry[2].resource.dosageInstruction" in listed


@pytest.mark.parametrize(("draft_orders", "status", "code", "where"), [
    (None, 400, "input-bad-parameter", "context.draftOrders"),
    ("not a bundle", 400, "input-bad-parameter", "context.draftOrders"),
    ({"resourceType": "Patient"}, 400, "input-bad-parameter", "context.draftOrders"),
    ({"resourceType": "Bundle", "entry": {"resource": {}}}, 422, "input-wrong-type", "context.draftOrders.entry"),
])
def test_a_request_without_usable_draft_orders_is_refused_with_its_location(sign, outcome_issue, draft_orders, status, code, where):
    body = _request(_prefetch())
    body["context"]["draftOrders"] = draft_orders
    outcome_issue(sign(body), status, code, where)


def test_the_order_service_answers_only_order_sign(sign, outcome_issue):
    body = _request(_prefetch(), _order())
    body["hook"] = "patient-view"
    outcome_issue(sign(body), 400, "hook-unsupported", "hook")


def test_cards_are_deterministic_and_have_no_empty_fields(sign, find_empty):
    body = _request(_prefetch(ice=2), _order(repeat={"frequency": 1, "period": 6, "periodUnit": "h"}),
                    _order("o2", medication="tocilizumab", dose=900))
    first, again = sign(copy.deepcopy(body)), sign(body)
    assert first.get_data() == again.get_data()
    assert find_empty(orjson.loads(first.get_data())) == []
    assert [card["indicator"] for card in _cards(first)] == ["critical", "warning"]


# --- never a 500: every field of a draft order replaced by values of the wrong kind -----------------------------

_ODD_VALUES = (None, "", "x", 0, -1, 1e308, True, [], {}, [1], {"a": 1}, "2026-13-45", 10**12)
_PATHS = (
    ("id",), ("status",), ("intent",), ("medicationCodeableConcept",), ("medicationCodeableConcept", "text"),
    ("dosageInstruction",), ("dosageInstruction", 0, "doseAndRate"), ("dosageInstruction", 0, "doseAndRate", 0, "doseQuantity", "value"),
    ("dosageInstruction", 0, "doseAndRate", 0, "doseQuantity", "unit"), ("dosageInstruction", 0, "timing", "repeat", "frequency"),
    ("dosageInstruction", 0, "timing", "repeat", "period"), ("dosageInstruction", 0, "timing", "repeat", "periodUnit"),
    ("dosageInstruction", 0, "timing", "repeat", "count"), ("dosageInstruction", 0, "timing", "repeat", "boundsPeriod", "start"),
    ("dosageInstruction", 0, "timing", "repeat", "boundsDuration", "value"), ("reasonCode",), ("subject",),
)


def _set(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(resource)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


@pytest.mark.parametrize("path", _PATHS, ids=[".".join(map(str, p)) for p in _PATHS])
def test_odd_draft_orders_never_give_500(sign, path):
    repeat = {"frequency": 1, "period": 6, "periodUnit": "h", "count": 4, "boundsPeriod": {"start": "2026-03-05T14:00:00+01:00"},
              "boundsDuration": {"value": 2, "unit": "d", "system": UCUM, "code": "d"}}
    base = _order(repeat=repeat, reason="CRS")
    tocilizumab = _order("t", medication="tocilizumab", dose=560, repeat=repeat)
    for value in _ODD_VALUES:
        response = sign(_request(_prefetch(ice=2), _set(base, path, value), _set(tocilizumab, path, value)))
        assert response.status_code < 500, (path, value, response.get_data(as_text=True)[:300])
        if response.status_code == 200:
            _cards(response)


def test_an_order_of_months_is_projected_only_so_far(sign):
    draft = _order(dose=1, repeat={"frequency": 1, "period": 1, "periodUnit": "min", "count": 10**6})
    (card,) = _cards(sign(_request(_prefetch(), draft)))
    assert "The projection stops after 200 doses." in _text(card)
