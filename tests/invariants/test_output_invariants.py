"""Output invariants over scenarios across the generated patient's CRS and ICANS episodes.

Each scenario is evaluated once (FHIR Bundle and cards); every test checks one invariant of the output
contract (README "Output contract", fhir_profiles/README.md) on every scenario, for every finding (one
RiskAssessment per grading rule) and the patient's one merged CarePlan.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable
from urllib.parse import quote, urlencode

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

AS_OF = "2026-03-07T12:00:00+01:00"
INFUSION = "2026-03-02T10:00:00+01:00"
BASE = "http://cartox.example.org/fhir"
CARTOX_CS = f"{BASE}/CodeSystem/cartox"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
GRADE_CODES = {"grade-0", "grade-1", "grade-2", "grade-3", "grade-4", "grade-5", "not-assessable"}
CRS, ICANS = "crs-grade-astct", "icans-grade-astct"
ICD_OF_GRADE = {
    CRS: {"grade-1": "D89.831", "grade-2": "D89.832", "grade-3": "D89.833", "grade-4": "D89.834"},
    ICANS: {"grade-1": "G92.01", "grade-2": "G92.02", "grade-3": "G92.03", "grade-4": "G92.04"},
}
RULE_OF = {CRS: "crs-astct", ICANS: "icans-astct"}  # the ASTCT grading findings
# CTCAE cytopenia grading findings: no card while not-assessable (graded on occasional laboratory values)
CYTOPENIA = {"anemia-grade-ctcae": "anemia-ctcae", "thrombocytopenia-grade-ctcae": "thrombocytopenia-ctcae",
             "neutropenia-grade-ctcae": "neutropenia-ctcae"}
EXPOSURE = "glucocorticoid-exposure"  # the metrics finding
REGIMEN = "pht-status"  # the regimen finding (prednisone for prolonged hematologic toxicity)
ICAHT = "icaht-grade"  # the phased finding: early and late ICAHT
PROFILE_OF = {CRS: "cartox-risk-assessment", ICANS: "cartox-risk-assessment", EXPOSURE: "cartox-glucocorticoid-exposure",
              **dict.fromkeys(CYTOPENIA, "cartox-risk-assessment"), REGIMEN: "cartox-regimen-status",
              ICAHT: "cartox-phased-risk-assessment"}
EXPOSURE_OUTCOMES = {"high-exposure", "low-exposure", "no-exposure", "not-assessable"}
GLUCOCORTICOIDS = {"3264", "6902", "8640", "8638", "5492"}  # RxNorm ingredients: dexamethasone ... hydrocortisone
NOTE_CODES = {"ignored-resource-type", "ignored-code", "ignored-status", "flagged-status", "flagged-duplicate",
              "flagged-partial-data", "flagged-time", "dropped-implausible",
              "dropped-unit", "dropped-time", "dropped-future", "dropped-value"}
CARE_ACTIVITY_CODES = {"supportive-care", "infection-workup", "alert-icu", "transfer-icu", "salvage-therapy", "weight-based-dosing",
                       "alert-neurology", "ice-monitoring", "elevate-head-of-bed", "neurologic-workup", "treat-concurrent-crs",
                       "hyperventilation", "taper-glucocorticoids"}
REFERENCE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
MODELS = {"RiskAssessment": RiskAssessment, "CarePlan": CarePlan, "OperationOutcome": OperationOutcome}


def _without_temperatures(bundle: dict) -> None:
    bundle["entry"] = [e for e in bundle["entry"] if not (
        e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "8310-5")]


def _without_car_t(bundle: dict) -> None:
    before = len(bundle["entry"])
    bundle["entry"] = [e for e in bundle["entry"] if not (
        e["resource"]["resourceType"] == "MedicationAdministration"
        and e["resource"]["medicationCodeableConcept"]["text"] == "axicabtagene ciloleucel")]
    assert len(bundle["entry"]) == before - 1


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str  # "small" | "full"
    as_of: str
    current: str  # expected CRS prediction[0] grade code
    maximum: str  # expected CRS prediction[1] grade code
    icans: tuple[str, str]  # expected ICANS (current, maximum)
    params: dict[str, str] = field(default_factory=dict)
    mutate: Callable[[dict], None] | None = None
    infusion: str | None = INFUSION  # day 0 expected in prediction[1].whenPeriod.start (None: unknown)


SCENARIOS = [
    Scenario("full-day1-before-fever", "full", "2026-03-03T12:00:00+01:00", "grade-0", "grade-0", ("grade-0", "grade-0")),
    Scenario("full-day3-fever", "full", "2026-03-05T06:00:00+01:00", "grade-1", "grade-1", ("grade-0", "grade-0")),
    Scenario("full-as-of", "full", AS_OF, "grade-2", "grade-3", ("grade-1", "grade-1")),
    Scenario("full-day18-resolved", "full", "2026-03-20T12:00:00+01:00", "grade-0", "grade-3", ("grade-0", "grade-1")),
    Scenario("small-day4-night", "small", "2026-03-06T02:00:00+01:00", "grade-3", "grade-3", ("not-assessable", "not-assessable")),
    Scenario("small-day4-morning", "small", "2026-03-06T08:00:00+01:00", "grade-3", "grade-3", ("grade-0", "grade-0")),
    Scenario("small-as-of", "small", AS_OF, "grade-2", "grade-3", ("grade-1", "grade-1")),
    Scenario("small-as-of-utc", "small", "2026-03-07T11:00:00+00:00", "grade-2", "grade-3", ("grade-1", "grade-1")),
    Scenario("small-before-its-vitals", "small", "2026-03-05T12:00:00+01:00", "not-assessable", "not-assessable", ("not-assessable", "not-assessable")),
    Scenario("small-asco", "small", AS_OF, "grade-2", "grade-3", ("grade-1", "grade-1"), params={"guideline": "ASCO-2021"}),
    Scenario("small-infusion-override", "small", AS_OF, "grade-2", "grade-3", ("grade-1", "grade-1"),
             params={"infusionDate": "2026-03-04T10:00:00+01:00"}, infusion="2026-03-04T10:00:00+01:00"),
    Scenario("no-temperatures", "small", AS_OF, "not-assessable", "not-assessable", ("grade-1", "grade-1"), mutate=_without_temperatures),
    Scenario("no-car-t-infusion", "small", AS_OF, "grade-2", "grade-3", ("grade-1", "grade-1"), mutate=_without_car_t, infusion=None),
]


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    input_bundle: dict[str, Any]
    bundle: dict[str, Any]
    cards_document: dict[str, Any]

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.bundle["entry"] if e["resource"]["resourceType"] == resource_type]

    def assessment(self, code: str) -> dict[str, Any]:
        (ra,) = [r for r in self.of_type("RiskAssessment") if _assessment_code(r) == code]
        return ra

    @property
    def risk_assessment(self) -> dict[str, Any]:
        """The CRS RiskAssessment (the scenarios' CRS expectations)."""
        return self.assessment(CRS)

    @property
    def risk_assessments(self) -> list[dict[str, Any]]:
        """The grading findings' RiskAssessments (CRS, ICANS)."""
        return [ra for ra in self.of_type("RiskAssessment") if _assessment_code(ra) in RULE_OF]

    def expected(self, code: str) -> tuple[str, str]:
        return (self.scenario.current, self.scenario.maximum) if code == CRS else self.scenario.icans

    @property
    def cards(self) -> list[dict[str, Any]]:
        return self.cards_document["cards"]


@pytest.fixture(scope="module")
def results(app, small_bundle_bytes, full_bundle_bytes) -> dict[str, Result]:
    client = app.test_client()
    out: dict[str, Result] = {}
    for scenario in SCENARIOS:
        raw = small_bundle_bytes if scenario.source == "small" else full_bundle_bytes
        if scenario.mutate is not None:
            bundle = orjson.loads(raw)
            scenario.mutate(bundle)
            raw = orjson.dumps(bundle)
        responses = {}
        for fmt in ("fhir", "cards"):
            query = urlencode({"asOf": scenario.as_of, "_format": fmt, **scenario.params}, quote_via=quote, safe="")
            response = client.post(f"/evaluate?{query}", data=raw, content_type="application/fhir+json")
            assert response.status_code == 200, (scenario.name, response.get_data(as_text=True)[:600])
            responses[fmt] = orjson.loads(response.get_data())
        out[scenario.name] = Result(scenario, orjson.loads(raw), responses["fhir"], responses["cards"])
    return out


@pytest.fixture(params=SCENARIOS, ids=[s.name for s in SCENARIOS])
def result(request, results) -> Result:
    return results[request.param.name]


def _assessment_code(ra: dict[str, Any]) -> str:
    (code,) = [c["code"] for c in ra["code"]["coding"] if c["system"] == CARTOX_CS]
    return code


def _grade(prediction: dict[str, Any]) -> str:
    codes = [c["code"] for c in prediction["outcome"]["coding"] if c["system"] == CARTOX_CS]
    assert len(codes) == 1, prediction["outcome"]
    return codes[0]


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, f"{text} has no UTC offset"
    return moment


def _extensions(resource: dict[str, Any], name: str) -> list[Any]:
    url = f"{BASE}/StructureDefinition/{name}"
    return [next(v for k, v in e.items() if k.startswith("value")) for e in resource.get("extension", []) if e["url"] == url]


# --------------------------------------------------------------------------------------------------
# The expected grades (the scenarios mean what they say)
# --------------------------------------------------------------------------------------------------
def test_expected_grades(result):
    for code in (CRS, ICANS):
        ra = result.assessment(code)
        assert (_grade(ra["prediction"][0]), _grade(ra["prediction"][1])) == result.expected(code), code


# --------------------------------------------------------------------------------------------------
# FHIR validity
# --------------------------------------------------------------------------------------------------
def test_every_output_resource_parses_with_r4b_models(result):
    Bundle.model_validate(result.bundle)
    for entry in result.bundle["entry"]:
        resource = entry["resource"]
        MODELS[resource["resourceType"]].model_validate(resource)
    for card in result.cards:
        for action in card["suggestions"][0]["actions"]:
            MODELS[action["resource"]["resourceType"]].model_validate(action["resource"])


def test_bundle_shape(result):
    bundle = result.bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    # one per finding rule: the grading rules, the glucocorticoid exposure metrics, ICAHT and the prednisone regimen
    assert sorted(_assessment_code(r) for r in result.of_type("RiskAssessment")) == sorted([*RULE_OF, *CYTOPENIA, EXPOSURE, ICAHT, REGIMEN])
    assert types.count("OperationOutcome") == 1
    assert types.count("CarePlan") <= 1
    assert types[-1] == "OperationOutcome"


def test_profiles_and_versions(result):
    for resource in result.of_type("RiskAssessment") + result.of_type("CarePlan"):
        name = PROFILE_OF[_assessment_code(resource)] if resource["resourceType"] == "RiskAssessment" else "cartox-care-plan"
        assert resource["meta"]["profile"] == [f"{BASE}/StructureDefinition/{name}"]
        (rule_set,) = _extensions(resource, "rule-set-version")
        assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{6,}", rule_set)
        (guideline,) = _extensions(resource, "guideline-version")
        assert guideline
    for care_plan in result.of_type("CarePlan"):
        assert _extensions(care_plan, "guideline-version") == [result.scenario.params.get("guideline", "seed-S004")]


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------
def test_full_urls_are_urn_uuid_of_the_id(result):
    full_urls = [e["fullUrl"] for e in result.bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    for entry in result.bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
        assert uuid.UUID(entry["resource"]["id"])


def test_every_reference_resolves(result):
    full_urls = {e["fullUrl"]: e["resource"] for e in result.bundle["entry"]}
    for care_plan in result.of_type("CarePlan"):
        assert care_plan["supportingInfo"], "supportingInfo is 1..*"
        for info in care_plan["supportingInfo"]:
            target = full_urls.get(info["reference"])
            assert target is not None, f"{info['reference']} is not an entry of the Bundle"
            assert target["resourceType"] == "RiskAssessment"
    for resource in result.of_type("RiskAssessment") + result.of_type("CarePlan"):
        assert resource["subject"] == {"reference": "Patient/pat-bench"}


def test_basis_cites_only_input_resources(result):
    sent = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in result.input_bundle["entry"]}
    for ra in result.risk_assessments:
        basis = [b["reference"] for b in ra.get("basis", [])]
        assert len(basis) == len(set(basis))
        for reference in basis:
            assert REFERENCE.fullmatch(reference), f"{reference} is not Type/id"
            assert reference in sent, f"{reference} is not in the input bundle"


def test_basis_cites_the_evidence_of_a_grade(result):
    ra = result.risk_assessment
    basis = {b["reference"] for b in ra.get("basis", [])}
    temperatures = {f"Observation/{e['resource']['id']}" for e in result.input_bundle["entry"]
                    if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "8310-5"}
    if _grade(ra["prediction"][0]) not in ("grade-0", "not-assessable") or _grade(ra["prediction"][1]) not in ("grade-0", "not-assessable"):
        assert basis & temperatures, "a CRS grade >= 1 rests on a fever: its temperature must be cited"
    if result.scenario.current == "not-assessable":
        assert not basis & temperatures


# --------------------------------------------------------------------------------------------------
# RiskAssessment predictions
# --------------------------------------------------------------------------------------------------
def test_risk_assessment_header(result):
    for ra in result.risk_assessments:
        code = _assessment_code(ra)
        assert ra["status"] == "final"
        assert code in RULE_OF
        assert _time(ra["occurrenceDateTime"]) == _time(result.scenario.as_of)
        assert RULE_OF[code] in ra["method"]["text"]
        assert len(ra["prediction"]) == 2  # the grading kind's slots: current, maximum since day 0


def test_current_window_is_24_hours_ending_at_occurrence_clipped_at_day_zero(result):
    for ra in result.risk_assessments:
        occurrence = _time(ra["occurrenceDateTime"])
        window = ra["prediction"][0]["whenPeriod"]
        assert _time(window["end"]) == occurrence
        start = occurrence - timedelta(hours=24)  # both rules' default window
        if result.scenario.infusion is not None:
            start = max(start, _time(result.scenario.infusion))  # facts before day 0 are never graded
        assert _time(window["start"]) == start


def test_maximum_window_runs_from_day_zero_to_occurrence(result):
    for ra in result.risk_assessments:
        occurrence = _time(ra["occurrenceDateTime"])
        current, maximum = ra["prediction"][0]["whenPeriod"], ra["prediction"][1]["whenPeriod"]
        assert _time(maximum["end"]) == occurrence
        if result.scenario.infusion is not None:
            assert _time(maximum["start"]) == _time(result.scenario.infusion)
        else:
            assert _time(maximum["start"]) <= _time(current["start"])
            assert any("Day 0" in n["text"] and "unknown" in n["text"] for n in ra["note"])


def test_grade_codes_and_icd10(result):
    for ra in result.risk_assessments:
        icd_of_grade = ICD_OF_GRADE[_assessment_code(ra)]
        for prediction in ra["prediction"]:
            grade = _grade(prediction)
            assert grade in GRADE_CODES
            icd = [c["code"] for c in prediction["outcome"]["coding"] if c["system"] == ICD10CM]
            if grade in icd_of_grade:
                assert icd == [icd_of_grade[grade]]
            else:
                assert icd == [], f"{grade} must carry no ICD-10-CM code"
            assert grade != "grade-5"  # no death recorded in any scenario
            (scale,) = _extensions(prediction, "grading-scale")
            assert scale == "ASTCT-2019"


def test_maximum_is_at_least_the_current_grade(result):
    for ra in result.risk_assessments:
        current, maximum = _grade(ra["prediction"][0]), _grade(ra["prediction"][1])
        if current.startswith("grade-") and maximum.startswith("grade-"):
            assert int(maximum[-1]) >= int(current[-1])


def test_data_completeness(result):
    for ra in result.risk_assessments:
        for prediction in ra["prediction"]:
            (completeness,) = _extensions(prediction, "data-completeness")
            assert completeness in ("complete", "incomplete")
            if _grade(prediction) == "not-assessable":
                assert completeness == "incomplete"
        if any(_extensions(p, "data-completeness") == ["incomplete"] for p in ra["prediction"]):
            assert _extensions(ra, "missing-data"), "incomplete data must say what is missing"


def test_not_assessable_is_never_grade_0(result):
    for ra in result.risk_assessments:
        if result.expected(_assessment_code(ra))[0] == "not-assessable":
            assert _grade(ra["prediction"][0]) == "not-assessable"
            assert not [c for c in ra["prediction"][0]["outcome"]["coding"] if c["system"] == ICD10CM]


# --------------------------------------------------------------------------------------------------
# CarePlan
# --------------------------------------------------------------------------------------------------
def test_care_plan_shape(result):
    for care_plan in result.of_type("CarePlan"):
        assert (care_plan["status"], care_plan["intent"]) == ("active", "proposal")
        assert care_plan["activity"]
        for activity in care_plan["activity"]:
            detail = activity["detail"]
            assert detail["status"]
            assert detail["description"]
            if detail["kind"] == "MedicationRequest":
                product = detail["productCodeableConcept"]
                assert product["text"]
                assert any(c["system"] == RXNORM for c in product.get("coding", []))
                if "quantity" in detail:
                    assert detail["quantity"]["code"] == "mg" and detail["quantity"]["value"] > 0
                if detail.get("doNotPerform"):
                    assert detail["statusReason"]["text"]
            else:
                codes = {c["code"] for c in detail["code"]["coding"] if c["system"] == CARTOX_CS}
                assert codes and codes <= CARE_ACTIVITY_CODES


def test_graded_finding_has_a_care_plan(result):
    graded = [ra for ra in result.risk_assessments if _grade(ra["prediction"][0]) not in ("grade-0", "not-assessable")]
    care_plans = result.of_type("CarePlan")
    if graded:
        assert len(care_plans) == 1  # one plan for the patient, merged from every finding's
    assert len(care_plans) <= 1
    for care_plan in care_plans:
        supporting = {info["reference"] for info in care_plan["supportingInfo"]}
        every = {f"urn:uuid:{ra['id']}": _assessment_code(ra) for ra in result.of_type("RiskAssessment")}
        assert {f"urn:uuid:{ra['id']}" for ra in graded} <= supporting <= set(every)
        drivers = {c["code"] for a in care_plan["activity"] for c in a["detail"]["reasonCode"][0]["coding"]}
        assert drivers == {every[reference] for reference in supporting}  # every finding of the plan calls for something


def test_at_most_one_systemic_glucocorticoid_is_given_now(result):
    for care_plan in result.of_type("CarePlan"):
        now = [a["detail"] for a in care_plan["activity"] if a["detail"]["kind"] == "MedicationRequest"
               and _plan_status(a["detail"])[0] == "give-now"
               and {c["code"] for c in a["detail"]["productCodeableConcept"].get("coding", [])} & GLUCOCORTICOIDS]
        assert len(now) <= 1, [d["description"] for d in now]
        products = [a["detail"]["productCodeableConcept"]["text"] for a in care_plan["activity"] if a["detail"]["kind"] == "MedicationRequest"]
        assert len(products) == len(set(products)), "the same drug twice in the merged plan"


# --------------------------------------------------------------------------------------------------
# OperationOutcome of the input notes
# --------------------------------------------------------------------------------------------------
def test_operation_outcome_lists_ignored_input(result):
    (outcome,) = result.of_type("OperationOutcome")
    assert outcome["issue"]
    for issue in outcome["issue"]:
        assert issue["severity"] in ("information", "warning")
        assert issue["details"]["text"]
        for coding in issue["details"].get("coding", []):
            assert coding["system"] == CARTOX_CS
            assert coding["code"] in NOTE_CODES
        for expression in issue.get("expression", []):
            assert expression.startswith("Bundle.entry[")
    codes = {c["code"] for i in outcome["issue"] for c in i["details"].get("coding", [])}
    assert "ignored-resource-type" in codes  # Practitioner, Organization, Encounter, Condition
    if result.scenario.source == "full":  # the full export runs to day 29, after every scenario's asOf
        assert "dropped-future" in codes


# --------------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------------
def test_grade_0_has_no_card_and_other_findings_one(result):
    carded = [_assessment_code(ra) for ra in result.risk_assessments if _grade(ra["prediction"][0]) != "grade-0"]
    # cytopenia: a card from grade 3 (grades 1-2 are expected after lymphodepletion), none while not-assessable
    carded += [code for code in CYTOPENIA if _grade(result.assessment(code)["prediction"][0]) in ("grade-3", "grade-4")]
    if _grade(result.assessment(REGIMEN)["prediction"][0]) not in ("monitor", "surveillance", "pht-assess"):
        carded.append(REGIMEN)
    exposure = result.assessment(EXPOSURE)
    if exposure.get("basis"):  # glucocorticoids counted: a card with the totals
        carded.append(EXPOSURE)
    if _icaht_worst(result.assessment(ICAHT)) >= 1:  # a phase of grade 1 or more
        carded.append(ICAHT)
    assert sorted(card["source"]["topic"]["code"] for card in result.cards) == sorted(carded)


def test_indicator_matches_grade(result):
    expected = {"not-assessable": "info", "grade-1": "warning", "grade-2": "warning",
                "grade-3": "critical", "grade-4": "critical", "grade-5": "critical"}
    for card in result.cards:
        code = card["source"]["topic"]["code"]
        if code in (EXPOSURE, REGIMEN):  # information, or a warning (a threshold first reached; a state asking for action)
            assert card["indicator"] in ("info", "warning")
            continue
        if code == ICAHT:  # by the worst phase
            assert card["indicator"] == expected[f"grade-{_icaht_worst(result.assessment(ICAHT))}"]
            continue
        grade = _grade(result.assessment(code)["prediction"][0])
        assert card["indicator"] == expected[grade]


def _icaht_worst(ra: dict[str, Any]) -> int:
    return max((int(code[-1]) for code in map(_grade, ra["prediction"]) if code.startswith("grade-")), default=-1)


def test_icaht_risk_assessment(result):
    """prediction[0] early ICAHT (day 0-30), prediction[1] late (from day 31), each with its period and scale;
    basis only the neutrophil counts sent; not-assessable always incomplete with the reason said."""
    ra = result.assessment(ICAHT)
    early, late = ra["prediction"]
    sent = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in result.input_bundle["entry"]}
    for basis in ra.get("basis", []):
        resource = sent[basis["reference"]]
        assert resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] == "751-8"
    for prediction in (early, late):
        assert _grade(prediction) in GRADE_CODES - {"grade-5"}
        assert _extensions(prediction, "grading-scale") == ["EHA-EBMT-2023"]
        if _grade(prediction) == "not-assessable":
            assert _extensions(prediction, "data-completeness") == ["incomplete"]
            assert prediction["rationale"].startswith("Cannot assess: ")
    if result.scenario.infusion is None:
        assert "whenPeriod" not in early and _grade(early) == _grade(late) == "not-assessable"
        return
    assert _time(early["whenPeriod"]["start"]) == _time(result.scenario.infusion)
    assert _time(early["whenPeriod"]["end"]) <= _time(result.scenario.as_of)
    # every scenario is before day 31: the late phase is not reached, its period only starts
    assert _grade(late) == "not-assessable" and "not yet reached" in late["rationale"]
    assert set(late["whenPeriod"]) == {"start"} and _time(late["whenPeriod"]["start"]) > _time(result.scenario.as_of)


