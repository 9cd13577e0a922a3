"""POST /cds-services/{id}/feedback (CDS Hooks 2.0): validated, stored once, unknown cards flagged."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from service.storage.tables import feedback

SERVICE = "/cds-services/car-t-toxicity"
CARD = "0261cd76-e429-5410-93b1-7142f44c01af"
SUGGESTION = "9b3c1e1e-1111-4a4a-8b8b-222233334444"
AT = "2026-03-07T12:05:00Z"


def accepted(card: str = CARD, at: str = AT, **extra: Any) -> dict[str, Any]:
    return {"card": card, "outcome": "accepted", "acceptedSuggestions": [{"id": SUGGESTION}], "outcomeTimestamp": at, **extra}


def overridden(card: str = CARD, at: str = AT, **extra: Any) -> dict[str, Any]:
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": at, **extra}


REASON = {"reason": {"system": "http://cartox.example.org/fhir/CodeSystem/cartox", "code": "override-data-error",
                     "display": "The data behind this card are wrong or not current"}, "userComment": "lab re-run"}


def _rows(app) -> list[dict[str, Any]]:
    with app.extensions["cartox.storage"].database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(select(feedback).order_by(feedback.c.id))]


@pytest.fixture
def post(storage_app):
    client = storage_app.test_client()

    def send(body: Any, service: str = SERVICE):
        return client.post(f"{service}/feedback", json=body)

    return send


def _cards_of_a_call(storage_app, bundle_factory) -> list[dict[str, Any]]:
    bundle = bundle_factory.febrile_patient()
    response = storage_app.test_client().post("/evaluate?asOf=2026-03-04T12:00:00%2B01:00", json=bundle)
    assert response.status_code == 200
    assert storage_app.extensions["cartox.storage"].audit.flush(10)
    return response.get_json()["cards"]


def test_feedback_on_an_audited_card_is_stored_with_its_details(storage_app, post, bundle_factory):
    (card,) = [c for c in _cards_of_a_call(storage_app, bundle_factory) if c["source"]["topic"]["code"] == "crs-grade-astct"]
    suggestion = card["suggestions"][0]["uuid"]
    response = post({"feedback": [{"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion}],
                                   "outcomeTimestamp": "2026-03-04T13:00:00+01:00"}]})
    assert response.status_code == 200
    assert response.get_json() == {"stored": 1, "alreadyStored": 0}
    (row,) = _rows(storage_app)
    assert (row["service_id"], row["card_uuid"], row["outcome"], row["card_known"]) == ("car-t-toxicity", card["uuid"], "accepted", True)
    assert row["accepted_suggestions"] == [suggestion]
    assert row["outcome_timestamp"].replace(tzinfo=None).isoformat() == "2026-03-04T12:00:00"  # stored in UTC
    assert row["override_code"] is None


def test_an_override_with_a_reason_and_a_plain_dismiss(storage_app, post):
    other = "11111111-2222-4333-8444-555555555555"
    response = post({"feedback": [overridden(overrideReason=REASON), overridden(card=other)]})
    assert response.status_code == 200
    assert response.get_json() == {"stored": 2, "alreadyStored": 0, "unknownCards": sorted([CARD, other])}
    first, second = _rows(storage_app)
    assert (first["override_code"], first["override_display"], first["user_comment"]) == (
        "override-data-error", REASON["reason"]["display"], "lab re-run")
    assert (second["override_code"], second["user_comment"], second["card_known"]) == (None, None, False)


def test_the_same_card_outcome_and_time_is_stored_once(storage_app, post):
    body = {"feedback": [accepted(), accepted()]}
    assert post(body).get_json() == {"stored": 1, "alreadyStored": 1, "unknownCards": [CARD]}
    assert post(body).get_json() == {"stored": 0, "alreadyStored": 2, "unknownCards": [CARD]}
    # the same instant written in another offset is the same feedback; a later one is new
    assert post({"feedback": [accepted(at="2026-03-07T13:05:00+01:00")]}).get_json()["alreadyStored"] == 1
    assert post({"feedback": [accepted(at="2026-03-07T12:06:00Z")]}).get_json()["stored"] == 1
    assert len(_rows(storage_app)) == 2


def test_the_order_check_service_takes_feedback_too(storage_app, post):
    assert post({"feedback": [overridden()]}, "/cds-services/car-t-glucocorticoid-order-check").status_code == 200
    assert _rows(storage_app)[0]["service_id"] == "car-t-glucocorticoid-order-check"


def test_an_unknown_service_is_404(post, outcome_issue):
    outcome_issue(post({"feedback": [accepted()]}, "/cds-services/no-such-service"), 404, "not-found")


def test_feedback_must_be_json(storage_app, outcome_issue):
    client = storage_app.test_client()
    outcome_issue(client.post(f"{SERVICE}/feedback", data=b"{", content_type="application/json"), 400, "input-not-json")
    outcome_issue(client.post(f"{SERVICE}/feedback", data=b"x", content_type="text/plain"), 415, "input-unsupported-media-type")


INVALID = [
    ({}, "feedback"),
    ({"feedback": []}, "feedback"),
    ({"feedback": {"card": CARD}}, "feedback"),
    ([accepted()], "feedback"),
    ({"feedback": ["accepted"]}, "feedback[0]"),
    ({"feedback": [accepted(card="card-1")]}, "feedback[0].card"),
    ({"feedback": [{k: v for k, v in accepted().items() if k != "card"}]}, "feedback[0].card"),
    ({"feedback": [accepted(outcome="dismissed")]}, "feedback[0].outcome"),
    ({"feedback": [{k: v for k, v in accepted().items() if k != "outcome"}]}, "feedback[0].outcome"),
    ({"feedback": [accepted(at="2026-03-07T12:05:00")]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [accepted(at="2026-03-07")]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [accepted(at="2026-02-30T12:05:00Z")]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [accepted(at=1772885100)]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [accepted(acceptedSuggestions=[])]}, "feedback[0].acceptedSuggestions"),
    ({"feedback": [{k: v for k, v in accepted().items() if k != "acceptedSuggestions"}]}, "feedback[0].acceptedSuggestions"),
    ({"feedback": [accepted(acceptedSuggestions=[SUGGESTION])]}, "feedback[0].acceptedSuggestions[0]"),
    ({"feedback": [accepted(acceptedSuggestions=[{"id": ""}])]}, "feedback[0].acceptedSuggestions[0].id"),
    ({"feedback": [accepted(overrideReason=REASON)]}, "feedback[0].overrideReason"),
    ({"feedback": [overridden(acceptedSuggestions=[{"id": SUGGESTION}])]}, "feedback[0].acceptedSuggestions"),
    ({"feedback": [overridden(overrideReason="wrong data")]}, "feedback[0].overrideReason"),
    ({"feedback": [overridden(overrideReason={"reason": "override-data-error"})]}, "feedback[0].overrideReason.reason"),
    ({"feedback": [overridden(overrideReason={"reason": {"display": "no code"}})]}, "feedback[0].overrideReason.reason.code"),
    ({"feedback": [overridden(overrideReason={"reason": {"code": 3}})]}, "feedback[0].overrideReason.reason.code"),
    ({"feedback": [overridden(overrideReason={"userComment": "x" * 2001})]}, "feedback[0].overrideReason.userComment"),
    ({"feedback": [overridden(overrideReason={"reason": {**REASON["reason"], "code": "override-bored"}})]}, "feedback[0].overrideReason.reason.code"),
    ({"feedback": [accepted(), overridden(outcome="rejected")]}, "feedback[1].outcome"),
    ({"feedback": [overridden(at=f"2026-03-07T12:{i // 60:02d}:{i % 60:02d}Z") for i in range(101)]}, "feedback"),
]


@pytest.mark.parametrize("backend", ["sqlite"])  # validation comes before any database
@pytest.mark.parametrize("body, expression", INVALID, ids=[f"{i}-{e}" for i, (_, e) in enumerate(INVALID)])
def test_invalid_feedback_is_refused_with_its_location_and_nothing_stored(storage_app, post, outcome_issue, body, expression):
    outcome_issue(post(body), 400, "input-bad-parameter", expression)
    assert _rows(storage_app) == []


def test_every_problem_of_a_request_is_listed(post):
    document = post({"feedback": [accepted(card="x", outcome="maybe")]}).get_json()
    assert [issue["expression"] for issue in document["issue"]] == [["feedback[0].card"], ["feedback[0].outcome"]]


def test_a_reason_of_the_client_s_own_system_is_taken(storage_app, post):
    reason = {"reason": {"system": "https://ehr.example.org/override-reasons", "code": "patient-declined"}}
    assert post({"feedback": [overridden(overrideReason=reason)]}).status_code == 200
    assert [(r["override_system"], r["override_code"]) for r in _rows(storage_app)] == [(reason["reason"]["system"], "patient-declined")]


def test_fields_outside_the_specification_are_ignored(storage_app, post):
    """Clients add fields of their own (hookInstance, serviceId, extension ...): the feedback is still taken."""
    body = {"feedback": [accepted(extension={"org.example.ui": "sidebar"})], "hookInstance": "h-1"}
    assert post(body).status_code == 200
    assert len(_rows(storage_app)) == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_database_that_cannot_store_gives_503_and_the_client_may_retry(storage_app, post, outcome_issue):
    from service.storage.database import downgrade

    downgrade(storage_app.extensions["cartox.storage"].database.url, "base")  # the tables are gone
    issue = outcome_issue(post({"feedback": [accepted()]}), 503, "storage-unavailable")
    assert issue["code"] == "transient"
