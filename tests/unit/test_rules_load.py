"""service.rules_engine.load: the shipped rule set, its version, overrides, schema faults, YAML = JSON,
and the purity of the clinical core (no Flask)."""

from __future__ import annotations

import ast
import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from service.errors import RulesError
from service.fhir_input.decode import decode_bundle
from service.resources import rules_dir
from service.rules_engine.load import load_rule_set, rule_files
from service.timeline.build import BuildOptions, build_timeline, entries_from_bundle

REPO = Path(__file__).resolve().parents[2]
VERSION = re.compile(r"^\d+\.\d+\.\d+\+[0-9a-f]{12}$")
CET = timezone(timedelta(hours=1))
AS_OF = datetime(2026, 3, 5, 12, 0, tzinfo=CET)


@pytest.fixture
def rules_copy(tmp_path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(rules_dir(), target)
    return target


def _edit_yaml(path: Path, change) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _rules_error(directory: Path, **kwargs) -> RulesError:
    with pytest.raises(RulesError) as info:
        load_rule_set(directory, **kwargs)
    return info.value


# --- the shipped rule set ----------------------------------------------------------------------------------

def test_shipped_rule_set_loads(rule_set):
    assert [rule.info.rule_id for rule in rule_set.grading] == [
        "anemia-ctcae", "crs-astct", "icans-astct", "neutropenia-ctcae", "thrombocytopenia-ctcae"]
    assert rule_set.finding_rules == ["anemia-ctcae", "crs-astct", "glucocorticoid-exposure", "icaht-eha-ebmt", "icans-astct",
                                      "neutropenia-ctcae", "prednisone-pht", "thrombocytopenia-ctcae"]  # rule-file order
    assert rule_set.management["crs-management"].applies_to == "crs-astct"
    assert rule_set.management["icans-management"].applies_to == "icans-astct"
    assert rule_set.management["icans-management"].reads == ("crs-astct",)
    order = [c.rule_id for c in rule_set.ordered]
    assert order.index("crs-astct") < order.index("icans-management")  # ICANS management reads the CRS grade
    assert order.index("care-plan") > max(order.index(name) for name in rule_set.management)  # the merge runs after every plan
    assert order.index("glucocorticoid-exposure") < order.index("glucocorticoid-management")
    # the regimen reads the three cytopenia grades; its plan is merged too
    assert max(order.index(name) for name in ("anemia-ctcae", "thrombocytopenia-ctcae", "neutropenia-ctcae")) < order.index("prednisone-pht")
    assert order.index("prednisone-pht") < order.index("care-plan")
    assert rule_set.order_check is not None and rule_set.order_check.projection == "glucocorticoid-exposure"
    assert {"crs_astct.yaml", "icans_astct.yaml", "icans_management.yaml", "care_plan.yaml", "glucocorticoid_exposure.yaml",
            "glucocorticoid_management.yaml", "order_check.yaml"} <= set(rule_set.files)
    assert "concepts.yaml" in rule_set.files
    assert not any(".cases." in name for name in rule_set.files)


def test_version_is_semver_plus_content_hash(rule_set):
    assert VERSION.match(rule_set.version), rule_set.version
    ruleset = yaml.safe_load((rules_dir() / "ruleset.yaml").read_text(encoding="utf-8"))
    assert rule_set.version.split("+")[0] == ruleset["version"]


def test_version_stable_across_loads(rule_set):
    assert load_rule_set().version == rule_set.version
    assert load_rule_set().version == load_rule_set().version


def test_version_changes_with_overrides(rule_set):
    overridden = load_rule_set(overrides={"crs-astct": {"window_hours": 12}})
    assert VERSION.match(overridden.version)
    assert overridden.version != rule_set.version
    assert overridden.version.split("+")[0] == rule_set.version.split("+")[0]
    assert overridden.by_id["crs-astct"].window == timedelta(hours=12)
    assert rule_set.by_id["crs-astct"].window == timedelta(hours=24)
    assert load_rule_set(overrides={"crs-astct": {"window_hours": 12}}).version == overridden.version


def test_version_changes_with_rule_content(rules_copy, rule_set):
    same = load_rule_set(rules_copy)
    assert same.version == rule_set.version  # the hash covers contents and names, not the directory
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d["parameters"]["fever_celsius"].update(value=38.3))
    assert load_rule_set(rules_copy).version != rule_set.version


def test_unknown_override_parameter_rejected():
    with pytest.raises(RulesError, match="unknown parameter 'window_hour'"):
        load_rule_set(overrides={"crs-astct": {"window_hour": 12}})


def test_unknown_override_rule_rejected():
    with pytest.raises(RulesError, match="unknown rules"):
        load_rule_set(overrides={"crs-astcd": {"window_hours": 12}})


