"""What every normaliser shares: the terminology and options of the request, the notes and counters it adds
to, the facts it produces, and the caches that keep a request with thousands of Observations cheap."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Iterable, Mapping

from service.fhir_input.concepts import Terminology, UnitConversion
from service.fhir_input.decode import CodeableConcept, DecodedEntry, Partial, Period, Resource
from service.fhir_input.statuses import Use, observation_statuses
from service.fhir_input.times import DateOnly, TimeError, date_start, parse_fhir_datetime
from service.fhir_input.units import Rejected
from service.timeline.facts import Fact, InputNote

# Codes of the warnings below (cartox CodeSystem).
NOTE_PERIOD_REVERSED = "flagged-time"

_EARLIEST = datetime(1, 1, 1, tzinfo=timezone.utc)

# (start and end in UTC, ongoing, date_only, the start's own UTC offset)
Timing = tuple[datetime, datetime | None, bool, bool, tzinfo]


@dataclass(frozen=True, slots=True)
class BuildOptions:
    accept_preliminary: bool = False
    infusion_override: datetime | None = None
    infusion_override_date_only: bool = False


@dataclass(slots=True)  # read-only by convention: a frozen dataclass costs 3x to build, one per entry
class SourcedEntry:
    """A decoded resource with where it came from (for locations in notes and errors)."""

    location: str  # FHIRPath of the resource, e.g. "Bundle.entry[3].resource"
    full_url: str | None
    resource: Resource
    partial: Partial | None = None  # the Bundle it came from had a next page that was not sent


def entries_from_bundle(entries: Iterable[DecodedEntry], root: str = "Bundle") -> list[SourcedEntry]:
    return [SourcedEntry(f"{root}.entry[{e.index}].resource", e.full_url, e.resource, e.partial) for e in entries]


def relative(reference: str) -> str:
    """'http://host/fhir/Patient/7' or 'Patient/7/_history/2' -> 'Patient/7'."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def display_of(codeable: CodeableConcept | None) -> str:
    """A CodeableConcept in the sender's words: its text, else a display, else a code."""
    if codeable is None:
        return ""
    if codeable.text:
        return codeable.text
    for coding in codeable.coding or ():
        if coding.display:
            return coding.display
    for coding in codeable.coding or ():
        if coding.code:
            return coding.code
    return ""


def code_label(codeable: CodeableConcept | None) -> str:
    if codeable is None:
        return "(none)"
    for coding in codeable.coding or ():
        if coding.code:
            system = (coding.system or "").rsplit("/", 1)[-1] or "?"
            return f"{system}|{coding.code}"
    return repr(codeable.text or "(none)")


def first_code(codeable: CodeableConcept | None) -> str | None:
    """The first code of a status CodeableConcept (clinicalStatus, verificationStatus, dataAbsentReason)."""
    for coding in (codeable.coding or ()) if codeable is not None else ():
        if coding.code:
            return coding.code
    return None


def concept_of(codeable: CodeableConcept | None, by_code: Mapping[tuple[str, str], str]) -> str | None:
    """The concept of the first coding listed in `by_code`."""
    for coding in (codeable.coding or ()) if codeable is not None else ():
        concept = by_code.get((coding.system, coding.code))
        if concept:
            return concept
    return None


