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
    "fluid_bolus_min_volume_ml": 250,
    "fluid_bolus_max_minutes": 60,
    "fluid_bolus_min_rate_ml_h": 500,
    "fio2_high_flow_above_percent": 40,
    "low_flow_max_l_min": 6,
    "device_recency_hours": 12,
    "home_oxygen_lookback_days": 30,
}

FEVER = {"type": "measurement_threshold", "concept": "body-temperature", "comparator": "ge",
         "threshold": {"param": "fever_celsius"}, "missing": "unknown"}
ONSET = {"type": "first_occurrence", "criterion": "fever", "since": "day_zero"}
WAIVER = {"type": "therapy_after_onset", "onset": "onset",
          "medications": ["anti-cytokine", "systemic-corticosteroid", "antipyretic"],
          "lapse_hours": {"param": "waiver_lapse_hours"}, "renewed_by": ["fever"], "renewal_window_hours": 24}
PRESSORS = {"type": "concurrent_administrations", "medications": ["norepinephrine", "epinephrine", "phenylephrine", "dopamine"]}
SYSTOLIC_BY_AGE = {"by_age": [{"below_years": 1, "value": 70}, {"below_years": 10, "value": 70, "per_year": 2}],
                   "default": {"param": "adult_systolic_mmhg"}}
