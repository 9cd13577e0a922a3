"""The closed vocabulary of condition types: each a small compiler that turns a rule's criterion into a
callable `(Context, Window) -> Result`. Rules hold every clinical number; these functions hold none.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping

from service.errors import RulesError
from service.fhir_input.concepts import Terminology
from service.rules_engine.model import Result, Window
from service.timeline.facts import Administration, CodedValue, Measurement, Timeline

Evaluator = Callable[["Context", Window], Result]
CandidateTimes = Callable[["Context", Window], Iterable[datetime]]

_FAR_PAST = datetime.min.replace(year=1900)
_INSTANT = timedelta(microseconds=1)  # windows are (start, end]: one microsecond before a moment includes it


@dataclass
class Context:
    """Per-request evaluation state: the timeline, the patient's age and a memo of criterion results."""

    timeline: Timeline
    terminology: Terminology
    criteria: Mapping[str, "Compiled"]
    memo: dict[tuple[str, datetime, datetime], Result] = field(default_factory=dict)
    cache: dict[tuple[str, datetime, datetime], Any] = field(default_factory=dict)  # evaluators' own work

    def result(self, name: str, window: Window) -> Result:
        key = (name, window.start, window.end)
        found = self.memo.get(key)
        if found is None:
            found = self.criteria[name].evaluate(self, window)
            self.memo[key] = found
        return found

    def since_day_zero(self, end: datetime) -> Window:
        """(day 0, end] with the infusion instant itself included: only facts before it are pre-infusion."""
        return Window(self.floor(), end)

    def floor(self) -> datetime:
        """The earliest instant facts may count from: just before the infusion (all data without day 0)."""
        day_zero = self.timeline.day_zero
        if day_zero is not None:
            return day_zero.time - _INSTANT
        return _FAR_PAST.replace(tzinfo=self.timeline.as_of.tzinfo)

    def clipped(self, window: Window) -> Window:
        """The window without its pre-infusion part: facts before day 0 are never toxicity."""
        floor = self.floor()
        return window if window.start >= floor else Window(floor, window.end)


@dataclass(frozen=True)
class Compiled:
    name: str
    label: str
    evaluate: Evaluator
    candidate_times: CandidateTimes  # ends of windows where this criterion can turn positive


class Compiler:
    """Resolves `{param: name}` references and concept names while compiling one rule file."""

    def __init__(self, rule_id: str, params: Mapping[str, Any], terminology: Terminology) -> None:
        self.rule_id = rule_id
        self.params = params
        self.terms = terminology
        self.observed: set[str] = set()  # observation concepts this rule reads (the input is cut to these)

    def value(self, spec: Any) -> Any:
        if isinstance(spec, dict) and set(spec) == {"param"}:
            name = spec["param"]
            if name not in self.params:
                raise RulesError(self.rule_id, f"unknown parameter {name!r}")
            return self.params[name]
        return spec

    def number(self, spec: Any) -> float:
        value = self.value(spec)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RulesError(self.rule_id, f"expected a number, got {value!r}")
        return float(value)

    def medications(self, names: list[str]) -> frozenset[str]:
        members = self.terms.members(names)
        unknown = sorted(m for m in members if m not in self.terms.medication_codes)
        if unknown:
            raise RulesError(self.rule_id, f"unknown medication concepts {unknown}")
        return members

    def equivalence(self, name: str, medications: frozenset[str]) -> Mapping[str, float]:
        """A concepts.yaml equivalence table that covers every one of `medications`."""
        table = self.terms.equivalences.get(name)
        if table is None:
            raise RulesError(self.rule_id, f"unknown equivalence table {name!r}")
        lacking = sorted(medications - set(table))
        if lacking:
            raise RulesError(self.rule_id, f"equivalence {name!r} has no factor for {lacking}")
        return table

    def measurement(self, concept: str) -> str:
        if concept not in self.terms.measurements:
            raise RulesError(self.rule_id, f"unknown measurement concept {concept!r}")
        self.observed.add(concept)
        return concept

    def coded_observation(self, concept: str) -> str:
        if concept not in {name for name, _ in self.terms.coded_by_code.values()}:
            raise RulesError(self.rule_id, f"unknown coded observation concept {concept!r}")
        self.observed.add(concept)
        return concept

    def finding(self, concept: str) -> str:
        if concept not in set(self.terms.finding_by_code.values()):
            raise RulesError(self.rule_id, f"unknown finding concept {concept!r}")
        self.observed.add(concept)
        return concept

    def threshold(self, spec: Any) -> Callable[[int | None], tuple[float, str | None]]:
        """A fixed threshold, or one by age band: returns (value, note about the age used)."""
        spec = self.value(spec)
        if not (isinstance(spec, dict) and "by_age" in spec):
            fixed = self.number(spec)
            return lambda _age: (fixed, None)
        bands = [(self.number(b["below_years"]), self.number(b["value"]), self.number(b.get("per_year", 0))) for b in spec["by_age"]]
        default = self.number(spec["default"])

        def by_age(age: int | None) -> tuple[float, str | None]:
            if age is None:
                return default, "age unknown: adult threshold used"
            for below, base, per_year in bands:
                if age < below:
                    return base + per_year * age, None
            return default, None

        return by_age


_COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "ge": lambda value, limit: value >= limit,
    "gt": lambda value, limit: value > limit,
    "le": lambda value, limit: value <= limit,
    "lt": lambda value, limit: value < limit,
}

