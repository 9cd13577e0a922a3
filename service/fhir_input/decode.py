"""Schema-directed decoding of an inbound FHIR R4 Bundle: only the fields the rules read.

The hot path decodes the whole Bundle in one pass into msgspec Structs typed for the resources the rules
use. Types the rules do not use may carry fields of the same name with other shapes; when the one-pass
decode fails, a second pass decodes entry by entry, skips unused types, and so reports a wrong type only
where it matters, located as a FHIRPath expression (`Bundle.entry[3].resource.valueQuantity.value`).

A Bundle with a `next` link (a searchset page) holds only part of the data: every entry decoded from it
carries the reason (`DecodedEntry.partial`), so that the timeline says the data may be incomplete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from service.errors import InputError, Issue

USED_TYPES = frozenset({"Patient", "Observation", "MedicationAdministration", "Medication", "Condition", "Procedure"})
ACCEPTED_BUNDLE_TYPES = frozenset({"collection", "batch", "transaction", "searchset"})


class Coding(msgspec.Struct, gc=False):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(msgspec.Struct, gc=False):
    coding: list[Coding] | None = None
    text: str | None = None


class Quantity(msgspec.Struct, gc=False):
    value: float | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None


class Period(msgspec.Struct, gc=False):
    start: str | None = None
    end: str | None = None


class Reference(msgspec.Struct, gc=False):
    reference: str | None = None
    display: str | None = None


class ReferenceRange(msgspec.Struct, gc=False):
    low: Quantity | None = None
    high: Quantity | None = None


class Component(msgspec.Struct, gc=False):
    code: CodeableConcept | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None
    dataAbsentReason: CodeableConcept | None = None
    referenceRange: list[ReferenceRange] | None = None


class Ratio(msgspec.Struct, gc=False):
    numerator: Quantity | None = None
    denominator: Quantity | None = None


class Dosage(msgspec.Struct, gc=False):
    dose: Quantity | None = None
    route: CodeableConcept | None = None
    text: str | None = None
    rateQuantity: Quantity | None = None  # a fluid's rate (mL/h) tells a bolus from maintenance fluid
    rateRatio: Ratio | None = None


class Repeat(msgspec.Struct, gc=False):
    frequency: int | None = None
    period: float | None = None
    periodUnit: str | None = None
    count: int | None = None
    boundsDuration: Quantity | None = None
    boundsPeriod: Period | None = None


class Timing(msgspec.Struct, gc=False):
    repeat: Repeat | None = None


class DoseAndRate(msgspec.Struct, gc=False):
    doseQuantity: Quantity | None = None


class DosageInstruction(msgspec.Struct, gc=False):
    timing: Timing | None = None
    doseAndRate: list[DoseAndRate] | None = None
    route: CodeableConcept | None = None
    text: str | None = None


class DraftOrder(msgspec.Struct, gc=False):
    """A MedicationRequest as an EHR drafts it at order-sign time (CDS Hooks context.draftOrders): every field
    may still be missing while the order is being written."""

    resourceType: str | None = None
    id: str | None = None
    status: str | None = None
    intent: str | None = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    dosageInstruction: list[DosageInstruction] | None = None
    reasonCode: list[CodeableConcept] | None = None
    reasonReference: list[Reference] | None = None
    subject: Reference | None = None


class Resource(msgspec.Struct, gc=False):
    """The union of the fields read from Patient, Observation, MedicationAdministration, Medication, Condition
    and Procedure."""

    resourceType: str | None = None
    id: str | None = None
    status: str | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    effectiveDateTime: str | None = None
    effectiveInstant: str | None = None
    effectivePeriod: Period | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None
    valueBoolean: bool | None = None
    dataAbsentReason: CodeableConcept | None = None
    referenceRange: list[ReferenceRange] | None = None
    component: list[Component] | None = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    dosage: Dosage | None = None
    reasonCode: list[CodeableConcept] | None = None  # MedicationAdministration: why it was given
    reasonReference: list[Reference] | None = None
    contained: list["Resource"] | None = None
    birthDate: str | None = None
    gender: str | None = None
    deceasedBoolean: bool | None = None
    deceasedDateTime: str | None = None
    # Condition
    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    onsetDateTime: str | None = None
    onsetPeriod: Period | None = None
    abatementDateTime: str | None = None
    recordedDate: str | None = None
    # Procedure
    performedDateTime: str | None = None
    performedPeriod: Period | None = None


class Entry(msgspec.Struct, gc=False):
    fullUrl: str | None = None
    resource: Resource | None = None


class Link(msgspec.Struct, gc=False):
    relation: str | None = None
    url: str | None = None


class Bundle(msgspec.Struct, gc=False):
    resourceType: str | None = None
    type: str | None = None
    link: list[Link] | None = None
    entry: list[Entry] | None = None


# Second pass: the entry's resource kept as raw bytes until its type is known.
_NULL = msgspec.Raw(b"null")


class _RawEntry(msgspec.Struct, gc=False):
    fullUrl: str | None = None
    resource: msgspec.Raw = _NULL  # msgspec cannot put Raw in a union: null arrives as Raw(b"null")


class _RawBundle(msgspec.Struct, gc=False):
    resourceType: str | None = None
    type: str | None = None
    link: list[Link] | None = None
    entry: list[_RawEntry] | None = None


class _Head(msgspec.Struct, gc=False):
    resourceType: str | None = None


@dataclass(frozen=True, slots=True)
class Partial:
    """Why a Bundle's data may be incomplete, and where it says so."""

    reason: str  # e.g. "prefetch.observations: searchset has a next page that was not fetched"
    location: str  # e.g. "prefetch.observations.link[1]"


