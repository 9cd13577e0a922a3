"""The CDS Hooks 2.0 conformance checker itself: spec examples pass, each broken rule is named."""

from __future__ import annotations

import copy

import pytest

CARD = {
    "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
    "summary": "Example Card",
    "indicator": "info",
    "detail": "Add an XYZ complimentary medication OR switch patient order to ABC.",
    "source": {"label": "Static CDS Service Example", "url": "https://example.com",
               "topic": {"code": "12345", "display": "Example topic", "system": "http://example.org/topics"}},
    "suggestions": [{
        "label": "Take the first suggestion",
        "uuid": "e56e1945-20b3-4393-8503-a1a20fd73152",
        "actions": [{"type": "create", "description": "Create a prescription for Acetaminophen 250 MG",
                     "resource": {"resourceType": "MedicationRequest", "id": "demo-1"}}],
    }],
    "selectionBehavior": "at-most-one",
    "overrideReasons": [{"code": "reason-code-provided-by-service", "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                         "display": "Patient refused"}],
    "links": [{"label": "SMART Example App", "url": "https://smart.example.com/launch", "type": "smart", "appContext": "{\"a\":1}"}],
}


def _response(**changes) -> dict:
    card = copy.deepcopy(CARD)
    for key, value in changes.items():
        if value is None:
            card.pop(key)
        else:
            card[key] = value
    return {"cards": [card]}


def test_the_specification_examples_conform(cds_conformance):
    assert cds_conformance.violations(_response(), "response") == []
    assert cds_conformance.violations({"cards": []}, "response") == []
    discovery = {"services": [{"hook": "patient-view", "title": "Static CDS Service", "description": "An example",
                               "id": "static", "prefetch": {"patientToGreet": "Patient/{{context.patientId}}"}}]}
    assert cds_conformance.violations(discovery, "discovery") == []
    request = {"hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "fhirServer": "http://hooks.smarthealthit.org:9080",
               "hook": "patient-view", "context": {"userId": "Practitioner/example", "patientId": "1288992"},
               "prefetch": {"patientToGreet": {"resourceType": "Patient", "id": "1288992"}, "conditions": None}}
    assert cds_conformance.violations(request, "request") == []
    feedback = {"feedback": [
        {"card": CARD["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
         "outcomeTimestamp": "2021-12-11T10:05:31Z"},
        {"card": CARD["uuid"], "outcome": "overridden", "outcomeTimestamp": "2021-12-11T10:05:31.123+01:00",
         "overrideReason": {"reason": {"code": "reason-code-provided-by-service", "system": "http://example.org/reasons"},
                            "userComment": "Clinician comment"}},
        {"card": CARD["uuid"], "outcome": "overridden", "outcomeTimestamp": "2021-12-11T10:05:31Z"},
    ]}
    assert cds_conformance.violations(feedback, "feedback") == []


@pytest.mark.parametrize("broken, named", [
    (_response(summary="x" * 140), "summary: 140 characters, must be under 140"),
    (_response(selectionBehavior=None), "suggestions without selectionBehavior"),
    (_response(suggestions=[{"label": "Do it", "actions": [{"type": "create", "resource": {"resourceType": "Task"}}]}]),
     "action without description"),
    (_response(overrideReasons=[{"code": "c", "system": "http://example.org"}]), "override reason without display"),
    (_response(detail=""), "$.cards[0].detail: null or empty value"),
    (_response(links=[]), "$.cards[0].links: null or empty value"),
    (_response(source={"label": "x", "topic": None}), "$.cards[0].source.topic: null or empty value"),
    (_response(indicator="hard-stop"), "'hard-stop' is not one of ['info', 'warning', 'critical']"),
    (_response(uuid="not-a-uuid"), "$.cards[0].uuid: 'not-a-uuid' does not match"),
    ({"cards": [CARD, CARD]}, "the same card uuid twice"),
    ({"cards": [], "systemActions": []}, "$.systemActions: null or empty value"),
], ids=["summary-140", "no-selection-behavior", "action-no-description", "override-no-display", "empty-detail",
        "empty-links", "null-topic", "bad-indicator", "bad-uuid", "duplicate-card", "empty-system-actions"])
def test_each_broken_rule_is_named(cds_conformance, broken, named):
    problems = cds_conformance.violations(broken, "response")
    assert any(named in problem for problem in problems), problems


@pytest.mark.parametrize("feedback, named", [
    ({"feedback": []}, "$.feedback"),
    ({"feedback": [{"card": CARD["uuid"], "outcome": "dismissed", "outcomeTimestamp": "2021-12-11T10:05:31Z"}]}, "dismissed"),
    ({"feedback": [{"card": CARD["uuid"], "outcome": "accepted", "outcomeTimestamp": "2021-12-11T10:05:31Z"}]},
     "'acceptedSuggestions' is a required property"),
    ({"feedback": [{"card": CARD["uuid"], "outcome": "overridden", "outcomeTimestamp": "11 Dec 2021"}]}, "does not match"),
    ({"feedback": [{"card": CARD["uuid"], "outcome": "overridden", "outcomeTimestamp": "2021-12-11T10:05:31Z",
                    "overrideReason": {"userComment": ""}}]}, "userComment: null or empty value"),
])
def test_broken_feedback_is_named(cds_conformance, feedback, named):
    problems = cds_conformance.violations(feedback, "feedback")
    assert any(named in problem for problem in problems), problems


def test_a_request_without_hook_instance_or_with_an_empty_context_value_is_named(cds_conformance):
    problems = cds_conformance.violations({"hook": "patient-view", "context": {"patientId": ""}}, "request")
    assert any("'hookInstance' is a required property" in problem for problem in problems), problems
    assert "$.context.patientId: null or empty value" in problems


@pytest.mark.parametrize("method, path, status, mimetype, kind", [
    ("GET", "/cds-services", 200, "application/json", "discovery"),
    ("POST", "/cds-services/car-t-toxicity", 200, "application/json", "response"),
    ("POST", "/evaluate", 200, "application/json", "response"),
    ("POST", "/evaluate", 200, "application/fhir+json", None),  # a FHIR Bundle, not cards
    ("POST", "/cds-services/car-t-toxicity", 412, "application/fhir+json", None),
    ("POST", "/cds-services/car-t-toxicity/feedback", 200, "application/json", None),
])
def test_which_responses_the_suite_checks(cds_conformance, method, path, status, mimetype, kind):
    assert cds_conformance.document_kind(method, path, status, mimetype) == kind
