"""CDS Hooks 2.0: discovery, the car-t-toxicity service with prefetch, its errors and CORS."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import msgspec
import orjson
import pytest

AS_OF = "2026-03-07T12:00:00+01:00"
SERVICE = "/cds-services/car-t-toxicity"
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
HOOK_INSTANCE = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": "match"}} for r in resources],
    }


def _prefetch_from(bundle: dict[str, Any]) -> dict[str, Any]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    (patient,) = by_type["Patient"]
    return {
        "patient": patient,
        "observations": _searchset(by_type["Observation"]),
        "medicationAdministrations": _searchset(by_type["MedicationAdministration"]),
        "conditions": _searchset(by_type.get("Condition", [])),
    }


def _hook_request(prefetch: dict[str, Any] | None, patient_id: str | None = "pat-bench", hook: str = "patient-view") -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/prn-hem-01"}
    if patient_id is not None:
        context["patientId"] = patient_id
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": HOOK_INSTANCE,
        "fhirServer": "https://ehr.example.org/fhir",
        "context": context,
    }
    if prefetch is not None:
        request["prefetch"] = prefetch
    return request


@pytest.fixture
def call(client):
    def post(body: dict[str, Any] | bytes, as_of: str | None = AS_OF, **params: str):
        query = {"asOf": as_of, **params} if as_of else dict(params)
        url = SERVICE + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items()) if query else "")
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return client.post(url, data=data, content_type="application/json")

    return post


@pytest.fixture
def prefetch(small_bundle) -> dict[str, Any]:
    return _prefetch_from(small_bundle)


def _cards(response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)[:600]
    assert response.mimetype == "application/json"
    document = orjson.loads(response.get_data())
    assert list(document) == ["cards"]
    return document["cards"]


def _crs(cards: list[dict[str, Any]]) -> dict[str, Any]:
    (card,) = [c for c in cards if c["source"]["topic"]["code"] == "crs-grade-astct"]
    return card


def _grade_codes(card: dict[str, Any]) -> tuple[str, str]:
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert ra["resourceType"] == "RiskAssessment"
    return tuple(next(c["code"] for c in p["outcome"]["coding"] if c["system"] == CARTOX_CS) for p in ra["prediction"][:2])


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------
def test_discovery(client, find_empty):
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = orjson.loads(response.get_data())
    assert find_empty(document) == []
    service = next(s for s in document["services"] if s["id"] == "car-t-toxicity")
    assert [s["id"] for s in document["services"]] == ["car-t-toxicity", "car-t-glucocorticoid-order-check"]
    assert service["hook"] == "patient-view"
    assert service["title"] and service["description"]
    prefetch = service["prefetch"]
    assert set(prefetch) == {"patient", "observations", "medicationAdministrations", "conditions", "procedures"}
    assert "procedures" in service["usageRequirements"] and "optional" in service["usageRequirements"]
    # the Procedures the PHT regimen reads (transfusions, transplant, radiotherapy, chemotherapy), optional
    procedure_codes = set(prefetch["procedures"].split("&code=", 1)[1].split(","))
    assert {"http://snomed.info/sct|116859006", "http://snomed.info/sct|234336002"} <= procedure_codes
    assert "http://snomed.info/sct|54550000" not in procedure_codes  # the EEG: no rule reads it
    # the SNOMED CT findings ICANS reads (seizure, cerebral oedema, optic disc oedema), as Conditions
    assert prefetch["conditions"].startswith("Condition?patient={{context.patientId}}&code=")
    finding_codes = set(prefetch["conditions"].split("&code=", 1)[1].split(","))
    assert {"http://snomed.info/sct|91175000", "http://snomed.info/sct|2032001", "http://snomed.info/sct|423341008"} <= finding_codes
    assert "http://snomed.info/sct|26079004" not in finding_codes  # tremor never changes the ICANS grade
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["observations"].startswith("Observation?patient={{context.patientId}}&code=")
    codes = prefetch["observations"].split("&code=", 1)[1].split(",")
    assert "http://loinc.org|8310-5" in codes  # body temperature
    assert "http://loinc.org|8480-6" in codes  # systolic blood pressure
    assert "http://loinc.org|107117-4" in codes  # oxygen delivery device
    assert len(codes) == len(set(codes))
    assert "http://loinc.org|8462-4" not in codes  # diastolic pressure: no rule reads it
    assert "http://loinc.org|85354-9" in codes  # the blood pressure panel carries the systolic pressure
    assert prefetch["medicationAdministrations"] == (
        "MedicationAdministration?patient={{context.patientId}}&_include=MedicationAdministration:medication"
    )
    assert response.headers["Access-Control-Allow-Origin"]


# --------------------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------------------
def test_call_with_prefetch_gives_the_crs_card(call, prefetch, find_empty):
    response = call(_hook_request(prefetch))
    assert response.headers["Access-Control-Allow-Origin"]
    cards = _cards(response)
    # CRS grade 2 carries the one plan; then neutropenia grade 4 after lymphodepletion (critical), early ICAHT
    # (ANC <= 0.5 since day 5: grade 1 so far), ICANS grade 1 (ICE 8; same indicator and grade: rule-file order)
    # and the glucocorticoid exposure (dexamethasone 10 mg q6h on day 4: 40 mg, more than 35 mg reached at
    # 6 Mar 20:05, in the last 24 h: a warning)
    assert [c["source"]["topic"]["code"] for c in cards] == [
        "crs-grade-astct", "neutropenia-grade-ctcae", "icaht-grade", "icans-grade-astct", "glucocorticoid-exposure"]
    assert cards[2]["summary"].startswith("ICAHT early grade 1: ANC ≤ 0.5 x10^9/L for ")
    card = cards[0]
    assert card["indicator"] == "warning"
    assert "CRS grade 2" in card["summary"] and len(card["summary"]) < 140
    assert card["selectionBehavior"] == "at-most-one"
    assert uuid.UUID(card["uuid"])
    assert _grade_codes(card) == ("grade-2", "grade-3")
    actions = card["suggestions"][0]["actions"]
    assert [(a["type"], a["resource"]["resourceType"]) for a in actions] == [("create", "RiskAssessment"), ("create", "CarePlan")]
    ra = actions[0]["resource"]
    assert ra["subject"] == {"reference": "Patient/pat-bench"}
    assert ra["occurrenceDateTime"] == AS_OF
    assert {c["system"]: c["code"] for c in ra["prediction"][1]["outcome"]["coding"]}[ICD10CM] == "D89.833"
    assert ra["prediction"][1]["whenPeriod"]["start"] == "2026-03-02T10:00:00+01:00"  # infusion found in the prefetch
    assert find_empty(orjson.loads(response.get_data())) == []


def test_call_agrees_with_evaluate(call, prefetch, post_evaluate, small_bundle):
    hook_card = _crs(_cards(call(_hook_request(prefetch))))
    evaluate_card = _crs(orjson.loads(post_evaluate(small_bundle).get_data())["cards"])
    assert _grade_codes(hook_card) == _grade_codes(evaluate_card)
    assert hook_card["summary"] == evaluate_card["summary"]
    assert hook_card["indicator"] == evaluate_card["indicator"]
    hook_basis = hook_card["suggestions"][0]["actions"][0]["resource"]["basis"]
    assert hook_basis == evaluate_card["suggestions"][0]["actions"][0]["resource"]["basis"]


def test_call_is_deterministic(call, prefetch):
    assert call(_hook_request(prefetch)).get_data() == call(_hook_request(prefetch)).get_data()


def test_call_with_guideline_and_infusion_date(call, prefetch, card_text):
    card = _crs(_cards(call(_hook_request(prefetch), guideline="ASCO-2021", infusionDate="2026-03-04T10:00:00+01:00")))
    assert "Do now (ASCO-2021)" in card_text(card["detail"])
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert ra["prediction"][1]["whenPeriod"]["start"] == "2026-03-04T10:00:00+01:00"
    assert "(day 2)" in card_text(card["detail"])


def test_all_prefetch_null_is_not_assessable(call, find_empty):
    prefetch = {"patient": None, "observations": None, "medicationAdministrations": None, "conditions": None}
    response = call(_hook_request(prefetch))
    cards = _cards(response)
    assert [c["source"]["topic"]["code"] for c in cards] == ["crs-grade-astct", "icans-grade-astct"]  # no data: no exposure card
    assert all(c["indicator"] == "info" for c in cards)
    card = cards[0]
    assert card["indicator"] == "info"
    assert "cannot be assessed" in card["summary"]
    assert _grade_codes(card) == ("not-assessable", "not-assessable")
    assert find_empty(orjson.loads(response.get_data())) == []


def test_null_observations_is_no_data(call, prefetch):
    prefetch["observations"] = None
    card = _crs(_cards(call(_hook_request(prefetch))))
    assert card["indicator"] == "info"
    assert _grade_codes(card)[0] == "not-assessable"
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert ra["subject"] == {"reference": "Patient/pat-bench"}


def test_null_medication_administrations_is_no_data(call, prefetch):
    prefetch["medicationAdministrations"] = None
    card = _crs(_cards(call(_hook_request(prefetch))))
    # Fever + nasal cannula still grade 2; the maximum 3 now rests on the non-rebreather mask of day 4 alone
    # (no vasopressor without administrations), and day 0 is unknown.
    assert _grade_codes(card) == ("grade-2", "grade-3")
    assert "Day 0 unknown" in card["detail"]
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert all(not b["reference"].startswith("MedicationAdministration/") for b in ra["basis"])


def test_null_patient_with_data_still_grades(call, prefetch):
    prefetch["patient"] = None
    card = _crs(_cards(call(_hook_request(prefetch))))
    assert _grade_codes(card) == ("grade-2", "grade-3")
    assert card["suggestions"][0]["actions"][0]["resource"]["subject"] == {"reference": "Patient/pat-bench"}


def test_empty_searchsets_are_no_data(call, prefetch):
    prefetch["observations"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    card = _crs(_cards(call(_hook_request(prefetch))))
    assert card["indicator"] == "info"
    assert _grade_codes(card)[0] == "not-assessable"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["patient", "observations", "medicationAdministrations", "conditions"])
def test_missing_prefetch_key_without_fhir_server(call, prefetch, outcome_issue, key):
    del prefetch[key]
    request = _hook_request(prefetch)
    del request["fhirServer"]
    issue = outcome_issue(call(request), 412, "prefetch-missing", f"prefetch.{key}")
    assert "no fhirServer" in issue["diagnostics"]


@pytest.mark.parametrize("key", ["patient", "conditions"])
def test_missing_prefetch_key_from_a_server_not_allowed(call, prefetch, outcome_issue, key):
    """No allow-list is configured: only loopback servers may be queried, not the example EHR."""
    del prefetch[key]
    issue = outcome_issue(call(_hook_request(prefetch)), 412, "prefetch-server-not-allowed", f"prefetch.{key}")
    assert "CARTOX_FHIR_SERVER_ALLOWLIST" in issue["diagnostics"]


def test_missing_prefetch_lists_every_key(call, outcome_issue):
    response = call(_hook_request(None))
    outcome_issue(response, 412, "prefetch-server-not-allowed")
    expressions = sorted(i["expression"][0] for i in orjson.loads(response.get_data())["issue"])
    assert expressions == ["prefetch.conditions", "prefetch.medicationAdministrations", "prefetch.observations", "prefetch.patient"]


@pytest.mark.parametrize("hook", ["order-select", "encounter-start", "PATIENT-VIEW"])
def test_wrong_hook(call, prefetch, outcome_issue, hook):
    outcome_issue(call(_hook_request(prefetch, hook=hook)), 400, "hook-unsupported", "hook")


def test_missing_patient_id(call, prefetch, outcome_issue):
    outcome_issue(call(_hook_request(prefetch, patient_id=None)), 400, "input-bad-parameter", "context.patientId")


def test_missing_context(call, prefetch, outcome_issue):
    request = _hook_request(prefetch)
    del request["context"]
    outcome_issue(call(request), 400, "input-bad-parameter", "context.patientId")


def test_missing_hook_instance(call, prefetch, outcome_issue):
    request = _hook_request(prefetch)
    del request["hookInstance"]
    outcome_issue(call(request), 400, "input-bad-parameter", "hookInstance")


def test_patient_id_differs_from_prefetched_patient(call, prefetch, outcome_issue):
    outcome_issue(call(_hook_request(prefetch, patient_id="someone-else")), 422, "input-multiple-patients", "context.patientId")


def test_prefetch_of_two_patients(call, prefetch, outcome_issue):
    observation = prefetch["observations"]["entry"][5]["resource"]
    observation["subject"] = {"reference": "Patient/intruder"}
    outcome_issue(call(_hook_request(prefetch)), 422, "input-multiple-patients")


def test_prefetch_patient_that_is_not_a_patient(call, prefetch, outcome_issue):
    prefetch["patient"] = prefetch["observations"]["entry"][0]["resource"]
    outcome_issue(call(_hook_request(prefetch)), 422, "input-wrong-type", "prefetch.patient.resourceType")


def test_prefetch_observations_not_a_bundle(call, prefetch, outcome_issue):
    prefetch["observations"] = prefetch["observations"]["entry"][0]["resource"]
    outcome_issue(call(_hook_request(prefetch)), 400, "input-not-bundle", "prefetch.observations.resourceType")


def test_prefetch_wrong_type_is_located(call, prefetch, outcome_issue):
    entry = next(i for i, e in enumerate(prefetch["observations"]["entry"])
                 if e["resource"]["code"]["coding"][0]["code"] == "8310-5")
    prefetch["observations"]["entry"][entry]["resource"]["valueQuantity"]["value"] = "38.5"
    outcome_issue(call(_hook_request(prefetch)), 422, "input-wrong-type",
                  f"prefetch.observations.entry[{entry}].resource.valueQuantity.value")


def test_hook_request_not_json(call, outcome_issue):
    outcome_issue(call(b"{hook: patient-view"), 400, "input-not-json")


def test_hook_request_wrong_content_type(client, prefetch, outcome_issue):
    response = client.post(SERVICE, data=orjson.dumps(_hook_request(prefetch)), content_type="text/plain")
    outcome_issue(response, 415, "input-unsupported-media-type")


def test_hook_bad_as_of(call, prefetch, outcome_issue):
    outcome_issue(call(_hook_request(prefetch), as_of="2026-03-07T12:00:00"), 400, "input-bad-parameter", "asOf")


def test_hook_unknown_guideline(call, prefetch, outcome_issue):
    outcome_issue(call(_hook_request(prefetch), guideline="nope"), 400, "input-bad-parameter", "guideline")


def test_service_still_answers_after_errors(call, client, prefetch):
    for body in (b"[", _hook_request(None), _hook_request(prefetch, hook="order-select")):
        assert 400 <= call(body).status_code < 500
    assert client.get("/healthz").status_code == 200
    assert len(_cards(call(_hook_request(prefetch)))) == 5  # CRS, neutropenia, ICAHT, ICANS, glucocorticoid exposure


# --------------------------------------------------------------------------------------------------
# CORS
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [SERVICE, "/cds-services"])
def test_options_preflight(client, path):
    response = client.options(path, headers={
        "Origin": "https://sandbox.cds-hooks.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://sandbox.cds-hooks.org")
    allowed_headers = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"authorization", "content-type"} <= allowed_headers
    allowed_methods = {m.strip().upper() for m in response.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "POST" in allowed_methods


def test_cors_headers_on_errors_too(call, prefetch):
    response = call(_hook_request(prefetch, hook="order-select"))
    assert response.status_code == 400
    assert response.headers.get("Access-Control-Allow-Origin")


# --------------------------------------------------------------------------------------------------
# Prefetch: every code asked for is used; medications referenced; paged searchsets
# --------------------------------------------------------------------------------------------------
def _observation_for(code_key: str, index: int, terms) -> dict[str, Any]:
    """One plausible Observation carrying `system|code` the way the rules read it."""
    system, code = code_key.split("|", 1)
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": f"obs-{index}", "status": "final",
        "code": {"coding": [{"system": system, "code": code}]}, "subject": {"reference": "Patient/pat-codes"},
        "effectiveDateTime": "2026-03-07T08:00:00+01:00",
    }

    def value(concept: str) -> dict[str, Any]:
        spec = terms.measurements[concept]
        unit = spec.canonical_unit
        return {"value": (spec.plausible_min + spec.plausible_max) / 2, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}

    if (system, code) in terms.finding_by_code:  # a clinical finding recorded as an Observation: present
        resource["valueBoolean"] = True
    elif (system, code) in terms.measurement_by_code:
        resource["valueQuantity"] = value(terms.measurement_by_code[(system, code)])
    elif (system, code) in terms.coded_by_code:  # an answer of the concept's own value set (device, level of consciousness ...)
        answer_system, answer_code = next(iter(terms.value_sets[terms.coded_by_code[(system, code)][1]].by_code))
        resource["valueCodeableConcept"] = {"coding": [{"system": answer_system, "code": answer_code}]}
    else:  # a panel: its components carry the concepts the rules read
        read = set(terms.measurement_by_code.values())
        resource["component"] = [
            {"code": {"coding": [{"system": ref.system, "code": ref.code}]}, "valueQuantity": value(concept)}
            for concept in sorted(terms.panel_components[(system, code)] & read)
            for ref in terms.all_codes[concept][:1]
        ]
    return resource


def test_no_prefetched_observation_code_is_ever_unused(client, engine):
    from service.http_api.cds_hooks import prefetched_entries
    from service.pipeline import RequestOptions
    from service.fhir_input.times import parse_instant_parameter

    document = orjson.loads(client.get("/cds-services").get_data())
    query = document["services"][0]["prefetch"]["observations"]
    codes = query.split("&code=", 1)[1].split(",")
    terms = engine.rules.input_terminology
    observations = [_observation_for(code, i, terms) for i, code in enumerate(codes)]
    prefetch = {
        "patient": msgspec.Raw(orjson.dumps({"resourceType": "Patient", "id": "pat-codes"})),
        "observations": msgspec.Raw(orjson.dumps(_searchset(observations))),
        "medicationAdministrations": msgspec.Raw(b"null"),
        "conditions": msgspec.Raw(b"null"),
    }
    entries, ignored = prefetched_entries(prefetch)
    outcome = engine.evaluate(entries, ignored, RequestOptions(parse_instant_parameter(AS_OF)))
    unused = [n.message for n in outcome.timeline.notes if n.code in ("ignored-code", "dropped-value", "dropped-unit", "dropped-implausible")]
    assert not [code for code in codes if any(code.split("|", 1)[1] in message for message in unused)], unused
    assert {f"Observation/obs-{i}" for i in range(len(codes))} <= outcome.timeline.input_references


def _pressor_prefetch(medication: str, *, contained: bool = False, include_full_url: str | None = None) -> dict[str, Any]:
    """Febrile and hypotensive on day 3, norepinephrine running (its code only in the referenced Medication)."""
    subject = {"reference": "Patient/pat-ref"}
    norepinephrine = {"resourceType": "Medication", "id": "med-ne", "code": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7512"}], "text": "Norepinephrine 8 mg/250 mL"}}
    administration: dict[str, Any] = {
        "resourceType": "MedicationAdministration", "id": "ne1", "status": "in-progress", "subject": subject,
        "medicationReference": {"reference": medication}, "effectivePeriod": {"start": "2026-03-05T09:00:00+01:00"},
    }
    if contained:
        administration["contained"] = [{**norepinephrine, "id": "ne"}]
    cart = {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed", "subject": subject,
            "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"}
    meds = _searchset([cart, administration])
    if not contained:
        meds["entry"].append({"fullUrl": include_full_url or "https://ehr.example.org/fhir/Medication/med-ne",
                              "resource": norepinephrine, "search": {"mode": "include"}})
    observations = [
        {"resourceType": "Observation", "id": "t1", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}, "effectiveDateTime": "2026-03-05T08:00:00+01:00",
         "valueQuantity": {"value": 38.9, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}},
        {"resourceType": "Observation", "id": "s1", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]}, "effectiveDateTime": "2026-03-05T08:00:00+01:00",
         "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}},
    ]
    return {"patient": {"resourceType": "Patient", "id": "pat-ref", "birthDate": "1961-03-14"},
            "observations": _searchset(observations), "medicationAdministrations": meds, "conditions": None}


@pytest.mark.parametrize(
    "reference, contained",
    [("Medication/med-ne", False), ("https://ehr.example.org/fhir/Medication/med-ne", False), ("#ne", True)],
)
def test_medication_reference_to_included_or_contained_medication(call, reference, contained):
    prefetch = _pressor_prefetch(reference, contained=contained)
    card = _crs(_cards(call(_hook_request(prefetch, patient_id="pat-ref"), as_of="2026-03-05T12:00:00+01:00")))
    assert _grade_codes(card)[0] == "grade-3"  # one vasopressor: known only through the Medication's code
    assert card["indicator"] == "critical"
    basis = [b["reference"] for b in card["suggestions"][0]["actions"][0]["resource"]["basis"]]
    assert "MedicationAdministration/ne1" in basis


def test_unresolved_medication_reference_is_not_a_vasopressor(call):
    prefetch = _pressor_prefetch("Medication/elsewhere")
    card = _crs(_cards(call(_hook_request(prefetch, patient_id="pat-ref"), as_of="2026-03-05T12:00:00+01:00")))
    assert _grade_codes(card)[0] == "grade-1"


def test_searchset_with_next_link_is_partial_data(call, prefetch, engine):
    from service.http_api.cds_hooks import prefetched_entries

    prefetch["observations"]["link"] = [
        {"relation": "self", "url": "https://ehr.example.org/fhir/Observation?patient=pat-bench"},
        {"relation": "next", "url": "https://ehr.example.org/fhir/Observation?patient=pat-bench&page=2"},
    ]
    entries, _ = prefetched_entries({k: msgspec.Raw(orjson.dumps(v)) for k, v in prefetch.items()})
    reasons = {e.partial.reason for e in entries if e.partial is not None}
    assert reasons == {"prefetch.observations: searchset has a next page that was not sent (data may be incomplete)"}
    assert {e.partial.location for e in entries if e.partial is not None} == {"prefetch.observations.link[1]"}
    card = _crs(_cards(call(_hook_request(prefetch))))
    prediction = card["suggestions"][0]["actions"][0]["resource"]["prediction"][0]
    assert {e["url"].rsplit("/", 1)[-1]: e["valueCode"] for e in prediction["extension"]}["data-completeness"] == "incomplete"


def test_paged_searchset_without_usable_entries_still_reported(prefetch):
    from service.http_api.cds_hooks import prefetched_entries

    prefetch["medicationAdministrations"] = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                                             "link": [{"relation": "next", "url": "https://ehr.example.org/fhir/x?page=2"}]}
    entries, _ = prefetched_entries({k: msgspec.Raw(orjson.dumps(v)) for k, v in prefetch.items()})
    assert [e.partial.location for e in entries if e.partial is not None] == ["prefetch.medicationAdministrations.link[0]"]
