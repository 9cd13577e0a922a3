"""service.fhir_input.normalise: scores, coded assessments, findings (Observation and Condition), procedures,
routes and reference ranges, each read through rules/concepts.yaml, or listed as ignored when no rule reads it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from service.errors import InputError
from service.fhir_input.decode import USED_TYPES, decode_bundle
from service.fhir_input.normalise import NORMALISERS
from service.timeline.build import BuildOptions, build_timeline, entries_from_bundle
from service.timeline.facts import ClinicalFinding, Measurement, NotPerformed, ProcedurePerformed, Timeline

CET = timezone(timedelta(hours=1))
AS_OF = datetime(2026, 3, 5, 12, 0, tzinfo=CET)
AT = "2026-03-05T08:00:00+01:00"
UTC_AT = datetime(2026, 3, 5, 7, 0, tzinfo=timezone.utc)
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
SEIZURE, TREMOR, CEREBRAL_EDEMA, EEG = "91175000", "26079004", "2032001", "54550000"


@pytest.fixture
def build(unit_engine):
    """Build with the whole terminology (every concept read), or with `terminology` (e.g. the rules' own)."""

    def run(body: bytes, terminology=None, as_of: datetime = AS_OF):
        decoded = decode_bundle(body)
        return build_timeline(entries_from_bundle(decoded.entries), terminology or unit_engine.rules.terminology, as_of,
                              BuildOptions(), decoded.ignored_types)

    return run


def _notes(timeline, code: str):
    return [n for n in timeline.notes if n.code == code]


def _score(fhir, oid: str, code: str, *, integer=None, quantity=None, absent=None, at: str = AT, components=None) -> dict:
    obs = fhir.observation(oid, None, at, quantity, code=fhir.codeable(fhir.CARTOX_CS, code), components=components)
    if integer is not None:
        obs["valueInteger"] = integer
    if absent is not None:
        obs["dataAbsentReason"] = absent
    return obs


def _answer(fhir, oid: str, code: str, answer: str | None, **kw) -> dict:
    value = fhir.codeable(fhir.CARTOX_CS, answer) if answer else None
    return fhir.observation(oid, None, AT, code=fhir.codeable(fhir.CARTOX_CS, code), value_concept=value, **kw)


def _condition(fhir, cid: str = "c1", code: str = SEIZURE, *, onset: str | None = AT, abatement: str | None = None,
               clinical: str | None = "active", verification: str | None = "confirmed", **extra) -> dict:
    resource = {"resourceType": "Condition", "id": cid, "code": fhir.codeable(fhir.SNOMED, code, display="Seizure"),
                "subject": {"reference": "Patient/p1"}}
    if clinical:
        resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": verification}]}
    if onset:
        resource["onsetDateTime"] = onset
    if abatement:
        resource["abatementDateTime"] = abatement
    resource.update(extra)
    return resource


def _procedure(fhir, pid: str = "pr1", code: str = EEG, *, status: str = "completed", **performed) -> dict:
    resource = {"resourceType": "Procedure", "id": pid, "status": status, "code": fhir.codeable(fhir.SNOMED, code, display="EEG"),
                "subject": {"reference": "Patient/p1"}}
    resource.update(performed or {"performedDateTime": AT})
    return resource


# --- registry ---------------------------------------------------------------------------------------------

def test_every_decoded_type_has_a_normaliser_or_is_read_by_one():
    """Patient (the subject) and Medication (the administered drug) are read by the normalisers."""
    assert set(NORMALISERS) | {"Patient", "Medication"} == USED_TYPES


def test_types_no_rule_reads_are_listed_as_ignored_types(fhir, build, unit_engine):
    """ICANS reads findings (Conditions), the prednisone regimen reads transfusion and transplant Procedures; an
    unread type (Encounter) is listed as ignored; a Condition or Procedure whose code no rule reads (the EEG) is an
    ignored code, never silently dropped."""
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p1"}}
    body = fhir.bundle(fhir.patient(), _condition(fhir), _condition(fhir, "c2", "109969005"), _procedure(fhir),
                       _procedure(fhir, "pr2", "234336002"), encounter)
    timeline = build(body, unit_engine.rules.input_terminology)
    assert list(timeline.findings) == ["seizure"] and list(timeline.procedures) == ["stem-cell-transplant"]
    notes = {n.message: n.count for n in _notes(timeline, "ignored-resource-type")}
    assert notes == {"Encounter is not used by the rules": 1}
    assert sorted(n.message for n in _notes(timeline, "ignored-code")) == [
        "code sct|109969005 is not used by the rules", f"code sct|{EEG} is not used by the rules"]


def test_unread_scores_and_assessments_are_ignored_codes(fhir, build, unit_engine):
    """The ICE total and the level of consciousness are read; the ICE item scores are not (yet)."""
    body = fhir.bundle(fhir.patient(), _score(fhir, "ice", "ice-total", integer=8), _answer(fhir, "loc", "loc-astct", "alert"),
                       _score(fhir, "io", "ice-orientation", integer=3))
    timeline = build(body, unit_engine.rules.input_terminology)
    assert [f.value for f in timeline.measurements["ice-total"]] == [8]
    assert [f.value for f in timeline.coded["loc-astct"]] == ["alert"]
    labels = sorted(n.message for n in _notes(timeline, "ignored-code"))
    assert labels == ["code cartox|ice-orientation is not used by the rules"]
    assert all(n.severity == "information" for n in _notes(timeline, "ignored-code"))


def test_once_a_finding_is_read_other_condition_codes_are_ignored_codes(fhir, build, unit_engine):
    terminology = unit_engine.rules.terminology.restricted_to(frozenset({"seizure"}))
    body = fhir.bundle(fhir.patient(), _condition(fhir), _condition(fhir, "c2", "109969005"), _condition(fhir, "c3", TREMOR))
    timeline = build(body, terminology)
    assert list(timeline.findings) == ["seizure"]
    assert sorted(n.message for n in _notes(timeline, "ignored-code")) == [
        "code sct|109969005 is not used by the rules", f"code sct|{TREMOR} is not used by the rules"]
    assert not _notes(timeline, "ignored-resource-type")


# --- decode errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "resource, path",
    [
        ({"resourceType": "Condition", "id": "c", "onsetDateTime": 20260305}, "onsetDateTime"),
        ({"resourceType": "Condition", "id": "c", "clinicalStatus": "active"}, "clinicalStatus"),
        ({"resourceType": "Condition", "id": "c", "abatementDateTime": True}, "abatementDateTime"),
        ({"resourceType": "Procedure", "id": "p", "performedPeriod": {"start": 1}}, "performedPeriod.start"),
        ({"resourceType": "Observation", "id": "o", "valueInteger": "7"}, "valueInteger"),
        ({"resourceType": "Observation", "id": "o", "valueInteger": 7.5}, "valueInteger"),
        ({"resourceType": "Observation", "id": "o", "valueBoolean": "yes"}, "valueBoolean"),
        ({"resourceType": "Observation", "id": "o", "dataAbsentReason": "unknown"}, "dataAbsentReason"),
        ({"resourceType": "Observation", "id": "o", "referenceRange": [{"low": {"value": "3.5"}}]}, "referenceRange[0].low.value"),
        ({"resourceType": "Observation", "id": "o", "component": [{"dataAbsentReason": []}]}, "component[0].dataAbsentReason"),
    ],
)
def test_wrong_shapes_of_the_new_fields_are_located(fhir, resource, path):
    with pytest.raises(InputError) as info:
        decode_bundle(fhir.bundle(fhir.patient(), {"resourceType": "Encounter", "id": "e", "status": [1]}, resource))
    assert info.value.status == 422
    (issue,) = info.value.issues
    assert issue.code == "input-wrong-type"
    assert issue.expression == f"Bundle.entry[2].resource.{path}"


