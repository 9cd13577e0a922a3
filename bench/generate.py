#!/usr/bin/env python3
"""Deterministic generator of a synthetic FHIR R4 Bundle for one CAR-T patient.

The Bundle (type "collection") mimics an EHR export for a patient who received
axicabtagene ciloleucel on day 0 (2026-03-02T10:00:00+01:00) and developed a
cytokine release syndrome (CRS) episode on days 2-6: fever from day 2 (peak
39.6 °C on day 3), hypotension on the night of day 3 to day 4 treated with a
saline bolus and a norepinephrine infusion, oxygen by nasal cannula on days 3-5
with a few hours of non-rebreather mask on day 4, tocilizumab x2 on day 3 and
dexamethasone on day 4.  Neurological assessments (ICE score with its five
items + level of consciousness, every 8 hours from day 0 14:00) show a mild
ICANS episode (ICE 7-9, alert: ASTCT grade 1) from day 4 22:00 to day 6 14:00.

Two sizes:

* ``full``  - hourly vital signs from day -1 to day 29 (half-hourly on days
  2-6, the CRS episode), hourly oxygen records on days 3-5, daily labs from
  day -5, four body weights, ICE + level of consciousness every 8 hours from
  day 0, 59 MedicationAdministrations: ~4.5 MB of compact JSON, ~5,100
  Observations.  Data run past ``AS_OF`` (as in a full export).
* ``pht100`` - the ``full`` patient followed to day 100 (``AS_OF_PHT``) with a
  prolonged hematologic toxicity course instead of the recovering counts:
  cytopenia persisting at day 28 after G-CSF (days 14-25) and platelet
  transfusions (days 14, 18, 22, 25), complete remission at day 28, low-dose
  prednisone 40 mg/day from day 31 halved on day 44 and tapered weekly to a
  stop on day 65, recurrence on day 77, re-treatment from day 78 halved on day 95; after day
  29 vitals every 8 h, blood counts three times a week and weekly weights
  (~5.3 MB).
* ``small`` - the same patient cut to ~110 KB, ending at ``AS_OF``: every
  medication given up to ``AS_OF`` (lymphodepletion, day-0 CAR-T, CRS
  treatment, norepinephrine infusion), the 36 hours of vitals/oxygen before
  ``AS_OF`` sampled every 4 hours (fever, hypotension and the non-rebreather
  hour stay in view), every neurological assessment of those 36 hours, the
  body weights and the last morning's labs.

Everything is derived from ``random.Random(seed)`` (the neurological
assessments from a second RNG seeded from ``seed``, so that adding them left the
other resources unchanged), so the output is byte-for-byte reproducible for a
given seed and size.  Standard library only: the tests import this file by path.

Usage::

    python bench/generate.py --size full --out /tmp/p.json [--seed 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

JSON = dict[str, Any]

# --------------------------------------------------------------------------
# Fixed clinical timeline (independent of the seed).
# --------------------------------------------------------------------------
TZ = dt.timezone(dt.timedelta(hours=1))
#: CAR-T infusion time ("day 0").
DAY0 = dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=TZ)
#: Midnight starting day 0; clock times of day ``n`` are offsets from this.
_DAY0_MIDNIGHT = DAY0.replace(hour=0, minute=0)
#: Evaluation instant used by the benchmark: day 5 12:00, CRS still ongoing.
AS_OF = _DAY0_MIDNIGHT + dt.timedelta(days=5, hours=12)

PATIENT_ID = "pat-bench"
PATIENT_REF = {"reference": f"Patient/{PATIENT_ID}"}
ENCOUNTER_ID = "enc-cart-001"
ENCOUNTER_REF = {"reference": f"Encounter/{ENCOUNTER_ID}"}
BASE_URL = "https://ehr.example.org/fhir"
WEIGHT_KG = 80.0

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
OBS_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory", "survey": "Survey",
                        "exam": "Exam"}
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

SIZES = ("full", "small", "pht100")
#: Evaluation instant of the ``pht100`` variant: day 100 12:00, on prednisone again after the recurrence.
AS_OF_PHT = _DAY0_MIDNIGHT + dt.timedelta(days=100, hours=12)

# Small-variant cut (see module docstring); tuned so "small" lands in 90-120 KB.
SMALL_WINDOW = dt.timedelta(hours=36)
SMALL_VITALS_EVERY_H = 4
SMALL_LAB_DAYS = 1


def at(day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    """Wall-clock time ``hour:minute`` on study day ``day`` (+01:00)."""
    return _DAY0_MIDNIGHT + dt.timedelta(days=day, hours=hour, minutes=minute)


def hours_since_day0(t: dt.datetime) -> float:
    """Hours since day-0 midnight; the physiology curves are indexed by this."""
    return (t - _DAY0_MIDNIGHT).total_seconds() / 3600.0


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def interp(knots: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear interpolation, flat outside the knot range."""
    if x <= knots[0][0]:
        return knots[0][1]
    for (x0, y0), (x1, y1) in zip(knots, knots[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return knots[-1][1]


def coding(system: str, code: str, display: str) -> JSON:
    return {"system": system, "code": code, "display": display}


def quantity(value: float, unit: str, code: str) -> JSON:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def mg(value: float) -> JSON:
    return quantity(value, "mg", "mg")


# --------------------------------------------------------------------------
# Code tables
# --------------------------------------------------------------------------
class Vital(NamedTuple):
    """LOINC code/display and unit (human-readable + UCUM code) of a vital sign."""

    code: str
    display: str
    unit: str
    ucum: str


TEMP = Vital("8310-5", "Body temperature", "°C", "Cel")
TEMP_F = TEMP._replace(unit="°F", ucum="[degF]")
HR = Vital("8867-4", "Heart rate", "/min", "/min")
RR = Vital("9279-1", "Respiratory rate", "/min", "/min")
SPO2 = Vital("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%")
WEIGHT = Vital("29463-7", "Body weight", "kg", "kg")

SPO2_SECOND_CODING = coding(LOINC, "2708-6", "Oxygen saturation in Arterial blood")
BP_PANEL = coding(LOINC, "85354-9", "Blood pressure panel with all children optional")
BP_SYS = coding(LOINC, "8480-6", "Systolic blood pressure")
BP_DIA = coding(LOINC, "8462-4", "Diastolic blood pressure")
O2_METHOD = coding(LOINC, "107117-4", "Method of oxygen delivery")
O2_FLOW = coding(LOINC, "3151-8", "Inhaled oxygen flow rate")
NASAL_CANNULA = coding(SNOMED, "336623009", "Nasal cannula")
NON_REBREATHER = coding(SNOMED, "427591007", "Non-rebreather mask")

# Neurological assessments (ICANS input): codes of the cartox CodeSystem, as in
# fhir_profiles/examples (profiles cartox-ice-score and cartox-loc-observation).
ICE_TOTAL = coding(CARTOX_CS, "ice-total", "ICE score, total")
#: ICE items: (code, display, maximum points); the maxima add up to 10.
ICE_ITEMS = (
    ("ice-orientation", "ICE score, orientation", 4),
    ("ice-naming", "ICE score, naming", 3),
    ("ice-commands", "ICE score, following commands", 1),
    ("ice-writing", "ICE score, writing", 1),
    ("ice-attention", "ICE score, attention", 1),
)
#: Points lost per item for an ICE total below 10 (alternatives picked by the RNG);
#: the mild ICANS episode starts with dysgraphia, then naming / orientation.
ICE_DEFICITS: dict[int, tuple[dict[str, int], ...]] = {
    9: ({"ice-writing": 1}, {"ice-attention": 1}),
    8: ({"ice-writing": 1, "ice-naming": 1}, {"ice-writing": 1, "ice-orientation": 1},
        {"ice-writing": 1, "ice-attention": 1}),
    7: ({"ice-writing": 1, "ice-naming": 1, "ice-orientation": 1},
        {"ice-writing": 1, "ice-orientation": 2}),
}
ICE_DEFICIT_WORDS = {
    "ice-orientation": "disoriented to date/place",
    "ice-naming": "word-finding difficulty",
    "ice-commands": "does not follow commands",
    "ice-writing": "cannot write a standard sentence",
    "ice-attention": "cannot count backwards from 100 by 10",
}
LOC_ASTCT = coding(CARTOX_CS, "loc-astct", "Level of consciousness (ASTCT ICANS)")
LOC_ALERT = coding(CARTOX_CS, "alert", "Alert")

ROUTE_IV = coding(SNOMED, "47625008", "Intravenous route")
ROUTE_PO = coding(SNOMED, "26643006", "Oral route")
ROUTE_SC = coding(SNOMED, "34206005", "Subcutaneous route")


class Lab:
    """A daily laboratory test: LOINC code, unit, reference range and trajectory.

    ``knots`` are (study day, value) pairs interpolated linearly; values get a
    few percent of multiplicative noise and are rounded to ``decimals``.
    """

    def __init__(
        self,
        code: str,
        display: str,
        text: str,
        unit: str,
        ucum: str,
        low: float | None,
        high: float | None,
        decimals: int,
        knots: Sequence[tuple[float, float]],
        noise: float = 0.04,
    ) -> None:
        self.code, self.display, self.text = code, display, text
        self.unit, self.ucum, self.low, self.high = unit, ucum, low, high
        self.decimals, self.knots, self.noise = decimals, knots, noise


# Trajectories: lymphodepletion on days -5..-3 drives a cytopenia with nadir on
# days 7-10; inflammation markers peak with the CRS (CRP on day 3, ferritin on
# days 4-5); a transient creatinine bump follows the hypotension of day 3/4.
LABS: tuple[Lab, ...] = (
    Lab("718-7", "Hemoglobin [Mass/volume] in Blood", "Hemoglobin", "g/dL", "g/dL", 13.0, 17.0, 1,
        [(-5, 11.8), (0, 11.1), (4, 10.2), (9, 8.2), (14, 8.6), (21, 9.3), (29, 9.9)], 0.02),
    Lab("777-3", "Platelets [#/volume] in Blood by Automated count", "Platelets", "10*9/L", "10*9/L",
        150, 400, 0, [(-5, 182), (0, 141), (4, 88), (8, 31), (10, 27), (14, 46), (21, 78), (29, 96)]),
    Lab("751-8", "Neutrophils [#/volume] in Blood by Automated count", "Neutrophils", "10*9/L", "10*9/L",
        1.8, 7.5, 2, [(-5, 3.8), (-1, 1.6), (1, 0.6), (3, 0.3), (8, 0.05), (10, 0.12), (12, 0.6),
                      (16, 1.2), (21, 1.7), (29, 2.2)], 0.08),
    Lab("731-0", "Lymphocytes [#/volume] in Blood by Automated count", "Lymphocytes", "10*9/L", "10*9/L",
        1.0, 4.0, 2, [(-5, 1.2), (-2, 0.15), (0, 0.1), (7, 0.35), (12, 0.5), (29, 0.6)], 0.08),
    Lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "WBC", "10*9/L", "10*9/L",
        4.0, 10.0, 2, [(-5, 5.6), (-1, 2.1), (1, 0.9), (3, 0.7), (8, 0.4), (10, 0.55), (12, 1.3),
                       (16, 2.0), (21, 2.6), (29, 3.2)], 0.06),
    Lab("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "CRP", "mg/L", "mg/L",
        None, 5.0, 1, [(-5, 8), (0, 11), (1, 26), (2, 96), (3, 214), (4, 158), (5, 92), (6, 47), (7, 22),
                       (9, 9), (14, 5), (29, 4)], 0.03),
    Lab("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "Ferritin", "ng/mL", "ng/mL",
        30, 400, 0, [(-5, 452), (0, 610), (2, 1450), (3, 2900), (4, 3820), (5, 3610), (7, 2400),
                     (14, 1300), (29, 880)], 0.05),
    Lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "Creatinine", "mg/dL", "mg/dL",
        0.7, 1.3, 2, [(-5, 0.88), (3, 0.95), (4, 1.42), (5, 1.24), (7, 0.98), (29, 0.9)], 0.03),
    Lab("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma", "LDH", "U/L", "U/L",
        135, 225, 0, [(-5, 284), (0, 262), (3, 518), (4, 540), (6, 390), (10, 250), (29, 215)], 0.04),
    Lab("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "ALT", "U/L", "U/L",
        0, 41, 0, [(-5, 22), (3, 38), (5, 66), (8, 41), (14, 28), (29, 24)], 0.06),
    Lab("3255-7", "Fibrinogen [Mass/volume] in Platelet poor plasma by Coagulation assay", "Fibrinogen",
        "mg/dL", "mg/dL", 200, 400, 0, [(-5, 372), (2, 455), (3, 522), (5, 410), (8, 305), (29, 330)], 0.04),
    Lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "Potassium", "mmol/L", "mmol/L",
        3.5, 5.1, 1, [(-5, 4.1), (29, 4.1)], 0.04),
)
CRS_EXTRA_LABS = ("1988-5", "2276-4")  # repeated at 18:00 on days 2-6

