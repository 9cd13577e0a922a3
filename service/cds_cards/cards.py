"""Findings -> CDS Hooks 2.0 cards: one mapping from rule metadata to card fields.

One card per finding of grade >= 1 or not-assessable; grade 0 gives no card (a rule may ask for a card only
from a higher grade, or none while not-assessable). No field is ever null or empty.
The detail is CommonMark read by a clinician: what, why in clinical words, what to do now, what is
conditional, a few lines of condensed evidence. Every word naming a toxicity or a criterion comes from the
rule (`presentation`) or the terminology; every string from the input is escaped (cds_cards.markdown).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Callable

from service.cds_cards.markdown import Markdown, bullet_list, document, md, paragraph, strong
from service.fhir_input.concepts import Terminology
from service.fhir_output.build import OutputConfig, dose_runs, stable_id
from service.fhir_output.wording import fact_text, grade_text, measurement_text, reason_text
from service.rules_engine.care_plan import CombinedPlan
from service.rules_engine.management import BLOCKED, CONDITIONAL, GIVE_NOW, PlannedAction
from service.rules_engine.model import Finding, MetricsFinding, Reason
from service.rules_engine.regimen import RegimenFinding
from service.rules_engine.phased import PhasedFinding
from service.timeline.facts import Fact, Measurement, Timeline

SUMMARY_LIMIT = 140
EVIDENCE_LINES = 4
OVERRIDE_REASONS = (
    ("override-alternative-cause", "Another cause explains the findings (e.g. infection)"),
    ("override-data-error", "The data behind this card are wrong or not current"),
    ("override-already-addressed", "Already addressed"),
    ("override-clinical-judgement", "Clinical judgement"),
)


@dataclass(frozen=True)
class CardInput:
    finding: Finding | MetricsFinding | PhasedFinding | RegimenFinding
    risk_assessment: dict[str, Any]
    plan: CombinedPlan | None  # the patient's one plan (every finding's), or None when nothing is recommended
    care_plan: dict[str, Any] | None  # its CarePlan resource

    @property
    def leads(self) -> bool:
        """This finding's card carries the patient's plan (the most severe finding with a plan)."""
        return self.plan is not None and self.plan.lead.finding is self.finding


def indicator(grade: int | None) -> str:
    if grade is None:
        return "info"
    return "critical" if grade >= 3 else "warning"


def summary(finding: Finding) -> str:
    words = finding.rule.presentation
    current = finding.current
    if current.grade is None:
        text = f"{words.name} cannot be assessed: " + (current.missing[0] if current.missing else "data missing")
    else:
        text = f"{words.name} {grade_text(current.grade)} ({words.scale}) in the last {finding.rule.window_hours:g} h"
        if (finding.maximum.grade or 0) > current.grade:
            text += f"; max grade {finding.maximum.grade} since day 0"
        if current.incomplete:
            text += " (data incomplete)"
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2] + "…"


def _headline(finding: Finding, timeline: Timeline, terms: Terminology) -> Markdown:
    words = finding.rule.presentation
    current, maximum = finding.current, finding.maximum
    head = strong(md("{} {} now", words.name, grade_text(current.grade)))
    since = "since day 0" if finding.day_zero_known else "over the data sent"
    worst = grade_text(maximum.grade)
    if (maximum.grade or 0) > (current.grade or 0) and maximum.reasons:
        # the criterion that set the worst grade (the gate, e.g. fever, comes first)
        worst += f", {reason_text(finding, maximum.reasons[-1], timeline, terms)}"
    return paragraph(md("{}{}", head, md(" ({}, last {:g} h; maximum {}: {})", words.scale, finding.rule.window_hours, since, worst)))


def _onset(finding: Finding, timeline: Timeline) -> Markdown | None:
    words = finding.rule.presentation
    if finding.onset is None:
        return None
    day = f"day {finding.onset_day}" if finding.onset_day is not None else "day unknown"
    text = f"{words.onset or 'Onset'} {timeline.local(finding.onset)} ({day})."
    if finding.episode is not None and finding.episode.start != finding.onset:
        text += f" Current episode since {timeline.local(finding.episode.start)}."
    if finding.atypical_onset and words.atypical_onset:
        text += f" {words.atypical_onset}"
    return paragraph(md("{}", text))


def _drug_line(action: PlannedAction) -> Markdown:
    if action.status == CONDITIONAL and action.condition is not None:
        condition = action.condition
        return md("{}: {} Now: {}.", condition.text[:1].upper() + condition.text[1:], action.description, condition.status)
    if action.status == BLOCKED:
        return md("{} {}", action.description, action.reason or "")
    if action.condition is not None and action.condition.met:
        return md("{} Indicated: {}.", action.description, action.condition.status)
    return md("{}", action.description)


def _plan_blocks(plan: CombinedPlan) -> list[Markdown]:
    several = len(plan.plans) > 1

    def line(action: PlannedAction) -> Markdown:
        # a plan for several findings says which one each item is for
        return md("{} ({})", _drug_line(action), action.driver) if several else _drug_line(action)

    now = [a for a in plan.actions if a.status == GIVE_NOW]
    conditional = [a for a in plan.actions if a.status == CONDITIONAL]
    blocked = [a for a in plan.actions if a.status == BLOCKED]
    guidelines = ", ".join(dict.fromkeys(p.guideline_id for p in plan.plans))
    blocks = [paragraph(md("{} ({})", strong("Do now"), guidelines)),
              bullet_list([line(a) for a in now] + [md("{}", note) for note in plan.notes])]
    if conditional:
        blocks += [paragraph(strong("Conditional")), bullet_list(line(a) for a in conditional)]
    if blocked:
        blocks += [paragraph(strong("Do not give now (label limit)")), bullet_list(line(a) for a in blocked)]
    return blocks


def _evidence_line(finding: Finding, reason: Reason, timeline: Timeline, terms: Terminology) -> Markdown:
    """The latest and the worst value of the criterion's measurement in the window, or its evidence."""
    measured = [f for f in reason.evidence if isinstance(f, Measurement)]
    if not measured:
        facts = sorted(reason.evidence, key=lambda f: f.time)[-2:]
        return md("{} — {}", ", ".join(fact_text(f, timeline, terms) for f in facts), _sources(facts))
    concept = measured[0].concept
    window = finding.current.window
    series = timeline.measurements.get(concept, ())
    times = timeline.measurement_times.get(concept, ())
    in_window = [f for f in series[bisect_right(times, window.start): bisect_right(times, window.end)] if not f.date_only] or measured
    latest = in_window[-1]
    words = finding.rule.presentation.criteria.get(reason.criterion)
    lowest = words is not None and words.worst == "lowest"
    worst = (min if lowest else max)(in_window, key=lambda f: f.value)
    if worst.value == latest.value:
        worst = latest
    shown = [latest] if worst is latest else [latest, worst]
    text = f"{terms.display(concept)}: latest {measurement_text(latest, terms)} at {timeline.local(latest.time)}"
    if worst is not latest:
        text += f", {'lowest' if lowest else 'highest'} {measurement_text(worst, terms)} at {timeline.local(worst.time)}"
    return md("{} — {}", text, _sources(shown))