# --- scores ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kw, original",
    [
        ({"integer": 7}, "7 {score}"),
        ({"quantity": {"value": 7, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}}, "7 {score}"),
        ({"quantity": {"value": 7}}, "7 {score}"),  # a score needs no unit
        ({"quantity": {"value": 7, "unit": "points", "system": "http://unitsofmeasure.org", "code": "1"}}, "7 1"),
    ],
)
def test_integer_score_with_and_without_a_unit(fhir, build, kw, original):
    timeline = build(fhir.bundle(fhir.patient(), _score(fhir, "ice", "ice-total", **kw)))
    (fact,) = timeline.measurements["ice-total"]
    assert (fact.value, fact.unit, fact.original, fact.time, fact.source) == (7.0, "{score}", original, UTC_AT, "Observation/ice")
    assert timeline.measurement_times["ice-total"] == (UTC_AT,)
    assert "Observation/ice" in timeline.input_references
    assert not [n for n in timeline.notes if n.severity == "warning"]


@pytest.mark.parametrize(
    "code, kw, element, words",
    [
        ("ice-total", {"integer": 11}, "valueInteger", "outside the score's range 0–10"),
        ("ice-total", {"integer": -1}, "valueInteger", "outside the score's range 0–10"),
        ("capd-total", {"integer": 33}, "valueInteger", "outside the score's range 0–32"),
        ("ice-orientation", {"integer": 5}, "valueInteger", "outside the score's range 0–4"),
        ("ice-total", {"quantity": {"value": 12, "code": "{score}"}}, "valueQuantity", "outside the score's range 0–10"),
        ("ice-total", {"quantity": {"value": 7.5}}, "valueQuantity", "not a whole number"),
    ],
)
def test_out_of_range_score_dropped_and_located(fhir, build, code, kw, element, words):
    timeline = build(fhir.bundle(fhir.patient(), _score(fhir, "s1", code, **kw)))
    assert code not in timeline.measurements
    (note,) = _notes(timeline, "dropped-implausible")
    assert (note.severity, note.location) == ("warning", f"Bundle.entry[1].resource.{element}")
    assert note.message.startswith(f"{code}: ") and words in note.message
    assert "Observation/s1" not in timeline.input_references


