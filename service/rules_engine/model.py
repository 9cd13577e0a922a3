"""What the engine produces: criterion results, grades and findings (plain immutable data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Mapping

from service.timeline.facts import Fact

if TYPE_CHECKING:
    from service.rules_engine.presentation import Presentation


@dataclass(frozen=True, slots=True)
class Window:
    """The half-open interval (start, end]."""

    start: datetime
    end: datetime

    def contains(self, moment: datetime) -> bool:
        return self.start < moment <= self.end


@dataclass(frozen=True, slots=True)
class Result:
    """A criterion evaluated over a window. value None = cannot be told (data missing)."""

    value: bool | float | None
    evidence: tuple[Fact, ...] = ()
    first_positive: datetime | None = None
    last_positive: datetime | None = None
    notes: tuple[str, ...] = ()
    missing: str | None = None
    incomplete: str | None = None  # decided, but on partial data: what was lacking (e.g. the oxygen device)

    @property
    def truth(self) -> bool | None:
        """Three-valued reading of the value: None when data were missing."""
        return None if self.value is None else bool(self.value)


@dataclass(frozen=True, slots=True)
class Reason:
    """One criterion that decided the grade, for the trace and the card."""

    criterion: str
    label: str
    value: bool | float | None
    evidence: tuple[Fact, ...]


@dataclass(frozen=True, slots=True)
class GradeResult:
    grade: int | None  # None = not-assessable
    window: Window
    evidence: tuple[Fact, ...]
    reasons: tuple[Reason, ...]
    missing: tuple[str, ...]  # data whose absence left the grade undecided or incomplete
    notes: tuple[str, ...]

    @property
    def incomplete(self) -> bool:
        return bool(self.missing)


@dataclass(frozen=True, slots=True)
class RuleInfo:
    rule_id: str
    rule_version: str
    title: str
    toxicity: str
    assessment_code: str
    guideline_id: str
    guideline_citation: str
    guideline_url: str
    outcome_codes: Mapping[int, str]  # grade -> ICD-10-CM
    presentation: "Presentation"
    window_hours: float


@dataclass(frozen=True, slots=True)
class Episode:
    """The continuing episode of a toxicity at the evaluation time: it began at `start` (the first positive
    finding after the last gap longer than the rule's episode gap, gaps while a waiver was active not
    counting) and its last positive finding was at `last`."""

    start: datetime
    last: datetime
    evidence: tuple[Fact, ...]

    def lasted_days(self, as_of: datetime) -> float:
        return (as_of - self.start).total_seconds() / 86400


@dataclass(frozen=True)
class Finding:
    """A graded toxicity (rule kind `grading`): current grade, maximum since day 0 and onset, with rule
    provenance. Every finding kind offers `kind`, `level`, `severity` and `label` to plans and cards."""

    kind = "grading"

    rule: RuleInfo
    rule_set_version: str
    current: GradeResult
    maximum: GradeResult
    onset: datetime | None
    onset_day: int | None
    atypical_onset: bool
    day_zero_known: bool
    episode: Episode | None = None
    day: int | None = None  # the evaluation day after infusion (None without day 0)

    @property
    def level(self) -> int | None:
        """What a management rule's items are chosen by: the current grade."""
        return self.current.grade

    @property
    def severity(self) -> int:
        """Orders findings: the most severe leads the patient's plan and comes first among the cards."""
        return self.current.grade or 0

    @property
    def name(self) -> str:
        return self.rule.presentation.name

    def digest_parts(self) -> list[str]:
        """What the finding says, for output ids: grades and evidence."""
        sources = sorted({fact.source for fact in self.current.evidence + self.maximum.evidence})
        return [str(self.current.grade), str(self.maximum.grade), *sources]

    @property
    def label(self) -> str:
        return f"{self.rule.presentation.name} grade {self.current.grade}"