def _sources(facts: list[Fact]) -> str:
    return ", ".join(dict.fromkeys(f.source for f in facts))


def _grading_parts(item: CardInput, timeline: Timeline, terms: Terminology) -> tuple[list[Markdown], list[Markdown]]:
    """A graded finding's blocks before the plan (grade, why, onset) and after it (evidence, what was missing)."""
    finding = item.finding
    current = finding.current
    head: list[Markdown] = [_headline(finding, timeline, terms)]
    if current.reasons:
        head.append(bullet_list(md("{}", reason_text(finding, r, timeline, terms)) for r in current.reasons))
    elif current.grade is None:
        head.append(paragraph(md("Cannot assess: {}.", "; ".join(current.missing))))
    onset = _onset(finding, timeline)
    if onset:
        head.append(onset)
    tail: list[Markdown] = []
    if current.reasons:
        tail += [paragraph(md("{} (times {})", strong("Evidence"), timeline.offset_label)),
                 bullet_list(_evidence_line(finding, r, timeline, terms) for r in current.reasons[:EVIDENCE_LINES])]
    if current.notes:
        tail.append(bullet_list(md("Noted: {}", note) for note in current.notes))
    if current.missing and current.grade is not None:
        tail.append(paragraph(md("Incomplete: {}.", "; ".join(current.missing))))
    return head, tail


