"""Decoded FHIR resources -> one patient's Timeline: statuses, codes, units and times normalised.

Nothing unusable is used silently: every resource or value left out becomes an InputNote. Rules for
inputs that contradict themselves:

- Duplicate resources (the same resourceType and id twice in one request; without an id, the same fullUrl):
  the first occurrence is used and every later one is ignored with a warning located at it. Which copy is
  current cannot be told from the fields the rules read (no meta.lastUpdated is decoded); the first keeps the
  result independent of later pages or includes.
- A period that ends before it starts (effectivePeriod.end < start): used as given at its start only (end =
  start, a point in time), with a warning located at the period.
- A date-only period end covers that whole day (FHIR: the end includes any time on that date).
- A Bundle with a `next` link sent only part of the data: `Timeline.partial_data` says so, with a warning.
- Doses: a dose <= 0, or above the medication's plausible maximum (concepts.yaml `plausible_max_mg`), is
  dropped (dose_mg None) and reported; the administration itself still counts. A dose in mL or L is a volume
  (`volume_ml`), never mg; a rate in volume per time (rateQuantity, rateRatio) becomes `rate_ml_per_h`, other
  rates (ug/kg/min of a vasopressor) are not fluid rates and are not read.
- Display offset: times are shown in the UTC offset the latest used fact was recorded in (the patient's
  data), or in the evaluation time's offset when no fact carries one. Date-only values and a date-only
  infusionDate are placed at 00:00 in the evaluation time's offset.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Iterable

from service.errors import InputError, Issue
from service.fhir_input.concepts import Terminology, UnitConversion
from service.fhir_input.decode import CodeableConcept, DecodedEntry, Dosage, Partial, Quantity, Resource
from service.fhir_input.statuses import Use, administration_use, observation_use
from service.fhir_input.times import (
    EARLIEST_YEAR,
    LATEST_YEAR,
    DateOnly,
    TimeError,
    date_start,
    parse_fhir_datetime,
)
from service.fhir_input.units import Rejected, conversion_for, implausible, unit_code
from service.timeline.facts import Administration, CodedValue, DayZero, InputNote, Measurement, Timeline


# Codes of the warnings below (cartox CodeSystem).
NOTE_DUPLICATE = "flagged-duplicate"
NOTE_PERIOD_REVERSED = "flagged-time"
NOTE_PARTIAL_DATA = "flagged-partial-data"

_EARLIEST = datetime(1, 1, 1, tzinfo=timezone.utc)


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


def _reference_of(entry: SourcedEntry) -> str:
    resource = entry.resource
    if resource.id:
        return f"{resource.resourceType}/{resource.id}"
    return entry.full_url or entry.location


def _relative(reference: str) -> str:
    """'http://host/fhir/Patient/7' or 'Patient/7/_history/2' -> 'Patient/7'."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