def test_score_boundaries_are_kept(fhir, build):
    body = fhir.bundle(fhir.patient(), _score(fhir, "a", "ice-total", integer=0), _score(fhir, "b", "ice-total", integer=10),
                       _score(fhir, "c", "capd-total", integer=32))
    timeline = build(body)
    assert [f.value for f in timeline.measurements["ice-total"]] == [0.0, 10.0]
    assert [f.value for f in timeline.measurements["capd-total"]] == [32.0]


def test_a_score_in_another_unit_is_dropped(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _score(fhir, "s1", "ice-total", quantity={"value": 7, "code": "%"})))
    (note,) = _notes(timeline, "dropped-unit")
    assert note.location == "Bundle.entry[1].resource.valueQuantity"


def test_integer_on_a_measurement_that_is_no_score_is_still_dropped(fhir, build):
    obs = fhir.observation("t1", "8310-5", AT)
    obs["valueInteger"] = 38
    timeline = build(fhir.bundle(fhir.patient(), obs))
    assert "body-temperature" not in timeline.measurements
    (note,) = _notes(timeline, "dropped-unit")
    assert note.message == "body-temperature: integer value without a unit"


def test_ice_items_as_components_of_the_total(fhir, build):
    items = [{"code": fhir.codeable(fhir.CARTOX_CS, code), "valueInteger": value}
             for code, value in (("ice-orientation", 3), ("ice-naming", 3), ("ice-commands", 1), ("ice-writing", 0), ("ice-attention", 1))]
    timeline = build(fhir.bundle(fhir.patient(), _score(fhir, "ice", "ice-total", integer=8, components=items)))
    got = {concept: [f.value for f in facts] for concept, facts in timeline.measurements.items()}
    assert got == {"ice-total": [8.0], "ice-orientation": [3.0], "ice-naming": [3.0], "ice-commands": [1.0],
                   "ice-writing": [0.0], "ice-attention": [1.0]}


# --- not performed ------------------------------------------------------------------------------------------

def test_score_with_data_absent_reason_is_not_performed(fhir, build):
    absent = {"coding": [{"system": DAR, "code": "not-performed", "display": "Not Performed"}], "text": "patient unarousable"}
    timeline = build(fhir.bundle(fhir.patient(), _score(fhir, "ice", "ice-total", absent=absent)))
    assert "ice-total" not in timeline.measurements
    (fact,) = timeline.not_performed["ice-total"]
    assert fact == NotPerformed("ice-total", UTC_AT, "patient unarousable", "not-performed", "Observation/ice")
    assert timeline.not_performed_times["ice-total"] == (UTC_AT,)
    assert "Observation/ice" in timeline.input_references
    assert not _notes(timeline, "dropped-value")


