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
    """A graded toxicity: current grade, maximum since day 0 and onset, with rule provenance."""

    rule: RuleInfo
    rule_set_version: str
    current: GradeResult
    maximum: GradeResult
    onset: datetime | None
    onset_day: int | None
    atypical_onset: bool
    day_zero_known: bool
    episode: Episode | None = None