class DecodedEntry(msgspec.Struct, frozen=True, gc=False):  # one per entry: a Struct builds in C, unlike a dataclass
    index: int  # position in Bundle.entry, for locations
    full_url: str | None
    resource: Resource
    partial: Partial | None = None  # set on every entry of a Bundle with a next link


@dataclass(frozen=True, slots=True)
class DecodedBundle:
    bundle_type: str | None
    entries: tuple[DecodedEntry, ...]
    ignored_types: dict[str, list[int]]  # resource type -> entry indexes
    partial: Partial | None = None


_BUNDLE_DECODER = msgspec.json.Decoder(Bundle)
_RAW_BUNDLE_DECODER = msgspec.json.Decoder(_RawBundle)
_HEAD_DECODER = msgspec.json.Decoder(_Head)
_RESOURCE_DECODER = msgspec.json.Decoder(Resource)
_PATH_IN_MESSAGE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def split_validation_message(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec says 'Expected `float`, got `str` - at `$.a[0].b`': return (what, '.a[0].b')."""
    text = str(exc)
    match = _PATH_IN_MESSAGE.search(text)
    if not match:
        return text, ""
    return text[: match.start()], match.group("path")


def decode_bundle(body: bytes, root: str = "Bundle") -> DecodedBundle:
    """Decode request bytes into the fields the rules read, or raise InputError with a location.

    `root` prefixes locations: "Bundle" for a posted Bundle, "prefetch.observations" for a CDS Hooks prefetch.
    """
    try:
        bundle = _BUNDLE_DECODER.decode(body)
    except msgspec.ValidationError:  # a subclass of DecodeError: must come first
        return _decode_entry_by_entry(body, root)
    except msgspec.DecodeError as exc:
        raise InputError(Issue("input-not-json", f"Body is not valid JSON: {exc}", None, fhir_type="structure"))
    except RecursionError:
        raise InputError(Issue("input-not-json", "JSON nested too deeply", root, fhir_type="structure")) from None
    _check_bundle_head(bundle.resourceType, bundle.type, root)
    partial = _partial(bundle.link, bundle.type, root)
    entries: list[DecodedEntry] = []
    ignored: dict[str, list[int]] = {}
    for index, entry in enumerate(bundle.entry or ()):
        resource = entry.resource
        if resource is None:
            continue
        if resource.resourceType in USED_TYPES:
            entries.append(DecodedEntry(index, entry.fullUrl, resource, partial))
        else:
            ignored.setdefault(resource.resourceType or "(no resourceType)", []).append(index)
    return DecodedBundle(bundle.type, tuple(entries), ignored, partial)


def _partial(links: list[Link] | None, bundle_type: str | None, root: str) -> Partial | None:
    """A `next` link means more pages exist than were sent (any Bundle type: only paging defines `next`)."""
    for index, link in enumerate(links or ()):
        if link.relation == "next":
            kind = bundle_type or "Bundle"
            return Partial(f"{root}: {kind} has a next page that was not sent (data may be incomplete)", f"{root}.link[{index}]")
    return None


def _check_bundle_head(resource_type: str | None, bundle_type: str | None, root: str) -> None:
    if resource_type != "Bundle":
        found = f"resourceType {resource_type!r}" if resource_type else "no resourceType"
        raise InputError(
            Issue("input-not-bundle", f"Expected a FHIR Bundle, found {found}", f"{root}.resourceType", fhir_type="structure")
        )
    if bundle_type is not None and bundle_type not in ACCEPTED_BUNDLE_TYPES:
        allowed = ", ".join(sorted(ACCEPTED_BUNDLE_TYPES))
        raise InputError(
            Issue("input-not-bundle", f"Bundle.type {bundle_type!r} is not accepted (use one of {allowed})", f"{root}.type")
        )


def _decode_entry_by_entry(body: bytes, root: str) -> DecodedBundle:
    try:
        return _entry_by_entry(body, root)
    except RecursionError:
        raise InputError(Issue("input-not-json", "JSON nested too deeply", root, fhir_type="structure")) from None


def _entry_by_entry(body: bytes, root: str) -> DecodedBundle:
    try:
        shell = _RAW_BUNDLE_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        what, path = split_validation_message(exc)
        if path in ("", ".resourceType"):
            raise InputError(Issue("input-not-bundle", f"Expected a FHIR Bundle: {what}", root, fhir_type="structure"))
        raise InputError(Issue("input-wrong-type", what, root + path), status=422)
    _check_bundle_head(shell.resourceType, shell.type, root)
    partial = _partial(shell.link, shell.type, root)
    entries: list[DecodedEntry] = []
    ignored: dict[str, list[int]] = {}
    for index, entry in enumerate(shell.entry or ()):
        if bytes(entry.resource) == b"null":
            continue
        location = f"{root}.entry[{index}].resource"
        try:
            resource_type = _HEAD_DECODER.decode(entry.resource).resourceType
        except msgspec.ValidationError as exc:
            what, path = split_validation_message(exc)
            raise InputError(Issue("input-wrong-type", what, location + path), status=422)
        if resource_type not in USED_TYPES:
            ignored.setdefault(resource_type or "(no resourceType)", []).append(index)
            continue
        try:
            resource = _RESOURCE_DECODER.decode(entry.resource)
        except msgspec.ValidationError as exc:
            what, path = split_validation_message(exc)
            raise InputError(Issue("input-wrong-type", f"{resource_type}: {what}", location + path), status=422)
        entries.append(DecodedEntry(index, entry.fullUrl, resource, partial))
    return DecodedBundle(shell.type, tuple(entries), ignored, partial)


def decode_resource(raw: bytes | msgspec.Raw, location: str) -> Resource:
    """Decode one resource (CDS Hooks prefetch of a single Patient), located for errors."""
    try:
        return _RESOURCE_DECODER.decode(raw)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: must come first
        what, path = split_validation_message(exc)
        raise InputError(Issue("input-wrong-type", what, location + path), status=422)
    except msgspec.DecodeError as exc:
        raise InputError(Issue("input-not-json", f"Not valid JSON: {exc}", location, fhir_type="structure"))
    except RecursionError:
        raise InputError(Issue("input-not-json", "JSON nested too deeply", location, fhir_type="structure")) from None
