"""MedicationAdministration -> Administration, with the medication resolved through Medication resources.

The medication is the administration's own code, or the code of the Medication it references (contained
"#id", or an entry of the request by relative reference, fullUrl or absolute URL); without a code, every
drug its text names. Doses: a dose <= 0, or above the medication's plausible maximum (concepts.yaml
`plausible_max_mg`), is dropped (dose_mg None) and reported; the administration itself still counts. A dose
in mL or L is a volume (`volume_ml`), never mg; a rate in volume per time (rateQuantity, rateRatio) becomes
`rate_ml_per_h`; a rate in mass per time (mg/h, ug/min) becomes `rate_mg_per_h` (an infusion whose dose is
its rate x the time it ran); per-kg rates (ug/kg/min of a vasopressor) are read as neither. The route
(dosage.route) becomes a route concept, None when it is not given or not known. The reasons (reasonCode,
reasonReference display) become indication concepts; a reason no concept names is `unrecognised`.
"""

from __future__ import annotations

from service.fhir_input.concepts import Terminology
from service.fhir_input.decode import CodeableConcept, Dosage, DraftOrder, Quantity, Resource
from service.fhir_input.normalise.context import (
    Context,
    SourcedEntry,
    code_label,
    concept_of,
    display_of,
    relative,
)
from service.fhir_input.statuses import Use, administration_use
from service.fhir_input.units import unit_code
from service.timeline.facts import UNRECOGNISED_REASON, Administration


def index_medication(entry: SourcedEntry, reference: str, ctx: Context) -> None:
    """A Medication entry, found again by the administrations that reference it."""
    ctx.medications[reference] = entry.resource
    if entry.full_url:
        ctx.medications[entry.full_url] = entry.resource


def normalise(entry: SourcedEntry, source: str, ctx: Context) -> None:
    resource, location = entry.resource, entry.location
    contained = {f"#{r.id}": r for r in resource.contained or () if r.resourceType == "Medication" and r.id}
    codeable, reference = _medication_of(resource, contained, ctx)
    terms = ctx.terms
    concepts = medication_concepts(codeable, terms) if codeable is not None else ()
    if not concepts and resource.medicationReference is not None:
        concepts = terms.medication_text.match_all(resource.medicationReference.display)
    if not concepts:
        if reference is not None and codeable is None:
            ctx.note("ignored-code", "warning",
                     f"medicationReference {reference!r} names no Medication in the request: administration not used",
                     f"{location}.medicationReference")
        else:
            ctx.ignored_codes[code_label(codeable)] += 1
        return
    named = ", ".join(concepts)
    use = administration_use(resource.status)
    if use is not Use.COUNT:
        ctx.status_note(use, f"MedicationAdministration ({named})", resource.status, location)
        return
    point = resource.effectiveDateTime if resource.effectiveDateTime is not None else resource.effectiveInstant
    timing = ctx.occurrence(point, resource.effectivePeriod, "effectivePeriod", location, "no effective time")
    if timing is None:
        return
    start, end, ongoing, date_only, offset = timing
    if not ongoing and end is None:
        end = start  # a single administration at a point in time
    elif ongoing and resource.status != "in-progress":
        end = start  # completed or stopped without an end: only the start is known
    dose = volume = rate = mass_rate = route = None
    dosage = resource.dosage
    if dosage is not None:
        if dosage.dose is not None and dosage.dose.value is not None:
            dose, volume = _dose(ctx, dosage.dose, concepts, named, location)
        if dosage.rateQuantity is not None or dosage.rateRatio is not None:
            rate = _rate(ctx, dosage, named, location)
        if dosage.rateQuantity is not None and dosage.rateQuantity.value is not None:
            mass_rate = _mass_rate(ctx, dosage.rateQuantity, named, f"{location}.dosage.rateQuantity.value")
        if dosage.route is not None:
            route = route_of(dosage.route, terms)
    reasons = reasons_of(resource, terms)
    if len(concepts) > 1:
        dose = None  # which drug the dose belongs to is unknown (a volume or rate is the fluid's)
        ctx.note("flagged-status", "warning", f"medication text names {named}: each counted, dose not attributed", location)
    display = display_of(codeable) or (resource.medicationReference.display if resource.medicationReference else None) or named
    status = resource.status or ""
    for concept in concepts:
        ctx.facts.append(Administration(concept, start, end, dose, status, display, source, offset, volume, rate, route,
                                        mass_rate, reasons))
    ctx.used(source, start, date_only, offset)


def _medication_of(resource: Resource, contained: dict[str, Resource], ctx: Context) -> tuple[CodeableConcept | None, str | None]:
    """The medication's code and the reference it came through, if any."""
    if resource.medicationCodeableConcept is not None:
        return resource.medicationCodeableConcept, None
    reference = resource.medicationReference.reference if resource.medicationReference else None
    if not reference:
        return None, None
    medications = ctx.medications
    medication = contained.get(reference) or medications.get(reference) or medications.get(relative(reference))
    return (medication.code if medication is not None else None), reference