class Context:
    """One request's normalisation state. Normalisers append facts and notes; nothing is used silently."""

    __slots__ = ("terms", "display_offset", "as_of", "observation_statuses", "notes", "ignored_codes", "ignored_statuses",
                 "future", "facts", "medications", "units", "references", "latest", "latest_offset")

    def __init__(self, terminology: Terminology, as_of: datetime, options: BuildOptions) -> None:
        self.terms = terminology
        self.display_offset = as_of.tzinfo  # as_of is timezone-aware
        self.as_of = as_of.astimezone(timezone.utc)
        self.observation_statuses = observation_statuses(options.accept_preliminary)
        self.notes: list[InputNote] = []
        self.ignored_codes: Counter[str] = Counter()
        self.ignored_statuses: Counter[str] = Counter()
        self.future = 0
        self.facts: list[Fact] = []
        self.medications: dict[str, Resource] = {}  # Medication entries by reference and by fullUrl
        # unit resolution per (concept, code, system, unit): a bundle repeats a few unit spellings thousands of times
        self.units: dict[tuple[str, str | None, str | None, str | None], tuple[str, UnitConversion] | Rejected] = {}
        self.references: set[str] = set()
        # The latest used fact with its own UTC offset: cards show times in the offset of the patient's data.
        self.latest = _EARLIEST
        self.latest_offset: tzinfo | None = None

    def note(self, code: str, severity: str, message: str, location: str | None) -> None:
        self.notes.append(InputNote(code, severity, message, location))

    def status_note(self, use: Use, what: str, status: str | None, location: str, element: str = "status") -> None:
        """A status that keeps a resource out: flagged ones warned at their location, ignored ones counted."""
        if use is Use.FLAG:
            self.note("flagged-status", "warning", f"{what} with {element} {status!r} not used: check it", location)
        else:
            self.ignored_statuses[f"{what.split(' ')[0]} {element} {status!r}"] += 1

    def used(self, source: str, start: datetime, date_only: bool, offset: tzinfo) -> None:
        """A resource became a fact: it may be cited, and its offset may become the display offset."""
        self.references.add(source)
        if not date_only and start > self.latest:
            self.latest, self.latest_offset = start, offset

    # --- time -----------------------------------------------------------------------------------
    def occurrence(self, point: str | None, period: Period | None, span: str, location: str, missing: str) -> Timing | None:
        """When a resource happened: a dateTime (or instant), else a period with a start (`span` names it);
        None when it has no usable time (noted) or lies after the evaluation time (counted)."""
        if point is not None:
            return self.timing(point, None, location, missing)
        if period is not None and period.start is not None:
            return self.timing(period.start, period.end, location, missing, span)
        return self.timing(None, None, location, missing)

    def timing(self, start_text: str | None, end_text: str | None, location: str, missing: str,
               span: str | None = None, named: str | None = None) -> Timing | None:
        """Start and end parsed: a date-only end covers its whole day; an end before the start is used as the
        start (warned at `location.span`, in words `named`). `span` None = a point in time, else ongoing
        while it has no end."""
        if start_text is None:
            self.note("dropped-time", "warning", missing, location)
            return None
        try:
            parsed_start = parse_fhir_datetime(start_text)
            parsed_end = parse_fhir_datetime(end_text) if end_text else None
        except TimeError as exc:
            self.note("dropped-time", "warning", str(exc), location)
            return None
        date_only = isinstance(parsed_start, DateOnly)
        local = date_start(parsed_start.day, self.display_offset) if isinstance(parsed_start, DateOnly) else parsed_start
        if isinstance(parsed_end, DateOnly):  # the end includes the whole date: its last instant
            parsed_end = date_start(parsed_end.day, local.tzinfo) + timedelta(days=1, microseconds=-1)
        start = local.astimezone(timezone.utc)
        end = parsed_end.astimezone(timezone.utc) if parsed_end is not None else None
        if end is not None and end < start:
            self.note(NOTE_PERIOD_REVERSED, "warning",
                      f"{named or span} ends ({end_text}) before it starts ({start_text}): used at its start only",
                      f"{location}.{span}")
            end = start
        if start > self.as_of:
            self.future += 1
            return None
        return start, end, span is not None and end_text is None, date_only, local.tzinfo

    def summary_notes(self) -> list[InputNote]:
        notes = []
        for label, count in sorted(self.ignored_statuses.items()):
            notes.append(InputNote("ignored-status", "information", f"{label} ignored", None, count))
        for label, count in sorted(self.ignored_codes.items()):
            notes.append(InputNote("ignored-code", "information", f"code {label} is not used by the rules", None, count))
        if self.future:
            when = self.as_of.astimezone(self.display_offset).isoformat()
            notes.append(InputNote("dropped-future", "information", f"resources after the evaluation time {when} ignored", None, self.future))
        return notes