def test_not_performed_reason_from_the_coding_when_there_is_no_text(fhir, build):
    absent = {"coding": [{"system": DAR, "code": "asked-declined", "display": "Asked But Declined"}]}
    timeline = build(fhir.bundle(fhir.patient(), _score(fhir, "capd", "capd-total", absent=absent)))
    (fact,) = timeline.not_performed["capd-total"]
    assert (fact.reason, fact.reason_code) == ("Asked But Declined", "asked-declined")


def test_coded_assessment_with_data_absent_reason_is_not_performed(fhir, build):
    obs = _answer(fhir, "loc", "loc-astct", None)
    obs["dataAbsentReason"] = {"coding": [{"system": DAR, "code": "unknown"}]}
    (fact,) = build(fhir.bundle(fhir.patient(), obs)).not_performed["loc-astct"]
    assert (fact.reason, fact.reason_code) == ("unknown", "unknown")


def test_data_absent_reason_on_a_measurement_is_still_a_dropped_value(fhir, build):
    """A temperature not taken is a missing value, not an assessment result."""
    obs = fhir.observation("t1", "8310-5", AT)
    obs["dataAbsentReason"] = {"text": "patient refused"}
    timeline = build(fhir.bundle(fhir.patient(), obs))
    assert timeline.not_performed == {}
    (note,) = _notes(timeline, "dropped-value")
    assert (note.severity, note.message) == ("information", "body-temperature: no value (data absent)")


def test_oxygen_device_without_value_is_still_warned(fhir, build):
    obs = fhir.observation("dev", "107117-4", AT)
    obs["dataAbsentReason"] = {"text": "not recorded"}
    timeline = build(fhir.bundle(fhir.patient(), obs))
    assert timeline.not_performed == {}
    (note,) = _notes(timeline, "dropped-value")
    assert note.severity == "warning"


def test_score_without_value_or_reason_is_a_dropped_value(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _score(fhir, "ice", "ice-total")))
    assert timeline.not_performed == {} and timeline.measurements == {}
    assert len(_notes(timeline, "dropped-value")) == 1


# --- coded answers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "code, answer",
    [
        ("loc-astct", "alert"), ("loc-astct", "awakens-spontaneously"), ("loc-astct", "awakens-to-voice"),
        ("loc-astct", "awakens-to-tactile"), ("loc-astct", "unarousable"),
        ("seizure-astct", "rapidly-resolving"), ("seizure-astct", "eeg-resolved-with-intervention"),
        ("seizure-astct", "prolonged-or-repetitive"),
        ("motor-weakness-astct", "focal-deep-weakness"),
        ("cerebral-edema-astct", "focal-local-edema"), ("cerebral-edema-astct", "diffuse-edema"),
        ("cerebral-edema-astct", "decerebrate-or-decorticate-posturing"), ("cerebral-edema-astct", "cranial-nerve-vi-palsy"),
        ("cerebral-edema-astct", "papilledema"), ("cerebral-edema-astct", "cushings-triad"),
    ],
)
def test_icans_answers(fhir, build, code, answer):
    timeline = build(fhir.bundle(fhir.patient(), _answer(fhir, "a1", code, answer)))
    (fact,) = timeline.coded[code]
    assert (fact.value, fact.time, fact.end, fact.ongoing, fact.source) == (answer, UTC_AT, None, False, "Observation/a1")
    assert not [n for n in timeline.notes if n.severity == "warning"]


def test_an_answer_of_another_question_is_unknown_and_warned(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _answer(fhir, "a1", "loc-astct", "papilledema")))
    (fact,) = timeline.coded["loc-astct"]
    assert fact.value is None
    (note,) = _notes(timeline, "ignored-code")
    assert (note.severity, note.location) == ("warning", "Bundle.entry[1].resource")


# --- findings as Observations -------------------------------------------------------------------------------

def _finding_obs(fhir, oid: str = "f1", code: str = SEIZURE, **value) -> dict:
    obs = fhir.observation(oid, None, AT, code=fhir.codeable(fhir.SNOMED, code, display="Seizure"))
    obs.update(value)
    return obs


