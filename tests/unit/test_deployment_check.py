"""`cartox check` pieces that need no server: JWTs as a CDS Client mints them, the calls of a case, diffs."""

from __future__ import annotations

import json
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from service.deployment_check import CheckError, Credentials, Signer, case_calls, first_difference, key_thumbprint
from service.resources import rules_dir
from service.rule_cases.cases import case_bundle, load_cases

URL = "https://cds.hospital.example/cartox/cds-services/car-t-toxicity"


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.mark.parametrize("make_key, algorithm", [
    (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS384"),
])
def test_tokens_are_signed_for_the_url_called_with_a_fresh_jti(make_key, algorithm):
    key = make_key()
    signer = Signer(_pem(key), "https://ehr.hospital.example")
    headers = [Credentials(signer).headers(URL + "?asOf=2026-03-05T12%3A00%3A00%2B01%3A00", for_evaluate=False) for _ in range(3)]
    tokens = [h["Authorization"].removeprefix("Bearer ") for h in headers]
    claims = [jwt.decode(t, key.public_key(), algorithms=[algorithm], audience=URL, issuer="https://ehr.hospital.example",
                         options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]}) for t in tokens]
    assert all(c["sub"] == "https://ehr.hospital.example" for c in claims)
    assert all(0 < c["exp"] - c["iat"] <= 300 for c in claims)  # CDS Hooks: at most five minutes
    assert len({c["jti"] for c in claims}) == 3 and all(uuid.UUID(c["jti"]).version == 4 for c in claims)
    header = jwt.get_unverified_header(tokens[0])
    assert header == {"alg": algorithm, "typ": "JWT", "kid": key_thumbprint(key.public_key())}


def test_key_id_given_is_used_and_the_thumbprint_follows_rfc_7638():
    key = ec.generate_private_key(ec.SECP384R1())
    token = Signer(_pem(key), "iss-1", key_id="ehr-key-2026").token(URL)
    assert jwt.get_unverified_header(token)["kid"] == "ehr-key-2026"
    # RFC 7638 section 3.1: the thumbprint of the RSA key of its example
    example = {"e": "AQAB", "kty": "RSA", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n9"
        "1CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(example))
    assert key_thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("make_key, message", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ES384 needs a P-384 key, not secp256r1"),
    (ed25519.Ed25519PrivateKey.generate, "cannot sign ES384 or RS384"),
])
def test_keys_that_cannot_sign_es384_or_rs384_are_refused(make_key, message):
    with pytest.raises(CheckError, match=message):
        Signer(_pem(make_key()), "iss")


def test_not_a_key_is_refused():
    with pytest.raises(CheckError, match="not an unencrypted PEM private key"):
        Signer(b"-----BEGIN NOTHING-----", "iss")


def test_api_key_goes_to_evaluate_only():
    credentials = Credentials(api_key="k-123", api_key_header="X-API-Key")
    assert credentials.headers("http://h/evaluate", for_evaluate=True) == {"X-API-Key": "k-123"}
    assert credentials.headers(URL, for_evaluate=False) == {}


def test_a_case_becomes_a_cds_hooks_call_and_two_evaluate_calls_of_the_same_data():
    directory = rules_dir()
    case = next(c for c in load_cases(directory / "crs_astct_time_edges.cases.yaml", directory / "schema")
                if c.name == "infusion-date-parameter-after-asof-is-a-bad-parameter")
    hook, cards, fhir = case_calls(case)
    query = "?asOf=2026-03-02T16%3A00%3A00%2B01%3A00&infusionDate=2026-03-03T10%3A00%3A00%2B01%3A00"
    assert (hook.path, cards.path, fhir.path) == ("/cds-services/car-t-toxicity" + query, "/evaluate" + query, "/evaluate" + query)
    assert (cards.accept, fhir.accept) == ("application/json", "application/fhir+json")
    request = json.loads(hook.body)
    bundle = case_bundle(case)
    assert json.loads(cards.body) == bundle
    prefetch = request["prefetch"]
    assert prefetch["patient"] == bundle["entry"][0]["resource"]
    assert [e["resource"] for e in prefetch["observations"]["entry"]] == [e["resource"] for e in bundle["entry"][1:]]
    assert prefetch["medicationAdministrations"] == {"resourceType": "Bundle", "type": "searchset", "total": 0}
    assert request["context"]["patientId"] == bundle["entry"][0]["resource"]["id"]
    assert case_calls(case)[0].body == hook.body  # the same hookInstance every run: reproducible


@pytest.mark.parametrize("expected, actual, difference", [
    ({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]}, None),
    ({"a": 1}, {"a": 1.0}, None),
    ({"a": [1, 2]}, {"a": [1]}, "$.a: expected 2 items, got 1"),
    ({"a": {"b": 1}}, {"a": {}}, "$.a.b: missing"),
    ({"a": {}}, {"a": {"c": 1}}, "$.a.c: unexpected"),
    ({"a": "grade 1 now"}, {"a": "grade 2 now"}, "$.a: expected 'grade 1 now', got 'grade 2 now'"),
    ({"a": "x"}, {"a": 1}, "$.a: expected str, got int"),
])
def test_first_difference_names_the_path(expected, actual, difference):
    assert first_difference(expected, actual) == difference
