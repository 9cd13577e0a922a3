"""The order-sign check (rule kind `order_check`, rules/order_check.yaml): draft orders against the exposure
rule, the patient's plan and the product label. Pure: timeline, evaluation and orders in, results out.

- A glucocorticoid order is projected onto the administration history (its doses over its bounds, or the
  default horizon) and the exposure rule is evaluated at the last projected dose: thresholds the projection
  reaches and the history alone does not give a warning.
- When it is for CRS or ICANS it is compared with the give-now glucocorticoid of the merged plan; a different
  drug, dose or frequency gives the corrected order (same id) for an `update` suggestion.
- A tocilizumab order is checked against the management rule's dose and label limits: critical when violated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Mapping

from service.fhir_input.concepts import Terminology
from service.fhir_input.normalise.draft_order import Order
from service.rules_engine.care_plan import CombinedPlan
from service.rules_engine.conditions import Compiler
from service.rules_engine.management import GIVE_NOW, ManagementRule, PlannedAction
from service.rules_engine.metrics import MetricsRule
from service.rules_engine.model import MetricsFinding, ThresholdState
from service.rules_engine.presentation import bind_template
from service.timeline.facts import Administration, Timeline

UCUM = "http://unitsofmeasure.org"
_RUNTIME = ("order", "thresholds", "plan", "driver", "why", "dose", "limit", "reason", "orders", "doses", "until", "summary")


@dataclass(frozen=True)
class OrderResult:
    """What the check says of one order (or, with `order` None, of the orders it could not check)."""

    order: Order | None
    indicator: str  # critical | warning | info
    summary: str
    lines: tuple[str, ...] = ()
    literature: tuple[ThresholdState, ...] = ()  # thresholds the order would reach
    update: dict[str, Any] | None = None  # the corrected MedicationRequest
    update_label: str | None = None


class OrderCheckRule:
    """rules/order_check.yaml compiled; the rules it reads are looked up when it runs."""

    def __init__(self, document: Mapping[str, Any], params: Mapping[str, Any], compiler: Compiler) -> None:
        self.rule_id = document["id"]
        self.version = str(document["version"])
        self.title = document["title"]
        self.horizon = timedelta(hours=compiler.number(params["default_horizon_hours"]))
        self.tolerance = compiler.number(params["dose_tolerance_mg"])
        self.max_doses = int(compiler.number(params["max_projected_doses"]))
        glucocorticoids = document["glucocorticoids"]
        self.glucocorticoids = compiler.medications([glucocorticoids["medications"]])
        self.projection = glucocorticoids["projection"]
        self.toxicity_reasons = frozenset(glucocorticoids["for_toxicity_reasons"])
        self.toxicity_findings = tuple(glucocorticoids["for_toxicity_findings"])
        self.tocilizumab_rule = document["tocilizumab"]["rule"]
        self.tocilizumab_drug = document["tocilizumab"]["drug"]
        self.words = {key: bind_template(text, params, _RUNTIME, self.rule_id) for key, text in document["presentation"].items()}

    def check(self, orders: list[Order], timeline: Timeline, findings: Mapping[str, Any], plan: CombinedPlan | None,
              rules: Mapping[str, Any], terminology: Terminology, rule_set_version: str) -> list[OrderResult]:
        results: list[OrderResult] = []
        management: ManagementRule = rules[self.tocilizumab_rule]
        tocilizumab = management.drugs[self.tocilizumab_drug]
        for order in orders:
            if order.skipped:
                continue
            if set(order.concepts) & self.glucocorticoids and len(order.concepts) == 1:
                result = self._glucocorticoid(order, timeline, findings, plan, rules[self.projection], terminology, rule_set_version)
                if result is not None:
                    results.append(result)
            elif order.concepts == (tocilizumab.medication,):
                result = self._tocilizumab(order, timeline, management)
                if result is not None:
                    results.append(result)
        skipped = [order for order in orders if order.skipped]
        if skipped:
            listed = "; ".join(f"{order.display} ({order.skipped})" for order in skipped)
            results.append(OrderResult(None, "info", self.words["skipped"].format(orders=listed)))
        return results

    # --- glucocorticoids --------------------------------------------------------------------------------------

    def _glucocorticoid(self, order: Order, timeline: Timeline, findings: Mapping[str, Any], plan: CombinedPlan | None,
                        exposure: MetricsRule, terms: Terminology, version: str) -> OrderResult | None:
        """A warning when signing would reach a threshold or the order differs from the plan; for an order for
        CRS/ICANS also what the plan says when it agrees or has no glucocorticoid; otherwise nothing."""
        lines: list[str] = []
        reached: tuple[ThresholdState, ...] = ()
        current: MetricsFinding = findings[self.projection]
        projected = self._projected(order, timeline)
        indicator, summaries = "info", []
        if projected:
            future = replace(timeline, as_of=max(timeline.as_of, projected[-1].time),
                             administrations=_with(timeline.administrations, projected))
            after = exposure.assess(future, terms, version)
            before = {t.code for t in current.reached}
            reached = tuple(t for t in after.reached if t.code not in before)
            lines.append(self.words["projection_basis"].format(
                doses=len(projected), dose=f"{order.dose_mg:g} mg", until=timeline.local(projected[-1].time)))
            lines.append(self.words["after_signing"].format(summary=after.summary()))
            if len(projected) == self.max_doses and (order.doses or 0) > self.max_doses:
                lines.append(self.words["projection_cut"].format(doses=self.max_doses))
            if reached:
                indicator = "warning"
                summaries.append(self.words["projected"].format(order=order.display, thresholds=", ".join(t.label for t in reached)))
        update = label = None
        for_toxicity = self._for_toxicity(order, findings)
        if for_toxicity:
            chosen = _give_now_glucocorticoid(plan, self.glucocorticoids)
            if chosen is None:
                why = "; ".join(findings[name].label for name in self.toxicity_findings if name in findings)
                lines.append(self.words["no_plan_drug"].format(order=order.display, why=why))
            elif self._differs(order, chosen):
                indicator = "warning"
                summaries.append(self.words["differs"].format(order=order.display, plan=chosen.regimen, driver=chosen.driver))
                update = _corrected(order, chosen, terms)
                label = self.words["update"].format(plan=chosen.regimen)
            else:
                lines.append(self.words["matches_plan"].format(order=order.display, driver=chosen.driver))
        if not projected:
            lines.append(self.words["no_dose"].format(order=order.display))
        if indicator == "info" and not for_toxicity:
            return None
        # the plan's correction reads first when there is one; the other statements go to the lines
        summaries.reverse()
        summary = summaries[0] if summaries else self.words["no_new_threshold"].format(order=order.display)
        return OrderResult(order, indicator, summary, tuple(summaries[1:] + lines), reached, update, label)

    def _projected(self, order: Order, timeline: Timeline) -> list[Administration]:
        """The order's doses as administrations, from its start (not before now) over its bounds or the horizon."""
        if order.dose_mg is None:
            return []
        start = max(order.start or timeline.as_of, timeline.as_of)
        if order.every_hours is None:
            count = 1
        elif order.doses is not None:
            count = order.doses
        else:
            count = max(1, int(self.horizon.total_seconds() // (order.every_hours * 3600)))
        count = min(count, self.max_doses)
        source = f"MedicationRequest/{order.id} (draft)" if order.id else f"{order.location} (draft)"
        times = []
        try:
            step = timedelta(hours=order.every_hours or 0)
            for k in range(count):
                times.append(start + step * k)
        except OverflowError:  # an absurd interval: the doses that fit in the calendar are projected
            times = times or [start]
        return [Administration(order.concepts[0], moment, moment, order.dose_mg, "completed", order.display,
                               source, timeline.display_offset, route=order.route, reasons=order.reasons) for moment in times]

    def _for_toxicity(self, order: Order, findings: Mapping[str, Any]) -> bool:
        if order.reasons:
            return bool(set(order.reasons) & self.toxicity_reasons)
        return any((findings[name].current.grade or 0) >= 1 for name in self.toxicity_findings if name in findings)

    def _differs(self, order: Order, chosen: PlannedAction) -> bool:
        if order.concepts[0] != chosen.code:
            return True
        if chosen.dose_mg is not None and (order.dose_mg is None or abs(order.dose_mg - chosen.dose_mg) > self.tolerance):
            return True
        return chosen.every_hours is not None and (order.every_hours is None or abs(order.every_hours - chosen.every_hours) > 0.01)

    # --- tocilizumab ------------------------------------------------------------------------------------------

    def _tocilizumab(self, order: Order, timeline: Timeline, management: ManagementRule) -> OrderResult | None:
        problems: list[str] = []
        limit, limit_text = management.dose_now(self.tocilizumab_drug, timeline)
        cap = limit if limit is not None else management.drugs[self.tocilizumab_drug].max_mg
        if order.dose_mg is not None and cap is not None and order.dose_mg > cap + self.tolerance:
            problems.append(self.words["above_dose"].format(order=order.display, dose=f"{order.dose_mg:g}", limit=limit_text))
        blocked = management.blocked_now(self.tocilizumab_drug, timeline)
        if blocked:
            problems.append(self.words["blocked"].format(order=order.display, reason=blocked))
        if not problems:
            return None
        return OrderResult(order, "critical", problems[0], tuple(problems[1:]))


def _with(administrations: Mapping[str, tuple[Administration, ...]], added: list[Administration]) -> dict[str, tuple[Administration, ...]]:
    merged = dict(administrations)
    for fact in added:
        merged[fact.concept] = tuple(sorted((*merged.get(fact.concept, ()), fact), key=lambda a: a.time))
    return merged


def _give_now_glucocorticoid(plan: CombinedPlan | None, group: frozenset[str]) -> PlannedAction | None:
    if plan is None:
        return None
    return next((a for a in plan.actions if a.kind == "drug" and a.status == GIVE_NOW and a.code in group), None)


def _corrected(order: Order, chosen: PlannedAction, terms: Terminology) -> dict[str, Any]:
    """The draft with the plan's drug, dose, frequency and route (same id; what the EHR updates in place)."""
    resource = copy.deepcopy(order.resource)
    name = terms.display(chosen.code)
    medication: dict[str, Any] = {"text": name}
    coding = terms.output_coding(chosen.code)
    if coding is not None:
        medication["coding"] = [{"system": coding.system, "code": coding.code, "display": name}]
    resource.pop("medicationReference", None)
    resource["medicationCodeableConcept"] = medication
    instructions = resource.get("dosageInstruction") or [{}]
    first = dict(instructions[0])
    first["text"] = chosen.regimen
    if chosen.dose_mg is not None:
        first["doseAndRate"] = [{"doseQuantity": {"value": chosen.dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}]
    if chosen.every_hours is not None:
        timing = dict(first.get("timing") or {})
        repeat = {key: value for key, value in (timing.get("repeat") or {}).items() if key.startswith("bounds") or key == "count"}
        repeat.update({"frequency": 1, "period": chosen.every_hours, "periodUnit": "h"})
        if chosen.every_hours_max:
            repeat["periodMax"] = chosen.every_hours_max
        timing["repeat"] = repeat
        first["timing"] = timing
    if chosen.route:
        first["route"] = {"text": chosen.route}
    resource["dosageInstruction"] = [first, *instructions[1:]]
    return resource
