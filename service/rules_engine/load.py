"""Load, schema-validate and compile the rule set once at start-up; its version is semver + content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from service.errors import RulesError
from service.fhir_input.concepts import Terminology, build_terminology
from service.resources import rules_dir
from service.rules_engine.conditions import Compiler
from service.rules_engine.grading import GradingRule
from service.rules_engine.management import ManagementRule, Plan
from service.rules_engine.model import Finding
from service.timeline.facts import Timeline

CONCEPTS_FILE = "concepts.yaml"
RULESET_FILE = "ruleset.yaml"
RULE_SUFFIXES = (".yaml", ".yml", ".json")


def read_document(path: Path) -> Any:
    """YAML and JSON rule files load the same way."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RulesError(str(path), f"cannot parse: {exc}") from exc


def _schema(directory: Path, name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((directory / "schema" / name).read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _validate(validator: jsonschema.protocols.Validator, document: Any, path: Path) -> None:
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        details = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5])
        raise RulesError(str(path), f"schema validation failed: {details}")


def rule_files(directory: Path) -> list[Path]:
    """Rule files: every YAML/JSON file in the directory except concepts, the rule-set file and cases."""
    return sorted(
        p for p in directory.iterdir()
        if p.suffix in RULE_SUFFIXES and p.name not in (CONCEPTS_FILE, RULESET_FILE) and ".cases." not in p.name
    )


def case_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".cases." in p.name and p.suffix in RULE_SUFFIXES)


@dataclass(frozen=True)
class Evaluation:
    findings: tuple[Finding, ...]
    plans: tuple[Plan, ...]


class RuleSet:
    """The compiled rules: evaluate(timeline) -> findings and plans. Immutable once loaded."""

    def __init__(self, version: str, terminology: Terminology, grading: list[GradingRule],
                 management: list[ManagementRule], files: list[str], canonical_base: str,
                 observed: frozenset[str]) -> None:
        self.version = version
        self.terminology = terminology
        self.input_terminology = terminology.restricted_to(observed)  # what timelines are built with
        self.grading = grading
        self.management = {rule.applies_to: rule for rule in management}
        self.files = files
        self.canonical_base = canonical_base

    @property
    def guideline_ids(self) -> tuple[str, ...]:
        ids: dict[str, None] = {}
        for rule in self.management.values():
            ids.update(dict.fromkeys(rule.guideline_ids))
        return tuple(ids)

    @property
    def default_guideline(self) -> str | None:
        return next((rule.default_guideline for rule in self.management.values()), None)

    def evaluate(self, timeline: Timeline, guideline: str | None = None) -> Evaluation:
        assessed = [rule.assess(timeline, self.terminology, self.version) for rule in self.grading]
        findings = tuple(finding for finding, _history in assessed)
        plans = []
        for finding, history in assessed:
            management = self.management.get(finding.rule.rule_id)
            if management is not None:
                plan = management.plan(finding, timeline, guideline, history)
                if plan is not None:
                    plans.append(plan)
        return Evaluation(findings, tuple(plans))


def _parameters(document: Mapping[str, Any], overrides: Mapping[str, Any], path: Path) -> dict[str, Any]:
    declared = document.get("parameters", {})
    values = {name: spec["value"] for name, spec in declared.items()}
    for name, value in overrides.items():
        if name not in declared:
            raise RulesError(str(path), f"override names unknown parameter {name!r}")
        numeric = isinstance(values[name], (int, float)) and not isinstance(values[name], bool)
        if type(value) is not type(values[name]) and not (numeric and isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise RulesError(str(path), f"override {name}={value!r} has the wrong type")
        allowed = declared[name].get("range")
        if allowed is not None and not allowed["min"] <= value <= allowed["max"]:
            raise RulesError(
                str(path), f"override {name}={value!r} is outside the allowed range {allowed['min']:g}-{allowed['max']:g}"
            )
        values[name] = value
    return values


def load_rule_set(
    directory: Path | None = None,
    canonical_base: str = "http://cartox.example.org/fhir",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> RuleSet:
    """Read every rule file, validate it against rules/schema, compile it; raise RulesError on any fault."""
    directory = directory or rules_dir()
    overrides = overrides or {}
    digest = hashlib.sha256()
    concepts_path = directory / CONCEPTS_FILE
    concepts = read_document(concepts_path)
    _validate(_schema(directory, "concepts.schema.json"), concepts, concepts_path)
    terminology = build_terminology(concepts, canonical_base)
    ruleset = read_document(directory / RULESET_FILE)

    validator = _schema(directory, "rule.schema.json")
    grading: list[GradingRule] = []
    management: list[ManagementRule] = []
    files = [CONCEPTS_FILE, RULESET_FILE]
    known_ids: set[str] = set()
    observed: set[str] = set()
    for path in rule_files(directory):
        document = read_document(path)
        _validate(validator, document, path)
        rule_id = document["id"]
        if rule_id in known_ids:
            raise RulesError(str(path), f"duplicate rule id {rule_id!r}")
        known_ids.add(rule_id)
        params = _parameters(document, overrides.get(rule_id, {}), path)
        compiler = Compiler(rule_id, params, terminology)
        if document["kind"] == "grading":
            grading.append(GradingRule(document, params, compiler))
        else:
            management.append(ManagementRule(document, compiler))
        observed |= compiler.observed
        files.append(path.name)
    unknown = set(overrides) - known_ids
    if unknown:
        raise RulesError(str(directory), f"overrides name unknown rules {sorted(unknown)}")
    graded = {g.info.rule_id: g for g in grading}
    for rule in management:
        if rule.applies_to not in graded:
            raise RulesError(rule.rule_id, f"applies_to names unknown grading rule {rule.applies_to!r}")
        unknown_criteria = rule.criteria_read - set(graded[rule.applies_to].criteria)
        if unknown_criteria:
            raise RulesError(rule.rule_id, f"conditions name criteria {sorted(unknown_criteria)} that {rule.applies_to} does not define")

    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes() + b"\0")
    digest.update(json.dumps(overrides, sort_keys=True).encode())
    version = f"{ruleset['version']}+{digest.hexdigest()[:12]}"
    return RuleSet(version, terminology, grading, management, files, canonical_base, frozenset(observed))
