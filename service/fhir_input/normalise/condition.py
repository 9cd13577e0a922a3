"""Condition -> ClinicalFinding: a clinical finding (seizure, cerebral oedema ...) with its onset and abatement.

Read through concepts.yaml `findings` (the same concepts an Observation may carry). verificationStatus
refuted or entered-in-error is ignored, unconfirmed, provisional or differential is flagged (not used: the
clinician should look at it); a resolved, inactive or remitted Condition counts over the time it lasted.
The onset is onsetDateTime, else onsetPeriod.start, else recordedDate (the finding was there when it was
recorded); a date-only abatement lasts to the end of that day.
"""

from __future__ import annotations

from service.fhir_input.concepts import Terminology
from service.fhir_input.normalise.context import Context, SourcedEntry, code_label, concept_of, display_of, first_code
from service.fhir_input.statuses import Use, clinical_status_use, verification_use
from service.timeline.facts import ClinicalFinding


def reads(terms: Terminology) -> bool:
    return bool(terms.finding_by_code)


def normalise(entry: SourcedEntry, source: str, ctx: Context) -> None:
    resource, location = entry.resource, entry.location
    concept = concept_of(resource.code, ctx.terms.finding_by_code)
    if concept is None:
        ctx.ignored_codes[code_label(resource.code)] += 1
        return
    named = f"Condition ({concept})"
    verification = first_code(resource.verificationStatus)
    use = verification_use(verification)
    if use is not Use.COUNT:
        ctx.status_note(use, named, verification, f"{location}.verificationStatus", "verificationStatus")
        return
    clinical = first_code(resource.clinicalStatus)
    use = clinical_status_use(clinical)
    if use is not Use.COUNT:
        ctx.status_note(use, named, clinical, f"{location}.clinicalStatus", "clinicalStatus")
        return
    onset = resource.onsetDateTime or (resource.onsetPeriod.start if resource.onsetPeriod else None) or resource.recordedDate
    timing = ctx.timing(onset, resource.abatementDateTime, location, "no onset (onsetDateTime, onsetPeriod.start) or recordedDate",
                        span="abatementDateTime", named="the Condition")
    if timing is None:
        return
    start, end, _ongoing, date_only, offset = timing
    ctx.facts.append(ClinicalFinding(concept, start, end, clinical, verification, display_of(resource.code), source, date_only))
    ctx.used(source, start, date_only, offset)
