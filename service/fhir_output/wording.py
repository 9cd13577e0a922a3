"""Findings in clinical words, for RiskAssessment rationales and cards (plain text: cards escape it).

Every word that names a toxicity or a criterion comes from the rule (`presentation`) and the terminology
(`display`); this module only arranges values, units and times.
"""

from __future__ import annotations

from typing import Iterable

from service.fhir_input.concepts import Terminology
from service.rules_engine.model import Finding, Reason
from service.timeline.facts import Administration, CodedValue, Fact, Measurement, Timeline



def grade_text(grade: int | None) -> str:
    return "not assessable" if grade is None else f"grade {grade}"


def measurement_text(fact: Measurement, terms: Terminology) -> str:
    unit = terms.display(fact.unit)
    shown = f"{fact.value:.4g} {unit}" if unit != "%" else f"{fact.value:.4g} %"
    if not fact.original.endswith(fact.unit):
        shown += f" (sent as {fact.original})"
    return shown


def fact_text(fact: Fact, timeline: Timeline, terms: Terminology) -> str:
    """One fact as a clinician reads it: value and unit, or drug, with its time (to the minute)."""
    at = timeline.local(fact.time)
    if isinstance(fact, Measurement):
        return f"{measurement_text(fact, terms)} at {at}"
    if isinstance(fact, CodedValue):
        value = terms.display(fact.value) if fact.value else f"unrecognised value ({fact.display})"
        return f"{value} at {at}"
    if isinstance(fact, Administration):
        name = terms.display(fact.concept)
        dose = f" {fact.dose_mg:g} mg" if fact.dose_mg is not None else ""
        if fact.end is None or fact.end > timeline.as_of:  # an end after the evaluation time is not known yet
            return f"{name}{dose} running since {at}"
        if fact.end == fact.time:
            return f"{name}{dose} at {at}"
        same_day = fact.end.astimezone(timeline.display_offset).date() == fact.time.astimezone(timeline.display_offset).date()
        until = fact.end.astimezone(timeline.display_offset).strftime("%H:%M") if same_day else timeline.local(fact.end)
        return f"{name}{dose} {at} to {until}"
    return str(fact)


def facts_text(facts: Iterable[Fact], timeline: Timeline, terms: Terminology) -> str:
    """The latest fact of each concept, in time order; several of one concept say how many and since when."""
    by_concept: dict[str, list[Fact]] = {}
    for fact in sorted(facts, key=lambda f: f.time):
        by_concept.setdefault(fact.concept, []).append(fact)
    parts = []
    for group in by_concept.values():
        text = fact_text(group[-1], timeline, terms)
        if len(group) > 1:
            text += f" ({len(group)} since {timeline.local(group[0].time)})"
        parts.append(text)
    return ", ".join(parts)


def reason_text(finding: Finding, reason: Reason, timeline: Timeline, terms: Terminology) -> str:
    """Why a criterion counted, in the rule's words ("low-flow oxygen: nasal cannula at 09:00, 3 L/min at 09:00")."""
    presentation = finding.rule.presentation
    words = presentation.criteria.get(reason.criterion)
    facts = facts_text(reason.evidence, timeline, terms)
    level = presentation.level_words(reason.criterion, reason.value)
    if words is not None and words.text:
        return words.text.format(level=level or reason.label, facts=facts or "recorded").strip()
    return f"{level or reason.label}: {facts}" if facts else (level or reason.label)


def reasons_text(finding: Finding, reasons: tuple[Reason, ...], timeline: Timeline, terms: Terminology) -> list[str]:
    return [reason_text(finding, reason, timeline, terms) for reason in reasons]

