"""`cartox feedback report`: rates per rule and card from the feedback joined with the audit by card uuid."""

from __future__ import annotations

import os

from click.testing import CliRunner

from service.cli import main

AS_OF = "2026-03-04T12:00:00%2B01:00"
UNKNOWN = "11111111-2222-4333-8444-555555555555"


def test_report_rates_and_reasons_per_rule_and_card(storage_app, database_url, bundle_factory, monkeypatch):
    client = storage_app.test_client()
    cards = client.post(f"/evaluate?asOf={AS_OF}", json=bundle_factory.febrile_patient()).get_json()["cards"]
    assert storage_app.extensions["cartox.storage"].audit.flush(10)
    (crs,) = [c for c in cards if c["source"]["topic"]["code"] == "crs-grade-astct"]
    reason = {"system": "http://cartox.example.org/fhir/CodeSystem/cartox", "code": "override-alternative-cause", "display": "Another cause"}
    feedback = [
        {"card": crs["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": crs["suggestions"][0]["uuid"]}], "outcomeTimestamp": "2026-03-04T12:01:00Z"},
        {"card": crs["uuid"], "outcome": "overridden", "overrideReason": {"reason": reason}, "outcomeTimestamp": "2026-03-04T12:02:00Z"},
        {"card": crs["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-03-04T12:03:00Z"},
        {"card": crs["uuid"], "outcome": "overridden", "overrideReason": {"reason": reason, "userComment": "sepsis"}, "outcomeTimestamp": "2026-03-04T12:04:00Z"},
        {"card": UNKNOWN, "outcome": "overridden", "outcomeTimestamp": "2026-03-04T12:05:00Z"},
    ]
    assert client.post("/cds-services/car-t-toxicity/feedback", json={"feedback": feedback}).status_code == 200

    for name in [name for name in os.environ if name.startswith("CARTOX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CARTOX_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["feedback", "report"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "5 feedback responses, 1 on cards not in the audit"
    title = crs["source"]["topic"]["display"]
    assert f"car-t-toxicity | crs-grade-astct | {title} | {crs['indicator']} | 4 | 1 (25%) | 3 (75%)" in lines
    assert "car-t-toxicity | (card not in the audit) | - | - | 1 | 0 (0%) | 1 (100%)" in lines
    reasons = lines[lines.index(f"car-t-toxicity | crs-grade-astct | {title} | {crs['indicator']}:") + 1:][:2]
    assert reasons == ["  2 (67%)  override-alternative-cause (Another cause)", "  1 (33%)  (no reason: dismissed)"]


def test_report_on_an_empty_database(database_url, monkeypatch):
    monkeypatch.setenv("CARTOX_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["feedback", "report"])
    assert (result.exit_code, result.output) == (0, "no feedback stored\n")
