"""Draft MedicationRequests (CDS Hooks order-sign `context.draftOrders`) -> Order facts.

EHRs send orders while they are being written: the Bundle may lack its type, an order its status, intent or
medication. Such an order is not checked and says why (`skipped`); nothing here raises for one order. The
dose is dosageInstruction[0].doseAndRate[0].doseQuantity in mg (g, ug converted); the schedule is
timing.repeat (frequency per period) bounded by boundsDuration, boundsPeriod or count; without a bound the
order check projects it over its default horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from service.fhir_input.concepts import Terminology
from service.fhir_input.decode import DraftOrder, Quantity
from service.fhir_input.normalise.medication_administration import medication_concepts, reasons_of, route_of
from service.fhir_input.times import DateOnly, TimeError, parse_fhir_datetime
from service.fhir_input.units import unit_code


@dataclass(frozen=True)
class Order:
    """One draft order, as far as it can be read."""

    id: str | None
    location: str  # "context.draftOrders.entry[0].resource"
    resource: dict[str, Any]  # the order as sent (an `update` suggestion corrects a copy of it)
    concepts: tuple[str, ...]  # medication concepts
    display: str  # the medication concept(s) in words ("an order" before one is chosen)
    dose_mg: float | None
    every_hours: float | None  # period / frequency; None = a single dose
    doses: int | None  # how many doses its bounds allow; None = unbounded (the default horizon applies)
    start: datetime | None  # boundsPeriod.start
    route: str | None
    reasons: tuple[str, ...]
    skipped: str | None = None  # why the order is not checked


def read_order(draft: DraftOrder, raw: dict[str, Any], location: str, terms: Terminology, display_offset: tzinfo) -> Order:
    """An Order from one decoded draft (its wrong-typed fields were already refused by the decoder)."""
    missing = [name for name in ("status", "intent") if not getattr(draft, name)]
    codeable = draft.medicationCodeableConcept
    concepts = medication_concepts(codeable, terms) if codeable is not None else ()
    if not concepts and draft.medicationReference is not None:
        concepts = terms.medication_text.match_all(draft.medicationReference.display)
    # named by its medication concept, never by the draft's free text (cards show this name unescaped in summaries)
    display = ", ".join(terms.display(c) for c in concepts) or "an order"
    if codeable is None and draft.medicationReference is None:
        missing.append("medication")
    skipped = f"no {', '.join(missing)} yet" if missing else None
    dosage = (draft.dosageInstruction or [None])[0]
    dose_mg = every_hours = start = None
    doses: int | None = None
    route = None
    if dosage is not None:
        dose_quantity = next((d.doseQuantity for d in dosage.doseAndRate or () if d.doseQuantity is not None), None)
        dose_mg = _mg(dose_quantity, terms)
        route = route_of(dosage.route, terms) if dosage.route is not None else None
        repeat = dosage.timing.repeat if dosage.timing is not None else None
        if repeat is not None:
            every_hours = _every_hours(repeat.frequency, repeat.period, repeat.periodUnit, terms)
            start, doses = _bounds(repeat, every_hours, terms, display_offset)
    return Order(draft.id, location, raw, concepts, display, dose_mg, every_hours, doses, start, route,
                 reasons_of(draft, terms), skipped)


def _mg(quantity: Quantity | None, terms: Terminology) -> float | None:
    if quantity is None or quantity.value is None or quantity.value <= 0:
        return None
    conversion = terms.dose_conversions.get(unit_code(quantity, terms) or "")
    return conversion.apply(quantity.value) if conversion is not None else None


def _every_hours(frequency: int | None, period: float | None, unit: str | None, terms: Terminology) -> float | None:
    per = terms.duration_conversions.get(unit or "")
    if period is None or per is None or period <= 0:
        return None
    return per.apply(period) / (frequency if frequency and frequency > 0 else 1)


def _bounds(repeat: Any, every_hours: float | None, terms: Terminology, display_offset: tzinfo) -> tuple[datetime | None, int | None]:
    """(start, number of doses) of a schedule: count, boundsDuration or boundsPeriod."""
    start = _instant(repeat.boundsPeriod.start, display_offset) if repeat.boundsPeriod is not None else None
    if repeat.count:
        return start, int(repeat.count)
    hours = None
    if repeat.boundsDuration is not None and repeat.boundsDuration.value is not None:
        conversion = terms.duration_conversions.get(unit_code(repeat.boundsDuration, terms) or "")
        hours = conversion.apply(repeat.boundsDuration.value) if conversion is not None else None
    elif repeat.boundsPeriod is not None and start is not None:
        end = _instant(repeat.boundsPeriod.end, display_offset)
        hours = (end - start).total_seconds() / 3600 if end is not None else None
    if hours is None or every_hours is None:
        return start, None
    return start, max(1, int(hours // every_hours))


def _instant(text: str | None, display_offset: tzinfo) -> datetime | None:
    """A bound's dateTime (a date is 00:00 of it in the evaluation's offset); None when absent or unreadable."""
    if not text:
        return None
    try:
        parsed = parse_fhir_datetime(text)
    except TimeError:
        return None
    if isinstance(parsed, DateOnly):
        return datetime(parsed.day.year, parsed.day.month, parsed.day.day, tzinfo=display_offset)
    return parsed  # a time is always with its UTC offset (parse_fhir_datetime refuses others)