def test_glucocorticoid_exposure_risk_assessment(result):
    ra = result.assessment(EXPOSURE)
    (prediction,) = ra["prediction"]  # the metrics kind's one slot: the outcome over day 0 -> evaluation time
    assert _grade(prediction) in EXPOSURE_OUTCOMES
    assert _time(prediction["whenPeriod"]["end"]) == _time(result.scenario.as_of)
    sent = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in result.input_bundle["entry"]}
    for basis in ra.get("basis", []):
        assert basis["reference"].startswith("MedicationAdministration/") and basis["reference"] in sent
    (cumulative,) = _extensions(ra, "cumulative-dexamethasone-equivalent")
    assert cumulative["code"] == "mg" and cumulative["value"] >= 0
    days = _extensions(ra, "exposure-days")
    assert days and days[0] >= (1 if ra.get("basis") else 0)
    thresholds = [coding["code"] for coding in _extensions(ra, "glucocorticoid-threshold")]
    if "s000-cumulative-high" in thresholds:
        assert cumulative["value"] > 35 and _grade(prediction) == "high-exposure"


def test_card_summaries_are_short(result):
    for card in result.cards:
        assert 0 < len(card["summary"]) < 140


def test_card_shape(result):
    care_plans = result.of_type("CarePlan")
    for index, card in enumerate(result.cards):
        assert uuid.UUID(card["uuid"])
        assert card["source"]["label"]
        assert card["selectionBehavior"] == "at-most-one"
        assert card["overrideReasons"]
        (suggestion,) = card["suggestions"]
        assert suggestion["label"]
        assert all(a["type"] == "create" for a in suggestion["actions"])
        resources = [a["resource"] for a in suggestion["actions"]]
        assert resources[0] == result.assessment(card["source"]["topic"]["code"])
        # the merged CarePlan is created by the first card only; the others of its findings say where the plan is
        assert resources[1:] == (care_plans if index == 0 else [])
        in_plan = care_plans and {"reference": f"urn:uuid:{resources[0]['id']}"} in care_plans[0]["supportingInfo"]
        if index > 0 and in_plan:
            assert "**Management:** see the" in card["detail"]


