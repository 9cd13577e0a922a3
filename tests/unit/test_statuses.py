"""service.fhir_input.statuses: every FHIR R4 status of Observation and MedicationAdministration.

Observation.status (R4 ObservationStatus): registered | preliminary | final | amended | corrected |
cancelled | entered-in-error | unknown.
MedicationAdministration.status (R4 MedicationAdministration Status Codes): in-progress | not-done |
on-hold | completed | entered-in-error | stopped | unknown.
"""

from __future__ import annotations

import pytest

from service.fhir_input.statuses import Use, administration_use, observation_use

OBSERVATION_R4 = ("registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown")
ADMINISTRATION_R4 = ("in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped", "unknown")

OBSERVATION_EXPECTED = {
    "registered": Use.IGNORE,  # no result yet
    "final": Use.COUNT,
    "amended": Use.COUNT,
    "corrected": Use.COUNT,
    "cancelled": Use.IGNORE,
    "entered-in-error": Use.IGNORE,
    "unknown": Use.FLAG,
}

ADMINISTRATION_EXPECTED = {
    "completed": Use.COUNT,
    "in-progress": Use.COUNT,
    "stopped": Use.COUNT,  # counts over the period it ran
    "on-hold": Use.FLAG,
    "unknown": Use.FLAG,
    "not-done": Use.IGNORE,
    "entered-in-error": Use.IGNORE,
}


def test_expected_tables_cover_every_r4_status():
    assert set(OBSERVATION_EXPECTED) | {"preliminary"} == set(OBSERVATION_R4)
    assert set(ADMINISTRATION_EXPECTED) == set(ADMINISTRATION_R4)


@pytest.mark.parametrize("status", sorted(OBSERVATION_EXPECTED))
@pytest.mark.parametrize("accept_preliminary", [False, True])
def test_observation_status(status, accept_preliminary):
    assert observation_use(status, accept_preliminary) is OBSERVATION_EXPECTED[status]


def test_preliminary_off_by_default_on_when_accepted():
    assert observation_use("preliminary", False) is Use.IGNORE
    assert observation_use("preliminary", True) is Use.COUNT


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_erroneous_or_cancelled_observation_never_counts(status):
    assert observation_use(status, False) is not Use.COUNT
    assert observation_use(status, True) is not Use.COUNT


@pytest.mark.parametrize("status", [None, "", "FINAL", "draft"])
def test_missing_or_unrecognised_observation_status_is_flagged(status):
    """Unknown values are never silently used nor silently dropped."""
    assert observation_use(status, True) is Use.FLAG
    assert observation_use(status, False) is Use.FLAG


@pytest.mark.parametrize("status", sorted(ADMINISTRATION_EXPECTED))
def test_administration_status(status):
    assert administration_use(status) is ADMINISTRATION_EXPECTED[status]


def test_stopped_administration_counts():
    assert administration_use("stopped") is Use.COUNT


@pytest.mark.parametrize("status", ["on-hold", "unknown"])
def test_on_hold_and_unknown_administrations_flagged(status):
    assert administration_use(status) is Use.FLAG


@pytest.mark.parametrize("status", ["not-done", "entered-in-error"])
def test_not_done_and_error_administrations_ignored(status):
    assert administration_use(status) is Use.IGNORE


@pytest.mark.parametrize("status", [None, "", "cancelled", "preparation"])
def test_missing_or_unrecognised_administration_status_is_flagged(status):
    assert administration_use(status) is Use.FLAG