def test_override_of_wrong_type_rejected():
    with pytest.raises(RulesError, match="wrong type"):
        load_rule_set(overrides={"crs-astct": {"window_hours": "12"}})


# --- schema faults ---------------------------------------------------------------------------------------------

def test_comparator_gte_rejected_naming_the_file(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d["criteria"]["fever"].update(comparator="gte"))
    error = _rules_error(rules_copy)
    assert error.path.endswith("crs_astct.yaml")
    assert "crs_astct.yaml" in str(error)
    assert "schema validation failed" in str(error)


def test_rule_without_sources_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d.pop("sources"))
    error = _rules_error(rules_copy)
    assert error.path.endswith("crs_astct.yaml")
    assert "sources" in str(error)


def test_rule_with_empty_sources_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_management.yaml", lambda d: d.update(sources=[]))
    assert _rules_error(rules_copy).path.endswith("crs_management.yaml")


def test_unknown_condition_type_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d["criteria"]["fever"].update(type="lab_trend"))
    error = _rules_error(rules_copy)
    assert error.path.endswith("crs_astct.yaml")


def test_unknown_criterion_field_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d["criteria"]["fever"].update(threshhold=38))
    assert _rules_error(rules_copy).path.endswith("crs_astct.yaml")


def test_expression_naming_unknown_criterion_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d["grading"].update(requires={"any": ["fever", "waiverr"]}))
    assert "waiverr" in str(_rules_error(rules_copy))


def test_unknown_parameter_reference_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d["criteria"]["fever"].update(threshold={"param": "fever_c"}))
    assert "fever_c" in str(_rules_error(rules_copy))


def test_duplicate_rule_id_rejected(rules_copy):
    shutil.copy(rules_copy / "crs_astct.yaml", rules_copy / "crs_astct_copy.yaml")
    assert "duplicate rule id" in str(_rules_error(rules_copy))


def test_unparseable_rule_file_rejected(rules_copy):
    (rules_copy / "broken.yaml").write_text("id: [unclosed\n", encoding="utf-8")
    error = _rules_error(rules_copy)
    assert error.path.endswith("broken.yaml")


def test_concepts_schema_violation_rejected(rules_copy):
    _edit_yaml(rules_copy / "concepts.yaml", lambda d: d.pop("measurements"))
    assert _rules_error(rules_copy).path.endswith("concepts.yaml")


# --- YAML and JSON ---------------------------------------------------------------------------------------------

