"""Observation -> Measurement (quantities and scores), CodedValue (devices, coded assessments), ClinicalFinding
(an Observation coded as the finding) or NotPerformed (an assessment recorded as not done).

Observation.code decides what is read, in one lookup per coding (`Terminology.observation_targets`); a
panel's own code carries no value, its components do. Scores take valueInteger, or valueQuantity in
{score} or without a unit, and must be whole numbers within their range. A dataAbsentReason on a score or
coded assessment is a fact ("ICE not performed: unarousable"); on any other measurement it is a value left
out (noted). An Observation coded as a finding says present unless its value says absent (valueBoolean
false, or the `presence` value set's `absent`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from service.fhir_input.concepts import CODED, FINDING, MEASUREMENT, PANEL, MeasurementConcept, ValueSet
from service.fhir_input.decode import CodeableConcept, Component, Quantity, ReferenceRange, Resource
from service.fhir_input.normalise.context import (
    Context,
    SourcedEntry,
    Timing,
    code_label,
    display_of,
    first_code,
)
from service.fhir_input.statuses import Use
from service.fhir_input.times import EARLIEST_YEAR, LATEST_YEAR
from service.fhir_input.units import Rejected, conversion_for, implausible
from service.timeline.facts import ClinicalFinding, CodedValue, Measurement, NotPerformed

Holder = Resource | Component  # both carry value[x], dataAbsentReason and referenceRange
Target = tuple[str, str | None, str | None]  # (what the code is read as, concept, value set name)
Reader = Callable[[Context, Target, Holder, Timing, str, str], bool]  # True when a fact was added


def normalise(entry: SourcedEntry, source: str, ctx: Context) -> None:
    resource, location = entry.resource, entry.location
    use = ctx.observation_statuses.get(resource.status, Use.FLAG)
    if use is not Use.COUNT:
        ctx.status_note(use, "Observation", resource.status, location)
        return
    targets = ctx.terms.observation_targets
    target = None
    for coding in (resource.code.coding or ()) if resource.code else ():
        target = targets.get((coding.system, coding.code))
        if target is not None:
            break
    if target is None and not resource.component:
        ctx.ignored_codes[code_label(resource.code)] += 1
        return
    point = resource.effectiveDateTime
    timing = None
    if point is not None and len(point) > 10:
        # Fast path for the common case, a full dateTime with an offset (the hot loop of a request).
        try:
            moment = datetime.fromisoformat(point)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None and EARLIEST_YEAR <= moment.year <= LATEST_YEAR:
            start = moment.astimezone(timezone.utc)
            if start > ctx.as_of:
                ctx.future += 1
                return
            timing = (start, None, False, False, moment.tzinfo)
    if timing is None:
        timing = ctx.occurrence(point if point is not None else resource.effectiveInstant, resource.effectivePeriod,
                                "effectivePeriod", location, "no effective time")
        if timing is None:
            return
    used = _READERS[target[0]](ctx, target, resource, timing, source, location) if target is not None else False
    if resource.component:
        at_start = timing if timing[1] is None and not timing[2] else (timing[0], None, False, timing[3], timing[4])
        for index, component in enumerate(resource.component):
            used = _component(ctx, component, index, at_start, source, location) or used
    if used:
        ctx.used(source, timing[0], timing[3], timing[4])
    elif target is None:
        ctx.ignored_codes[code_label(resource.code)] += 1


def _component(ctx: Context, component: Component, index: int, timing: Timing, source: str, location: str) -> bool:
    """A component read at its Observation's start: measurements and coded values only."""
    targets = ctx.terms.observation_targets
    for coding in (component.code.coding or ()) if component.code else ():
        target = targets.get((coding.system, coding.code))
        reader = _COMPONENT_READERS.get(target[0]) if target is not None else None
        if reader is not None:
            return reader(ctx, target, component, timing, source, f"{location}.component[{index}]")
    return False


# --- quantities and scores ----------------------------------------------------------------------------

def _measurement(ctx: Context, target: Target, holder: Holder, timing: Timing, source: str, location: str) -> bool:
    concept = target[1]
    quantity = holder.valueQuantity
    if quantity is None:
        return _without_quantity(ctx, concept, holder, timing, source, location)
    spec = ctx.terms.measurements[concept]
    sent = quantity.value
    if sent is None:
        ctx.note("dropped-value", "warning", f"{concept}: no value", location + ".valueQuantity")
        return False
    key = (concept, quantity.code, quantity.system, quantity.unit)
    resolved = ctx.units.get(key)
    if resolved is None:
        resolved = ctx.units[key] = conversion_for(quantity, spec, ctx.terms)
    if isinstance(resolved, Rejected):
        ctx.note(resolved.code, "warning", f"{concept}: {sent:g}: {resolved.reason}", location + ".valueQuantity")
        return False
    code, conversion = resolved
    value = conversion.apply(sent)
    rejected = implausible(sent, code, value, spec)
    if rejected is not None:
        ctx.note(rejected.code, "warning", f"{concept}: {rejected.reason}", location + ".valueQuantity")
        return False
    low, high = _reference_range(ctx, concept, spec, holder.referenceRange, location) if holder.referenceRange else (None, None)
    ctx.facts.append(Measurement(concept, value, spec.canonical_unit, timing[0], source, f"{sent:g} {code}", timing[3], low, high))
    return True