@dataclass(frozen=True, slots=True)
class Metric:
    """One computed value of a metrics finding; None = not computed (`missing` says why, when it matters)."""

    name: str
    value: float | None
    unit: str  # "mg", "mg/kg", "d" (days), "day" (a day number), "h"
    label: str
    missing: str | None = None

    @property
    def shown(self) -> str:
        """The value in words by its unit: "160 mg", "4.2 mg/kg", "4 days", "day 3", "6 h ago"."""
        value = self.value
        if value is None:
            return "not computed" + (f" ({self.missing})" if self.missing else "")
        if self.unit == "d":
            return f"{value:.0f} day" + ("" if round(value) == 1 else "s")
        if self.unit == "day":
            return f"day {value:.0f}"
        if self.unit == "h":
            return f"{value:.0f} h ago"
        return f"{value:.4g} {self.unit}" if self.unit == "mg/kg" else f"{value:.5g} {self.unit}"


@dataclass(frozen=True, slots=True)
class ThresholdState:
    """A named threshold: reached or not (None: cannot be told, or not for this patient), when first reached."""

    code: str
    reached: bool | None
    crossed_at: datetime | None
    text: str  # what the literature found, as an association
    source: str
    label: str  # the threshold in a few words
    applies: bool | None = True  # False: not for the patient's age; None: the age is unknown


@dataclass(frozen=True, slots=True)
class RuleIdentity:
    """What every finding kind's rule says of itself (RiskAssessment code and method, card source)."""

    rule_id: str
    rule_version: str
    title: str
    assessment_code: str
    guideline_id: str
    guideline_citation: str
    guideline_url: str


@dataclass(frozen=True, slots=True)
class MetricsInfo(RuleIdentity):
    name: str  # e.g. "Glucocorticoid exposure"
    long_name: str
    caveat: str | None
    profile: str  # its RiskAssessment profile
    extensions: Mapping[str, str]  # metric -> extension name
    threshold_extension: str
    words: Mapping[str, str]  # the rule's presentation texts (summary, outcome and indication words ...)
    none_outcome: str  # the outcome when no dose counts toward the thresholds (e.g. only other indications)


@dataclass(frozen=True)
class MetricsFinding:
    """Values and threshold flags over a drug history (rule kind `metrics`), with the facts counted."""

    rule: MetricsInfo
    rule_set_version: str
    metrics: Mapping[str, Metric]
    thresholds: tuple[ThresholdState, ...]
    outcome: str | None  # outcome code of the default threshold set; None = cannot be told
    evidence: tuple[Fact, ...]  # the administrations counted after day 0
    window: Window  # day 0 (or the first dose) -> evaluation time
    missing: tuple[str, ...]
    notes: tuple[str, ...]
    by_indication: Mapping[str, float]  # reference-drug mg per indication class, after day 0
    before_day_zero_mg: float  # reference-drug mg before the infusion: reported, never counted
    listed: tuple[str, ...]  # administrations seen and not counted, with why
    day_zero_known: bool
    recent_crossing: tuple[str, ...]  # labels of the thresholds first reached within the rule's recent window

    kind = "metrics"
    level = None  # management items of a metrics finding are its rule's `always` items

    @property
    def severity(self) -> int:
        return 0

    @property
    def name(self) -> str:
        return self.rule.name

    def digest_parts(self) -> list[str]:
        """What the finding says, for output ids: outcome, values and the doses counted."""
        values = [f"{name}={metric.value}" for name, metric in self.metrics.items()]
        return [str(self.outcome), *values, *sorted({fact.source for fact in self.evidence})]

    @property
    def label(self) -> str:
        return self.rule.words["plan_label"]

    @property
    def reached(self) -> tuple[ThresholdState, ...]:
        return tuple(t for t in self.thresholds if t.reached)

    def summary(self, recent: bool = False) -> str:
        """The rule's summary sentence with its metrics filled; `recent` adds the thresholds first reached within
        the rule's recent window (why a card warns)."""
        words = self.rule.words
        text = words["summary"].format(**{name: metric.shown for name, metric in self.metrics.items()})
        if recent and self.recent_crossing:
            text += "; " + words["recent"].format(what=", ".join(self.recent_crossing))
        return text
