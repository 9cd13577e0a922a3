"""A metrics rule compiled (rule kind `metrics`): values and threshold flags over a drug history, not grades.

The first metrics rule is glucocorticoid exposure (rules/glucocorticoid_exposure.yaml). Each administration
of the rule's medications becomes a counted dose (mg, and mg of the equivalence's reference drug), or is
listed with why it does not count: a local route, no usable dose, a volume rate without a concentration, a
stopped dose whose given part is unknown, a dose before day 0 (reported apart). Every counted dose gets an
indication class from its reasons (or the rule's defaults). Metrics (a registry of small metric types) are
computed over the doses of one indication class; thresholds compare a metric with a number, and the time a
threshold was first reached is found by replaying the doses in time order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Callable, Mapping

from service.errors import RulesError
from service.fhir_input.concepts import Terminology
from service.rules_engine.conditions import Compiler
from service.rules_engine.model import Metric, MetricsFinding, MetricsInfo, ThresholdState, Window
from service.rules_engine.presentation import bind_template
from service.timeline.facts import UNRECOGNISED_REASON, Administration, Measurement, Timeline

_COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "above": lambda value, limit: value > limit,
    "at_least": lambda value, limit: value >= limit,
    "below": lambda value, limit: value < limit,
    "at_most": lambda value, limit: value <= limit,
}


@dataclass(frozen=True, slots=True)
class Dose:
    """One administration as counted exposure."""

    fact: Administration
    mg: float
    reference_mg: float  # in the equivalence's reference drug (e.g. dexamethasone-equivalent mg)
    day: int | None  # day after infusion (day 0 = the infusion's date in its offset); None without day 0
    indication: str  # the rule's indication class
    local_date: date  # its calendar date: in the infusion's offset, or the offset it was recorded in without day 0


@dataclass(frozen=True)
class _Request:
    timeline: Timeline
    doses: tuple[Dose, ...]  # counted, after day 0, in time order
    weight: Measurement | None


MetricEvaluator = Callable[[_Request, tuple[Dose, ...]], tuple[float | None, str | None]]


def _cumulative(spec: Mapping[str, Any], c: Compiler, rule: "MetricsRule") -> MetricEvaluator:
    """Sum of the doses in the equivalence's reference drug, or `as` another drug of the table; `per_kg` divides by
    the latest usable body weight; `within_days` keeps doses up to that day after infusion."""
    target = spec.get("as")
    if target is not None and target not in rule.factors:
        raise RulesError(rule.rule_id, f"metric 'as' names {target!r}, which the equivalence table lacks")
    per_kg = bool(spec.get("per_kg"))
    within = int(c.number(spec["within_days"])) if "within_days" in spec else None

    def evaluate(request: _Request, doses: tuple[Dose, ...]) -> tuple[float | None, str | None]:
        kept = [d for d in doses if within is None or (d.day is not None and d.day <= within)]
        total = sum(d.reference_mg for d in kept) / (rule.factors[target] if target else 1.0)
        if not per_kg:
            return total, None
        if request.weight is None:
            return None, rule.words["no_weight"]
        return total / request.weight.value, None

    return evaluate


def _first_dose_day(spec: Mapping[str, Any], c: Compiler, rule: "MetricsRule") -> MetricEvaluator:
    def evaluate(request: _Request, doses: tuple[Dose, ...]) -> tuple[float | None, str | None]:
        days = [d.day for d in doses if d.day is not None]
        if days:
            return float(min(days)), None
        return None, (rule.words["no_day_zero"] if doses else None)

    return evaluate


def _exposure_days(spec: Mapping[str, Any], c: Compiler, rule: "MetricsRule") -> MetricEvaluator:
    """Distinct calendar days (in the infusion's offset) with at least one counted dose."""
    def evaluate(request: _Request, doses: tuple[Dose, ...]) -> tuple[float | None, str | None]:
        return float(len({d.local_date for d in doses})), None

    return evaluate


def _hours_since_last_dose(spec: Mapping[str, Any], c: Compiler, rule: "MetricsRule") -> MetricEvaluator:
    def evaluate(request: _Request, doses: tuple[Dose, ...]) -> tuple[float | None, str | None]:
        if not doses:
            return None, None
        now = request.timeline.as_of
        last = max(min(d.fact.end_or(now), now) for d in doses)  # a running infusion: now
        return (now - last).total_seconds() / 3600, None

    return evaluate


METRIC_TYPES: dict[str, Callable[[Mapping[str, Any], Compiler, "MetricsRule"], MetricEvaluator]] = {
    "cumulative": _cumulative,
    "first_dose_day": _first_dose_day,
    "exposure_days": _exposure_days,
    "hours_since_last_dose": _hours_since_last_dose,
}


@dataclass(frozen=True)
class _Threshold:
    code: str
    metric: str
    comparator: str
    limit: float
    from_years: float | None
    below_years: float | None
    text: str
    source: str
    label: str

    def applies(self, age: int | None) -> bool | None:
        if self.from_years is None and self.below_years is None:
            return True
        if age is None:
            return None
        return (self.from_years is None or age >= self.from_years) and (self.below_years is None or age < self.below_years)


class MetricsRule:
    """One metrics rule file, compiled."""

    def __init__(self, document: Mapping[str, Any], params: Mapping[str, Any], compiler: Compiler) -> None:
        self.rule_id = document["id"]
        self.medications = compiler.medications([document["medications"]])
        self.factors = compiler.equivalence(document["equivalence"], self.medications)
        self.weight_concept = compiler.measurement(document["weight"]["concept"])
        self.weight_max_age = timedelta(days=compiler.number(document["weight"]["max_age_days"]))
        routes = document["routes"]
        self.counted_routes = frozenset(routes["counted"])
        self.local_routes = frozenset(routes["not_counted"])
        statuses = document["statuses"]
        self.counted_statuses = frozenset(statuses["counted"])
        self.partial_statuses = frozenset(statuses.get("partial", ()))
        self.indications = {name: frozenset(spec.get("reasons", ())) for name, spec in document["indications"].items()}
        self.default_indication = document["default_indication"]
        self.when_no_reason = [
            (spec["indication"], compiler.medications(spec["medications"]), int(compiler.number(spec["from_day"])))
            for spec in document.get("when_no_reason", ())
        ]
        self.unrecognised_indication = document["unrecognised_reason"]
        for name in (self.default_indication, self.unrecognised_indication, *(i for i, _, _ in self.when_no_reason)):
            if name not in self.indications:
                raise RulesError(self.rule_id, f"unknown indication class {name!r}")
        self.recent = timedelta(hours=compiler.number(document["recent_crossing_hours"]))
        words = document["presentation"]
        runtime = ("what", "route", *document["metrics"])  # the summary names metrics, filled when shown
        self.words = {key: bind_template(text, params, runtime, self.rule_id) for key, text in words.items()}
        self.metrics: dict[str, tuple[str, MetricEvaluator, str, str]] = {}  # name -> (indication, evaluator, unit, label)
        for name, spec in document["metrics"].items():
            if spec["type"] not in METRIC_TYPES:
                raise RulesError(self.rule_id, f"metric {name!r}: unknown metric type {spec['type']!r}")
            if spec["indication"] not in self.indications:
                raise RulesError(self.rule_id, f"metric {name!r}: unknown indication class {spec['indication']!r}")
            label = bind_template(spec["label"], params, (), self.rule_id)
            self.metrics[name] = (spec["indication"], METRIC_TYPES[spec["type"]](spec, compiler, self), spec["unit"], label)
        self.thresholds = [self._threshold(code, spec, compiler, params) for code, spec in document["thresholds"].items()]
        outcome = document["outcome"]
        self.outcome_codes = outcome["codes"]
        self.outcome_thresholds = [(spec["threshold"], compiler.number(spec["ages"]["from_years"]) if "from_years" in spec["ages"] else None,
                                    compiler.number(spec["ages"]["below_years"]) if "below_years" in spec["ages"] else None)
                                   for spec in outcome["by_age"]]
        known = {t.code for t in self.thresholds}
        unknown = [code for code, _, _ in self.outcome_thresholds if code not in known]
        if unknown:
            raise RulesError(self.rule_id, f"outcome names unknown thresholds {unknown}")
        guideline = document["guideline"]
        self.info = MetricsInfo(
            rule_id=self.rule_id, rule_version=str(document["version"]), title=document["title"],
            assessment_code=document["assessment_code"], guideline_id=guideline["id"],
            guideline_citation=" ".join(guideline["citation"].split()), guideline_url=guideline["url"],
            name=self.words["name"], long_name=self.words["long_name"], caveat=self.words.get("caveat"),
            profile=document["output"]["profile"], extensions=dict(document["output"]["extensions"]),
            threshold_extension=document["output"]["threshold_extension"], words=self.words,
            none_outcome=self.outcome_codes["none"],
        )
        unknown = set(self.info.extensions) - set(self.metrics)
        if unknown:
            raise RulesError(self.rule_id, f"output extensions name unknown metrics {sorted(unknown)}")

    def _threshold(self, code: str, spec: Mapping[str, Any], c: Compiler, params: Mapping[str, Any]) -> _Threshold:
        if spec["metric"] not in self.metrics:
            raise RulesError(self.rule_id, f"threshold {code}: unknown metric {spec['metric']!r}")
        (comparator,) = [key for key in _COMPARATORS if key in spec]
        ages = spec.get("ages", {})
        return _Threshold(
            code, spec["metric"], comparator, c.number(spec[comparator]),
            c.number(ages["from_years"]) if "from_years" in ages else None,
            c.number(ages["below_years"]) if "below_years" in ages else None,
            bind_template(spec["text"], params, (), self.rule_id), spec["source"], bind_template(spec["label"], params, (), self.rule_id),
        )

    # --- evaluation ----------------------------------------------------------------------------------------------

    def assess(self, timeline: Timeline, terminology: Terminology, rule_set_version: str) -> MetricsFinding:
        counted, before, notes, listed = self._doses(timeline, terminology)
        weight = self._weight(timeline)
        request = _Request(timeline, tuple(counted), weight)
        metrics = self._metrics(request, request.doses)
        age = timeline.age_years()
        missing = [m.missing for m in metrics.values() if m.missing]
        if age is None:
            notes.append(self.words["age_unknown"])
        thresholds = tuple(self._threshold_state(t, request, metrics, age) for t in self.thresholds)
        outcome = self._outcome(thresholds, age, counted)
        by_indication = {name: sum(d.reference_mg for d in counted if d.indication == name) for name in self.indications}
        evidence = tuple(d.fact for d in counted)
        day_zero = timeline.day_zero
        start = day_zero.time if day_zero is not None else (counted[0].fact.time if counted else timeline.as_of)
        return MetricsFinding(
            rule=self.info, rule_set_version=rule_set_version, metrics=metrics, thresholds=thresholds, outcome=outcome,
            evidence=evidence, window=Window(min(start, timeline.as_of), timeline.as_of),
            missing=tuple(dict.fromkeys(missing)), notes=tuple(dict.fromkeys(notes)),
            by_indication=by_indication, before_day_zero_mg=sum(d.reference_mg for d in before),
            listed=tuple(listed), day_zero_known=day_zero is not None,
            recent_crossing=tuple(t.label for t in thresholds if t.crossed_at is not None and timeline.as_of - t.crossed_at < self.recent),
        )

    def _doses(self, timeline: Timeline, terms: Terminology) -> tuple[list[Dose], list[Dose], list[str], list[str]]:
        """(counted doses after day 0, counted doses before it, notes, what was listed and not counted)."""
        counted: list[Dose] = []
        before: list[Dose] = []
        notes: list[str] = []
        listed: list[str] = []
        day_zero = timeline.day_zero
        facts = sorted((a for concept in self.medications for a in timeline.administrations.get(concept, ())), key=lambda a: a.time)
        for fact in facts:
            what = f"{terms.display(fact.concept)} at {timeline.local(fact.time)}"
            if fact.status not in self.counted_statuses | self.partial_statuses:
                continue
            if fact.route in self.local_routes:
                listed.append(self.words["local_route"].format(what=what, route=terms.display(fact.route)))
                continue
            mg, why_not = self._mg(fact, timeline)
            if mg is None:
                listed.append(f"{what}: {why_not}")
                continue
            if fact.route is None:
                notes.append(self.words["route_unknown"])
            day = day_zero.day_of(fact.time) if day_zero else None
            local = fact.time.astimezone(day_zero.offset if day_zero else (fact.offset or timeline.display_offset))
            dose = Dose(fact, mg, mg * self.factors[fact.concept], day, self._indication(fact, day), local.date())
            if day_zero is not None and fact.time < day_zero.time:
                before.append(dose)
            else:
                counted.append(dose)
            if self.unrecognised_indication == dose.indication and UNRECOGNISED_REASON in fact.reasons:
                notes.append(self.words["reason_unrecognised"].format(what=what))
        return counted, before, notes, listed

    def _mg(self, fact: Administration, timeline: Timeline) -> tuple[float | None, str]:
        """The mg given: the dose, or a mass rate x the time it ran; None with the reason when it cannot be told."""
        if fact.status in self.partial_statuses:
            if fact.rate_mg_per_h is not None and fact.end is not None:
                return fact.rate_mg_per_h * (fact.end - fact.time).total_seconds() / 3600, ""
            return None, self.words["stopped_unknown"]
        if fact.dose_mg is not None:
            return fact.dose_mg, ""
        if fact.rate_mg_per_h is not None:
            end = min(fact.end_or(timeline.as_of), timeline.as_of)
            if end > fact.time:
                return fact.rate_mg_per_h * (end - fact.time).total_seconds() / 3600, ""
            return None, self.words["no_duration"]
        if fact.rate_ml_per_h is not None:
            return None, self.words["volume_rate"]
        return None, self.words["no_dose"]

    def _indication(self, fact: Administration, day: int | None) -> str:
        for name, reasons in self.indications.items():
            if reasons & set(fact.reasons):
                return name
        if fact.reasons:
            return self.unrecognised_indication
        for name, medications, from_day in self.when_no_reason:
            if fact.concept in medications and day is not None and day >= from_day:
                return name
        return self.default_indication

    def _weight(self, timeline: Timeline) -> Measurement | None:
        return timeline.latest_measurement(self.weight_concept, self.weight_max_age)

    def _metrics(self, request: _Request, doses: tuple[Dose, ...]) -> dict[str, Metric]:
        metrics = {}
        for name, (indication, evaluate, unit, label) in self.metrics.items():
            value, missing = evaluate(request, tuple(d for d in doses if d.indication == indication))
            metrics[name] = Metric(name, value, unit, label, missing)
        return metrics

    def _threshold_state(self, threshold: _Threshold, request: _Request, metrics: Mapping[str, Metric], age: int | None) -> ThresholdState:
        applies = threshold.applies(age)
        value = metrics[threshold.metric].value
        if not applies:  # not for this age (False), or the age is unknown (None)
            return ThresholdState(threshold.code, None, None, threshold.text, threshold.source, threshold.label, applies)
        if value is None:
            return ThresholdState(threshold.code, None, None, threshold.text, threshold.source, threshold.label)
        compare = _COMPARATORS[threshold.comparator]
        reached = compare(value, threshold.limit)
        crossed_at = None
        if reached:  # the first dose after which the metric met the threshold
            indication, evaluate, _, _ = self.metrics[threshold.metric]
            doses = [d for d in request.doses if d.indication == indication]
            for index in range(1, len(doses) + 1):
                prefix_value, _ = evaluate(request, tuple(doses[:index]))
                if prefix_value is not None and compare(prefix_value, threshold.limit):
                    crossed_at = doses[index - 1].fact.time
                    break
        return ThresholdState(threshold.code, reached, crossed_at, threshold.text, threshold.source, threshold.label)

    def _outcome(self, thresholds: tuple[ThresholdState, ...], age: int | None, counted: list[Dose]) -> str | None:
        """The default threshold set's verdict for the patient's age; None when it cannot be told."""
        if not any(d.indication == self.default_indication for d in counted):
            return self.outcome_codes["none"]
        by_code = {t.code: t for t in thresholds}
        for code, from_years, below_years in self.outcome_thresholds:
            fits = age is not None and (from_years is None or age >= from_years) and (below_years is None or age < below_years)
            if fits or (age is None and below_years is None):  # age unknown: the adult set, said in the notes
                reached = by_code[code].reached
                if reached is None:
                    return None
                return self.outcome_codes["reached" if reached else "not_reached"]
        return None
