"""Load, schema-validate and compile the rule set once at start-up; its version is semver + content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import jsonschema
import yaml

from service.errors import RulesError
from service.fhir_input.concepts import Terminology, build_terminology
from service.resources import rules_dir
from service.rules_engine.care_plan import CarePlanRule, CombinedPlan
from service.rules_engine.conditions import Compiler, criterion_schema
from service.rules_engine.grading import GradingRule
from service.rules_engine.management import ManagementRule, Plan
from service.rules_engine.metrics import MetricsRule
from service.rules_engine.model import Finding, MetricsFinding
from service.rules_engine.orders import OrderCheckRule, OrderResult
from service.rules_engine.regimen import RegimenFinding, RegimenRule
from service.rules_engine.phased import PhasedFinding, PhasedRule
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


def rule_schema(directory: Path | None = None) -> dict[str, Any]:
    """rules/schema/rule.schema.json with its criterion definition derived from the condition-type registry."""
    schema = json.loads(((directory or rules_dir()) / "schema" / "rule.schema.json").read_text(encoding="utf-8"))
    schema["$defs"]["criterion"] = {**schema["$defs"]["criterion"], **criterion_schema()}
    return schema


def _schema(directory: Path, name: str) -> jsonschema.protocols.Validator:
    if name == "rule.schema.json":
        schema = rule_schema(directory)
    else:
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
    findings: tuple[Finding | MetricsFinding | PhasedFinding | RegimenFinding, ...]  # in rule-file order
    plans: tuple[Plan, ...]  # one per management rule with something to recommend
    care_plan: CombinedPlan | None  # the plans merged: the patient's one CarePlan


class _State:
    """What the rules of one evaluation produce, in dependency order (the findings contract)."""

    def __init__(self, timeline: Timeline, terminology: Terminology, version: str, guideline: str | None) -> None:
        self.timeline = timeline
        self.terminology = terminology
        self.version = version
        self.guideline = guideline
        self.findings: dict[str, Finding | MetricsFinding | PhasedFinding | RegimenFinding] = {}
        self.histories: dict[str, Any] = {}
        self.plans: list[Plan] = []
        self.care_plan: CombinedPlan | None = None


def _run_grading(rule: GradingRule, state: _State) -> None:
    finding, history = rule.assess(state.timeline, state.terminology, state.version)
    state.findings[rule.info.rule_id] = finding
    state.histories[rule.info.rule_id] = history


def _run_metrics(rule: MetricsRule, state: _State) -> None:
    state.findings[rule.rule_id] = rule.assess(state.timeline, state.terminology, state.version)


def _run_regimen(rule: RegimenRule, state: _State) -> None:
    names = {name: state.findings[name].name for name in rule.reads}
    finding, plan = rule.assess(state.timeline, state.histories, names, state.version)
    state.findings[rule.rule_id] = finding
    if plan is not None:
        state.plans.append(plan)
def _run_phased(rule: PhasedRule, state: _State) -> None:
    state.findings[rule.rule_id] = rule.assess(state.timeline, state.terminology, state.version)


def _run_management(rule: ManagementRule, state: _State) -> None:
    read = {name: state.findings[name] for name in rule.reads if name in state.findings}
    plan = rule.plan(state.findings[rule.applies_to], state.timeline, state.guideline, state.histories.get(rule.applies_to), read)
    if plan is not None:
        state.plans.append(plan)


def _run_care_plan(rule: CarePlanRule, state: _State) -> None:
    state.care_plan = rule.merge(state.plans)


def _run_nothing(rule: Any, state: _State) -> None:
    """An order check runs on draft orders (RuleSet.check_orders), not in an evaluation."""


def _declared_reads(rule: Any, document: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(document.get("reads", ()))


@dataclass(frozen=True)
class RuleKind:
    """One kind of rule file: how it compiles, which rules it reads, and how it runs."""

    compile: Callable[[Mapping[str, Any], Mapping[str, Any], Compiler], Any]
    reads: Callable[[Any, Mapping[str, Any]], tuple[str, ...]]  # (compiled rule, document) -> rule ids it needs first
    run: Callable[[Any, _State], None]
    after_kinds: tuple[str, ...] = ()  # a rule of this kind runs after every rule of these kinds (it reads them all)


# The registry of rule kinds: a new kind (metrics, regimen) is one entry and one module.
RULE_KINDS: dict[str, RuleKind] = {
    "grading": RuleKind(
        compile=lambda document, params, compiler: GradingRule(document, params, compiler),
        reads=_declared_reads,
        run=_run_grading,
    ),
    "metrics": RuleKind(
        compile=lambda document, params, compiler: MetricsRule(document, params, compiler),
        reads=_declared_reads,
        run=_run_metrics,
    ),
    "regimen": RuleKind(
        compile=lambda document, params, compiler: RegimenRule(document, params, compiler),
        reads=_declared_reads,
        run=_run_regimen,
    ),
    "phased_grading": RuleKind(
        compile=lambda document, params, compiler: PhasedRule(document, params, compiler),
        reads=_declared_reads,
        run=_run_phased,
    ),
    "management": RuleKind(
        compile=lambda document, params, compiler: ManagementRule(document, compiler),
        reads=lambda rule, document: (rule.applies_to, *document.get("reads", ())),
        run=_run_management,
    ),
    "order_check": RuleKind(
        compile=lambda document, params, compiler: OrderCheckRule(document, params, compiler),
        reads=_declared_reads,
        run=_run_nothing,
    ),
    "care_plan": RuleKind(
        compile=lambda document, params, compiler: CarePlanRule(document, compiler),
        reads=_declared_reads,
        run=_run_care_plan,
        after_kinds=("management", "regimen"),
    ),
}


FINDING_KINDS = ("grading", "metrics", "phased_grading", "regimen")  # the kinds whose findings become RiskAssessments


@dataclass(frozen=True)
class _Compiled:
    rule_id: str
    kind: str
    rule: Any
    reads: tuple[str, ...]


def _dependency_order(rules: list[_Compiled]) -> list[_Compiled]:
    """Rules sorted so that every rule runs after the rules it reads (file order otherwise); cycles rejected."""
    rules = [replace(rule, reads=rule.reads + tuple(other.rule_id for other in rules if other.kind in RULE_KINDS[rule.kind].after_kinds))
             for rule in rules]
    by_id = {rule.rule_id: rule for rule in rules}
    for rule in rules:
        unknown = [name for name in rule.reads if name not in by_id]
        if unknown:
            raise RulesError(rule.rule_id, f"reads unknown rules {unknown}")
    ordered: list[_Compiled] = []
    state: dict[str, str] = {}  # rule id -> "visiting" | "done"

    def visit(rule: _Compiled, path: tuple[str, ...]) -> None:
        if state.get(rule.rule_id) == "done":
            return
        if state.get(rule.rule_id) == "visiting":
            raise RulesError(rule.rule_id, f"rules read each other in a cycle: {' -> '.join(path + (rule.rule_id,))}")
        state[rule.rule_id] = "visiting"
        for name in rule.reads:
            visit(by_id[name], path + (rule.rule_id,))
        state[rule.rule_id] = "done"
        ordered.append(rule)

    for rule in rules:
        visit(rule, ())
    return ordered


class RuleSet:
    """The compiled rules: evaluate(timeline) -> findings and plans. Immutable once loaded."""

    def __init__(self, version: str, terminology: Terminology, rules: list[_Compiled], files: list[str],
                 canonical_base: str, observed: frozenset[str]) -> None:
        self.version = version
        self.terminology = terminology
        self.input_terminology = terminology.restricted_to(observed)  # what timelines are built with
        self.ordered = _dependency_order(rules)
        self.grading: list[GradingRule] = [r.rule for r in rules if r.kind == "grading"]
        self.finding_rules = [r.rule_id for r in rules if r.kind in FINDING_KINDS]  # rule-file order
        self.by_id = {r.rule_id: r.rule for r in rules}
        self.order_check: OrderCheckRule | None = next((r.rule for r in rules if r.kind == "order_check"), None)
        if self.order_check is not None:
            _check_order_rule(self.order_check, self.by_id)
        self.management: dict[str, ManagementRule] = {r.rule_id: r.rule for r in rules if r.kind == "management"}
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
        state = _State(timeline, self.terminology, self.version, guideline)
        for compiled in self.ordered:
            RULE_KINDS[compiled.kind].run(compiled.rule, state)
        findings = tuple(state.findings[rule_id] for rule_id in self.finding_rules)
        return Evaluation(findings, tuple(state.plans), state.care_plan)


def _check_order_rule(rule: OrderCheckRule, by_id: Mapping[str, Any]) -> None:
    """The rules an order check names exist and are of the right kind (the drug in the management rule)."""
    if not isinstance(by_id.get(rule.projection), MetricsRule):
        raise RulesError(rule.rule_id, f"projection {rule.projection!r} is not a metrics rule")
    management = by_id.get(rule.tocilizumab_rule)
    if not isinstance(management, ManagementRule) or rule.tocilizumab_drug not in management.drugs:
        raise RulesError(rule.rule_id, f"tocilizumab names {rule.tocilizumab_rule}/{rule.tocilizumab_drug}, not a management rule's drug")
    if not all(isinstance(by_id.get(name), GradingRule) for name in rule.toxicity_findings):
        raise RulesError(rule.rule_id, f"for_toxicity_findings {list(rule.toxicity_findings)} must be grading rules")


def check_orders(rule_set: "RuleSet", orders: list[Any], timeline: Timeline, evaluation: Evaluation) -> list[OrderResult]:
    """The order-sign check of draft orders against an evaluation of the same timeline (none without the rule)."""
    if rule_set.order_check is None:
        return []
    findings = {finding.rule.rule_id: finding for finding in evaluation.findings}
    return rule_set.order_check.check(orders, timeline, findings, evaluation.care_plan, rule_set.by_id,
                                      rule_set.terminology, rule_set.version)


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
    compiled: list[_Compiled] = []
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
        kind = RULE_KINDS[document["kind"]]
        rule = kind.compile(document, params, compiler)
        compiled.append(_Compiled(rule_id, document["kind"], rule, kind.reads(rule, document)))
        observed |= compiler.observed
        files.append(path.name)
    unknown = set(overrides) - known_ids
    if unknown:
        raise RulesError(str(directory), f"overrides name unknown rules {sorted(unknown)}")
    if any(c.kind == "management" for c in compiled) and sum(c.kind == "care_plan" for c in compiled) != 1:
        raise RulesError(str(directory), "management rules need exactly one care_plan rule (how their plans merge)")
    graded = {c.rule_id: c.rule for c in compiled if c.kind in FINDING_KINDS}
    for rule in (c.rule for c in compiled if c.kind == "management"):
        if rule.applies_to not in graded:
            raise RulesError(rule.rule_id, f"applies_to names unknown grading or metrics rule {rule.applies_to!r}")
        unknown_criteria = rule.criteria_read - set(getattr(graded[rule.applies_to], "criteria", ()))
        if unknown_criteria:
            raise RulesError(rule.rule_id, f"conditions name criteria {sorted(unknown_criteria)} that {rule.applies_to} does not define")

    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes() + b"\0")
    digest.update(json.dumps(overrides, sort_keys=True).encode())
    version = f"{ruleset['version']}+{digest.hexdigest()[:12]}"
    return RuleSet(version, terminology, compiled, files, canonical_base, frozenset(observed))
