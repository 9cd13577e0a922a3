"""service.timeline.build: decoded Bundle -> one patient's Timeline, with every left-out value noted."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest

from service.errors import InputError
from service.fhir_input.decode import decode_bundle
from service.timeline.build import BuildOptions, build_timeline, entries_from_bundle

CET = timezone(timedelta(hours=1))
AS_OF = datetime(2026, 3, 5, 12, 0, tzinfo=CET)
CART = "2026-03-02T10:00:00+01:00"


@pytest.fixture
def build(unit_engine):
    terminology = unit_engine.rules.terminology

    def run(body: bytes, as_of: datetime = AS_OF, options: BuildOptions | None = None):
        decoded = decode_bundle(body)
        return build_timeline(
            entries_from_bundle(decoded.entries), terminology, as_of, options or BuildOptions(), decoded.ignored_types
        )

    return run


def _notes(timeline, code: str):
    return [n for n in timeline.notes if n.code == code]


def _temp(fhir, oid="t1", value=38.4, at="2026-03-05T08:00:00+01:00", **kw):
    return fhir.observation(oid, "8310-5", at, fhir.quantity(value, "Cel", "Cel"), **kw)


# --- measurements ----------------------------------------------------------------------------------------

def test_temperature_measurement(fhir, build):
    obs = fhir.observation("t1", "8310-5", "2026-03-05T08:00:00+01:00", fhir.quantity(101.3, "°F"))
    timeline = build(fhir.bundle(fhir.patient(), obs))
    (fact,) = timeline.measurements["body-temperature"]
    assert fact.value == pytest.approx((101.3 - 32) * 5 / 9)
    assert fact.unit == "Cel"
    assert fact.time == datetime(2026, 3, 5, 7, 0, tzinfo=timezone.utc)
    assert fact.source == "Observation/t1"
    assert fact.original == "101.3 [degF]"
    assert fact.date_only is False
    assert timeline.measurement_times["body-temperature"] == (fact.time,)
    assert "Observation/t1" in timeline.input_references


def test_blood_pressure_panel_components(fhir, build):
    bp = fhir.observation(
        "bp1", "85354-9", "2026-03-05T08:00:00+01:00",
        components=[fhir.component("8480-6", fhir.quantity(88, "mmHg", "mm[Hg]")),
                    fhir.component("8462-4", fhir.quantity(52, "mmHg", "mm[Hg]"))],
    )
    timeline = build(fhir.bundle(fhir.patient(), bp))
    (systolic,) = timeline.measurements["systolic-bp"]
    (diastolic,) = timeline.measurements["diastolic-bp"]
    assert (systolic.value, systolic.unit, systolic.source) == (88.0, "mm[Hg]", "Observation/bp1")
    assert (diastolic.value, diastolic.unit) == (52.0, "mm[Hg]")
    assert not _notes(timeline, "ignored-code")


def test_us_core_pulse_oximetry_with_flow_and_fio2_components(fhir, build):
    pulse_ox = fhir.observation(
        "ox1", None, "2026-03-05T09:00:00+01:00", fhir.quantity(93, "%", "%"),
        code={"coding": [{"system": fhir.LOINC, "code": "59408-5"}, {"system": fhir.LOINC, "code": "2708-6"}]},
        components=[fhir.component("3151-8", fhir.quantity(4, "L/min", "L/min")),
                    fhir.component("3150-0", fhir.quantity(36, "%", "%"))],
    )
    timeline = build(fhir.bundle(fhir.patient(), pulse_ox))
    assert [f.value for f in timeline.measurements["oxygen-saturation"]] == [93.0]
    assert [(f.value, f.unit) for f in timeline.measurements["oxygen-flow"]] == [(4.0, "L/min")]
    assert [f.value for f in timeline.measurements["inhaled-oxygen-concentration"]] == [36.0]
    assert {f.source for f in timeline.measurements["oxygen-flow"]} == {"Observation/ox1"}


def test_flow_in_ml_per_min_normalised(fhir, build):
    flow = fhir.observation("f1", "3151-8", "2026-03-05T09:00:00+01:00", fhir.quantity(8000, "mL/min", "mL/min"))
    timeline = build(fhir.bundle(fhir.patient(), flow))
    assert timeline.measurements["oxygen-flow"][0].value == pytest.approx(8.0)


def test_unusable_unit_noted(fhir, build):
    bad = fhir.observation("t9", "8310-5", "2026-03-05T08:00:00+01:00", fhir.quantity(38.5, None, "furlong"))
    timeline = build(fhir.bundle(fhir.patient(), bad))
    assert "body-temperature" not in timeline.measurements
    (note,) = _notes(timeline, "dropped-unit")
    assert note.severity == "warning"
    assert note.location == "Bundle.entry[1].resource.valueQuantity"


def test_implausible_value_noted(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, value=450)))
    assert "body-temperature" not in timeline.measurements
    assert len(_notes(timeline, "dropped-implausible")) == 1


def test_absent_value_noted(fhir, build):
    obs = fhir.observation("t1", "8310-5", "2026-03-05T08:00:00+01:00")
    obs["dataAbsentReason"] = {"text": "patient refused"}
    timeline = build(fhir.bundle(fhir.patient(), obs))
    assert "body-temperature" not in timeline.measurements
    assert len(_notes(timeline, "dropped-value")) == 1


# --- oxygen device ---------------------------------------------------------------------------------------------

def test_device_with_open_period_is_ongoing(fhir, build):
    device = fhir.observation(
        "dev1", "107117-4", None, period={"start": "2026-03-05T06:00:00+01:00"},
        value_concept=fhir.codeable(fhir.SNOMED, "426854004", display="High flow nasal cannula"),
    )
    timeline = build(fhir.bundle(fhir.patient(), device))
    (fact,) = timeline.coded["oxygen-delivery-device"]
    assert fact.value == "high-flow-nasal-cannula"
    assert fact.ongoing is True
    assert fact.end is None
    assert fact.time == datetime(2026, 3, 5, 5, 0, tzinfo=timezone.utc)
    assert fact.source == "Observation/dev1"


def test_device_with_closed_period(fhir, build):
    device = fhir.observation(
        "dev1", "107117-4", None,
        period={"start": "2026-03-05T06:00:00+01:00", "end": "2026-03-05T08:00:00+01:00"},
        value_concept=fhir.codeable(fhir.SNOMED, "336623009"),
    )
    (fact,) = build(fhir.bundle(fhir.patient(), device)).coded["oxygen-delivery-device"]
    assert fact.value == "nasal-cannula"
    assert fact.ongoing is False
    assert fact.end == datetime(2026, 3, 5, 7, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "code",
    [(None, "41925-9"), ("cartox", "oxygen-delivery-device")],
)
def test_device_alias_codes_and_text_value(fhir, build, code):
    system = fhir.LOINC if code[0] is None else fhir.CARTOX_CS
    device = fhir.observation(
        "dev1", None, "2026-03-05T06:00:00+01:00",
        code=fhir.codeable(system, code[1]),
        value_concept=fhir.codeable(text="Non-rebreather mask 15 L"),
    )
    (fact,) = build(fhir.bundle(fhir.patient(), device)).coded["oxygen-delivery-device"]
    assert fact.value == "non-rebreather-mask"
    assert fact.ongoing is False and fact.end is None


def test_unknown_device_kept_as_unknown_and_warned(fhir, build):
    device = fhir.observation(
        "dev1", "107117-4", "2026-03-05T06:00:00+01:00", value_concept=fhir.codeable(text="Bubble helmet")
    )
    timeline = build(fhir.bundle(fhir.patient(), device))
    (fact,) = timeline.coded["oxygen-delivery-device"]
    assert fact.value is None
    assert fact.display == "Bubble helmet"
    warnings = _notes(timeline, "ignored-code")
    assert any(n.severity == "warning" and "Bubble helmet" in n.message for n in warnings)


# --- statuses -------------------------------------------------------------------------------------------------

def test_entered_in_error_ignored_with_note(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, status="entered-in-error"), _temp(fhir, "t2", status="entered-in-error")))
    assert "body-temperature" not in timeline.measurements
    (note,) = _notes(timeline, "ignored-status")
    assert note.count == 2
    assert "entered-in-error" in note.message
    assert note.severity == "information"


def test_preliminary_ignored_by_default(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, status="preliminary")))
    assert "body-temperature" not in timeline.measurements
    assert "preliminary" in _notes(timeline, "ignored-status")[0].message


def test_preliminary_used_when_accepted(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, status="preliminary")), options=BuildOptions(accept_preliminary=True))
    assert [f.value for f in timeline.measurements["body-temperature"]] == [38.4]
    assert not _notes(timeline, "ignored-status")


def test_entered_in_error_never_used_even_with_preliminary_accepted(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, status="entered-in-error")), options=BuildOptions(accept_preliminary=True))
    assert "body-temperature" not in timeline.measurements


def test_unknown_status_flagged_with_location(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, status="unknown")))
    assert "body-temperature" not in timeline.measurements
    (note,) = _notes(timeline, "flagged-status")
    assert note.severity == "warning"
    assert note.location == "Bundle.entry[1].resource"


def test_administration_statuses(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        fhir.administration("a1", "2026-03-05T08:00:00+01:00", text="dexamethasone", status="completed"),
        fhir.administration("a2", "2026-03-05T09:00:00+01:00", text="dexamethasone", status="stopped"),
        fhir.administration("a3", "2026-03-05T10:00:00+01:00", text="dexamethasone", status="not-done"),
        fhir.administration("a4", "2026-03-05T10:30:00+01:00", text="dexamethasone", status="entered-in-error"),
        fhir.administration("a5", "2026-03-05T11:00:00+01:00", text="dexamethasone", status="on-hold"),
    )
    timeline = build(body)
    assert [a.source for a in timeline.administrations["dexamethasone"]] == ["MedicationAdministration/a1", "MedicationAdministration/a2"]
    assert [a.status for a in timeline.administrations["dexamethasone"]] == ["completed", "stopped"]
    (flag,) = _notes(timeline, "flagged-status")
    assert flag.location == "Bundle.entry[5].resource"
    assert sum(n.count for n in _notes(timeline, "ignored-status")) == 2


# --- administrations ------------------------------------------------------------------------------------------

def test_administration_periods(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        fhir.administration("running", "2026-03-05T06:00:00+01:00", text="norepinephrine", status="in-progress", period=True),
        fhir.administration("bag", "2026-03-05T01:00:00+01:00", end="2026-03-05T05:00:00+01:00", text="Noradrenaline 4mg/50ml"),
        fhir.administration("open-completed", "2026-03-04T20:00:00+01:00", text="norepinephrine", period=True),
        fhir.administration("dose", "2026-03-05T07:00:00+01:00", rxnorm="3264", dose=fhir.quantity(10, "mg", "mg")),
    )
    timeline = build(body)
    by_source = {a.source.split("/")[1]: a for a in timeline.administrations["norepinephrine"]}
    assert by_source["running"].end is None  # still running: ends at the window end
    assert by_source["bag"].end == datetime(2026, 3, 5, 4, 0, tzinfo=timezone.utc)
    assert by_source["open-completed"].end == by_source["open-completed"].time  # only the start is known
    (dex,) = timeline.administrations["dexamethasone"]
    assert dex.end == dex.time
    assert dex.dose_mg == 10.0


def test_medication_reference_to_contained_medication(fhir, build):
    mad = fhir.administration(
        "a1", "2026-03-05T08:00:00+01:00", reference="#med",
        contained=[{"resourceType": "Medication", "id": "med", "code": fhir.codeable(fhir.RXNORM, "7512")}],
    )
    timeline = build(fhir.bundle(fhir.patient(), mad))
    assert [a.source for a in timeline.administrations["norepinephrine"]] == ["MedicationAdministration/a1"]


@pytest.mark.parametrize("reference", ["Medication/m1", "urn:uuid:6b1c2b1e-0000-4000-8000-000000000001",
                                       "http://ehr.example.org/fhir/Medication/m1"])
def test_medication_reference_to_medication_entry(fhir, build, reference):
    med = ("urn:uuid:6b1c2b1e-0000-4000-8000-000000000001", fhir.medication("m1", text="Tocilizumab 400 mg/20 mL"))
    mad = fhir.administration("a1", "2026-03-05T08:00:00+01:00", reference=reference)
    timeline = build(fhir.bundle(fhir.patient(), mad, med))
    assert [a.concept for a in timeline.administrations["tocilizumab"]] == ["tocilizumab"]


def test_unresolvable_medication_reference_counted_as_ignored(fhir, build):
    mad = fhir.administration("a1", "2026-03-05T08:00:00+01:00", reference="Medication/missing")
    timeline = build(fhir.bundle(fhir.patient(), mad))
    assert timeline.administrations == {}
    assert _notes(timeline, "ignored-code")


# --- times -----------------------------------------------------------------------------------------------------

def test_time_without_offset_dropped_with_warning(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, at="2026-03-05T08:00:00")))
    assert "body-temperature" not in timeline.measurements
    (note,) = _notes(timeline, "dropped-time")
    assert note.severity == "warning"
    assert note.location == "Bundle.entry[1].resource"


def test_no_effective_time_dropped_with_warning(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, at=None)))
    assert "body-temperature" not in timeline.measurements
    assert len(_notes(timeline, "dropped-time")) == 1


def test_date_only_weight_kept_as_date_only(fhir, build):
    weight = fhir.observation("w1", "29463-7", "2026-03-04", fhir.quantity(154, "lb", "[lb_av]"))
    timeline = build(fhir.bundle(fhir.patient(), weight))
    (fact,) = timeline.measurements["body-weight"]
    assert fact.date_only is True
    assert fact.value == pytest.approx(69.853, abs=1e-3)
    assert fact.time.astimezone(CET).date() == date(2026, 3, 4)


def test_future_facts_dropped_and_counted(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        _temp(fhir, "t1", at="2026-03-05T11:59:00+01:00"),
        _temp(fhir, "t2", at="2026-03-05T12:00:01+01:00"),
        _temp(fhir, "t3", at="2026-03-05T11:30:00Z"),  # 12:30 at +01:00
        fhir.administration("a1", "2026-03-06T08:00:00+01:00", text="tocilizumab"),
    )
    timeline = build(body)
    assert [f.source for f in timeline.measurements["body-temperature"]] == ["Observation/t1"]
    assert "tocilizumab" not in timeline.administrations
    (note,) = _notes(timeline, "dropped-future")
    assert note.count == 3


def test_fact_exactly_at_evaluation_time_kept(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir, at="2026-03-05T11:00:00Z")))
    assert len(timeline.measurements["body-temperature"]) == 1


def test_facts_sorted_by_instant_across_offsets(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        _temp(fhir, "late", value=38.9, at="2026-03-05T10:00:00+01:00"),
        _temp(fhir, "early", value=38.1, at="2026-03-05T08:30:00Z"),  # 09:30 at +01:00
    )
    assert [f.source for f in build(body).measurements["body-temperature"]] == ["Observation/early", "Observation/late"]


# --- one patient ---------------------------------------------------------------------------------------------

def test_two_patient_resources_rejected(fhir, build):
    with pytest.raises(InputError) as info:
        build(fhir.bundle(fhir.patient("p1"), fhir.patient("p2")))
    assert info.value.status == 422
    assert info.value.issues[0].code == "input-multiple-patients"


def test_observation_about_another_patient_rejected(fhir, build):
    with pytest.raises(InputError) as info:
        build(fhir.bundle(fhir.patient("p1"), _temp(fhir), _temp(fhir, "t2", subject="Patient/p2")))
    assert info.value.status == 422
    issue = info.value.issues[0]
    assert issue.code == "input-multiple-patients"
    assert issue.expression == "Bundle.entry[2].resource.subject.reference"


def test_subject_as_patient_full_url_is_the_same_patient(fhir, build):
    url = "urn:uuid:a5f0f6c4-7d2b-4c1e-9c55-3b9e0e1f0001"
    body = fhir.bundle((url, fhir.patient("p1")), _temp(fhir, subject=url), _temp(fhir, "t2", subject="Patient/p1"))
    timeline = build(body)
    assert timeline.patient == "Patient/p1"
    assert len(timeline.measurements["body-temperature"]) == 2


def test_absolute_subject_reference_is_the_same_patient(fhir, build):
    body = fhir.bundle(fhir.patient("p1"), _temp(fhir, subject="http://ehr.example.org/fhir/Patient/p1/_history/3"))
    assert build(body).patient == "Patient/p1"


def test_patient_demographics(fhir, build):
    timeline = build(fhir.bundle(fhir.patient("p1", birth_date="2020-03-06")))
    assert timeline.birth_date == date(2020, 3, 6)
    assert timeline.age_years() == 5
    assert timeline.deceased is False
    assert build(fhir.bundle(fhir.patient("p1", deceasedBoolean=True))).deceased is True


# --- day 0 ------------------------------------------------------------------------------------------------------

def test_day_zero_is_the_latest_car_t_infusion(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        fhir.administration("cart-1", "2026-02-01T10:00:00+01:00", text="Kymriah"),
        fhir.administration("cart-2", CART, text="axicabtagene ciloleucel"),
        _temp(fhir),
    )
    timeline = build(body)
    day_zero = timeline.day_zero
    assert day_zero.time == datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    assert day_zero.source == "MedicationAdministration/cart-2"
    assert day_zero.product == "axicabtagene-ciloleucel"
    assert day_zero.date == date(2026, 3, 2)
    assert day_zero.day_of(timeline.measurements["body-temperature"][0].time) == 3
    assert any("2 CAR-T infusions" in n.message for n in _notes(timeline, "flagged-status"))


def test_day_zero_counts_days_in_the_infusion_offset(fhir, build):
    """An event at 00:30 +01:00 on 3 March (23:30 UTC on 2 March) is day 1."""
    body = fhir.bundle(fhir.patient(), fhir.administration("cart", CART, text="Yescarta"))
    day_zero = build(body).day_zero
    assert day_zero.day_of(datetime(2026, 3, 3, 0, 30, tzinfo=CET)) == 1
    assert day_zero.day_of(datetime(2026, 3, 2, 23, 30, tzinfo=timezone.utc)) == 1


def test_no_infusion_no_day_zero(fhir, build):
    assert build(fhir.bundle(fhir.patient(), _temp(fhir))).day_zero is None


def test_investigational_car_t_by_code(fhir, build):
    mad = fhir.administration("cart", CART)
    mad["medicationCodeableConcept"] = fhir.codeable(fhir.CARTOX_CS, "cart-investigational")
    assert build(fhir.bundle(fhir.patient(), mad)).day_zero.product == "investigational-car-t"


def test_day_zero_from_override(fhir, build):
    override = datetime(2026, 3, 1, 8, 0, tzinfo=CET)
    body = fhir.bundle(fhir.patient(), fhir.administration("cart", CART, text="Yescarta"))
    day_zero = build(body, options=BuildOptions(infusion_override=override)).day_zero
    assert day_zero.time == override
    assert day_zero.source == "parameter infusionDate"
    assert day_zero.product == "unspecified"
    assert day_zero.date == date(2026, 3, 1)
    assert day_zero.date_only is False


def test_day_zero_override_date_only(fhir, build):
    override = datetime(2026, 3, 1, tzinfo=CET)
    day_zero = build(fhir.bundle(fhir.patient()), options=BuildOptions(infusion_override=override, infusion_override_date_only=True)).day_zero
    assert day_zero.date_only is True
    assert day_zero.date == date(2026, 3, 1)


# --- ignored codes and types ------------------------------------------------------------------------------------

def test_unknown_codes_counted_in_one_note(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        fhir.observation("x1", "9999-9", "2026-03-05T08:00:00+01:00", fhir.quantity(1, "1", "1")),
        fhir.observation("x2", "9999-9", "2026-03-05T09:00:00+01:00", fhir.quantity(2, "1", "1")),
        fhir.observation("x3", "1234-5", "2026-03-05T09:00:00+01:00", fhir.quantity(2, "1", "1")),
        fhir.administration("a1", "2026-03-05T08:00:00+01:00", text="ondansetron"),
    )
    timeline = build(body)
    notes = {n.message: n for n in _notes(timeline, "ignored-code")}
    by_code = {message: n.count for message, n in notes.items()}
    assert any("9999-9" in m and c == 2 for m, c in by_code.items()), by_code
    assert any("1234-5" in m and c == 1 for m, c in by_code.items()), by_code
    assert any("ondansetron" in m and c == 1 for m, c in by_code.items()), by_code
    assert all(n.severity == "information" for n in notes.values())
    assert timeline.measurements == {}


def test_ignored_resource_types_noted(fhir, build):
    body = fhir.bundle(fhir.patient(), {"resourceType": "Encounter", "id": "e1"}, {"resourceType": "Encounter", "id": "e2"},
                       {"resourceType": "Condition", "id": "c1"})
    timeline = build(body)
    notes = {n.message: n.count for n in _notes(timeline, "ignored-resource-type")}
    assert notes == {"Encounter is not used by the rules": 2}
    # Conditions are read (findings): one without a known code is an ignored code.
    assert [n.message for n in _notes(timeline, "ignored-code")] == ["code (none) is not used by the rules"]


# --- fluids: volume and rate --------------------------------------------------------------------------------

def _fluid(fhir, aid="ns", rxnorm="313002", dose=None, rate=None, ratio=None, **kw):
    mad = fhir.administration(aid, "2026-03-05T08:00:00+01:00", rxnorm=rxnorm, dose=dose, **kw)
    if rate is not None or ratio is not None:
        mad.setdefault("dosage", {})
        if rate is not None:
            mad["dosage"]["rateQuantity"] = rate
        if ratio is not None:
            mad["dosage"]["rateRatio"] = ratio
    return mad


@pytest.mark.parametrize("dose, volume", [((500, "mL", "mL"), 500.0), ((1, "L", "L"), 1000.0), ((250, "ml", None), 250.0)])
def test_a_dose_in_ml_is_a_volume_never_mg(fhir, build, dose, volume):
    timeline = build(fhir.bundle(fhir.patient(), _fluid(fhir, dose=fhir.quantity(*dose))))
    (fact,) = timeline.administrations["normal-saline"]
    assert (fact.volume_ml, fact.dose_mg, fact.rate_ml_per_h) == (volume, None, None)


def test_crystalloid_codes_and_names(fhir, build):
    body = fhir.bundle(fhir.patient(), _fluid(fhir, "lr", rxnorm="847630"), _fluid(fhir, "ns", rxnorm="1807639"),
                       fhir.administration("pl", "2026-03-05T08:00:00+01:00", text="Plasma-Lyte 148 1000 mL"))
    timeline = build(body)
    assert {concept: [a.source for a in facts] for concept, facts in timeline.administrations.items()} == {
        "lactated-ringers": ["MedicationAdministration/lr"], "normal-saline": ["MedicationAdministration/ns"],
        "balanced-crystalloid": ["MedicationAdministration/pl"],
    }


@pytest.mark.parametrize(
    "rate, ratio, expected",
    [
        ((80, "mL/h", "mL/h"), None, 80.0),
        ((80, "mL/hr", None), None, 80.0),
        ((10, "mL/min", "mL/min"), None, 600.0),
        ((1, "L/h", "L/h"), None, 1000.0),
        (None, ((500, "mL", "mL"), (30, "min", "min")), 1000.0),
        (None, ((1, "L", "L"), (None, "h", "h")), 1000.0),
        ((0.08, "ug/kg/min", "ug/kg/min"), None, None),  # a vasopressor's rate is not a fluid rate
        (None, ((8, "mg", "mg"), (1, "h", "h")), None),
    ],
)
def test_fluid_rates_in_ml_per_hour(fhir, build, rate, ratio, expected):
    rate_q = fhir.quantity(*rate) if rate else None
    ratio_r = {"numerator": fhir.quantity(*ratio[0]), "denominator": fhir.quantity(*ratio[1])} if ratio else None
    timeline = build(fhir.bundle(fhir.patient(), _fluid(fhir, rate=rate_q, ratio=ratio_r)))
    (fact,) = timeline.administrations["normal-saline"]
    assert fact.rate_ml_per_h == (pytest.approx(expected) if expected is not None else None)
    assert not _notes(timeline, "dropped-implausible")


def test_negative_rate_dropped_and_reported(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _fluid(fhir, rate=fhir.quantity(-100, "mL/h", "mL/h"))))
    assert timeline.administrations["normal-saline"][0].rate_ml_per_h is None
    (note,) = _notes(timeline, "dropped-implausible")
    assert note.location == "Bundle.entry[1].resource.dosage.rateQuantity.value"


# --- implausible doses --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "rxnorm, concept, dose, kept",
    [
        ("3264", "dexamethasone", (10, "mg", "mg"), 10.0),
        ("3264", "dexamethasone", (100, "mg", "mg"), 100.0),  # the plausible maximum itself
        ("3264", "dexamethasone", (1000, "mg", "mg"), None),
        ("3264", "dexamethasone", (0, "mg", "mg"), None),
        ("3264", "dexamethasone", (-4, "mg", "mg"), None),
        ("612865", "tocilizumab", (800, "mg", "mg"), 800.0),
        ("612865", "tocilizumab", (8, "g", "g"), None),  # 8000 mg: a unit slip
        ("6902", "methylprednisolone", (1, "g", "g"), 1000.0),
        ("7512", "norepinephrine", (4, "mg", "mg"), 4.0),  # no plausible maximum listed: only <= 0 is dropped
    ],
)
def test_implausible_dose_dropped_administration_still_counts(fhir, build, rxnorm, concept, dose, kept):
    mad = fhir.administration("a1", "2026-03-05T08:00:00+01:00", rxnorm=rxnorm, dose=fhir.quantity(*dose))
    timeline = build(fhir.bundle(fhir.patient(), mad))
    (fact,) = timeline.administrations[concept]
    assert fact.dose_mg == kept
    assert fact.source == "MedicationAdministration/a1"  # it happened: counts for timing and label limits
    notes = _notes(timeline, "dropped-implausible")
    if kept is None:
        (note,) = notes
        assert note.severity == "warning"
        assert note.location == "Bundle.entry[1].resource.dosage.dose.value"
        assert concept in note.message
    else:
        assert notes == []


# --- duplicates, paging, periods ------------------------------------------------------------------------------

def test_duplicate_resource_first_occurrence_used(fhir, build):
    body = fhir.bundle(fhir.patient(), _temp(fhir, "t1", value=37.2), _temp(fhir, "t1", value=39.1, at="2026-03-05T09:00:00+01:00"),
                       _temp(fhir, "t2", value=37.4))
    timeline = build(body)
    assert [(f.source, f.value) for f in timeline.measurements["body-temperature"]] == [("Observation/t1", 37.2), ("Observation/t2", 37.4)]
    (note,) = [n for n in timeline.notes if "more than once" in n.message]
    assert (note.code, note.severity, note.location) == ("flagged-duplicate", "warning", "Bundle.entry[2].resource")
    assert "Observation/t1" in note.message


def test_duplicate_patient_is_the_same_patient(fhir, build):
    timeline = build(fhir.bundle(fhir.patient("p1"), fhir.patient("p1", birth_date="1970-01-01"), _temp(fhir)))
    assert timeline.patient == "Patient/p1"
    assert timeline.birth_date == date(1965, 4, 2)  # the first copy
    assert [n.location for n in timeline.notes if "more than once" in n.message] == ["Bundle.entry[1].resource"]


def test_same_id_of_different_types_is_no_duplicate(fhir, build):
    body = fhir.bundle(fhir.patient(), _temp(fhir, "x1"), fhir.administration("x1", "2026-03-05T08:00:00+01:00", text="tocilizumab"))
    timeline = build(body)
    assert not [n for n in timeline.notes if "more than once" in n.message]
    assert timeline.administrations["tocilizumab"] and timeline.measurements["body-temperature"]


def test_next_link_means_partial_data(fhir, build):
    document = json.loads(fhir.bundle(fhir.patient(), _temp(fhir), bundle_type="searchset"))
    document["link"] = [{"relation": "next", "url": "https://ehr.example.org/fhir/Observation?page=2"}]
    timeline = build(json.dumps(document).encode())
    (reason,) = timeline.partial_data
    assert "next page" in reason
    (note,) = [n for n in timeline.notes if n.message == reason]
    assert (note.severity, note.location) == ("warning", "Bundle.link[0]")
    assert build(fhir.bundle(fhir.patient(), _temp(fhir))).partial_data == ()


def test_administration_period_ending_before_it_starts_used_at_its_start(fhir, build):
    mad = fhir.administration("ne1", "2026-03-05T09:00:00+01:00", end="2026-03-05T07:00:00+01:00", rxnorm="7512")
    timeline = build(fhir.bundle(fhir.patient(), mad))
    (fact,) = timeline.administrations["norepinephrine"]
    assert fact.time == fact.end == datetime(2026, 3, 5, 8, 0, tzinfo=timezone.utc)
    (note,) = _notes(timeline, "flagged-time")
    assert (note.severity, note.location) == ("warning", "Bundle.entry[1].resource.effectivePeriod")
    assert "before it starts" in note.message


def test_observation_period_ending_before_it_starts_used_at_its_start(fhir, build):
    device = fhir.observation(
        "dev1", "107117-4", None, period={"start": "2026-03-05T06:00:00+01:00", "end": "2026-03-04T06:00:00+01:00"},
        value_concept=fhir.codeable(fhir.SNOMED, "426854004"),
    )
    timeline = build(fhir.bundle(fhir.patient(), device))
    (fact,) = timeline.coded["oxygen-delivery-device"]
    assert fact.time == fact.end == datetime(2026, 3, 5, 5, 0, tzinfo=timezone.utc)
    assert fact.ongoing is False
    assert [n.location for n in _notes(timeline, "flagged-time")] == ["Bundle.entry[1].resource.effectivePeriod"]


def test_date_only_period_end_covers_the_whole_day(fhir, build):
    mad = fhir.administration("ne1", "2026-03-05T06:00:00+01:00", end="2026-03-05", rxnorm="7512")
    timeline = build(fhir.bundle(fhir.patient(), mad))
    (fact,) = timeline.administrations["norepinephrine"]
    assert fact.end.astimezone(CET) == datetime(2026, 3, 5, 23, 59, 59, 999999, tzinfo=CET)
    assert not _notes(timeline, "flagged-time")


# --- display offset ------------------------------------------------------------------------------------------

CEST = timezone(timedelta(hours=2))


def test_display_offset_is_the_offset_of_the_latest_used_fact(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        _temp(fhir, "t1", at="2026-03-05T08:00:00+01:00"),
        _temp(fhir, "t2", at="2026-03-05T10:30:00+02:00"),  # 08:30 UTC: the latest
        _temp(fhir, "t3", value=450, at="2026-03-05T11:00:00+05:00"),  # 06:00 UTC, and dropped anyway
        _temp(fhir, "t4", at="2026-03-05T13:00:00-05:00"),  # after asOf: not used
    )
    timeline = build(body, as_of=datetime(2026, 3, 5, 11, 0, tzinfo=timezone.utc))
    assert timeline.display_offset.utcoffset(None) == timedelta(hours=2)
    assert timeline.as_of == datetime(2026, 3, 5, 11, 0, tzinfo=timezone.utc)


def test_display_offset_ignores_dropped_and_date_only_facts(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        _temp(fhir, "t1", at="2026-03-05T08:00:00+01:00"),
        _temp(fhir, "t2", value=450, at="2026-03-05T09:00:00+02:00"),  # later, but implausible: not used
        fhir.observation("w1", "29463-7", "2026-03-05", fhir.quantity(80, "kg", "kg")),  # date only
    )
    timeline = build(body, as_of=datetime(2026, 3, 5, 11, 0, tzinfo=timezone.utc))
    assert timeline.display_offset.utcoffset(None) == timedelta(hours=1)


def test_display_offset_from_an_administration(fhir, build):
    mad = fhir.administration("toci", "2026-03-05T09:00:00-04:00", text="tocilizumab")
    timeline = build(fhir.bundle(fhir.patient(), _temp(fhir), mad), as_of=datetime(2026, 3, 5, 15, 0, tzinfo=timezone.utc))
    assert timeline.display_offset.utcoffset(None) == timedelta(hours=-4)


def test_display_offset_without_facts_is_the_evaluation_time_offset(fhir, build):
    timeline = build(fhir.bundle(fhir.patient()), as_of=datetime(2026, 3, 5, 12, 0, tzinfo=CEST))
    assert timeline.display_offset == CEST


def test_date_only_infusion_date_stays_at_midnight_in_the_evaluation_offset(fhir, build):
    options = BuildOptions(infusion_override=datetime(2026, 3, 1, tzinfo=timezone.utc), infusion_override_date_only=True)
    body = fhir.bundle(fhir.patient(), _temp(fhir, at="2026-03-05T08:00:00+02:00"))
    timeline = build(body, as_of=AS_OF, options=options)  # asOf at +01:00, data at +02:00
    assert timeline.display_offset.utcoffset(None) == timedelta(hours=2)
    assert timeline.day_zero.time == datetime(2026, 2, 28, 23, 0, tzinfo=timezone.utc)


# --- medication references --------------------------------------------------------------------------------------

def test_medication_reference_resolves_code_and_display(fhir, build):
    med = ("https://ehr.example.org/fhir/Medication/m-ne", fhir.medication("m-ne", text="Norepinephrine 8 mg/250 mL", rxnorm="7512"))
    mad = fhir.administration("a1", "2026-03-05T08:00:00+01:00", reference="https://ehr.example.org/fhir/Medication/m-ne")
    (fact,) = build(fhir.bundle(fhir.patient(), mad, med)).administrations["norepinephrine"]
    assert fact.display == "Norepinephrine 8 mg/250 mL"


def test_unresolvable_medication_reference_warned_with_location(fhir, build):
    mad = fhir.administration("a1", "2026-03-05T08:00:00+01:00", reference="Medication/missing")
    timeline = build(fhir.bundle(fhir.patient(), mad))
    (note,) = [n for n in _notes(timeline, "ignored-code") if n.location]
    assert note.severity == "warning"
    assert note.location == "Bundle.entry[1].resource.medicationReference"
    assert "Medication/missing" in note.message
