"""Neurological assessment input profiles (ICANS) in fhir_profiles/ and their example instances.

The examples in fhir_profiles/examples/ must parse with the fhir.resources R4B Observation model and
conform to the profile each names in meta.profile. No FHIR validator is a dependency of the project, so
`conformance_errors` below checks in Python what the profiles say: the code pattern and the required
bindings (codes in the ValueSets, displays as in the CodeSystem), value types, the score ranges, the
closed item slices with their ranges, the sum rule, value xor dataAbsentReason, subject, effective time
with a UTC offset. The FHIRPath invariants themselves are evaluated with fhirpathpy.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from service.resources import profiles_dir

BASE = "http://cartox.example.org/fhir"
CS = f"{BASE}/CodeSystem/cartox"
SD = f"{BASE}/StructureDefinition/"
VS = f"{BASE}/ValueSet/"
UCUM = "http://unitsofmeasure.org"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
TIME = re.compile(r"T\d{2}:\d{2}.*(Z|[+-]\d{2}:\d{2})$")
GRADED_STATUSES = {"final", "amended", "corrected"}

# profile id -> (Observation.code, maximum score) for the scores; coded findings -> (code, answer ValueSet)
SCORES = {"cartox-ice-score": ("ice-total", 10), "cartox-capd-score": ("capd-total", 32)}
CODED = {
    "cartox-loc-observation": ("loc-astct", "loc-astct-answer"),
    "cartox-seizure-observation": ("seizure-astct", "seizure-astct-answer"),
    "cartox-motor-weakness-observation": ("motor-weakness-astct", "motor-weakness-astct-answer"),
    "cartox-cerebral-edema-observation": ("cerebral-edema-astct", "cerebral-edema-astct-answer"),
}
NEURO_PROFILES = {**SCORES, **CODED}

# The items and their maximum (clinical-spec section 2; CAPD: Traube et al. 2014, 8 items 0-4)
ICE_ITEMS = {"ice-orientation": 4, "ice-naming": 3, "ice-commands": 1, "ice-writing": 1, "ice-attention": 1}
CAPD_ITEMS = {code: 4 for code in (
    "capd-eye-contact", "capd-purposeful-actions", "capd-awareness-of-surroundings",
    "capd-communicates-needs-and-wants", "capd-restless", "capd-inconsolable", "capd-underactive",
    "capd-slow-response")}
ITEMS = {"cartox-ice-score": ICE_ITEMS, "cartox-capd-score": CAPD_ITEMS}

# Every answer and its ASTCT 2019 ICANS grade (clinical-spec section 2 table)
ANSWER_GRADES = {
    "loc-astct-answer": {"alert": 0, "awakens-spontaneously": 1, "awakens-to-voice": 2,
                         "awakens-to-tactile": 3, "unarousable": 4},
    "seizure-astct-answer": {"rapidly-resolving": 3, "eeg-resolved-with-intervention": 3,
                             "prolonged-or-repetitive": 4},
    "motor-weakness-astct-answer": {"focal-deep-weakness": 4},
    "cerebral-edema-astct-answer": {"focal-local-edema": 3, "diffuse-edema": 4,
                                    "decerebrate-or-decorticate-posturing": 4,
                                    "cranial-nerve-vi-palsy": 4, "papilledema": 4, "cushings-triad": 4},
}

EXPECTED_EXAMPLES = {
    "Observation-example-ice-6.json": ("cartox-ice-score", 6),
    "Observation-example-ice-0-unarousable.json": ("cartox-ice-score", 0),
    "Observation-example-ice-0-awake.json": ("cartox-ice-score", 0),
    "Observation-example-ice-not-performed.json": ("cartox-ice-score", None),
    "Observation-example-capd-12.json": ("cartox-capd-score", 12),
    "Observation-example-loc-unarousable.json": ("cartox-loc-observation", "unarousable"),
    "Observation-example-loc-alert.json": ("cartox-loc-observation", "alert"),
    "Observation-example-loc-awakens-to-voice.json": ("cartox-loc-observation", "awakens-to-voice"),
    "Observation-example-seizure-rapidly-resolving.json": ("cartox-seizure-observation", "rapidly-resolving"),
    "Observation-example-motor-weakness.json": ("cartox-motor-weakness-observation", "focal-deep-weakness"),
    "Observation-example-cerebral-edema-papilledema.json": ("cartox-cerebral-edema-observation", "papilledema"),
}


# ---------------------------------------------------------------- loading

def _dir() -> Path:
    return Path(profiles_dir())


def _examples_dir() -> Path:
    return _dir() / "examples"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _example_names() -> list[str]:
    return sorted(p.name for p in _examples_dir().glob("*.json"))


def _example(name: str) -> dict:
    return _load(_examples_dir() / name)


def _profile(profile_id: str) -> dict:
    return _load(_dir() / f"StructureDefinition-{profile_id}.json")


def _elements(profile_id: str) -> dict[str, dict]:
    return {e["id"]: e for e in _profile(profile_id)["differential"]["element"]}


def _codesystem() -> dict:
    return _load(_dir() / "CodeSystem-cartox.json")


def _cs_concepts() -> dict[str, dict]:
    return {c["code"]: c for c in _codesystem()["concept"]}


def _valueset_by_url(url: str) -> dict:
    assert url.startswith(VS), url
    return _load(_dir() / f"ValueSet-{url.removeprefix(VS)}.json")


def _vs_codes(url: str) -> set[tuple[str, str]]:
    vs = _valueset_by_url(url)
    return {(inc["system"], c["code"]) for inc in vs["compose"]["include"] for c in inc["concept"]}


def _profile_id(obs: dict) -> str:
    [url] = obs["meta"]["profile"]
    assert url.startswith(SD), url
    return url.removeprefix(SD)


# ---------------------------------------------------------------- the conformance check

def _coding_errors(where: str, concept: dict, displays: dict[str, str]) -> list[str]:
    """Codings of the cartox CodeSystem must exist there, with its display when a display is given."""
    errors = []
    for coding in concept.get("coding", []):
        if coding.get("system") != CS:
            continue
        code = coding.get("code")
        if code not in displays:
            errors.append(f"{where}: {code} is not a cartox code")
        elif "display" in coding and coding["display"] != displays[code]:
            errors.append(f"{where}: display of {code} is not the CodeSystem display")
    return errors


def _has(concept: dict, system: str, code: str) -> bool:
    return any(c.get("system") == system and c.get("code") == code for c in concept.get("coding", []))


def _in_valueset(concept: dict, url: str) -> list[tuple[str, str]]:
    codes = _vs_codes(url)
    return [(c.get("system"), c.get("code")) for c in concept.get("coding", [])
            if (c.get("system"), c.get("code")) in codes]


def _value_keys(obs: dict) -> list[str]:
    return [k for k in obs if k.startswith("value")]


def _value_key(obs: dict) -> str | None:
    keys = _value_keys(obs)
    return keys[0] if keys else None


def _type_key(prefix: str, type_code: str) -> str:
    return prefix + type_code[:1].upper() + type_code[1:]


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def conformance_errors(obs: dict) -> list[str]:
    """What in `obs` does not conform to the neuro profile named in its meta.profile (empty: conforms)."""
    profile_id = _profile_id(obs)
    assert profile_id in NEURO_PROFILES, profile_id
    els = _elements(profile_id)
    displays = {code: c["display"] for code, c in _cs_concepts().items()}
    errors: list[str] = []

    if obs.get("resourceType") != "Observation":
        errors.append("resourceType")
    if obs.get("status") not in GRADED_STATUSES:
        errors.append(f"status {obs.get('status')} is not graded")

    # code: pattern and required binding
    code_el = els["Observation.code"]
    [pattern] = code_el["patternCodeableConcept"]["coding"]
    code = obs.get("code", {})
    if not _has(code, pattern["system"], pattern["code"]):
        errors.append(f"code: no coding {pattern['code']}")
    if not _in_valueset(code, code_el["binding"]["valueSet"]):
        errors.append("code: no coding from the bound ValueSet")
    errors += _coding_errors("code", code, displays)

    # subject: the Patient
    if not str(obs.get("subject", {}).get("reference", "")).startswith("Patient/"):
        errors.append("subject is not a Patient")

    # effective[x]: allowed type, time with a UTC offset
    effective_types = {_type_key("effective", t["code"]) for t in els["Observation.effective[x]"]["type"]}
    effective = [k for k in obs if k.startswith("effective")]
    if len(effective) != 1 or effective[0] not in effective_types:
        errors.append(f"effective[x]: {effective}")
    else:
        value = obs[effective[0]]
        times = [value.get("start"), value.get("end")] if isinstance(value, dict) else [value]
        if isinstance(value, dict) and not value.get("start"):
            errors.append("effectivePeriod without start")
        if not all(TIME.search(t) for t in times if t is not None):
            errors.append("effective[x] without a time and UTC offset")

    # value[x]: allowed types
    value_el = els["Observation.value[x]"]
    if len(_value_keys(obs)) > 1:
        errors.append(f"more than one value[x]: {_value_keys(obs)}")
    key = _value_key(obs)
    allowed = {_type_key("value", t["code"]) for t in value_el["type"]}
    if key is not None and key not in allowed:
        errors.append(f"{key} not allowed ({sorted(allowed)})")
    if value_el.get("min", 0) >= 1 and key is None:
        errors.append("value[x] missing")
    if key is not None and "dataAbsentReason" in obs:
        errors.append("value and dataAbsentReason together")

    if profile_id in SCORES:
        errors += _score_errors(obs, profile_id, key, els, displays)
    else:
        answer_vs = value_el["binding"]["valueSet"]
        if key == "valueCodeableConcept":
            answers = [c for c in _in_valueset(obs[key], answer_vs) if c[0] == CS]
            if len(answers) != 1:
                errors.append(f"value: {len(answers)} cartox answers from {answer_vs.removeprefix(VS)}")
            errors += _coding_errors("value", obs[key], displays)
    return errors


def _score_errors(obs: dict, profile_id: str, key: str | None, els: dict, displays: dict) -> list[str]:
    errors: list[str] = []
    _, maximum = SCORES[profile_id]
    if key is None and "dataAbsentReason" not in obs:
        errors.append("neither value nor dataAbsentReason")
    total = None
    if key == "valueInteger":
        total = _number(obs[key])
    elif key == "valueQuantity":
        quantity = obs[key]
        total = _number(quantity.get("value"))
        if quantity.get("system") != UCUM or quantity.get("code") != "{score}":
            errors.append("valueQuantity is not UCUM {score}")
    if key is not None:
        if total is None or total != int(total) or not 0 <= total <= maximum:
            errors.append(f"score {total} is not a whole number 0-{maximum}")

    # components: closed slicing by code pattern, each slice 0..1, valueInteger within its range
    slices = {}
    for el_id, el in els.items():
        match = re.fullmatch(r"Observation\.component:([A-Za-z]+)", el_id)
        if match:
            name = match.group(1)
            [coding] = els[f"{el_id}.code"]["patternCodeableConcept"]["coding"]
            value = els[f"{el_id}.value[x]"]
            slices[coding["code"]] = (int(el["max"]), value["minValueInteger"], value["maxValueInteger"], name)
    component_vs = els["Observation.component.code"]["binding"]["valueSet"]
    seen: dict[str, int] = {}
    for i, component in enumerate(obs.get("component", [])):
        codes = [c["code"] for c in component.get("code", {}).get("coding", [])
                 if c.get("system") == CS and c.get("code") in slices]
        if len(codes) != 1:
            errors.append(f"component[{i}]: matches no item slice")
            continue
        [item] = codes
        if not _in_valueset(component["code"], component_vs):
            errors.append(f"component[{i}]: code not in the item ValueSet")
        errors += _coding_errors(f"component[{i}].code", component["code"], displays)
        seen[item] = seen.get(item, 0) + 1
        max_count, low, high, _ = slices[item]
        if seen[item] > max_count:
            errors.append(f"component {item} more than {max_count} time(s)")
        value_keys = [k for k in component if k.startswith("value")]
        if value_keys != ["valueInteger"]:
            if "dataAbsentReason" not in obs:
                errors.append(f"component {item}: value is not valueInteger")
            elif value_keys:
                errors.append(f"component {item}: item value in a not-performed assessment")
            continue
        value = _number(component["valueInteger"])
        if value is None or not low <= value <= high:
            errors.append(f"component {item}: {component['valueInteger']} outside {low}-{high}")
        if "dataAbsentReason" in obs:
            errors.append(f"component {item}: item value in a not-performed assessment")
    item_values = {c["code"]["coding"][0]["code"]: c.get("valueInteger") for c in obs.get("component", [])
                   if c.get("code", {}).get("coding")}
    if set(slices) <= set(item_values) and total is not None:
        if all(isinstance(v, int) for v in item_values.values()) and sum(item_values.values()) != total:
            errors.append(f"score {total} is not the sum of the items {sum(item_values.values())}")
    if "dataAbsentReason" in obs and not _has(obs["dataAbsentReason"], DAR, "not-performed"):
        errors.append("dataAbsentReason is not data-absent-reason#not-performed")
    return errors


# ---------------------------------------------------------------- examples

def test_examples_directory_has_the_expected_examples():
    assert _examples_dir().is_dir()
    assert set(_example_names()) == set(EXPECTED_EXAMPLES)


def test_every_neuro_profile_has_an_example():
    used = {_profile_id(_example(name)) for name in _example_names()}
    assert used == set(NEURO_PROFILES)


@pytest.mark.parametrize("name", _example_names())
def test_example_parses_with_r4b_observation(name):
    data = _example(name)
    assert data["resourceType"] == "Observation"
    resource = get_fhir_model_class("Observation").model_validate(data)
    # nothing in the file is silently dropped by the model
    assert json.loads(resource.model_dump_json(exclude_none=True)) == data


@pytest.mark.parametrize("name", _example_names())
def test_example_identity_subject_time_and_status(name):
    data = _example(name)
    assert name == f"Observation-{data['id']}.json"
    profile_id = _profile_id(data)
    assert (_dir() / f"StructureDefinition-{profile_id}.json").is_file()
    assert profile_id == EXPECTED_EXAMPLES[name][0]
    assert data["subject"] == {"reference": "Patient/example"}
    assert data["status"] == "final"
    assert TIME.search(data["effectiveDateTime"]), data["effectiveDateTime"]


@pytest.mark.parametrize("name", _example_names())
def test_example_conforms_to_its_profile(name):
    assert conformance_errors(_example(name)) == []


@pytest.mark.parametrize("name", _example_names())
def test_example_records_what_its_name_says(name):
    data = _example(name)
    profile_id, expected = EXPECTED_EXAMPLES[name]
    if profile_id in SCORES:
        if expected is None:
            assert _value_key(data) is None
            assert _has(data["dataAbsentReason"], DAR, "not-performed")
        else:
            value = data.get("valueInteger", data.get("valueQuantity", {}).get("value"))
            assert value == expected
    else:
        answers = [c["code"] for c in data["valueCodeableConcept"]["coding"] if c["system"] == CS]
        assert answers == [expected]


def test_paired_examples_are_one_assessment():
    """ICE 0 + unarousable (grade 4) and ICE 0 + alert (grade 3) are recorded at the same time."""
    pairs = [("Observation-example-ice-0-unarousable.json", "Observation-example-loc-unarousable.json"),
             ("Observation-example-ice-0-awake.json", "Observation-example-loc-alert.json")]
    for ice, loc in pairs:
        assert _example(ice)["effectiveDateTime"] == _example(loc)["effectiveDateTime"], (ice, loc)


def _mutated(name: str, change) -> dict:
    data = copy.deepcopy(_example(name))
    change(data)
    return data


def _set(key, value):
    def change(data):
        data[key] = value
    return change


def _drop(key):
    def change(data):
        data.pop(key)
    return change


def _replace_value(key, value):
    def change(data):
        for old in _value_keys(data):
            data.pop(old)
        data[key] = value
    return change


def _first_value_code(code):
    def change(data):
        data["valueCodeableConcept"]["coding"][0]["code"] = code
    return change


def _add_second_answer(data):
    data["valueCodeableConcept"]["coding"].append(dict(data["valueCodeableConcept"]["coding"][0], code="unarousable"))


def _item_value(index, value):
    def change(data):
        data["component"][index]["valueInteger"] = value
    return change


def _duplicate_item(data):
    data["component"].append(copy.deepcopy(data["component"][0]))


def _unknown_item(data):
    data["component"][0]["code"]["coding"][0]["code"] = "ice-total"


def _score_not_ucum(data):
    data["valueQuantity"]["code"] = "score"


def _fractional_score(data):
    data["valueQuantity"]["value"] = 6.5


def _items_on_not_performed(data):
    data["component"] = copy.deepcopy(_example("Observation-example-ice-6.json")["component"])


def _dar_too(data):
    data["dataAbsentReason"] = copy.deepcopy(_example("Observation-example-ice-not-performed.json")["dataAbsentReason"])


def _wrong_display(data):
    data["code"]["coding"][0]["display"] = "ICE"


BROKEN = [
    ("Observation-example-ice-6.json", _set("valueInteger", 7), "not the sum of the items"),
    ("Observation-example-ice-6.json", _set("valueInteger", 11), "not a whole number 0-10"),
    ("Observation-example-ice-6.json", _item_value(0, 5), "outside 0-4"),
    ("Observation-example-ice-6.json", _item_value(2, 2), "outside 0-1"),
    ("Observation-example-ice-6.json", _duplicate_item, "more than 1 time"),
    ("Observation-example-ice-6.json", _unknown_item, "matches no item slice"),
    ("Observation-example-ice-6.json", _set("effectiveDateTime", "2026-03-06T08:00:00"), "UTC offset"),
    ("Observation-example-ice-6.json", _set("effectiveDateTime", "2026-03-06"), "UTC offset"),
    ("Observation-example-ice-6.json", _set("status", "preliminary"), "not graded"),
    ("Observation-example-ice-6.json", _set("subject", {"reference": "Group/1"}), "not a Patient"),
    ("Observation-example-ice-6.json", _replace_value("valueString", "6"), "valueString not allowed"),
    ("Observation-example-ice-6.json", _wrong_display, "not the CodeSystem display"),
    ("Observation-example-ice-6.json", _dar_too, "value and dataAbsentReason together"),
    ("Observation-example-ice-6.json", _set("valueQuantity", {"value": 6, "system": UCUM, "code": "{score}"}),
     "more than one value[x]"),
    ("Observation-example-ice-6.json", _set("code", {"coding": [{"system": CS, "code": "capd-total"}]}),
     "no coding ice-total"),
    ("Observation-example-ice-0-unarousable.json", _score_not_ucum, "not UCUM {score}"),
    ("Observation-example-ice-0-unarousable.json", _fractional_score, "not a whole number"),
    ("Observation-example-ice-not-performed.json", _drop("dataAbsentReason"), "neither value nor dataAbsentReason"),
    ("Observation-example-ice-not-performed.json", _items_on_not_performed, "not-performed assessment"),
    ("Observation-example-capd-12.json", _set("valueInteger", 13), "not the sum of the items"),
    ("Observation-example-capd-12.json", _set("valueInteger", 33), "not a whole number 0-32"),
    ("Observation-example-capd-12.json", _item_value(7, 5), "outside 0-4"),
    ("Observation-example-loc-alert.json", _first_value_code("awake"), "not a cartox code"),
    ("Observation-example-loc-alert.json", _add_second_answer, "2 cartox answers"),
    ("Observation-example-loc-alert.json", _drop("valueCodeableConcept"), "value[x] missing"),
    ("Observation-example-seizure-rapidly-resolving.json", _first_value_code("papilledema"), "0 cartox answers"),
    ("Observation-example-motor-weakness.json", _first_value_code("unarousable"), "0 cartox answers"),
    ("Observation-example-cerebral-edema-papilledema.json", _replace_value("valueInteger", 1), "valueInteger not allowed"),
]


@pytest.mark.parametrize(("name", "change", "expected"), BROKEN,
                         ids=[f"{n.removeprefix('Observation-example-').removesuffix('.json')}:{e}"
                              for n, _, e in BROKEN])
def test_conformance_check_rejects_broken_instances(name, change, expected):
    errors = conformance_errors(_mutated(name, change))
    assert any(expected in e for e in errors), errors


# ---------------------------------------------------------------- profiles, ValueSets, CodeSystem

@pytest.mark.parametrize("profile_id", sorted(NEURO_PROFILES))
def test_neuro_profile_shape(profile_id):
    sd = _profile(profile_id)
    els = _elements(profile_id)
    code = NEURO_PROFILES[profile_id][0]
    assert sd["type"] == "Observation" and sd["derivation"] == "constraint" and "snapshot" not in sd
    assert els["Observation.code"]["patternCodeableConcept"] == {"coding": [{"system": CS, "code": code}]}
    assert els["Observation.code"]["binding"] == {"strength": "required", "valueSet": f"{VS}neuro-assessment-code"}
    assert (CS, code) in _vs_codes(f"{VS}neuro-assessment-code")
    assert els["Observation.subject"]["min"] == 1
    assert els["Observation.subject"]["type"][0]["targetProfile"] == ["http://hl7.org/fhir/StructureDefinition/Patient"]
    assert els["Observation.effective[x]"]["min"] == 1
    assert {t["code"] for t in els["Observation.effective[x]"]["type"]} == {"dateTime", "Period", "instant"}
    constraints = {c["key"]: c for c in els["Observation"]["constraint"]}
    assert any("UTC offset" in c["human"] for c in constraints.values()), "no time constraint"
    for c in constraints.values():
        assert c["severity"] == "error" and c["source"] == sd["url"]
    # the SNOMED CT findings and the never-counted findings are documented where they belong
    if profile_id == "cartox-seizure-observation":
        assert "91175000" in sd["description"]
    if profile_id == "cartox-cerebral-edema-observation":
        assert "2032001" in sd["description"] and "423341008" in sd["description"]
        assert "1386000" in sd["description"]
    if profile_id == "cartox-motor-weakness-observation":
        assert "26079004" in sd["description"] and "17450006" in sd["description"]


@pytest.mark.parametrize("profile_id", sorted(SCORES))
def test_score_profiles_value_items_and_invariants(profile_id):
    els = _elements(profile_id)
    _, maximum = SCORES[profile_id]
    assert {t["code"] for t in els["Observation.value[x]"]["type"]} == {"integer", "Quantity"}
    assert "not-performed" in els["Observation.dataAbsentReason"]["definition"]
    assert "unarousable" in els["Observation.dataAbsentReason"]["definition"]
    slicing = els["Observation.component"]["slicing"]
    assert slicing["rules"] == "closed"
    assert slicing["discriminator"] == [{"type": "pattern", "path": "code"}]
    slices = {}
    for el_id, el in els.items():
        if re.fullmatch(r"Observation\.component:[A-Za-z]+", el_id):
            [coding] = els[f"{el_id}.code"]["patternCodeableConcept"]["coding"]
            value = els[f"{el_id}.value[x]"]
            assert el["max"] == "1" and el["min"] == 0
            assert [t["code"] for t in value["type"]] == ["integer"] and value["min"] == 1
            assert coding["system"] == CS
            slices[coding["code"]] = (value["minValueInteger"], value["maxValueInteger"])
    assert slices == {code: (0, high) for code, high in ITEMS[profile_id].items()}
    assert sum(ITEMS[profile_id].values()) == maximum
    item_vs = els["Observation.component.code"]["binding"]
    assert item_vs["strength"] == "required"
    assert {code for _, code in _vs_codes(item_vs["valueSet"])} == set(ITEMS[profile_id])
    humans = " ".join(c["human"] for c in els["Observation"]["constraint"])
    expressions = " ".join(c["expression"] for c in els["Observation"]["constraint"])
    assert f"0 to {maximum}" in humans and "their sum" in humans and "{score}" in humans
    assert "dataAbsentReason" in expressions
    for code in ITEMS[profile_id]:
        assert f"'{code}'" in expressions, f"sum invariant does not name {code}"


@pytest.mark.parametrize("profile_id", sorted(CODED))
def test_coded_profiles_bind_their_answers(profile_id):
    els = _elements(profile_id)
    _, answer_vs = CODED[profile_id]
    value = els["Observation.value[x]"]
    assert value["min"] == 1 and [t["code"] for t in value["type"]] == ["CodeableConcept"]
    assert value["binding"] == {"strength": "required", "valueSet": f"{VS}{answer_vs}"}
    [answer_constraint] = [c for c in els["Observation"]["constraint"] if "answer" in c["human"]]
    for code in ANSWER_GRADES[answer_vs]:
        assert f"'{code}'" in answer_constraint["expression"]


@pytest.mark.parametrize("vs_id", sorted(ANSWER_GRADES))
def test_every_answer_is_in_its_valueset_and_the_codesystem_with_its_grade(vs_id):
    concepts = _cs_concepts()
    assert {code for _, code in _vs_codes(f"{VS}{vs_id}")} == set(ANSWER_GRADES[vs_id])
    for system, code in _vs_codes(f"{VS}{vs_id}"):
        assert system == CS
        definition = concepts[code]["definition"]
        first = re.search(r"grade (\d)", definition)
        assert first and int(first.group(1)) == ANSWER_GRADES[vs_id][code], f"{code}: {definition}"
        assert "ASTCT 2019" in definition, code


def test_neuro_codes_are_defined_with_their_sources():
    concepts = _cs_concepts()
    for code in ("ice-total", *ICE_ITEMS, "capd-total", *CAPD_ITEMS, "loc-astct", "seizure-astct",
                 "motor-weakness-astct", "cerebral-edema-astct"):
        assert concepts[code]["display"] and concepts[code]["definition"], code
    for code in CAPD_ITEMS:
        definition = concepts[code]["definition"]
        assert "Traube" in definition and "0-4" in definition, code
    reversed_items = [c for c in CAPD_ITEMS if "Reverse scored" in concepts[c]["definition"]]
    assert reversed_items == list(CAPD_ITEMS)[:4]
    for code in ("ice-total", "capd-total"):
        assert "dataAbsentReason" in concepts[code]["definition"], code
        assert "unarousable" in concepts[code]["definition"], code


def test_readme_documents_examples_and_neuro_section():
    readme = (_dir() / "README.md").read_text(encoding="utf-8")
    for name in _example_names():
        assert f"examples/{name}" in readme, f"README.md does not list examples/{name}"
    assert "## Neurological assessments" in readme
    for profile_id in NEURO_PROFILES:
        assert f"`{profile_id}`" in readme
    for snomed in ("91175000", "423341008", "2032001", "26079004", "17450006", "1386000"):
        assert snomed in readme, snomed
    assert "dataAbsentReason" in readme


# ---------------------------------------------------------------- the FHIRPath invariants (optional engine)

def _invariants(profile_id: str) -> list[dict]:
    return [c for el in _profile(profile_id)["differential"]["element"] for c in el.get("constraint", [])]


def _failing(obs: dict, fhirpath) -> list[str]:
    from fhirpathpy.models import models

    return sorted(c["key"] for c in _invariants(_profile_id(obs))
                  if fhirpath.evaluate(obs, c["expression"], {}, models["r4"]) != [True])


FHIRPATH_BROKEN = [
    ("Observation-example-ice-6.json", _set("valueInteger", 7), "ctx-ice-4"),
    ("Observation-example-ice-6.json", _set("effectiveDateTime", "2026-03-06T08:00:00"), "ctx-ice-6"),
    ("Observation-example-ice-0-unarousable.json", _score_not_ucum, "ctx-ice-3"),
    ("Observation-example-ice-0-unarousable.json", _fractional_score, "ctx-ice-2"),
    ("Observation-example-ice-not-performed.json", _drop("dataAbsentReason"), "ctx-ice-1"),
    ("Observation-example-ice-not-performed.json", _items_on_not_performed, "ctx-ice-5"),
    ("Observation-example-capd-12.json", _set("valueInteger", 13), "ctx-capd-4"),
    ("Observation-example-loc-alert.json", _add_second_answer, "ctx-loc-1"),
    ("Observation-example-seizure-rapidly-resolving.json", _first_value_code("papilledema"), "ctx-seiz-1"),
    ("Observation-example-motor-weakness.json", _first_value_code("unarousable"), "ctx-motor-1"),
    ("Observation-example-cerebral-edema-papilledema.json", _first_value_code("alert"), "ctx-edema-1"),
]


def test_fhirpath_invariants_hold_on_examples_and_fail_on_broken_instances():
    import fhirpathpy as fhirpath  # a test dependency: the invariants are evaluated, never skipped
    for name in _example_names():
        assert _failing(_example(name), fhirpath) == [], name
    for name, change, key in FHIRPATH_BROKEN:
        assert key in _failing(_mutated(name, change), fhirpath), (name, key)
