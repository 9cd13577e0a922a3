"""Normalised input -> one patient's Timeline: facts sorted and indexed by concept, the patient and day 0.

Reading the resources (statuses, codes, units, times, notes) is `service.fhir_input.normalise`. Display
offset: times are shown in the UTC offset the latest used fact was recorded in (the patient's data), or in
the evaluation time's offset when no fact carries one. A date-only infusionDate is placed at 00:00 in the
evaluation time's offset.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone, tzinfo
from typing import Any

from service.fhir_input.concepts import Terminology
from service.fhir_input.normalise import normalise_entries
from service.fhir_input.normalise.context import BuildOptions, SourcedEntry, entries_from_bundle
from service.timeline.facts import Administration, DayZero, InputNote, Timeline

# The input side's entry points, re-exported: the pipeline and the HTTP adapters import them from here.
__all__ = ["BuildOptions", "SourcedEntry", "build_timeline", "entries_from_bundle"]


def build_timeline(
    entries: list[SourcedEntry],
    terminology: Terminology,
    as_of: datetime,
    options: BuildOptions,
    ignored_types: dict[str, list[Any]] | None = None,
) -> Timeline:
    """Normalise one patient's resources into a Timeline (raises InputError for a second patient)."""
    read = normalise_entries(entries, terminology, as_of, options, ignored_types)
    timeline = Timeline.of_facts(
        read.as_of, read.data_offset or read.evaluation_offset, read.facts,
        patient=read.patient, birth_date=read.birth_date, sex=read.sex, deceased=read.deceased,
        resource_types=read.resource_types,
        input_references=read.references, partial_data=read.partial_data,
    )
    # Day 0 needs the sorted administrations, and may add a note (several infusions). A date-only
    # infusionDate starts at 00:00 in the evaluation time's offset, whatever the data's offset.
    notes = list(read.notes)
    day_zero = _day_zero(timeline.administrations, terminology, options, notes, read.evaluation_offset)
    return replace(timeline, day_zero=day_zero, notes=tuple(notes))


def _day_zero(administrations: dict[str, tuple[Administration, ...]], terminology: Terminology,
              options: BuildOptions, notes: list[InputNote], local_offset: tzinfo) -> DayZero | None:
    override = options.infusion_override
    if override is not None:
        if options.infusion_override_date_only:  # a date: day 0 starts at midnight where the caller is
            override = override.replace(tzinfo=local_offset)
        return DayZero(override.astimezone(timezone.utc), override.tzinfo, "parameter infusionDate", "unspecified",
                       options.infusion_override_date_only)
    infusions = sorted(
        (fact for concept in terminology.members(["car-t-product"]) for fact in administrations.get(concept, ())),
        key=lambda fact: fact.time,
    )
    if not infusions:
        return None
    latest = infusions[-1]
    if len(infusions) > 1:
        notes.append(
            InputNote(
                "flagged-status", "warning",
                f"{len(infusions)} CAR-T infusions recorded; day 0 is the latest, {latest.time.isoformat()} UTC ({latest.source})",
            )
        )
    return DayZero(latest.time, latest.offset or timezone.utc, latest.source, latest.concept)
