"""Conformance resources in fhir_profiles/: parse with fhir.resources R4B and agree with each other.

The directory is found through service.resources.profiles_dir(), so the test checks the copy
that ships inside the installed package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from service.resources import profiles_dir

# The JSON files use the default canonical base; production replaces it (CARTOX_CANONICAL_BASE).
BASE = "http://cartox.example.org/fhir"
CODESYSTEM_URL = f"{BASE}/CodeSystem/cartox"
FHIR_CORE = "http://hl7.org/fhir/StructureDefinition/"

# file name prefix -> resourceType, and the canonical path segment used in its url
KINDS = {
    "CodeSystem": "CodeSystem",
    "ValueSet": "ValueSet",
    "StructureDefinition": "StructureDefinition",
}


def _dir() -> Path:
    d = Path(profiles_dir())
    assert d.is_dir(), f"profiles_dir() is not a directory: {d}"
    return d


def _json_files() -> list[Path]:
    return sorted(_dir().glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _by_type(resource_type: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in _json_files() if (d := _load(p))["resourceType"] == resource_type]


def _pascal(id_: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in id_.split("-"))


def _codesystem() -> dict:
    [(_, cs)] = [(p, d) for p, d in _by_type("CodeSystem") if d["url"] == CODESYSTEM_URL]
    return cs


def _file_ids() -> list[str]:
    return [p.name for p in _json_files()]


def test_directory_has_the_expected_resources():
    names = set(_file_ids())
    expected = {
        "CodeSystem-cartox.json",
        "ValueSet-astct-grade.json",
        "ValueSet-cartox-grading-assessment.json",
        "ValueSet-grading-scale.json",
        "ValueSet-cartox-care-activity.json",
        "ValueSet-oxygen-delivery-device-code.json",
        "ValueSet-plan-status.json",
        "ValueSet-activity-role.json",
        "StructureDefinition-rule-set-version.json",
        "StructureDefinition-guideline-version.json",
        "StructureDefinition-data-completeness.json",
        "StructureDefinition-grading-scale.json",
        "StructureDefinition-missing-data.json",
        "StructureDefinition-plan-status.json",
        "StructureDefinition-activity-role.json",
        "StructureDefinition-activity-condition.json",
        "StructureDefinition-activity-condition-met.json",
        "StructureDefinition-cartox-risk-assessment.json",
        "StructureDefinition-cartox-care-plan.json",
        "StructureDefinition-cartox-oxygen-device-observation.json",
        "StructureDefinition-cartox-car-t-infusion.json",
        # neurological assessments (ICANS input)
        "ValueSet-neuro-assessment-code.json",
        "ValueSet-ice-item-code.json",
        "ValueSet-capd-item-code.json",
        "ValueSet-loc-astct-answer.json",
        "ValueSet-seizure-astct-answer.json",
        "ValueSet-motor-weakness-astct-answer.json",
        "ValueSet-cerebral-edema-astct-answer.json",
        "StructureDefinition-cartox-ice-score.json",
        "StructureDefinition-cartox-capd-score.json",
        "StructureDefinition-cartox-loc-observation.json",
        "StructureDefinition-cartox-seizure-observation.json",
        "StructureDefinition-cartox-motor-weakness-observation.json",
        "StructureDefinition-cartox-cerebral-edema-observation.json",
        # glucocorticoid exposure (metrics finding kind)
        "StructureDefinition-cartox-glucocorticoid-exposure.json",
        "StructureDefinition-cumulative-dexamethasone-equivalent.json",
        "StructureDefinition-cumulative-methylprednisolone-equivalent-per-kg.json",
        "StructureDefinition-exposure-days.json",
        "StructureDefinition-first-dose-day.json",
        "StructureDefinition-glucocorticoid-threshold.json",
        "ValueSet-glucocorticoid-exposure-outcome.json",
        "ValueSet-glucocorticoid-threshold.json",
        # phased grading (ICAHT)
        "StructureDefinition-cartox-phased-risk-assessment.json",
        # the PHT prednisone regimen (regimen finding kind)
        "StructureDefinition-cartox-regimen-status.json",
        "ValueSet-pht-state.json",
        "ValueSet-disease-response-answer.json",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("name", _file_ids())
def test_parses_with_r4b_model(name):
    data = _load(_dir() / name)
    model = get_fhir_model_class(data["resourceType"])
    resource = model.model_validate(data)
    # nothing in the file is silently dropped by the model
    assert json.loads(resource.model_dump_json(exclude_none=True)) == data


@pytest.mark.parametrize("name", _file_ids())
def test_file_name_id_and_url_agree(name):
    data = _load(_dir() / name)
    rtype = data["resourceType"]
    assert rtype in KINDS, f"{name}: unexpected resourceType {rtype}"
    assert name == f"{rtype}-{data['id']}.json"
    assert data["url"] == f"{BASE}/{KINDS[rtype]}/{data['id']}"
    assert re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,254}", data["name"]), "name is not computable"


def test_structure_definitions_url_base_and_name_match_file():
    sds = _by_type("StructureDefinition")
    assert sds
    for path, sd in sds:
        assert sd["url"].startswith(f"{BASE}/StructureDefinition/"), path.name
        stem = path.stem.removeprefix("StructureDefinition-")
        assert sd["id"] == stem, path.name
        assert sd["url"].rsplit("/", 1)[1] == stem, path.name
        assert sd["name"] == _pascal(stem), f"{path.name}: name {sd['name']} != {_pascal(stem)}"
        assert sd["fhirVersion"] == "4.0.1", path.name
        assert sd["derivation"] == "constraint", path.name
        assert "snapshot" not in sd, f"{path.name}: differential only"
        assert sd["differential"]["element"], path.name


def test_extensions_fix_their_own_url_and_one_value_type():
    exts = [(p, d) for p, d in _by_type("StructureDefinition") if d["type"] == "Extension"]
    assert {d["id"] for _, d in exts} >= {
        "rule-set-version", "guideline-version", "data-completeness", "grading-scale", "missing-data",
        "plan-status", "activity-role", "activity-condition", "activity-condition-met", *GLUCOCORTICOID_EXTENSIONS}
    for path, sd in exts:
        assert sd["kind"] == "complex-type", path.name
        assert sd["baseDefinition"] == f"{FHIR_CORE}Extension", path.name
        assert sd.get("context"), f"{path.name}: extension without context"
        els = {e["id"]: e for e in sd["differential"]["element"]}
        assert els["Extension.url"]["fixedUri"] == sd["url"], path.name
        value = els["Extension.value[x]"]
        assert len(value["type"]) == 1 and value.get("min") == 1, path.name


def test_profiles_are_resource_constraints_on_core():
    profiles = [(p, d) for p, d in _by_type("StructureDefinition") if d["kind"] == "resource"]
    assert {d["id"]: d["type"] for _, d in profiles} == {
        "cartox-risk-assessment": "RiskAssessment",
        "cartox-glucocorticoid-exposure": "RiskAssessment",
        "cartox-phased-risk-assessment": "RiskAssessment",
        "cartox-regimen-status": "RiskAssessment",
        "cartox-care-plan": "CarePlan",
        "cartox-oxygen-device-observation": "Observation",
        "cartox-car-t-infusion": "MedicationAdministration",
        "cartox-ice-score": "Observation",
        "cartox-capd-score": "Observation",
        "cartox-loc-observation": "Observation",
        "cartox-seizure-observation": "Observation",
        "cartox-motor-weakness-observation": "Observation",
        "cartox-cerebral-edema-observation": "Observation",
    }
    for path, sd in profiles:
        assert sd["baseDefinition"] == f"{FHIR_CORE}{sd['type']}", path.name
        assert sd.get("description"), path.name
        for el in sd["differential"]["element"]:
            assert el["path"].split(".")[0] == sd["type"], f"{path.name}: {el['id']}"
            assert el["id"].split(".")[0].split(":")[0] == sd["type"], f"{path.name}: {el['id']}"


# Glucocorticoid exposure (the metrics finding kind): its outcome codes, threshold codes and value extensions.
GLUCOCORTICOID_OUTCOMES = ("high-exposure", "low-exposure", "no-exposure", "not-assessable")
GLUCOCORTICOID_THRESHOLDS = ("s000-cumulative-high", "s000-early", "s000-prolonged", "karschnia-long",
                             "s002-pediatric-high", "s002-early", "s002-prolonged")
GLUCOCORTICOID_METRICS = ("cumulative-dexamethasone-equivalent", "cumulative-methylprednisolone-equivalent-per-kg",
                          "exposure-days", "first-dose-day")
GLUCOCORTICOID_EXTENSIONS = (*GLUCOCORTICOID_METRICS, "glucocorticoid-threshold")
TAPER_CONDITIONS = ("glucocorticoid-running", "crs-grade-1-or-lower", "icans-grade-1-or-lower", "grades-allow-taper")


# The only codes that are not lower-case kebab-case: the grading scales, whose codes are the guideline ids
# of the grading rules (the service sends rule.guideline_id in the grading-scale extension).
GRADING_SCALES = {"ASTCT-2019", "CTCAE-5.0", "EHA-EBMT-2023"}


def test_codesystem_concepts_are_unique_and_defined():
    cs = _codesystem()
    assert cs["status"] == "active"
    assert cs["content"] == "complete"
    assert cs["caseSensitive"] is True
    codes = [c["code"] for c in cs["concept"]]
    assert len(codes) == len(set(codes)), "duplicate codes"
    assert cs.get("count", len(codes)) == len(codes)
    for c in cs["concept"]:
        assert c.get("display") and c.get("definition"), c["code"]
        assert "concept" not in c, f"{c['code']}: the code system is flat"
        if c["code"] in GRADING_SCALES:
            assert re.fullmatch(r"[A-Z]+(-[A-Z]+)*-[0-9]+(\.[0-9]+)*", c["code"]), c["code"]
        else:
            assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c["code"]), c["code"]


def test_codesystem_has_the_codes_the_service_relies_on():
    codes = {c["code"] for c in _codesystem()["concept"]}
    required = {
        "crs-grade-astct", "icans-grade-astct", "icaht-grade", *GRADING_SCALES,
        "grade-0", "grade-1", "grade-2", "grade-3", "grade-4", "grade-5", "not-assessable",
        "oxygen-delivery-device", "ice-total", "ice-orientation", "ice-naming", "ice-commands",
        "ice-writing", "ice-attention", "capd-total", "loc-astct",
        "capd-eye-contact", "capd-purposeful-actions", "capd-awareness-of-surroundings",
        "capd-communicates-needs-and-wants", "capd-restless", "capd-inconsolable", "capd-underactive",
        "capd-slow-response",
        "seizure-astct", "motor-weakness-astct", "cerebral-edema-astct",
        "alert", "awakens-spontaneously", "awakens-to-voice", "awakens-to-tactile", "unarousable",
        "rapidly-resolving", "eeg-resolved-with-intervention", "prolonged-or-repetitive",
        "focal-deep-weakness",
        "focal-local-edema", "diffuse-edema", "decerebrate-or-decorticate-posturing",
        "cranial-nerve-vi-palsy", "papilledema", "cushings-triad",
        "cart-investigational",
        "supportive-care", "infection-workup", "alert-icu", "transfer-icu", "salvage-therapy",
        "weight-based-dosing",
        "alert-neurology", "ice-monitoring", "elevate-head-of-bed", "neurologic-workup",
        "treat-concurrent-crs", "hyperventilation",
        # plan status, role and conditions of CarePlan drug activities
        "give-now", "conditional", "blocked", "first-line", "second-line", "alternative", "adjunct",
        "none", "replaced", "symptoms-persist", "fever-lasts", "no-improvement", "tocilizumab-failed",
        "hypotension-persists-after-tocilizumab",
        "concurrent-crs", "no-concurrent-crs", "tocilizumab-refractory", "no-crs-or-tocilizumab-refractory",
        "seizure", "papilloedema", "raised-icp", "team-decides",
        # glucocorticoid exposure (metrics kind) and the taper activity with its conditions
        "glucocorticoid-exposure", *GLUCOCORTICOID_OUTCOMES, *GLUCOCORTICOID_THRESHOLDS,
        "taper-glucocorticoids", *TAPER_CONDITIONS,
        # cytopenia grading, the PHT regimen (states, activities) and its inputs
        "anemia-grade-ctcae", "thrombocytopenia-grade-ctcae", "neutropenia-grade-ctcae", "pht-status",
        "monitor", "pht-assess", "surveillance", "standard-support", "candidate", "prednisone-full", "prednisone-half",
        "taper", "off", "recurrence", "excluded",
        "pht-standard-support", "monitor-glucose", "monitor-blood-pressure", "prophylaxis-calcium", "prophylaxis-gastric",
        "prophylaxis-antifungal", "pht-stop-prednisone", "pht-monitor-counts", "pht-no-prednisone",
        "disease-response", "complete-remission", "partial-response", "stable-disease", "progressive-disease",
        "clonal-hematopoiesis",
        "input-not-json", "input-not-bundle", "input-bad-parameter",
        "input-unsupported-media-type", "input-body-too-large", "input-wrong-type",
        "input-multiple-patients", "input-invalid-resource", "input-not-acceptable",
        "prefetch-missing", "hook-unsupported", "not-found", "method-not-allowed",
        "internal-error",
        "ignored-resource-type", "ignored-code", "ignored-status", "flagged-status",
        "dropped-implausible", "dropped-unit", "dropped-time", "dropped-future", "dropped-value",
    }
    assert required <= codes, f"missing: {sorted(required - codes)}"


def test_valueset_codes_exist_in_codesystem():
    cs = _codesystem()
    displays = {c["code"]: c["display"] for c in cs["concept"]}
    valuesets = _by_type("ValueSet")
    assert valuesets
    for path, vs in valuesets:
        includes = vs["compose"]["include"]
        assert includes, path.name
        for inc in includes:
            if inc["system"] != CODESYSTEM_URL:
                continue
            assert inc.get("concept"), f"{path.name}: include all of cartox is not intended"
            for concept in inc["concept"]:
                code = concept["code"]
                assert code in displays, f"{path.name}: {code} not in CodeSystem cartox"
                if "display" in concept:
                    assert concept["display"] == displays[code], f"{path.name}: {code} display"


CARE_ACTIVITIES = (
    "supportive-care", "infection-workup", "alert-icu", "transfer-icu", "salvage-therapy", "weight-based-dosing",
    "alert-neurology", "ice-monitoring", "elevate-head-of-bed", "neurologic-workup", "treat-concurrent-crs",
    "hyperventilation", "taper-glucocorticoids",
    # the PHT prednisone regimen: support first, monitoring and prophylaxis while on prednisone, stop, exclusion
    "pht-standard-support", "monitor-glucose", "monitor-blood-pressure", "prophylaxis-calcium", "prophylaxis-gastric",
    "prophylaxis-antifungal", "pht-stop-prednisone", "pht-monitor-counts", "pht-no-prednisone")


def test_valueset_contents():
    def codes(vs_id):
        [(_, vs)] = [(p, d) for p, d in _by_type("ValueSet") if d["id"] == vs_id]
        return {(inc["system"], c["code"]) for inc in vs["compose"]["include"]
                for c in inc["concept"]}

    cartox = CODESYSTEM_URL
    assert codes("astct-grade") == {(cartox, f"grade-{n}") for n in range(6)} | {
        (cartox, "not-assessable")}
    assert codes("cartox-care-activity") == {(cartox, c) for c in CARE_ACTIVITIES}
    assert codes("cartox-grading-assessment") == {(cartox, code) for code in (
        "crs-grade-astct", "icans-grade-astct", "icaht-grade", "anemia-grade-ctcae", "thrombocytopenia-grade-ctcae", "neutropenia-grade-ctcae")}
    assert codes("glucocorticoid-exposure-outcome") == {(cartox, c) for c in GLUCOCORTICOID_OUTCOMES}
    assert codes("glucocorticoid-threshold") == {(cartox, c) for c in GLUCOCORTICOID_THRESHOLDS}
    assert codes("grading-scale") == {(cartox, c) for c in GRADING_SCALES}
    assert codes("plan-status") == {(cartox, c) for c in ("give-now", "conditional", "blocked")}
    assert codes("activity-role") == {(cartox, c) for c in ("first-line", "second-line", "alternative", "adjunct")}
    assert codes("oxygen-delivery-device-code") == {
        ("http://loinc.org", "107117-4"), ("http://loinc.org", "41925-9"),
        (cartox, "oxygen-delivery-device")}
    assert codes("neuro-assessment-code") == {(cartox, c) for c in (
        "ice-total", "capd-total", "loc-astct", "seizure-astct", "motor-weakness-astct",
        "cerebral-edema-astct")}
    assert codes("ice-item-code") == {(cartox, c) for c in (
        "ice-orientation", "ice-naming", "ice-commands", "ice-writing", "ice-attention")}
    assert codes("capd-item-code") == {(cartox, c) for c in (
        "capd-eye-contact", "capd-purposeful-actions", "capd-awareness-of-surroundings",
        "capd-communicates-needs-and-wants", "capd-restless", "capd-inconsolable", "capd-underactive",
        "capd-slow-response")}
    assert codes("loc-astct-answer") == {(cartox, c) for c in (
        "alert", "awakens-spontaneously", "awakens-to-voice", "awakens-to-tactile", "unarousable")}
    assert codes("seizure-astct-answer") == {(cartox, c) for c in (
        "rapidly-resolving", "eeg-resolved-with-intervention", "prolonged-or-repetitive")}
    assert codes("motor-weakness-astct-answer") == {(cartox, "focal-deep-weakness")}
    assert codes("cerebral-edema-astct-answer") == {(cartox, c) for c in (
        "focal-local-edema", "diffuse-edema", "decerebrate-or-decorticate-posturing",
        "cranial-nerve-vi-palsy", "papilledema", "cushings-triad")}


def _canonical_refs(obj):
    """Every canonical the differentials point at: extension profiles, bindings, target profiles."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("profile", "targetProfile") and isinstance(value, list):
                yield from value
            elif key == "valueSet" and isinstance(value, str):
                yield value
            else:
                yield from _canonical_refs(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _canonical_refs(item)


def test_internal_canonical_references_resolve():
    known = {_load(p)["url"] for p in _json_files()}
    unresolved = []
    for path, sd in _by_type("StructureDefinition"):
        for url in _canonical_refs(sd["differential"]):
            if url.startswith(BASE) and url not in known:
                unresolved.append(f"{path.name}: {url}")
    assert not unresolved, unresolved


def test_constraints_have_unique_keys_and_expressions():
    seen = {}
    for path, sd in _by_type("StructureDefinition"):
        for el in sd["differential"]["element"]:
            for c in el.get("constraint", []):
                assert c["key"].startswith("ctx-"), f"{path.name}: {c['key']}"
                assert c.get("expression") and c.get("human"), f"{path.name}: {c['key']}"
                assert c["key"] not in seen, f"{c['key']} in {path.name} and {seen.get(c['key'])}"
                seen[c["key"]] = path.name


def test_readme_lists_every_file():
    readme = (_dir() / "README.md").read_text(encoding="utf-8")
    for name in _file_ids():
        assert name in readme, f"README.md does not mention {name}"
    assert BASE in readme and "CARTOX_CANONICAL_BASE" in readme


# ---------------------------------------------------------------- the output profiles (RiskAssessment, CarePlan)

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD_OF_GRADE = {
    "crs-grade-astct": {n: f"D89.83{n}" for n in range(1, 5)},
    "icans-grade-astct": {n: f"G92.0{n}" for n in range(1, 5)},
}


def _sd(sd_id: str) -> dict:
    return _load(_dir() / f"StructureDefinition-{sd_id}.json")


def _elements(sd_id: str) -> dict[str, dict]:
    return {e["id"]: e for e in _sd(sd_id)["differential"]["element"]}


def _constraints(sd_id: str) -> dict[str, dict]:
    return {c["key"]: c for e in _sd(sd_id)["differential"]["element"] for c in e.get("constraint", [])}


def _vs_url(vs_id: str) -> str:
    return f"{BASE}/ValueSet/{vs_id}"


def _vs_codes(vs_id: str) -> set[str]:
    vs = _load(_dir() / f"ValueSet-{vs_id}.json")
    return {c["code"] for inc in vs["compose"]["include"] for c in inc["concept"]}


def _quoted(expression: str) -> set[str]:
    return set(re.findall(r"'([^']*)'", expression))


def test_risk_assessment_profile_is_the_grading_kind():
    sd = _sd("cartox-risk-assessment")
    els = _elements("cartox-risk-assessment")
    # each finding kind has its own profile; windows are the rules' own
    assert "own profile" in sd["description"] and "grading" in sd["description"]
    assert "24 h" not in sd["description"] and "24 h" not in json.dumps(sd["differential"])
    # code: a cartox coding (ctx-ra-1, no enumerated codes) bound to the grading assessments
    ra1 = _constraints("cartox-risk-assessment")["ctx-ra-1"]
    assert _quoted(ra1["expression"]) == {CODESYSTEM_URL}, "ctx-ra-1 must not enumerate codes"
    assert els["RiskAssessment.code"]["min"] == 1
    assert els["RiskAssessment.code.coding"]["slicing"]["discriminator"] == [{"type": "value", "path": "system"}]
    cartox = els["RiskAssessment.code.coding:cartox"]
    assert (cartox["min"], cartox["max"]) == (1, "1")
    assert cartox["binding"] == {"strength": "required", "valueSet": _vs_url("cartox-grading-assessment")}
    assert els["RiskAssessment.code.coding:cartox.system"]["fixedUri"] == CODESYSTEM_URL
    # exactly two predictions: current window, maximum since day 0
    prediction = els["RiskAssessment.prediction"]
    assert (prediction["min"], prediction["max"]) == (2, "2")
    assert "prediction[0]" in prediction["definition"] and "prediction[1]" in prediction["definition"]
    assert "since day 0" in prediction["definition"] and "rule's" in prediction["definition"]
    # prediction extensions: data-completeness, then grading-scale
    slices = [(e["sliceName"], e["min"], e["max"], e["type"][0]["profile"]) for e in els.values()
              if e["path"] == "RiskAssessment.prediction.extension" and "sliceName" in e]
    assert slices == [
        ("dataCompleteness", 1, "1", [f"{BASE}/StructureDefinition/data-completeness"]),
        ("gradingScale", 1, "1", [f"{BASE}/StructureDefinition/grading-scale"]),
    ]
    # outcome: the generic grade slice and the ICD-10-CM slice of CRS and ICANS
    grade = els["RiskAssessment.prediction.outcome.coding:grade"]
    assert (grade["min"], grade["max"]) == (1, "1")
    assert grade["binding"] == {"strength": "required", "valueSet": _vs_url("astct-grade")}
    assert els["RiskAssessment.prediction.outcome.coding:grade.system"]["fixedUri"] == CODESYSTEM_URL
    assert not [i for i in els if ":astctGrade" in i], "the grade slice is generic"
    icd = els["RiskAssessment.prediction.outcome.coding:icd10cm"]
    assert els["RiskAssessment.prediction.outcome.coding:icd10cm.system"]["fixedUri"] == ICD10CM
    [ra7] = icd["constraint"]
    assert ra7["key"] == "ctx-ra-7"
    assert _quoted(ra7["expression"]) == {code for codes in ICD_OF_GRADE.values() for code in codes.values()}


def test_grading_scale_extension():
    sd = _sd("grading-scale")
    els = _elements("grading-scale")
    assert sd["url"] == f"{BASE}/StructureDefinition/grading-scale"
    assert sd["context"] == [{"type": "element", "expression": "RiskAssessment.prediction"}]
    value = els["Extension.value[x]"]
    assert [t["code"] for t in value["type"]] == ["code"] and value["min"] == 1
    assert value["binding"] == {"strength": "required", "valueSet": _vs_url("grading-scale")}
    assert els["Extension.extension"]["max"] == "0"
    assert _vs_codes("grading-scale") == GRADING_SCALES
    displays = {c["code"]: c["display"] for c in _codesystem()["concept"]}
    assert "Lee" in displays["ASTCT-2019"] and "2019" in displays["ASTCT-2019"]
    assert displays["CTCAE-5.0"] == "Common Terminology Criteria for Adverse Events v5.0"


def test_grade_valueset_is_shared_by_every_grading_scale():
    vs = _load(_dir() / "ValueSet-astct-grade.json")
    assert "every grading scale" in vs["title"] + vs["description"]
    assert _vs_codes("astct-grade") == {f"grade-{n}" for n in range(6)} | {"not-assessable"}


def test_care_plan_profile_is_the_merged_plan():
    sd = _sd("cartox-care-plan")
    els = _elements("cartox-care-plan")
    assert "merged" in sd["description"] and "reasonCode" in sd["description"]
    supporting = els["CarePlan.supportingInfo"]
    assert (supporting["min"], supporting["max"]) == (1, "*")
    # the grading findings and the glucocorticoid exposure finding (its de-escalation plan, e.g. the taper)
    assert supporting["type"][0]["targetProfile"] == [f"{BASE}/StructureDefinition/cartox-risk-assessment",
                                                      f"{BASE}/StructureDefinition/cartox-glucocorticoid-exposure",
                                                      f"{BASE}/StructureDefinition/cartox-regimen-status"]
    assert "every" in supporting["definition"]
    assert els["CarePlan.title"]["min"] == 1
    reason = els["CarePlan.activity.detail.reasonCode"]
    assert (reason["min"], reason["max"]) == (1, "1")
    assert "icans-grade-astct" in reason["definition"] and "ICANS grade 3" in reason["definition"]
    finding = els["CarePlan.activity.detail.reasonCode.coding:finding"]
    assert (finding["min"], finding["max"]) == (1, "1")
    assert finding["binding"]["valueSet"] == _vs_url("cartox-grading-assessment")
    assert els["CarePlan.activity.detail.reasonCode.coding:finding.system"]["fixedUri"] == CODESYSTEM_URL
    assert els["CarePlan.activity.detail.reasonCode.text"]["min"] == 1
    # ctx-cp-2 names exactly the codes of the care activity ValueSet
    cp2 = _constraints("cartox-care-plan")["ctx-cp-2"]
    assert _quoted(cp2["expression"]) - {CODESYSTEM_URL, "MedicationRequest"} == set(CARE_ACTIVITIES)


# Instances shaped as the service builds them: a CRS grade 3 and an ICANS grade 3 finding, and the merged plan.

def _prediction(grade: int, assessment: str, start: str, end: str) -> dict:
    coding = [{"system": CODESYSTEM_URL, "code": f"grade-{grade}", "display": f"Grade {grade}"}]
    if grade in ICD_OF_GRADE[assessment]:
        coding.append({"system": ICD10CM, "code": ICD_OF_GRADE[assessment][grade]})
    return {
        "extension": [{"url": f"{BASE}/StructureDefinition/data-completeness", "valueCode": "complete"},
                      {"url": f"{BASE}/StructureDefinition/grading-scale", "valueCode": "ASTCT-2019"}],
        "outcome": {"coding": coding},
        "whenPeriod": {"start": start, "end": end},
    }


def _risk_assessment(assessment: str, current: int, maximum: int) -> dict:
    end = "2026-03-06T12:00:00+01:00"
    return {
        "resourceType": "RiskAssessment",
        "id": f"ra-{assessment}",
        "meta": {"profile": [f"{BASE}/StructureDefinition/cartox-risk-assessment"]},
        "extension": [{"url": f"{BASE}/StructureDefinition/rule-set-version", "valueString": "1.0.0+3f9a2c1b7e4d"},
                      {"url": f"{BASE}/StructureDefinition/guideline-version", "valueString": "seed-S004"}],
        "status": "final",
        "code": {"coding": [{"system": CODESYSTEM_URL, "code": assessment}]},
        "subject": {"reference": "Patient/example"},
        "occurrenceDateTime": end,
        "method": {"text": "Rule example 1.0.0; guideline seed-S004"},
        "basis": [{"reference": "Observation/temp-1"}],
        "prediction": [_prediction(current, assessment, "2026-03-05T12:00:00+01:00", end),
                       _prediction(maximum, assessment, "2026-03-02T10:00:00+01:00", end)],
    }


def _care_plan() -> dict:
    def reason(code, text):
        return [{"coding": [{"system": CODESYSTEM_URL, "code": code}], "text": text}]
    return {
        "resourceType": "CarePlan",
        "id": "cp-example",
        "meta": {"profile": [f"{BASE}/StructureDefinition/cartox-care-plan"]},
        "status": "active",
        "intent": "proposal",
        "title": "Management of CRS grade 3, ICANS grade 3",
        "subject": {"reference": "Patient/example"},
        "supportingInfo": [{"reference": "RiskAssessment/ra-crs-grade-astct"},
                           {"reference": "RiskAssessment/ra-icans-grade-astct"}],
        "activity": [
            {"detail": {"kind": "CommunicationRequest", "status": "not-started",
                        "code": {"coding": [{"system": CODESYSTEM_URL, "code": "alert-neurology"}]},
                        "reasonCode": reason("icans-grade-astct", "ICANS grade 3"),
                        "description": "Alert the neurologist."}},
            {"detail": {"kind": "MedicationRequest", "status": "not-started",
                        "productCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                               "code": "3264"}], "text": "dexamethasone"},
                        "reasonCode": reason("icans-grade-astct", "ICANS grade 3"),
                        "description": "Dexamethasone 20 mg IV every 6 h."}},
            {"detail": {"kind": "ServiceRequest", "status": "not-started",
                        "code": {"coding": [{"system": CODESYSTEM_URL, "code": "transfer-icu"}]},
                        "reasonCode": reason("crs-grade-astct", "CRS grade 3"),
                        "description": "Transfer to the ICU."}},
        ],
    }


def _failing(resource: dict, sd_id: str, fhirpath) -> list[str]:
    from fhirpathpy.models import models

    failing = []
    for el in _sd(sd_id)["differential"]["element"]:
        path = el["path"].split(".", 1)[1] if "." in el["path"] else None
        if ":icd10cm" in el["id"]:
            path += f".where(system = '{ICD10CM}')"
        for c in el.get("constraint", []):
            expression = c["expression"] if path is None else f"{path}.all({c['expression']})"
            if fhirpath.evaluate(resource, expression, {"resource": resource}, models["r4"]) != [True]:
                failing.append(c["key"])
    return sorted(failing)


def _mutate(resource: dict, change) -> dict:
    data = json.loads(json.dumps(resource))
    change(data)
    return data


def _set_icd(prediction: int, code: str | None):
    def change(ra):
        coding = ra["prediction"][prediction]["outcome"]["coding"]
        coding[:] = [c for c in coding if c["system"] != ICD10CM] + ([{"system": ICD10CM, "code": code}] if code else [])
    return change


def _set_scale(ra):
    ra["prediction"][1]["extension"][1]["valueCode"] = "CTCAE-5.0"


def _no_cartox_code(ra):
    ra["code"]["coding"][0]["system"] = "http://snomed.info/sct"


def _reason_without_text(cp):
    del cp["activity"][0]["detail"]["reasonCode"][0]["text"]


def _no_reason(cp):
    del cp["activity"][1]["detail"]["reasonCode"]


def _unknown_activity(cp):
    cp["activity"][0]["detail"]["code"]["coding"][0]["code"] = "call-the-family"


OUTPUT_BROKEN = [
    ("icans-grade-astct", _set_icd(0, "D89.833"), "ctx-ra-4"),   # a CRS code on ICANS
    ("icans-grade-astct", _set_icd(0, "G92.02"), "ctx-ra-4"),    # not the grade
    ("icans-grade-astct", _set_icd(1, None), "ctx-ra-5"),        # ICANS grade 3 without its code
    ("icans-grade-astct", _set_icd(0, "G92.05"), "ctx-ra-7"),
    ("crs-grade-astct", _set_icd(0, "G92.03"), "ctx-ra-4"),
    ("crs-grade-astct", _no_cartox_code, "ctx-ra-1"),
    ("crs-grade-astct", _set_scale, "ctx-ra-8"),
]


def test_output_invariants_hold_on_conforming_instances_and_fail_on_broken_ones():
    import fhirpathpy as fhirpath  # a test dependency: the invariants are evaluated, never skipped
    for assessment in ICD_OF_GRADE:
        ra = _risk_assessment(assessment, 3, 3)
        get_fhir_model_class("RiskAssessment").model_validate(ra)
        assert _failing(ra, "cartox-risk-assessment", fhirpath) == [], assessment
        assert _failing(_risk_assessment(assessment, 0, 2), "cartox-risk-assessment", fhirpath) == []
    for assessment, change, key in OUTPUT_BROKEN:
        assert key in _failing(_mutate(_risk_assessment(assessment, 3, 3), change), "cartox-risk-assessment", fhirpath), key
    care_plan = _care_plan()
    get_fhir_model_class("CarePlan").model_validate(care_plan)
    assert _failing(care_plan, "cartox-care-plan", fhirpath) == []
    for change, key in ((_reason_without_text, "ctx-cp-4"), (_no_reason, "ctx-cp-4"), (_unknown_activity, "ctx-cp-2")):
        assert key in _failing(_mutate(care_plan, change), "cartox-care-plan", fhirpath), key


def test_readme_documents_finding_kinds_merged_plan_and_grading_scale():
    readme = (_dir() / "README.md").read_text(encoding="utf-8")
    assert "### Finding kinds and their profiles" in readme
    assert "### Grading scale" in readme
    assert f"{BASE}/StructureDefinition/grading-scale" in readme
    for word in ("gradingScale", "reasonCode", "merged", "cartox-grading-assessment", "G92.01", "D89.831",
                 *GRADING_SCALES):
        assert word in readme, word


# ---------------------------------------------------------------- glucocorticoid exposure (the metrics finding kind)

GCE = "cartox-glucocorticoid-exposure"
UCUM = "http://unitsofmeasure.org"


def _ext_url(sd_id: str) -> str:
    return f"{BASE}/StructureDefinition/{sd_id}"


def test_glucocorticoid_exposure_profile_is_the_metrics_kind():
    sd = _sd(GCE)
    els = _elements(GCE)
    assert sd["url"] == _ext_url(GCE) and sd["name"] == "CartoxGlucocorticoidExposure"
    assert sd["type"] == "RiskAssessment" and sd["baseDefinition"] == f"{FHIR_CORE}RiskAssessment"
    assert "own profile" in sd["description"] and "metrics" in sd["description"]
    assert "never causation" in sd["description"]
    assert els["RiskAssessment.status"]["fixedCode"] == "final"
    assert els["RiskAssessment.subject"]["min"] == 1
    assert els["RiskAssessment.occurrence[x]"]["type"] == [{"code": "dateTime"}]
    # code: exactly the cartox coding glucocorticoid-exposure, not a grading assessment
    cartox = els["RiskAssessment.code.coding:cartox"]
    assert (cartox["min"], cartox["max"]) == (1, "1") and "binding" not in cartox
    assert els["RiskAssessment.code.coding:cartox.system"]["fixedUri"] == CODESYSTEM_URL
    assert els["RiskAssessment.code.coding:cartox.code"]["fixedCode"] == "glucocorticoid-exposure"
    assert els["RiskAssessment.code.text"]["min"] == 1
    assert "glucocorticoid-exposure" not in _vs_codes("cartox-grading-assessment")
    # method: the rule's coding with its version, and text
    rule = els["RiskAssessment.method.coding:rule"]
    assert (rule["min"], rule["max"]) == (1, "1")
    assert els["RiskAssessment.method.coding:rule.code"]["fixedCode"] == "glucocorticoid-exposure"
    assert els["RiskAssessment.method.coding:rule.version"]["min"] == 1
    assert els["RiskAssessment.method.text"]["min"] == 1
    # extensions, in the order the service sends them
    slices = [(e["sliceName"], e["min"], e["max"], e["type"][0]["profile"]) for e in els.values()
              if e["path"] == "RiskAssessment.extension" and "sliceName" in e]
    assert slices == [
        ("ruleSetVersion", 1, "1", [_ext_url("rule-set-version")]),
        ("guidelineVersion", 1, "1", [_ext_url("guideline-version")]),
        ("missingData", 0, "*", [_ext_url("missing-data")]),
        ("cumulativeDexamethasoneEquivalent", 0, "1", [_ext_url("cumulative-dexamethasone-equivalent")]),
        ("cumulativeMethylprednisoloneEquivalentPerKg", 0, "1", [_ext_url("cumulative-methylprednisolone-equivalent-per-kg")]),
        ("exposureDays", 0, "1", [_ext_url("exposure-days")]),
        ("firstDoseDay", 0, "1", [_ext_url("first-dose-day")]),
        ("glucocorticoidThreshold", 0, "*", [_ext_url("glucocorticoid-threshold")]),
    ]
    # exactly one prediction: data-completeness, the exposure class, day 0 -> evaluation time, rationale
    prediction = els["RiskAssessment.prediction"]
    assert (prediction["min"], prediction["max"]) == (1, "1")
    slices = [(e["sliceName"], e["min"], e["max"], e["type"][0]["profile"]) for e in els.values()
              if e["path"] == "RiskAssessment.prediction.extension" and "sliceName" in e]
    assert slices == [("dataCompleteness", 1, "1", [_ext_url("data-completeness")])]
    exposure = els["RiskAssessment.prediction.outcome.coding:exposure"]
    assert (exposure["min"], exposure["max"]) == (1, "1")
    assert exposure["binding"] == {"strength": "required", "valueSet": _vs_url("glucocorticoid-exposure-outcome")}
    assert els["RiskAssessment.prediction.outcome.coding:exposure.system"]["fixedUri"] == CODESYSTEM_URL
    assert els["RiskAssessment.prediction.outcome.text"]["min"] == 1
    assert els["RiskAssessment.prediction.when[x]"]["type"] == [{"code": "Period"}]
    assert els["RiskAssessment.prediction.rationale"]["min"] == 1
    assert els["RiskAssessment.basis"]["type"][0]["targetProfile"] == [f"{FHIR_CORE}MedicationAdministration"]
    assert (els["RiskAssessment.note"]["min"], els["RiskAssessment.note"]["max"]) == (0, "*")
    # the invariants name exactly the codes of their ValueSets
    invariants = _constraints(GCE)
    assert set(invariants) == {f"ctx-gce-{n}" for n in range(1, 10)}
    assert _quoted(invariants["ctx-gce-3"]["expression"]) == {CODESYSTEM_URL, *GLUCOCORTICOID_OUTCOMES}
    assert _quoted(invariants["ctx-gce-4"]["expression"]) == {_ext_url(m) for m in GLUCOCORTICOID_METRICS}
    assert _quoted(invariants["ctx-gce-9"]["expression"]) >= {"s000-cumulative-high", "s002-pediatric-high"}


def test_glucocorticoid_exposure_extensions():
    values = {
        "cumulative-dexamethasone-equivalent": ("Quantity", "mg", "1"),
        "cumulative-methylprednisolone-equivalent-per-kg": ("Quantity", "mg/kg", "1"),
        "exposure-days": ("integer", None, "1"),
        "first-dose-day": ("integer", None, "1"),
        "glucocorticoid-threshold": ("Coding", None, "*"),
    }
    for sd_id, (value_type, unit, max_) in values.items():
        sd = _sd(sd_id)
        els = _elements(sd_id)
        assert sd["context"] == [{"type": "element", "expression": "RiskAssessment"}], sd_id
        assert els["Extension"]["max"] == max_, sd_id
        assert els["Extension.extension"]["max"] == "0", sd_id
        value = els["Extension.value[x]"]
        assert [t["code"] for t in value["type"]] == [value_type], sd_id
        if unit:
            assert value["patternQuantity"] == {"unit": unit, "system": UCUM, "code": unit}, sd_id
            assert f"UCUM unit {unit}" in sd["description"], sd_id
        assert len(_constraints(sd_id)) == 1, sd_id
    assert "Day 0 is the calendar date of the CAR-T infusion in the infusion's UTC offset" in _sd("first-dose-day")["description"]
    assert "milligrams per kilogram" in _sd("cumulative-methylprednisolone-equivalent-per-kg")["description"]
    assert "in milligrams" in _sd("cumulative-dexamethasone-equivalent")["description"]
    assert _elements("glucocorticoid-threshold")["Extension.value[x]"]["binding"] == {
        "strength": "required", "valueSet": _vs_url("glucocorticoid-threshold")}


def test_glucocorticoid_codes_are_defined_with_their_sources():
    concepts = {c["code"]: c for c in _codesystem()["concept"]}
    assert concepts["glucocorticoid-exposure"]["display"] == "Systemic glucocorticoid exposure after CAR-T cell infusion"
    assert concepts["taper-glucocorticoids"]["display"] == "Taper glucocorticoids given for CRS/ICANS"
    assert concepts["glucocorticoid-running"]["display"] == "Glucocorticoids for CRS or ICANS are running"
    assert concepts["grades-allow-taper"]["display"] == "CRS and ICANS are grade 1 or lower"
    high = concepts["high-exposure"]["definition"]
    assert "s000-cumulative-high" in high and "s002-pediatric-high" in high and "18" in high
    assert "cannot be classed" in concepts["not-assessable"]["definition"]
    assert "grade 0" in concepts["not-assessable"]["definition"]
    sources = {
        "s000-cumulative-high": ("35 mg", "943004", "Table 2"),
        "s000-early": ("day 7", "Table 3"),
        "s000-prolonged": ("more than 3 days", "Table 3"),
        "karschnia-long": ("10 days or more", "Karschnia", "2212", "S004"),
        "s002-pediatric-high": ("8 mg/kg", "30", "1604866"),
        "s002-early": ("before day 5", "S002"),
        "s002-prolonged": ("more than 2 days", "S002"),
    }
    assert set(sources) == set(GLUCOCORTICOID_THRESHOLDS)
    for code, words in sources.items():
        definition = concepts[code]["definition"]
        for word in (*words, "never causation", "Strati", "myeloma", "longer PFS"):
            assert word in definition, f"{code}: {word}"


def _gce_risk_assessment() -> dict:
    """A glucocorticoid exposure RiskAssessment shaped as the service builds it (an adult, one dexamethasone day)."""
    end = "2026-03-06T12:00:00+01:00"

    def threshold(code, display):
        return {"url": _ext_url("glucocorticoid-threshold"), "valueCoding": {"system": CODESYSTEM_URL, "code": code, "display": display}}

    return {
        "resourceType": "RiskAssessment",
        "id": "ra-glucocorticoid-exposure",
        "meta": {"profile": [_ext_url(GCE)]},
        "extension": [
            {"url": _ext_url("rule-set-version"), "valueString": "1.0.0+3f9a2c1b7e4d"},
            {"url": _ext_url("guideline-version"), "valueString": "seed-S004"},
            {"url": _ext_url("cumulative-dexamethasone-equivalent"),
             "valueQuantity": {"value": 40, "unit": "mg", "system": UCUM, "code": "mg"}},
            {"url": _ext_url("cumulative-methylprednisolone-equivalent-per-kg"),
             "valueQuantity": {"value": 2.667, "unit": "mg/kg", "system": UCUM, "code": "mg/kg"}},
            {"url": _ext_url("exposure-days"), "valueInteger": 1},
            {"url": _ext_url("first-dose-day"), "valueInteger": 4},
            threshold("s000-cumulative-high", "more than 35 mg (S000)"),
            threshold("s000-early", "first dose by day 7 (S000)"),
        ],
        "status": "final",
        "code": {"coding": [{"system": CODESYSTEM_URL, "code": "glucocorticoid-exposure",
                             "display": "Systemic glucocorticoid exposure after CAR-T cell infusion"}],
                 "text": "Systemic glucocorticoid exposure after CAR-T cell infusion"},
        "subject": {"reference": "Patient/example"},
        "occurrenceDateTime": end,
        "method": {"coding": [{"system": CODESYSTEM_URL, "code": "glucocorticoid-exposure", "version": "1.0.0",
                               "display": "Systemic glucocorticoid exposure after CAR-T cell infusion"}],
                   "text": "Rule glucocorticoid-exposure 1.0.0 (rule set 1.0.0+3f9a2c1b7e4d); sources S000-S002"},
        "basis": [{"reference": "MedicationAdministration/dex-1"}, {"reference": "MedicationAdministration/dex-2"}],
        "prediction": [{
            "extension": [{"url": _ext_url("data-completeness"), "valueCode": "complete"}],
            "outcome": {"coding": [{"system": CODESYSTEM_URL, "code": "high-exposure", "display": "High exposure"}],
                        "text": "Glucocorticoids since day 0: 40 mg dexamethasone-equivalent, 1 day with a dose"},
            "whenPeriod": {"start": "2026-03-02T10:00:00+01:00", "end": end},
            "rationale": "cumulative dexamethasone-equivalent: 40 mg; ... Thresholds reached: s000-cumulative-high; s000-early",
        }],
        "note": [{"text": "Associations from observational cohorts, not causation."}],
    }


def _gce_failing(resource: dict, fhirpath) -> list[str]:
    """The profile's invariants, and those of its extensions evaluated on every extension of that url."""
    from fhirpathpy.models import models

    failing = _failing(resource, GCE, fhirpath)
    for sd_id, where in [(e, "extension") for e in GLUCOCORTICOID_EXTENSIONS] + [("data-completeness", "prediction.extension")]:
        for key, c in _constraints(sd_id).items():
            expression = f"{where}.where(url = '{_ext_url(sd_id)}').all({c['expression']})"
            if fhirpath.evaluate(resource, expression, {"resource": resource}, models["r4"]) != [True]:
                failing.append(key)
    return sorted(failing)


def _extensions_of(ra: dict, sd_id: str) -> list[dict]:
    return [e for e in ra["extension"] if e["url"] == _ext_url(sd_id)]


def _set_outcome(code: str):
    def change(ra):
        ra["prediction"][0]["outcome"]["coding"][0]["code"] = code
    return change


def _no_exposure(ra):
    ra["extension"] = [e for e in ra["extension"] if e["url"] not in (
        _ext_url("glucocorticoid-threshold"), _ext_url("first-dose-day"))]
    _extensions_of(ra, "cumulative-dexamethasone-equivalent")[0]["valueQuantity"]["value"] = 0
    _extensions_of(ra, "cumulative-methylprednisolone-equivalent-per-kg")[0]["valueQuantity"]["value"] = 0
    _extensions_of(ra, "exposure-days")[0]["valueInteger"] = 0
    del ra["basis"]
    _set_outcome("no-exposure")(ra)


def _child_without_weight(ra):
    ra["extension"] = [e for e in ra["extension"]
                       if e["url"] != _ext_url("cumulative-methylprednisolone-equivalent-per-kg")]
    ra["extension"].insert(2, {"url": _ext_url("missing-data"), "valueString": "no body weight in the last 7 days: mg/kg not computed"})
    ra["prediction"][0]["extension"][0]["valueCode"] = "incomplete"
    _set_outcome("not-assessable")(ra)


def _low_exposure(ra):
    ra["extension"] = [e for e in ra["extension"] if e.get("valueCoding", {}).get("code") != "s000-cumulative-high"]
    _extensions_of(ra, "cumulative-dexamethasone-equivalent")[0]["valueQuantity"]["value"] = 20
    _set_outcome("low-exposure")(ra)


def _grading_code(ra):
    ra["code"]["coding"][0]["code"] = "crs-grade-astct"


def _two_predictions(ra):
    ra["prediction"].append(json.loads(json.dumps(ra["prediction"][0])))


def _grade_outcome(ra):
    ra["prediction"][0]["outcome"]["coding"][0]["code"] = "grade-3"


def _two_outcome_codings(ra):
    ra["prediction"][0]["outcome"]["coding"].append({"system": CODESYSTEM_URL, "code": "low-exposure"})


def _twice(sd_id: str):
    def change(ra):
        ra["extension"].append(json.loads(json.dumps(_extensions_of(ra, sd_id)[0])))
    return change


def _threshold_system(ra):
    _extensions_of(ra, "glucocorticoid-threshold")[1]["valueCoding"]["system"] = "http://snomed.info/sct"


def _period_not_at_evaluation(ra):
    ra["prediction"][0]["whenPeriod"]["end"] = "2026-03-06T11:00:00+01:00"


def _period_reversed(ra):
    ra["prediction"][0]["whenPeriod"]["start"] = "2026-03-07T10:00:00+01:00"


def _basis_observation(ra):
    ra["basis"].append({"reference": "Observation/weight-1"})


def _no_exposure_with_threshold(ra):
    _set_outcome("no-exposure")(ra)


def _high_without_its_threshold(ra):
    ra["extension"] = [e for e in ra["extension"] if e.get("valueCoding", {}).get("code") != "s000-cumulative-high"]


def _set_value(sd_id: str, key: str, value):
    def change(ra):
        _extensions_of(ra, sd_id)[0][key] = value
    return change


GCE_BROKEN = [
    (_grading_code, "ctx-gce-1"),
    (_two_predictions, "ctx-gce-2"),
    (_grade_outcome, "ctx-gce-3"),
    (_two_outcome_codings, "ctx-gce-3"),
    *[(_twice(m), "ctx-gce-4") for m in GLUCOCORTICOID_METRICS],
    (_threshold_system, "ctx-gce-5"),
    (_threshold_system, "ctx-gct-1"),
    (_period_not_at_evaluation, "ctx-gce-6"),
    (_period_reversed, "ctx-gce-6"),
    (_basis_observation, "ctx-gce-7"),
    (_no_exposure_with_threshold, "ctx-gce-8"),
    (_high_without_its_threshold, "ctx-gce-9"),
    (_set_value("cumulative-dexamethasone-equivalent", "valueQuantity", {"value": 40, "unit": "g", "system": UCUM, "code": "g"}), "ctx-cde-1"),
    (_set_value("cumulative-methylprednisolone-equivalent-per-kg", "valueQuantity", {"value": 2.667, "unit": "mg", "system": UCUM, "code": "mg"}), "ctx-cmk-1"),
    (_set_value("exposure-days", "valueInteger", -1), "ctx-exd-1"),
    (_set_value("first-dose-day", "valueInteger", -2), "ctx-fdd-1"),
]


def test_glucocorticoid_exposure_invariants_hold_on_conforming_instances_and_fail_on_broken_ones():
    import fhirpathpy as fhirpath  # a test dependency: the invariants are evaluated, never skipped
    model = get_fhir_model_class("RiskAssessment")
    ra = _gce_risk_assessment()
    model.model_validate(ra)
    # the sample sends the extensions in the profile's slice order
    order = [e["type"][0]["profile"][0] for e in _sd(GCE)["differential"]["element"]
             if e["path"] == "RiskAssessment.extension" and "sliceName" in e]
    sent = [order.index(e["url"]) for e in ra["extension"]]
    assert sent == sorted(sent)
    assert _failing(ra, GCE, fhirpath) == []
    assert _gce_failing(ra, fhirpath) == []
    for change in (_no_exposure, _child_without_weight, _low_exposure):
        variant = _mutate(ra, change)
        model.model_validate(variant)
        assert _gce_failing(variant, fhirpath) == [], change.__name__
    for change, key in GCE_BROKEN:
        broken = _mutate(ra, change)
        model.model_validate(broken)  # a valid RiskAssessment: only the profile's invariants catch it
        assert key in _gce_failing(broken, fhirpath), (change.__name__, key)
    # its own profile: the code is no grading assessment, and the sample is no grading RiskAssessment
    assert "glucocorticoid-exposure" not in _vs_codes("cartox-grading-assessment")


def test_readme_documents_glucocorticoid_exposure():
    readme = (_dir() / "README.md").read_text(encoding="utf-8")
    assert "### Glucocorticoid exposure (metrics kind)" in readme
    assert "Every finding kind has its own RiskAssessment" in readme
    section = readme.split("### Glucocorticoid exposure (metrics kind)", 1)[1].split("\n### ", 1)[0]
    for word in (GCE, "glucocorticoid-exposure-outcome", "day 0 = the CAR-T infusion date", "never causation",
                 *GLUCOCORTICOID_OUTCOMES, *GLUCOCORTICOID_THRESHOLDS, *GLUCOCORTICOID_EXTENSIONS,
                 "cumulativeDexamethasoneEquivalent", "glucocorticoidThreshold", "dataCompleteness",
                 "943004", "1604866", "Karschnia"):
        assert word in section, word
    for word in ("taper-glucocorticoids", *TAPER_CONDITIONS):
        assert word in readme, word
