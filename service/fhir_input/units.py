"""UCUM unit normalisation to each concept's canonical unit, with plausibility checks."""

from __future__ import annotations

from dataclasses import dataclass

from service.fhir_input.concepts import MeasurementConcept, Terminology, UnitConversion
from service.fhir_input.decode import Quantity

UCUM_SYSTEM = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class Normalised:
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Rejected:
    code: str  # dropped-unit | dropped-implausible | dropped-value
    reason: str


def unit_code(quantity: Quantity, terminology: Terminology) -> str | None:
    """The UCUM code of a quantity: its code when UCUM-coded, else its display unit through the aliases."""
    aliases = terminology.unit_aliases
    if quantity.code and (quantity.system in (None, UCUM_SYSTEM)):
        return aliases.get(quantity.code, quantity.code)
    if quantity.unit:
        return aliases.get(quantity.unit, quantity.unit)
    return None


def conversion_for(quantity: Quantity, concept: MeasurementConcept, terminology: Terminology) -> tuple[str, UnitConversion] | Rejected:
    """The UCUM code sent and its conversion to the concept's canonical unit. Depends only on the unit
    fields, so callers may cache it per (code, system, unit)."""
    code = unit_code(quantity, terminology)
    if code is None and concept.integer:  # a score needs no unit: its canonical unit is "points"
        code = concept.canonical_unit
    if code is None:
        return Rejected("dropped-unit", "value has no unit")
    conversion = concept.conversions.get(code)
    if conversion is None:
        return Rejected("dropped-unit", f"unit {code!r} cannot be converted to {concept.canonical_unit}")
    return code, conversion


def implausible(sent: float, code: str, value: float, concept: MeasurementConcept) -> Rejected | None:
    if concept.integer:
        return _implausible_score(value, concept)
    if concept.plausible_min <= value <= concept.plausible_max:
        return None
    return Rejected(
        "dropped-implausible",
        f"{sent:g} {code} = {value:.4g} {concept.canonical_unit} is outside the plausible range "
        f"{concept.plausible_min:g}–{concept.plausible_max:g} {concept.canonical_unit}",
    )


def normalise(quantity: Quantity, concept: MeasurementConcept, terminology: Terminology) -> Normalised | Rejected:
    """Convert to the concept's canonical unit; reject unknown units and implausible values."""
    if quantity.value is None:
        return Rejected("dropped-value", "no value")
    resolved = conversion_for(quantity, concept, terminology)
    if isinstance(resolved, Rejected):
        return resolved
    code, conversion = resolved
    value = conversion.apply(quantity.value)
    return implausible(quantity.value, code, value, concept) or Normalised(value, concept.canonical_unit)


def _implausible_score(value: float, concept: MeasurementConcept) -> Rejected | None:
    if not value.is_integer():
        return Rejected("dropped-implausible", f"{value:g} is not a whole number of points")
    if concept.plausible_min <= value <= concept.plausible_max:
        return None
    return Rejected("dropped-implausible", f"{value:g} is outside the score's range {concept.plausible_min:g}–{concept.plausible_max:g}")