class _Builder:
    def __init__(self, terminology: Terminology, as_of: datetime, options: BuildOptions) -> None:
        self.terms = terminology
        self.display_offset = as_of.tzinfo
        self.as_of = as_of.astimezone(timezone.utc)
        self.options = options
        self.notes: list[InputNote] = []
        self.ignored_codes: Counter[str] = Counter()
        self.ignored_statuses: Counter[str] = Counter()
        self.future = 0
        self.measurements: dict[str, list[Measurement]] = defaultdict(list)
        self.coded: dict[str, list[CodedValue]] = defaultdict(list)
        self.administrations: dict[str, list[Administration]] = defaultdict(list)
        self.medications: dict[str, Resource] = {}
        # unit resolution per (concept, code, system, unit): a bundle repeats a few unit spellings thousands of times
        self.units: dict[tuple[str, str | None, str | None, str | None], tuple[str, UnitConversion] | Rejected] = {}
        self.references: set[str] = set()
        # The latest used fact with its own UTC offset: cards show times in the offset of the patient's data.
        self.latest = _EARLIEST
        self.latest_offset: tzinfo | None = None

    # --- time -----------------------------------------------------------------------------------
    def _effective(self, resource: Resource, location: str) -> tuple[datetime, datetime | None, bool, bool, tzinfo] | None:
        """(start and end in UTC, ongoing, date_only, the start's own UTC offset), or None when the
        resource has no usable time (noted)."""
        text = resource.effectiveDateTime
        if text is not None and len(text) > 10:
            # Fast path for the common case, a full dateTime with an offset (the hot loop of a request).
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                moment = None
            if moment is not None and moment.tzinfo is not None and EARLIEST_YEAR <= moment.year <= LATEST_YEAR:
                start = moment.astimezone(timezone.utc)
                if start > self.as_of:
                    self.future += 1
                    return None
                return start, None, False, False, moment.tzinfo
        try:
            if resource.effectiveDateTime is not None:
                start, element = parse_fhir_datetime(resource.effectiveDateTime), "effectiveDateTime"
                end, ongoing = None, False
            elif resource.effectiveInstant is not None:
                start, element = parse_fhir_datetime(resource.effectiveInstant), "effectiveInstant"
                end, ongoing = None, False
            elif resource.effectivePeriod is not None and resource.effectivePeriod.start is not None:
                period = resource.effectivePeriod
                start, element = parse_fhir_datetime(period.start), "effectivePeriod.start"
                end = parse_fhir_datetime(period.end) if period.end else None
                ongoing = period.end is None
                if isinstance(end, DateOnly):  # the end includes the whole date: its last instant
                    where = start.tzinfo if isinstance(start, datetime) else self.display_offset
                    end = date_start(end.day, where) + timedelta(days=1, microseconds=-1)
            else:
                self._note("dropped-time", "warning", "no effective time", location)
                return None
        except TimeError as exc:
            self._note("dropped-time", "warning", str(exc), location)
            return None
        date_only = isinstance(start, DateOnly)
        if date_only:
            start = date_start(start.day, self.display_offset)
        offset = start.tzinfo
        start = start.astimezone(timezone.utc)
        if end is not None:
            end = end.astimezone(timezone.utc)
            if end < start:
                period = resource.effectivePeriod
                self._note(NOTE_PERIOD_REVERSED, "warning",
                           f"effectivePeriod ends ({period.end}) before it starts ({period.start}): used at its start only",
                           f"{location}.effectivePeriod")
                end = start
        if start > self.as_of:
            self.future += 1
            return None
        return start, end, ongoing, date_only, offset

    def _note(self, code: str, severity: str, message: str, location: str | None) -> None:
        self.notes.append(InputNote(code, severity, message, location))

    # --- observations ---------------------------------------------------------------------------
    def observation(self, entry: SourcedEntry) -> None:
        resource, location = entry.resource, entry.location
        use = observation_use(resource.status, self.options.accept_preliminary)
        if use is not Use.COUNT:
            self._status_note(use, "Observation", resource.status, location)
            return
        codings = resource.code.coding if resource.code and resource.code.coding else ()
        terms = self.terms
        concept = panel = coded = None
        for coding in codings:
            key = (coding.system, coding.code)
            concept = terms.measurement_by_code.get(key)
            if concept:
                break
            if key in terms.panel_codes:
                panel = True
                break
            coded = terms.coded_by_code.get(key)
            if coded:
                break
        if concept is None and panel is None and coded is None and not resource.component:
            self.ignored_codes[_code_label(resource.code)] += 1
            return
        timing = self._effective(resource, location)
        if timing is None:
            return
        start, end, ongoing, date_only, offset = timing
        source = _reference_of(entry)
        used = False
        if concept is not None:
            used = self._measurement(concept, resource, start, date_only, source, location) or used
        elif coded is not None:
            used = self._coded(coded, resource.valueCodeableConcept, start, end, ongoing, source, location) or used
        for index, component in enumerate(resource.component or ()):
            used = self._component(component, index, start, date_only, source, location) or used
        if used:
            self.references.add(source)
            if not date_only and start > self.latest:
                self.latest, self.latest_offset = start, offset
        elif concept is None and coded is None and not panel:
            self.ignored_codes[_code_label(resource.code)] += 1

    def _measurement(self, concept: str, holder, start: datetime, date_only: bool, source: str, location: str) -> bool:
        quantity = holder.valueQuantity
        if quantity is None:
            if getattr(holder, "valueInteger", None) is not None:
                self._note("dropped-unit", "warning", f"{concept}: integer value without a unit", location)
            else:
                self._note("dropped-value", "information", f"{concept}: no value (data absent)", location)
            return False
        spec = self.terms.measurements[concept]
        sent = quantity.value
        if sent is None:
            self._note("dropped-value", "warning", f"{concept}: no value", location + ".valueQuantity")
            return False
        key = (concept, quantity.code, quantity.system, quantity.unit)
        resolved = self.units.get(key)
        if resolved is None:
            resolved = self.units[key] = conversion_for(quantity, spec, self.terms)
        if isinstance(resolved, Rejected):
            self._note(resolved.code, "warning", f"{concept}: {sent:g}: {resolved.reason}", location + ".valueQuantity")
            return False
        code, conversion = resolved
        value = conversion.apply(sent)
        rejected = implausible(sent, code, value, spec)
        if rejected is not None:
            self._note(rejected.code, "warning", f"{concept}: {rejected.reason}", location + ".valueQuantity")
            return False
        self.measurements[concept].append(
            Measurement(concept, value, spec.canonical_unit, start, source, f"{sent:g} {code}", date_only)
        )
        return True

    def _component(self, component, index: int, start: datetime, date_only: bool, source: str, location: str) -> bool:
        codings = component.code.coding if component.code and component.code.coding else ()
        for coding in codings:
            key = (coding.system, coding.code)
            concept = self.terms.measurement_by_code.get(key)
            if concept:
                return self._measurement(concept, component, start, date_only, source, f"{location}.component[{index}]")
            coded = self.terms.coded_by_code.get(key)
            if coded:
                return self._coded(coded, component.valueCodeableConcept, start, None, False, source, f"{location}.component[{index}]")
        return False

    def _coded(self, coded: tuple[str, str], value: CodeableConcept | None, start: datetime,
               end: datetime | None, ongoing: bool, source: str, location: str) -> bool:
        concept, value_set_name = coded
        if value is None:
            self._note("dropped-value", "warning", f"{concept}: no valueCodeableConcept", location)
            return False
        value_set = self.terms.value_sets[value_set_name]
        match = None
        for coding in value.coding or ():
            match = value_set.by_code.get((coding.system, coding.code))
            if match:
                break
        if match is None:
            match = value_set.text.match(value.text) or next(
                (value_set.text.match(c.display) for c in value.coding or () if value_set.text.match(c.display)), None
            )
        display = _display(value)
        if match is None:
            self._note("ignored-code", "warning", f"{concept}: {display!r} is not a known value; treated as unknown", location)
        self.coded[concept].append(CodedValue(concept, match, display, start, end, ongoing, source))
        return True

    # --- medication administrations ---------------------------------------------------------------
    def administration(self, entry: SourcedEntry, contained: dict[str, Resource]) -> None:
        resource, location = entry.resource, entry.location
        codeable, reference = self._medication_of(resource, contained)
        concepts = self._concepts_of_codeable(codeable) if codeable is not None else ()
        if not concepts and resource.medicationReference is not None:
            concepts = self.terms.medication_text.match_all(resource.medicationReference.display)
        if not concepts:
            if reference is not None and codeable is None:
                self._note("ignored-code", "warning",
                           f"medicationReference {reference!r} names no Medication in the request: administration not used",
                           f"{location}.medicationReference")
            else:
                self.ignored_codes[_code_label(codeable)] += 1
            return
        named = ", ".join(concepts)
        use = administration_use(resource.status)
        if use is not Use.COUNT:
            self._status_note(use, f"MedicationAdministration ({named})", resource.status, location)
            return
        timing = self._effective(resource, location)
        if timing is None:
            return
        start, end, ongoing, date_only, offset = timing
        if not ongoing and end is None:
            end = start  # a single administration at a point in time
        elif ongoing and resource.status != "in-progress":
            end = start  # completed or stopped without an end: only the start is known
        dose = volume = rate = None
        dosage = resource.dosage
        if dosage is not None:
            if dosage.dose is not None and dosage.dose.value is not None:
                dose, volume = self._dose(dosage.dose, concepts, named, location)
            if dosage.rateQuantity is not None or dosage.rateRatio is not None:
                rate = self._rate(dosage, named, location)
        if len(concepts) > 1:
            dose = None  # which drug the dose belongs to is unknown (a volume or rate is the fluid's)
            self._note("flagged-status", "warning", f"medication text names {named}: each counted, dose not attributed", location)
        source = _reference_of(entry)
        display = _display(codeable) or (resource.medicationReference.display if resource.medicationReference else None) or named
        status = resource.status or ""
        for concept in concepts:
            self.administrations[concept].append(
                Administration(concept, start, end, dose, status, display, source, offset, volume, rate)
            )
        self.references.add(source)
        if not date_only and start > self.latest:
            self.latest, self.latest_offset = start, offset

    def _medication_of(self, resource: Resource, contained: dict[str, Resource]) -> tuple[CodeableConcept | None, str | None]:
        """The medication's code: the administration's own, or the code of the Medication it references
        (contained "#id", or an entry of the request by relative reference, fullUrl or absolute URL); and the
        reference, if any."""
        if resource.medicationCodeableConcept is not None:
            return resource.medicationCodeableConcept, None
        reference = resource.medicationReference.reference if resource.medicationReference else None
        if not reference:
            return None, None
        medication = contained.get(reference) or self.medications.get(reference) or self.medications.get(_relative(reference))
        return (medication.code if medication is not None else None), reference

    def _dose(self, quantity: Quantity, concepts: tuple[str, ...], named: str, location: str) -> tuple[float | None, float | None]:
        """(dose in mg, volume in mL) of dosage.dose; an implausible dose is reported and not used."""
        terms = self.terms
        value = quantity.value
        code = unit_code(quantity, terms) or ""
        where = f"{location}.dosage.dose.value"
        if value <= 0:
            self._note("dropped-implausible", "warning",
                       f"{named}: dose {value:g} {code} is not a dose: not used (the administration still counts)", where)
            return None, None
        mass = terms.dose_conversions.get(code)
        if mass is not None:
            mg = mass.apply(value)
            limit = terms.plausible_max_mg.get(concepts[0]) if len(concepts) == 1 else None
            if limit is not None and mg > limit:
                self._note("dropped-implausible", "warning",
                           f"{named}: dose {value:g} {code} is above the plausible {limit:g} mg per administration: "
                           "not used (the administration still counts)", where)
                return None, None
            return mg, None
        volume = terms.volume_conversions.get(code)
        return None, (volume.apply(value) if volume is not None else None)

    def _rate(self, dosage: Dosage, named: str, location: str) -> float | None:
        """dosage.rateQuantity or rateRatio as a fluid rate in mL/h; None for rates of other kinds."""
        terms = self.terms
        if dosage.rateQuantity is not None:
            quantity, where = dosage.rateQuantity, f"{location}.dosage.rateQuantity.value"
            conversion = terms.rate_conversions.get(unit_code(quantity, terms) or "")
            if quantity.value is None or conversion is None:
                return None  # e.g. ug/kg/min of a vasopressor: not a fluid rate
            rate = conversion.apply(quantity.value)
        else:
            ratio, where = dosage.rateRatio, f"{location}.dosage.rateRatio"
            numerator, denominator = ratio.numerator, ratio.denominator
            if numerator is None or numerator.value is None or denominator is None:
                return None
            volume = terms.volume_conversions.get(unit_code(numerator, terms) or "")
            per = terms.duration_conversions.get(unit_code(denominator, terms) or "")
            if volume is None or per is None:
                return None
            hours = per.apply(1.0 if denominator.value is None else denominator.value)
            if hours <= 0:
                self._note("dropped-implausible", "warning", f"{named}: rate per {hours:g} h is not a rate: not used", where)
                return None
            rate = volume.apply(numerator.value) / hours
        if rate < 0:
            self._note("dropped-implausible", "warning", f"{named}: rate {rate:g} mL/h is negative: not used", where)
            return None
        return rate

    def _concepts_of_codeable(self, codeable: CodeableConcept) -> tuple[str, ...]:
        """A code decides; without one, every drug the text (or a coding's display) names."""
        terms = self.terms
        for coding in codeable.coding or ():
            concept = terms.medication_by_code.get((coding.system, coding.code))
            if concept:
                return (concept,)
        found = terms.medication_text.match_all(codeable.text)
        if found:
            return found
        for coding in codeable.coding or ():
            found = terms.medication_text.match_all(coding.display)
            if found:
                return found
        return ()

    def _status_note(self, use: Use, what: str, status: str | None, location: str) -> None:
        if use is Use.FLAG:
            self._note("flagged-status", "warning", f"{what} with status {status!r} not used: check it", location)
        else:
            self.ignored_statuses[f"{what.split(' ')[0]} status {status!r}"] += 1

    def summary_notes(self) -> list[InputNote]:
        notes = []
        for label, count in sorted(self.ignored_statuses.items()):
            notes.append(InputNote("ignored-status", "information", f"{label} ignored", None, count))
        for label, count in sorted(self.ignored_codes.items()):
            notes.append(InputNote("ignored-code", "information", f"code {label} is not used by the rules", None, count))
        if self.future:
            notes.append(
                InputNote("dropped-future", "information", f"resources after the evaluation time {self.as_of.astimezone(self.display_offset).isoformat()} ignored", None, self.future)
            )
        return notes