def _metrics_parts(item: CardInput, timeline: Timeline, terms: Terminology) -> tuple[list[Markdown], list[Markdown]]:
    """A metrics finding: the values, the thresholds reached (what the literature found), what was not counted."""
    finding: MetricsFinding = item.finding
    words = finding.rule.words
    head: list[Markdown] = [paragraph(md("{}", strong(finding.summary())))]
    head.append(bullet_list(md("{}: {}", m.label[:1].upper() + m.label[1:], m.shown) for m in finding.metrics.values()))
    shares = [f"{words[f'indication-{name}']} {mg:.5g} mg" for name, mg in finding.by_indication.items() if mg]
    if len(shares) > 1:
        shares.append(words["total"].format(what=f"{sum(finding.by_indication.values()):.5g} mg"))
    if finding.before_day_zero_mg:
        shares.append(words["before_day_zero"].format(what=f"{finding.before_day_zero_mg:.5g} mg"))
    if shares:
        head.append(paragraph(md("Dexamethasone-equivalent by indication: {}.", "; ".join(shares))))
    tail: list[Markdown] = []
    if finding.reached:
        lines = []
        for threshold in finding.reached:
            when = f" ({words['crossed'].format(what=timeline.local(threshold.crossed_at))})" if threshold.crossed_at else ""
            lines.append(md("{}{} — {}", threshold.text[:1].upper() + threshold.text[1:], when, threshold.source))
        tail += [paragraph(strong("What the literature found")), bullet_list(lines)]
    if finding.listed:
        tail.append(bullet_list(md("Not counted: {}", text) for text in finding.listed[:EVIDENCE_LINES]))
    if finding.notes:  # what is missing stands on its metric's line
        tail.append(bullet_list(md("Noted: {}", note) for note in finding.notes))
    return head, tail


REGIMEN_STEPS_SHOWN = 6


def _regimen_parts(item: CardInput, timeline: Timeline, terms: Terminology) -> tuple[list[Markdown], list[Markdown]]:
    """A regimen: where the patient is and why, the counts now, warnings; then the course so far."""
    finding: RegimenFinding = item.finding
    spec = finding.spec
    rule = finding.rule
    head: list[Markdown] = [paragraph(md("{} {}", strong(spec.display + ":"), spec.text))]
    step = finding.since
    lines: list[Markdown] = []
    if step is not None:
        lines.append(md("Since day {}: {}", step.day, "; ".join(step.reasons)))
    if spec.prednisone:
        lines.append(md("Prednisone: {}", finding.dose_words()))
    counts = []
    for name, points in finding.lineages.items():
        latest = next((p for p in reversed(points) if p.time <= timeline.as_of), None)
        if latest is not None and latest.grade is not None:
            counts.append(f"{rule.lineage_names.get(name, name)} grade {latest.grade} (day {timeline.day_zero.day_of(latest.time) if timeline.day_zero else '?'})")
    if counts:
        lines.append(md("Latest counts: {}", ", ".join(counts)))
    head.append(bullet_list(lines))
    if finding.warnings:
        head.append(bullet_list(md("{} {}", strong("Warning:"), text) for text in finding.warnings))
    tail: list[Markdown] = []
    if finding.steps:
        shown = finding.steps[-REGIMEN_STEPS_SHOWN:]
        tail += [paragraph(md("{} (times {})", strong("Course"), timeline.offset_label)),
                 bullet_list(md("Day {} {}: {}{}", s.day, timeline.local(s.time), rule.states[s.state].display,
                                f", {s.dose_mg:g} mg/day" if s.dose_mg is not None else "") for s in shown)]
    if finding.given:
        tail.append(paragraph(md("Prednisone given: {}.", "; ".join(dose_runs(finding.given)))))
    if finding.notes:
        tail.append(bullet_list(md("Noted: {}", note) for note in finding.notes))
    return head, tail


