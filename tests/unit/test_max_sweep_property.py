"""Issue 6: the maximum-grade sweep (GradingRule._maximum) against a brute-force evaluation, for every
grading rule of the loaded rule set.

The engine finds the maximum grade since day 0 by grading only windows that end at "candidate times" where
some criterion can turn positive. The brute force grades the window (t - window, t] for every fact time t
(every observation time, every start and end of an administration or of a device period) in
(day 0, asOf], for one microsecond after each of them, and for asOf itself, each window clipped at day 0
the way the engine clips it (Context.clipped); every window on a fresh Context. Between two consecutive
fact times a window only loses facts at its start (or sees a waiver lapse), so no window ending later
between them can grade higher: this is the maximum over every window since day 0. (The window ending one
microsecond after a fact holds the same facts, fact times being whole seconds, but sees an in-progress
infusion still running at that fact.)

Patients are random but clinically shaped timelines written as compact case resources
(service.rule_cases.cases.compact_to_fhir) and run through the real pipeline (Engine.evaluate_bundle_bytes).
On a failure hypothesis shrinks the timeline and the message prints it as a rule case to paste into
rules/<rule>.cases.yaml.

Grades are ordered not-assessable < 0 < 1 < ...: the maximum is not-assessable only when no window since
day 0 is assessable.

Properties, for every grading rule:
  1. maximum grade == brute-force maximum (and the maximum's window grades to the maximum grade);
  2. grade_only(window) == grade(window).grade for every window the brute force grades;
  3. current grade == brute-force grade of the window ending at asOf (clipped at day 0), same window;
  4. maximum >= current;
  5. facts entirely before day 0 change neither the current nor the maximum grade (the timeline without
     them grades the same). A criterion that declares a look-back before day 0
     (`baseline_days_before_day_zero`, the home-oxygen baseline of R5) legitimately reads the pre-infusion
     facts of the concepts it names: those are kept.

Environment: CARTOX_SWEEP_EXAMPLES (default 150) sets the number of examples; CARTOX_SWEEP_RANDOM=1 draws
new random examples instead of the fixed (derandomized) sequence used in CI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterator, Mapping

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from service.pipeline import Engine, Outcome, RequestOptions
from service.resources import rules_dir
from service.rule_cases.cases import PATIENT_ID, SNOMED, compact_to_fhir
from service.rules_engine.conditions import Context
from service.rules_engine.grading import GradingRule
from service.rules_engine.load import RuleSet, load_rule_set, read_document, rule_files
from service.rules_engine.model import Window
from service.settings import Settings
from service.timeline.facts import Timeline

EXAMPLES = int(os.environ.get("CARTOX_SWEEP_EXAMPLES", "150"))
RANDOM = os.environ.get("CARTOX_SWEEP_RANDOM", "") not in ("", "0")

UTC = timezone.utc
MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# Day 0 is drawn in the 24 h from here (UTC); every other time is seconds relative to day 0.
BASE = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
# UTC offsets (minutes), from Hawaii to Kiritimati, half and three-quarter hours included.
OFFSETS = (-600, -300, -210, 0, 60, 120, 330, 345, 540, 630, 765, 840)


# --- the rule set and the engine ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _rule_set() -> RuleSet:
    return load_rule_set()


@lru_cache(maxsize=1)
def _engine() -> Engine:
    return Engine(Settings(), _rule_set())


@lru_cache(maxsize=1)
def _device_codes() -> tuple[str, ...]:
    """SNOMED codes of the value sets that coded observations take their values from (oxygen devices)."""
    terms = _rule_set().terminology
    names = sorted({value_set for _concept, value_set in terms.coded_by_code.values()})
    return tuple(sorted(code for name in names for (system, code) in terms.value_sets[name].by_code if system == SNOMED))


@lru_cache(maxsize=1)
def _baseline_concepts() -> dict[str, frozenset[str]]:
    """Per grading rule: the concepts whose pre-infusion facts a criterion reads on purpose (a look-back
    before day 0, `baseline_days_before_day_zero` > 0). Read from the rule files, whatever the criteria."""
    found: dict[str, frozenset[str]] = {}
    for path in rule_files(rules_dir()):
        document = read_document(path)
        if document.get("kind") != "grading":
            continue
        rule = next((r for r in _rule_set().grading if r.info.rule_id == document["id"]), None)
        if rule is None:
            continue
        concepts: set[str] = set()
        for spec in document["criteria"].values():
            days = spec.get("baseline_days_before_day_zero", 0)
            if isinstance(days, dict) and "param" in days:
                days = rule.params[days["param"]]
            if not days:
                continue
            for key, value in spec.items():
                if key.endswith("_concept") and isinstance(value, str):
                    concepts.add(value)
                elif key.endswith("_concepts") and isinstance(value, list):
                    concepts.update(v for v in value if isinstance(v, str))
        found[rule.info.rule_id] = frozenset(concepts)
    return found


# --- scenarios: compact case resources -------------------------------------------------------------------------

@dataclass
class Scenario:
    """One patient: compact resources with times as ISO strings, and the evaluation time."""

    day_zero: datetime | None  # the infusion's start (UTC), None when no CAR-T infusion was given
    as_of: datetime  # with its own UTC offset
    patient: dict[str, Any]
    resources: list[dict[str, Any]] = field(default_factory=list)

    def bundle(self, resources: list[dict[str, Any]] | None = None) -> bytes:
        entries = [{"fullUrl": f"urn:uuid:{PATIENT_ID}", "resource": {"resourceType": "Patient", "id": PATIENT_ID, **self.patient}}]
        entries += [{"resource": compact_to_fhir(item, i)} for i, item in enumerate(self.resources if resources is None else resources)]
        return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})

    def as_case(self, resources: list[dict[str, Any]] | None = None, name: str = "max-sweep-property") -> str:
        """The scenario as a rule case (YAML), one flow mapping per resource."""
        lines = [f"  - name: {name}", f"    as_of: {yaml.safe_dump(self.as_of.isoformat()).splitlines()[0]}"]
        if self.patient:
            lines.append(f"    patient: {_flow(self.patient)}")
        lines.append("    resources:")
        lines += [f"      - {_flow(item)}" for item in (self.resources if resources is None else resources)]
        lines.append("    expect: {}   # write the expectations from the specification")
        return "\n".join(lines)


def _flow(mapping: dict[str, Any]) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, sort_keys=False, width=10_000).strip()


class _Clock:
    """Seconds relative to day 0 -> ISO dateTimes, each in its own UTC offset."""

    def __init__(self, day_zero: datetime) -> None:
        self.day_zero = day_zero

    def iso(self, seconds: int, offset_minutes: int) -> str:
        moment = self.day_zero + timedelta(seconds=seconds)
        return moment.astimezone(timezone(timedelta(minutes=offset_minutes))).isoformat()


def _times(as_of: int, centers: list[int]) -> st.SearchStrategy[int]:
    """A fact time (seconds from day 0): near an episode centre, anywhere from 3 days before day 0, or on
    an edge (the infusion instant, just before it, asOf, the window boundary of asOf)."""
    near = st.builds(lambda c, m, s: c + m * MINUTE + s, st.sampled_from(centers), st.integers(-36 * 60, 36 * 60),
                     st.sampled_from((0, 0, 0, 0, 1, -1, 59)))
    anywhere = st.integers(-3 * DAY // MINUTE, as_of // MINUTE + 120).map(lambda m: m * MINUTE)
    edges = st.sampled_from((0, -1, -MINUTE, as_of, as_of - DAY, as_of - DAY + 1, as_of - DAY - 1, as_of + MINUTE))
    return st.one_of(near, near, near, anywhere, edges)


_OBSERVATION_STATUS = st.sampled_from(("final",) * 12 + ("amended", "corrected", "preliminary", "entered-in-error"))
_DURATIONS_MIN = (0, 1, 15, 29, 30, 31, 60, 240, 720, 1440, 1441, 2880)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    with_infusion = draw(st.integers(0, 19)) < 19  # 1 in 20 without a CAR-T infusion (no day 0)
    day_zero = BASE + timedelta(minutes=draw(st.integers(0, 1439)))
    clock = _Clock(day_zero)
    # asOf: any day of the first ten (sampled_from draws evenly; integers would favour the first hours)
    as_of_s = draw(st.one_of(st.builds(lambda d, m: d * 24 * 60 + m, st.sampled_from(range(10)), st.integers(1, 24 * 60)),
                             st.sampled_from((1, 60, 24 * 60, 24 * 60 + 1, 48 * 60)))) * MINUTE
    as_of = (day_zero + timedelta(seconds=as_of_s)).astimezone(timezone(timedelta(minutes=draw(st.sampled_from(OFFSETS)))))
    # episode centres: mostly after day 0, spread evenly over the days up to asOf
    spread = st.builds(lambda fraction, m: int(as_of_s * fraction) + m * MINUTE,
                       st.sampled_from([i / 20 for i in range(21)]), st.integers(-60, 60))
    centers = draw(st.lists(st.one_of(spread, spread, st.integers(-DAY // MINUTE, 0).map(lambda m: m * MINUTE)),
                            min_size=1, max_size=3))
    when = _times(as_of_s, centers)
    home = draw(st.sampled_from(OFFSETS))  # most data carry the patient's own offset
    offset = st.one_of(st.just(home), st.just(home), st.just(home), st.sampled_from(OFFSETS))

    def at(seconds: int) -> str:
        return clock.iso(seconds, draw(offset))

    def period(start: int, minutes: int | None) -> dict[str, str]:
        return {"start": at(start)} if minutes is None else {"start": at(start), "end": at(start + minutes * MINUTE)}

    resources: list[dict[str, Any]] = []
    if with_infusion:
        product = draw(st.sampled_from(("axicabtagene ciloleucel", "tisagenlecleucel", "Breyanzi", "cilta-cel")))
        if not draw(st.booleans()):
            resources.append({"id": "cart", "med": product, "at": at(0)})
        else:
            resources.append({"id": "cart", "med": product, "period": period(0, draw(st.sampled_from((15, 30, 90))))})
        if draw(st.integers(0, 9)) == 9:  # an earlier infusion: day 0 is the latest
            resources.append({"med": product, "at": at(-draw(st.integers(20, 90)) * DAY)})

    def observation(key: str, value: Any, start: int, **extra: Any) -> dict[str, Any]:
        item = {key: value, "at": at(start), **extra}
        status = draw(_OBSERVATION_STATUS)
        if status != "final":
            item["status"] = status
        return item

    def temperature() -> Iterator[dict[str, Any]]:
        if draw(st.integers(0, 7)) == 7:
            yield observation("temp", draw(st.sampled_from((99.5, 100.3, 100.4, 102.2))), draw(when), unit="[degF]")
        else:
            yield observation("temp", draw(st.sampled_from((36.4, 37.2, 37.9, 37.99, 38.0, 38.3, 39.1, 40.2))), draw(when))

    systolic = st.sampled_from((62, 70, 79, 84, 89, 89.9, 90, 96, 118, 135))

    def blood_pressure() -> Iterator[dict[str, Any]]:
        start = draw(when)
        yield observation("bp", [draw(systolic), 50], start)
        if draw(st.booleans()):  # a pair: the repeat reading some minutes later
            yield observation("bp", [draw(systolic), 48], start + draw(st.sampled_from((5, 29, 30, 31, 45, 120, 400))) * MINUTE)

    def oxygen() -> Iterator[dict[str, Any]]:
        start = draw(when)
        kind = draw(st.sampled_from(("device", "device", "flow", "fio2", "spo2", "device+flow")))
        if kind.startswith("device"):
            item: dict[str, Any] = {"device": draw(st.sampled_from(_device_codes() + ("1234567",)))}
            shape = draw(st.sampled_from(("point", "point", "period", "open")))
            if shape == "point":
                item["at"] = at(start)
            else:
                item["period"] = period(start, None if shape == "open" else draw(st.sampled_from(_DURATIONS_MIN)))
            status = draw(_OBSERVATION_STATUS)
            if status != "final":
                item["status"] = status
            yield item
        if kind.endswith("flow"):
            yield observation("o2_flow", draw(st.sampled_from((0.5, 2, 4, 6, 6.5, 10, 15, 40))),
                              start + draw(st.sampled_from((0, 0, 10, 600, 13 * 60))) * MINUTE)
        if kind == "fio2":
            yield observation("fio2", draw(st.sampled_from((21, 24, 30, 40, 40.5, 60, 100))), start)
        if kind == "spo2":
            yield observation("spo2", draw(st.sampled_from((86, 91, 95, 99))), start)

    def administration(med: str, start: int, **extra: Any) -> dict[str, Any]:
        """A point, a closed period, a completed open period (= its start) or an in-progress open period."""
        shape = draw(st.sampled_from(("point", "period", "running", "point", "period", "running", "completed-open")))
        item: dict[str, Any] = {"med": med, **extra}
        if shape == "point":
            item["at"] = at(start)
        elif shape == "period":
            item["period"] = period(start, draw(st.sampled_from(_DURATIONS_MIN)))
        else:
            item["period"] = period(start, None)
            if shape == "running":
                item["status"] = "in-progress"
        if "status" not in item:
            status = draw(st.sampled_from(("completed",) * 10 + ("in-progress", "stopped", "not-done", "entered-in-error")))
            if status != "completed":
                item["status"] = status
        return item

    pressors = st.sampled_from(("norepinephrine", "norepinephrine", "epinephrine", "phenylephrine", "dopamine", "vasopressin",
                                "dobutamine", "Levophed"))

    def vasopressors() -> Iterator[dict[str, Any]]:
        """A vasopressor course: one agent (an infusion, closed or still in progress, or a push), and maybe a
        second one, back to back with it (started as it ended) or added while it ran (an infusion or a push)."""
        start = draw(when)
        first = administration(draw(pressors), start)
        yield first
        follow = draw(st.sampled_from(("none", "back-to-back", "overlap", "overlap")))
        if follow == "none":
            return
        if "period" in first and "end" in first["period"]:
            end_s = int((datetime.fromisoformat(first["period"]["end"]) - day_zero).total_seconds())
        elif first.get("status") == "in-progress":  # still running: any time after its start overlaps it
            end_s = start + draw(st.sampled_from((30, 120, 600, 1500))) * MINUTE
        else:  # a point in time
            end_s = start
        second = end_s if follow == "back-to-back" else start + (end_s - start) // draw(st.sampled_from((2, 3, 1)))
        yield administration(draw(pressors), second)

    def escalation() -> Iterator[dict[str, Any]]:
        """CRS escalating: a fever, then within hours a vasopressor infusion (often still running) and maybe a
        second agent added to it, with the temperature charted on afterwards or not."""
        fever = draw(when)
        yield observation("temp", draw(st.sampled_from((38.0, 38.6, 39.4))), fever)
        start = fever + draw(st.sampled_from((-60, 0, 30, 120, 600))) * MINUTE
        infusion = {"med": draw(pressors), "period": period(start, None), "status": "in-progress"}
        if draw(st.booleans()):
            infusion = administration(infusion["med"], start)
        yield infusion
        if draw(st.sampled_from((True, True, False))):
            yield administration(draw(pressors), start + draw(st.sampled_from((15, 60, 180, 720))) * MINUTE)
        for step in range(draw(st.integers(0, 3))):
            yield observation("temp", draw(st.sampled_from((36.8, 37.4, 38.2))), start + (step + 1) * 4 * HOUR)

    def waiver_therapy() -> Iterator[dict[str, Any]]:
        med, dose = draw(st.sampled_from((("acetaminophen", 1000), ("paracetamol", 1000), ("ibuprofen", 400),
                                          ("tocilizumab", 560), ("dexamethasone", 10), ("methylprednisolone", 1000),
                                          ("anakinra", 100))))
        item = administration(med, draw(when))
        if draw(st.booleans()):
            item["dose_mg"] = dose
        yield item

    def fluids() -> Iterator[dict[str, Any]]:
        start = draw(when)
        if draw(st.booleans()):
            yield administration(draw(st.sampled_from(("saline bolus", "NS bolus", "lactated ringer bolus"))), start)
            return
        item = administration(draw(st.sampled_from(("normal saline", "lactated ringer", "plasma-lyte"))), start)
        if draw(st.booleans()):
            item["volume_ml"] = draw(st.sampled_from((100, 249, 250, 500, 1000)))
        if draw(st.booleans()):
            item["rate_ml_h"] = draw(st.sampled_from((80, 125, 250, 499, 500, 1000)))
        yield item

    levels = st.sampled_from(("alert", "alert", "awakens-spontaneously", "awakens-to-voice", "awakens-to-tactile", "unarousable"))

    def pre_infusion() -> Iterator[dict[str, Any]]:
        """Something charted before the infusion: the day before, or weeks before (home oxygen)."""
        before = -draw(st.one_of(st.integers(1, 3 * DAY // MINUTE), st.integers(1, 40 * 24 * 60))) * MINUTE
        kind = draw(st.sampled_from(("temp", "bp", "pressor", "device", "flow", "fio2", "therapy", "bolus", "ice", "seizure")))
        if kind == "temp":
            yield observation("temp", draw(st.sampled_from((37.0, 38.5, 39.4))), before)
        elif kind == "bp":
            yield observation("bp", [draw(systolic), 50], before)
            yield observation("bp", [draw(systolic), 50], before + 40 * MINUTE)
        elif kind == "pressor":
            yield {"med": draw(pressors), "period": period(before, draw(st.sampled_from((1, 30, 120))))}
        elif kind == "device":
            yield {"device": draw(st.sampled_from(_device_codes())), "at": at(before)}
        elif kind == "flow":
            yield observation("o2_flow", draw(st.sampled_from((2, 4, 10))), before)
        elif kind == "fio2":
            yield observation("fio2", draw(st.sampled_from((30, 60))), before)
        elif kind == "therapy":
            yield {"med": draw(st.sampled_from(("acetaminophen", "tocilizumab"))), "at": at(before)}
        elif kind == "ice":
            yield observation("ice", draw(st.sampled_from((2, 6, 9))), before)
            yield observation("loc", draw(levels), before)
        elif kind == "seizure":  # known epilepsy: a seizure Condition from before day 0, active or abated
            item = {"finding": "91175000", "at": at(before)}
            if draw(st.booleans()):
                item["abated"] = at(before + 10 * MINUTE)
            yield item
        else:
            yield {"med": "saline bolus", "at": at(before)}

    def charting() -> Iterator[dict[str, Any]]:
        """Vital signs charted at a regular interval for a while (a ward's 4-hourly observations)."""
        start, every = draw(when), draw(st.sampled_from((60, 120, 240, 360, 480)))
        kind = draw(st.sampled_from(("temp", "temp", "bp", "spo2")))
        for step in range(draw(st.integers(2, 10))):
            moment = start + step * every * MINUTE
            if kind == "temp":
                yield observation("temp", draw(st.sampled_from((36.6, 37.1, 37.6, 37.9, 38.0, 38.6, 39.3))), moment)
            elif kind == "bp":
                yield observation("bp", [draw(systolic), 55], moment)
            else:
                yield observation("spo2", draw(st.sampled_from((88, 92, 96, 98))), moment)

    def ward() -> Iterator[dict[str, Any]]:
        """The monitoring backbone: temperature (with blood pressure and SpO2 or not) every few hours from
        around day 0 towards asOf, with gaps where nothing was charted."""
        every = draw(st.sampled_from((240, 240, 360, 480, 720))) * MINUTE
        start = draw(st.sampled_from((-DAY, -12 * HOUR, 0, 2 * HOUR, as_of_s // 3)))
        stop = as_of_s - draw(st.sampled_from((0, 0, HOUR, DAY, 2 * DAY)))
        gaps = draw(st.lists(st.tuples(st.sampled_from([i / 10 for i in range(10)]),
                                       st.sampled_from((12 * HOUR, DAY, DAY + HOUR, 2 * DAY, 3 * DAY))), max_size=2))
        with_bp, with_spo2 = draw(st.booleans()), draw(st.booleans())
        moment = start + draw(st.integers(0, 59)) * MINUTE
        while moment <= stop:
            if not any(start + f * (stop - start) <= moment < start + f * (stop - start) + length for f, length in gaps):
                yield observation("temp", draw(st.sampled_from((36.5, 36.8, 37.0, 37.4, 37.8, 38.1, 38.7))), moment)
                if with_bp:
                    yield observation("bp", [draw(st.sampled_from((84, 96, 105, 118, 124, 131))), 60], moment)
                if with_spo2:
                    yield observation("spo2", draw(st.sampled_from((91, 94, 96, 98))), moment)
            moment += every

    def neuro_round() -> Iterator[dict[str, Any]]:
        """Neurological assessments every few hours: an ICE or CAPD score (or one not performed) with the level
        of consciousness at the same time, or either alone."""
        start, every = draw(when), draw(st.sampled_from((120, 240, 480)))
        for step in range(draw(st.integers(1, 6))):
            moment = start + step * every * MINUTE
            shape = draw(st.sampled_from(("both", "both", "both", "score", "loc")))
            if shape != "loc":
                key = draw(st.sampled_from(("ice", "ice", "capd")))
                value = draw(st.sampled_from((10, 9, 7, 6, 3, 2, 0) if key == "ice" else (0, 1, 8, 9, 12, 20)))
                if draw(st.integers(0, 9)) == 0:
                    yield observation(key, "not-done", moment, reason="patient unarousable")
                else:
                    yield observation(key, value, moment)
            if shape != "score":
                yield observation("loc", draw(levels), moment)

    def neuro_event() -> Iterator[dict[str, Any]]:
        """A seizure, motor finding or oedema: an ASTCT answer, or a SNOMED CT finding as a Condition (with or
        without abatement) or an Observation."""
        start = draw(when)
        kind = draw(st.sampled_from(("seizure", "motor", "edema", "condition", "condition", "finding-observation")))
        if kind == "seizure":
            yield observation("seizure", draw(st.sampled_from(("rapidly-resolving", "eeg-resolved-with-intervention", "prolonged-or-repetitive"))), start)
        elif kind == "motor":
            yield observation("motor", "focal-deep-weakness", start)
        elif kind == "edema":
            yield observation("edema", draw(st.sampled_from(("focal-local-edema", "diffuse-edema", "papilledema", "cushings-triad"))), start)
        else:
            code = draw(st.sampled_from(("91175000", "2032001", "423341008", "26079004")))
            if kind == "finding-observation":
                yield {"finding": code, "as": "observation", "at": at(start)}
            else:
                item: dict[str, Any] = {"finding": code, "at": at(start)}
                if draw(st.booleans()):
                    item["abated"] = at(start + draw(st.sampled_from((5, 60, 24 * 60, 3 * 24 * 60))) * MINUTE)
                if draw(st.integers(0, 5)) == 0:
                    item["verification"] = draw(st.sampled_from(("refuted", "entered-in-error", "provisional")))
                yield item

    if draw(st.integers(0, 3)) < 3:  # (the simplest draw, 0, keeps the backbone)
        resources.extend(ward())
    if draw(st.booleans()):  # neurological assessments over the days
        resources.extend(item for _ in range(draw(st.integers(1, 4))) for item in neuro_round())
    makers = (temperature, temperature, temperature, charting, charting, blood_pressure, blood_pressure, oxygen, oxygen,
              oxygen, vasopressors, vasopressors, escalation, waiver_therapy, waiver_therapy, fluids, pre_infusion,
              neuro_round, neuro_round, neuro_event)
    for index in draw(st.lists(st.integers(0, len(makers) - 1), max_size=20)):
        resources.extend(makers[index]())
    for number, item in enumerate(resources):
        item.setdefault("id", f"r{number}")
        resources[number] = {"id": item.pop("id"), **item}
    birth = draw(st.sampled_from(({"birthDate": "1965-04-02"},) * 5 + ({"birthDate": "2020-05-17"}, {"birthDate": "2025-11-30"}, {})))
    return Scenario(day_zero if with_infusion else None, as_of, birth, resources)


# --- the brute force ------------------------------------------------------------------------------------------

def _rank(grade: int | None) -> int:
    return -1 if grade is None else grade


def _shown(grade: int | None) -> str:
    return "not-assessable" if grade is None else str(grade)


_JUST_AFTER = timedelta(microseconds=1)


def _facts(timeline: Timeline) -> Iterator[Any]:
    """Every fact of the timeline, whatever its kind: each Timeline field that maps concepts to facts."""
    for spec in fields(timeline):
        indexed = getattr(timeline, spec.name)
        if not isinstance(indexed, Mapping):
            continue
        for facts in indexed.values():
            if isinstance(facts, tuple) and facts and hasattr(facts[0], "source"):
                yield from facts


def _fact_times(timeline: Timeline) -> Iterator[datetime]:
    """Every time a fact starts or ends: observation times, device periods, administrations' starts and ends."""
    for fact in _facts(timeline):
        yield fact.time
        end = getattr(fact, "end", None)
        if end is not None:
            yield end


def _instant(timeline: Timeline, moment: datetime) -> str:
    shown = moment.astimezone(timeline.display_offset)
    return shown.isoformat(timespec="microseconds" if shown.microsecond else "seconds")


def _window_text(timeline: Timeline, window: Window) -> str:
    return f"({_instant(timeline, window.start)}, {_instant(timeline, window.end)}]"


def _brute_force(rule: GradingRule, timeline: Timeline, problems: list[str]) -> tuple[int | None, Window | None, Window, int | None]:
    """(highest grade, its window) over every window ending at a fact time in (day 0, asOf], just after one,
    or at asOf; and the window ending at asOf with its grade. Each window is graded on a fresh Context;
    grade_only, checked against it, on one Context shared by all windows (as the engine's sweep does)."""
    terminology = _rule_set().terminology
    shared = Context(timeline, terminology, rule.criteria)
    floor, as_of = shared.floor(), timeline.as_of
    times = set(_fact_times(timeline))
    # A window ending just after a fact holds the same facts as the one ending at it (fact times are whole
    # seconds), but sees what runs on past it (an in-progress infusion): every window counts for the maximum.
    ends = sorted({t for t in times | {t + _JUST_AFTER for t in times} if floor < t <= as_of} | {as_of})
    best: int | None = None
    best_window: Window | None = None
    current_window = shared.clipped(Window(as_of - rule.window, as_of))
    current_grade: int | None = None
    for end in ends:
        window = shared.clipped(Window(end - rule.window, end))
        grade = rule.grade(Context(timeline, terminology, rule.criteria), window).grade
        quick = rule.grade_only(shared, window)
        if quick != grade:
            problems.append(f"{rule.info.rule_id}: grade_only {_shown(quick)} but grade {_shown(grade)} for the window {_window_text(timeline, window)}")
        if end == as_of:
            current_grade = grade
        # the first of the highest windows, one ending at a fact itself rather than just after it when both do
        if best_window is None or _rank(grade) > _rank(best) or (
                _rank(grade) == _rank(best) and best_window.end not in times and end in times):
            best, best_window = grade, window
    return best, best_window, current_window, current_grade


# --- pre-infusion facts ---------------------------------------------------------------------------------------

def _pre_infusion_sources(timeline: Timeline, keep_concepts: frozenset[str]) -> set[str]:
    """References of resources whose every fact lies entirely before day 0 (nothing running at or after it),
    except those of concepts a criterion reads before day 0 on purpose."""
    assert timeline.day_zero is not None
    infusion = timeline.day_zero.time
    before: dict[str, bool] = {}
    for fact in _facts(timeline):
        if hasattr(fact, "ongoing"):  # a coded value: a point (end None) or a period, open when ongoing
            ends = None if fact.ongoing else (fact.end or fact.time)
        else:  # an administration, procedure or finding: end None = still running; a measurement: a point
            ends = fact.end if hasattr(fact, "end") else fact.time
        entirely = ends is not None and ends < infusion and fact.concept not in keep_concepts
        if fact.source == timeline.day_zero.source:
            entirely = False
        before[fact.source] = before.get(fact.source, True) and entirely
    return {source for source, entirely in before.items() if entirely}


# --- the property ---------------------------------------------------------------------------------------------

def _evaluate(scenario: Scenario, resources: list[dict[str, Any]] | None = None) -> Outcome:
    return _engine().evaluate_bundle_bytes(scenario.bundle(resources), RequestOptions(as_of=scenario.as_of))


def _findings(outcome: Outcome) -> dict[str, Any]:
    return {finding.rule.rule_id: finding for finding in outcome.evaluation.findings}


def problems_of(scenario: Scenario) -> tuple[list[str], Timeline, list[dict[str, Any]] | None]:
    """Every property the scenario breaks (one line each), its timeline, and its resources without the facts
    before day 0 (None when it had none)."""
    outcome = _evaluate(scenario)
    timeline = outcome.timeline
    findings = _findings(outcome)
    problems: list[str] = []
    for rule in _rule_set().grading:
        rule_id = rule.info.rule_id
        finding = findings[rule_id]
        best, best_window, current_window, current_grade = _brute_force(rule, timeline, problems)
        engine_max, engine_current = finding.maximum.grade, finding.current.grade
        if currently_in_test_context():  # --hypothesis-show-statistics: every grade of every rule is reached
            event(f"{rule_id} maximum {_shown(engine_max)}")
        label = f"{rule_id}: "
        if _rank(engine_max) != _rank(best):
            problems.append(f"{label}maximum grade: brute force {_shown(best)} (window {_window_text(timeline, best_window)}), "
                            f"engine {_shown(engine_max)} (window {_window_text(timeline, finding.maximum.window)})")
        again = rule.grade(Context(timeline, _rule_set().terminology, rule.criteria), finding.maximum.window).grade
        if again != engine_max:
            problems.append(f"{label}the maximum's window {_window_text(timeline, finding.maximum.window)} grades "
                            f"{_shown(again)}, the maximum says {_shown(engine_max)}")
        if finding.current.window != current_window:
            problems.append(f"{label}current window {_window_text(timeline, finding.current.window)}, "
                            f"expected {_window_text(timeline, current_window)}")
        if engine_current != current_grade:
            problems.append(f"{label}current grade {_shown(engine_current)}, the window ending at asOf grades {_shown(current_grade)}")
        if _rank(engine_max) < _rank(engine_current):
            problems.append(f"{label}maximum {_shown(engine_max)} below the current grade {_shown(engine_current)}")

    stripped = None
    if timeline.day_zero is not None:
        # per rule, without the pre-infusion facts that rule does not read on purpose (rules sharing a
        # look-back share one evaluation)
        by_keep: dict[frozenset[str], list[str]] = {}
        for rule in _rule_set().grading:
            by_keep.setdefault(_baseline_concepts().get(rule.info.rule_id, frozenset()), []).append(rule.info.rule_id)
        for keep, rule_ids in by_keep.items():
            removed = _pre_infusion_sources(timeline, keep)
            if not removed:
                continue
            removed_ids = {source.rsplit("/", 1)[-1] for source in removed}
            stripped = [item for item in scenario.resources if item["id"] not in removed_ids]
            without = _findings(_evaluate(scenario, stripped))
            for rule_id in rule_ids:
                finding, other = findings[rule_id], without[rule_id]
                for what, with_pre, without_pre in (("current", finding.current.grade, other.current.grade),
                                                    ("maximum", finding.maximum.grade, other.maximum.grade)):
                    if with_pre != without_pre:
                        problems.append(f"{rule_id}: {what} grade {_shown(with_pre)} with the facts before day 0, "
                                        f"{_shown(without_pre)} without them (removed: {', '.join(sorted(removed))})")
    return problems, timeline, stripped


def check_scenario(scenario: Scenario) -> None:
    problems, timeline, stripped = problems_of(scenario)
    if problems:
        message = ["", *problems, "",
                   f"asOf {scenario.as_of.isoformat()}, day 0 "
                   f"{timeline.day_zero.time.isoformat() if timeline.day_zero else 'unknown (no CAR-T infusion)'}",
                   "As a rule case:", scenario.as_case()]
        if stripped is not None:
            message += ["Without the facts before day 0:", scenario.as_case(stripped, "max-sweep-property-without-pre-infusion")]
        raise AssertionError("\n".join(message))


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_maximum_sweep_matches_brute_force(scenario: Scenario) -> None:
    check_scenario(scenario)


# Counterexamples the property found (shrunk by hypothesis, then by hand), kept as plain tests so that they
# run whatever examples hypothesis draws. Until the engine is fixed they fail: do not mark them xfail.
_CART = {"id": "cart", "med": "axicabtagene ciloleucel", "at": "2026-03-02T10:00:00+01:00"}
COUNTEREXAMPLES = {
    # The sweep grades only windows that end where a criterion turns positive: with no fever, pressor or
    # oxygen since day 0 it keeps the current grade (no temperature in the last 24 h: not-assessable), although
    # the window ending at t1 was assessed (37.0 degC, no waiver: grade 0).
    "maximum-not-assessable-though-a-window-since-day-0-graded-0": (
        "2026-03-06T12:00:00+01:00",
        [_CART, {"id": "t1", "temp": 37.0, "at": "2026-03-03T10:00:00+01:00"}],
    ),
    # Phenylephrine runs (in progress) from 11:00 and norepinephrine is pushed at 14:00: two agents at 14:00,
    # and the window ending at t2 (15:00) grades 4. The sweep grades the window ending at n1 (14:00) instead,
    # where the running infusion, its end taken as the window's end, is not counted as running at that instant
    # (concurrent_administrations: `moment < a.end_or(window.end)`): one agent, grade 3; no later candidate
    # window holds both. (With asOf 14:00 the current grade is 3, with asOf 14:00:01 it is 4.)
    "second-pressor-pushed-during-a-running-infusion-at-a-window-end": (
        "2026-03-06T12:00:00+01:00",
        [_CART,
         {"id": "p1", "med": "phenylephrine", "period": {"start": "2026-03-02T11:00:00+01:00"}, "status": "in-progress"},
         {"id": "t1", "temp": 38.5, "at": "2026-03-02T12:00:00+01:00"},
         {"id": "n1", "med": "norepinephrine", "at": "2026-03-02T14:00:00+01:00"},
         {"id": "t2", "temp": 37.0, "at": "2026-03-02T15:00:00+01:00"}],
    ),
}


@pytest.mark.parametrize("name", sorted(COUNTEREXAMPLES))
def test_counterexample(name: str) -> None:
    as_of, resources = COUNTEREXAMPLES[name]
    scenario = Scenario(datetime.fromisoformat(_CART["at"]).astimezone(UTC), datetime.fromisoformat(as_of),
                        {"birthDate": "1965-04-02"}, [dict(item) for item in resources])
    check_scenario(scenario)


def test_the_rule_set_has_grading_rules() -> None:
    """The property runs over rule_set.grading, whatever its rules: it must not pass vacuously."""
    assert _rule_set().grading