def _display(codeable: CodeableConcept | None) -> str:
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


def _code_label(codeable: CodeableConcept | None) -> str:
    if codeable is None:
        return "(none)"
    for coding in codeable.coding or ():
        if coding.code:
            system = (coding.system or "").rsplit("/", 1)[-1] or "?"
            return f"{system}|{coding.code}"
    return repr(codeable.text or "(none)")


def build_timeline(
    entries: list[SourcedEntry],
    terminology: Terminology,
    as_of: datetime,
    options: BuildOptions,
    ignored_types: dict[str, list[str]] | None = None,
) -> Timeline:
    """Normalise one patient's resources into a Timeline (raises InputError for a second patient)."""
    builder = _Builder(terminology, as_of, options)
    patients: list[SourcedEntry] = []
    observations: list[SourcedEntry] = []
    administrations: list[SourcedEntry] = []
    full_url_to_ref: dict[str, str] = {}
    seen: set[str] = set()
    partial: dict[Partial, None] = {}
    for entry in entries:
        if entry.partial is not None:
            partial[entry.partial] = None
        kind = entry.resource.resourceType
        reference = _reference_of(entry)
        if reference in seen:
            builder._note(NOTE_DUPLICATE, "warning",
                          f"{reference} appears more than once in the request: the first occurrence is used, this one is ignored",
                          entry.location)
            continue
        seen.add(reference)
        if entry.full_url:
            full_url_to_ref[entry.full_url] = reference
        if kind == "Observation":
            observations.append(entry)
        elif kind == "MedicationAdministration":
            administrations.append(entry)
        elif kind == "Patient":
            patients.append(entry)
        elif kind == "Medication":
            builder.medications[reference] = entry.resource
            if entry.full_url:
                builder.medications[entry.full_url] = entry.resource

    patient_ref, patient = _single_patient(patients, observations + administrations, full_url_to_ref)
    for entry in observations:
        builder.observation(entry)
    for entry in administrations:
        contained = {f"#{r.id}": r for r in entry.resource.contained or () if r.resourceType == "Medication" and r.id}
        builder.administration(entry, contained)

    notes = [InputNote(NOTE_PARTIAL_DATA, "warning", p.reason, p.location) for p in partial]
    notes += builder.notes + builder.summary_notes()
    for kind, locations in sorted((ignored_types or {}).items()):
        notes.append(InputNote("ignored-resource-type", "information", f"{kind} is not used by the rules", None, len(locations)))

    birth_date = None
    deceased = False
    if patient is not None:
        if patient.birthDate:
            try:
                parsed = parse_fhir_datetime(patient.birthDate)
                birth_date = parsed.day if isinstance(parsed, DateOnly) else parsed.date()
            except TimeError as exc:
                notes.append(InputNote("dropped-value", "warning", f"birthDate: {exc}", "Patient.birthDate"))
        deceased = bool(patient.deceasedBoolean or patient.deceasedDateTime)
        builder.references.add(patient_ref or "")

    facts = [fact for group in (builder.measurements, builder.coded, builder.administrations)
             for by_concept in group.values() for fact in by_concept]
    timeline = Timeline.of_facts(
        builder.as_of, builder.latest_offset or builder.display_offset, facts,
        patient=patient_ref, birth_date=birth_date, deceased=deceased,
        input_references=frozenset(ref for ref in builder.references if ref),
        partial_data=tuple(p.reason for p in partial),
    )
    # Day 0 needs the sorted administrations, and may add a note (several infusions). A date-only
    # infusionDate starts at 00:00 in the evaluation time's offset, whatever the data's offset.
    day_zero = _day_zero(timeline.administrations, terminology, options, notes, builder.display_offset)
    return replace(timeline, day_zero=day_zero, notes=tuple(notes))