def _without_quantity(ctx: Context, concept: str, holder: Holder, timing: Timing, source: str, location: str) -> bool:
    spec = ctx.terms.measurements[concept]
    if holder.valueInteger is not None:
        if not spec.integer:
            ctx.note("dropped-unit", "warning", f"{concept}: integer value without a unit", location)
            return False
        value = float(holder.valueInteger)
        rejected = implausible(value, spec.canonical_unit, value, spec)
        if rejected is not None:
            ctx.note(rejected.code, "warning", f"{concept}: {rejected.reason}", location + ".valueInteger")
            return False
        low, high = _reference_range(ctx, concept, spec, holder.referenceRange, location) if holder.referenceRange else (None, None)
        original = f"{holder.valueInteger} {spec.canonical_unit}"
        ctx.facts.append(Measurement(concept, value, spec.canonical_unit, timing[0], source, original, timing[3], low, high))
        return True
    if holder.dataAbsentReason is not None and concept in ctx.terms.assessments:
        return _not_performed(ctx, concept, holder.dataAbsentReason, timing, source)
    ctx.note("dropped-value", "information", f"{concept}: no value (data absent)", location)
    return False


def _reference_range(ctx: Context, concept: str, spec: MeasurementConcept, ranges: list[ReferenceRange],
                     location: str) -> tuple[float | None, float | None]:
    """The first referenceRange's low and high in the concept's canonical unit (a range per age or sex is
    the sender's choice: the first is the one it shows first)."""
    first = ranges[0]
    where = f"{location}.referenceRange[0]"
    return _bound(ctx, concept, spec, first.low, f"{where}.low"), _bound(ctx, concept, spec, first.high, f"{where}.high")


def _bound(ctx: Context, concept: str, spec: MeasurementConcept, quantity: Quantity | None, where: str) -> float | None:
    if quantity is None or quantity.value is None:
        return None
    key = (concept, quantity.code, quantity.system, quantity.unit)
    resolved = ctx.units.get(key)
    if resolved is None:
        resolved = ctx.units[key] = conversion_for(quantity, spec, ctx.terms)
    if isinstance(resolved, Rejected):
        ctx.note(resolved.code, "information", f"{concept}: reference range {quantity.value:g}: {resolved.reason}: not used", where)
        return None
    return resolved[1].apply(quantity.value)


# --- coded values and assessments ----------------------------------------------------------------------

def answer_of(value_set: ValueSet, value: CodeableConcept) -> str | None:
    """The value set member a CodeableConcept names: by code, else by its text or a coding's display."""
    for coding in value.coding or ():
        match = value_set.by_code.get((coding.system, coding.code))
        if match:
            return match
    match = value_set.text.match(value.text)
    if match:
        return match
    for coding in value.coding or ():
        match = value_set.text.match(coding.display)
        if match:
            return match
    return None


def _coded(ctx: Context, target: Target, holder: Holder, timing: Timing, source: str, location: str) -> bool:
    _, concept, value_set_name = target
    value = holder.valueCodeableConcept
    if value is None:
        if holder.dataAbsentReason is not None and concept in ctx.terms.assessments:
            return _not_performed(ctx, concept, holder.dataAbsentReason, timing, source)
        ctx.note("dropped-value", "warning", f"{concept}: no valueCodeableConcept", location)
        return False
    match = answer_of(ctx.terms.value_sets[value_set_name], value)
    display = display_of(value)
    if match is None:
        ctx.note("ignored-code", "warning", f"{concept}: {display!r} is not a known value; treated as unknown", location)
    start, end, ongoing = timing[0], timing[1], timing[2]
    ctx.facts.append(CodedValue(concept, match, display, start, end, ongoing, source))
    return True


def _not_performed(ctx: Context, concept: str, reason: CodeableConcept, timing: Timing, source: str) -> bool:
    ctx.facts.append(NotPerformed(concept, timing[0], display_of(reason) or "not performed", first_code(reason), source, timing[3]))
    return True


# --- findings -----------------------------------------------------------------------------------------------

def _finding(ctx: Context, target: Target, holder: Holder, timing: Timing, source: str, location: str) -> bool:
    concept = target[1]
    if holder.dataAbsentReason is not None:
        ctx.note("dropped-value", "information", f"{concept}: not assessed ({display_of(holder.dataAbsentReason)})", location)
        return False
    present = _presence(ctx, holder)
    if present is False:
        ctx.note("dropped-value", "information", f"{concept}: recorded as absent", location)
        return False
    if present is None:
        ctx.note("ignored-code", "warning", f"{concept}: the value says neither present nor absent: not used, check it", location)
        return False
    start, end, ongoing, date_only, _ = timing
    ctx.facts.append(ClinicalFinding(concept, start, end if end is not None or ongoing else start, None, None,
                             display_of(holder.code), source, date_only))
    return True


def _presence(ctx: Context, resource: Resource) -> bool | None:
    """True present, False absent, None a value that says neither (a count or a quantity: 0 seizures is
    none). No value: recording the finding means it was found."""
    if resource.valueBoolean is not None:
        return resource.valueBoolean
    if resource.valueQuantity is not None or resource.valueInteger is not None:
        return None
    value = resource.valueCodeableConcept
    if value is None:
        return True
    presence = ctx.terms.presence
    answer = answer_of(presence, value) if presence is not None else None
    return None if answer is None else answer == "present"


def _panel(ctx: Context, target: Target, holder: Holder, timing: Timing, source: str, location: str) -> bool:
    return False  # a panel's own code carries no value: its components do


_READERS: dict[str, Reader] = {MEASUREMENT: _measurement, PANEL: _panel, CODED: _coded, FINDING: _finding}
_COMPONENT_READERS: dict[str, Reader] = {MEASUREMENT: _measurement, CODED: _coded}