_SYMBOLS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _in_window(timeline: Timeline, concept: str, window: Window) -> tuple[Measurement, ...]:
    """Measurements of a concept in (start, end], date-only values excluded (they have no hour)."""
    facts = timeline.measurements.get(concept)
    if not facts:
        return ()
    times = timeline.measurement_times[concept]
    selected = facts[bisect_right(times, window.start): bisect_right(times, window.end)]
    return tuple(f for f in selected if not f.date_only)


def _administrations(timeline: Timeline, concepts: frozenset[str], window: Window) -> list[Administration]:
    """Administrations running at any moment of (start, end]: points inside it, intervals overlapping it."""
    found = []
    for concept in sorted(concepts):  # a set's order changes with the process's hash seed: outputs must not
        for fact in timeline.administrations.get(concept, ()):
            if fact.time > window.end:
                break
            end = fact.end_or(window.end)
            if end > window.start or (fact.time == end and window.contains(fact.time)):
                found.append(fact)
    return found


# --- condition types ------------------------------------------------------------------------------

def measurement_threshold(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    concept = c.measurement(spec["concept"])
    compare = _COMPARATORS[spec["comparator"]]
    threshold = c.threshold(spec["threshold"])
    unknown_when_missing = spec.get("missing", "unknown") == "unknown"

    def evaluate(ctx: Context, window: Window) -> Result:
        facts = _in_window(ctx.timeline, concept, window)
        if not facts:
            if unknown_when_missing:
                return Result(None, missing=f"no {concept} recorded in {_describe(ctx, window)}")
            return Result(False)
        limit, note = threshold(ctx.timeline.age_years())
        matching = tuple(f for f in facts if compare(f.value, limit))
        notes = (note,) if note else ()
        if matching:
            return Result(True, matching, matching[0].time, matching[-1].time, notes)
        extreme = max(facts, key=lambda f: f.value) if spec["comparator"] in ("ge", "gt") else min(facts, key=lambda f: f.value)
        return Result(False, (extreme,), notes=notes)

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        result = ctx.result(spec["_name"], window)
        return [f.time for f in result.evidence] if result.value else []

    return evaluate, candidates


def first_occurrence(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    criterion = spec["criterion"]

    def evaluate(ctx: Context, window: Window) -> Result:
        inner = ctx.result(criterion, ctx.since_day_zero(window.end))
        if not inner.value or inner.first_positive is None:
            return Result(False)
        first = next(f for f in inner.evidence if f.time == inner.first_positive)
        return Result(True, (first,), inner.first_positive, inner.first_positive)

    return evaluate, lambda ctx, window: ()


def therapy_after_onset(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    onset_name = spec["onset"]
    medications = c.medications(spec["medications"])
    lapse = timedelta(hours=c.number(spec["lapse_hours"]))
    renewed_by = list(spec.get("renewed_by", []))
    renewal_window = timedelta(hours=c.number(spec["renewal_window_hours"]))
    label = spec.get("label", spec["_name"])

    def therapies(ctx: Context, window: Window) -> tuple[datetime | None, list[Administration]]:
        onset = ctx.result(onset_name, window)
        if not onset.value or onset.first_positive is None:
            return None, []
        after = Window(onset.first_positive - timedelta(microseconds=1), window.end)
        given = [a for a in _administrations(ctx.timeline, medications, after) if a.time >= onset.first_positive]
        return onset.first_positive, given

    def evidence_times(ctx: Context, onset_time: datetime) -> list[datetime]:
        """Times since onset at which a renewing criterion holds over the window ending there (a candidate time
        alone is not evidence: one low pressure reading is not sustained hypotension); once per request."""
        key = (spec["_name"] + "#evidence", onset_time, ctx.timeline.as_of)
        if key not in ctx.cache:
            since_onset = Window(onset_time, ctx.timeline.as_of)
            ctx.cache[key] = sorted({
                t for name in renewed_by for t in ctx.criteria[name].candidate_times(ctx, since_onset)
                if ctx.result(name, Window(t - renewal_window, t)).truth
            })
        return ctx.cache[key]

    def evaluate(ctx: Context, window: Window) -> Result:
        onset_time, given = therapies(ctx, window)
        if not given:
            return Result(False)
        given.sort(key=lambda a: a.time)
        # Walk forward: therapy (re)starts the waiver; CRS evidence renews it only while it is still active,
        # so a gap longer than the lapse ends it and later evidence alone does not revive it.
        events = [(a.time, True) for a in given]
        events += [(t, False) for t in evidence_times(ctx, onset_time) if t <= window.end]
        active_until: datetime | None = None
        last = given[0].time
        for moment, is_therapy in sorted(events):
            if is_therapy or (active_until is not None and moment <= active_until):
                active_until = moment + lapse
                last = moment
        if active_until is None or window.end > active_until:
            return Result(False, notes=(f"{label}: lapsed, no renewing finding within {lapse.total_seconds() / 3600:g} h after {ctx.timeline.local(last)}",))
        return Result(True, (given[0], given[-1]) if len(given) > 1 else tuple(given), given[0].time, given[-1].time)

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        return [a.time for a in therapies(ctx, window)[1]]

    return evaluate, candidates


def concurrent_administrations(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    medications = c.medications(spec["medications"])

    def evaluate(ctx: Context, window: Window) -> Result:
        running = _administrations(ctx.timeline, medications, window)
        if not running:
            return Result(0)
        best: list[Administration] = []
        # The most distinct agents running at one instant: check each start (clipped to the window).
        for anchor in running:
            moment = max(anchor.time, window.start)
            # An infusion that ends as another starts is a switch, not two agents at once.
            # An open infusion (no end) is still running at the window's end.
            at_once = [a for a in running
                       if a.time <= moment and (a.end is None or moment < a.end or a.time == moment)]
            agents = {a.concept for a in at_once}
            if len(agents) > len({a.concept for a in best}):
                best = at_once
        count = len({a.concept for a in best})
        last = max(min(a.end_or(window.end), window.end) for a in running)
        return Result(float(count), tuple(sorted(best, key=lambda a: a.time)), min(a.time for a in running), last)

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        """Starts (clipped to the window) and ends of running agents: evidence through the whole infusion."""
        times = []
        for a in _administrations(ctx.timeline, medications, window):
            times.append(max(a.time, window.start + timedelta(microseconds=1)))
            times.append(min(a.end_or(window.end), window.end))
        return times

    return evaluate, candidates


def _fluid_bolus(given: Administration, min_ml: float, max_minutes: float, min_rate: float) -> tuple[bool, str]:
    """R6: was this crystalloid a bolus? At least `min_ml` given within `max_minutes`, or run at `min_rate`
    mL/h or faster (with at least `min_ml` when the volume is known). Volume from the dose, else rate x
    duration; duration from the period, else volume / rate. Returns the verdict and what was recorded."""
    minutes = (given.end - given.time).total_seconds() / 60 if given.end is not None and given.end > given.time else None
    volume, rate = given.volume_ml, given.rate_ml_per_h
    if minutes is None and volume is not None and rate:
        minutes = volume / rate * 60
    if volume is None and rate is not None and minutes is not None:
        volume = rate * minutes / 60
    if volume is not None and minutes is not None and volume >= min_ml and minutes <= max_minutes:
        return True, ""
    if rate is not None and rate >= min_rate and (volume is None or volume >= min_ml):
        return True, ""
    recorded = ([f"{volume:g} mL"] if volume is not None else []) + (
        [f"at {rate:g} mL/h"] if rate is not None else [f"over {minutes:.0f} min"] if minutes is not None else [])
    unknown = (["volume"] if volume is None else []) + (["rate or duration"] if rate is None and minutes is None else [])
    if unknown:
        recorded.append(("no " if not recorded else ", no ") + ", ".join(unknown) + " recorded")
    return False, " ".join(recorded).replace(" , ", ", ")


def sustained_measurement(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    concept = c.measurement(spec["concept"])
    compare = _COMPARATORS[spec["comparator"]]
    symbol = _SYMBOLS[spec["comparator"]]
    threshold = c.threshold(spec["threshold"])
    min_readings = int(c.number(spec["min_readings"]))
    min_span = timedelta(minutes=c.number(spec["min_span_minutes"]))
    follow = spec.get("or_followed_by")
    follow_meds = c.medications(follow["medications"]) if follow else frozenset()
    follow_within = timedelta(hours=c.number(follow["within_hours"])) if follow else timedelta(0)
    # Coded fluids (R6): the same bags run as maintenance, so a crystalloid counts only as a bolus.
    fluids = follow.get("fluids") if follow else None
    fluid_meds = c.medications(fluids["medications"]) if fluids else frozenset()
    bolus = (c.number(fluids["min_volume_ml"]), c.number(fluids["max_minutes"]), c.number(fluids["min_rate_ml_per_hour"])) if fluids else None
    unknown_when_missing = spec.get("missing", "unknown") == "unknown"

    def boluses_after(ctx: Context, window: Window, start: datetime) -> tuple[list[Administration], dict[str, None]]:
        """Fluid boluses started in [start, window end]: text-documented ones, and crystalloids that were
        given as a bolus; the crystalloids that were not, described for the note."""
        given = [a for a in _administrations(ctx.timeline, follow_meds, window) if a.time >= start]
        rejected: dict[str, None] = {}
        if bolus is not None:
            for fluid in _administrations(ctx.timeline, fluid_meds, window):
                if fluid.time < start:
                    continue
                counted, recorded = _fluid_bolus(fluid, *bolus)
                if counted:
                    given.append(fluid)
                else:
                    rejected[f"{fluid.display} at {ctx.timeline.local(fluid.time)} ({recorded})"] = None
        given.sort(key=lambda a: a.time)
        return given, rejected

    def evaluate(ctx: Context, window: Window) -> Result:
        facts = _in_window(ctx.timeline, concept, window)
        if not facts:
            if unknown_when_missing:
                return Result(None, missing=f"no {concept} recorded in {_describe(ctx, window)}")
            return Result(False)
        limit, note = threshold(ctx.timeline.age_years())
        notes = (note,) if note else ()
        low = [f for f in facts if compare(f.value, limit)]
        if not low:
            return Result(False, (min(facts, key=lambda f: f.value),), notes=notes)
        if len(low) >= min_readings and low[-1].time - low[0].time >= min_span:
            return Result(True, tuple(low), low[0].time, low[-1].time, notes)
        not_boluses: dict[str, None] = {}
        if follow_meds or fluid_meds:
            for reading in low:
                after = Window(reading.time - _INSTANT, min(reading.time + follow_within, window.end))
                given, rejected = boluses_after(ctx, after, reading.time)
                if given:
                    return Result(True, (reading, given[0]), reading.time, given[0].time, notes)
                not_boluses.update(rejected)
        terms = ctx.terminology
        unit = terms.display(low[0].unit)
        shown = ", ".join(f"{f.value:g} {unit} at {ctx.timeline.local(f.time)}" for f in low)
        single = (f"{terms.display(concept)} {symbol} {limit:g} {unit}: {shown}; not sustained, reported but not graded",)
        if not_boluses:
            single += (f"not a fluid bolus: {'; '.join(not_boluses)}",)
        return Result(False, tuple(low), notes=notes + single)

    def positive_candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        """A window can only turn positive at a low reading or a bolus."""
        limit, _ = threshold(ctx.timeline.age_years())
        low = [f.time for f in _in_window(ctx.timeline, concept, window) if compare(f.value, limit)]
        if not low:
            return []
        return low + [a.time for a in boluses_after(ctx, window, window.start)[0]]

    return evaluate, positive_candidates


def _bands(specs: Iterable[Mapping[str, Any]], c: Compiler) -> list[tuple[float, float | None, int]]:
    """(above, up_to, level) bands of a measured value: above < value <= up_to."""
    return [(c.number(band.get("above", 0)), c.number(band["up_to"]) if "up_to" in band else None, int(band["level"])) for band in specs]


def _band_level(bands: list[tuple[float, float | None, int]], value: float) -> int:
    for above, up_to, level in bands:
        if value > above and (up_to is None or value <= up_to):
            return level
    return 0


def oxygen_support_level(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    device_concept = c.coded_observation(spec["device_concept"])
    flow_concept = c.measurement(spec["flow_concept"])
    presence = [c.measurement(name) for name in spec.get("presence_concepts", [])]
    device_levels = {name: int(level) for name, level in spec["device_levels"].items()}
    highest = max(device_levels.values(), default=0)
    flow_applies = set(spec["flow_applies_to"])
    bands = _bands(spec["flow_bands"], c)
    # R5: FiO2 above room air with no device and no flow recorded = oxygen by an unknown device.
    fio2_concept = c.measurement(spec["fio2_concept"]) if "fio2_concept" in spec else None
    fio2_applies = set(spec.get("fio2_applies_to", ()))
    fio2_bands = _bands(spec.get("fio2_bands", ()), c)
    recency = timedelta(hours=c.number(spec["device_recency_hours"]))
    baseline_days = c.number(spec.get("baseline_days_before_day_zero", 0))
    unknown_when_missing = spec.get("missing", "unknown") == "unknown"
    name = spec["_name"]

    def device_at(devices: tuple[CodedValue, ...], times: tuple[datetime, ...], moment: datetime) -> CodedValue | None:
        """The latest device recorded at or before the moment, if still current."""
        index = bisect_right(times, moment) - 1
        if index < 0:
            return None
        current = devices[index]
        if current.ongoing or (current.end is not None and current.end >= moment) or moment - current.time <= recency:
            return current
        return None

    def flow_recorded(times: tuple[datetime, ...], moment: datetime) -> bool:
        """A flow charted at or at most `recency` before the moment: the oxygen's delivery is known."""
        index = bisect_right(times, moment) - 1
        return index >= 0 and moment - times[index] <= recency

    def readings(ctx: Context) -> tuple[list[datetime], list[tuple[Measurement, int, CodedValue | None]], list[datetime], list[tuple[Measurement, int]]]:
        """Flow and FiO2 readings scored once per request (a reading's level does not depend on the window):
        flows with their level (-1 when the device is not one that flow bands apply to) and current device;
        FiO2 readings that count without a device or flow."""
        key = (name + "#readings", ctx.timeline.as_of, ctx.timeline.as_of)
        cached = ctx.cache.get(key)
        if cached is not None:
            return cached
        timeline = ctx.timeline
        devices = timeline.coded.get(device_concept, ())
        times = timeline.coded_times.get(device_concept, ())
        flows: list[tuple[Measurement, int, CodedValue | None]] = []
        for flow in timeline.measurements.get(flow_concept, ()):
            if flow.date_only:
                continue
            device = device_at(devices, times, flow.time)
            kind = device.value if device is not None and device.value is not None else "unknown"
            flows.append((flow, _band_level(bands, flow.value) if kind in flow_applies else -1, device))
        fio2: list[tuple[Measurement, int]] = []
        if fio2_concept is not None:
            flow_times = timeline.measurement_times.get(flow_concept, ())
            for reading in timeline.measurements.get(fio2_concept, ()):
                level = _band_level(fio2_bands, reading.value)
                if reading.date_only or not level or flow_recorded(flow_times, reading.time):
                    continue
                device = device_at(devices, times, reading.time)
                if (device.value if device is not None and device.value is not None else "unknown") in fio2_applies:
                    fio2.append((reading, level))  # no device recorded: FiO2 alone tells oxygen is given
        result = ([f.time for f, _, _ in flows], flows, [r.time for r, _ in fio2], fio2)
        ctx.cache[key] = result
        return result

    def levels(ctx: Context, window: Window) -> tuple[list[tuple[int, Any]], bool, Measurement | None]:
        """(level, fact) pairs in the window, whether any oxygen data were present, and the highest FiO2
        reading scored without a device (the device is then missing)."""
        key = (name + "#levels", window.start, window.end)
        cached = ctx.cache.get(key)
        if cached is not None:
            return cached
        timeline = ctx.timeline
        devices = timeline.coded.get(device_concept, ())
        times = timeline.coded_times.get(device_concept, ())
        scored: list[tuple[int, Any]] = []
        first = bisect_right(times, window.start)
        # Devices with a period may have started before the window and still run in it.
        for device in devices[:first]:
            if device.ongoing or (device.end is not None and device.end > window.start):
                scored.append((device_levels.get(device.value or "", 0), device))
        for device in devices[first: bisect_right(times, window.end)]:
            scored.append((device_levels.get(device.value or "", 0), device))
        flow_times, flows, fio2_times, fio2 = readings(ctx)
        for flow, level, device in flows[bisect_right(flow_times, window.start): bisect_right(flow_times, window.end)]:
            if level >= 0:
                scored.append((level, flow))
            if device is not None and not window.contains(device.time):
                # the device charted before the window is still the one delivering this flow
                scored.append((device_levels.get(device.value or "", 0), device))
        no_device: Measurement | None = None
        for reading, level in fio2[bisect_right(fio2_times, window.start): bisect_right(fio2_times, window.end)]:
            scored.append((level, reading))
            if no_device is None or reading.value > no_device.value:
                no_device = reading
        present = bool(scored) or any(_in_window(timeline, concept, window) for concept in presence)
        ctx.cache[key] = (scored, present, no_device)
        return scored, present, no_device

    def evaluate(ctx: Context, window: Window) -> Result:
        scored, present, no_device = levels(ctx, window)
        if not present:
            if unknown_when_missing:
                return Result(None, missing=f"no oxygen data (device, flow or SpO2) in {_describe(ctx, window)}")
            return Result(0)
        if not scored:
            return Result(0, notes=("SpO2 recorded without oxygen device or flow: room air assumed",))
        top = max(level for level, _ in scored)
        evidence = tuple(fact for level, fact in scored if level == top)
        positive = [fact.time for level, fact in scored if level >= 2]
        incomplete = None
        if no_device is not None and top < highest:  # the unknown device may have been more support
            incomplete = (f"oxygen delivery device not recorded ({ctx.terminology.display(no_device.concept)} "
                          f"{no_device.value:g} {no_device.unit} at {ctx.timeline.local(no_device.time)})")
        baseline = _baseline(ctx)
        if top and baseline and top <= baseline:
            notes = ("the same oxygen support was used before day 0 (home oxygen): not counted as hypoxia",)
            return Result(0, evidence, notes=notes, incomplete=incomplete)
        return Result(float(top), evidence, min(positive) if positive else None, max(positive) if positive else None,
                      incomplete=incomplete)

    def _baseline(ctx: Context) -> int:
        day_zero = ctx.timeline.day_zero
        if day_zero is None or baseline_days <= 0:
            return 0
        key = (name + "#baseline", day_zero.time, day_zero.time)
        if key not in ctx.cache:
            before = Window(day_zero.time - timedelta(days=baseline_days), day_zero.time - timedelta(microseconds=1))
            scored, _, _ = levels(ctx, before)
            ctx.cache[key] = max((level for level, _ in scored), default=0)
        return ctx.cache[key]

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        scored, _, _ = levels(ctx, window)
        return [max(fact.time, window.start + timedelta(microseconds=1)) for level, fact in scored if level >= 2]

    return evaluate, candidates


def age_band(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    """The patient's age (from Patient.birthDate at the evaluation time) is in [from_years, below_years);
    unknown without a birth date."""
    low = c.number(spec["from_years"]) if "from_years" in spec else None
    high = c.number(spec["below_years"]) if "below_years" in spec else None

    def evaluate(ctx: Context, window: Window) -> Result:
        age = ctx.timeline.age_years()
        if age is None:
            return Result(None, missing="age unknown (no Patient.birthDate)")
        return Result((low is None or age >= low) and (high is None or age < high))

    return evaluate, lambda ctx, window: ()


def coded_level(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    """A coded observation's answer mapped to a level (answer -> level table in the rule): the worst level
    recorded in the window, or the latest's. Unrecognised answers count 0 and are noted."""
    concept = c.coded_observation(spec["concept"])
    levels = {answer: int(level) for answer, level in spec["levels"].items()}
    latest_only = spec.get("mode", "worst") == "latest"
    unknown_when_missing = spec.get("missing", "unknown") == "unknown"

    def in_window(ctx: Context, window: Window) -> list[tuple[int, CodedValue]]:
        facts = ctx.timeline.coded.get(concept, ())
        times = ctx.timeline.coded_times.get(concept, ())
        return [(levels.get(f.value or "", 0), f) for f in facts[bisect_right(times, window.start): bisect_right(times, window.end)]]

    def evaluate(ctx: Context, window: Window) -> Result:
        scored = in_window(ctx, window)
        if not scored:
            if unknown_when_missing:
                return Result(None, missing=f"no {ctx.terminology.display(concept)} recorded in {_describe(ctx, window)}")
            return Result(0)
        notes = tuple(f"{ctx.terminology.display(concept)}: {fact.display!r} is not an answer this rule grades" for _, fact in scored if fact.value not in levels)
        if latest_only:
            scored = scored[-1:]
        top = max(level for level, _ in scored)
        evidence = tuple(fact for level, fact in scored if level == top)
        positive = [fact.time for level, fact in scored if level > 0]
        return Result(float(top), evidence, min(positive, default=None), max(positive, default=None), notes)

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        return [fact.time for level, fact in in_window(ctx, window) if level > 0]

    return evaluate, candidates


def _not_performed(ctx: Context, concept: str, window: Window) -> Any:
    """The latest record of the assessment as not done in the window, if any."""
    records = ctx.timeline.not_performed.get(concept, ())
    times = ctx.timeline.not_performed_times.get(concept, ())
    inside = records[bisect_right(times, window.start): bisect_right(times, window.end)]
    return inside[-1] if inside else None


def measurement_level(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    """A measurement (a score or a value) banded into levels: the worst level in the window, or the latest
    reading's. Bands are above < value <= up_to."""
    concept = c.measurement(spec["concept"])
    bands = _bands(spec["bands"], c)
    latest_only = spec.get("mode", "worst") == "latest"
    unknown_when_missing = spec.get("missing", "unknown") == "unknown"
    ages = spec.get("for_ages", {})
    from_years = c.number(ages["from_years"]) if "from_years" in ages else None
    below_years = c.number(ages["below_years"]) if "below_years" in ages else None

    def age_fit(ctx: Context) -> bool | None:
        """Whether the measurement is the patient's age-appropriate one (e.g. ICE from 12, CAPD below)."""
        age = ctx.timeline.age_years()
        if age is None or not ages:
            return None if ages else True
        return (from_years is None or age >= from_years) and (below_years is None or age < below_years)

    def evaluate(ctx: Context, window: Window) -> Result:
        facts = _in_window(ctx.timeline, concept, window)
        name = ctx.terminology.display(concept)
        fits = age_fit(ctx)
        if not facts:
            if fits is False:
                return Result(None)  # not the scale for this age: not applicable (unknown, but nothing is missing)
            undone = _not_performed(ctx, concept, window)
            if undone is not None:  # recorded as not done: reported with its reason, never graded
                return Result(None, missing=f"{name} not performed ({undone.reason}) at {ctx.timeline.local(undone.time)}")
            if unknown_when_missing:
                unknown_age = " (age unknown: which scale applies cannot be told)" if fits is None else ""
                return Result(None, missing=f"no {name} recorded in {_describe(ctx, window)}{unknown_age}")
            return Result(0)
        notes: tuple[str, ...] = ()
        if fits is False:
            notes = (f"{name} recorded at age {ctx.timeline.age_years()}, outside its usual age band: counted as recorded",)
        elif fits is None:
            notes = (f"age unknown: {name} counted as recorded",)
        scored = [(_band_level(bands, f.value), f) for f in (facts[-1:] if latest_only else facts)]
        top = max(level for level, _ in scored)
        evidence = tuple(f for level, f in scored if level == top) if top else (facts[-1],)
        positive = [f.time for level, f in scored if level > 0]
        return Result(float(top), evidence, min(positive, default=None), max(positive, default=None), notes)

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        return [f.time for f in _in_window(ctx.timeline, concept, window) if _band_level(bands, f.value) > 0]

    return evaluate, candidates


def lab_grade(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    """A laboratory value graded as CTCAE grades it: the latest value in the window, level = the highest band it
    is under (`below: lln` = under the lower limit of normal; a value on a bound stays in the lower grade).
    LLN: the Observation's referenceRange.low, else the rule's default (by Patient.gender when given).
    `derived`: when the latest value is not a direct one, the product of a total and a percentage recorded
    within `within_minutes` of each other (absolute neutrophils = leukocytes x neutrophil %), said so."""
    concept = c.measurement(spec["concept"])
    lln = {key: c.number(value) for key, value in spec["lln"].items()}
    bands = [(None if band["below"] == "lln" else c.number(band["below"]), int(band["level"])) for band in spec["grades"]]
    derived = spec.get("derived")
    if derived is not None:
        total, percent = c.measurement(derived["total"]), c.measurement(derived["percent"])
        pair_gap = timedelta(minutes=c.number(derived["within_minutes"]))
        derived_note = derived["note"]

    def lower_limit(ctx: Context, facts: tuple[Measurement, ...]) -> tuple[float, str | None]:
        """The value's own referenceRange.low (a derived value has none of its own), else the rule's default."""
        if len(facts) == 1 and facts[0].reference_low is not None:
            return facts[0].reference_low, None
        sex = ctx.timeline.sex if ctx.timeline.sex in lln else "default"
        which = "default" if sex == "default" else f"default for {sex} patients"
        return lln[sex], f"no reference range sent: lower limit of normal {lln[sex]:g} {ctx.terminology.display(ctx.terminology.measurements[concept].canonical_unit)} ({which})"

    def level_of(value: float, limit: float) -> int:
        level = 0
        for bound, band_level in bands:
            if value < (limit if bound is None else bound):
                level = max(level, band_level)
        return level

    def latest(ctx: Context, window: Window) -> tuple[float, tuple[Measurement, ...]] | None:
        """The latest value in the window with the facts it comes from (one, or the total and its percentage)."""
        direct = _in_window(ctx.timeline, concept, window)
        best = (direct[-1].value, (direct[-1],)) if direct else None
        if derived is None:
            return best
        totals = _in_window(ctx.timeline, total, window)
        percents = _in_window(ctx.timeline, percent, window)
        for whole in reversed(totals):
            if best is not None and whole.time <= best[1][0].time:
                break
            share = next((p for p in reversed(percents) if abs(p.time - whole.time) <= pair_gap), None)
            if share is not None:
                return whole.value * share.value / 100, (whole, share)
        return best

    def evaluate(ctx: Context, window: Window) -> Result:
        found = latest(ctx, window)
        if found is None:
            name = ctx.terminology.display(concept)
            return Result(None, missing=f"no {name} recorded in {_describe(ctx, window)}")
        value, facts = found
        limit, limit_note = lower_limit(ctx, facts)
        level = level_of(value, limit)
        # the lower limit of normal decides only between grade 0 and 1: its origin is said only then
        notes = tuple(note for note in (limit_note if level <= 1 else None, derived_note if len(facts) > 1 else None) if note)
        moment = facts[0].time if level else None
        return Result(float(level), facts, moment, moment, notes)

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        times = [f.time for f in _in_window(ctx.timeline, concept, window)]
        if derived is not None:
            times += [f.time for f in _in_window(ctx.timeline, total, window)]
        return times

    return evaluate, candidates


def same_assessment(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    """A join: every part recorded at the same assessment (within `within_minutes` of each other) in the
    window gives `level` (ASTCT "ICE 0 because unarousable": an ICE of 0, or an ICE not performed, recorded
    with "unarousable"). A part is a measurement at most `up_to` (with `or_not_performed`, an assessment
    recorded as not done counts too) or a coded answer among `values`. No join: level 0 (the parts' own
    criteria report their missing data)."""
    tolerance = timedelta(minutes=c.number(spec["within_minutes"]))
    level = int(c.number(spec["level"]))
    parts: list[tuple[str, str, Any, bool]] = []  # (kind, concept, test, or_not_performed)
    for part in spec["parts"]:
        if "values" in part:
            parts.append(("coded", c.coded_observation(part["concept"]), frozenset(part["values"]), False))
        else:
            parts.append(("measured", c.measurement(part["concept"]), c.number(part["up_to"]), bool(part.get("or_not_performed"))))

    def qualifying(ctx: Context, window: Window, part: tuple[str, str, Any, bool]) -> list[Any]:
        kind, concept, test, or_not_performed = part
        if kind == "coded":
            facts = ctx.timeline.coded.get(concept, ())
            times = ctx.timeline.coded_times.get(concept, ())
            return [f for f in facts[bisect_right(times, window.start): bisect_right(times, window.end)] if f.value in test]
        found: list[Any] = [f for f in _in_window(ctx.timeline, concept, window) if f.value <= test]
        if or_not_performed:
            records = ctx.timeline.not_performed.get(concept, ())
            times = ctx.timeline.not_performed_times.get(concept, ())
            found += records[bisect_right(times, window.start): bisect_right(times, window.end)]
        return found

    def joins(ctx: Context, window: Window) -> list[tuple[Any, ...]]:
        first, *others = (qualifying(ctx, window, part) for part in parts)
        matched = []
        for anchor in first:
            partners = [[f for f in facts if abs(f.time - anchor.time) <= tolerance] for facts in others]
            if all(partners):
                matched.append((anchor, *(min(p, key=lambda f: abs(f.time - anchor.time)) for p in partners)))
        return matched

    def evaluate(ctx: Context, window: Window) -> Result:
        matched = joins(ctx, window)
        if not matched:
            return Result(0)
        evidence = tuple(dict.fromkeys(f for join in matched for f in join))
        times = [max(f.time for f in join) for join in matched]
        return Result(float(level), evidence, min(times), max(times))

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        return [max(f.time for f in join) for join in joins(ctx, window)]

    return evaluate, candidates


_INACTIVE = frozenset({"inactive", "remission", "resolved"})


def finding_present(spec: Mapping[str, Any], c: Compiler) -> tuple[Evaluator, CandidateTimes]:
    """Clinical findings (a Condition active in the window between onset and abatement, or an Observation
    coded as the finding) mapped to a level (finding -> level table). Findings lack the detail of the rule's
    own assessments, so a positive result says so in `incomplete` (the rule's words)."""
    levels = {c.finding(name): int(level) for name, level in spec["levels"].items()}
    incomplete_text = spec.get("incomplete")

    def active(ctx: Context, window: Window) -> list[tuple[int, Any]]:
        found = []
        floor = ctx.floor()
        for concept, level in levels.items():
            for fact in ctx.timeline.findings.get(concept, ()):
                if fact.time > window.end:
                    break
                if fact.time <= floor:  # began before day 0 (e.g. known epilepsy): baseline, never toxicity
                    continue
                end = fact.end if fact.end is not None else (fact.time if fact.clinical_status in _INACTIVE else None)
                if end is None or end > window.start or (end == fact.time and window.contains(fact.time)):
                    found.append((level, fact))
        return found

    def before_day_zero(ctx: Context) -> tuple[str, ...]:
        floor = ctx.floor()
        return tuple(f"{ctx.terminology.display(concept)} recorded before the CAR-T infusion: not counted"
                     for concept in levels if any(f.time <= floor for f in ctx.timeline.findings.get(concept, ())))

    def evaluate(ctx: Context, window: Window) -> Result:
        found = active(ctx, window)
        if not found:
            return Result(0, notes=before_day_zero(ctx))
        top = max(level for level, _ in found)
        evidence = tuple(fact for level, fact in found if level == top)
        incomplete = None
        if incomplete_text:
            incomplete = f"{incomplete_text}: " + ", ".join(dict.fromkeys(ctx.terminology.display(f.concept) for f in evidence))
        times = [f.time for _, f in found]
        return Result(float(top), evidence, min(times), max(times), notes=before_day_zero(ctx), incomplete=incomplete)

    def candidates(ctx: Context, window: Window) -> Iterable[datetime]:
        return [max(f.time, window.start + _INSTANT) for level, f in active(ctx, window) if level > 0]

    return evaluate, candidates


def _describe(ctx: Context, window: Window) -> str:
    return f"({ctx.timeline.local(window.start)}, {ctx.timeline.local(window.end)}]"


# Parameter schemas of the condition types (JSON Schema fragments; "#/$defs/..." refer to rule.schema.json).
_NUMBER = {"$ref": "#/$defs/number"}
_NAMES = {"$ref": "#/$defs/names"}
_MISSING = {"$ref": "#/$defs/missing"}
_THRESHOLD = {"$ref": "#/$defs/threshold"}
_COMPARATOR = {"enum": list(_COMPARATORS)}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_BANDS = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["level"], "additionalProperties": False,
    "properties": {"above": _NUMBER, "up_to": _NUMBER, "level": {"type": "integer"}}}}


@dataclass(frozen=True)
class ConditionType:
    """A condition type: its compiler and the JSON Schema of its parameters (one source: the rule schema's
    criterion definition is derived from this registry at load)."""

    compile: Callable[[Mapping[str, Any], Compiler], tuple[Evaluator, CandidateTimes]]
    required: tuple[str, ...]
    properties: Mapping[str, Any]


CONDITION_TYPES: dict[str, ConditionType] = {
    "measurement_threshold": ConditionType(
        measurement_threshold, ("concept", "comparator", "threshold"),
        {"concept": {"type": "string"}, "comparator": _COMPARATOR, "threshold": _THRESHOLD, "missing": _MISSING}),
    "first_occurrence": ConditionType(
        first_occurrence, ("criterion",), {"criterion": {"type": "string"}, "since": {"const": "day_zero"}}),
    "therapy_after_onset": ConditionType(
        therapy_after_onset, ("onset", "medications", "lapse_hours", "renewal_window_hours"),
        {"onset": {"type": "string"}, "medications": _NAMES, "lapse_hours": _NUMBER, "renewed_by": _STRINGS,
         "renewal_window_hours": _NUMBER}),
    "concurrent_administrations": ConditionType(concurrent_administrations, ("medications",), {"medications": _NAMES}),
    "sustained_measurement": ConditionType(
        sustained_measurement, ("concept", "comparator", "threshold", "min_readings", "min_span_minutes"),
        {"concept": {"type": "string"}, "comparator": _COMPARATOR, "threshold": _THRESHOLD,
         "min_readings": _NUMBER, "min_span_minutes": _NUMBER, "missing": _MISSING,
         "or_followed_by": {
             "type": "object", "required": ["medications", "within_hours"], "additionalProperties": False,
             "properties": {
                 "medications": _NAMES, "within_hours": _NUMBER,
                 "fluids": {
                     "description": "Coded fluids that count only when given as a bolus: volume within a time, or a rate.",
                     "type": "object", "additionalProperties": False,
                     "required": ["medications", "min_volume_ml", "max_minutes", "min_rate_ml_per_hour"],
                     "properties": {"medications": _NAMES, "min_volume_ml": _NUMBER, "max_minutes": _NUMBER,
                                    "min_rate_ml_per_hour": _NUMBER}}}}}),
    "oxygen_support_level": ConditionType(
        oxygen_support_level,
        ("device_concept", "flow_concept", "device_levels", "flow_applies_to", "flow_bands", "device_recency_hours"),
        {"device_concept": {"type": "string"}, "flow_concept": {"type": "string"}, "presence_concepts": _STRINGS,
         "device_levels": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 4}},
         "flow_applies_to": _STRINGS, "flow_bands": _BANDS, "fio2_concept": {"type": "string"},
         "fio2_applies_to": _STRINGS, "fio2_bands": _BANDS, "device_recency_hours": _NUMBER,
         "baseline_days_before_day_zero": _NUMBER, "missing": _MISSING}),
    "age_band": ConditionType(age_band, (), {"from_years": _NUMBER, "below_years": _NUMBER}),
    "finding_present": ConditionType(
        finding_present, ("levels",),
        {"levels": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "integer", "minimum": 0}},
         "incomplete": {"type": "string"}}),
    "same_assessment": ConditionType(
        same_assessment, ("parts", "within_minutes", "level"),
        {"within_minutes": _NUMBER, "level": {"type": "integer", "minimum": 1},
         "parts": {"type": "array", "minItems": 2, "items": {
             "type": "object", "required": ["concept"], "additionalProperties": False,
             "properties": {"concept": {"type": "string"}, "up_to": _NUMBER, "or_not_performed": {"type": "boolean"},
                            "values": _STRINGS},
             "oneOf": [{"required": ["up_to"]}, {"required": ["values"]}]}}}),
    "coded_level": ConditionType(
        coded_level, ("concept", "levels"),
        {"concept": {"type": "string"}, "levels": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
         "mode": {"enum": ["worst", "latest"]}, "missing": _MISSING}),
    "lab_grade": ConditionType(
        lab_grade, ("concept", "lln", "grades"),
        {"concept": {"type": "string"},
         "lln": {"type": "object", "required": ["default"], "additionalProperties": False,
                 "properties": {"default": _NUMBER, "female": _NUMBER, "male": _NUMBER}},
         "grades": {"type": "array", "minItems": 1, "items": {
             "type": "object", "required": ["below", "level"], "additionalProperties": False,
             "properties": {"below": {"oneOf": [_NUMBER, {"const": "lln"}]}, "level": {"type": "integer", "minimum": 1}}}},
         "derived": {"type": "object", "required": ["total", "percent", "within_minutes", "note"], "additionalProperties": False,
                     "properties": {"total": {"type": "string"}, "percent": {"type": "string"}, "within_minutes": _NUMBER,
                                    "note": {"type": "string"}}}}),
    "measurement_level": ConditionType(
        measurement_level, ("concept", "bands"),
        {"concept": {"type": "string"}, "bands": _BANDS, "mode": {"enum": ["worst", "latest"]}, "missing": _MISSING,
         "for_ages": {"type": "object", "additionalProperties": False,
                      "properties": {"from_years": _NUMBER, "below_years": _NUMBER}}}),
}


def criterion_schema() -> dict[str, Any]:
    """The rule schema's `$defs/criterion`, derived from the condition-type registry."""
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": list(CONDITION_TYPES)}, "label": {"type": "string"}},
        "allOf": [
            {"if": {"properties": {"type": {"const": name}}},
             "then": {"required": list(kind.required),
                      "properties": {"type": True, "label": True, **kind.properties},
                      "additionalProperties": False}}
            for name, kind in CONDITION_TYPES.items()
        ],
    }


def compile_criterion(name: str, spec: Mapping[str, Any], compiler: Compiler) -> Compiled:
    kind = spec["type"]
    if kind not in CONDITION_TYPES:
        raise RulesError(compiler.rule_id, f"criterion {name!r}: unknown condition type {kind!r}")
    evaluate, candidates = CONDITION_TYPES[kind].compile({**spec, "_name": name}, compiler)
    return Compiled(name, spec.get("label", name), evaluate, candidates)
