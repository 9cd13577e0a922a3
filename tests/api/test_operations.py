"""Operations endpoints (/healthz, /readyz, /metrics), the request id and the JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from service.http_api.health import READINESS, register_readiness_check
from service.observability.logs import json_formatter


def test_healthz_says_alive_with_the_rule_set(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["rulesLoaded"] is True
    assert "crs_astct.yaml" in body["ruleFiles"]


def test_readyz_reports_the_rules_and_database_checks(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"rules": "ok", "database": "ok"}}


def test_readyz_is_503_naming_a_failing_plugged_check(app_factory):
    application = app_factory()

    def database() -> None:
        raise ConnectionError("connection refused by 127.0.0.1:5432")

    register_readiness_check(application, "database", database)
    assert set(application.extensions[READINESS]) == {"rules", "database"}
    response = application.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body == {"status": "not-ready", "checks": {"rules": "ok", "database": "failing"}}
    assert "5432" not in response.get_data(as_text=True)  # the reason is logged, never shown


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = metric.partition("{")
        if sample_name == name and ",".join(sorted(sample_labels.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def test_metrics_count_requests_by_route_and_evaluations_by_service(client, post_evaluate, bundle_factory):
    before = client.get("/metrics").get_data(as_text=True)
    assert post_evaluate(bundle_factory.febrile_patient()).status_code == 200
    assert client.get("/no-such-route/123").status_code == 404
    after = client.get("/metrics")
    assert after.status_code == 200 and after.mimetype == "text/plain"
    text = after.get_data(as_text=True)

    def grew(name: str, **labels: str) -> float:
        return _sample(text, name, **labels) - _sample(before, name, **labels)

    assert grew("cartox_http_requests_total", route="/evaluate", method="POST", status="200") == 1
    assert grew("cartox_http_request_duration_seconds_count", route="/evaluate", method="POST", status="200") == 1
    assert grew("cartox_evaluations_total", service="evaluate") == 1
    # an unknown path is counted under one label, never as itself (fixed cardinality)
    assert grew("cartox_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert "/no-such-route" not in text


def test_audit_failures_are_counted(client):
    from service.observability.metrics import record_audit_failure

    before = _sample(client.get("/metrics").get_data(as_text=True), "cartox_audit_write_failures_total")
    record_audit_failure()
    after = _sample(client.get("/metrics").get_data(as_text=True), "cartox_audit_write_failures_total")
    assert after - before == 1


@pytest.mark.parametrize("sent, kept", [
    ("req-42.a:b_c", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("has space", False),
    ("<script>", False),
    ("", False),
])
def test_request_id_is_echoed_when_sane_else_generated(client, sent, kept):
    response = client.get("/healthz", headers={"X-Request-ID": sent})
    echoed = response.headers["X-Request-ID"]
    if kept:
        assert echoed == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), echoed


def test_every_response_has_a_distinct_request_id(client):
    ids = {client.get(path).headers["X-Request-ID"] for path in ("/healthz", "/nope", "/healthz")}
    assert len(ids) == 3


@pytest.fixture
def log_lines():
    """JSON log lines written while the test runs, through the formatter the service installs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


def test_log_lines_are_json_with_the_request_id_and_no_patient_data(client, log_lines, bundle_factory):
    bundle = bundle_factory.febrile_patient()
    bundle["entry"][0]["resource"].update(id="pat-secret-9731", name=[{"family": "Doe-Secretname"}])
    for entry in bundle["entry"][1:]:
        entry["resource"]["subject"] = {"reference": "Patient/pat-secret-9731"}
    response = client.post("/evaluate?asOf=2026-03-05T12%3A00%3A00%2B01%3A00&infusionDate=2026-03-02", json=bundle,
                           headers={"X-Request-ID": "trace-1", "Authorization": "Bearer token-must-not-appear"})
    assert response.status_code == 200
    lines = log_lines()
    access = [line for line in lines if line.get("event") == "request"]
    assert access == [{**access[0], "method": "POST", "route": "/evaluate", "status": 200, "request_id": "trace-1"}]
    assert {"timestamp", "level", "logger", "duration_ms"} <= set(access[0])
    assert all(line.get("request_id") == "trace-1" for line in lines), lines
    text = json.dumps(lines)
    for secret in ("pat-secret-9731", "Secretname", "token-must-not-appear", "1961-03-14", "asOf", "infusionDate"):
        assert secret not in text


def test_an_unexpected_error_is_logged_as_json_with_its_request_id(app_factory, log_lines, monkeypatch):
    application = app_factory()
    from service.pipeline import Engine

    def explode(_engine, body: bytes, *_args, **_kwargs):
        patient_name = "Doe-Secretname"  # a local variable of the failing frame: never logged
        raise RuntimeError(f"cannot read {patient_name}")

    monkeypatch.setattr(Engine, "evaluate_bundle_bytes", explode)
    response = application.test_client().post("/evaluate", data=b'{"name": "pat-secret-9731"}', content_type="application/fhir+json",
                                              headers={"X-Request-ID": "crash-7"})
    assert response.status_code == 500
    errors = [line for line in log_lines() if line["level"] == "error"]
    assert len(errors) == 1 and errors[0]["request_id"] == "crash-7"
    exception = errors[0]["exception"][0]
    assert exception["exc_type"] == "RuntimeError"
    assert exception["frames"][-1]["name"] == "explode"  # where it failed, to debug from
    text = json.dumps(errors)
    assert "Secretname" not in text and "pat-secret-9731" not in text


def test_bench_endpoint_only_when_enabled(app_factory, client):
    assert client.post("/bench/loads", data=b"[1]", content_type="application/json").status_code == 404
    bench = app_factory(bench_endpoints=True).test_client()
    response = bench.post("/bench/loads", data=b'{"resourceType": "Bundle"}', content_type="application/json")
    assert response.status_code == 200 and response.get_json() == {"parsed": "dict"}
    assert bench.post("/bench/loads", data=b"{", content_type="application/json").status_code == 400
