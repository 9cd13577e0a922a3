"""Generic condition types (age_band, coded_level, measurement_level): compiled from small criteria and
evaluated over hand-built timelines. They carry no clinical numbers: the levels and bands are the test's."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from service.rules_engine.conditions import Compiler, Context, compile_criterion
from service.rules_engine.model import Window
from service.timeline.facts import CodedValue, Measurement

UTC = timezone.utc
AS_OF = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
WINDOW = Window(AS_OF - timedelta(hours=24), AS_OF)
DEVICE_LEVELS = {"type": "coded_level", "concept": "oxygen-delivery-device",
                 "levels": {"room-air": 0, "nasal-cannula": 2, "cpap-bipap-mask": 4}}
TEMPERATURE_BANDS = {"type": "measurement_level", "concept": "body-temperature",
                     "bands": [{"above": 37.9, "up_to": 38.9, "level": 1}, {"above": 38.9, "level": 2}]}


def at(hours: float) -> datetime:
    return AS_OF - timedelta(hours=hours)


def device(value: str | None, when: datetime) -> CodedValue:
    return CodedValue("oxygen-delivery-device", value, value or "a mystery mask", when, None, False, f"Observation/d{when:%H%M}")


def temperature(value: float, when: datetime) -> Measurement:
    return Measurement("body-temperature", value, "Cel", when, f"Observation/t{when:%H%M}", f"{value:g} Cel")


@pytest.fixture
def run(terminology, timeline_of):
    def evaluate(spec, facts=(), birth_date: date | None = date(1965, 4, 2), window=WINDOW):
        compiler = Compiler("test-rule", {"boundary": 12}, terminology)
        compiled = {"c": compile_criterion("c", spec, compiler)}
        timeline = timeline_of(AS_OF, facts, birth_date=birth_date)
        return Context(timeline, terminology, compiled).result("c", window)

    return evaluate


@pytest.mark.parametrize(("birth_date", "expected"), [
    (date(2014, 3, 5), True),   # 12th birthday on the evaluation day: from_years is inclusive
    (date(2014, 3, 6), False),  # one day short of 12
    (date(1965, 4, 2), True),
])
def test_age_band_from_birth_date_at_the_evaluation_time(run, birth_date, expected):
    assert run({"type": "age_band", "from_years": {"param": "boundary"}}, birth_date=birth_date).value is expected


def test_age_band_below(run):
    assert run({"type": "age_band", "below_years": 12}, birth_date=date(2016, 1, 1)).value is True
    assert run({"type": "age_band", "below_years": 12}, birth_date=date(2010, 1, 1)).value is False


def test_age_band_unknown_without_birth_date(run):
    result = run({"type": "age_band", "from_years": 12}, birth_date=None)
    assert result.value is None
    assert result.missing == "age unknown (no Patient.birthDate)"


def test_coded_level_worst_answer_in_the_window(run):
    facts = [device("nasal-cannula", at(10)), device("cpap-bipap-mask", at(6)), device("room-air", at(1))]
    result = run(DEVICE_LEVELS, facts)
    assert result.value == 4.0
    assert [f.value for f in result.evidence] == ["cpap-bipap-mask"]
    assert result.first_positive == at(10) and result.last_positive == at(6)


def test_coded_level_latest_mode(run):
    facts = [device("cpap-bipap-mask", at(6)), device("nasal-cannula", at(1))]
    assert run({**DEVICE_LEVELS, "mode": "latest"}, facts).value == 2.0


def test_coded_level_ignores_answers_outside_the_window(run):
    assert run(DEVICE_LEVELS, [device("cpap-bipap-mask", at(30)), device("room-air", at(2))]).value == 0.0


def test_coded_level_unrecognised_answer_counts_zero_and_is_noted(run):
    result = run(DEVICE_LEVELS, [device(None, at(2))])
    assert result.value == 0.0
    assert any("a mystery mask" in note for note in result.notes)


def test_coded_level_missing_is_unknown_or_zero(run):
    assert run(DEVICE_LEVELS).value is None
    assert "no " in run(DEVICE_LEVELS).missing
    assert run({**DEVICE_LEVELS, "missing": "false"}).value == 0


def test_measurement_level_worst_band(run):
    result = run(TEMPERATURE_BANDS, [temperature(38.2, at(8)), temperature(39.4, at(5)), temperature(37.0, at(1))])
    assert result.value == 2.0
    assert [f.value for f in result.evidence] == [39.4]


def test_measurement_level_band_edges_are_above_exclusive_up_to_inclusive(run):
    assert run(TEMPERATURE_BANDS, [temperature(37.9, at(1))]).value == 0.0
    assert run(TEMPERATURE_BANDS, [temperature(38.9, at(1))]).value == 1.0
    assert run(TEMPERATURE_BANDS, [temperature(38.95, at(1))]).value == 2.0


def test_measurement_level_latest_mode(run):
    facts = [temperature(39.4, at(5)), temperature(38.0, at(1))]
    assert run({**TEMPERATURE_BANDS, "mode": "latest"}, facts).value == 1.0


def test_measurement_level_missing_is_unknown(run):
    result = run(TEMPERATURE_BANDS)
    assert result.value is None and "temperature" in result.missing


AGE_BANDED = {**TEMPERATURE_BANDS, "for_ages": {"from_years": 12}}


def test_measurement_level_outside_its_age_band_absent_is_not_applicable(run):
    result = run(AGE_BANDED, birth_date=date(2018, 1, 1))
    assert result.value is None and result.missing is None  # unknown, but no data is missing


def test_measurement_level_outside_its_age_band_recorded_is_counted_and_noted(run):
    result = run(AGE_BANDED, [temperature(39.4, at(2))], birth_date=date(2018, 1, 1))
    assert result.value == 2.0
    assert any("outside its usual age band" in note for note in result.notes)


def test_measurement_level_age_unknown_says_so(run):
    assert "age unknown" in run(AGE_BANDED, birth_date=None).missing
    assert any("age unknown" in note for note in run(AGE_BANDED, [temperature(38.2, at(2))], birth_date=None).notes)


# --- finding_present ------------------------------------------------------------------------------------
from service.timeline.facts import ClinicalFinding, NotPerformed  # noqa: E402

FINDINGS = {"type": "finding_present", "levels": {"seizure": 3, "optic-disc-edema": 4},
            "incomplete": "recorded as a finding without its severity"}


def finding(concept: str, onset: datetime, end: datetime | None = None, clinical: str | None = "active") -> ClinicalFinding:
    return ClinicalFinding(concept, onset, end, clinical, "confirmed", concept, f"Condition/{concept}-{onset:%d%H}")


def test_finding_present_active_condition_counts_and_says_it_is_incomplete(run):
    result = run(FINDINGS, [finding("seizure", at(3))])
    assert result.value == 3.0
    assert result.incomplete == "recorded as a finding without its severity: seizure"


def test_finding_present_worst_finding(run):
    assert run(FINDINGS, [finding("seizure", at(3)), finding("optic-disc-edema", at(40))]).value == 4.0  # onset before the window, still active


def test_finding_present_abated_before_the_window_does_not_count(run):
    assert run(FINDINGS, [finding("seizure", at(40), end=at(30))]).value == 0


def test_finding_present_resolved_without_abatement_counts_only_at_its_onset(run):
    assert run(FINDINGS, [finding("seizure", at(40), clinical="resolved")]).value == 0
    assert run(FINDINGS, [finding("seizure", at(2), clinical="resolved")]).value == 3.0


def test_finding_present_after_the_window_does_not_count(run):
    assert run(FINDINGS, [finding("seizure", AS_OF + timedelta(hours=1))]).value == 0


def test_measurement_level_reports_an_assessment_not_performed(run, terminology):
    ice = {"type": "measurement_level", "concept": "ice-total", "bands": [{"above": -1, "up_to": 2, "level": 3}]}
    undone = NotPerformed("ice-total", at(2), "patient unarousable", "not-performed", "Observation/ice1")
    result = run(ice, [undone])
    assert result.value is None
    assert result.missing.startswith("ICE score not performed (patient unarousable) at ")


# --- same_assessment ---------------------------------------------------------------------------------------
ICE_BECAUSE_UNAROUSABLE = {"type": "same_assessment", "within_minutes": 30, "level": 4, "parts": [
    {"concept": "ice-total", "up_to": 0, "or_not_performed": True},
    {"concept": "loc-astct", "values": ["unarousable"]},
]}


def ice(value: float, when: datetime) -> Measurement:
    return Measurement("ice-total", value, "{score}", when, f"Observation/ice{when:%H%M}", f"{value:g} {{score}}")


def consciousness(value: str, when: datetime) -> CodedValue:
    return CodedValue("loc-astct", value, value, when, None, False, f"Observation/loc{when:%H%M}")


def test_same_assessment_joins_parts_recorded_together(run):
    result = run(ICE_BECAUSE_UNAROUSABLE, [ice(0, at(4)), consciousness("unarousable", at(4) + timedelta(minutes=10))])
    assert result.value == 4.0
    assert sorted(f.source for f in result.evidence) == ["Observation/ice0800", "Observation/loc0810"]
    assert result.first_positive == result.last_positive == at(4) + timedelta(minutes=10)  # the join holds once both are recorded


def test_same_assessment_not_performed_counts_as_the_part(run):
    undone = NotPerformed("ice-total", at(2), "patient unarousable", "not-performed", "Observation/ice1")
    assert run(ICE_BECAUSE_UNAROUSABLE, [undone, consciousness("unarousable", at(2))]).value == 4.0


@pytest.mark.parametrize("facts", [
    pytest.param([ice(0, at(8)), consciousness("unarousable", at(4))], id="hours apart: two assessments"),
    pytest.param([ice(0, at(4)), consciousness("alert", at(4))], id="awake: ICE 0 is not because unarousable"),
    pytest.param([ice(2, at(4)), consciousness("unarousable", at(4))], id="ICE above the part's bound"),
    pytest.param([consciousness("unarousable", at(4))], id="one part only"),
])
def test_same_assessment_needs_every_part_at_one_assessment(run, facts):
    result = run(ICE_BECAUSE_UNAROUSABLE, facts)
    assert result.value == 0 and result.missing is None  # no join: the parts' own criteria report missing data


def test_same_assessment_only_inside_the_window(run):
    assert run(ICE_BECAUSE_UNAROUSABLE, [ice(0, at(30)), consciousness("unarousable", at(30))]).value == 0


# === lab_grade (CTCAE laboratory grades) ======================================================================

PLATELET_GRADES = {"type": "lab_grade", "concept": "platelets", "lln": {"default": 150},
                   "grades": [{"below": "lln", "level": 1}, {"below": 75, "level": 2}, {"below": 50, "level": 3}, {"below": 25, "level": 4}]}
NEUTROPHIL_GRADES = {"type": "lab_grade", "concept": "neutrophils", "lln": {"default": 2.0, "female": 1.8},
                     "grades": [{"below": "lln", "level": 1}, {"below": 1.5, "level": 2}, {"below": 1.0, "level": 3}, {"below": 0.5, "level": 4}],
                     "derived": {"total": "leukocytes", "percent": "neutrophils-percent", "within_minutes": 60, "note": "computed"}}


def count(concept: str, value: float, when: datetime, unit: str = "10*9/L", low: float | None = None) -> Measurement:
    return Measurement(concept, value, unit, when, f"Observation/{concept}{when:%H%M}", f"{value:g} {unit}", reference_low=low)


def test_lab_grade_bound_values_stay_in_the_lower_grade(run):
    assert [run(PLATELET_GRADES, [count("platelets", v, at(1))]).value for v in (150, 149.9, 75, 74.9, 50, 49, 25, 24.9)] == [
        0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0]


def test_lab_grade_grades_the_latest_value_not_the_worst(run):
    result = run(PLATELET_GRADES, [count("platelets", 20, at(10)), count("platelets", 60, at(1))])
    assert result.value == 2.0 and [f.value for f in result.evidence] == [60]


def test_lab_grade_reference_range_low_is_the_lln(run):
    result = run(PLATELET_GRADES, [count("platelets", 140, at(1), low=130)])
    assert result.value == 0.0 and result.notes == ()
    defaulted = run(PLATELET_GRADES, [count("platelets", 140, at(1))])
    assert defaulted.value == 1.0 and "lower limit of normal 150" in defaulted.notes[0]


def test_lab_grade_missing_is_unknown_never_0(run):
    result = run(PLATELET_GRADES, [])
    assert result.value is None and "no platelets" in result.missing


def test_lab_grade_derives_from_a_total_and_its_percentage(run):
    result = run(NEUTROPHIL_GRADES, [count("leukocytes", 3.0, at(2)), count("neutrophils-percent", 30, at(2), unit="%")])
    assert result.value == 3.0  # 0.9 x10^9/L
    assert [f.concept for f in result.evidence] == ["leukocytes", "neutrophils-percent"] and "computed" in result.notes


def test_lab_grade_a_percentage_from_another_blood_count_is_not_paired(run):
    result = run(NEUTROPHIL_GRADES, [count("leukocytes", 3.0, at(5)), count("neutrophils-percent", 30, at(2), unit="%")])
    assert result.value is None
