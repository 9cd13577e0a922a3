"""Typed, immutable clinical facts. Each keeps the reference of the resource it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Iterable, Mapping


@dataclass(frozen=True, slots=True)
class Measurement:
    """A quantity in its concept's canonical unit (temperature in Cel, pressure in mm[Hg] ...)."""

    concept: str
    value: float
    unit: str
    time: datetime
    source: str  # "Observation/id" (or the entry's fullUrl, or its location when it has neither)
    original: str  # value and unit as sent, for evidence ("100.9 [degF]")
    date_only: bool = False
    reference_low: float | None = None  # referenceRange low/high of the Observation, in `unit`; None when absent
    reference_high: float | None = None


@dataclass(frozen=True, slots=True)
class CodedValue:
    """A coded observation, e.g. the oxygen delivery device; `value` None = a code the rules do not know."""

    concept: str
    value: str | None
    display: str
    time: datetime
    end: datetime | None  # None with ongoing False: a point in time
    ongoing: bool
    source: str


UNRECOGNISED_REASON = "unrecognised"  # Administration.reasons: a reason no indication concept names


@dataclass(frozen=True, slots=True)
class Administration:
    """A medication given. `end` None = still running (in-progress with an open period)."""

    concept: str
    time: datetime  # start
    end: datetime | None
    dose_mg: float | None
    status: str
    display: str
    source: str
    offset: tzinfo | None = None  # UTC offset the start was recorded in (day 0 counts days in it)
    volume_ml: float | None = None  # a dose recorded as a volume (fluids), never mistaken for mg
    rate_ml_per_h: float | None = None  # dosage.rateQuantity / rateRatio as a fluid rate; other rates None
    route: str | None = None  # dosage.route as a route concept (intravenous, oral ...); None when not given or unknown
    rate_mg_per_h: float | None = None  # dosage.rateQuantity as a drug's mass rate (an infusion without a dose)
    reasons: tuple[str, ...] = ()  # indication concepts of reasonCode / reasonReference ("unrecognised" for others)

    def end_or(self, now: datetime) -> datetime:
        return now if self.end is None else self.end


@dataclass(frozen=True, slots=True)
class NotPerformed:
    """An assessment recorded as not done (Observation.dataAbsentReason on a score or coded assessment):
    "ICE not performed: patient unarousable" is clinical information, not a missing value."""

    concept: str
    time: datetime
    reason: str  # the dataAbsentReason as written (text, else a coding's display, else its code)
    reason_code: str | None  # the dataAbsentReason coding's code, e.g. "not-performed", "asked-declined"
    source: str
    date_only: bool = False


@dataclass(frozen=True, slots=True)
class ClinicalFinding:
    """A clinical finding present from `time` (a Condition's onset, or the effective time of an Observation
    coded as the finding). `end` None = no end recorded: the finding lasts unless `clinical_status` says it
    is inactive, in remission or resolved; a point-in-time Observation ends when it starts."""

    concept: str
    time: datetime  # onset: onsetDateTime / onsetPeriod.start, else recordedDate; Observation effective start
    end: datetime | None  # abatementDateTime; effectivePeriod.end of an Observation
    clinical_status: str | None  # Condition.clinicalStatus code (active, recurrence, relapse, inactive, remission, resolved)
    verification_status: str | None  # Condition.verificationStatus code (only "confirmed" or None are used)
    display: str
    source: str  # "Condition/id" or "Observation/id"
    date_only: bool = False  # the onset was a date: placed at 00:00 in the evaluation time's offset


@dataclass(frozen=True, slots=True)
class ProcedurePerformed:
    """A procedure done or under way. `end` None = still in progress (an open performedPeriod)."""

    concept: str
    time: datetime  # performedDateTime / performedPeriod.start
    end: datetime | None
    status: str  # completed | in-progress | stopped
    display: str
    source: str
    date_only: bool = False


Fact = Measurement | CodedValue | Administration | NotPerformed | ClinicalFinding | ProcedurePerformed


def _time_of(fact: Fact) -> datetime:
    return fact.time


@dataclass(frozen=True, slots=True)
class InputNote:
    """Something in the input that was ignored, dropped or flagged, for the OperationOutcome and cards."""

    code: str  # CodeSystem code: ignored-resource-type, dropped-unit, flagged-status ...
    severity: str  # information | warning
    message: str
    location: str | None = None
    count: int = 1


@dataclass(frozen=True, slots=True)
class DayZero:
    time: datetime  # UTC, like every fact time
    offset: tzinfo  # the UTC offset the infusion was recorded in: days are counted in it
    source: str  # the infusion's reference, or "parameter infusionDate"
    product: str  # concept id of the CAR-T product, or "unspecified"
    date_only: bool = False

    @property
    def date(self) -> date:
        return self.time.astimezone(self.offset).date()

    def day_of(self, moment: datetime) -> int:
        """Calendar-day difference in the UTC offset of the infusion's timestamp."""
        return (moment.astimezone(self.offset).date() - self.date).days


