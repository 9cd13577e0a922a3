"""Shared fixtures for the unit tests: the shipped rule set (loaded once) and small FHIR builders.

The builders return plain dicts shaped like FHIR R4 resources; `bundle(...)` turns them into request
bytes so that tests go through the real decoder.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone, tzinfo
from types import SimpleNamespace
from typing import Any, Iterable

import pytest

from service.rules_engine.load import RuleSet, load_rule_set

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"


@pytest.fixture(scope="session")
def rule_set() -> RuleSet:
    return load_rule_set()


@pytest.fixture(scope="session")
def terminology(rule_set: RuleSet):
    return rule_set.terminology


# --- FHIR builders ------------------------------------------------------------------------------------

def quantity(value: Any, unit: str | None = None, code: str | None = None, system: str | None = UCUM) -> dict:
    q: dict[str, Any] = {}
    if value is not None:
        q["value"] = value
    if unit is not None:
        q["unit"] = unit
    if code is not None:
        q["code"] = code
        if system is not None:
            q["system"] = system
    return q


def codeable(system: str | None = None, code: str | None = None, text: str | None = None, display: str | None = None) -> dict:
    c: dict[str, Any] = {}
    if code is not None:
        coding: dict[str, Any] = {"code": code}
        if system is not None:
            coding["system"] = system
        if display is not None:
            coding["display"] = display
        c["coding"] = [coding]
    if text is not None:
        c["text"] = text
    return c


def patient(pid: str = "p1", birth_date: str | None = "1965-04-02", **extra: Any) -> dict:
    resource = {"resourceType": "Patient", "id": pid}
    if birth_date:
        resource["birthDate"] = birth_date
    resource.update(extra)
    return resource


def observation(
    oid: str,
    loinc: str | None,
    at: str | None,
    value: dict | None = None,
    *,
    status: str = "final",
    subject: str | None = "Patient/p1",
    components: list[dict] | None = None,
    value_concept: dict | None = None,
    period: dict | None = None,
    code: dict | None = None,
) -> dict:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": code if code is not None else codeable(LOINC, loinc),
    }
    if subject:
        resource["subject"] = {"reference": subject}
    if at is not None:
        resource["effectiveDateTime"] = at
    if period is not None:
        resource["effectivePeriod"] = period
    if value is not None:
        resource["valueQuantity"] = value
    if value_concept is not None:
        resource["valueCodeableConcept"] = value_concept
    if components is not None:
        resource["component"] = components
    return resource


def component(loinc: str, value: dict) -> dict:
    return {"code": codeable(LOINC, loinc), "valueQuantity": value}


def administration(
    aid: str,
    at: str | None = None,
    *,
    text: str | None = None,
    rxnorm: str | None = None,
    status: str = "completed",
    end: str | None = None,
    period: bool = False,
    subject: str | None = "Patient/p1",
    reference: str | None = None,
    contained: list[dict] | None = None,
    dose: dict | None = None,
) -> dict:
    resource: dict[str, Any] = {"resourceType": "MedicationAdministration", "id": aid, "status": status}
    if reference is not None:
        resource["medicationReference"] = {"reference": reference}
    else:
        resource["medicationCodeableConcept"] = codeable(RXNORM if rxnorm else None, rxnorm, text)
    if subject:
        resource["subject"] = {"reference": subject}
    if period or end is not None:
        resource["effectivePeriod"] = {"start": at} if end is None else {"start": at, "end": end}
    elif at is not None:
        resource["effectiveDateTime"] = at
    if contained is not None:
        resource["contained"] = contained
    if dose is not None:
        resource["dosage"] = {"dose": dose}
    return resource


def medication(mid: str, text: str | None = None, rxnorm: str | None = None) -> dict:
    return {"resourceType": "Medication", "id": mid, "code": codeable(RXNORM if rxnorm else None, rxnorm, text)}


def bundle(*resources: dict | tuple[str, dict], bundle_type: str = "collection") -> bytes:
    """Request bytes. A (fullUrl, resource) tuple sets the entry's fullUrl."""
    entries = []
    for item in resources:
        if isinstance(item, tuple):
            entries.append({"fullUrl": item[0], "resource": item[1]})
        else:
            entries.append({"resource": item})
    return json.dumps({"resourceType": "Bundle", "type": bundle_type, "entry": entries}).encode()


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="session")
def fhir() -> SimpleNamespace:
    return SimpleNamespace(
        LOINC=LOINC, SNOMED=SNOMED, RXNORM=RXNORM, UCUM=UCUM, CARTOX_CS=CARTOX_CS,
        quantity=quantity, codeable=codeable, patient=patient, observation=observation, component=component,
        administration=administration, medication=medication, bundle=bundle, dt=dt,
    )


# --- Timelines built directly from facts -------------------------------------------------------------

def make_timeline(
    as_of: datetime,
    facts: Iterable[Any] = (),
    *,
    birth_date: date | None = None,
    day_zero: Any = None,
    patient_ref: str | None = "Patient/p1",
    display_offset: tzinfo | None = None,
):
    """A Timeline from Measurement / CodedValue / Administration facts, sorted and indexed like build_timeline
    (times in UTC)."""
    from service.timeline.facts import Timeline

    return Timeline.of_facts(
        as_of.astimezone(timezone.utc), display_offset or as_of.tzinfo or timezone.utc, facts,
        patient=patient_ref, birth_date=birth_date, day_zero=day_zero,
    )


@pytest.fixture(scope="session")
def timeline_of():
    return make_timeline


@pytest.fixture(scope="session")
def unit_engine():
    """An Engine with default settings (not the environment's)."""
    from service.pipeline import Engine
    from service.settings import Settings

    return Engine(Settings())
