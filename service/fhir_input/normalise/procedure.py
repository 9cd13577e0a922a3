"""Procedure -> ProcedurePerformed, read through concepts.yaml `procedures`.

Status not-done, entered-in-error or preparation is ignored, on-hold or unknown flagged. An open
performedPeriod is still running only while the Procedure is in progress; otherwise only its start is known.
"""

from __future__ import annotations

from service.fhir_input.concepts import Terminology
from service.fhir_input.normalise.context import Context, SourcedEntry, code_label, concept_of, display_of
from service.fhir_input.statuses import Use, procedure_use
from service.timeline.facts import ProcedurePerformed


def reads(terms: Terminology) -> bool:
    return bool(terms.procedure_by_code)


def normalise(entry: SourcedEntry, source: str, ctx: Context) -> None:
    resource, location = entry.resource, entry.location
    concept = concept_of(resource.code, ctx.terms.procedure_by_code)
    if concept is None:
        ctx.ignored_codes[code_label(resource.code)] += 1
        return
    use = procedure_use(resource.status)
    if use is not Use.COUNT:
        ctx.status_note(use, f"Procedure ({concept})", resource.status, location)
        return
    timing = ctx.occurrence(resource.performedDateTime, resource.performedPeriod, "performedPeriod", location, "no performed time")
    if timing is None:
        return
    start, end, ongoing, date_only, offset = timing
    if end is None and not (ongoing and resource.status == "in-progress"):
        end = start
    status = resource.status or ""
    ctx.facts.append(ProcedurePerformed(concept, start, end, status, display_of(resource.code), source, date_only))
    ctx.used(source, start, date_only, offset)