@pytest.mark.parametrize("value", [{}, {"valueBoolean": True}, {"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "52101004"}]}},
                                   {"valueCodeableConcept": {"text": "Yes"}}])
def test_observation_coded_as_a_finding_is_a_finding(fhir, build, value):
    timeline = build(fhir.bundle(fhir.patient(), _finding_obs(fhir, **value)))
    (fact,) = timeline.findings["seizure"]
    assert fact == ClinicalFinding("seizure", UTC_AT, UTC_AT, None, None, "Seizure", "Observation/f1")
    assert timeline.finding_times["seizure"] == (UTC_AT,)
    assert "Observation/f1" in timeline.input_references


@pytest.mark.parametrize("value", [{"valueBoolean": False}, {"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "2667000"}]}},
                                   {"valueCodeableConcept": {"text": "not present"}}])
def test_finding_recorded_as_absent_is_no_finding(fhir, build, value):
    timeline = build(fhir.bundle(fhir.patient(), _finding_obs(fhir, **value)))
    assert timeline.findings == {}
    (note,) = _notes(timeline, "dropped-value")
    assert (note.severity, note.message) == ("information", "seizure: recorded as absent")


@pytest.mark.parametrize("value", [{"valueInteger": 0}, {"valueCodeableConcept": {"text": "see note"}}])
def test_finding_with_a_value_that_says_neither_is_warned_and_not_used(fhir, build, value):
    timeline = build(fhir.bundle(fhir.patient(), _finding_obs(fhir, **value)))
    assert timeline.findings == {}
    (note,) = _notes(timeline, "ignored-code")
    assert (note.severity, note.location) == ("warning", "Bundle.entry[1].resource")


def test_finding_not_assessed_is_no_finding(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _finding_obs(fhir, dataAbsentReason={"text": "not examined"})))
    assert timeline.findings == {}
    (note,) = _notes(timeline, "dropped-value")
    assert note.message == "seizure: not assessed (not examined)"


def test_finding_observation_over_a_period(fhir, build):
    obs = fhir.observation("f1", None, None, code=fhir.codeable(fhir.SNOMED, CEREBRAL_EDEMA),
                           period={"start": "2026-03-05T06:00:00+01:00"})
    (fact,) = build(fhir.bundle(fhir.patient(), obs)).findings["cerebral-edema"]
    assert (fact.time, fact.end) == (datetime(2026, 3, 5, 5, 0, tzinfo=timezone.utc), None)  # ongoing


def test_excluded_findings_are_concepts_of_their_own(fhir, build):
    """Tremor, myoclonus and intracranial haemorrhage never grade ICANS: read apart from ICANS findings."""
    body = fhir.bundle(fhir.patient(), _finding_obs(fhir, "t", TREMOR), _condition(fhir, "m", "17450006"), _condition(fhir, "h", "1386000"))
    assert sorted(build(body).findings) == ["intracranial-hemorrhage", "myoclonus", "tremor"]


# --- Conditions ---------------------------------------------------------------------------------------------------

def test_condition_onset_and_abatement(fhir, build):
    body = fhir.bundle(fhir.patient(), _condition(fhir, onset="2026-03-04T22:10:00+01:00", abatement="2026-03-04T22:14:00+01:00",
                                                  clinical="resolved"))
    timeline = build(body)
    (fact,) = timeline.findings["seizure"]
    assert fact == ClinicalFinding("seizure", datetime(2026, 3, 4, 21, 10, tzinfo=timezone.utc), datetime(2026, 3, 4, 21, 14, tzinfo=timezone.utc),
                           "resolved", "confirmed", "Seizure", "Condition/c1")
    assert "Condition/c1" in timeline.input_references


def test_active_condition_has_no_end(fhir, build):
    (fact,) = build(fhir.bundle(fhir.patient(), _condition(fhir, clinical=None, verification=None))).findings["seizure"]
    assert (fact.time, fact.end, fact.clinical_status, fact.verification_status) == (UTC_AT, None, None, None)


def test_condition_dates(fhir, build):
    """A date-only onset starts at 00:00 in the evaluation time's offset; a date-only abatement lasts the day."""
    (fact,) = build(fhir.bundle(fhir.patient(), _condition(fhir, onset="2026-03-03", abatement="2026-03-04"))).findings["seizure"]
    assert fact.date_only is True
    assert fact.time.astimezone(CET) == datetime(2026, 3, 3, tzinfo=CET)
    assert fact.end.astimezone(CET) == datetime(2026, 3, 4, 23, 59, 59, 999999, tzinfo=CET)


def test_condition_onset_period_and_recorded_date(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        _condition(fhir, "c1", onset=None, onsetPeriod={"start": "2026-03-05T06:00:00+01:00", "end": "2026-03-05T07:00:00+01:00"}),
        _condition(fhir, "c2", CEREBRAL_EDEMA, onset=None, recordedDate="2026-03-05T09:30:00+01:00"),
    )
    timeline = build(body)
    assert [(f.time, f.end) for f in timeline.findings["seizure"]] == [(datetime(2026, 3, 5, 5, 0, tzinfo=timezone.utc), None)]
    assert [f.time for f in timeline.findings["cerebral-edema"]] == [datetime(2026, 3, 5, 8, 30, tzinfo=timezone.utc)]


def test_condition_without_any_time_dropped(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _condition(fhir, onset=None)))
    assert timeline.findings == {}
    (note,) = _notes(timeline, "dropped-time")
    assert (note.severity, note.location) == ("warning", "Bundle.entry[1].resource")


