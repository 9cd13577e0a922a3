"""Terminology from rules/concepts.yaml: codes and text synonyms to concept ids, units to canonical units.

Built once at start-up into plain dictionaries so that a request does only lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Iterable, Mapping

CODE_STATUSES = ("v", "s", "u")
PRESENCE = "presence"  # the value set saying whether an Observation coded as a finding found it (present | absent)

# What an Observation.code is read as: Terminology.observation_targets maps a code to one of these.
MEASUREMENT = "measurement"
PANEL = "panel"
CODED = "coded"
FINDING = "finding"


@dataclass(frozen=True, slots=True)
class UnitConversion:
    offset: float
    factor: float

    def apply(self, value: float) -> float:
        return (value + self.offset) * self.factor


@dataclass(frozen=True, slots=True)
class MeasurementConcept:
    concept: str
    canonical_unit: str
    conversions: Mapping[str, UnitConversion]
    plausible_min: float
    plausible_max: float
    integer: bool = False  # a score: whole numbers, valueInteger or valueQuantity in the canonical unit or none


@dataclass(frozen=True, slots=True)
class CodeRef:
    system: str
    code: str
    status: str
    level: str  # "ingredient" or "product"


@dataclass(frozen=True)
class TextMatcher:
    """Whole-word, case-insensitive synonym matching; the longest synonym wins at a position."""

    pattern: re.Pattern[str] | None
    concept_of: Mapping[str, str]

    @classmethod
    def build(cls, synonyms: Mapping[str, str]) -> "TextMatcher":
        if not synonyms:
            return cls(None, {})
        ordered = sorted(synonyms, key=len, reverse=True)
        alternation = "|".join(re.escape(word) for word in ordered)
        return cls(re.compile(rf"(?<![\w-])(?:{alternation})(?![\w-])", re.IGNORECASE), dict(synonyms))

    def match(self, text: str | None) -> str | None:
        if not text or self.pattern is None:
            return None
        found = self.pattern.search(text)
        return self.concept_of[found.group(0).lower()] if found else None

    def match_all(self, text: str | None) -> tuple[str, ...]:
        """Every concept the text names, in order: free text may name two drugs in one line."""
        if not text or self.pattern is None:
            return ()
        return tuple(dict.fromkeys(self.concept_of[m.group(0).lower()] for m in self.pattern.finditer(text)))


@dataclass(frozen=True)
class ValueSet:
    by_code: Mapping[tuple[str, str], str]
    text: TextMatcher


@dataclass(frozen=True)
class Terminology:
    version: str
    systems: Mapping[str, str]
    unit_aliases: Mapping[str, str]
    measurements: Mapping[str, MeasurementConcept]
    measurement_by_code: Mapping[tuple[str, str], str]
    panel_codes: frozenset[tuple[str, str]]
    coded_by_code: Mapping[tuple[str, str], tuple[str, str]]  # code -> (concept, value set name)
    value_sets: Mapping[str, ValueSet]
    medication_by_code: Mapping[tuple[str, str], str]
    medication_text: TextMatcher
    medication_codes: Mapping[str, tuple[CodeRef, ...]]
    groups: Mapping[str, frozenset[str]]
    dose_conversions: Mapping[str, UnitConversion]  # medication doses to mg
    all_codes: Mapping[str, tuple[CodeRef, ...]] = field(default_factory=dict)
    displays: Mapping[str, str] = field(default_factory=dict)  # concept id or canonical unit -> clinician's words
    volume_conversions: Mapping[str, UnitConversion] = field(default_factory=dict)  # doses in volume to mL
    rate_conversions: Mapping[str, UnitConversion] = field(default_factory=dict)  # infusion rates to mL/h
    duration_conversions: Mapping[str, UnitConversion] = field(default_factory=dict)  # rateRatio denominators to h
    plausible_max_mg: Mapping[str, float] = field(default_factory=dict)  # medication concept -> largest single dose
    panel_components: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # empty = any
    # Scores and coded assessments: a dataAbsentReason records the assessment as not performed (a fact).
    assessments: frozenset[str] = frozenset()
    finding_by_code: Mapping[tuple[str, str], str] = field(default_factory=dict)  # Observation or Condition code
    procedure_by_code: Mapping[tuple[str, str], str] = field(default_factory=dict)
    route_by_code: Mapping[tuple[str, str], str] = field(default_factory=dict)  # dosage.route codings
    route_text: TextMatcher = field(default_factory=lambda: TextMatcher.build({}))
    mass_rate_conversions: Mapping[str, UnitConversion] = field(default_factory=dict)  # drug infusion rates to mg/h
    indication_by_code: Mapping[tuple[str, str], str] = field(default_factory=dict)  # reasonCode codings
    indication_text: TextMatcher = field(default_factory=lambda: TextMatcher.build({}))
    equivalences: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # reference drug -> {medication: factor}
    presence: ValueSet | None = None  # value_sets.presence: the answers of an Observation coded as a finding

    @cached_property
    def observation_targets(self) -> Mapping[tuple[str, str], tuple[str, str | None, str | None]]:
        """Observation code -> (what it is read as, concept, value set name), so that one lookup per coding
        decides. A code listed twice is read with the priority measurement > panel > coded > finding."""
        targets: dict[tuple[str, str], tuple[str, str | None, str | None]] = {}
        targets.update((key, (FINDING, concept, PRESENCE)) for key, concept in self.finding_by_code.items())
        targets.update((key, (CODED, concept, values)) for key, (concept, values) in self.coded_by_code.items())
        targets.update((key, (PANEL, None, None)) for key in self.panel_codes)
        targets.update((key, (MEASUREMENT, concept, None)) for key, concept in self.measurement_by_code.items())
        return targets

    def display(self, name: str) -> str:
        """A concept, value or canonical unit in clinical words (the id, de-hyphenated, when none is given)."""
        return self.displays.get(name) or name.replace("-", " ")

    def restricted_to(self, observed: frozenset[str]) -> "Terminology":
        """The same terminology reading only the concepts some rule uses (observations, scores, findings,
        procedures): resources of the others are listed as ignored codes instead of becoming facts nobody
        reads. A panel stays when one of its components is read (or when its components are not listed)."""
        return replace(
            self,
            measurement_by_code={k: v for k, v in self.measurement_by_code.items() if v in observed},
            coded_by_code={k: v for k, v in self.coded_by_code.items() if v[0] in observed},
            panel_codes=frozenset(
                key for key in self.panel_codes
                if not self.panel_components.get(key) or self.panel_components[key] & observed
            ),
            finding_by_code={k: v for k, v in self.finding_by_code.items() if v in observed},
            procedure_by_code={k: v for k, v in self.procedure_by_code.items() if v in observed},
        )

    def observation_codes(self) -> frozenset[tuple[str, str]]:
        """Every (system, code) an Observation may carry to be read: measurement (and score), coded, panel
        and finding codes."""
        return frozenset(self.observation_targets)

    def members(self, names: Iterable[str]) -> frozenset[str]:
        """Concept ids named directly or through a medication group."""
        result: set[str] = set()
        for name in names:
            result |= self.groups.get(name, frozenset({name}))
        return frozenset(result)

    def output_coding(self, concept: str) -> CodeRef | None:
        """The code to put in outputs: an ingredient code if there is one, else a product code; verified first."""
        refs = sorted(
            self.medication_codes.get(concept, ()),
            key=lambda ref: (ref.level != "ingredient", CODE_STATUSES.index(ref.status)),
        )
        return refs[0] if refs else None


def _codes(entries: Iterable[Mapping[str, Any]], systems: Mapping[str, str]) -> list[CodeRef]:
    refs = []
    for entry in entries:
        system = systems.get(entry["system"], entry["system"])
        refs.append(CodeRef(system, str(entry["code"]), entry.get("status", "u"), entry.get("level", "ingredient")))
    return refs


def build_terminology(document: Mapping[str, Any], canonical_base: str) -> Terminology:
    """Compile the parsed concepts.yaml into lookup tables."""
    systems = dict(document["systems"])
    systems["cartox"] = f"{canonical_base}/CodeSystem/cartox"
    kinds = document["quantity_kinds"]

    displays: dict[str, str] = {}
    for kind in kinds.values():
        displays[kind["canonical"]] = kind["display"]
    measurements: dict[str, MeasurementConcept] = {}
    measurement_by_code: dict[tuple[str, str], str] = {}
    all_codes: dict[str, tuple[CodeRef, ...]] = {}
    # Scores are measurements in the `score` kind's unit: every condition on measurements reads them.
    quantities = [(concept, spec, kinds[spec["kind"]], False) for concept, spec in document["measurements"].items()]
    quantities += [(concept, spec, kinds["score"], True) for concept, spec in document.get("scores", {}).items()]
    for concept, spec, kind, integer in quantities:
        displays[concept] = spec["display"]
        measurements[concept] = MeasurementConcept(
            concept, kind["canonical"], _conversions(kind), float(spec["plausible"]["min"]),
            float(spec["plausible"]["max"]), integer,
        )
        refs = _codes(spec["codes"], systems)
        all_codes[concept] = tuple(refs)
        for ref in refs:
            measurement_by_code[(ref.system, ref.code)] = concept
    assessments = set(document.get("scores", {}))

    panels = document.get("panels", [])
    panel_codes = frozenset((ref.system, ref.code) for ref in _codes(panels, systems))
    panel_components = {
        (ref.system, ref.code): frozenset(entry.get("components", ()))
        for ref, entry in zip(_codes(panels, systems), panels)
    }

    value_sets: dict[str, ValueSet] = {}
    for name, members in document.get("value_sets", {}).items():
        by_code: dict[tuple[str, str], str] = {}
        synonyms: dict[str, str] = {}
        for concept, spec in members.items():
            displays[concept] = spec["display"]
            for ref in _codes(spec.get("codes", []), systems):
                by_code[(ref.system, ref.code)] = concept
            for word in spec.get("text", []):
                synonyms[word.lower()] = concept
        value_sets[name] = ValueSet(by_code, TextMatcher.build(synonyms))

    coded_by_code: dict[tuple[str, str], tuple[str, str]] = {}
    for concept, spec in document.get("coded_observations", {}).items():
        if "display" in spec:
            displays[concept] = spec["display"]
        if spec.get("assessment", False):
            assessments.add(concept)
        refs = _codes(spec["codes"], systems)
        all_codes[concept] = tuple(refs)
        for ref in refs:
            coded_by_code[(ref.system, ref.code)] = (concept, spec["values"])

    finding_by_code = _by_code(document.get("findings", {}), systems, displays, all_codes)
    procedure_by_code = _by_code(document.get("procedures", {}), systems, displays, all_codes)
    route_by_code = _by_code(document.get("routes", {}), systems, displays, all_codes)
    route_synonyms = {word.lower(): concept for concept, spec in document.get("routes", {}).items() for word in spec.get("text", [])}
    indication_by_code = _by_code(document.get("indications", {}), systems, displays, all_codes)
    indication_synonyms = {word.lower(): concept for concept, spec in document.get("indications", {}).items()
                           for word in spec.get("text", [])}
    equivalences = {name: {medication: float(entry["factor"]) for medication, entry in table["factors"].items()}
                    for name, table in document.get("equivalences", {}).items()}

    medication_by_code: dict[tuple[str, str], str] = {}
    medication_codes: dict[str, tuple[CodeRef, ...]] = {}
    synonyms = {}
    plausible_max_mg: dict[str, float] = {}
    for concept, spec in document["medications"].items():
        if "plausible_max_mg" in spec:
            plausible_max_mg[concept] = float(spec["plausible_max_mg"])
        refs = _codes(spec.get("codes", []), systems)
        medication_codes[concept] = tuple(refs)
        for ref in refs:
            medication_by_code[(ref.system, ref.code)] = concept
        for word in spec.get("text", []):
            synonyms[word.lower()] = concept

    groups = {name: frozenset(members) for name, members in document.get("medication_groups", {}).items()}
    return Terminology(
        version=str(document["version"]),
        systems=systems,
        unit_aliases={str(k): str(v) for k, v in document.get("unit_aliases", {}).items()},
        measurements=measurements,
        measurement_by_code=measurement_by_code,
        panel_codes=panel_codes,
        coded_by_code=coded_by_code,
        value_sets=value_sets,
        medication_by_code=medication_by_code,
        medication_text=TextMatcher.build(synonyms),
        medication_codes=medication_codes,
        groups=groups,
        dose_conversions={
            unit: UnitConversion(float(conv.get("offset", 0.0)), float(conv["factor"]))
            for unit, conv in kinds["medication-mass"]["units"].items()
        },
        all_codes=all_codes,
        displays=displays,
        volume_conversions=_conversions(kinds.get("fluid-volume")),
        rate_conversions=_conversions(kinds.get("fluid-rate")),
        duration_conversions=_conversions(kinds.get("duration")),
        plausible_max_mg=plausible_max_mg,
        panel_components=panel_components,
        assessments=frozenset(assessments),
        finding_by_code=finding_by_code,
        procedure_by_code=procedure_by_code,
        route_by_code=route_by_code,
        route_text=TextMatcher.build(route_synonyms),
        mass_rate_conversions=_conversions(kinds.get("medication-rate")),
        indication_by_code=indication_by_code,
        indication_text=TextMatcher.build(indication_synonyms),
        equivalences=equivalences,
        presence=value_sets.get(PRESENCE),
    )


def _by_code(section: Mapping[str, Any], systems: Mapping[str, str], displays: dict[str, str],
             all_codes: dict[str, tuple[CodeRef, ...]]) -> dict[tuple[str, str], str]:
    """(system, code) -> concept of a section of concepts with a display and codes (findings, procedures,
    routes), recording displays and code refs on the way."""
    by_code: dict[tuple[str, str], str] = {}
    for concept, spec in section.items():
        displays[concept] = spec["display"]
        refs = _codes(spec["codes"], systems)
        all_codes[concept] = tuple(refs)
        for ref in refs:
            by_code[(ref.system, ref.code)] = concept
    return by_code


def _conversions(kind: Mapping[str, Any] | None) -> dict[str, UnitConversion]:
    """A quantity kind's units -> conversions to its canonical unit (none when the kind is not defined)."""
    if kind is None:
        return {}
    return {unit: UnitConversion(float(conv.get("offset", 0.0)), float(conv["factor"])) for unit, conv in kind["units"].items()}