def _single_patient(
    patients: list[SourcedEntry], clinical: list[SourcedEntry], full_url_to_ref: dict[str, str]
) -> tuple[str | None, Resource | None]:
    """The one patient the bundle is about; a second one is a 422."""
    seen: dict[str, str] = {}  # reference -> location where first seen
    for entry in patients:
        seen.setdefault(_reference_of(entry), f"{entry.location}.id")
    resolved: dict[str, str] = {}  # every resource of a bundle names the same few subjects: resolve each once
    for entry in clinical:
        subject = entry.resource.subject.reference if entry.resource.subject else None
        if subject:
            reference = resolved.get(subject)
            if reference is None:
                reference = resolved[subject] = _relative(full_url_to_ref.get(subject, subject))
            if reference not in seen:
                seen[reference] = f"{entry.location}.subject.reference"
    if len(seen) > 1:
        first, second = list(seen.items())[:2]
        raise InputError(
            Issue(
                "input-multiple-patients",
                f"The bundle holds data of more than one patient ({first[0]} and {second[0]}): send one patient per request",
                second[1],
                fhir_type="business-rule",
            ),
            status=422,
        )
    reference = next(iter(seen), None)
    patient = patients[0].resource if patients else None
    return reference, patient


def _day_zero(administrations: dict[str, tuple[Administration, ...]], terminology: Terminology,
              options: BuildOptions, notes: list[InputNote], local_offset: tzinfo) -> DayZero | None:
    override = options.infusion_override
    if override is not None:
        if options.infusion_override_date_only:  # a date: day 0 starts at midnight where the caller is
            override = override.replace(tzinfo=local_offset)
        return DayZero(override.astimezone(timezone.utc), override.tzinfo, "parameter infusionDate", "unspecified",
                       options.infusion_override_date_only)
    infusions = sorted(
        (fact for concept in terminology.members(["car-t-product"]) for fact in administrations.get(concept, ())),
        key=lambda fact: fact.time,
    )
    if not infusions:
        return None
    latest = infusions[-1]
    if len(infusions) > 1:
        notes.append(
            InputNote(
                "flagged-status", "warning",
                f"{len(infusions)} CAR-T infusions recorded; day 0 is the latest, {latest.time.isoformat()} UTC ({latest.source})",
            )
        )
    return DayZero(latest.time, latest.offset or timezone.utc, latest.source, latest.concept)
