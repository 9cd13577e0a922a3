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
        "ValueSet-cartox-care-activity.json",
        "ValueSet-oxygen-delivery-device-code.json",
        "StructureDefinition-rule-set-version.json",
        "StructureDefinition-guideline-version.json",
        "StructureDefinition-data-completeness.json",
        "StructureDefinition-missing-data.json",
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
        "rule-set-version", "guideline-version", "data-completeness", "missing-data"}
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
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c["code"]), c["code"]


def test_codesystem_has_the_codes_the_service_relies_on():
    codes = {c["code"] for c in _codesystem()["concept"]}
    required = {
        "crs-grade-astct", "icans-grade-astct",
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


def test_valueset_contents():
    def codes(vs_id):
        [(_, vs)] = [(p, d) for p, d in _by_type("ValueSet") if d["id"] == vs_id]
        return {(inc["system"], c["code"]) for inc in vs["compose"]["include"]
                for c in inc["concept"]}

    cartox = CODESYSTEM_URL
    assert codes("astct-grade") == {(cartox, f"grade-{n}") for n in range(6)} | {
        (cartox, "not-assessable")}
    assert codes("cartox-care-activity") == {(cartox, c) for c in (
        "supportive-care", "infection-workup", "alert-icu", "transfer-icu", "salvage-therapy",
        "weight-based-dosing")}
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
