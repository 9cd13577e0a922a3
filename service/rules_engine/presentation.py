"""Clinician-facing words of a rule, compiled from its `presentation` block.

Rule files hold every word a card or a RiskAssessment shows; code only fills placeholders. Parameter names
in a template (`{fever_celsius:g}`) are bound at load, so a site override changes the words with the value.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from service.errors import RulesError

_FORMATTER = string.Formatter()


def bind_template(template: str, params: Mapping[str, Any], runtime: Iterable[str], where: str) -> str:
    """Substitute rule parameters now; keep the `runtime` placeholders for the output builders.

    Raises RulesError for a placeholder that is neither a parameter nor a runtime field.
    """
    allowed = set(runtime)
    parts: list[str] = []
    for literal, name, spec, conversion in _FORMATTER.parse(template):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if name in allowed:
            parts.append("{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
        elif name in params:
            parts.append(format(params[name], spec or "").replace("{", "{{").replace("}", "}}"))
        else:
            raise RulesError(where, f"text {template!r} names {{{name}}}, which is neither a parameter nor one of {sorted(allowed)}")
    return "".join(parts)


@dataclass(frozen=True)
class CriterionWords:
    """How a criterion that decided a grade reads: `text` with {level} (the level in words) and {facts}
    (its evidence, formatted by the output builder); `missing` when it had no data."""

    text: str | None
    levels: Mapping[int, str]
    missing: str | None
    worst: str = "highest"  # which value of its measurement is the worst: highest | lowest


@dataclass(frozen=True)
class Presentation:
    name: str  # short name in summaries and titles, e.g. "CRS"
    long_name: str  # e.g. "Cytokine release syndrome"
    scale: str  # the grading scale's name, e.g. "ASTCT"
    caveat: str | None  # shown on every card of the rule
    onset: str | None  # label of the onset line
    atypical_onset: str | None  # shown when onset is atypical
    quiet_when_not_assessable: bool = False  # no card while not-assessable (graded on occasional laboratory values)
    card_from_grade: int = 1  # lower grades are in the RiskAssessment only (e.g. mild cytopenia is expected after CAR-T)
    not_assessable_card_until_day: int | None = None  # later, not-assessable is in the RiskAssessment only
    criteria: Mapping[str, CriterionWords] = field(default_factory=dict)

    @property
    def missing(self) -> dict[str, str]:
        return {name: words.missing for name, words in self.criteria.items() if words.missing}

    def level_words(self, criterion: str, value: bool | float | None) -> str | None:
        words = self.criteria.get(criterion)
        if words is None or isinstance(value, bool) or value is None:
            return None
        return words.levels.get(int(value))

    @classmethod
    def compile(cls, spec: Mapping[str, Any], criteria: Iterable[str], params: Mapping[str, Any], rule_id: str) -> "Presentation":
        known = set(criteria)

        def bind(text: str | None, runtime: Iterable[str] = ()) -> str | None:
            return None if text is None else bind_template(text, params, runtime, rule_id)

        worded: dict[str, CriterionWords] = {}
        for name, words in spec.get("criteria", {}).items():
            if name not in known:
                raise RulesError(rule_id, f"presentation names unknown criterion {name!r}")
            worded[name] = CriterionWords(
                bind(words.get("text"), ("level", "facts")),
                {int(level): bind(text) or "" for level, text in words.get("levels", {}).items()},
                bind(words.get("missing")),
                words.get("worst", "highest"),
            )
        return cls(
            name=spec.get("name", rule_id),
            long_name=spec.get("long_name", spec.get("name", rule_id)),
            scale=spec.get("scale", ""),
            caveat=bind(spec.get("caveat")),
            onset=bind(spec.get("onset")),
            atypical_onset=bind(spec.get("atypical_onset")),
            quiet_when_not_assessable=bool(spec.get("quiet_when_not_assessable")),
            card_from_grade=int(spec.get("card_from_grade", 1)),
            not_assessable_card_until_day=spec.get("not_assessable_card_until_day"),
            criteria=worded,
        )
