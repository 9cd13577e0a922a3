"""Which resource statuses count (clinical-spec section 8 and the service's safety rules)."""

from __future__ import annotations

from enum import Enum


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


def observation_use(status: str | None, accept_preliminary: bool) -> Use:
    if status == "preliminary":
        return Use.COUNT if accept_preliminary else Use.IGNORE
    return _OBSERVATION.get(status or "", Use.FLAG)


def administration_use(status: str | None) -> Use:
    return _MEDICATION_ADMINISTRATION.get(status or "", Use.FLAG)