def _phased_parts(item: CardInput, timeline: Timeline, terms: Terminology) -> tuple[list[Markdown], list[Markdown]]:
    """A phased finding: the worst phase's headline, each phase's grade and why, the values that set the grades."""
    finding: PhasedFinding = item.finding
    head: list[Markdown] = [paragraph(strong(md("{}", finding.headline(finding.worst))))]
    lines = []
    for phase in finding.phases:
        why = phase.why if phase.grade is not None else phase.missing
        lines.append(md("{} ({}): {} — {}", phase.label[:1].upper() + phase.label[1:], phase.period, grade_text(phase.grade), "; ".join(why)))
    head.append(bullet_list(lines))
    tail: list[Markdown] = []
    evidence = []
    for phase in finding.phases:
        if phase.grade and phase.evidence:
            values = sorted(phase.evidence, key=lambda f: f.time)
            shown = [values[0], values[-1]] if len(values) > 1 else values
            lowest = min(values, key=lambda f: f.value)
            if lowest not in shown:
                shown.insert(1, lowest)
            evidence.append(md("{}: {} — {}", phase.label[:1].upper() + phase.label[1:],
                               ", ".join(fact_text(f, timeline, terms) for f in shown), _sources(shown)))
    if evidence:
        tail += [paragraph(md("{} (times {})", strong("Evidence"), timeline.offset_label)), bullet_list(evidence[:EVIDENCE_LINES])]
    if finding.notes:
        tail.append(bullet_list(md("Noted: {}", note) for note in finding.notes))
    return head, tail


def detail(item: CardInput, timeline: Timeline, terms: Terminology) -> str:
    finding = item.finding
    head, tail = _KINDS[finding.kind].parts(item, timeline, terms)
    blocks = list(head)
    if not finding.day_zero_known:
        blocks.append(paragraph(md("Day 0 unknown: no CAR-T infusion in the data and no infusionDate given.")))
    if item.leads and item.plan is not None:
        blocks += _plan_blocks(item.plan)
    elif item.plan is not None and any(plan.finding is finding for plan in item.plan.plans):
        blocks.append(paragraph(md("{} see the {} card ({}).", strong("Management:"), item.plan.lead.finding.name, item.plan.title)))
    blocks += tail
    limiting = sum(note.count for note in timeline.notes if note.severity == "warning")
    if limiting:
        blocks.append(paragraph(md("{} input item{} dropped or flagged (see the OperationOutcome).",
                                   limiting, "s were" if limiting > 1 else " was")))
    caveat = _KINDS[finding.kind].caveat(finding)
    if caveat:
        blocks.append(paragraph(md("{}", caveat)))
    rule = finding.rule
    versions = f"Rule {rule.rule_id} {rule.rule_version}, rule set {finding.rule_set_version}, {rule.guideline_id}"
    if item.leads and item.plan is not None:
        versions += "".join(f"; plan {p.rule_id} {p.rule_version}, {p.guideline_id}" for p in item.plan.plans)
    blocks.append(paragraph(md("{}.", versions)))
    return document(blocks)


def _grading_shows(finding: Finding) -> bool:
    """Grade 0 gives no card; neither do grades below the rule's card_from_grade, nor not-assessable for a rule
    graded on occasional laboratory values or after the rule's monitoring period (the RiskAssessment still says
    each)."""
    grade, words = finding.current.grade, finding.rule.presentation
    if grade is None:
        until = words.not_assessable_card_until_day
        late = until is not None and finding.day is not None and finding.day > until
        return not (words.quiet_when_not_assessable or late)
    return grade >= max(words.card_from_grade, 1)


def _metrics_indicator(finding: MetricsFinding) -> str:
    """Warning when a threshold was first reached recently, otherwise information."""
    return "warning" if finding.recent_crossing else "info"