def _json_rules(rules_copy: Path) -> Path:
    source = rules_copy / "crs_astct.yaml"
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    (rules_copy / "crs_astct.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    source.unlink()
    return rules_copy


def _febrile_timeline(terminology):
    rx = "http://www.nlm.nih.gov/research/umls/rxnorm"
    loinc = "http://loinc.org"

    def obs(oid, code, at, **kw):
        return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"coding": [{"system": loinc, "code": code}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": at, **kw}

    resources = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1965-04-02"},
        {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed", "subject": {"reference": "Patient/p1"},
         "medicationCodeableConcept": {"text": "Yescarta"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"},
        obs("t1", "8310-5", "2026-03-05T06:00:00+01:00", valueQuantity={"value": 38.9, "unit": "Cel", "code": "Cel"}),
        obs("dev", "107117-4", "2026-03-05T07:00:00+01:00",
            valueCodeableConcept={"coding": [{"system": "http://snomed.info/sct", "code": "336623009"}]}),
        obs("f1", "3151-8", "2026-03-05T07:00:00+01:00", valueQuantity={"value": 3, "unit": "L/min", "code": "L/min"}),
        obs("bp1", "8480-6", "2026-03-05T08:00:00+01:00", valueQuantity={"value": 82, "unit": "mmHg", "code": "mm[Hg]"}),
        {"resourceType": "MedicationAdministration", "id": "ne", "status": "in-progress", "subject": {"reference": "Patient/p1"},
         "medicationCodeableConcept": {"coding": [{"system": rx, "code": "7512"}]},
         "effectivePeriod": {"start": "2026-03-05T09:00:00+01:00"}},
    ]
    body = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}).encode()
    decoded = decode_bundle(body)
    return build_timeline(entries_from_bundle(decoded.entries), terminology, AS_OF, BuildOptions(), decoded.ignored_types)


def _finding_summary(f):
    """What a finding says, by its kind."""
    if f.kind == "grading":
        return (f.rule.rule_id, f.rule.rule_version, f.current.grade, f.maximum.grade, f.onset, f.onset_day, f.atypical_onset,
                tuple(r.criterion for r in f.current.reasons), tuple(e.source for e in f.current.evidence),
                f.current.missing, f.current.notes, tuple(sorted(f.rule.outcome_codes.items())))
    if f.kind == "metrics":
        return (f.rule.rule_id, f.rule.rule_version, f.outcome, tuple((m.name, m.value) for m in f.metrics.values()),
                tuple(t.code for t in f.reached), tuple(e.source for e in f.evidence))
    if f.kind == "regimen":
        return (f.rule.rule_id, f.rule.rule_version, f.state, f.dose_mg, tuple((s.state, s.time) for s in f.steps))
    return (f.rule.rule_id, f.rule.rule_version, tuple((p.name, p.grade, p.why, p.missing) for p in f.phases),
            tuple(e.source for e in f.evidence))


def _summary(rule_set, timeline):
    evaluation = rule_set.evaluate(timeline)
    findings = [_finding_summary(f) for f in evaluation.findings]
    plans = [(p.rule_id, p.guideline_id, tuple((a.kind, a.code, a.dose_mg, a.description) for a in p.actions))
             for p in evaluation.plans]
    return findings, plans


def test_yaml_and_json_rule_files_load_the_same_way(rules_copy, rule_set):
    json_dir = _json_rules(rules_copy)
    assert "crs_astct.json" in [p.name for p in rule_files(json_dir)]
    from_json = load_rule_set(json_dir)
    assert VERSION.match(from_json.version)
    assert from_json.by_id["crs-astct"].info == rule_set.by_id["crs-astct"].info
    assert from_json.by_id["crs-astct"].window == rule_set.by_id["crs-astct"].window
    timeline = _febrile_timeline(rule_set.terminology)
    yaml_result = _summary(rule_set, timeline)
    json_result = _summary(from_json, timeline)
    assert yaml_result == json_result
    crs = next(finding for finding in yaml_result[0] if finding[0] == "crs-astct")
    assert crs[2] == 3  # one vasopressor + low-flow O2 = grade 3 (R3): the comparison is not vacuous


def test_json_rule_file_schema_violation_rejected(rules_copy):
    json_dir = _json_rules(rules_copy)
    path = json_dir / "crs_astct.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document["criteria"]["fever"]["comparator"] = "gte"
    path.write_text(json.dumps(document), encoding="utf-8")
    assert _rules_error(json_dir).path.endswith("crs_astct.json")


# --- the clinical core is pure ------------------------------------------------------------------------------------

CORE = ["service/fhir_input", "service/timeline", "service/rules_engine", "service/fhir_output", "service/cds_cards",
        "service/pipeline.py"]


def _core_files() -> list[Path]:
    files: list[Path] = []
    for name in CORE:
        path = REPO / name
        assert path.exists(), path
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                modules.add(node.args[0].value)
    return modules


def test_clinical_core_does_not_import_flask():
    files = _core_files()
    assert len(files) >= 15
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path) if m.split(".")[0] in ("flask", "werkzeug"))
        for path in files
    }
    offenders = {path: mods for path, mods in offenders.items() if mods}
    assert not offenders, offenders


def test_clinical_core_does_not_import_the_http_layer():
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path) if m.startswith(("service.http_api", "service.app")))
        for path in _core_files()
    }
    assert not {p: m for p, m in offenders.items() if m}


def test_rules_engine_does_not_import_the_pipeline_or_the_case_runner():
    """Test support (the case runner, the pytest plugin) sits above the pipeline, outside the engine."""
    files = sorted((REPO / "service" / "rules_engine").rglob("*.py"))
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path)
                                            if m.startswith(("service.pipeline", "service.rule_cases", "service.cds_cards", "service.fhir_output")))
        for path in files
    }
    assert not {p: m for p, m in offenders.items() if m}


# --- rule kinds, dependency order, guideline versions per management rule ------------------------------

def _second_toxicity(rules: Path) -> None:
    """A copy of the CRS rules as a second toxicity with a management rule that has only seed-S004."""
    grading = yaml.safe_load((rules / "crs_astct.yaml").read_text(encoding="utf-8"))
    grading["id"] = "crs-astct-copy"
    (rules / "zz_copy.yaml").write_text(yaml.safe_dump(grading, sort_keys=False, allow_unicode=True), encoding="utf-8")
    management = yaml.safe_load((rules / "crs_management.yaml").read_text(encoding="utf-8"))
    management["id"] = "copy-management"
    management["applies_to"] = "crs-astct-copy"
    del management["guidelines"]["ASCO-2021"]
    (rules / "aa_copy_management.yaml").write_text(yaml.safe_dump(management, sort_keys=False, allow_unicode=True), encoding="utf-8")


def test_rules_run_after_the_rules_they_read(rules_copy):
    _second_toxicity(rules_copy)  # aa_copy_management.yaml sorts before the grading rule it reads
    order = [c.rule_id for c in load_rule_set(rules_copy).ordered]
    assert order.index("crs-astct-copy") < order.index("copy-management")
    assert order.index("crs-astct") < order.index("crs-management")


