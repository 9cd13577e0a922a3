"""POST /evaluate with the generated patient: cards, FHIR Bundle, guideline, determinism, infusionDate, strict."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

import orjson
import pytest

AS_OF = "2026-03-07T12:00:00+01:00"
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
INFUSION = "2026-03-02T10:00:00+01:00"  # day 0 of the generated patient


def _codes(codeable: dict) -> dict[str, str]:
    """{system: code} of a CodeableConcept (one code per system in these outputs)."""
    return {c["system"]: c["code"] for c in codeable["coding"]}


def _only(items: list, what: str):
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}"
    return items[0]


def _fhir_bundle(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)[:600]
    return orjson.loads(response.get_data())


def _risk_assessment(bundle: dict, code: str = "crs-grade-astct") -> dict:
    """The RiskAssessment of one finding (one per grading rule: CRS and ICANS)."""
    return _only([e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "RiskAssessment"
                  and _codes(e["resource"]["code"])[CARTOX_CS] == code], code)


def _card(cards: list, code: str = "crs-grade-astct") -> dict:
    return _only([card for card in cards if card["source"]["topic"]["code"] == code], f"{code} card")


def _care_plan(bundle: dict) -> dict:
    return _only([e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan"], "CarePlan")


def _extension(resource: dict, name: str) -> str:
    url = f"http://cartox.example.org/fhir/StructureDefinition/{name}"
    return _only([e for e in resource.get("extension", []) if e["url"] == url], name)["valueString"]


def _activity_keys(care_plan: dict) -> list[str]:
    """One key per activity: the cartox action code, or the RxNorm code of the drug (a doNotPerform drug marked)."""
    keys = []
    for activity in care_plan["activity"]:
        detail = activity["detail"]
        if detail["kind"] == "MedicationRequest":
            key = "rx:" + _codes(detail["productCodeableConcept"])[RXNORM]
            keys.append(key + (":do-not-perform" if detail.get("doNotPerform") else ""))
        else:
            keys.append("cartox:" + _codes(detail["code"])[CARTOX_CS])
    return keys


# --------------------------------------------------------------------------------------------------
# CDS Hooks cards (default response)
# --------------------------------------------------------------------------------------------------
def test_cards_response_for_the_generated_patient(card_text, post_evaluate, small_bundle, find_empty):
    response = post_evaluate(small_bundle)
    assert response.status_code == 200, response.get_data(as_text=True)[:600]
    assert response.mimetype == "application/json"
    document = orjson.loads(response.get_data())
    assert list(document) == ["cards"]
    # CRS grade 2 and ICANS grade 1 (ICE 8 since day 4 22:00): the CRS card comes first and carries the one plan;
    # then neutropenia grade 4 after lymphodepletion, early ICAHT (grade 1 so far; ranks with ICANS grade 1, in
    # rule-file order) and the glucocorticoid exposure (dexamethasone 10 mg q6h on day 4: 40 mg, more than 35 mg at
    # 6 Mar 20:05).
    assert [c["source"]["topic"]["code"] for c in document["cards"]] == [
        "crs-grade-astct", "neutropenia-grade-ctcae", "icaht-grade", "icans-grade-astct", "glucocorticoid-exposure"]
    card = document["cards"][0]

    # Current grade 2 (fever + nasal cannula O2) over the last 24 h; grade 3 earlier (norepinephrine).
    assert "CRS" in card["summary"]
    assert "grade 2" in card["summary"]
    assert "max grade 3" in card["summary"]
    assert len(card["summary"]) < 140
    assert card["indicator"] == "warning"
    assert card["selectionBehavior"] == "at-most-one"
    assert uuid.UUID(card["uuid"])
    assert card["source"]["label"].startswith("cartox")
    assert card["source"]["topic"]["code"] == "crs-grade-astct"
    text = card_text(card["detail"])
    assert "Evidence (times UTC+01:00)" in text
    assert "Observation/obs-vs-" in text
    assert "not excluded" in text  # infection is never excluded
    assert {r["code"] for r in card["overrideReasons"]} >= {"override-alternative-cause", "override-data-error"}
    assert all(r["system"] == CARTOX_CS for r in card["overrideReasons"])

    suggestion = _only(card["suggestions"], "suggestion")
    assert uuid.UUID(suggestion["uuid"])
    actions = suggestion["actions"]
    assert [a["type"] for a in actions] == ["create", "create"]
    assert [a["resource"]["resourceType"] for a in actions] == ["RiskAssessment", "CarePlan"]
    ra, cp = actions[0]["resource"], actions[1]["resource"]
    assert _codes(ra["prediction"][0]["outcome"])[CARTOX_CS] == "grade-2"
    assert _codes(ra["prediction"][1]["outcome"])[CARTOX_CS] == "grade-3"
    icans = _card(document["cards"], "icans-grade-astct")
    icans_ra = _only(icans["suggestions"][0]["actions"], "ICANS action")["resource"]
    assert _codes(icans_ra["prediction"][0]["outcome"]) == {CARTOX_CS: "grade-1", ICD10CM: "G92.01"}
    exposure = _card(document["cards"], "glucocorticoid-exposure")["suggestions"][0]["actions"][0]["resource"]
    assert cp["supportingInfo"] == [{"reference": f"urn:uuid:{r['id']}"} for r in (ra, icans_ra, exposure)]
    assert "**Management:** see the CRS card" in icans["detail"]
    assert find_empty(document) == []


def test_cards_are_the_default_for_accept_json_and_format_cards(post_evaluate, small_bundle):
    default = post_evaluate(small_bundle)
    as_json = post_evaluate(small_bundle, headers={"Accept": "application/json"})
    as_cards = post_evaluate(small_bundle, _format="cards")
    assert default.status_code == as_json.status_code == as_cards.status_code == 200
    assert default.get_data() == as_json.get_data() == as_cards.get_data()
    assert as_cards.mimetype == "application/json"


def test_bare_plus_in_as_of_is_read_back_as_offset(client, small_bundle, post_evaluate):
    """README: a bare '+' (decoded as a space) is read back as '+' when the value is otherwise a dateTime."""
    encoded = post_evaluate(small_bundle, _format="fhir")
    bare = client.post("/evaluate?_format=fhir&asOf=2026-03-07T12:00:00+01:00", data=orjson.dumps(small_bundle),
                       content_type="application/fhir+json")
    assert bare.status_code == 200, bare.get_data(as_text=True)[:400]
    assert bare.get_data() == encoded.get_data()
    assert _risk_assessment(_fhir_bundle(bare))["occurrenceDateTime"] == AS_OF


# --------------------------------------------------------------------------------------------------
# FHIR Bundle response
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["accept", "_format"])
def test_fhir_bundle_response(post_evaluate, small_bundle, how):
    if how == "accept":
        response = post_evaluate(small_bundle, headers={"Accept": "application/fhir+json"})
    else:
        response = post_evaluate(small_bundle, _format="fhir")
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+json"
    bundle = _fhir_bundle(response)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    assert uuid.UUID(bundle["id"])
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["RiskAssessment"] * 8 + ["CarePlan", "OperationOutcome"]  # one per finding rule, then the plan
    for entry in bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
        assert uuid.UUID(entry["resource"]["id"])

    ra = _risk_assessment(bundle)
    assert ra["status"] == "final"
    assert ra["subject"] == {"reference": "Patient/pat-bench"}
    assert ra["occurrenceDateTime"] == AS_OF
    assert _codes(ra["code"]) == {CARTOX_CS: "crs-grade-astct"}
    current, maximum = ra["prediction"][0], ra["prediction"][1]
    assert _codes(current["outcome"]) == {CARTOX_CS: "grade-2", ICD10CM: "D89.832"}
    assert _codes(maximum["outcome"]) == {CARTOX_CS: "grade-3", ICD10CM: "D89.833"}
    assert current["whenPeriod"] == {"start": "2026-03-06T12:00:00+01:00", "end": AS_OF}
    assert maximum["whenPeriod"] == {"start": INFUSION, "end": AS_OF}
    assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{6,}", _extension(ra, "rule-set-version"))
    assert _extension(ra, "guideline-version") == "seed-S004"
    # The maximum grade 3 rests on the norepinephrine infusion of the night of day 3-4.
    assert {"reference": "MedicationAdministration/mad-00055"} in ra["basis"]
    assert any(b["reference"].startswith("Observation/obs-vs-") for b in ra["basis"])

    icans = _risk_assessment(bundle, "icans-grade-astct")
    assert _codes(icans["prediction"][0]["outcome"]) == {CARTOX_CS: "grade-1", ICD10CM: "G92.01"}

    cp = _care_plan(bundle)
    assert (cp["status"], cp["intent"]) == ("active", "proposal")
    # the dexamethasone of day 4 (last dose 6 Mar 20:05) is still running: its taper waits for CRS and ICANS <= 1
    assert cp["title"] == "Management of CRS grade 2, ICANS grade 1, glucocorticoids for CRS or ICANS"
    exposure = _risk_assessment(bundle, "glucocorticoid-exposure")
    assert cp["supportingInfo"] == [{"reference": f"urn:uuid:{r['id']}"} for r in (ra, icans, exposure)]
    taper = next(a["detail"] for a in cp["activity"] if a["detail"]["kind"] != "MedicationRequest"
                 and _codes(a["detail"]["code"]).get(CARTOX_CS) == "taper-glucocorticoids")
    assert taper["status"] == "on-hold" and "CRS grade 2 now" in taper["statusReason"]["text"]
    # ICANS grade 1 (seed-S004): alert the neurologist, ICE monitoring; alert ICU once for both findings.
    assert _activity_keys(cp).count("cartox:alert-icu") == 1
    assert {"cartox:alert-neurology", "cartox:ice-monitoring", "cartox:elevate-head-of-bed", "cartox:neurologic-workup",
            "cartox:treat-concurrent-crs"} <= set(_activity_keys(cp))
    reasons = {a["detail"]["reasonCode"][0]["text"] for a in cp["activity"]}
    assert reasons == {"CRS grade 2", "ICANS grade 1", "glucocorticoids for CRS or ICANS"}
    # glucocorticoid exposure: 4 x dexamethasone 10 mg on day 4
    (cumulative,) = [e["valueQuantity"] for e in exposure["extension"] if e["url"].endswith("/cumulative-dexamethasone-equivalent")]
    assert cumulative["value"] == 40 and cumulative["code"] == "mg"
    assert _codes(exposure["prediction"][0]["outcome"]) == {CARTOX_CS: "high-exposure"}
    # seed-S004 grade 2: alert ICU, infection work-up, tocilizumab 8 mg/kg x 80 kg = 640 mg.
    keys = _activity_keys(cp)
    assert "cartox:alert-icu" in keys
    assert "cartox:infection-workup" in keys
    assert "rx:612865" in keys
    tocilizumab = next(a["detail"] for a in cp["activity"] if a["detail"].get("productCodeableConcept", {}).get("text") == "tocilizumab")
    assert tocilizumab["quantity"] == {"value": 640.0, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}

    outcome = _only([e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "OperationOutcome"], "OperationOutcome")
    assert outcome["issue"]
    assert {i["severity"] for i in outcome["issue"]} <= {"information", "warning"}
    ignored_types = [i for i in outcome["issue"] if i["details"]["coding"][0]["code"] == "ignored-resource-type"]
    assert all(i["severity"] == "information" for i in ignored_types)
    listed = " ".join(i["details"]["text"] for i in ignored_types)
    for resource_type in ("Practitioner", "Organization", "Encounter"):
        assert resource_type in listed, f"{resource_type} not listed as ignored: {listed}"
    assert "Observation" not in listed and "Patient" not in listed
    ignored_codes = " ".join(i["details"]["text"] for i in outcome["issue"] if i["details"]["coding"][0]["code"] == "ignored-code")
    assert "aciclovir" in ignored_codes  # prophylaxis the rules do not use


def test_accept_and_format_give_the_same_bundle(post_evaluate, small_bundle):
    by_accept = post_evaluate(small_bundle, headers={"Accept": "application/fhir+json"})
    by_format = post_evaluate(small_bundle, _format="fhir")
    assert by_accept.get_data() == by_format.get_data()


def test_format_wins_over_accept(post_evaluate, small_bundle):
    response = post_evaluate(small_bundle, headers={"Accept": "application/fhir+json"}, _format="cards")
    assert response.status_code == 200
    assert list(orjson.loads(response.get_data())) == ["cards"]


def test_card_actions_carry_the_bundle_resources(post_evaluate, small_bundle):
    cards = orjson.loads(post_evaluate(small_bundle).get_data())["cards"]
    bundle = _fhir_bundle(post_evaluate(small_bundle, _format="fhir"))
    actions = cards[0]["suggestions"][0]["actions"]
    assert actions[0]["resource"] == _risk_assessment(bundle)
    assert actions[1]["resource"] == _care_plan(bundle)
    icans_card = next(card for card in cards if card["source"]["topic"]["code"] == "icans-grade-astct")
    (icans_action,) = icans_card["suggestions"][0]["actions"]
    assert icans_action["resource"] == _risk_assessment(bundle, "icans-grade-astct")


# --------------------------------------------------------------------------------------------------
# Guideline
# --------------------------------------------------------------------------------------------------
def test_guideline_asco_changes_the_care_plan_not_the_grade(post_evaluate, small_bundle):
    seed = _fhir_bundle(post_evaluate(small_bundle, _format="fhir"))
    asco = _fhir_bundle(post_evaluate(small_bundle, _format="fhir", guideline="ASCO-2021"))
    seed_cp, asco_cp = _care_plan(seed), _care_plan(asco)

    assert _extension(seed_cp, "guideline-version") == "seed-S004"
    assert _extension(asco_cp, "guideline-version") == "ASCO-2021"
    assert "guideline version ASCO-2021" in asco_cp["description"] and "guideline version seed-S004" in seed_cp["description"]
    assert _extension(_risk_assessment(asco), "guideline-version") == "ASCO-2021"
    assert _activity_keys(seed_cp) != _activity_keys(asco_cp)
    # ASCO grade 2: dexamethasone if hypotension persists; seed-S004 grade 2 alerts the ICU.
    assert "rx:3264" in _activity_keys(asco_cp)
    assert "cartox:alert-icu" in _activity_keys(seed_cp)
    assert asco_cp["id"] != seed_cp["id"]

    # The grade does not depend on the management guideline.
    for bundle in (seed, asco):
        ra = _risk_assessment(bundle)
        assert _codes(ra["prediction"][0]["outcome"])[CARTOX_CS] == "grade-2"
        assert _codes(ra["prediction"][1]["outcome"])[CARTOX_CS] == "grade-3"


def test_guideline_asco_in_the_card(post_evaluate, small_bundle, card_text):
    card = orjson.loads(post_evaluate(small_bundle, guideline="ASCO-2021").get_data())["cards"][0]
    assert "Do now (ASCO-2021)" in card_text(card["detail"])
    assert _extension(card["suggestions"][0]["actions"][1]["resource"], "guideline-version") == "ASCO-2021"


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["fhir", "cards"])
def test_identical_input_gives_byte_identical_output(post_evaluate, small_bundle, fmt):
    first = post_evaluate(small_bundle, _format=fmt)
    second = post_evaluate(small_bundle, _format=fmt)
    assert first.status_code == second.status_code == 200
    assert first.get_data() == second.get_data()


def test_ids_are_stable_and_depend_on_the_evaluation_time(post_evaluate, small_bundle):
    first = _fhir_bundle(post_evaluate(small_bundle, _format="fhir"))
    again = _fhir_bundle(post_evaluate(small_bundle, _format="fhir"))
    later = _fhir_bundle(post_evaluate(small_bundle, _format="fhir", asOf="2026-03-07T11:00:00+01:00"))
    ids = [e["resource"]["id"] for e in first["entry"]]
    assert ids == [e["resource"]["id"] for e in again["entry"]]
    assert first["id"] == again["id"]
    assert all(uuid.UUID(i).version == 5 for i in ids)
    assert set(ids).isdisjoint(e["resource"]["id"] for e in later["entry"])


# --------------------------------------------------------------------------------------------------
# infusionDate
# --------------------------------------------------------------------------------------------------
def _onset_note(ra: dict) -> str:
    return _only([n["text"] for n in ra["note"] if n["text"].startswith("CRS onset")], "onset note")


def test_infusion_in_the_bundle_sets_day_zero(post_evaluate, small_bundle):
    ra = _risk_assessment(_fhir_bundle(post_evaluate(small_bundle, _format="fhir")))
    # First fever of the small bundle: 2026-03-06T00:08+01:00, day 4 after the 2026-03-02 infusion.
    assert _onset_note(ra) == "CRS onset 2026-03-06T00:08:00+01:00 (day 4)"
    assert ra["prediction"][1]["whenPeriod"]["start"] == INFUSION


def test_infusion_date_time_override_changes_onset_day(post_evaluate, small_bundle, card_text):
    override = "2026-03-04T10:00:00+01:00"
    bundle = _fhir_bundle(post_evaluate(small_bundle, _format="fhir", infusionDate=override))
    ra = _risk_assessment(bundle)
    assert _onset_note(ra) == "CRS onset 2026-03-06T00:08:00+01:00 (day 2)"
    assert datetime.fromisoformat(ra["prediction"][1]["whenPeriod"]["start"]) == datetime.fromisoformat(override)
    card = _card(orjson.loads(post_evaluate(small_bundle, infusionDate=override).get_data())["cards"])
    assert "CRS onset 6 Mar 00:08 (day 2)." in card_text(card["detail"])
    assert "(day 4)" not in card_text(card["detail"])


def test_infusion_date_only_override_counts_calendar_days(post_evaluate, small_bundle):
    """Day 0 = 2026-03-04; the first fever is recorded on 2026-03-06 (+01:00): day 2."""
    ra = _risk_assessment(_fhir_bundle(post_evaluate(small_bundle, _format="fhir", infusionDate="2026-03-04")))
    assert _onset_note(ra) == "CRS onset 2026-03-06T00:08:00+01:00 (day 2)"


def test_infusion_override_moves_the_maximum_window(post_evaluate, small_bundle):
    override = "2026-03-06T06:00:00+01:00"
    ra = _risk_assessment(_fhir_bundle(post_evaluate(small_bundle, _format="fhir", infusionDate=override)))
    start = datetime.fromisoformat(ra["prediction"][1]["whenPeriod"]["start"])
    assert start == datetime.fromisoformat(override)
    assert datetime.fromisoformat(ra["prediction"][1]["whenPeriod"]["end"]) - start == timedelta(hours=30)


# --------------------------------------------------------------------------------------------------
# validate=strict
# --------------------------------------------------------------------------------------------------
def _first_temperature_index(bundle: dict) -> int:
    for index, entry in enumerate(bundle["entry"]):
        resource = entry["resource"]
        if resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] == "8310-5":
            return index
    raise AssertionError("no temperature in the bundle")


def test_strict_validation_rejects_an_invalid_observation(post_evaluate, small_bundle, outcome_issue):
    index = _first_temperature_index(small_bundle)
    del small_bundle["entry"][index]["resource"]["status"]  # Observation.status is 1..1
    response = post_evaluate(small_bundle, validate="strict")
    issue = outcome_issue(response, 422, "input-invalid-resource")
    assert issue["expression"][0].startswith(f"Bundle.entry[{index}].resource")
    assert issue["expression"] == [f"Bundle.entry[{index}].resource.status"]


def test_strict_validation_rejects_a_bad_instant(post_evaluate, small_bundle, outcome_issue):
    index = _first_temperature_index(small_bundle)
    small_bundle["entry"][index]["resource"]["issued"] = "yesterday"
    issue = outcome_issue(post_evaluate(small_bundle, validate="strict"), 422, "input-invalid-resource")
    assert issue["expression"] == [f"Bundle.entry[{index}].resource.issued"]


def test_lenient_validation_accepts_what_the_rules_do_not_read(post_evaluate, small_bundle):
    index = _first_temperature_index(small_bundle)
    small_bundle["entry"][index]["resource"]["issued"] = "yesterday"
    for params in ({}, {"validate": "lenient"}):
        response = post_evaluate(small_bundle, **params)
        assert response.status_code == 200
        assert _card(orjson.loads(response.get_data())["cards"])["indicator"] == "warning"


def test_strict_validation_passes_the_generated_patient(post_evaluate, small_bundle):
    response = post_evaluate(small_bundle, validate="strict", _format="fhir")
    ra = _risk_assessment(_fhir_bundle(response))
    assert _codes(ra["prediction"][0]["outcome"])[CARTOX_CS] == "grade-2"


# --------------------------------------------------------------------------------------------------
# Other accepted Bundle types and a hand-made patient
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bundle_type", ["collection", "batch", "transaction", "searchset"])
def test_accepted_bundle_types(post_evaluate, small_bundle, bundle_type):
    small_bundle["type"] = bundle_type
    response = post_evaluate(small_bundle, _format="fhir")
    ra = _risk_assessment(_fhir_bundle(response))
    assert _codes(ra["prediction"][0]["outcome"])[CARTOX_CS] == "grade-2"


def test_hand_made_febrile_patient_is_grade_1(post_evaluate, bundle_factory):
    bundle = bundle_factory.febrile_patient()
    cards = orjson.loads(post_evaluate(bundle, asOf="2026-03-04T12:00:00+01:00").get_data())["cards"]
    card = _card(cards)
    # no neurological assessment at all: ICANS cannot be assessed (never grade 0), on a card after the CRS one
    assert [c["indicator"] for c in cards] == ["warning", "info"]
    assert cards[1]["summary"].startswith("ICANS cannot be assessed")
    assert card["indicator"] == "warning"
    assert "CRS grade 1" in card["summary"]
    ra = card["suggestions"][0]["actions"][0]["resource"]
    assert _codes(ra["prediction"][0]["outcome"]) == {CARTOX_CS: "grade-1", ICD10CM: "D89.831"}
    assert ra["subject"] == {"reference": "Patient/p1"}
    assert {"reference": "Observation/obs-t1"} in ra["basis"]
    assert ra["prediction"][1]["whenPeriod"]["start"] == "2026-03-02T10:00:00+01:00"


def test_fahrenheit_temperature_is_converted(post_evaluate, bundle_factory):
    bundle = bundle_factory.bundle(
        bundle_factory.patient(),
        bundle_factory.cart_infusion("mad-cart", "2026-03-02T10:00:00+01:00"),
        bundle_factory.temperature("obs-f", 101.5, "2026-03-04T08:00:00+01:00", unit="[degF]"),  # 38.6 °C
        bundle_factory.blood_pressure("obs-bp1", 118, 72, "2026-03-04T08:00:00+01:00"),
    )
    bundle_out = _fhir_bundle(post_evaluate(bundle, asOf="2026-03-04T12:00:00+01:00", _format="fhir"))
    ra = _risk_assessment(bundle_out)
    assert _codes(ra["prediction"][0]["outcome"])[CARTOX_CS] == "grade-1"
    assert {"reference": "Observation/obs-f"} in ra["basis"]
