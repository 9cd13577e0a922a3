"""The evaluation pipeline shared by the HTTP endpoints, the CLI and the benchmark.

decode -> timeline -> rules -> FHIR outputs -> cards. Pure: no Flask, no I/O, the clock is an argument.
"""

from __future__ import annotations

import gc
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import orjson
from pydantic import ValidationError as PydanticValidationError

from service.cds_cards.cards import CardInput, cards_for
from service.errors import InputError, Issue
from service.fhir_input.decode import USED_TYPES, decode_bundle
from service.fhir_output.build import (
    OutputConfig,
    care_plan,
    operation_outcome_of_notes,
    risk_assessment,
    stable_id,
    validated,
)
from service.rules_engine.load import Evaluation, RuleSet, load_rule_set
from service.rules_engine.model import Finding, MetricsFinding
from service.settings import Settings
from service.timeline.build import BuildOptions, SourcedEntry, build_timeline, entries_from_bundle
from service.timeline.facts import Timeline

@dataclass(frozen=True)
class RequestOptions:
    as_of: datetime
    guideline: str | None = None
    infusion: datetime | None = None
    infusion_date_only: bool = False
    strict: bool | None = None


@dataclass(frozen=True)
class Outcome:
    timeline: Timeline
    evaluation: Evaluation
    resources: tuple[dict[str, Any], ...]  # RiskAssessments and CarePlans, validated
    operation_outcome: dict[str, Any]
    cards: tuple[dict[str, Any], ...]

    def cds_response(self) -> dict[str, Any]:
        return {"cards": list(self.cards)}

    def bundle(self, bundle_id: str) -> dict[str, Any]:
        entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in self.resources + (self.operation_outcome,)]
        return {"resourceType": "Bundle", "id": bundle_id, "type": "collection", "entry": entries}


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """An evaluation allocates tens of thousands of short-lived, acyclic objects (freed by reference
    counting); letting the cyclic collector scan them costs about a tenth of the request for nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Engine:
    """Settings + the compiled rule set: everything a request needs, built once at start-up."""

    def __init__(self, settings: Settings | None = None, rule_set: RuleSet | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.rules = rule_set or load_rule_set(
            canonical_base=self.settings.canonical_base, overrides=self.settings.rule_overrides
        )
        self.output = OutputConfig(self.settings.canonical_base)
        if self.settings.guideline not in self.rules.guideline_ids:
            raise ValueError(f"CARTOX_GUIDELINE={self.settings.guideline!r} is not one of {self.rules.guideline_ids}")

    def check_guideline(self, guideline: str | None, location: str = "guideline") -> str:
        chosen = guideline or self.settings.guideline
        if chosen not in self.rules.guideline_ids:
            known = ", ".join(self.rules.guideline_ids)
            raise InputError(Issue("input-bad-parameter", f"Unknown guideline {chosen!r}: use one of {known}", location))
        return chosen

    def evaluate(self, entries: list[SourcedEntry], ignored_types: dict[str, list[Any]], options: RequestOptions) -> Outcome:
        with _without_cyclic_gc():
            return self._evaluate(entries, ignored_types, options)

    def _evaluate(self, entries: list[SourcedEntry], ignored_types: dict[str, list[Any]], options: RequestOptions) -> Outcome:
        guideline = self.check_guideline(options.guideline)
        infusion = options.infusion
        if infusion is not None and options.infusion_date_only:  # a date: 00:00 of it in the offset of asOf
            infusion = infusion.replace(tzinfo=options.as_of.tzinfo)
        if infusion is not None and infusion > options.as_of:
            raise InputError(Issue("input-bad-parameter", "infusionDate is after the evaluation time (asOf): day 0 cannot be in the future",
                                   "infusionDate"))
        build_options = BuildOptions(self.settings.accept_preliminary, options.infusion, options.infusion_date_only)
        timeline = build_timeline(entries, self.rules.input_terminology, options.as_of, build_options, ignored_types)
        evaluation = self.rules.evaluate(timeline, guideline)
        key = (self.rules.version, timeline.patient or "-", options.as_of.isoformat(), guideline)
        risk_assessments = {
            finding.rule.rule_id: validated(risk_assessment(finding, timeline, self.output, stable_id(*key, finding.rule.rule_id, finding_digest(finding)),
                                                            guideline, self.rules.terminology))
            for finding in evaluation.findings
        }
        resources: list[dict[str, Any]] = list(risk_assessments.values())
        combined = evaluation.care_plan
        cp = None
        if combined is not None:
            ra_ids = {rule_id: ra["id"] for rule_id, ra in risk_assessments.items()}
            cp_id = stable_id(*key, combined.rule_id, *(ra_ids[plan.finding.rule.rule_id] for plan in combined.plans))
            cp = validated(care_plan(combined, timeline, self.output, cp_id, ra_ids, self.rules.terminology))
            resources.append(cp)
        card_inputs = [CardInput(finding, risk_assessments[finding.rule.rule_id], combined, cp) for finding in evaluation.findings]
        outcome = validated(operation_outcome_of_notes(timeline.notes, self.output, stable_id(*key, "input-notes")))
        cards = tuple(cards_for(card_inputs, timeline, self.output, self.rules.terminology))
        return Outcome(timeline, evaluation, tuple(resources), outcome, cards)

    def evaluate_bundle_bytes(self, body: bytes, options: RequestOptions) -> Outcome:
        with _without_cyclic_gc():  # decoding allocates the most short-lived objects of a request
            decoded = decode_bundle(body)
            if options.strict if options.strict is not None else self.settings.strict_validation:
                strict_validate(body)
            return self.evaluate(entries_from_bundle(decoded.entries), decoded.ignored_types, options)


def strict_validate(body: bytes) -> None:
    """Full FHIR R4B validation of every resource of an accepted type (validate=strict)."""
    from fhir.resources.R4B import get_fhir_model_class

    document = orjson.loads(body)
    for index, entry in enumerate(document.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") not in USED_TYPES:
            continue
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
            raise InputError(
                Issue("input-invalid-resource", f"{resource['resourceType']}: {first['msg']}", f"Bundle.entry[{index}].resource{path}"),
                status=422,
            ) from None


def finding_digest(finding: Finding | MetricsFinding) -> str:
    """What the finding says (grades or values, and evidence): different findings never share an output id."""
    return hashlib.sha256("|".join(finding.digest_parts()).encode()).hexdigest()[:16]


_DEFAULT_ENGINE: Engine | None = None


def default_engine() -> Engine:
    """An engine from the environment's settings, built once per process."""
    global _DEFAULT_ENGINE
    if _DEFAULT_ENGINE is None:
        _DEFAULT_ENGINE = Engine()
    return _DEFAULT_ENGINE


def render(outcome: Outcome, response_format: str) -> bytes:
    if response_format == "fhir":
        bundle_id = stable_id(outcome.operation_outcome["id"], "bundle")
        return orjson.dumps(outcome.bundle(bundle_id))
    return orjson.dumps(outcome.cds_response())


def evaluate_bytes(
    body: bytes,
    *,
    as_of: datetime,
    response_format: str = "cards",
    engine: Engine | None = None,
    guideline: str | None = None,
    infusion: datetime | None = None,
    strict: bool | None = None,
) -> bytes:
    """Request bytes (a FHIR Bundle) -> response bytes (CDS Hooks cards or a FHIR Bundle)."""
    engine = engine or default_engine()
    outcome = engine.evaluate_bundle_bytes(body, RequestOptions(as_of, guideline, infusion, strict=strict))
    return render(outcome, response_format)
