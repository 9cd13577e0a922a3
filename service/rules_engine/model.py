"""What the engine produces: criterion results, grades and findings (plain immutable data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from service.timeline.facts import Fact


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