def medication_concepts(codeable: CodeableConcept, terms: Terminology) -> tuple[str, ...]:
    """A code decides; without one, every drug the text (or a coding's display) names."""
    for coding in codeable.coding or ():
        concept = terms.medication_by_code.get((coding.system, coding.code))
        if concept:
            return (concept,)
    found = terms.medication_text.match_all(codeable.text)
    if found:
        return found
    for coding in codeable.coding or ():
        found = terms.medication_text.match_all(coding.display)
        if found:
            return found
    return ()


def _dose(ctx: Context, quantity: Quantity, concepts: tuple[str, ...], named: str, location: str) -> tuple[float | None, float | None]:
    """(dose in mg, volume in mL) of dosage.dose; an implausible dose is reported and not used."""
    terms = ctx.terms
    value = quantity.value
    code = unit_code(quantity, terms) or ""
    where = f"{location}.dosage.dose.value"
    if value <= 0:
        ctx.note("dropped-implausible", "warning",
                 f"{named}: dose {value:g} {code} is not a dose: not used (the administration still counts)", where)
        return None, None
    mass = terms.dose_conversions.get(code)
    if mass is not None:
        mg = mass.apply(value)
        limit = terms.plausible_max_mg.get(concepts[0]) if len(concepts) == 1 else None
        if limit is not None and mg > limit:
            ctx.note("dropped-implausible", "warning",
                     f"{named}: dose {value:g} {code} is above the plausible {limit:g} mg per administration: "
                     "not used (the administration still counts)", where)
            return None, None
        return mg, None
    volume = terms.volume_conversions.get(code)
    return None, (volume.apply(value) if volume is not None else None)


def _rate(ctx: Context, dosage: Dosage, named: str, location: str) -> float | None:
    """dosage.rateQuantity or rateRatio as a fluid rate in mL/h; None for rates of other kinds."""
    terms = ctx.terms
    if dosage.rateQuantity is not None:
        quantity, where = dosage.rateQuantity, f"{location}.dosage.rateQuantity.value"
        conversion = terms.rate_conversions.get(unit_code(quantity, terms) or "")
        if quantity.value is None or conversion is None:
            return None  # e.g. ug/kg/min of a vasopressor: not a fluid rate
        rate = conversion.apply(quantity.value)
    else:
        ratio, where = dosage.rateRatio, f"{location}.dosage.rateRatio"
        numerator, denominator = ratio.numerator, ratio.denominator
        if numerator is None or numerator.value is None or denominator is None:
            return None
        volume = terms.volume_conversions.get(unit_code(numerator, terms) or "")
        per = terms.duration_conversions.get(unit_code(denominator, terms) or "")
        if volume is None or per is None:
            return None
        hours = per.apply(1.0 if denominator.value is None else denominator.value)
        if hours <= 0:
            ctx.note("dropped-implausible", "warning", f"{named}: rate per {hours:g} h is not a rate: not used", where)
            return None
        rate = volume.apply(numerator.value) / hours
    if rate < 0:
        ctx.note("dropped-implausible", "warning", f"{named}: rate {rate:g} mL/h is negative: not used", where)
        return None
    return rate


def _mass_rate(ctx: Context, quantity: Quantity, named: str, where: str) -> float | None:
    """A drug's infusion rate in mg/h; None for other rates (volume, per kg)."""
    conversion = ctx.terms.mass_rate_conversions.get(unit_code(quantity, ctx.terms) or "")
    if conversion is None:
        return None
    rate = conversion.apply(quantity.value)
    if rate <= 0:
        ctx.note("dropped-implausible", "warning", f"{named}: rate {quantity.value:g} is not a rate: not used", where)
        return None
    return rate


def reasons_of(resource: Resource | DraftOrder, terms: Terminology) -> tuple[str, ...]:
    """Indication concepts of reasonCode (a code decides, else its text) and of reasonReference's display."""
    found: list[str] = []
    for reason in resource.reasonCode or ():
        concept = concept_of(reason, terms.indication_by_code) or terms.indication_text.match(reason.text) or next(
            (match for coding in reason.coding or () if (match := terms.indication_text.match(coding.display))), None)
        found.append(concept or UNRECOGNISED_REASON)
    for reference in resource.reasonReference or ():
        found.append(terms.indication_text.match(reference.display) or UNRECOGNISED_REASON)
    return tuple(dict.fromkeys(found))


def route_of(route: CodeableConcept, terms: Terminology) -> str | None:
    """A route code decides; else the route's text or a coding's display names it (IV, oral ...)."""
    concept = concept_of(route, terms.route_by_code)
    if concept:
        return concept
    found = terms.route_text.match(route.text)
    if found:
        return found
    for coding in route.coding or ():
        found = terms.route_text.match(coding.display)
        if found:
            return found
    return None