@dataclass(frozen=True)
class _CardKind:
    """How a finding kind reads on a card."""

    shows: Callable[[Any], bool]  # grade 0 and no exposure give no card
    summary: Callable[[Any], str]
    indicator: Callable[[Any], str]
    state: Callable[[Any], str]  # in the record action's description, e.g. "grade 2"
    parts: Callable[[CardInput, Timeline, Terminology], tuple[list[Markdown], list[Markdown]]]
    caveat: Callable[[Any], str | None]


_KINDS: dict[str, _CardKind] = {
    "grading": _CardKind(
        shows=_grading_shows,
        summary=summary, indicator=lambda f: indicator(f.current.grade),
        state=lambda f: grade_text(f.current.grade), parts=_grading_parts, caveat=lambda f: f.rule.presentation.caveat),
    "regimen": _CardKind(
        shows=lambda f: f.shows, summary=lambda f: _short(f.summary()), indicator=lambda f: f.spec.indicator or "info",
        state=lambda f: f.spec.display, parts=_regimen_parts, caveat=lambda f: f.rule.caveat),
    "metrics": _CardKind(
        # a card when a counted dose is of an indication the thresholds are about (the others are in the RiskAssessment)
        shows=lambda f: bool(f.evidence) and f.outcome != f.rule.none_outcome, summary=lambda f: _short(f.summary(recent=True)),
        indicator=_metrics_indicator,
        state=lambda f: f.rule.words[f.outcome or "not-assessable"], parts=_metrics_parts, caveat=lambda f: f.rule.caveat),
    "phased": _CardKind(
        shows=lambda f: (f.level or 0) >= 1, summary=lambda f: _short(f.headline(f.worst)), indicator=lambda f: indicator(f.level),
        state=lambda f: grade_text(f.level), parts=_phased_parts, caveat=lambda f: f.rule.caveat),
}


def _short(text: str) -> str:
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2] + "…"


def build_card(item: CardInput, timeline: Timeline, config: OutputConfig, terms: Terminology) -> dict[str, Any]:
    finding = item.finding
    kind = _KINDS[finding.kind]
    rule = finding.rule
    ra = item.risk_assessment
    actions = [{
        "type": "create",
        "description": f"Record the {finding.name} assessment ({kind.state(finding)})",
        "resource": ra,
    }]
    carries_plan = item.leads and item.care_plan is not None and item.plan is not None
    if carries_plan:
        actions.append({
            "type": "create",
            "description": f"Propose the management plan: {item.plan.title} ({item.plan.guideline_id})",
            "resource": item.care_plan,
        })
    label = "Record assessment and proposed plan" if carries_plan else "Record assessment"
    return {
        "uuid": stable_id(ra["id"], "card"),
        "summary": kind.summary(finding),
        "indicator": kind.indicator(finding),
        "detail": detail(item, timeline, terms),
        "source": {
            "label": f"cartox: {rule.title}",
            "url": rule.guideline_url,
            "topic": {"system": config.codesystem, "code": rule.assessment_code, "display": rule.title},
        },
        "suggestions": [{"label": label, "uuid": stable_id(ra["id"], "suggestion"), "isRecommended": True, "actions": actions}],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [{"system": config.codesystem, "code": code, "display": display} for code, display in OVERRIDE_REASONS],
    }


_INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}


def _card_order(item: CardInput, indicator_of: str) -> tuple[int, int, int]:
    """The card carrying the plan first, then by indicator, then the most severe finding."""
    return (0 if item.leads else 1, _INDICATOR_RANK[indicator_of], -item.finding.severity)


def cards_for(items: list[CardInput], timeline: Timeline, config: OutputConfig, terms: Terminology) -> list[dict[str, Any]]:
    shown = [item for item in items if _KINDS[item.finding.kind].shows(item.finding)]
    shown.sort(key=lambda item: _card_order(item, _KINDS[item.finding.kind].indicator(item.finding)))
    return [build_card(item, timeline, config, terms) for item in shown]
