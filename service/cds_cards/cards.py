"""Findings -> CDS Hooks 2.0 cards: one mapping from rule metadata to card fields.

One card per finding of grade >= 1 or not-assessable; grade 0 gives no card. No field is ever null or empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.fhir_output.build import OutputConfig, grade_text, note_text, stable_id
from service.rules_engine.management import Plan
from service.rules_engine.model import Finding, GradeResult
from service.timeline.facts import Administration, CodedValue, Fact, Measurement, Timeline

SUMMARY_LIMIT = 140
EVIDENCE_SHOWN = 12
OVERRIDE_REASONS = (
    ("override-alternative-cause", "Another cause explains the findings (e.g. infection)"),
    ("override-data-error", "The data behind this card are wrong or not current"),
    ("override-already-addressed", "Already addressed"),
    ("override-clinical-judgement", "Clinical judgement"),
)


@dataclass(frozen=True)
class CardInput:
    finding: Finding
    plan: Plan | None
    risk_assessment: dict[str, Any]
    care_plan: dict[str, Any] | None


def indicator(grade: int | None) -> str:
    if grade is None:
        return "info"
    return "critical" if grade >= 3 else "warning"


def summary(finding: Finding) -> str:
    name = finding.rule.toxicity.upper()
    current = finding.current
    if current.grade is None:
        text = f"{name} cannot be assessed: " + ("no temperature in the last 24 h" if finding.rule.toxicity == "crs" else "data missing")
    else:
        text = f"{name} {grade_text(current.grade)} (ASTCT) in the last 24 h"
        if (finding.maximum.grade or 0) > (current.grade or 0):
            text += f"; max grade {finding.maximum.grade} since day 0"
        if current.incomplete:
            text += " (data incomplete)"
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2] + "…"


def describe_fact(fact: Fact, timeline: Timeline) -> str:
    at = timeline.local(fact.time)
    if isinstance(fact, Measurement):
        shown = f"{fact.value:.4g} {fact.unit}"
        if not fact.original.endswith(fact.unit):
            shown += f" (sent as {fact.original})"
        return f"{fact.concept} {shown} at {at} — {fact.source}"
    if isinstance(fact, CodedValue):
        value = fact.value or f"unrecognised ({fact.display})"
        return f"{fact.concept}: {value} at {at} — {fact.source}"
    if isinstance(fact, Administration):
        dose = f" {fact.dose_mg:g} mg" if fact.dose_mg is not None else ""
        end = "" if fact.end == fact.time else (" (running)" if fact.end is None else f" to {timeline.local(fact.end)}")
        return f"{fact.concept}{dose} ({fact.status}) at {at}{end} — {fact.source}"
    return str(fact)


def _grade_block(title: str, result: GradeResult, timeline: Timeline) -> list[str]:
    lines = [f"**{title}: {grade_text(result.grade)}** — window {timeline.local(result.window.start)} to {timeline.local(result.window.end)}"]
    for reason in result.reasons:
        value = "yes" if reason.value is True else (f"{reason.value:g}" if isinstance(reason.value, float) else str(reason.value))
        lines.append(f"- {reason.label}: {value}")
    for missing in result.missing:
        lines.append(f"- missing: {missing}")
    for note in result.notes:
        lines.append(f"- note: {note}")
    return lines


def detail(item: CardInput, timeline: Timeline) -> str:
    finding = item.finding
    notes = timeline.notes
    lines = _grade_block("Current grade (last 24 h)", finding.current, timeline)
    lines += _grade_block("Maximum since day 0" if finding.day_zero_known else "Maximum over the data sent", finding.maximum, timeline)
    if finding.onset is not None:
        day = f"day {finding.onset_day}" if finding.onset_day is not None else "day unknown (no CAR-T infusion found)"
        lines.append(f"**Onset:** {timeline.local(finding.onset)} ({day})" + (" — onset after day 14 is atypical: consider other causes" if finding.atypical_onset else ""))
    if not finding.day_zero_known:
        lines.append("**Day 0 unknown:** no CAR-T infusion in the data and no infusionDate given.")
    evidence = sorted({id(f): f for f in finding.current.evidence + finding.maximum.evidence}.values(), key=lambda f: f.time)
    if evidence:
        lines.append("**Evidence**")
        lines += [f"- {describe_fact(fact, timeline)}" for fact in evidence[:EVIDENCE_SHOWN]]
        if len(evidence) > EVIDENCE_SHOWN:
            lines.append(f"- … and {len(evidence) - EVIDENCE_SHOWN} more (see RiskAssessment.basis)")
    if item.plan is not None:
        lines.append(f"**Recommended ({item.plan.guideline_id})**")
        for action in item.plan.actions:
            lines.append(f"- {'DO NOT GIVE: ' if action.do_not_perform else ''}{action.description}")
        lines += [f"- {note}" for note in item.plan.notes]
    unused = [note for note in notes if note.severity == "warning"]
    ignored = [note for note in notes if note.severity != "warning"]
    if unused:
        lines.append("**Dropped or flagged input**")
        lines += [f"- {note_text(note)}" + (f" (`{note.location}`)" if note.location else "") for note in unused[:EVIDENCE_SHOWN]]
        if len(unused) > EVIDENCE_SHOWN:
            lines.append(f"- … and {len(unused) - EVIDENCE_SHOWN} more")
    if ignored:
        lines.append("**Ignored input:** " + "; ".join(note_text(note) for note in ignored))
    if finding.rule.toxicity == "crs":
        lines.append("Infection and neutropenic sepsis are **not excluded** by this engine: fever needs a clinical work-up.")
    rule = finding.rule
    lines.append(
        f"_Rule {rule.rule_id} {rule.rule_version}, rule set {finding.rule_set_version}; "
        f"{rule.guideline_id}: {rule.guideline_citation}_"
    )
    return "\n".join(lines)


def build_card(item: CardInput, timeline: Timeline, config: OutputConfig) -> dict[str, Any]:
    finding = item.finding
    rule = finding.rule
    ra = item.risk_assessment
    actions = [{
        "type": "create",
        "description": f"Record the {rule.toxicity.upper()} assessment ({grade_text(finding.current.grade)})",
        "resource": ra,
    }]
    if item.care_plan is not None:
        actions.append({
            "type": "create",
            "description": f"Propose the management plan ({item.plan.guideline_id if item.plan else ''})".replace(" ()", ""),
            "resource": item.care_plan,
        })
    label = "Record assessment and proposed plan" if item.care_plan is not None else "Record assessment"
    return {
        "uuid": stable_id(ra["id"], "card"),
        "summary": summary(finding),
        "indicator": indicator(finding.current.grade),
        "detail": detail(item, timeline),
        "source": {
            "label": f"cartox: {rule.title}",
            "url": rule.guideline_url,
            "topic": {"system": config.codesystem, "code": rule.assessment_code, "display": rule.title},
        },
        "suggestions": [{"label": label, "uuid": stable_id(ra["id"], "suggestion"), "isRecommended": True, "actions": actions}],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [{"system": config.codesystem, "code": code, "display": display} for code, display in OVERRIDE_REASONS],
    }


def cards_for(items: list[CardInput], timeline: Timeline, config: OutputConfig) -> list[dict[str, Any]]:
    return [build_card(item, timeline, config) for item in items if item.finding.current.grade != 0]