# The pht100 variant: counts that stay low after day 28 and respond to prednisone (seed S001's course): the
# morning values of hemoglobin, platelets, neutrophils and leukocytes replace the recovering ones above.
PHT_COUNTS: dict[str, Sequence[tuple[float, float]]] = {
    "718-7": [(-5, 11.8), (0, 11.1), (9, 8.0), (28, 7.6), (38, 7.6), (45, 7.9), (52, 8.5), (59, 9.1), (66, 9.8),
              (73, 10.3), (80, 9.9), (90, 10.6), (100, 11.2)],
    "777-3": [(-5, 182), (0, 141), (8, 24), (28, 18), (38, 18.5), (45, 30), (52, 46), (59, 62), (66, 82), (73, 90),
              (78, 60), (80, 40), (90, 64), (100, 96)],
    "751-8": [(-5, 3.8), (-1, 1.6), (3, 0.3), (8, 0.05), (28, 0.3), (38, 0.3), (45, 0.62), (52, 0.92), (59, 1.25),
              (66, 1.6), (73, 1.75), (80, 1.6), (90, 1.9), (100, 2.3)],
    "6690-2": [(-5, 5.6), (-1, 2.1), (8, 0.4), (28, 1.1), (45, 1.6), (59, 2.3), (66, 2.8), (80, 2.6), (100, 3.6)],
}
PHT_LAB_DAYS = (30, 100)  # after day 29: counts on Mondays, Wednesdays and Fridays of the study week (days 0, 2, 4 mod 7)
# (first day, last day, mg/day): the team follows the regimen's steps (halved on day 44, tapered weekly, stopped on day
# 65; recurrence on day 77, restarted on day 78 and halved on day 95 once the platelets are a grade better).
PHT_PREDNISONE: Sequence[tuple[int, int, int]] = ((31, 43, 40), (44, 50, 20), (51, 57, 10), (58, 64, 5), (78, 94, 40), (95, 100, 20))