def test_cards_are_ordered_most_severe_first(result):
    """The card carrying the plan first, then critical, warning, information."""
    rank = {"critical": 0, "warning": 1, "info": 2}
    ranks = [rank[card["indicator"]] for card in result.cards[1:]]
    assert ranks == sorted(ranks)
    if result.of_type("CarePlan"):
        assert len(result.cards[0]["suggestions"][0]["actions"]) == 2


def test_no_null_or_empty_fields_in_cds_responses(result, find_empty):
    if not result.cards:
        assert result.cards_document == {"cards": []}  # CDS Hooks: the cards array is required, even empty
    else:
        assert find_empty(result.cards_document) == []
    assert find_empty(result.bundle) == []



# --------------------------------------------------------------------------------------------------
# Periods, plan statuses and card safety (issue 5)
# --------------------------------------------------------------------------------------------------
def _periods(value: Any, path: str = "$"):
    if isinstance(value, dict):
        if isinstance(value.get("start"), str) and isinstance(value.get("end"), str):
            yield path, value
        for key, item in value.items():
            yield from _periods(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _periods(item, f"{path}[{index}]")


def test_no_period_starts_after_it_ends(result):
    for path, period in _periods(result.bundle):
        assert _time(period["start"]) <= _time(period["end"]), path


def _plan_status(detail: dict[str, Any]) -> tuple[str, str, bool]:
    extensions = {e["url"].rsplit("/", 1)[1]: e for e in detail.get("extension", [])}
    return (extensions["plan-status"]["valueCode"], extensions["activity-role"]["valueCode"],
            extensions["activity-condition-met"]["valueBoolean"])


def test_drug_activities_say_whether_to_give_now(result):
    for care_plan in result.of_type("CarePlan"):
        drugs = [a["detail"] for a in care_plan["activity"] if a["detail"]["kind"] == "MedicationRequest"]
        give_now_roles = []
        for detail in drugs:
            status, role, met = _plan_status(detail)
            assert role in {"first-line", "second-line", "alternative", "adjunct"}
            if status == "give-now":
                assert detail["status"] == "not-started" and not detail.get("doNotPerform")
                assert met, f"give-now with its condition not met: {detail['description']}"
                assert role != "alternative", "an alternative is never give-now beside the drug it replaces"
                give_now_roles.append(role)
            elif status == "conditional":
                assert detail["status"] == "on-hold" and detail["statusReason"]["text"]
                assert "quantity" not in detail or detail["quantity"]["value"] > 0
            else:
                assert status == "blocked" and detail["doNotPerform"] is True and detail["statusReason"]["text"]
        # a second-line drug is given now only instead of the first line, never beside it
        assert not ({"first-line", "second-line"} <= set(give_now_roles))


_MARKUP = re.compile(r"[<>\[\]*_`#!|&]")


def _input_strings(value: Any):
    if isinstance(value, dict):
        for item in value.values():
            yield from _input_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _input_strings(item)
    elif isinstance(value, str) and len(value) >= 3 and _MARKUP.search(value):
        yield value


def test_no_input_string_unescaped_in_any_card(result):
    strings = set(_input_strings(result.input_bundle))
    for card in result.cards:
        for text in strings:
            assert text not in card["detail"], f"input {text!r} reached the card unescaped"
            assert text not in card["summary"]


def test_cards_are_short_enough_to_read(result):
    for card in result.cards:
        lines = [line for line in card["detail"].splitlines() if line.strip()]
        assert len(lines) <= 25, card["detail"]
        assert not re.search(r"\d\d:\d\d:\d\d|\.\d{6}", card["detail"]), "times to the minute, no seconds or microseconds"
