"""The one patient a request is about: its reference, birth date and whether it died."""

from __future__ import annotations

from datetime import date
from typing import Iterable

from service.errors import InputError, Issue
from service.fhir_input.decode import Resource
from service.fhir_input.normalise.context import SourcedEntry, relative
from service.fhir_input.times import DateOnly, TimeError, parse_fhir_datetime
from service.timeline.facts import InputNote


def single_patient(
    patients: list[tuple[SourcedEntry, str]], clinical: Iterable[SourcedEntry], full_url_to_ref: dict[str, str]
) -> tuple[str | None, Resource | None]:
    """The Patient reference (from Patient resources, with their references, and every subject) and resource;
    a second one is a 422."""
    seen: dict[str, str] = {}  # reference -> location where first seen
    for entry, reference in patients:
        seen.setdefault(reference, f"{entry.location}.id")
    resolved: dict[str, str] = {}  # every resource of a bundle names the same few subjects: resolve each once
    for entry in clinical:
        subject = entry.resource.subject.reference if entry.resource.subject else None
        if subject:
            reference = resolved.get(subject)
            if reference is None:
                reference = resolved[subject] = relative(full_url_to_ref.get(subject, subject))
            if reference not in seen:
                seen[reference] = f"{entry.location}.subject.reference"
    if len(seen) > 1:
        first, second = list(seen.items())[:2]
        raise InputError(
            Issue(
                "input-multiple-patients",
                f"The bundle holds data of more than one patient ({first[0]} and {second[0]}): send one patient per request",
                second[1],
                fhir_type="business-rule",
            ),
            status=422,
        )
    reference = next(iter(seen), None)
    patient = patients[0][0].resource if patients else None
    return reference, patient


def birth_date_of(patient: Resource, notes: list[InputNote]) -> date | None:
    if not patient.birthDate:
        return None
    try:
        parsed = parse_fhir_datetime(patient.birthDate)
    except TimeError as exc:
        notes.append(InputNote("dropped-value", "warning", f"birthDate: {exc}", "Patient.birthDate"))
        return None
    return parsed.day if isinstance(parsed, DateOnly) else parsed.date()
