"""One care plan for the patient: every management plan of the evaluation merged (rule kind `care_plan`).

Merging, in the words of rules/care_plan.yaml:
- plans are taken most severe finding first (`severity`: the current grade; then rule order): that finding
  leads the plan;
- a non-drug action appears once (the most severe plan's words); actions another makes redundant go;
- a medication appears once: a label-limit block wins (it holds whatever the plan), then the give-now regimen
  with the larger daily amount, else the most severe plan's; the others are named in a note;
- of the give-now regimens of the `one_regimen_of` group (systemic glucocorticoids) only the one with the
  highest daily dexamethasone equivalent stays give-now; every other becomes an on-hold alternative that
  names the regimen chosen and the finding it is for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from service.rules_engine.conditions import Compiler
from service.rules_engine.management import BLOCKED, CONDITIONAL, GIVE_NOW, ConditionState, Plan, PlannedAction
from service.rules_engine.presentation import bind_template


@dataclass(frozen=True)
class CombinedPlan:
    """The patient's one plan: the findings it answers (lead first), its activities and notes."""

    rule_id: str
    rule_version: str
    title: str
    plans: tuple[Plan, ...]
    actions: tuple[PlannedAction, ...]
    notes: tuple[str, ...]

    @property
    def lead(self) -> Plan:
        return self.plans[0]

    @property
    def guideline_id(self) -> str:
        return self.lead.guideline_id


def _severity(plan: Plan) -> int:
    return plan.finding.severity


class CarePlanRule:
    """rules/care_plan.yaml compiled: how plans of several findings become one."""

    def __init__(self, document: Mapping[str, Any], compiler: Compiler) -> None:
        self.rule_id = document["id"]
        self.version = str(document["version"])
        merge = document["merge"]
        group = merge["one_regimen_of"]
        self.group = compiler.medications([group["group"]])
        self.equivalents = compiler.equivalence(group["equivalence"], self.group)
        self.supersedes = {code: tuple(codes) for code, codes in merge.get("supersedes", {}).items()}
        words = document["presentation"]
        self.title = words["title"]
        self.same_drug = bind_template(words["same_drug"], compiler.params, ("dropped", "kept"), self.rule_id)
        self.alternative = bind_template(words["alternative"], compiler.params, ("chosen", "driver", "chosen_mg", "this_mg"), self.rule_id)
        self.alternative_condition = bind_template(words["alternative_condition"], compiler.params, ("chosen",), self.rule_id)

    def merge(self, plans: list[Plan]) -> CombinedPlan | None:
        if not plans:
            return None
        ordered = sorted(plans, key=_severity, reverse=True)  # stable: equal grades keep rule order
        notes = list(dict.fromkeys(note for plan in ordered for note in plan.notes))
        actions: list[PlannedAction] = []
        seen_actions: set[str] = set()
        by_medication: dict[str, list[PlannedAction]] = {}
        for plan in ordered:
            for action in plan.actions:
                if action.kind == "action":
                    if action.code not in seen_actions:
                        seen_actions.add(action.code)
                        actions.append(action)
                    continue
                if action.code not in by_medication:
                    actions.append(action)  # holds the medication's place; the chosen regimen replaces it below
                by_medication.setdefault(action.code, []).append(action)
        redundant = {code for present in seen_actions for code in self.supersedes.get(present, ())}
        chosen = {medication: self._one_of(candidates, notes) for medication, candidates in by_medication.items()}
        merged = [chosen[a.code] if a.kind == "drug" else a for a in actions if a.kind == "drug" or a.code not in redundant]
        merged = self._one_glucocorticoid(merged)
        names = ", ".join(plan.finding.label for plan in ordered)
        return CombinedPlan(self.rule_id, self.version, self.title.format(findings=names), tuple(ordered), tuple(merged), tuple(notes))

    def _one_of(self, candidates: list[PlannedAction], notes: list[str]) -> PlannedAction:
        """One activity per medication: blocked, else the larger give-now regimen, else the most severe plan's."""
        blocked = [a for a in candidates if a.status == BLOCKED]
        now = [a for a in candidates if a.status == GIVE_NOW]
        kept = blocked[0] if blocked else max(now, key=_daily) if now else candidates[0]
        for other in candidates:
            if other is not kept and other.regimen != kept.regimen:
                note = self.same_drug.format(dropped=f"{other.regimen} ({other.driver})", kept=f"{kept.regimen} ({kept.driver})")
                notes.append(note[:1].upper() + note[1:])
        return kept

    def _one_glucocorticoid(self, actions: list[PlannedAction]) -> list[PlannedAction]:
        now = [a for a in actions if a.kind == "drug" and a.status == GIVE_NOW and a.code in self.group]
        if len(now) < 2:
            return actions
        chosen = max(now, key=self._dexamethasone_equivalent)
        chosen_mg = self._dexamethasone_equivalent(chosen)
        replaced = {id(a) for a in now if a is not chosen}
        merged = []
        for action in actions:
            if id(action) in replaced:
                state = ConditionState("alternative", self.alternative_condition.format(chosen=chosen.regimen), False,
                                       f"{chosen.regimen} is proposed now ({chosen.driver})")
                reason = self.alternative.format(chosen=chosen.regimen, driver=chosen.driver, chosen_mg=chosen_mg,
                                                 this_mg=self._dexamethasone_equivalent(action))
                action = replace(action, status=CONDITIONAL, condition=state, reason=reason)
            merged.append(action)
        return merged

    def _dexamethasone_equivalent(self, action: PlannedAction) -> float:
        return _daily(action) * self.equivalents.get(action.code, 0.0)


def _daily(action: PlannedAction) -> float:
    return action.nominal_daily_mg or action.daily_mg or action.dose_mg or 0.0