VITAL_NOTES = (
    "Patient reports chills.",
    "Repeat measurement confirmed.",
    "Measured after antipyretic.",
    "Patient asleep, not disturbed.",
    "Patient diaphoretic.",
    "Value confirmed manually.",
)
NURSES = ("prn-nurse-01", "prn-nurse-02", "prn-nurse-03")
PHYSICIAN = "prn-hem-01"
LAB_ORG = "org-lab-01"


# --------------------------------------------------------------------------
# Physiology (a function of the nominal slot time, plus seeded noise)
# --------------------------------------------------------------------------
# Fever curve (hours since day-0 midnight, °C): onset day 2 ~09:00, peak 39.6 at
# day 3 04:00 (before tocilizumab), persistent fever to day 6 ~18:00.
FEVER_START_H = 24 * 2 + 8
FEVER_END_H = 24 * 6 + 18
PEAK_H = 24 * 3 + 4
PEAK_TEMP = 39.6
FEVER_KNOTS = (
    (24 * 2 + 4, 37.2), (24 * 2 + 8, 38.1), (24 * 2 + 14, 38.6), (24 * 2 + 22, 39.1), (PEAK_H, PEAK_TEMP),
    (24 * 3 + 10, 39.2), (24 * 3 + 16, 38.6), (24 * 4, 38.9), (24 * 4 + 8, 38.7), (24 * 4 + 16, 38.4),
    (24 * 5, 38.8), (24 * 5 + 8, 38.5), (24 * 5 + 16, 38.3), (24 * 6, 38.6), (24 * 6 + 8, 38.2),
    (FEVER_END_H, 38.1), (24 * 6 + 21, 37.6), (24 * 7 + 2, 37.1),
)
HYPOTENSION = (at(3, 21), at(4, 5))          # systolic 80-88 mmHg
NOREPINEPHRINE = (at(4, 0, 30), at(4, 10, 30))
OXYGEN = (at(3, 6), at(5, 23))               # nasal cannula, hourly records
NON_REBREATHER_HOURS = (at(4, 2), at(4, 5))  # inclusive; 10 L/min
HALF_HOURLY = (at(2), at(7))                 # closer monitoring during CRS
# Neurological assessments (ICE + level of consciousness) every 8 h after the
# infusion: 14:00, 22:00, 06:00 from day 0 14:00 to day 29 22:00.
NEURO_FIRST = at(0, 14)
NEURO_LAST = at(29, 22)
NEURO_EVERY = dt.timedelta(hours=8)
#: Mild ICANS (ICE 7-9, alert: ASTCT grade 1), inclusive; ICE 10 outside it.
ICANS = (at(4, 22), at(6, 14))