def test_a_cycle_of_reads_is_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d.update(reads=["crs-management"]))
    assert "cycle" in str(_rules_error(rules_copy))


def test_reading_an_unknown_rule_is_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d.update(reads=["hepatotoxicity-ctcae"]))
    assert "reads unknown rules ['hepatotoxicity-ctcae']" in str(_rules_error(rules_copy))


def test_a_condition_reading_a_rule_not_in_reads_is_rejected(rules_copy):
    _edit_yaml(rules_copy / "icans_management.yaml", lambda d: d.update(reads=[]))
    assert "rule 'crs-astct' is not in reads" in str(_rules_error(rules_copy))


def test_management_rules_need_one_care_plan_rule(rules_copy):
    (rules_copy / "care_plan.yaml").unlink()
    assert "exactly one care_plan rule" in str(_rules_error(rules_copy))


def test_a_cycle_through_a_finding_read_is_rejected(rules_copy):
    """CRS grading reading ICANS management, which reads the CRS grade: a cycle."""
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d.update(reads=["icans-management"]))
    assert "cycle" in str(_rules_error(rules_copy))


def test_a_guideline_a_management_rule_lacks_falls_back_to_its_default(rules_copy):
    """ASCO-2021 exists in crs-management but not in copy-management: the request is valid (no KeyError,
    no 500), copy-management shows its default version and says so on the plan."""
    _second_toxicity(rules_copy)
    rule_set = load_rule_set(rules_copy)
    assert set(rule_set.guideline_ids) == {"seed-S004", "ASCO-2021"}
    body = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed",
                      "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"},
                      "effectiveDateTime": "2026-03-02T10:00:00+01:00"}},
        {"resource": {"resourceType": "Observation", "id": "t1", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                      "effectiveDateTime": "2026-03-05T08:00:00+01:00",
                      "valueQuantity": {"value": 38.6, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}},
    ]}).encode()
    timeline = build_timeline(entries_from_bundle(decode_bundle(body).entries), rule_set.input_terminology, AS_OF, BuildOptions())
    plans = {plan.rule_id: plan for plan in rule_set.evaluate(timeline, "ASCO-2021").plans}
    assert plans["crs-management"].guideline_id == "ASCO-2021"
    assert plans["copy-management"].guideline_id == "seed-S004"
    assert any("has no ASCO-2021 version: seed-S004 is shown" in note for note in plans["copy-management"].notes)


def test_default_guideline_must_be_one_of_the_rule_s_guidelines(rules_copy):
    _edit_yaml(rules_copy / "crs_management.yaml", lambda d: d.update(default_guideline="ASCO-2023"))
    assert "default_guideline 'ASCO-2023'" in str(_rules_error(rules_copy))


def test_rule_schema_criterion_definition_comes_from_the_condition_registry():
    from service.rules_engine.conditions import CONDITION_TYPES
    from service.rules_engine.load import rule_schema

    criterion = rule_schema()["$defs"]["criterion"]
    assert criterion["properties"]["type"]["enum"] == list(CONDITION_TYPES)
    branches = {b["if"]["properties"]["type"]["const"]: b["then"] for b in criterion["allOf"]}
    assert branches["measurement_threshold"]["required"] == ["concept", "comparator", "threshold"]
    assert branches["oxygen_support_level"]["properties"]["fio2_bands"]["minItems"] == 1


def test_a_criterion_parameter_unknown_to_its_condition_type_is_rejected(rules_copy):
    _edit_yaml(rules_copy / "crs_astct.yaml", lambda d: d["criteria"]["fever"].update(thresold=38))
    assert "schema validation failed" in str(_rules_error(rules_copy))


def test_every_code_a_plan_emits_is_in_the_codesystem():
    """Activity conditions and care actions named in the management rules are CodeSystem codes (and actions are
    in the care-activity ValueSet): a new rule file cannot emit an undefined code."""
    profiles = REPO / "fhir_profiles"
    codes = {c["code"] for c in json.loads((profiles / "CodeSystem-cartox.json").read_text(encoding="utf-8"))["concept"]}
    value_set = json.loads((profiles / "ValueSet-cartox-care-activity.json").read_text(encoding="utf-8"))
    activities = {c["code"] for include in value_set["compose"]["include"] for c in include.get("concept", [])}
    conditions, actions = {"none", "alternative", "replaced"}, set()
    for path in rule_files(rules_dir()):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        if document["kind"] != "management":
            continue
        conditions |= set(document.get("conditions", {}))
        actions |= {item["action"] for version in document["guidelines"].values()
                    for items in [*version.get("grades", {}).values(), version.get("always", [])] for item in items if "action" in item}
    assert conditions - codes == set()
    assert actions - activities == set()