def test_condition_abating_before_its_onset_used_at_its_onset(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _condition(fhir, abatement="2026-03-05T07:00:00+01:00")))
    (fact,) = timeline.findings["seizure"]
    assert fact.end == fact.time == UTC_AT
    (note,) = _notes(timeline, "flagged-time")
    assert note.location == "Bundle.entry[1].resource.abatementDateTime"
    assert "before it starts" in note.message


def test_condition_after_the_evaluation_time_is_future(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _condition(fhir, onset="2026-03-05T13:00:00+01:00")))
    assert timeline.findings == {}
    assert _notes(timeline, "dropped-future")[0].count == 1


@pytest.mark.parametrize("status", ["refuted", "entered-in-error"])
def test_refuted_or_entered_in_error_condition_ignored(fhir, build, status):
    timeline = build(fhir.bundle(fhir.patient(), _condition(fhir, verification=status), _condition(fhir, "c2", verification=status)))
    assert timeline.findings == {}
    (note,) = _notes(timeline, "ignored-status")
    assert (note.severity, note.count) == ("information", 2)
    assert note.message == f"Condition verificationStatus {status!r} ignored"


@pytest.mark.parametrize("status", ["unconfirmed", "provisional", "differential"])
def test_unconfirmed_condition_flagged_and_not_used(fhir, build, status):
    timeline = build(fhir.bundle(fhir.patient(), _condition(fhir, verification=status)))
    assert timeline.findings == {}
    (note,) = _notes(timeline, "flagged-status")
    assert (note.severity, note.location) == ("warning", "Bundle.entry[1].resource.verificationStatus")
    assert note.message == f"Condition (seizure) with verificationStatus {status!r} not used: check it"


@pytest.mark.parametrize("status", ["active", "recurrence", "relapse", "inactive", "remission", "resolved"])
def test_clinical_statuses_are_kept(fhir, build, status):
    (fact,) = build(fhir.bundle(fhir.patient(), _condition(fhir, clinical=status))).findings["seizure"]
    assert fact.clinical_status == status


def test_unknown_clinical_status_flagged(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _condition(fhir, clinical="chronic")))
    assert timeline.findings == {}
    (note,) = _notes(timeline, "flagged-status")
    assert note.location == "Bundle.entry[1].resource.clinicalStatus"


def test_condition_about_another_patient_rejected(fhir, build):
    other = _condition(fhir, subject={"reference": "Patient/p2"})
    with pytest.raises(InputError) as info:
        build(fhir.bundle(fhir.patient(), other))
    assert info.value.issues[0].expression == "Bundle.entry[1].resource.subject.reference"


def test_duplicate_condition_first_used(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _condition(fhir), _condition(fhir, abatement="2026-03-05T09:00:00+01:00")))
    assert [f.end for f in timeline.findings["seizure"]] == [None]
    assert [n.location for n in _notes(timeline, "flagged-duplicate")] == ["Bundle.entry[2].resource"]


# --- Procedures -----------------------------------------------------------------------------------------------------

