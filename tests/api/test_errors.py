"""Every bad input of the HTTP contract: its 4xx, an OperationOutcome with the stable code and location.

After every test the service must still answer GET /healthz (autouse fixture below).
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable

import orjson
import pytest

AS_OF = "2026-03-07T12:00:00+01:00"


@pytest.fixture(autouse=True)
def service_still_answers(client):
    yield
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json()["status"] == "ok"
    assert health.get_json()["rulesLoaded"] is True


def _index_of(bundle: dict, resource_type: str, loinc: str | None = None) -> int:
    for index, entry in enumerate(bundle["entry"]):
        resource = entry["resource"]
        if resource["resourceType"] != resource_type:
            continue
        if loinc is None or resource["code"]["coding"][0]["code"] == loinc:
            return index
    raise AssertionError(f"no {resource_type} {loinc or ''} in the bundle")


def _outcome(response) -> dict:
    return orjson.loads(response.get_data())


def _input_notes(response) -> list[dict]:
    """Issues of the OperationOutcome entry of a FHIR Bundle response."""
    assert response.status_code == 200, response.get_data(as_text=True)[:600]
    bundle = orjson.loads(response.get_data())
    outcomes = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "OperationOutcome"]
    assert len(outcomes) == 1
    return outcomes[0]["issue"]


def _note_code(issue: dict) -> str | None:
    coding = issue["details"].get("coding")
    return coding[0]["code"] if coding else None


# --------------------------------------------------------------------------------------------------
# 400: not JSON, not a Bundle
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"{not json", b'{"resourceType": "Bundle",', b"", b"\xff\xfe\x00garbage", b"{'a': 1}"])
def test_malformed_json(post_evaluate, outcome_issue, body):
    outcome_issue(post_evaluate(body), 400, "input-not-json")


@pytest.mark.parametrize("body, offset", [(b'{"a": 1} x', 10), (b'{"resourceType": "Bundle",}', 26), (b"{not json", 1), (b"\xff", 0)])
def test_malformed_json_gives_the_byte_offset(post_evaluate, outcome_issue, body, offset):
    issue = outcome_issue(post_evaluate(body), 400, "input-not-json")
    assert f"(byte {offset})" in issue["details"]["text"]
    assert issue["diagnostics"] == f"byte {offset}"


def test_truncated_json_has_no_offset_to_give(post_evaluate, outcome_issue):
    issue = outcome_issue(post_evaluate(b'{"resourceType": "Bundle",'), 400, "input-not-json")
    assert "truncated" in issue["details"]["text"]
    assert not issue["diagnostics"].startswith("byte ")


def test_malformed_cds_hooks_request_gives_the_byte_offset(client, outcome_issue):
    response = client.post("/cds-services/car-t-toxicity", data=b'{"hook": "patient-view",,}', content_type="application/json")
    issue = outcome_issue(response, 400, "input-not-json")
    assert issue["diagnostics"] == "byte 24"


def test_json_array(post_evaluate, outcome_issue, small_bundle):
    issue = outcome_issue(post_evaluate([small_bundle]), 400, "input-not-bundle")
    assert issue["expression"][0].startswith("Bundle")


@pytest.mark.parametrize("body", ["42", '"Bundle"', "null", "true"])
def test_json_scalar(post_evaluate, outcome_issue, body):
    outcome_issue(post_evaluate(body), 400, "input-not-bundle")


def test_lone_observation(post_evaluate, outcome_issue, bundle_factory):
    observation = bundle_factory.temperature("obs-1", 38.5, "2026-03-07T10:00:00+01:00")
    outcome_issue(post_evaluate(observation), 400, "input-not-bundle", "Bundle.resourceType")


def test_object_without_resource_type(post_evaluate, outcome_issue):
    outcome_issue(post_evaluate({"type": "collection", "entry": []}), 400, "input-not-bundle", "Bundle.resourceType")


@pytest.mark.parametrize("bundle_type", ["document", "message", "history", "transaction-response"])
def test_bundle_type_not_accepted(post_evaluate, outcome_issue, small_bundle, bundle_type):
    small_bundle["type"] = bundle_type
    outcome_issue(post_evaluate(small_bundle), 400, "input-not-bundle", "Bundle.type")


# --------------------------------------------------------------------------------------------------
# 422: wrong value types, only where the rules read
# --------------------------------------------------------------------------------------------------
def test_wrong_value_type_in_entry_3(post_evaluate, outcome_issue, bundle_factory):
    f = bundle_factory
    bundle = f.bundle(
        f.patient(),
        f.cart_infusion("mad-cart", "2026-03-02T10:00:00+01:00"),
        f.temperature("obs-t1", 38.2, "2026-03-07T08:00:00+01:00"),
        f.temperature("obs-t2", "38.5", "2026-03-07T10:00:00+01:00"),
    )
    issue = outcome_issue(post_evaluate(bundle), 422, "input-wrong-type", "Bundle.entry[3].resource.valueQuantity.value")
    assert issue["code"] == "invalid"


def test_wrong_value_type_in_the_generated_patient(post_evaluate, outcome_issue, small_bundle):
    index = _index_of(small_bundle, "Observation", "8310-5")
    small_bundle["entry"][index]["resource"]["valueQuantity"]["value"] = "38.5"
    outcome_issue(post_evaluate(small_bundle), 422, "input-wrong-type", f"Bundle.entry[{index}].resource.valueQuantity.value")


def test_wrong_type_in_a_component(post_evaluate, outcome_issue, small_bundle):
    index = _index_of(small_bundle, "Observation", "85354-9")
    small_bundle["entry"][index]["resource"]["component"][0]["valueQuantity"]["value"] = {"v": 80}
    outcome_issue(post_evaluate(small_bundle), 422, "input-wrong-type",
                  f"Bundle.entry[{index}].resource.component[0].valueQuantity.value")


def test_wrong_type_in_medication_administration_dose(post_evaluate, outcome_issue, small_bundle):
    index = _index_of(small_bundle, "MedicationAdministration")
    small_bundle["entry"][index]["resource"]["dosage"]["dose"]["value"] = "fifty-nine"
    outcome_issue(post_evaluate(small_bundle), 422, "input-wrong-type", f"Bundle.entry[{index}].resource.dosage.dose.value")


def test_wrong_type_in_a_resource_type_the_rules_do_not_use_is_ignored(post_evaluate, small_bundle):
    """A MedicationStatement's dosage is a list (the MedicationAdministration one is an object); an Encounter
    with fields of the 'wrong' shape: neither may fail the request."""
    small_bundle["entry"].insert(3, {"resource": {
        "resourceType": "MedicationStatement", "id": "ms-1", "status": "active",
        "medicationCodeableConcept": {"text": "aciclovir"}, "subject": {"reference": "Patient/pat-bench"},
        "dosage": [{"text": "800 mg PO daily", "doseAndRate": [{"doseQuantity": {"value": 800, "unit": "mg"}}]}],
        "effectiveDateTime": 20260302,
    }})
    small_bundle["entry"].insert(4, {"resource": {
        "resourceType": "Encounter", "id": "enc-odd", "status": 7, "class": [1, 2, 3],
        "subject": "Patient/pat-bench", "code": "not-a-codeable-concept", "valueQuantity": {"value": "NaN"},
        "period": {"start": False}, "component": {"odd": True},
    }})
    response = post_evaluate(small_bundle, _format="fhir")
    assert response.status_code == 200, response.get_data(as_text=True)[:600]
    ignored = [i for i in _input_notes(response) if _note_code(i) == "ignored-resource-type"]
    texts = " ".join(i["details"]["text"] for i in ignored)
    assert "MedicationStatement" in texts
    assert "Encounter" in texts
    bundle = orjson.loads(response.get_data())
    ra = bundle["entry"][0]["resource"]
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "grade-2"
    # The cards answer of the same request works too.
    cards = _outcome(post_evaluate(small_bundle))["cards"]
    # CRS grade 2, neutropenia grade 4, early ICAHT grade 1 so far, ICANS grade 1, > 35 mg dexamethasone-equivalent
    assert [c["indicator"] for c in cards] == ["warning", "critical", "warning", "warning", "warning"]


# --------------------------------------------------------------------------------------------------
# 422: more than one patient
# --------------------------------------------------------------------------------------------------
def test_two_patients(post_evaluate, outcome_issue, small_bundle, bundle_factory):
    small_bundle["entry"].append({"resource": bundle_factory.patient("someone-else")})
    issue = outcome_issue(post_evaluate(small_bundle), 422, "input-multiple-patients")
    assert issue["expression"] == [f"Bundle.entry[{len(small_bundle['entry']) - 1}].resource.id"]


def test_observation_about_another_patient(post_evaluate, outcome_issue, small_bundle):
    index = _index_of(small_bundle, "Observation", "8310-5")
    small_bundle["entry"][index]["resource"]["subject"] = {"reference": "Patient/intruder"}
    outcome_issue(post_evaluate(small_bundle), 422, "input-multiple-patients", f"Bundle.entry[{index}].resource.subject.reference")


def test_same_patient_by_absolute_reference_is_one_patient(post_evaluate, small_bundle):
    index = _index_of(small_bundle, "Observation", "8310-5")
    small_bundle["entry"][index]["resource"]["subject"] = {"reference": "https://ehr.example.org/fhir/Patient/pat-bench"}
    assert post_evaluate(small_bundle).status_code == 200


# --------------------------------------------------------------------------------------------------
# 400: parameters
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["2026-03-07T12:00:00", "2026-03-07", "yesterday", "2026-13-07T12:00:00+01:00", ""])
def test_as_of_without_offset_or_malformed(post_evaluate, outcome_issue, small_bundle, value):
    outcome_issue(post_evaluate(small_bundle, asOf=value), 400, "input-bad-parameter", "asOf")


def test_unknown_guideline(post_evaluate, outcome_issue, small_bundle):
    issue = outcome_issue(post_evaluate(small_bundle, guideline="NCCN-2099"), 400, "input-bad-parameter", "guideline")
    assert "seed-S004" in issue["details"]["text"] and "ASCO-2021" in issue["details"]["text"]


def test_bad_validate_value(post_evaluate, outcome_issue, small_bundle):
    outcome_issue(post_evaluate(small_bundle, validate="bogus"), 400, "input-bad-parameter", "validate")


@pytest.mark.parametrize("value", ["next tuesday", "2026-03-02T10:00:00", "2026-02-30"])
def test_bad_infusion_date(post_evaluate, outcome_issue, small_bundle, value):
    outcome_issue(post_evaluate(small_bundle, infusionDate=value), 400, "input-bad-parameter", "infusionDate")


# --------------------------------------------------------------------------------------------------
# 406, 413, 415
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded", "application/fhir+xml"])
def test_unsupported_content_type(post_evaluate, outcome_issue, small_bundle, content_type):
    outcome_issue(post_evaluate(small_bundle, content_type=content_type), 415, "input-unsupported-media-type")


def test_missing_content_type(client, outcome_issue, small_bundle):
    response = client.post(f"/evaluate?asOf={AS_OF.replace('+', '%2B')}", data=orjson.dumps(small_bundle))
    outcome_issue(response, 415, "input-unsupported-media-type")


def test_json_content_type_with_charset_is_accepted(post_evaluate, small_bundle):
    assert post_evaluate(small_bundle, content_type="application/fhir+json; charset=utf-8").status_code == 200
    assert post_evaluate(small_bundle, content_type="application/json").status_code == 200


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "application/fhir+xml", "image/png"])
def test_accept_not_servable(post_evaluate, outcome_issue, small_bundle, accept):
    outcome_issue(post_evaluate(small_bundle, headers={"Accept": accept}), 406, "input-not-acceptable")


def test_accept_with_a_servable_alternative(post_evaluate, small_bundle):
    response = post_evaluate(small_bundle, headers={"Accept": "text/html;q=1.0, application/fhir+json;q=0.5"})
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+json"
    assert orjson.loads(response.get_data())["resourceType"] == "Bundle"


def test_unknown_format(post_evaluate, outcome_issue, small_bundle):
    outcome_issue(post_evaluate(small_bundle, _format="xml"), 406, "input-not-acceptable", "_format")


def test_body_above_the_limit(app_factory, post_evaluate, outcome_issue, small_bundle, bundle_factory):
    small_app = app_factory(max_body_bytes=1000)
    small_client = small_app.test_client()
    big = post_evaluate(small_bundle, test_client=small_client)
    issue = outcome_issue(big, 413, "input-body-too-large")
    assert "1000" in issue["details"]["text"]
    # A body under the limit is evaluated by the same app.
    tiny = bundle_factory.bundle(bundle_factory.patient())
    assert len(json.dumps(tiny)) < 1000
    ok = post_evaluate(tiny, test_client=small_client)
    assert ok.status_code == 200, ok.get_data(as_text=True)[:400]
    assert small_client.get("/healthz").status_code == 200


def _post_chunked(test_client, body: bytes, as_of: str = AS_OF):
    """A chunked request as a server that decodes the chunks hands it over: no CONTENT_LENGTH, the input
    terminated by the server (gunicorn sets wsgi.input_terminated)."""
    return test_client.post(f"/evaluate?asOf={as_of.replace('+', '%2B')}", input_stream=io.BytesIO(body),
                            content_type="application/fhir+json", headers={"Transfer-Encoding": "chunked"},
                            environ_overrides={"wsgi.input_terminated": True})


def test_chunked_body_above_the_limit(app_factory, outcome_issue, bundle_factory):
    """werkzeug alone would cut the body at the limit and evaluate the truncated JSON (400 or even 200)."""
    small_client = app_factory(max_body_bytes=1000).test_client()
    body = json.dumps(bundle_factory.febrile_patient()).encode()
    assert len(body) > 1000
    issue = outcome_issue(_post_chunked(small_client, body), 413, "input-body-too-large")
    assert "1000" in issue["details"]["text"]
    # A body just above the limit, and one whose first 1000 bytes are valid JSON on their own.
    outcome_issue(_post_chunked(small_client, body[:1001]), 413, "input-body-too-large")
    padded = body + b" " * 1000
    outcome_issue(_post_chunked(small_client, padded), 413, "input-body-too-large")


def test_chunked_body_within_the_limit_is_evaluated(app_factory, bundle_factory):
    body = json.dumps(bundle_factory.febrile_patient()).encode()
    exact_client = app_factory(max_body_bytes=len(body)).test_client()
    response = _post_chunked(exact_client, body, as_of="2026-03-04T12:00:00+01:00")  # the fever of day 2: grade 1
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    # CRS grade 1; ICANS cannot be assessed (no neurological assessment)
    assert [card["indicator"] for card in response.get_json()["cards"]] == ["warning", "info"]


def test_content_length_body_exactly_at_the_limit_is_evaluated(app_factory, post_evaluate, outcome_issue, bundle_factory):
    body = json.dumps(bundle_factory.febrile_patient()).encode()
    assert post_evaluate(body, test_client=app_factory(max_body_bytes=len(body)).test_client()).status_code == 200
    outcome_issue(post_evaluate(body, test_client=app_factory(max_body_bytes=len(body) - 1).test_client()), 413, "input-body-too-large")


@pytest.mark.parametrize("verdict, status, code", [("too-large", 413, "input-body-too-large"), ("timed-out", 408, "input-timeout")])
def test_body_cut_off_by_the_server_front(client, outcome_issue, verdict, status, code):
    """service.server stops reading a body past the limit or the deadline and tells the app in the environ."""
    response = client.post("/evaluate", data=b"", content_type="application/fhir+json",
                           environ_overrides={"cartox.body_verdict": verdict})
    issue = outcome_issue(response, status, code)
    if status == 408:
        assert issue["code"] == "timeout"
        assert "30 s (CARTOX_BODY_TIMEOUT_SECONDS)" in issue["details"]["text"]


# --------------------------------------------------------------------------------------------------
# 404, 405
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/nope", "/evaluate/extra", "/cds-services/unknown-service", "/fhir/Patient/1"])
def test_unknown_path(client, outcome_issue, path):
    outcome_issue(client.get(path), 404, "not-found")


def test_unknown_cds_service_by_post(client, outcome_issue):
    outcome_issue(client.post("/cds-services/unknown-service", json={"hook": "patient-view"}), 404, "not-found")


@pytest.mark.parametrize("method, path", [
    ("get", "/cds-services/car-t-toxicity"),
    ("put", "/evaluate"),
    ("delete", "/evaluate"),
    ("post", "/healthz"),
    ("post", "/cds-services"),
])
def test_method_not_allowed(client, outcome_issue, method, path):
    outcome_issue(getattr(client, method)(path), 405, "method-not-allowed")


def test_method_not_allowed_says_which_are(client):
    allowed = {method.strip() for method in client.delete("/healthz").headers["Allow"].split(",")}
    assert allowed == {"GET", "HEAD", "OPTIONS"}


# --------------------------------------------------------------------------------------------------
# Any HTTP error raised inside the app (401 will come from authentication) is an OperationOutcome
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status, code, issue_type", [
    (400, "input-bad-request", "invalid"),
    (401, "unauthorized", "login"),
    (403, "input-bad-request", "invalid"),
    (408, "input-timeout", "timeout"),
    (429, "input-bad-request", "invalid"),
    (501, "internal-error", "exception"),
])
def test_http_errors_raised_in_a_view(app_factory, outcome_issue, status, code, issue_type):
    from flask import abort

    app = app_factory()
    app.add_url_rule("/raises", "raises", lambda: abort(status))
    issue = outcome_issue(app.test_client().get("/raises"), status, code)
    assert issue["code"] == issue_type


def test_401_keeps_its_authentication_challenge(app_factory, outcome_issue):
    from werkzeug.datastructures import WWWAuthenticate
    from werkzeug.exceptions import Unauthorized

    def view():
        raise Unauthorized(www_authenticate=WWWAuthenticate("bearer", {"realm": "cartox"}))

    app = app_factory()
    app.add_url_rule("/protected", "protected", view)
    response = app.test_client().get("/protected")
    outcome_issue(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer realm=cartox"


# --------------------------------------------------------------------------------------------------
# Security headers on every answer (success and error), no server banner
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path, data, status", [
    ("get", "/healthz", None, 200),
    ("get", "/cds-services", None, 200),
    ("post", "/evaluate", b"{not json", 400),
    ("get", "/nope", None, 404),
    ("delete", "/evaluate", None, 405),
    ("post", "/evaluate", b"<Bundle/>", 415),
])
def test_security_headers(client, method, path, data, status):
    content_type = "application/xml" if data == b"<Bundle/>" else "application/fhir+json"
    response = getattr(client, method)(path, data=data, content_type=content_type)
    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Server" not in response.headers


def test_security_headers_on_an_evaluation(post_evaluate, small_bundle):
    response = post_evaluate(small_bundle, _format="fhir")
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------------------------------
# Implausible and unusable values: dropped and reported, never fatal
# --------------------------------------------------------------------------------------------------
def test_implausible_temperature_is_dropped_and_reported(post_evaluate, small_bundle, card_text):
    index = _index_of(small_bundle, "Observation", "8310-5")
    small_bundle["entry"][index]["resource"]["valueQuantity"]["value"] = 450
    response = post_evaluate(small_bundle, _format="fhir")
    dropped = [i for i in _input_notes(response) if _note_code(i) == "dropped-implausible"]
    assert len(dropped) == 1
    assert dropped[0]["severity"] == "warning"
    assert dropped[0]["expression"][0].startswith(f"Bundle.entry[{index}].resource")
    assert "450" in dropped[0]["details"]["text"]
    bundle = orjson.loads(response.get_data())
    ra = bundle["entry"][0]["resource"]
    observation_id = small_bundle["entry"][index]["resource"]["id"]
    assert {"reference": f"Observation/{observation_id}"} not in ra.get("basis", [])
    # The other temperatures still grade the episode.
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "grade-2"
    # The card counts the dropped value and points to the OperationOutcome; locations stay off the card.
    card = _outcome(post_evaluate(small_bundle))["cards"][0]
    assert "1 input item was dropped or flagged (see the OperationOutcome)." in card_text(card["detail"])
    assert "Bundle.entry[" not in card_text(card["detail"])


def test_only_temperature_implausible_gives_not_assessable_never_grade_0(post_evaluate, bundle_factory):
    f = bundle_factory
    bundle = f.bundle(
        f.patient(),
        f.cart_infusion("mad-cart", "2026-03-02T10:00:00+01:00"),
        f.temperature("obs-hot", 450, "2026-03-04T08:00:00+01:00"),
        f.blood_pressure("obs-bp1", 118, 72, "2026-03-04T08:00:00+01:00"),
    )
    response = post_evaluate(bundle, asOf="2026-03-04T12:00:00+01:00", _format="fhir")
    issues = _input_notes(response)
    dropped = [i for i in issues if _note_code(i) == "dropped-implausible"]
    assert [i["expression"][0].startswith("Bundle.entry[2].resource") for i in dropped] == [True]
    ra = orjson.loads(response.get_data())["entry"][0]["resource"]
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "not-assessable"


@pytest.mark.parametrize("mutate, code", [
    (lambda o: o["valueQuantity"].update(unit="furlongs", code="[fur_us]"), "dropped-unit"),
    (lambda o: o.update(effectiveDateTime="2026-03-07T10:00:00"), "dropped-time"),
    (lambda o: o.pop("valueQuantity"), "dropped-value"),
    (lambda o: o.update(status="unknown"), "flagged-status"),
])
def test_unusable_values_are_reported(post_evaluate, small_bundle, mutate: Callable[[dict], Any], code):
    index = _index_of(small_bundle, "Observation", "8310-5")
    mutate(small_bundle["entry"][index]["resource"])
    issues = _input_notes(post_evaluate(small_bundle, _format="fhir"))
    matching = [i for i in issues if _note_code(i) == code]
    assert matching, [(_note_code(i), i["details"]["text"]) for i in issues]
    assert any(i.get("expression", [""])[0].startswith(f"Bundle.entry[{index}].resource") for i in matching)


def test_entered_in_error_is_ignored_with_status_note(post_evaluate, small_bundle):
    index = _index_of(small_bundle, "Observation", "8310-5")
    small_bundle["entry"][index]["resource"]["status"] = "entered-in-error"
    issues = _input_notes(post_evaluate(small_bundle, _format="fhir"))
    status_notes = [i for i in issues if _note_code(i) == "ignored-status"]
    assert status_notes and "entered-in-error" in status_notes[0]["details"]["text"]


def test_future_data_are_dropped(post_evaluate, full_bundle_bytes):
    """The full export runs to day 29: evaluated at AS_OF, later data are reported as dropped-future."""
    response = post_evaluate(full_bundle_bytes, _format="fhir")
    issues = _input_notes(response)
    assert [i["severity"] for i in issues if _note_code(i) == "dropped-future"] == ["information"]


# --------------------------------------------------------------------------------------------------
# Fuzz: mutated variants of a small bundle never give a 500
# --------------------------------------------------------------------------------------------------
DEEP = 3000


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(bundle: dict) -> None:
        target: Any = bundle
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple) -> Callable[[dict], None]:
    def mutate(bundle: dict) -> None:
        target: Any = bundle
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


# Entries of the fuzz bundle (bundle_factory.febrile_patient): 0 Patient, 1 CAR-T MedicationAdministration,
# 2 temperature Observation, 3 blood-pressure Observation.
_T = ("entry", 2, "resource")
_BP = ("entry", 3, "resource")
_MA = ("entry", 1, "resource")
_PAT = ("entry", 0, "resource")

FUZZ: dict[str, Callable[[dict], None]] = {
    "entry-null": _set(("entry",), None),
    "entry-object": _set(("entry",), {"resource": {}}),
    "entry-string": _set(("entry",), "entries"),
    "entry-item-null": _set(("entry", 0), None),
    "entry-item-list": _set(("entry", 0), [1, 2]),
    "resource-null": _set(("entry", 2, "resource"), None),
    "resource-list": _set(("entry", 2, "resource"), []),
    "resource-type-null": _set(_T + ("resourceType",), None),
    "resource-type-number": _set(_T + ("resourceType",), 3),
    "bundle-type-number": _set(("type",), 42),
    "bundle-resource-type-space": _set(("resourceType",), "Bundle "),
    "patient-id-number": _set(_PAT + ("id",), 7),
    "birthdate-number": _set(_PAT + ("birthDate",), 19610314),
    "birthdate-garbage": _set(_PAT + ("birthDate",), "14/03/1961"),
    "deceased-string": _set(_PAT + ("deceasedBoolean",), "yes"),
    "value-null": _set(_T + ("valueQuantity", "value"), None),
    "value-huge": _set(_T + ("valueQuantity", "value"), 1e308),
    "value-negative-huge": _set(_T + ("valueQuantity", "value"), -1e308),
    "value-bigint": _set(_T + ("valueQuantity", "value"), 10**40),
    "value-bool": _set(_T + ("valueQuantity", "value"), True),
    "value-nan": _set(_T + ("valueQuantity", "value"), float("nan")),
    "value-list": _set(_T + ("valueQuantity", "value"), [38.5]),
    "value-integer-bigint": _set(_T + ("valueInteger",), 2**70),
    "unit-unicode": _set(_T + ("valueQuantity",), {"value": 38.5, "unit": "°C 🔥 \u202e", "code": "\u00b0\u0043\u0000"}),
    "unit-system-object": _set(_T + ("valueQuantity", "system"), {"deep": [[["x"]]]}),
    "coding-null-item": _set(_T + ("code", "coding"), [None]),
    "coding-string": _set(_T + ("code", "coding"), "8310-5"),
    "code-unicode": _set(_T + ("code",), {"coding": [{"system": "http://loinc.org", "code": "８３１０-５"}], "text": "体温"}),
    "effective-impossible": _set(_T + ("effectiveDateTime",), "2026-13-45T99:99:99+01:00"),
    "effective-empty": _set(_T + ("effectiveDateTime",), ""),
    "effective-null": _set(_T + ("effectiveDateTime",), None),
    "effective-number": _set(_T + ("effectiveDateTime",), 1772874000),
    "effective-year-0": _set(_T + ("effectiveDateTime",), "0000-01-01T00:00:00+00:00"),
    "effective-year-1": _set(_T + ("effectiveDateTime",), "0001-01-01T00:00:00+14:00"),
    "effective-year-9999": _set(_T + ("effectiveDateTime",), "9999-12-31T23:59:59-12:00"),
    "effective-period-no-offset": _set(_T + ("effectivePeriod",), {"start": "2026-03-04T07:00:00"}),
    "effective-period-string": _set(_T + ("effectivePeriod",), "2026-03-04"),
    "subject-string": _set(_T + ("subject",), "Patient/p1"),
    "subject-empty-reference": _set(_T + ("subject",), {"reference": "Patient/"}),
    "subject-slash": _set(_T + ("subject",), {"reference": "/"}),
    "component-object": _set(_BP + ("component",), {"code": {"text": "systolic"}}),
    "component-value-bool": _set(_BP + ("component", 0, "valueQuantity", "value"), False),
    "component-code-missing": _delete(_BP + ("component", 0, "code")),
    "dose-string": _set(_MA + ("dosage",), {"dose": {"value": "ten", "unit": "mg"}}),
    "dosage-list": _set(_MA + ("dosage",), [{"dose": {"value": 10, "unit": "mg"}}]),
    "medication-text-surrogate": _set(_MA + ("medicationCodeableConcept",), {"text": "axi-cel \ud800"}),
    "medication-reference-loop": _set(_MA, {
        "resourceType": "MedicationAdministration", "id": "mad-loop", "status": "completed",
        "medicationReference": {"reference": "#self"}, "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-03-02T10:00:00+01:00",
        "contained": [{"resourceType": "Medication", "id": "self", "code": None,
                       "contained": [{"resourceType": "Medication", "id": "self"}]}],
    }),
    "ma-period-end-garbage": _set(_MA + ("effectivePeriod",), {"start": "2026-03-02T10:00:00+01:00", "end": "yesterday"}),
    "ma-period-end-before-start": _set(_MA + ("effectivePeriod",), {"start": "2026-03-02T10:00:00+01:00", "end": "2026-03-01T10:00:00+01:00"}),
    "status-number": _set(_T + ("status",), 1),
    "extension-deep-nesting": _set(_T + ("extension",), [{"url": "x", "valueString": "y"}] * 3),  # replaced below
    "very-long-string": _set(_T + ("id",), "x" * 200_000),
    "many-entries": lambda b: b["entry"].extend({"resource": {"resourceType": "Basic", "id": f"b{i}"}} for i in range(3000)),
    "unicode-everywhere": lambda b: b["entry"].append({"resource": {"resourceType": "Observation", "id": "ü-😀", "status": "final",
                                                                    "code": {"text": "温度 ∆ 🚑"}, "subject": {"reference": "Patient/p1"},
                                                                    "effectiveDateTime": "2026-03-04T08:00:00+01:00",
                                                                    "valueString": "𝔣𝔦𝔢𝔟𝔢𝔯"}}),
}


def _fuzz_body(name: str, bundle: dict) -> bytes:
    FUZZ[name](bundle)
    text = json.dumps(bundle, ensure_ascii=True)  # ensure_ascii: a lone surrogate is sent as \ud800
    if name == "extension-deep-nesting":
        nested = "[" * DEEP + "]" * DEEP
        text = text.replace('"extension": [{"url": "x", "valueString": "y"}, {"url": "x", "valueString": "y"}, '
                            '{"url": "x", "valueString": "y"}]', f'"extension": {nested}')
        assert nested in text
    return text.encode("utf-8")


@pytest.mark.parametrize("name", sorted(FUZZ))
@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_fuzzed_bundle_never_gives_500(post_evaluate, bundle_factory, name, strict):
    body = _fuzz_body(name, bundle_factory.febrile_patient())
    params: dict[str, Any] = {"asOf": "2026-03-04T12:00:00+01:00", "_format": "fhir"}
    if strict:
        params["validate"] = "strict"
    response = post_evaluate(body, **params)
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:600])
    document = orjson.loads(response.get_data())
    if response.status_code >= 400:
        assert document["resourceType"] == "OperationOutcome"
        assert document["issue"][0]["details"]["coding"][0]["code"].startswith("input-")
    else:
        assert document["resourceType"] == "Bundle"


@pytest.mark.parametrize("params", [
    {"asOf": "0001-01-01T00:00:00+00:00"},
    {"asOf": "0001-01-01T00:30:00+14:00"},
    {"asOf": "9999-12-31T23:59:59-12:00"},
    {"asOf": "2026-03-04T12:00:00+99:00"},
    {"asOf": "2026-03-04T12:00:00+01:00", "infusionDate": "0001-01-01"},
    {"asOf": "2026-03-04T12:00:00+01:00", "infusionDate": "9999-12-31"},
    {"asOf": "2026-03-04T12:00:00+01:00", "guideline": "seed-S004\u0000"},
    {"asOf": "2026-03-04T12:00:00+01:00", "_format": "😀"},
    {"asOf": "२०२६-०३-०४T12:00:00+01:00"},
], ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_fuzzed_parameters_never_give_500(post_evaluate, bundle_factory, params):
    response = post_evaluate(bundle_factory.febrile_patient(), **params)
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:600])
    if response.status_code >= 400:
        assert _outcome(response)["resourceType"] == "OperationOutcome"
