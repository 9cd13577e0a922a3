"""Decoded FHIR resources -> one patient's typed facts and input notes: statuses, codes, units and times.

One normaliser per resource shape, in a registry (resource type -> normaliser); Patient and Medication are
read by the others (the subject, the medication an administration references). Nothing unusable is used
silently: every resource or value left out becomes an InputNote. Rules for inputs that contradict themselves:

- Duplicate resources (the same resourceType and id twice in one request; without an id, the same fullUrl):
  the first occurrence is used and every later one is ignored with a warning located at it. Which copy is
  current cannot be told from the fields the rules read (no meta.lastUpdated is decoded); the first keeps the
  result independent of later pages or includes.
- A period that ends before it starts (effectivePeriod.end < start, abatement before onset): used as given at
  its start only (end = start, a point in time), with a warning located at the period or the abatement.
- A date-only period end covers that whole day (FHIR: the end includes any time on that date).
- A Bundle with a `next` link sent only part of the data: the reason is kept, with a warning.
- A resource type whose normaliser reads no concept of the loaded rules (Conditions while no rule reads a
  finding) is listed as an ignored type, like the types that are not decoded at all; once some concept of it
  is read, its resources of other codes are listed as ignored codes.
- Date-only values are placed at 00:00 in the evaluation time's offset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from itertools import chain
from operator import itemgetter
from typing import Any, Callable

from service.fhir_input.concepts import Terminology
from service.fhir_input.decode import Partial
from service.fhir_input.normalise import condition, medication_administration, observation, procedure
from service.fhir_input.normalise.context import BuildOptions, Context, SourcedEntry
from service.fhir_input.normalise.patient import birth_date_of, single_patient
from service.timeline.facts import Fact, InputNote

# Codes of the warnings below (cartox CodeSystem).
NOTE_DUPLICATE = "flagged-duplicate"
NOTE_PARTIAL_DATA = "flagged-partial-data"


def _always(_terms: Terminology) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Normaliser:
    normalise: Callable[[SourcedEntry, str, Context], None]  # (entry, its reference, context)
    reads: Callable[[Terminology], bool]  # False: the loaded rules read nothing of this type


# Resource type -> normaliser, in the order they run (the order of their notes).
NORMALISERS: dict[str, Normaliser] = {
    "Observation": Normaliser(observation.normalise, _always),
    "MedicationAdministration": Normaliser(medication_administration.normalise, _always),
    "Condition": Normaliser(condition.normalise, condition.reads),
    "Procedure": Normaliser(procedure.normalise, procedure.reads),
}


@dataclass(frozen=True, slots=True)
class NormalisedInput:
    as_of: datetime  # UTC
    evaluation_offset: tzinfo  # the UTC offset of the evaluation time the caller gave
    data_offset: tzinfo | None  # the offset the latest used fact was recorded in (None: no fact carries one)
    facts: list[Fact]
    notes: list[InputNote]
    patient: str | None  # "Patient/id"
    birth_date: date | None
    sex: str | None  # Patient.gender: male | female | other | unknown
    deceased: bool
    resource_types: frozenset[str]  # every resource type the request carried (used or not): what could be checked
    references: frozenset[str]  # the resources facts came from (the only ones outputs may cite)
    partial_data: tuple[str, ...]


def normalise_entries(
    entries: list[SourcedEntry],
    terminology: Terminology,
    as_of: datetime,
    options: BuildOptions,
    ignored_types: dict[str, list[Any]] | None = None,
) -> NormalisedInput:
    """Every entry through its resource type's normaliser (raises InputError for a second patient)."""
    ctx = Context(terminology, as_of, options)
    reads = {kind: normaliser.reads(terminology) for kind, normaliser in NORMALISERS.items()}
    unread: Counter[str] = Counter()
    by_type: dict[str, list[tuple[SourcedEntry, str]]] = {}  # resource type -> (entry, reference)
    full_url_to_ref: dict[str, str] = {}
    seen: set[str] = set()
    partial: dict[Partial, None] = {}
    for entry in entries:
        if entry.partial is not None:
            partial[entry.partial] = None
        resource = entry.resource
        kind = resource.resourceType
        if not reads.get(kind, True):
            unread[kind] += 1
            continue
        # How facts cite the resource: "Type/id", else its fullUrl, else its location.
        reference = f"{kind}/{resource.id}" if resource.id else (entry.full_url or entry.location)
        if reference in seen:
            ctx.note(NOTE_DUPLICATE, "warning",
                     f"{reference} appears more than once in the request: the first occurrence is used, this one is ignored",
                     entry.location)
            continue
        seen.add(reference)
        if entry.full_url:
            full_url_to_ref[entry.full_url] = reference
        group = by_type.get(kind)
        if group is None:
            group = by_type[kind] = []
        group.append((entry, reference))

    clinical = map(itemgetter(0), chain.from_iterable(by_type.get(kind, ()) for kind in NORMALISERS))
    patient_ref, patient = single_patient(by_type.get("Patient", []), clinical, full_url_to_ref)
    for entry, reference in by_type.get("Medication", ()):
        medication_administration.index_medication(entry, reference, ctx)
    for kind, normaliser in NORMALISERS.items():
        run = normaliser.normalise
        for entry, reference in by_type.get(kind, ()):
            run(entry, reference, ctx)

    notes = [InputNote(NOTE_PARTIAL_DATA, "warning", p.reason, p.location) for p in partial]
    notes += ctx.notes + ctx.summary_notes()
    counts = Counter({kind: len(locations) for kind, locations in (ignored_types or {}).items()}) + unread
    for kind, count in sorted(counts.items()):
        notes.append(InputNote("ignored-resource-type", "information", f"{kind} is not used by the rules", None, count))
    birth_date, deceased, sex = None, False, None
    if patient is not None:
        birth_date = birth_date_of(patient, notes)
        sex = patient.gender
        deceased = bool(patient.deceasedBoolean or patient.deceasedDateTime)
        if patient_ref:
            ctx.references.add(patient_ref)
    return NormalisedInput(
        as_of=ctx.as_of,
        evaluation_offset=ctx.display_offset,
        data_offset=ctx.latest_offset,
        facts=ctx.facts,
        notes=notes,
        patient=patient_ref,
        birth_date=birth_date,
        sex=sex,
        deceased=deceased,
        resource_types=frozenset(by_type) | frozenset(unread) | frozenset(ignored_types or ()),
        references=frozenset(ctx.references),
        partial_data=tuple(p.reason for p in partial),
    )