SUSTAINED = {"type": "sustained_measurement", "concept": "systolic-bp", "comparator": "lt", "threshold": SYSTOLIC_BY_AGE,
             "min_readings": {"param": "low_systolic_min_readings"},
             "min_span_minutes": {"param": "low_systolic_min_span_minutes"},
             "or_followed_by": {"medications": ["iv-fluid-bolus"], "within_hours": {"param": "fluid_bolus_within_hours"},
                                "fluids": {"medications": ["crystalloid"], "min_volume_ml": {"param": "fluid_bolus_min_volume_ml"},
                                           "max_minutes": {"param": "fluid_bolus_max_minutes"},
                                           "min_rate_ml_per_hour": {"param": "fluid_bolus_min_rate_ml_h"}}},
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
    "fio2_concept": "inhaled-oxygen-concentration",
    "fio2_applies_to": ["unknown", "room-air"],
    "fio2_bands": [{"above": 21, "up_to": {"param": "fio2_high_flow_above_percent"}, "level": 2},
                   {"above": {"param": "fio2_high_flow_above_percent"}, "level": 3}],
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


def give(concept: str, start: datetime, end: datetime | None | str = "point", status: str = "completed",
         volume_ml: float | None = None, rate_ml_per_h: float | None = None) -> Administration:
    stop = start if end == "point" else end
    return Administration(concept=concept, time=start, end=stop, dose_mg=None, status=status, display=concept,
                          source=f"MedicationAdministration/{concept}-{start:%d%H%M}",
                          volume_ml=volume_ml, rate_ml_per_h=rate_ml_per_h)


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


def test_every_condition_type_is_covered_here_or_in_test_generic_conditions():
    assert set(CONDITION_TYPES) == {
        "measurement_threshold", "first_occurrence", "therapy_after_onset", "concurrent_administrations",
        "sustained_measurement", "oxygen_support_level",
        "age_band", "coded_level", "measurement_level", "finding_present", "same_assessment", "lab_grade",  # test_generic_conditions.py
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


# --- coded crystalloids (R6): a bolus by volume and rate or duration, never by code alone ---------------------

def test_crystalloid_500_ml_over_30_minutes_is_a_bolus(evaluate):
    ns = give("normal-saline", at(4.5), at(4), volume_ml=500)
    result = _sustained(evaluate, [sbp(84, at(5)), ns])
    assert result.value is True
    assert result.evidence == (result.evidence[0], ns)
    assert result.last_positive == at(4.5)


def test_lactated_ringers_by_rate_without_duration_is_a_bolus(evaluate):
    lr = give("lactated-ringers", at(4), volume_ml=1000, rate_ml_per_h=2000)  # 30 min
    assert _sustained(evaluate, [sbp(84, at(5)), lr]).value is True


def test_crystalloid_run_fast_with_unknown_volume_is_a_bolus(evaluate):
    running = give("normal-saline", at(4), None, status="in-progress", rate_ml_per_h=999)
    assert _sustained(evaluate, [sbp(84, at(5)), running]).value is True


@pytest.mark.parametrize("volume, minutes, counted", [(250, 60, True), (249, 60, False), (250, 61, False), (1000, 61, False)])
def test_bolus_volume_and_duration_boundaries(evaluate, volume, minutes, counted):
    fluid = give("normal-saline", at(4), at(4) + timedelta(minutes=minutes), volume_ml=volume)
    assert _sustained(evaluate, [sbp(84, at(5)), fluid]).value is counted


def test_maintenance_crystalloid_is_not_a_bolus_and_is_reported(evaluate):
    maintenance = give("normal-saline", at(4), None, status="in-progress", volume_ml=1000, rate_ml_per_h=80)
    result = _sustained(evaluate, [sbp(84, at(5)), maintenance])
    assert result.value is False
    assert maintenance not in result.evidence
    assert any("not a fluid bolus" in note and "1000 mL at 80 mL/h" in note for note in result.notes)


def test_crystalloid_volume_over_hours_is_not_a_bolus(evaluate):
    slow = give("normal-saline", at(4), at(0), volume_ml=1000)  # 4 h = 250 mL/h
    result = _sustained(evaluate, [sbp(84, at(5)), slow])
    assert result.value is False
    assert any("1000 mL over 240 min" in note for note in result.notes)


def test_crystalloid_without_rate_or_duration_is_reported_not_counted(evaluate):
    unknown = give("normal-saline", at(4), volume_ml=500)
    result = _sustained(evaluate, [sbp(84, at(5)), unknown])
    assert result.value is False
    assert any("500 mL, no rate or duration recorded" in note for note in result.notes)
    nothing = give("lactated-ringers", at(4))
    notes = _sustained(evaluate, [sbp(84, at(5)), nothing]).notes
    assert any("lactated-ringers at" in note and "(no volume, rate or duration recorded)" in note for note in notes)


def test_crystalloid_bolus_before_the_low_reading_does_not_count(evaluate):
    early = give("normal-saline", at(6), at(5.75), volume_ml=500)
    assert _sustained(evaluate, [early, sbp(84, at(5))]).value is False


def test_text_bolus_still_counts_without_volume_next_to_a_maintenance_crystalloid(evaluate):
    facts = [sbp(84, at(5)), give("normal-saline", at(4.8), None, status="in-progress", rate_ml_per_h=80),
             give("iv-fluid-bolus", at(4.5))]
    result = _sustained(evaluate, facts)
    assert result.value is True
    assert result.evidence[1].concept == "iv-fluid-bolus"


def test_bolus_thresholds_are_parameters(evaluate):
    fluid = give("normal-saline", at(4), at(3.5), volume_ml=200)
    assert _sustained(evaluate, [sbp(84, at(5)), fluid]).value is False
    params = {**CRS_PARAMS, "fluid_bolus_min_volume_ml": 200}
    assert _sustained(evaluate, [sbp(84, at(5)), fluid], params=params).value is True


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


# --- FiO2 without device or flow (R5) ---------------------------------------------------------------------------

def fio2(value: float, when: datetime) -> Measurement:
    return m("inhaled-oxygen-concentration", value, when)


@pytest.mark.parametrize("percent, level", [(21, 0), (22, 2), (35, 2), (40, 2), (41, 3), (60, 3), (100, 3)])
def test_fio2_without_device_or_flow(evaluate, percent, level):
    assert _oxygen(evaluate, [fio2(percent, at(2))]).value == level


def test_fio2_without_device_is_incomplete_naming_the_device(evaluate, timeline_of):
    reading = fio2(35, at(2))
    result = _oxygen(evaluate, [fio2(28, at(5)), reading])
    assert result.value == 2
    assert result.evidence == (fio2(28, at(5)), reading)
    local = timeline_of(AS_OF).local(at(2))
    assert result.incomplete == f"oxygen delivery device not recorded (FiO2 35 % at {local})"
    assert result.missing is None  # decided: at least low-flow
    assert result.first_positive == at(5)


def test_fio2_room_air_is_complete(evaluate):
    result = _oxygen(evaluate, [fio2(21, at(2))])
    assert (result.value, result.incomplete) == (0, None)


@pytest.mark.parametrize("kind, level", [("nasal-cannula", 2), ("oxygen-mask", 3), ("cpap-bipap-mask", 4)])
def test_fio2_with_a_device_recorded_follows_the_device(evaluate, kind, level):
    result = _oxygen(evaluate, [device(kind, at(3)), fio2(60, at(2))])
    assert result.value == level
    assert result.incomplete is None
    assert all(f.concept == "oxygen-delivery-device" for f in result.evidence)


def test_fio2_with_room_air_charted_is_oxygen_of_unknown_device(evaluate):
    result = _oxygen(evaluate, [device("room-air", at(3)), fio2(50, at(2))])
    assert result.value == 3
    assert "oxygen delivery device not recorded" in result.incomplete


def test_fio2_with_a_flow_recorded_follows_the_flow(evaluate):
    result = _oxygen(evaluate, [flow(3, at(2.5)), fio2(60, at(2))])
    assert result.value == 2  # flow on an unknown device; FiO2 adds nothing
    assert result.incomplete is None


def test_fio2_with_a_flow_older_than_recency_is_unknown_support(evaluate):
    result = _oxygen(evaluate, [flow(3, at(23)), fio2(60, at(2))])  # flow 21 h before the FiO2
    assert result.value == 3
    assert result.incomplete is not None


def test_fio2_with_a_device_older_than_recency_is_unknown_support(evaluate):
    assert _oxygen(evaluate, [device("nasal-cannula", at(20)), fio2(35, at(2))]).incomplete is not None


def test_fio2_incomplete_not_reported_at_the_highest_level(evaluate):
    result = _oxygen(evaluate, [device("mechanical-ventilation", at(5)), fio2(60, at(1))])
    assert result.value == 4
    assert result.incomplete is None


def test_fio2_high_flow_threshold_is_a_parameter(evaluate):
    params = {**CRS_PARAMS, "fio2_high_flow_above_percent": 50}
    assert _oxygen(evaluate, [fio2(45, at(2))], params=params).value == 2


def test_fio2_candidate_times_for_the_maximum(evaluate, terminology, timeline_of):
    compiler = Compiler("test-rule", CRS_PARAMS, terminology)
    compiled = compile_criterion("hypoxia", HYPOXIA, compiler)
    timeline = timeline_of(AS_OF, [fio2(21, at(5)), fio2(45, at(3))])
    ctx = Context(timeline, terminology, {"hypoxia": compiled})
    assert list(compiled.candidate_times(ctx, WINDOW)) == [at(3)]


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