def _diurnal(t: dt.datetime) -> float:
    """+1 around 16:00, -1 around 04:00."""
    return math.sin(2 * math.pi * (t.hour + t.minute / 60 - 10) / 24)


def temperature_c(t: dt.datetime, rng: random.Random) -> float:
    h = hours_since_day0(t)
    if h == PEAK_H:
        return PEAK_TEMP
    if FEVER_KNOTS[0][0] <= h <= FEVER_KNOTS[-1][0]:
        value = interp(FEVER_KNOTS, h) + rng.gauss(0, 0.15)
        if FEVER_START_H <= h <= FEVER_END_H:
            value = min(max(value, 38.0), PEAK_TEMP - 0.1)
        return round(value, 1)
    return round(min(max(36.75 + 0.25 * _diurnal(t) + rng.gauss(0, 0.1), 36.1), 37.5), 1)


def heart_rate(t: dt.datetime, temp_c: float, rng: random.Random) -> int:
    value = 76 + 4 * _diurnal(t) + rng.gauss(0, 3) + max(0.0, temp_c - 37.0) * 11
    if HYPOTENSION[0] <= t <= HYPOTENSION[1]:
        value += 12
    return int(round(min(max(value, 52), 140)))


def respiratory_rate(t: dt.datetime, rng: random.Random) -> int:
    value = 15 + rng.gauss(0, 1.2)
    if OXYGEN[0] - dt.timedelta(hours=3) <= t <= OXYGEN[1]:
        value += 5
    if NON_REBREATHER_HOURS[0] - dt.timedelta(hours=1) <= t <= NON_REBREATHER_HOURS[1]:
        value += 4
    return int(round(min(max(value, 11), 34)))


def spo2(t: dt.datetime, rng: random.Random) -> int:
    if NON_REBREATHER_HOURS[0] - dt.timedelta(hours=1) <= t <= NON_REBREATHER_HOURS[1]:
        lo, hi = 90, 93
    elif OXYGEN[0] - dt.timedelta(hours=3) <= t < OXYGEN[0]:
        lo, hi = 89, 92  # desaturation that triggers oxygen
    elif OXYGEN[0] <= t <= OXYGEN[1]:
        lo, hi = 93, 96
    else:
        lo, hi = 95, 99
    return rng.randint(lo, hi)


def blood_pressure(t: dt.datetime, rng: random.Random) -> tuple[int, int]:
    h = hours_since_day0(t)
    if HYPOTENSION[0] <= t <= HYPOTENSION[1]:
        return rng.randint(80, 88), rng.randint(44, 52)
    if HYPOTENSION[1] < t <= NOREPINEPHRINE[1]:
        return rng.randint(95, 104), rng.randint(52, 60)  # maintained on norepinephrine
    if FEVER_START_H <= h <= FEVER_END_H:
        return rng.randint(98, 114), rng.randint(55, 66)
    sys_bp = 122 + 5 * _diurnal(t) + rng.gauss(0, 6)
    return int(round(sys_bp)), int(round(sys_bp * 0.6 + rng.gauss(0, 4)))


