"""Audit rows of evaluations: what was advised, with no name, birth date or raw identifier; off the critical path."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from service.storage.audit import AuditRecord, AuditWriter, audit_failures
from service.storage.database import Database
from service.storage.tables import evaluation_cards, evaluations

PATIENT_ID = "pat-Xq7-4711"
NAME = "Wilhelmina Zed"
BIRTH_DATE = "1961-03-14"
HOOK_INSTANCE = "0f0c7a43-5a1a-4d0e-9a55-6f6a2f5f5a01"


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


@pytest.fixture
def febrile(bundle_factory) -> dict[str, Any]:
    """CRS grade 1 on day 2, about a patient with a name and a birth date."""
    bundle_factory.patient_id = PATIENT_ID
    bundle = bundle_factory.febrile_patient()
    bundle["entry"][0]["resource"]["name"] = [{"text": NAME}]
    return bundle


def _hook_request(bundle: dict[str, Any], hook: str = "patient-view", **context: Any) -> dict[str, Any]:
    resources = [entry["resource"] for entry in bundle["entry"]]
    by_type = {kind: [r for r in resources if r["resourceType"] == kind] for kind in ("Patient", "Observation", "MedicationAdministration")}
    return {"hook": hook, "hookInstance": HOOK_INSTANCE, "context": {"patientId": PATIENT_ID, **context},
            "prefetch": {"patient": by_type["Patient"][0], "observations": _searchset(by_type["Observation"]),
                         "medicationAdministrations": _searchset(by_type["MedicationAdministration"]), "conditions": None}}


def _rows(app) -> list[dict[str, Any]]:
    storage = app.extensions["cartox.storage"]
    assert storage.audit.flush(10)
    with storage.database.engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(select(evaluations).order_by(evaluations.c.id))]
        for row in rows:
            row["cards"] = [dict(card._mapping) for card in connection.execute(
                select(evaluation_cards).where(evaluation_cards.c.evaluation_id == row["id"]).order_by(evaluation_cards.c.id))]
    return rows


def _no_patient_data(row: dict[str, Any]) -> None:
    text = repr(row)
    for secret in (PATIENT_ID, NAME, BIRTH_DATE, "1961"):
        assert secret not in text, f"{secret!r} in the audit row"


def test_a_cds_hooks_call_is_audited_without_patient_data(storage_app, febrile, audit_key):
    body = orjson.dumps(_hook_request(febrile))
    response = storage_app.test_client().post("/cds-services/car-t-toxicity?asOf=2026-03-04T12:00:00%2B01:00",
                                              data=body, content_type="application/json", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    (row,) = _rows(storage_app)
    _no_patient_data(row)
    assert row["request_id"] == "req-42"
    assert row["service_id"] == "car-t-toxicity"
    assert row["hook_instance"] == HOOK_INSTANCE
    assert row["guideline"] == "seed-S004"
    assert row["rule_set_version"] == storage_app.extensions["cartox.engine"].rules.version
    assert row["input_sha256"] == hashlib.sha256(body).hexdigest()
    expected_hash = hmac.new(audit_key.encode(), f"Patient/{PATIENT_ID}".encode(), hashlib.sha256).hexdigest()
    assert row["patient_hash"] == expected_hash
    crs = next(f for f in row["findings"] if f["rule"] == "crs-astct")
    assert (crs["grade"], crs["maximumGrade"], crs["onsetDay"]) == (1, 1, 2)
    assert [c["card_uuid"] for c in row["cards"]] == [c["uuid"] for c in cards]
    assert [(c["rule"], c["indicator"]) for c in row["cards"]] == [(c["source"]["topic"]["code"], c["indicator"]) for c in cards]
    resource_ids = [a["resource"]["id"] for c in cards for s in c.get("suggestions", []) for a in s["actions"]]
    assert row["output_ids"] == list(dict.fromkeys(resource_ids)) and resource_ids
    assert row["as_of"].replace(tzinfo=timezone.utc) == datetime(2026, 3, 4, 11, tzinfo=timezone.utc)
    assert 0 < row["duration_ms"] < 60_000


def test_evaluate_is_audited_with_its_output_ids(storage_app, febrile):
    response = storage_app.test_client().post("/evaluate?_format=fhir&asOf=2026-03-04T12:00:00%2B01:00", json=febrile)
    assert response.status_code == 200
    bundle_ids = [entry["resource"]["id"] for entry in response.get_json()["entry"]]
    (row,) = _rows(storage_app)
    _no_patient_data(row)
    assert row["service_id"] == "evaluate" and row["hook_instance"] is None
    assert row["output_ids"] == bundle_ids
    assert row["cards"] == []  # a Bundle was answered: no card reached anyone
    assert len(row["request_id"]) == 32  # generated


def test_the_order_check_is_audited_with_its_order_cards(storage_app, febrile):
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{PATIENT_ID}"}, "medicationCodeableConcept": {"text": "dexamethasone"},
             "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}]}]}
    request = _hook_request(febrile, "order-sign", draftOrders={"resourceType": "Bundle", "entry": [{"resource": draft}]})
    response = storage_app.test_client().post("/cds-services/car-t-glucocorticoid-order-check?asOf=2026-03-04T12:00:00%2B01:00", json=request)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert cards
    (row,) = _rows(storage_app)
    _no_patient_data(row)
    assert row["service_id"] == "car-t-glucocorticoid-order-check"
    assert [(c["card_uuid"], c["rule"]) for c in row["cards"]] == [(c["uuid"], "order-check") for c in cards]


def test_a_refused_request_is_not_audited(storage_app):
    response = storage_app.test_client().post("/evaluate", data=b"{", content_type="application/json")
    assert response.status_code == 400
    assert _rows(storage_app) == []


def _record(request_id: str) -> AuditRecord:
    moment = datetime.now(timezone.utc)
    return AuditRecord(moment, request_id, "evaluate", None, "v", "seed-S004", moment, None, b"{}", [], [], [], 1.0)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_blocked_database_never_holds_a_request_longer_than_the_bound(database_url):
    """The writer waits on a locked database; the queue (size 1) fills; the next record waits the bound, is dropped
    and counted, and the records queued before are written once the lock goes."""
    lock = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    lock.execute("BEGIN EXCLUSIVE")
    database = Database(database_url)
    writer = AuditWriter(database, timeout_seconds=0.05, queue_size=1)
    before = audit_failures()
    writer.submit(_record("first"))  # taken by the writer, which then waits for the lock
    deadline = time.monotonic() + 5
    while writer._queue.qsize() and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    assert writer.submit(_record("second")) is True  # fills the queue
    started = time.perf_counter()
    assert writer.submit(_record("third")) is False
    waited = time.perf_counter() - started
    assert 0.04 <= waited < 0.5, waited
    assert audit_failures() == before + 1
    lock.rollback()
    lock.close()
    assert writer.flush(15)
    with database.engine.connect() as connection:
        assert [row.request_id for row in connection.execute(select(evaluations.c.request_id).order_by(evaluations.c.id))] == ["first", "second"]
    database.dispose()


def test_a_failed_write_is_counted_and_the_request_still_answered(engine, blank_database, febrile, audit_key):
    """A database without the audit tables (dropped behind the service's back): 200, and the failure counted."""
    from service.app import create_app
    from service.storage.database import downgrade, upgrade

    url = blank_database()
    upgrade(url)
    app = create_app(settings=engine.settings.with_values(database_url=url, audit_key=audit_key), engine=engine)
    downgrade(url, "base")
    before = audit_failures()
    response = app.test_client().post("/evaluate?asOf=2026-03-04T12:00:00%2B01:00", json=febrile)
    assert response.status_code == 200
    assert app.extensions["cartox.storage"].audit.flush(10)
    assert audit_failures() == before + 1
    app.extensions["cartox.storage"].database.dispose()


def test_no_key_configured_generates_one_kept_in_the_data_directory(tmp_path, caplog):
    from service.storage.audit import audit_key

    with caplog.at_level("WARNING", logger="cartox.audit"):
        first = audit_key("", str(tmp_path))
        second = audit_key("", str(tmp_path))
    assert first == second and len(first) == 64
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
    assert "CARTOX_AUDIT_KEY is not set" in caplog.text


def test_audit_off_writes_nothing(engine, database_url, febrile):
    from service.app import create_app

    app = create_app(settings=engine.settings.with_values(database_url=database_url, audit=False), engine=engine)
    assert app.test_client().post("/evaluate?asOf=2026-03-04T12:00:00%2B01:00", json=febrile).status_code == 200
    storage = app.extensions["cartox.storage"]
    assert storage.audit is None
    with storage.database.engine.connect() as connection:
        assert connection.execute(select(evaluations.c.id)).fetchall() == []
    storage.database.dispose()
