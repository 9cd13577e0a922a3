"""Which resource statuses count (clinical-spec section 8 and the service's safety rules)."""

from __future__ import annotations

from enum import Enum
from typing import Mapping


class Use(Enum):
    COUNT = "count"  # use the resource
    IGNORE = "ignore"  # never use; listed as information
    FLAG = "flag"  # not used, and warned about: the clinician should look at it


_OBSERVATION = {
    "final": Use.COUNT,
    "amended": Use.COUNT,
    "corrected": Use.COUNT,
    "entered-in-error": Use.IGNORE,
    "cancelled": Use.IGNORE,
    "registered": Use.IGNORE,
    "unknown": Use.FLAG,
}

_MEDICATION_ADMINISTRATION = {
    "completed": Use.COUNT,
    "in-progress": Use.COUNT,
    "stopped": Use.COUNT,  # counts over the period it ran
    "on-hold": Use.FLAG,
    "unknown": Use.FLAG,
    "not-done": Use.IGNORE,
    "entered-in-error": Use.IGNORE,
}


_OBSERVATION_WITH_PRELIMINARY = {**_OBSERVATION, "preliminary": Use.COUNT}
_OBSERVATION_FINAL_ONLY = {**_OBSERVATION, "preliminary": Use.IGNORE}


def observation_statuses(accept_preliminary: bool) -> Mapping[str, Use]:
    """Status -> use (a status not listed is flagged): one lookup per Observation on the hot path."""
    return _OBSERVATION_WITH_PRELIMINARY if accept_preliminary else _OBSERVATION_FINAL_ONLY


def observation_use(status: str | None, accept_preliminary: bool) -> Use:
    return observation_statuses(accept_preliminary).get(status or "", Use.FLAG)


def administration_use(status: str | None) -> Use:
    return _MEDICATION_ADMINISTRATION.get(status or "", Use.FLAG)


# Condition.verificationStatus: a finding not (yet) confirmed is shown to the clinician, not graded.
_CONDITION_VERIFICATION = {
    "confirmed": Use.COUNT,
    "unconfirmed": Use.FLAG,
    "provisional": Use.FLAG,
    "differential": Use.FLAG,
    "refuted": Use.IGNORE,
    "entered-in-error": Use.IGNORE,
}

# Condition.clinicalStatus: a resolved finding still counts over the time it lasted (onset to abatement).
_CONDITION_CLINICAL = {
    "active": Use.COUNT,
    "recurrence": Use.COUNT,
    "relapse": Use.COUNT,
    "inactive": Use.COUNT,
    "remission": Use.COUNT,
    "resolved": Use.COUNT,
}

_PROCEDURE = {
    "completed": Use.COUNT,
    "in-progress": Use.COUNT,
    "stopped": Use.COUNT,  # counts over the time it ran
    "preparation": Use.IGNORE,  # not started
    "not-done": Use.IGNORE,
    "entered-in-error": Use.IGNORE,
    "on-hold": Use.FLAG,
    "unknown": Use.FLAG,
}


def verification_use(status: str | None) -> Use:
    """Absent verificationStatus counts: most problem lists do not send one."""
    return Use.COUNT if status is None else _CONDITION_VERIFICATION.get(status, Use.FLAG)


def clinical_status_use(status: str | None) -> Use:
    return Use.COUNT if status is None else _CONDITION_CLINICAL.get(status, Use.FLAG)


def procedure_use(status: str | None) -> Use:
    return _PROCEDURE.get(status or "", Use.FLAG)