def test_procedure_performed_period(fhir, build):
    body = fhir.bundle(fhir.patient(), _procedure(fhir, performedPeriod={"start": "2026-03-05T09:00:00+01:00", "end": "2026-03-05T09:40:00+01:00"}))
    timeline = build(body)
    (fact,) = timeline.procedures["electroencephalography"]
    assert fact == ProcedurePerformed("electroencephalography", datetime(2026, 3, 5, 8, 0, tzinfo=timezone.utc),
                                      datetime(2026, 3, 5, 8, 40, tzinfo=timezone.utc), "completed", "EEG", "Procedure/pr1")
    assert timeline.procedure_times["electroencephalography"] == (fact.time,)
    assert "Procedure/pr1" in timeline.input_references


def test_procedure_at_a_point_in_time_and_still_running(fhir, build):
    body = fhir.bundle(
        fhir.patient(),
        _procedure(fhir, "done"),
        _procedure(fhir, "running", status="in-progress", performedPeriod={"start": "2026-03-05T10:00:00+01:00"}),
        _procedure(fhir, "open", performedPeriod={"start": "2026-03-05T11:00:00+01:00"}),
    )
    by_id = {f.source: f for f in build(body).procedures["electroencephalography"]}
    assert by_id["Procedure/done"].end == by_id["Procedure/done"].time == UTC_AT
    assert by_id["Procedure/running"].end is None
    assert by_id["Procedure/open"].end == by_id["Procedure/open"].time  # completed: only its start is known


@pytest.mark.parametrize("status, code", [("not-done", "ignored-status"), ("entered-in-error", "ignored-status"),
                                          ("preparation", "ignored-status"), ("on-hold", "flagged-status"), ("unknown", "flagged-status")])
def test_procedure_statuses(fhir, build, status, code):
    timeline = build(fhir.bundle(fhir.patient(), _procedure(fhir, status=status)))
    assert timeline.procedures == {}
    (note,) = _notes(timeline, code)
    assert status in note.message


def test_procedure_without_a_known_code_or_time(fhir, build):
    no_time = _procedure(fhir, "pr2")
    del no_time["performedDateTime"]
    timeline = build(fhir.bundle(fhir.patient(), _procedure(fhir, code="71388002"), no_time))
    assert timeline.procedures == {}
    assert [n.message for n in _notes(timeline, "ignored-code")] == ["code sct|71388002 is not used by the rules"]
    assert [n.message for n in _notes(timeline, "dropped-time")] == ["no performed time"]


# --- dosage route --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "route, expected",
    [
        ({"coding": [{"system": "http://snomed.info/sct", "code": "47625008", "display": "Intravenous route"}]}, "intravenous"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]}, "oral"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "34206005"}]}, "subcutaneous"),
        ({"text": "IV push"}, "intravenous"),
        ({"text": "PO"}, "oral"),
        ({"coding": [{"system": "http://example.org/routes", "code": "x", "display": "s.c."}]}, "subcutaneous"),
        ({"text": "intrathecal"}, None),  # not a route concepts.yaml knows: kept as unknown
        (None, None),
    ],
)
def test_dosage_route(fhir, build, route, expected):
    mad = fhir.administration("a1", AT, rxnorm="3264", dose=fhir.quantity(10, "mg", "mg"))
    if route is not None:
        mad["dosage"]["route"] = route
    timeline = build(fhir.bundle(fhir.patient(), mad))
    (fact,) = timeline.administrations["dexamethasone"]
    assert (fact.route, fact.dose_mg) == (expected, 10.0)
    assert not timeline.notes


# --- reference ranges ---------------------------------------------------------------------------------------

def _lab(fhir, low=None, high=None, value=(12.1, "g/dL", "g/dL")) -> dict:
    obs = fhir.observation("hb", "718-7", AT, fhir.quantity(*value))
    reference_range = {}
    if low is not None:
        reference_range["low"] = fhir.quantity(*low)
    if high is not None:
        reference_range["high"] = fhir.quantity(*high)
    obs["referenceRange"] = [reference_range, {"low": fhir.quantity(1, "g/dL", "g/dL")}]  # only the first is read
    return obs


def test_reference_range_in_another_unit_is_converted(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _lab(fhir, (135, "g/L", "g/L"), (175, "g/L", "g/L"))))
    (fact,) = timeline.measurements["hemoglobin"]
    assert (fact.value, fact.unit) == (12.1, "g/dL")
    assert (fact.reference_low, fact.reference_high) == (pytest.approx(13.5), pytest.approx(17.5))
    assert not timeline.notes


