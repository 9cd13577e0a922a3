"""Shared fixtures of the API and invariant suites.

- ``engine`` / ``app`` / ``client``: one compiled rule set per session, a Flask test client per test.
- ``small_bundle`` / ``full_bundle``: the seeded generated patient of ``bench/generate.py`` (imported by
  file path: the bench folder is not part of the installed package). Each test gets its own copy, so a
  test may mutate the bundle it receives.
- ``bundle_factory``: small hand-made resources and Bundles for targeted inputs.
- ``post_evaluate``: POST /evaluate with correctly URL-encoded query parameters.
- ``find_empty``: every JSON path whose value is null or empty (CDS Hooks: no null or empty field).
- ``outcome_issue``: assert an error response is an OperationOutcome with a stable code and location.
- ``cds_conformance``: tests/conformance/cds_hooks.py; every CDS Hooks document a test client receives
  (discovery, a service's cards, /evaluate's cards) is checked against it (``_cds_hooks_conformance``).

Helpers are exposed as fixtures because the suite runs with ``--import-mode=importlib`` (test modules
cannot import each other).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable
from urllib.parse import quote, urlencode

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATOR_PATH = REPO_ROOT / "bench" / "generate.py"
CONFORMANCE_PATH = Path(__file__).resolve().parent / "conformance" / "cds_hooks.py"

#: The evaluation time the README uses: day 5 12:00 of the generated patient (same instant as AS_OF).
AS_OF = "2026-03-07T12:00:00+01:00"
CANONICAL_BASE = "http://cartox.example.org/fhir"
CARTOX_CS = f"{CANONICAL_BASE}/CodeSystem/cartox"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _load_module(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_generator() -> ModuleType:
    return _load_module("cartox_bench_generate", GENERATOR_PATH)


def _conformance() -> ModuleType:
    return _load_module("cartox_cds_conformance", CONFORMANCE_PATH)


# --------------------------------------------------------------------------------------------------
# Service
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    from service.pipeline import Engine
    from service.settings import Settings

    # Default settings, not the environment's: the suites assert the documented defaults. The audit and
    # feedback database goes to a temporary directory, not the working directory's cartox-data; the audit key is
    # given, as production mode requires.
    return Engine(Settings(data_dir=str(tmp_path_factory.mktemp("cartox-data")), audit_key="test-audit-key-" + "0" * 32))


@pytest.fixture(scope="session")
def app(engine):
    from service.app import create_app

    application = create_app(engine=engine)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def app_factory(engine):
    """create_app with other settings but the session's compiled rules: ``app_factory(max_body_bytes=1000)``."""
    from service.app import create_app

    def make(**settings_values: Any):
        application = create_app(settings=engine.settings.with_values(**settings_values), engine=engine)
        application.config["TESTING"] = True
        return application

    return make


def _conformance_client_class():
    from flask.testing import FlaskClient

    class ConformanceClient(FlaskClient):
        """A test client that fails the test on any CDS Hooks response breaking CDS Hooks 2.0 (schema and invariants)."""

        def open(self, *args: Any, **kwargs: Any):
            response = super().open(*args, **kwargs)
            request = response.request
            kind = _conformance().document_kind(request.method, request.path, response.status_code, response.mimetype)
            if kind is not None:
                problems = _conformance().violations(orjson.loads(response.get_data()), kind)
                assert not problems, f"{request.method} {request.path}: not a conformant CDS Hooks {kind}:\n" + "\n".join(problems[:20])
            return response

    return ConformanceClient


@pytest.fixture(scope="session", autouse=True)
def _cds_hooks_conformance():
    """Every Flask test client of the session, whichever app made it, checks CDS Hooks conformance."""
    from flask import Flask

    previous = Flask.test_client_class
    Flask.test_client_class = _conformance_client_class()
    yield
    Flask.test_client_class = previous


@pytest.fixture(scope="session")
def cds_conformance() -> ModuleType:
    """tests/conformance/cds_hooks.py: ``cds_conformance.violations(document, "response")``."""
    return _conformance()


# --------------------------------------------------------------------------------------------------
# Generated patient (bench/generate.py)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="session")
def as_of() -> str:
    return AS_OF


@pytest.fixture(scope="session")
def _small_bytes(generator) -> bytes:
    bundle = generator.generate_bundle(7, "small")
    assert generator.AS_OF.isoformat() == AS_OF
    return orjson.dumps(bundle)


@pytest.fixture(scope="session")
def _full_bytes(generator) -> bytes:
    return orjson.dumps(generator.generate_bundle(7, "full"))


@pytest.fixture
def small_bundle(_small_bytes) -> dict[str, Any]:
    """The ~100 KB generated patient ending at AS_OF (a fresh copy per test: mutate at will)."""
    return orjson.loads(_small_bytes)


@pytest.fixture
def full_bundle(_full_bytes) -> dict[str, Any]:
    """The 30-day generated patient, ~4.3 MB (a fresh copy per test)."""
    return orjson.loads(_full_bytes)


@pytest.fixture(scope="session")
def small_bundle_bytes(_small_bytes) -> bytes:
    return _small_bytes


@pytest.fixture(scope="session")
def full_bundle_bytes(_full_bytes) -> bytes:
    return _full_bytes