def nurse_on_duty(t: dt.datetime) -> str:
    """Three 8-hour shifts (00-08, 08-16, 16-24)."""
    return NURSES[t.hour // 8]


def nasal_cannula_flow(t: dt.datetime) -> float:
    if t < at(3, 14):
        return 2.0
    if t < at(4, 12):
        return 4.0
    if t < at(5, 6):
        return 3.0
    return 2.0


# --------------------------------------------------------------------------
# Resource builder
# --------------------------------------------------------------------------
class BundleBuilder:
    """Accumulates resources; all randomness goes through seeded RNGs (``self.rng``, and
    a second one for the neurological assessments: see ``neuro``)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.entries: list[JSON] = []
        self._counters: dict[str, int] = {}

    def next_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}-{n:05d}"

    def add(self, resource: JSON) -> None:
        self.entries.append({"fullUrl": f"{BASE_URL}/{resource['resourceType']}/{resource['id']}",
                             "resource": resource})

    def meta(self, last_updated: dt.datetime) -> JSON:
        return {"lastUpdated": iso(last_updated)}

    # --- administrative / ignored resources -------------------------------
    def administrative(self) -> None:
        created = at(-6, 15, 12)
        self.add({
            "resourceType": "Patient", "id": PATIENT_ID, "meta": self.meta(created),
            "identifier": [{
                "use": "usual",
                "type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR",
                                           "Medical record number")]},
                "system": "https://ehr.example.org/mrn", "value": "MRN-0048213"}],
            "active": True,
            "name": [{"use": "official", "family": "Bench", "given": ["Carl", "T."]}],
            "gender": "male", "birthDate": "1961-03-14",
        })
        staff = [(n, "Nurse", f"Nurse{i}") for i, n in enumerate(NURSES, 1)]
        staff.append((PHYSICIAN, "Hematologist", "Oncall"))
        for pid, family, given in staff:
            self.add({"resourceType": "Practitioner", "id": pid, "meta": self.meta(created),
                      "active": True, "name": [{"family": family, "given": [given]}]})
        self.add({"resourceType": "Organization", "id": LAB_ORG, "meta": self.meta(created),
                  "active": True, "name": "Central Laboratory, Example University Hospital"})
        self.add({
            "resourceType": "Encounter", "id": ENCOUNTER_ID, "meta": self.meta(at(29, 23, 55)),
            "status": "in-progress",
            "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP", "inpatient encounter"),
            "type": [{"text": "CAR-T cell therapy admission"}],
            "subject": PATIENT_REF,
            "participant": [{"individual": {"reference": f"Practitioner/{PHYSICIAN}"}}],
            "period": {"start": iso(at(-6, 14, 30))},
        })
        self.add({
            "resourceType": "Condition", "id": "cond-dlbcl-001", "meta": self.meta(created),
            "clinicalStatus": {"coding": [coding(
                "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active")]},
            "verificationStatus": {"coding": [coding(
                "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed")]},
            "category": [{"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-category",
                                            "problem-list-item", "Problem List Item")]}],
            "code": {"coding": [coding(SNOMED, "109969005", "Diffuse large B-cell lymphoma")],
                     "text": "Relapsed diffuse large B-cell lymphoma"},
            "subject": PATIENT_REF,
            "onsetDateTime": "2024-06-11",
            "recordedDate": "2024-06-18",
        })

    # --- observations ------------------------------------------------------
    def observation(self, kind: str, category: str, code: JSON | list[JSON], text: str,
                    effective: dt.datetime, issued_delay_s: int, performer: str,
                    rng: random.Random | None = None) -> JSON:
        """Observation skeleton shared by all observations (value added by caller).

        ``rng`` (default: the builder's RNG) draws the ``meta.lastUpdated`` delay.
        """
        issued = effective + dt.timedelta(seconds=issued_delay_s)
        codings = code if isinstance(code, list) else [code]
        rng = rng or self.rng
        obs: JSON = {
            "resourceType": "Observation",
            "id": self.next_id(f"obs-{kind}"),
            "meta": self.meta(issued + dt.timedelta(seconds=rng.randint(1, 40))),
            "status": "final",
            "category": [{"coding": [coding(OBS_CATEGORY, category, OBS_CATEGORY_DISPLAY[category])]}],
            "code": {"coding": codings, "text": text},
            "subject": PATIENT_REF,
            "effectiveDateTime": iso(effective),
            "issued": iso(issued),
            "performer": [{"reference": performer}],
        }
        return obs

    def _maybe_note(self, obs: JSON, probability: float, notes: Sequence[str]) -> None:
        if self.rng.random() < probability:
            obs["note"] = [{"text": self.rng.choice(notes)}]

    def vital(self, v: Vital, t: dt.datetime, value: float, nurse: str, *,
              extra_coding: JSON | None = None, note_p: float = 0.02) -> None:
        codes = [coding(LOINC, v.code, v.display)] + ([extra_coding] if extra_coding else [])
        obs = self.observation("vs", "vital-signs", codes, v.display, t, self.rng.randint(20, 300),
                               f"Practitioner/{nurse}")
        obs["valueQuantity"] = quantity(value, v.unit, v.ucum)
        self._maybe_note(obs, note_p, VITAL_NOTES)
        self.add(obs)

    def vitals(self) -> None:
        start, end = at(-1), at(29, 23)
        t = start
        while t <= end:
            step = 30 if HALF_HOURLY[0] <= t < HALF_HOURLY[1] else 60
            self.vital_set(t)
            if OXYGEN[0] <= t <= OXYGEN[1] and t.minute == 0:
                self.oxygen(t)
            t += dt.timedelta(minutes=step)

    def vital_set(self, slot: dt.datetime) -> None:
        """One nursing round: all five vitals recorded at the same jittered minute."""
        rng = self.rng
        t = slot + dt.timedelta(minutes=rng.randint(0, 9 if slot.minute == 0 else 6))
        nurse = nurse_on_duty(slot)

        temp_c = temperature_c(slot, rng)
        note_p = 0.04 if temp_c >= 38.0 else 0.01
        # A few thermometers report Fahrenheit (never the peak reading, so the
        # documented 39.6 °C maximum appears verbatim in the data).
        if hours_since_day0(slot) != PEAK_H and rng.random() < 0.04:
            self.vital(TEMP_F, t, round(temp_c * 9 / 5 + 32, 1), nurse, note_p=note_p)
        else:
            self.vital(TEMP, t, temp_c, nurse, note_p=note_p)
        self.vital(HR, t, heart_rate(slot, temp_c, rng), nurse)
        self.vital(RR, t, respiratory_rate(slot, rng), nurse)
        self.vital(SPO2, t, spo2(slot, rng), nurse, extra_coding=SPO2_SECOND_CODING)

        sys_bp, dia_bp = blood_pressure(slot, rng)
        obs = self.observation("vs", "vital-signs", BP_PANEL, "Blood pressure", t,
                               rng.randint(20, 300), f"Practitioner/{nurse}")
        obs["component"] = [
            {"code": {"coding": [BP_SYS], "text": "Systolic"}, "valueQuantity": quantity(sys_bp, "mmHg", "mm[Hg]")},
            {"code": {"coding": [BP_DIA], "text": "Diastolic"}, "valueQuantity": quantity(dia_bp, "mmHg", "mm[Hg]")},
        ]
        if sys_bp < 90:
            obs["note"] = [{"text": self.rng.choice(("Hypotensive, physician informed.",
                                                     "Repeat cuff measurement, arterial line requested.",
                                                     "MAP below target."))}]
        else:
            self._maybe_note(obs, 0.01, VITAL_NOTES)
        self.add(obs)

    def oxygen(self, slot: dt.datetime) -> None:
        """Hourly oxygen-support record: delivery device + flow."""
        rng = self.rng
        t = slot + dt.timedelta(minutes=rng.randint(0, 5))
        nurse = nurse_on_duty(slot)
        nrb = NON_REBREATHER_HOURS[0] <= slot <= NON_REBREATHER_HOURS[1]
        device = NON_REBREATHER if nrb else NASAL_CANNULA
        flow = 10.0 if nrb else nasal_cannula_flow(slot)

        obs = self.observation("o2", "vital-signs", O2_METHOD, "Oxygen delivery method", t,
                               rng.randint(20, 300), f"Practitioner/{nurse}")
        obs["valueCodeableConcept"] = {"coding": [device], "text": device["display"]}
        self._maybe_note(obs, 0.05, ("Tolerating well.", "Humidified.", "Device checked."))
        self.add(obs)

        obs = self.observation("o2", "vital-signs", O2_FLOW, "O2 flow", t,
                               rng.randint(20, 300), f"Practitioner/{nurse}")
        obs["valueQuantity"] = quantity(flow, "L/min", "L/min")
        self.add(obs)

    def neuro(self, seed: int) -> None:
        """ICE score + level of consciousness every 8 h after the infusion (ICANS input).

        Uses its own RNG derived from the seed, so the other resources (drawn
        from ``self.rng``) are the same as without these assessments; ids are
        ``obs-neuro-NNNNN`` (their own counter).
        """
        rng = random.Random(f"cartox-bench-neuro-{seed}")
        slot = NEURO_FIRST
        while slot <= NEURO_LAST:
            self.neuro_assessment(slot, rng)
            slot += NEURO_EVERY

    def neuro_assessment(self, slot: dt.datetime, rng: random.Random) -> None:
        """One bedside assessment: ICE total (with items) and LOC at the same minute."""
        t = slot + dt.timedelta(minutes=rng.randint(0, 9))
        nurse = f"Practitioner/{nurse_on_duty(slot)}"
        total = 10
        if ICANS[0] <= slot <= ICANS[1]:
            r = rng.random()
            total = 7 if r < 0.15 else 9 if r >= 0.85 else 8
        lost = rng.choice(ICE_DEFICITS[total]) if total < 10 else {}

        obs = self.observation("neuro", "survey", ICE_TOTAL, ICE_TOTAL["display"], t,
                               rng.randint(120, 600), nurse, rng=rng)
        obs["valueInteger"] = total
        obs["component"] = [
            {"code": {"coding": [coding(CARTOX_CS, code, display)], "text": display},
             "valueInteger": points - lost.get(code, 0)}
            for code, display, points in ICE_ITEMS
        ]
        if lost:
            words = "; ".join(ICE_DEFICIT_WORDS[code] for code, _, _ in ICE_ITEMS if code in lost)
            obs["note"] = [{"text": f"ICE {total}/10: {words}. Physician informed."}]
        self.add(obs)

        obs = self.observation("neuro", "exam", LOC_ASTCT, LOC_ASTCT["display"], t,
                               rng.randint(20, 300), nurse, rng=rng)
        obs["valueCodeableConcept"] = {"coding": [LOC_ALERT], "text": LOC_ALERT["display"]}
        self.add(obs)

    def weights(self) -> None:
        for day, kg in ((-5, WEIGHT_KG), (0, WEIGHT_KG), (7, 79.4), (14, 78.9)):
            t = at(day, 7, 40 + self.rng.randint(0, 10))
            self.vital(WEIGHT, t, kg, NURSES[0], note_p=0.0)

    def lab(self, lab: Lab, day: int, hour: int) -> None:
        rng = self.rng
        drawn = at(day, hour, rng.randint(0, 12))
        # Knots are morning (06:00) values, so the 18:00 draw of day d sits at d + 0.5.
        value = interp(lab.knots, day + (hour - 6) / 24) * (1 + rng.gauss(0, lab.noise))
        value = round(max(value, 0.01), lab.decimals)
        if lab.decimals == 0:
            value = int(value)
        obs = self.observation("lab", "laboratory", coding(LOINC, lab.code, lab.display), lab.text, drawn,
                               rng.randint(40 * 60, 100 * 60), f"Organization/{LAB_ORG}")
        obs["valueQuantity"] = quantity(value, lab.unit, lab.ucum)
        if lab.low is not None and value < lab.low:
            flag = coding(INTERPRETATION, "L", "Low")
        elif lab.high is not None and value > lab.high:
            flag = coding(INTERPRETATION, "H", "High")
        else:
            flag = coding(INTERPRETATION, "N", "Normal")
        obs["interpretation"] = [{"coding": [flag]}]
        rr: JSON = {}
        if lab.low is not None:
            rr["low"] = quantity(lab.low, lab.unit, lab.ucum)
        if lab.high is not None:
            rr["high"] = quantity(lab.high, lab.unit, lab.ucum)
        obs["referenceRange"] = [rr]
        if rng.random() < 0.01:
            obs["note"] = [{"text": "Slightly hemolysed sample."}]
        self.add(obs)

    def pht_course(self) -> None:
        """Days 0-100 of the pht100 variant after the shared data: counts, support, response, prednisone, weights."""
        counts = {lab.code: lab for lab in LABS if lab.code in PHT_COUNTS}
        for day in range(PHT_LAB_DAYS[0], PHT_LAB_DAYS[1] + 1):
            if day % 7 in (0, 2, 4) or day in (28, 38, 45, 52, 59, 66, 73, 80):
                for code, lab in counts.items():
                    self.lab(Lab(lab.code, lab.display, lab.text, lab.unit, lab.ucum, lab.low, lab.high, lab.decimals,
                                 PHT_COUNTS[code], 0.01), day, 6)
        for day in range(35, 100, 7):
            self.vital(WEIGHT, at(day, 9, self.rng.randint(0, 20)), WEIGHT_KG - 1.5, NURSES[0], note_p=0.0)
        t = at(30, 6)
        while t <= at(100, 6):
            self.vital_set(t)
            t += dt.timedelta(hours=8)
        for day in range(14, 26, 2):
            self.med("filgrastim", self.jitter(at(day, 9)), ROUTE_SC, dose=quantity(480, "ug", "ug"))
        for day in (14, 18, 22, 25):
            self.med("platelet concentrate", self.jitter(at(day, 12)), ROUTE_IV, dose=quantity(250, "mL", "mL"),
                     dosage_text="1 apheresis unit")
        response = self.observation("lab", "laboratory", coding(CARTOX_CS, "disease-response", "Disease response"),
                                    "Bone marrow response assessment", at(28, 11), 6 * 3600, f"Practitioner/{PHYSICIAN}")
        response["valueCodeableConcept"] = {"coding": [coding(CARTOX_CS, "complete-remission", "Complete remission")]}
        self.add(response)
        for first, last, dose in PHT_PREDNISONE:
            for day in range(first, last + 1):
                self.med("prednisone", self.jitter(at(day, 8)), ROUTE_PO, rxnorm=("8640", "prednisone"), dose=mg(dose),
                         dosage_text="0.5 mg/kg/day orally (PHT regimen)" if dose == 40 else "PHT taper")

    def labs(self, pht: bool = False) -> None:
        for day in range(-5, 30):
            for lab in LABS:
                if pht and lab.code in PHT_COUNTS:
                    lab = Lab(lab.code, lab.display, lab.text, lab.unit, lab.ucum, lab.low, lab.high, lab.decimals,
                              PHT_COUNTS[lab.code], lab.noise)
                self.lab(lab, day, 6)
            if 2 <= day <= 6:
                for lab in LABS:
                    if lab.code in CRS_EXTRA_LABS:
                        self.lab(lab, day, 18)

    # --- medication administrations ---------------------------------------
    def med(self, text: str, effective: dt.datetime | tuple[dt.datetime, dt.datetime], route: JSON,
            *, rxnorm: tuple[str, str] | None = None, dose: JSON | None = None, rate: JSON | None = None,
            dosage_text: str | None = None, note: str | None = None, performer: str | None = None) -> None:
        med_cc: JSON = {"text": text}
        if rxnorm:
            med_cc = {"coding": [coding(RXNORM, rxnorm[0], rxnorm[1])], "text": text}
        recorded = (effective[1] if isinstance(effective, tuple) else effective) + dt.timedelta(
            minutes=self.rng.randint(2, 25))
        res: JSON = {
            "resourceType": "MedicationAdministration",
            "id": self.next_id("mad"),
            "meta": self.meta(recorded),
            "status": "completed",
            "medicationCodeableConcept": med_cc,
            "subject": PATIENT_REF,
            "context": ENCOUNTER_REF,
        }
        if isinstance(effective, tuple):
            res["effectivePeriod"] = {"start": iso(effective[0]), "end": iso(effective[1])}
        else:
            res["effectiveDateTime"] = iso(effective)
        start = effective[0] if isinstance(effective, tuple) else effective
        res["performer"] = [{"actor": {"reference": f"Practitioner/{performer or nurse_on_duty(start)}"}}]
        dosage: JSON = {}
        if dosage_text:
            dosage["text"] = dosage_text
        dosage["route"] = {"coding": [route], "text": route["display"]}
        if dose:
            dosage["dose"] = dose
        if rate:
            dosage["rateQuantity"] = rate
        res["dosage"] = dosage
        if note:
            res["note"] = [{"text": note}]
        self.add(res)

    def jitter(self, t: dt.datetime, max_min: int = 14) -> dt.datetime:
        return t + dt.timedelta(minutes=self.rng.randint(0, max_min))

    def medications(self) -> None:
        # Lymphodepletion (fludarabine 30 mg/m2, cyclophosphamide 500 mg/m2; BSA 1.96 m2)
        for day in (-5, -4, -3):
            self.med("fludarabine", self.jitter(at(day, 9)), ROUTE_IV, dose=mg(59),
                     dosage_text="30 mg/m2 IV over 30 min")
            self.med("cyclophosphamide", self.jitter(at(day, 10)), ROUTE_IV, dose=mg(980),
                     dosage_text="500 mg/m2 IV over 60 min")
        # CAR-T infusion at exactly DAY0 (text only, no code for the product).
        self.med("axicabtagene ciloleucel", DAY0, ROUTE_IV,
                 dose=quantity(160, "10^6 CAR-positive viable T cells", "10*6"),
                 dosage_text="2 x 10^6 CAR-positive viable T cells/kg",
                 note="Infused over 20 min via central line, no immediate reaction.", performer=PHYSICIAN)
        # Prophylaxis, once daily.
        for day in range(0, 13):
            self.med("aciclovir", self.jitter(at(day, 8)), ROUTE_PO, dose=mg(800))
        for day in range(1, 13):
            self.med("levofloxacin", self.jitter(at(day, 8, 5)), ROUTE_PO, dose=mg(500))
        # Acetaminophen 1 g PO q6h while febrile (day 2 09:00 .. day 6 21:00).
        t = at(2, 9)
        while t <= at(6, 21):
            self.med("acetaminophen", self.jitter(t, 10), ROUTE_PO, rxnorm=("161", "acetaminophen"),
                     dose=mg(1000))
            t += dt.timedelta(hours=6)
        # Tocilizumab 8 mg/kg (80 kg) on day 3 and 12 h later.
        for t in (at(3, 9), at(3, 21)):
            self.med("tocilizumab", self.jitter(t, 5), ROUTE_IV, rxnorm=("612865", "tocilizumab"),
                     dose=mg(640), dosage_text="8 mg/kg IV over 60 min")
        # Fluid bolus at the onset of hypotension.
        self.med("sodium chloride 0.9% bolus", at(3, 21, 30), ROUTE_IV,
                 dose=quantity(1000, "mL", "mL"), dosage_text="1000 mL over 30 min")
        # Norepinephrine infusion overnight day 4.
        self.med("norepinephrine", NOREPINEPHRINE, ROUTE_IV, rxnorm=("7512", "norepinephrine"),
                 rate=quantity(0.08, "ug/kg/min", "ug/kg/min"),
                 dosage_text="0.05-0.12 ug/kg/min titrated to MAP >= 65 mmHg")
        # Dexamethasone 10 mg IV q6h on day 4.
        for hour in (2, 8, 14, 20):
            self.med("dexamethasone", self.jitter(at(4, hour), 5), ROUTE_IV, rxnorm=("3264", "dexamethasone"),
                     dose=mg(10))


def _effective_start(resource: JSON) -> dt.datetime | None:
    value = resource.get("effectiveDateTime") or resource.get("effectivePeriod", {}).get("start")
    return dt.datetime.fromisoformat(value) if value else None


def _keep_for_small(resource: JSON) -> bool:
    """Selection rule of the ``small`` variant (see module docstring)."""
    rtype = resource["resourceType"]
    start = _effective_start(resource)
    if start is None:
        return True  # Patient, Practitioner, Organization, Encounter, Condition
    if start > AS_OF:
        return False
    if rtype == "MedicationAdministration":
        return True
    category = resource["category"][0]["coding"][0]["code"]
    if category == "laboratory":
        return start >= AS_OF.replace(hour=0) - dt.timedelta(days=SMALL_LAB_DAYS - 1)
    if resource["code"]["coding"][0]["code"] == WEIGHT.code:
        return True
    if start < AS_OF - SMALL_WINDOW:
        return False
    if resource["code"]["coding"][0]["system"] == CARTOX_CS:
        return True  # every neurological assessment of the window (one per 8 h)
    # Vital signs / oxygen: one nursing round every SMALL_VITALS_EVERY_H hours,
    # aligned so the round just before AS_OF is included.
    slot_hours = round((AS_OF - start.replace(minute=0)).total_seconds() / 3600)
    return start.minute < 30 and slot_hours % SMALL_VITALS_EVERY_H == 0


def generate_bundle(seed: int = 7, size: str = "full") -> dict[str, Any]:
    """Return the synthetic Bundle as a plain ``dict`` (deterministic per seed/size)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    b = BundleBuilder(seed)
    b.administrative()
    # Order of generation (and of RNG draws) is fixed; resources are grouped by
    # type like a typical $everything export.
    b.weights()
    b.vitals()
    b.neuro(seed)  # own RNG: does not shift the draws of the other resources
    b.labs(pht=size == "pht100")
    b.medications()
    if size == "pht100":
        b.pht_course()
    entries = b.entries
    if size == "small":
        # Cut from the full data so both variants describe the same patient.
        entries = [e for e in entries if _keep_for_small(e["resource"])]
    exported = {"full": at(30, 0, 30), "small": AS_OF, "pht100": AS_OF_PHT}[size]
    return {
        "resourceType": "Bundle",
        "id": f"bench-{seed}-{size}",
        "meta": {"lastUpdated": iso(exported)},
        "type": "collection",
        "timestamp": iso(exported),
        "entry": entries,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--out", required=True, help="output file ('-' for stdout)")
    parser.add_argument("--indent", type=int, default=None, help="pretty-print (default: compact)")
    args = parser.parse_args(argv)

    bundle = generate_bundle(args.seed, args.size)
    separators = (",", ":") if args.indent is None else None
    text = json.dumps(bundle, ensure_ascii=False, indent=args.indent, separators=separators)
    data = text.encode("utf-8")
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        with open(args.out, "wb") as fh:
            fh.write(data)
        print(f"wrote {args.out}: {len(data):,} bytes, {len(bundle['entry'])} entries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
