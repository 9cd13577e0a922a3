"""The FHIR server policy (allow-list, origins, loopback), template filling and the prefetch settings."""

from __future__ import annotations

import pytest

from service.fhir_client.client import fill_template
from service.fhir_client.policy import ServerPolicy, is_loopback, same_origin
from service.settings import Settings

EHR = "https://ehr.example.org/fhir"


@pytest.mark.parametrize("fhir_server, callers, allowed", [
    (EHR, [None, None], True),                                 # "*" allows an unsigned call
    ("HTTPS://EHR.example.org:443/fhir/", [None], True),       # host case, default port, trailing slash
    ("https://ehr.example.org/fhir-other", [None], False),     # no prefix match
    ("https://ehr.example.org:8443/fhir", [None], False),
    ("http://ehr.example.org/fhir", [None], False),            # another scheme is another server
    ("https://user:pw@ehr.example.org/fhir", [None], False),   # credentials in the URL
    ("https://ehr.example.org/fhir?x=1", [None], False),
    ("https://tenant-ehr.example/fhir", ["https://iss.example", None], False),
    ("https://tenant-ehr.example/fhir", [None, "tenant-a"], True),
    ("https://iss-ehr.example/fhir", ["https://iss.example", None], True),
    ("https://iss-ehr.example/fhir", [None, None], False),     # an issuer's entry needs that verified issuer
    ("http://127.0.0.1:8080/fhir", [None], False),             # with an allow-list, loopback is not special
])
def test_allowlist(fhir_server, callers, allowed):
    policy = ServerPolicy({"*": (EHR,), "tenant-a": ("https://tenant-ehr.example/fhir",),
                           "https://iss.example": ("https://iss-ehr.example/fhir",)}, loopback_without_allowlist=True)
    assert policy.allows(fhir_server, callers) is allowed


@pytest.mark.parametrize("fhir_server, allowed", [
    ("http://127.0.0.1:8080/fhir", True), ("http://localhost:9/r4", True), ("http://[::1]:8080/fhir", True),
    ("http://127.8.0.1/fhir", True), ("https://ehr.example.org/fhir", False), ("http://10.0.0.1/fhir", False),
    ("ftp://127.0.0.1/fhir", False), ("http://127.0.0.1:notaport/fhir", False),
])
def test_without_allowlist_only_loopback_in_development(fhir_server, allowed):
    assert ServerPolicy({}, loopback_without_allowlist=True).allows(fhir_server, [None]) is allowed
    assert ServerPolicy({}, loopback_without_allowlist=False).allows(fhir_server, [None]) is False
    assert is_loopback(fhir_server) is allowed


def test_same_origin():
    assert same_origin("https://ehr.example.org:443/fhir/Observation?_offset=10", EHR)
    assert not same_origin("https://ehr.example.org.evil.example/fhir/Observation", EHR)
    assert not same_origin("http://ehr.example.org/fhir/Observation", EHR)
    assert not same_origin("//ehr.example.org/fhir", EHR)
    assert not same_origin("Observation?_offset=10", EHR)


def test_template_values_are_url_encoded():
    template = "Observation?patient={{context.patientId}}&code=http://loinc.org|8310-5"
    assert fill_template(template, {"patientId": "p1"}) == "Observation?patient=p1&code=http://loinc.org|8310-5"
    assert fill_template("Patient/{{context.patientId}}", {"patientId": "../Practitioner/x?a=1&b"}) == \
        "Patient/..%2FPractitioner%2Fx%3Fa%3D1%26b"
    assert fill_template(template, {}) is None
    assert fill_template(template, {"patientId": 7}) is None


def test_prefetch_settings_from_env():
    settings = Settings.from_env({
        "CARTOX_FHIR_SERVER_ALLOWLIST": '{"*": ["https://ehr.example.org/fhir"], "tenant-a": []}',
        "CARTOX_FHIR_FETCH_BUDGET_SECONDS": "2.5", "CARTOX_FHIR_READ_TIMEOUT_SECONDS": "0.5",
        "CARTOX_FHIR_MAX_PAGES": "3", "CARTOX_FHIR_PAGE_SIZE": "200",
    })
    assert settings.fhir_server_allowlist == {"*": ("https://ehr.example.org/fhir",), "tenant-a": ()}
    assert (settings.fhir_fetch_budget_seconds, settings.fhir_read_timeout_seconds) == (2.5, 0.5)
    assert (settings.fhir_max_pages, settings.fhir_page_size, settings.fhir_connect_timeout_seconds) == (3, 200, 1.0)


@pytest.mark.parametrize("variable, value, message", [
    ("CARTOX_FHIR_SERVER_ALLOWLIST", "[]", "expected a JSON object"),
    ("CARTOX_FHIR_SERVER_ALLOWLIST", '{"*": "https://ehr.example.org/fhir"}', "expected a JSON object"),
    ("CARTOX_FHIR_SERVER_ALLOWLIST", '{"*": ["ehr.example.org/fhir"]}', "is not an http(s) FHIR base URL"),
    ("CARTOX_FHIR_SERVER_ALLOWLIST", "{", "not valid JSON"),
    ("CARTOX_FHIR_FETCH_BUDGET_SECONDS", "0", "outside the allowed range"),
    ("CARTOX_FHIR_FETCH_BUDGET_SECONDS", "nan", "outside the allowed range"),
    ("CARTOX_FHIR_CONNECT_TIMEOUT_SECONDS", "soon", "expected a number of seconds"),
    ("CARTOX_FHIR_MAX_PAGES", "0", "outside the allowed range"),
])
def test_bad_prefetch_settings_name_the_variable(variable, value, message):
    with pytest.raises(ValueError) as error:
        Settings.from_env({variable: value})
    assert str(error.value).startswith(f"{variable}: ") and message in str(error.value)