# --------------------------------------------------------------------------------------------------
# Hand-made inputs
# --------------------------------------------------------------------------------------------------
class BundleFactory:
    """Tiny FHIR R4 builders; every resource is about Patient/<patient_id> unless told otherwise."""

    def __init__(self, patient_id: str = "p1") -> None:
        self.patient_id = patient_id

    def bundle(self, *resources: dict[str, Any], bundle_type: str = "collection") -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": bundle_type,
            "entry": [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r} for i, r in enumerate(resources)],
        }

    def patient(self, patient_id: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"resourceType": "Patient", "id": patient_id or self.patient_id, "birthDate": "1961-03-14", **extra}

    def subject(self, patient_id: str | None = None) -> dict[str, str]:
        return {"reference": f"Patient/{patient_id or self.patient_id}"}

    def vital(self, obs_id: str, loinc: str, value: Any, unit: str, at: str, **extra: Any) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": obs_id,
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": loinc}]},
            "subject": self.subject(),
            "effectiveDateTime": at,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            **extra,
        }

    def temperature(self, obs_id: str, value: Any, at: str, unit: str = "Cel", **extra: Any) -> dict[str, Any]:
        return self.vital(obs_id, "8310-5", value, unit, at, **extra)

    def blood_pressure(self, obs_id: str, systolic: float, diastolic: float, at: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": obs_id,
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "subject": self.subject(),
            "effectiveDateTime": at,
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                 "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                 "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
            ],
        }

    def cart_infusion(self, mad_id: str, at: str, product: str = "axicabtagene ciloleucel") -> dict[str, Any]:
        return {
            "resourceType": "MedicationAdministration",
            "id": mad_id,
            "status": "completed",
            "medicationCodeableConcept": {"text": product},
            "subject": self.subject(),
            "effectiveDateTime": at,
        }

    def febrile_patient(self) -> dict[str, Any]:
        """Patient + CAR-T infusion + fever 38.6 °C and normal blood pressure on day 2: CRS grade 1."""
        return self.bundle(
            self.patient(),
            self.cart_infusion("mad-cart", "2026-03-02T10:00:00+01:00"),
            self.temperature("obs-t1", 38.6, "2026-03-04T08:00:00+01:00"),
            self.blood_pressure("obs-bp1", 118, 72, "2026-03-04T08:00:00+01:00"),
        )


@pytest.fixture
def bundle_factory() -> BundleFactory:
    return BundleFactory()


# --------------------------------------------------------------------------------------------------
# Request and response helpers
# --------------------------------------------------------------------------------------------------
def query_string(params: dict[str, Any]) -> str:
    """URL-encode parameters; '+' of a UTC offset becomes %2B (quote_via=quote, nothing kept safe)."""
    if not params:
        return ""
    return "?" + urlencode({k: v for k, v in params.items() if v is not None}, quote_via=quote, safe="")


@pytest.fixture
def post_evaluate(client):
    """post_evaluate(body, asOf=..., headers=..., content_type=..., **params) -> response.

    ``body`` may be a dict/list (serialised with json.dumps, so big integers and NaN survive), bytes or str.
    asOf defaults to AS_OF; pass asOf=None to leave it out.
    """

    def post(body: Any, *, headers: dict[str, str] | None = None, content_type: str = "application/fhir+json",
             test_client=None, **params: Any):
        params.setdefault("asOf", AS_OF)
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode("utf-8")
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = body
        return (test_client or client).post("/evaluate" + query_string(params), data=data, headers=headers or {},
                                            content_type=content_type)

    return post


def _find_empty(value: Any, path: str = "$") -> list[str]:
    """Paths of every null, empty string, empty list or empty object in a JSON document."""
    found: list[str] = []
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _find_empty(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _find_empty(item, f"{path}[{index}]")
    elif isinstance(value, str) and not value.strip():
        found.append(path)
    return found


@pytest.fixture(scope="session")
def find_empty() -> Callable[[Any], list[str]]:
    return _find_empty


def _outcome_issue(response, status: int, code: str, expression: str | None = None) -> dict[str, Any]:
    """Assert the response is an error OperationOutcome with this HTTP status and stable code; return the issue."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:600])
    assert response.mimetype == "application/fhir+json", response.mimetype
    document = orjson.loads(response.get_data())
    assert document["resourceType"] == "OperationOutcome"
    issues = document["issue"]
    assert issues, "an OperationOutcome needs at least one issue"
    matching = [i for i in issues if i["details"]["coding"][0]["code"] == code]
    assert matching, f"no issue with code {code!r}: {[i['details']['coding'][0]['code'] for i in issues]}"
    issue = matching[0]
    assert issue["severity"] == "error"
    assert issue["details"]["coding"][0]["system"] == CARTOX_CS
    assert issue["code"], "issue.code (FHIR IssueType) is required"
    if expression is not None:
        assert issue.get("expression") == [expression], issue.get("expression")
    return issue


@pytest.fixture(scope="session")
def outcome_issue():
    return _outcome_issue


def resources_of(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry") or [] if e["resource"]["resourceType"] == resource_type]


@pytest.fixture(scope="session")
def resources():
    """resources(bundle, "RiskAssessment") -> the entries' resources of that type."""
    return resources_of


@pytest.fixture(scope="session")
def deep_copy():
    return copy.deepcopy


def _card_text(detail: str) -> str:
    """A card detail as the clinician reads it: markdown rendered to plain text (escapes and entities resolved)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(detail)
    lines = []
    for token in tokens:
        if token.type == "inline":
            lines.append("".join(child.content for child in token.children or () if child.type in ("text", "code_inline")))
    return "\n".join(lines)


@pytest.fixture(scope="session")
def card_text() -> Callable[[str], str]:
    return _card_text
