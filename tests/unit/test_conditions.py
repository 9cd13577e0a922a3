"""service.rules_engine.conditions: every condition type compiled from a small criterion and evaluated
over a hand-built Timeline (facts from service.timeline.facts)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from service.errors import RulesError
from service.rules_engine.conditions import CONDITION_TYPES, Compiler, Context, compile_criterion
from service.rules_engine.model import Window
from service.timeline.facts import Administration, CodedValue, DayZero, Measurement

UTC = timezone.utc
CET = timezone(timedelta(hours=1))
AS_OF = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
WINDOW = Window(AS_OF - timedelta(hours=24), AS_OF)
INFUSION = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY_ZERO = DayZero(time=INFUSION, offset=CET, source="MedicationAdministration/cart", product="axicabtagene-ciloleucel")

CRS_PARAMS = {
    "fever_celsius": 38.0,
    "waiver_lapse_hours": 72,
    "adult_systolic_mmhg": 90,
    "low_systolic_min_readings": 2,
    "low_systolic_min_span_minutes": 30,
    "fluid_bolus_within_hours": 6,
    "low_flow_max_l_min": 6,
    "device_recency_hours": 12,
    "home_oxygen_lookback_days": 30,
}

FEVER = {"type": "measurement_threshold", "concept": "body-temperature", "comparator": "ge",
         "threshold": {"param": "fever_celsius"}, "missing": "unknown"}
ONSET = {"type": "first_occurrence", "criterion": "fever", "since": "day_zero"}
WAIVER = {"type": "therapy_after_onset", "onset": "onset",
          "medications": ["anti-cytokine", "systemic-corticosteroid", "antipyretic"],
          "lapse_hours": {"param": "waiver_lapse_hours"}, "renewed_by": ["fever"]}
PRESSORS = {"type": "concurrent_administrations", "medications": ["norepinephrine", "epinephrine", "phenylephrine", "dopamine"]}
SYSTOLIC_BY_AGE = {"by_age": [{"below_years": 1, "value": 70}, {"below_years": 10, "value": 70, "per_year": 2}],
                   "default": {"param": "adult_systolic_mmhg"}}
SUSTAINED = {"type": "sustained_measurement", "concept": "systolic-bp", "comparator": "lt", "threshold": SYSTOLIC_BY_AGE,
             "min_readings": {"param": "low_systolic_min_readings"},
             "min_span_minutes": {"param": "low_systolic_min_span_minutes"},
             "or_followed_by": {"medications": ["iv-fluid-bolus"], "within_hours": {"param": "fluid_bolus_within_hours"}},
             "missing": "unknown"}
HYPOXIA = {
    "type": "oxygen_support_level", "device_concept": "oxygen-delivery-device", "flow_concept": "oxygen-flow",
    "presence_concepts": ["oxygen-saturation", "inhaled-oxygen-concentration"],
    "device_levels": {"room-air": 0, "nasal-cannula": 2, "blow-by": 2, "high-flow-nasal-cannula": 3, "oxygen-mask": 3,
                      "non-rebreather-mask": 3, "partial-rebreather-mask": 3, "venturi-mask": 3,
                      "cpap-bipap-mask": 4, "mechanical-ventilation": 4},
    "flow_applies_to": ["nasal-cannula", "unknown"],
    "flow_bands": [{"above": 0, "up_to": {"param": "low_flow_max_l_min"}, "level": 2},
                   {"above": {"param": "low_flow_max_l_min"}, "level": 3}],
    "device_recency_hours": {"param": "device_recency_hours"},
    "baseline_days_before_day_zero": {"param": "home_oxygen_lookback_days"},
    "missing": "unknown",
}


def at(hours: float) -> datetime:
    """A moment `hours` before the evaluation time."""
    return AS_OF - timedelta(hours=hours)


_UNITS = {"body-temperature": "Cel", "systolic-bp": "mm[Hg]", "oxygen-flow": "L/min", "oxygen-saturation": "%",
          "inhaled-oxygen-concentration": "%"}


def m(concept: str, value: float, when: datetime, date_only: bool = False) -> Measurement:
    unit = _UNITS[concept]
    return Measurement(concept=concept, value=value, unit=unit, time=when, source=f"Observation/{concept}-{when:%d%H%M}",
                       original=f"{value:g} {unit}", date_only=date_only)


def temp(value: float, when: datetime) -> Measurement:
    return m("body-temperature", value, when)


def sbp(value: float, when: datetime) -> Measurement:
    return m("systolic-bp", value, when)


def flow(value: float, when: datetime) -> Measurement:
    return m("oxygen-flow", value, when)


def device(value: str | None, when: datetime, end: datetime | None = None, ongoing: bool = False) -> CodedValue:
    return CodedValue(concept="oxygen-delivery-device", value=value, display=value or "unknown thing", time=when,
                      end=end, ongoing=ongoing, source=f"Observation/dev-{when:%d%H%M}")


def give(concept: str, start: datetime, end: datetime | None | str = "point", status: str = "completed") -> Administration:
    stop = start if end == "point" else end
    return Administration(concept=concept, time=start, end=stop, dose_mg=None, status=status, display=concept,
                          source=f"MedicationAdministration/{concept}-{start:%d%H%M}")


@pytest.fixture
def evaluate(terminology, timeline_of):
    """evaluate(criteria, name, facts, window=WINDOW, params=CRS_PARAMS, birth_date=..., day_zero=...) -> Result."""

    def run(criteria, name, facts=(), window=WINDOW, params=None, birth_date=date(1965, 4, 2), day_zero=None, as_of=AS_OF):
        compiler = Compiler("test-rule", CRS_PARAMS if params is None else params, terminology)
        compiled = {key: compile_criterion(key, spec, compiler) for key, spec in criteria.items()}
        timeline = timeline_of(as_of, facts, birth_date=birth_date, day_zero=day_zero)
        ctx = Context(timeline, terminology, compiled)
        return ctx.result(name, window)

    return run


def test_every_condition_type_is_covered_here():
    assert set(CONDITION_TYPES) == {
        "measurement_threshold", "first_occurrence", "therapy_after_onset", "concurrent_administrations",
        "sustained_measurement", "oxygen_support_level",
    }


# === measurement_threshold ====================================================================================

def test_threshold_missing_data_is_unknown(evaluate):
    result = evaluate({"fever": FEVER}, "fever", [sbp(120, at(2))])
    assert result.value is None
    assert result.truth is None
    assert "no body-temperature" in result.missing


def test_threshold_missing_false(evaluate):
    result = evaluate({"fever": {**FEVER, "missing": "false"}}, "fever", [])
    assert result.value is False
    assert result.missing is None


def test_threshold_ge_boundary(evaluate):
    result = evaluate({"fever": FEVER}, "fever", [temp(37.2, at(5)), temp(38.0, at(3)), temp(38.6, at(1))])
    assert result.value is True
    assert [f.value for f in result.evidence] == [38.0, 38.6]
    assert result.first_positive == at(3)
    assert result.last_positive == at(1)


def test_threshold_just_below_is_false_with_extreme_as_evidence(evaluate):
    result = evaluate({"fever": FEVER}, "fever", [temp(37.99, at(5)), temp(36.8, at(3))])
    assert result.value is False
    assert [f.value for f in result.evidence] == [37.99]
    assert result.missing is None


def test_threshold_gt_excludes_the_boundary(evaluate):
    spec = {**FEVER, "comparator": "gt"}
    assert evaluate({"fever": spec}, "fever", [temp(38.0, at(3))]).value is False
    assert evaluate({"fever": spec}, "fever", [temp(38.01, at(3))]).value is True


def test_threshold_lt_and_le(evaluate):
    lt = {"type": "measurement_threshold", "concept": "systolic-bp", "comparator": "lt", "threshold": 90}
    le = {**lt, "comparator": "le"}
    assert evaluate({"x": lt}, "x", [sbp(90, at(1))]).value is False
    assert evaluate({"x": lt}, "x", [sbp(89.9, at(1))]).value is True
    assert evaluate({"x": le}, "x", [sbp(90, at(1))]).value is True
    low = evaluate({"x": lt}, "x", [sbp(110, at(3)), sbp(95, at(1))])
    assert [f.value for f in low.evidence] == [95.0]  # the lowest reading explains a negative "lt"


def test_window_is_half_open(evaluate):
    """(start, end]: a reading at the start is outside, one at the end inside."""
    assert evaluate({"fever": FEVER}, "fever", [temp(39.0, WINDOW.start)]).value is None
    assert evaluate({"fever": FEVER}, "fever", [temp(39.0, WINDOW.end)]).value is True
    assert evaluate({"fever": FEVER}, "fever", [temp(39.0, WINDOW.start + timedelta(seconds=1))]).value is True


def test_date_only_measurement_not_used_in_hour_windows(evaluate):
    assert evaluate({"fever": FEVER}, "fever", [m("body-temperature", 39.0, at(2), date_only=True)]).value is None


def test_threshold_from_parameter(evaluate):
    params = {**CRS_PARAMS, "fever_celsius": 38.5}
    assert evaluate({"fever": FEVER}, "fever", [temp(38.2, at(1))], params=params).value is False
    assert evaluate({"fever": FEVER}, "fever", [temp(38.5, at(1))], params=params).value is True


AGE_SPEC = {"type": "measurement_threshold", "concept": "systolic-bp", "comparator": "lt", "threshold": SYSTOLIC_BY_AGE}


@pytest.mark.parametrize(
    "birth_date, low, not_low",
    [
        (date(2021, 1, 1), 79.9, 80),     # 5 years: 70 + 2 x 5 = 80 mmHg
        (date(2025, 6, 1), 69.9, 70),     # 9 months: 70
        (date(2017, 1, 1), 87.9, 88),     # 9 years: 88
        (date(2016, 3, 5), 89.9, 90),     # 10 years exactly (birthday today): adult 90
        (date(1965, 4, 2), 89.9, 90),     # adult
    ],
)
def test_age_band_thresholds(evaluate, birth_date, low, not_low):
    assert evaluate({"x": AGE_SPEC}, "x", [sbp(low, at(1))], birth_date=birth_date).value is True
    result = evaluate({"x": AGE_SPEC}, "x", [sbp(not_low, at(1))], birth_date=birth_date)
    assert result.value is False
    assert result.notes == ()


def test_child_of_five_threshold_is_80(evaluate):
    """85 mmHg is low for an adult but not for a 5-year-old (threshold 80)."""
    assert evaluate({"x": AGE_SPEC}, "x", [sbp(85, at(1))], birth_date=date(2020, 12, 31)).value is False
    assert evaluate({"x": AGE_SPEC}, "x", [sbp(85, at(1))]).value is True


def test_unknown_age_uses_adult_threshold_with_a_note(evaluate):
    result = evaluate({"x": AGE_SPEC}, "x", [sbp(85, at(1))], birth_date=None)
    assert result.value is True
    assert result.notes == ("age unknown: adult threshold used",)
    result = evaluate({"x": AGE_SPEC}, "x", [sbp(90, at(1))], birth_date=None)
    assert result.value is False
    assert "age unknown: adult threshold used" in result.notes


# === first_occurrence ===========================================================================================

FIRST = {"fever": FEVER, "onset": ONSET}


def test_first_occurrence_since_day_zero(evaluate):
    facts = [temp(38.8, INFUSION - timedelta(days=1)),  # before day 0: not CRS onset
             temp(38.3, datetime(2026, 3, 3, 10, tzinfo=UTC)),
             temp(39.1, datetime(2026, 3, 4, 10, tzinfo=UTC)),
             temp(38.5, at(1))]
    result = evaluate(FIRST, "onset", facts, day_zero=DAY_ZERO)
    assert result.value is True
    assert result.first_positive == datetime(2026, 3, 3, 10, tzinfo=UTC)  # outside the 24 h window: still the onset
    assert [f.value for f in result.evidence] == [38.3]


def test_first_occurrence_ignores_fever_after_window_end(evaluate):
    facts = [temp(38.3, datetime(2026, 3, 3, 10, tzinfo=UTC))]
    early = Window(INFUSION, datetime(2026, 3, 3, 9, tzinfo=UTC))
    assert evaluate(FIRST, "onset", facts, window=early, day_zero=DAY_ZERO).value is False


def test_first_occurrence_without_day_zero_looks_at_everything(evaluate):
    facts = [temp(38.8, INFUSION - timedelta(days=1)), temp(38.3, at(2))]
    result = evaluate(FIRST, "onset", facts, day_zero=None)
    assert result.first_positive == INFUSION - timedelta(days=1)


def test_first_occurrence_none(evaluate):
    result = evaluate(FIRST, "onset", [temp(37.0, at(2))], day_zero=DAY_ZERO)
    assert result.value is False
    assert result.first_positive is None


# === therapy_after_onset (fever waiver, R2) =======================================================================

WAIVER_CRITERIA = {"fever": FEVER, "onset": ONSET, "waiver": WAIVER}
ONSET_TIME = datetime(2026, 3, 4, 8, tzinfo=UTC)


def test_premedication_before_onset_does_not_count(evaluate):
    facts = [give("acetaminophen", INFUSION - timedelta(minutes=30)),           # premedication at infusion
             give("acetaminophen", ONSET_TIME - timedelta(hours=1)),            # after day 0 but before onset
             give("dexamethasone", INFUSION + timedelta(hours=2)),
             temp(38.4, ONSET_TIME), temp(37.0, at(1))]
    result = evaluate(WAIVER_CRITERIA, "waiver", facts, day_zero=DAY_ZERO)
    assert result.value is False


def test_therapy_after_onset_waives(evaluate):
    facts = [give("acetaminophen", INFUSION - timedelta(minutes=30)), temp(38.4, ONSET_TIME),
             give("tocilizumab", ONSET_TIME + timedelta(hours=2)), temp(37.0, at(1))]
    result = evaluate(WAIVER_CRITERIA, "waiver", facts, day_zero=DAY_ZERO)
    assert result.value is True
    assert [a.concept for a in result.evidence] == ["tocilizumab"]
    assert result.first_positive == ONSET_TIME + timedelta(hours=2)


@pytest.mark.parametrize("drug", ["tocilizumab", "siltuximab", "anakinra", "dexamethasone", "methylprednisolone",
                                  "hydrocortisone", "acetaminophen", "ibuprofen"])
def test_each_waiver_class(evaluate, drug):
    facts = [temp(38.4, ONSET_TIME), give(drug, ONSET_TIME + timedelta(hours=1))]
    assert evaluate(WAIVER_CRITERIA, "waiver", facts, day_zero=DAY_ZERO).value is True


def test_other_drug_after_onset_does_not_waive(evaluate):
    facts = [temp(38.4, ONSET_TIME), give("norepinephrine", ONSET_TIME + timedelta(hours=1), None, "in-progress")]
    assert evaluate(WAIVER_CRITERIA, "waiver", facts, day_zero=DAY_ZERO).value is False


def test_no_onset_no_waiver(evaluate):
    facts = [temp(37.4, ONSET_TIME), give("tocilizumab", ONSET_TIME + timedelta(hours=1))]
    assert evaluate(WAIVER_CRITERIA, "waiver", facts, day_zero=DAY_ZERO).value is False


def test_waiver_lapses_after_lapse_hours(evaluate):
    given = ONSET_TIME + timedelta(hours=1)
    facts = [temp(38.4, ONSET_TIME), give("tocilizumab", given)]
    just_in = given + timedelta(hours=72)
    lapsed = given + timedelta(hours=72, minutes=1)
    inside = evaluate(WAIVER_CRITERIA, "waiver", facts, window=Window(just_in - timedelta(hours=24), just_in),
                      day_zero=DAY_ZERO, as_of=just_in)
    assert inside.value is True
    outside = evaluate(WAIVER_CRITERIA, "waiver", facts, window=Window(lapsed - timedelta(hours=24), lapsed),
                       day_zero=DAY_ZERO, as_of=lapsed)
    assert outside.value is False
    assert any("lapsed" in note for note in outside.notes)


def test_waiver_lapse_is_a_parameter(evaluate):
    given = ONSET_TIME + timedelta(hours=1)
    end = given + timedelta(hours=30)
    facts = [temp(38.4, ONSET_TIME), give("tocilizumab", given)]
    params = {**CRS_PARAMS, "waiver_lapse_hours": 24}
    assert evaluate(WAIVER_CRITERIA, "waiver", facts, window=Window(end - timedelta(hours=24), end), params=params,
                    day_zero=DAY_ZERO, as_of=end).value is False


def test_waiver_renewed_by_later_crs_evidence(evaluate):
    given = ONSET_TIME + timedelta(hours=1)
    end = given + timedelta(hours=100)
    facts = [temp(38.4, ONSET_TIME), give("tocilizumab", given), temp(38.2, given + timedelta(hours=60))]
    result = evaluate(WAIVER_CRITERIA, "waiver", facts, window=Window(end - timedelta(hours=24), end),
                      day_zero=DAY_ZERO, as_of=end)
    assert result.value is True


# === concurrent_administrations (R4) ==============================================================================

def _count(evaluate, facts, spec=PRESSORS, window=WINDOW):
    return evaluate({"pressors": spec}, "pressors", facts, window=window)


def test_no_pressor_is_zero(evaluate):
    result = _count(evaluate, [give("dexamethasone", at(3))])
    assert result.value == 0
    assert result.truth is False


def test_two_norepinephrine_bags_in_a_row_are_one_agent(evaluate):
    result = _count(evaluate, [give("norepinephrine", at(10), at(6)), give("norepinephrine", at(6), at(2))])
    assert result.value == 1


def test_norepinephrine_and_phenylephrine_overlapping_are_two(evaluate):
    facts = [give("norepinephrine", at(10), at(4)), give("phenylephrine", at(6), at(2))]
    result = _count(evaluate, facts)
    assert result.value == 2
    assert {a.concept for a in result.evidence} == {"norepinephrine", "phenylephrine"}


def test_sequential_non_overlapping_agents_are_one(evaluate):
    facts = [give("norepinephrine", at(10), at(8)), give("phenylephrine", at(7), at(5)), give("epinephrine", at(3), at(1))]
    assert _count(evaluate, facts).value == 1


def test_in_progress_infusion_without_end_runs_to_window_end(evaluate):
    facts = [give("norepinephrine", at(8), None, "in-progress"), give("phenylephrine", at(0.5), at(0.25))]
    result = _count(evaluate, facts)
    assert result.value == 2
    assert result.last_positive == WINDOW.end


def test_in_progress_infusion_started_before_the_window_counts(evaluate):
    facts = [give("norepinephrine", at(40), None, "in-progress")]
    result = _count(evaluate, facts)
    assert result.value == 1
    assert result.first_positive == at(40)


def test_infusion_finished_before_the_window_does_not_count(evaluate):
    assert _count(evaluate, [give("norepinephrine", at(40), at(25))]).value == 0
    assert _count(evaluate, [give("norepinephrine", at(40), at(23))]).value == 1


def test_point_administration_in_window_counts(evaluate):
    assert _count(evaluate, [give("epinephrine", at(3))]).value == 1
    assert _count(evaluate, [give("epinephrine", WINDOW.start)]).value == 0


def test_vasopressin_never_counts_toward_more_than_one(evaluate):
    facts = [give("norepinephrine", at(10), None, "in-progress"), give("vasopressin", at(8), None, "in-progress")]
    assert _count(evaluate, facts).value == 1
    # The vasopressor group itself includes vasopressin: the rule's list is what excludes it.
    assert _count(evaluate, facts, {"type": "concurrent_administrations", "medications": ["vasopressor"]}).value == 2


def test_dobutamine_is_not_a_vasopressor_by_default(evaluate):
    facts = [give("norepinephrine", at(10), None, "in-progress"), give("dobutamine", at(8), None, "in-progress")]
    assert _count(evaluate, facts).value == 1


def test_unknown_medication_concept_rejected(terminology):
    compiler = Compiler("test-rule", {}, terminology)
    with pytest.raises(RulesError, match="unknown medication"):
        compile_criterion("x", {"type": "concurrent_administrations", "medications": ["noradrenalin"]}, compiler)


# === sustained_measurement (R6) ====================================================================================

def _sustained(evaluate, facts, **kw):
    return evaluate({"low": SUSTAINED}, "low", facts, **kw)


def test_sustained_missing_is_unknown(evaluate):
    result = _sustained(evaluate, [temp(38.5, at(1))])
    assert result.value is None
    assert "no systolic-bp" in result.missing


def test_two_low_readings_29_minutes_apart_not_sustained(evaluate):
    result = _sustained(evaluate, [sbp(84, at(2)), sbp(82, at(2) + timedelta(minutes=29))])
    assert result.value is False
    assert [f.value for f in result.evidence] == [84.0, 82.0]
    assert any("not sustained, reported but not graded" in note for note in result.notes)


def test_two_low_readings_30_minutes_apart_sustained(evaluate):
    result = _sustained(evaluate, [sbp(84, at(2)), sbp(82, at(2) + timedelta(minutes=30))])
    assert result.value is True
    assert result.first_positive == at(2)
    assert result.last_positive == at(2) + timedelta(minutes=30)


def test_low_readings_with_a_normal_one_between(evaluate):
    facts = [sbp(84, at(3)), sbp(105, at(2.5)), sbp(86, at(2))]
    assert _sustained(evaluate, facts).value is True


def test_single_low_reading_reported_not_graded(evaluate):
    result = _sustained(evaluate, [sbp(120, at(5)), sbp(78, at(2)), sbp(118, at(1))])
    assert result.value is False
    assert [f.value for f in result.evidence] == [78.0]
    assert any("not sustained" in note for note in result.notes)


def test_reading_at_threshold_is_not_low(evaluate):
    result = _sustained(evaluate, [sbp(90, at(3)), sbp(90, at(1))])
    assert result.value is False
    assert [f.value for f in result.evidence] == [90.0]


def test_one_low_reading_followed_by_fluid_bolus(evaluate):
    facts = [sbp(82, at(5)), give("iv-fluid-bolus", at(4), at(3.5))]
    result = _sustained(evaluate, facts)
    assert result.value is True
    assert [type(f).__name__ for f in result.evidence] == ["Measurement", "Administration"]
    assert result.first_positive == at(5)
    assert result.last_positive == at(4)


def test_fluid_bolus_before_the_low_reading_does_not_count(evaluate):
    facts = [give("iv-fluid-bolus", at(6), at(5.5)), sbp(82, at(5))]
    assert _sustained(evaluate, facts).value is False


def test_fluid_bolus_too_late_does_not_count(evaluate):
    facts = [sbp(82, at(10)), give("iv-fluid-bolus", at(3.5), at(3))]  # 6.5 h after the reading
    assert _sustained(evaluate, facts).value is False
    facts = [sbp(82, at(10)), give("iv-fluid-bolus", at(4), at(3.5))]  # 6 h after
    assert _sustained(evaluate, facts).value is True


def test_sustained_child_threshold(evaluate):
    five = date(2021, 1, 1)
    assert _sustained(evaluate, [sbp(85, at(2)), sbp(85, at(1))], birth_date=five).value is False
    assert _sustained(evaluate, [sbp(79, at(2)), sbp(79, at(1))], birth_date=five).value is True


def test_sustained_unknown_age_note(evaluate):
    result = _sustained(evaluate, [sbp(85, at(2)), sbp(85, at(1))], birth_date=None)
    assert result.value is True
    assert "age unknown: adult threshold used" in result.notes


# === oxygen_support_level (R5) ========================================================================================

def _oxygen(evaluate, facts, **kw):
    return evaluate({"hypoxia": HYPOXIA}, "hypoxia", facts, **kw)


def test_no_oxygen_data_is_unknown(evaluate):
    result = _oxygen(evaluate, [temp(38.5, at(1))])
    assert result.value is None
    assert "no oxygen data" in result.missing


def test_spo2_only_is_room_air(evaluate):
    result = _oxygen(evaluate, [m("oxygen-saturation", 95, at(1))])
    assert result.value == 0
    assert result.missing is None
    assert any("room air" in note for note in result.notes)


@pytest.mark.parametrize(
    "value, level",
    [("room-air", 0), ("nasal-cannula", 2), ("blow-by", 2), ("high-flow-nasal-cannula", 3), ("oxygen-mask", 3),
     ("non-rebreather-mask", 3), ("venturi-mask", 3), ("cpap-bipap-mask", 4), ("mechanical-ventilation", 4),
     (None, 0)],
)
def test_device_categories(evaluate, value, level):
    assert _oxygen(evaluate, [device(value, at(2))]).value == level


@pytest.mark.parametrize("litres, level", [(0.5, 2), (6.0, 2), (6.1, 3), (15, 3)])
def test_flow_on_nasal_cannula(evaluate, litres, level):
    assert _oxygen(evaluate, [device("nasal-cannula", at(3)), flow(litres, at(2))]).value == level


@pytest.mark.parametrize("litres, level", [(2, 2), (6, 2), (8, 3)])
def test_flow_on_unknown_device(evaluate, litres, level):
    assert _oxygen(evaluate, [flow(litres, at(2))]).value == level


def test_zero_flow_is_no_support(evaluate):
    assert _oxygen(evaluate, [flow(0, at(2))]).value == 0


def test_device_category_at_any_flow(evaluate):
    """A face mask or HFNC is grade 3 whatever the flow; a low flow does not lower it."""
    assert _oxygen(evaluate, [device("oxygen-mask", at(3)), flow(4, at(2))]).value == 3
    assert _oxygen(evaluate, [device("high-flow-nasal-cannula", at(3)), flow(40, at(2))]).value == 3


def test_higher_of_device_and_flow(evaluate):
    result = _oxygen(evaluate, [device("nasal-cannula", at(5)), flow(4, at(4)), device("cpap-bipap-mask", at(2))])
    assert result.value == 4
    assert result.first_positive == at(5)
    assert result.last_positive == at(2)
    assert [f.value for f in result.evidence] == ["cpap-bipap-mask"]


def test_ongoing_device_from_before_the_window(evaluate):
    assert _oxygen(evaluate, [device("high-flow-nasal-cannula", at(40), ongoing=True)]).value == 3
    assert _oxygen(evaluate, [device("high-flow-nasal-cannula", at(40), end=at(20))]).value == 3
    assert _oxygen(evaluate, [device("high-flow-nasal-cannula", at(40), end=at(30)), m("oxygen-saturation", 96, at(1))]).value == 0


def test_flow_takes_the_device_recorded_at_most_recency_hours_before(evaluate):
    """A flow 14 h after the last nasal-cannula record reads as on an unknown device (band still applies)."""
    assert _oxygen(evaluate, [device("nasal-cannula", at(20)), flow(5, at(6))]).value == 2


def test_flow_on_a_mask_recorded_before_the_window_is_mask_level(evaluate):
    """R5: category = the higher of the device's and the flow's. The mask recorded 5 h before the window
    is still the current device (within device_recency_hours) when 4 L/min is charted inside the window:
    the patient is on a face mask, grade 3 at any flow."""
    facts = [device("oxygen-mask", at(29)), flow(4, at(20))]
    assert _oxygen(evaluate, facts).value == 3


def test_home_oxygen_before_day_zero_is_not_hypoxia(evaluate):
    facts = [device("nasal-cannula", INFUSION - timedelta(days=5)), flow(2, INFUSION - timedelta(days=5)),
             device("nasal-cannula", at(3)), flow(2, at(2))]
    result = _oxygen(evaluate, facts, day_zero=DAY_ZERO)
    assert result.value == 0
    assert any("home oxygen" in note for note in result.notes)


def test_more_than_home_oxygen_is_hypoxia(evaluate):
    facts = [device("nasal-cannula", INFUSION - timedelta(days=5)), flow(2, INFUSION - timedelta(days=5)),
             device("non-rebreather-mask", at(2))]
    assert _oxygen(evaluate, facts, day_zero=DAY_ZERO).value == 3


def test_oxygen_before_the_lookback_is_not_baseline(evaluate):
    facts = [device("nasal-cannula", INFUSION - timedelta(days=31)), device("nasal-cannula", at(2))]
    assert _oxygen(evaluate, facts, day_zero=DAY_ZERO).value == 2


def test_home_oxygen_baseline_off(evaluate):
    facts = [device("nasal-cannula", INFUSION - timedelta(days=5)), device("nasal-cannula", at(2))]
    params = {**CRS_PARAMS, "home_oxygen_lookback_days": 0}
    assert _oxygen(evaluate, facts, day_zero=DAY_ZERO, params=params).value == 2


def test_low_flow_threshold_is_a_parameter(evaluate):
    params = {**CRS_PARAMS, "low_flow_max_l_min": 4}
    assert _oxygen(evaluate, [flow(5, at(2))], params=params).value == 3


# === compile errors ==================================================================================================

def test_unknown_condition_type_rejected(terminology):
    with pytest.raises(RulesError, match="unknown condition type"):
        compile_criterion("x", {"type": "lab_trend"}, Compiler("test-rule", {}, terminology))


def test_unknown_measurement_concept_rejected(terminology):
    spec = {"type": "measurement_threshold", "concept": "core-temperature", "comparator": "ge", "threshold": 38}
    with pytest.raises(RulesError, match="unknown measurement concept"):
        compile_criterion("x", spec, Compiler("test-rule", {}, terminology))


def test_unknown_parameter_rejected(terminology):
    with pytest.raises(RulesError, match="unknown parameter"):
        compile_criterion("fever", FEVER, Compiler("test-rule", {}, terminology))


def test_non_numeric_parameter_rejected(terminology):
    with pytest.raises(RulesError, match="expected a number"):
        compile_criterion("fever", FEVER, Compiler("test-rule", {"fever_celsius": "38"}, terminology))