def test_reference_range_with_one_bound(fhir, build):
    (fact,) = build(fhir.bundle(fhir.patient(), _lab(fhir, high=(17.5, "g/dL", "g/dL")))).measurements["hemoglobin"]
    assert (fact.reference_low, fact.reference_high) == (None, 17.5)


def test_reference_range_absent(fhir, build):
    (fact,) = build(fhir.bundle(fhir.patient(), fhir.observation("hb", "718-7", AT, fhir.quantity(12.1, "g/dL", "g/dL")))).measurements["hemoglobin"]
    assert (fact.reference_low, fact.reference_high) == (None, None)


def test_reference_range_in_an_unknown_unit_is_left_out_and_noted(fhir, build):
    timeline = build(fhir.bundle(fhir.patient(), _lab(fhir, (13.5, "g/dL", "g/dL"), (9, "furlong", "furlong"))))
    (fact,) = timeline.measurements["hemoglobin"]
    assert (fact.reference_low, fact.reference_high) == (13.5, None)
    (note,) = _notes(timeline, "dropped-unit")
    assert (note.severity, note.location) == ("information", "Bundle.entry[1].resource.referenceRange[0].high")


def test_reference_range_of_a_component(fhir, build):
    systolic = fhir.component("8480-6", fhir.quantity(118, "mmHg", "mm[Hg]"))
    systolic["referenceRange"] = [{"low": fhir.quantity(12, "kPa", "kPa")}]
    bp = fhir.observation("bp", "85354-9", AT, components=[systolic])
    (fact,) = build(fhir.bundle(fhir.patient(), bp)).measurements["systolic-bp"]
    assert fact.reference_low == pytest.approx(90.007, abs=1e-3)


# --- the Timeline index -------------------------------------------------------------------------------------

def test_timeline_indexes_new_facts_by_concept_in_time_order(timeline_of):
    late, early = UTC_AT + timedelta(hours=2), UTC_AT
    facts = [
        ClinicalFinding("seizure", late, None, "active", None, "Seizure", "Condition/b"),
        ClinicalFinding("seizure", early, early, None, None, "Seizure", "Observation/a"),
        ProcedurePerformed("electroencephalography", early, early, "completed", "EEG", "Procedure/p"),
        NotPerformed("ice-total", late, "unarousable", "not-performed", "Observation/n"),
        Measurement("ice-total", 3.0, "{score}", early, "Observation/i", "3 {score}"),
    ]
    timeline = timeline_of(AS_OF, facts)
    assert [f.source for f in timeline.findings["seizure"]] == ["Observation/a", "Condition/b"]
    assert timeline.finding_times["seizure"] == (early, late)
    assert timeline.procedure_times["electroencephalography"] == (early,)
    assert timeline.not_performed_times["ice-total"] == (late,)
    assert timeline.measurement_times["ice-total"] == (early,)


def test_timeline_without_new_facts_has_empty_indexes(timeline_of):
    timeline = timeline_of(AS_OF, [])
    assert (timeline.findings, timeline.procedures, timeline.not_performed) == ({}, {}, {})
    direct = Timeline(AS_OF, CET, None, None, False, None, {}, {}, {}, {}, {})
    assert (direct.findings, direct.finding_times, direct.not_performed_times) == ({}, {}, {})


def test_a_bundle_with_every_new_shape(fhir, build):
    """One request, every shape: each fact indexed, no warning."""
    mad = fhir.administration("dex", AT, rxnorm="3264", dose=fhir.quantity(10, "mg", "mg"))
    mad["dosage"]["route"] = {"text": "IV"}
    body = json.loads(fhir.bundle(fhir.patient(), _score(fhir, "ice", "ice-total", integer=2), _answer(fhir, "loc", "loc-astct", "awakens-to-voice"),
                                  _condition(fhir), _procedure(fhir), mad))
    timeline = build(json.dumps(body).encode())
    assert [f.value for f in timeline.measurements["ice-total"]] == [2.0]
    assert [f.value for f in timeline.coded["loc-astct"]] == ["awakens-to-voice"]
    assert list(timeline.findings) == ["seizure"] and list(timeline.procedures) == ["electroencephalography"]
    assert timeline.administrations["dexamethasone"][0].route == "intravenous"
    assert not [n for n in timeline.notes if n.severity == "warning"]