@dataclass(frozen=True)
class Timeline:
    """All usable facts for one patient up to the evaluation time, sorted by time and indexed by concept.

    Times are held in UTC (one tzinfo object makes comparisons cheap); `local` shows them in the UTC offset
    of the evaluation time the caller gave.
    """

    as_of: datetime  # UTC
    display_offset: tzinfo
    patient: str | None  # "Patient/id"
    birth_date: date | None
    deceased: bool
    day_zero: DayZero | None
    measurements: Mapping[str, tuple[Measurement, ...]]
    measurement_times: Mapping[str, tuple[datetime, ...]]
    coded: Mapping[str, tuple[CodedValue, ...]]
    coded_times: Mapping[str, tuple[datetime, ...]]
    administrations: Mapping[str, tuple[Administration, ...]]
    notes: tuple[InputNote, ...] = field(default=())
    input_references: frozenset[str] = field(default=frozenset())
    partial_data: tuple[str, ...] = field(default=())  # why the data may be incomplete (e.g. an unfetched next page)
    # Indexed like measurements (sorted by time, with the times for bisect).
    findings: Mapping[str, tuple[ClinicalFinding, ...]] = field(default_factory=dict)
    finding_times: Mapping[str, tuple[datetime, ...]] = field(default_factory=dict)
    procedures: Mapping[str, tuple[ProcedurePerformed, ...]] = field(default_factory=dict)
    procedure_times: Mapping[str, tuple[datetime, ...]] = field(default_factory=dict)
    not_performed: Mapping[str, tuple[NotPerformed, ...]] = field(default_factory=dict)
    not_performed_times: Mapping[str, tuple[datetime, ...]] = field(default_factory=dict)
    sex: str | None = None  # Patient.gender (sex-specific lower limits of normal)
    resource_types: frozenset[str] = field(default=frozenset())  # the resource types the request carried

    @classmethod
    def of_facts(cls, as_of: datetime, display_offset: tzinfo, facts: Iterable[Fact], **details: Any) -> "Timeline":
        """Sort and index facts by concept (times must be UTC); `details` are the other fields."""
        grouped: dict[type, dict[str, list[Fact]]] = {kind: {} for kind in _INDEXED}
        for fact in facts:
            grouped[type(fact)].setdefault(fact.concept, []).append(fact)
        indexed = {kind: {k: tuple(sorted(v, key=_time_of)) for k, v in by_concept.items()} for kind, by_concept in grouped.items()}
        for kind, (name, times) in _INDEXED.items():
            details[name] = indexed[kind]
            if times:
                details[times] = {k: tuple(f.time for f in v) for k, v in indexed[kind].items()}
        details.setdefault("patient", None)
        details.setdefault("birth_date", None)
        details.setdefault("deceased", False)
        details.setdefault("day_zero", None)
        return cls(as_of=as_of, display_offset=display_offset, **details)

    def local(self, moment: datetime) -> str:
        """A time as a clinician reads it: to the minute in the data's UTC offset, with the date when it is
        not the evaluation day ("14:53", "4 Mar 14:53"); `offset_label` names the offset once per card."""
        shown = moment.astimezone(self.display_offset)
        if shown.date() == self.as_of.astimezone(self.display_offset).date():
            return shown.strftime("%H:%M")
        year = f" {shown.year}" if shown.year != self.as_of.year else ""
        return f"{shown.day} {shown.strftime('%b')}{year} {shown.strftime('%H:%M')}"

    def fhir_time(self, moment: datetime) -> str:
        """A FHIR dateTime in the data's UTC offset, to the second."""
        return moment.astimezone(self.display_offset).isoformat(timespec="seconds")

    @property
    def offset_label(self) -> str:
        offset = self.as_of.astimezone(self.display_offset).strftime("%z")
        return "UTC" if offset in ("", "+0000") else f"UTC{offset[:3]}:{offset[3:]}"

    def latest_measurement(self, concept: str, max_age: timedelta) -> Measurement | None:
        """The latest measurement of a concept if it is not older than `max_age` (e.g. the weight for dosing)."""
        series = self.measurements.get(concept, ())
        if not series:
            return None
        latest = series[-1]
        return latest if self.as_of - latest.time <= max_age else None

    def age_years(self) -> int | None:
        if self.birth_date is None:
            return None
        today = self.as_of.date()
        born = self.birth_date
        return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


# Fact type -> (Timeline field, field of its times or None): how of_facts indexes each kind.
_INDEXED: dict[type, tuple[str, str | None]] = {
    Measurement: ("measurements", "measurement_times"),
    CodedValue: ("coded", "coded_times"),
    Administration: ("administrations", None),
    ClinicalFinding: ("findings", "finding_times"),
    ProcedurePerformed: ("procedures", "procedure_times"),
    NotPerformed: ("not_performed", "not_performed_times"),
}
