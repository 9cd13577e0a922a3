"""Production mode: CDS Hooks 2.0 JWTs on discovery, services and feedback; API keys on /evaluate.

Every refusal is the same bare 401 (WWW-Authenticate: Bearer, OperationOutcome `unauthorized`, nothing
about the reason); the reason is in the "cartox.auth" log, the token never is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import request

ISSUER = "https://ehr.example.org"
BASE = "https://cds.example.org/cartox"
API_KEY = "test-api-key-0123456789abcdef"
DISCOVERY = "/cds-services"
SERVICE = "/cds-services/car-t-toxicity"
ORDER_SERVICE = "/cds-services/car-t-glucocorticoid-order-check"
FEEDBACK = "/cds-services/car-t-toxicity/feedback"
CALLER_PROBE = "/cds-services/caller-probe"
AS_OF = "2026-03-07T12:00:00+01:00"


@pytest.fixture(scope="module")
def app(production_app):
    application = production_app()
    application.add_url_rule(CALLER_PROBE, "caller_probe", lambda: {"caller": repr(request.environ["cartox.caller"])})
    return application


@pytest.fixture
def client(app):
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response, outcome_issue) -> None:
    issue = outcome_issue(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert issue["details"]["text"] == "Authentication required"  # the same words whatever the reason
    assert issue.get("diagnostics") == "Authentication required" and "expression" not in issue


def order_request(hook_request: dict[str, Any]) -> dict[str, Any]:
    draft = {"resourceType": "MedicationRequest", "status": "draft", "intent": "order",
             "medicationCodeableConcept": {"text": "dexamethasone 10 mg"}, "subject": {"reference": "Patient/p1"}}
    context = {**hook_request["context"], "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}}
    return {**hook_request, "hook": "order-sign", "context": context}


# --------------------------------------------------------------------------------------------------
# Every endpoint with a valid JWT
# --------------------------------------------------------------------------------------------------
def test_every_endpoint_answers_a_valid_jwt(client, mint, hook_request, small_bundle):
    discovery = client.get(DISCOVERY, headers=bearer(mint(DISCOVERY)))
    assert discovery.status_code == 200
    assert {s["id"] for s in discovery.get_json()["services"]} == {"car-t-toxicity", "car-t-glucocorticoid-order-check"}

    service = client.post(SERVICE, json=hook_request, headers=bearer(mint(SERVICE)))
    assert service.status_code == 200, service.get_data(as_text=True)[:500]
    assert isinstance(service.get_json()["cards"], list)

    order = client.post(ORDER_SERVICE, json=order_request(hook_request), headers=bearer(mint(ORDER_SERVICE, kid="rsa-1")))
    assert order.status_code == 200, order.get_data(as_text=True)[:500]

    card = service.get_json()["cards"][0]["uuid"] if service.get_json()["cards"] else str(uuid.uuid4())
    dismissed = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-03-07T12:05:00+01:00"}]}
    feedback = client.post(FEEDBACK, json=dismissed, headers=bearer(mint(FEEDBACK)))
    assert feedback.status_code == 200, feedback.get_data(as_text=True)[:500]
    assert feedback.get_json()["stored"] + feedback.get_json()["alreadyStored"] == 1
    assert client.post(FEEDBACK, json=dismissed).status_code == 401  # feedback needs the JWT too

    evaluate = client.post(f"/evaluate?asOf={AS_OF.replace('+', '%2B')}", json=small_bundle,
                           headers=bearer(mint("/evaluate")), content_type="application/fhir+json")
    assert evaluate.status_code == 200
    assert any("CRS grade" in card["summary"] for card in evaluate.get_json()["cards"])


def test_health_stays_open(client):
    assert client.get("/healthz").status_code == 200


def test_the_es384_and_rs384_keys_both_verify(client, mint):
    for kid in ("ec-1", "rsa-1"):
        assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, kid=kid))).status_code == 200, kid


def test_aud_may_list_several_urls_one_of_them_this_one(client, mint):
    token = mint(DISCOVERY, aud=["https://other.example.org/cds-services", BASE + DISCOVERY])
    assert client.get(DISCOVERY, headers=bearer(token)).status_code == 200


def test_leeway_admits_a_small_clock_skew(client, mint):
    now = int(time.time())
    skewed = mint(DISCOVERY, iat=now + 20, nbf=now + 20, exp=now - 20 + 300)
    assert client.get(DISCOVERY, headers=bearer(skewed)).status_code == 200
    just_expired = mint(DISCOVERY, iat=now - 330, exp=now - 20)
    assert client.get(DISCOVERY, headers=bearer(just_expired)).status_code == 200


def test_the_caller_is_known_to_later_layers(client, mint):
    response = client.get(CALLER_PROBE, headers=bearer(mint(CALLER_PROBE, tenant="hospital-a")))
    assert response.get_json() == {"caller": f"Caller(issuer='{ISSUER}', subject='ehr-client', tenant='hospital-a', api_key=False)"}


# --------------------------------------------------------------------------------------------------
# 401: missing, expired, not yet valid, wrong audience, wrong algorithm, unknown key, tampered, replayed
# --------------------------------------------------------------------------------------------------
def _forged_none(claims: dict[str, Any]) -> str:
    def part(document: dict[str, Any]) -> str:
        return jwt.utils.base64url_encode(orjson.dumps(document)).decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'ec-1'})}.{part(claims)}."


def _claims(path: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": BASE + path, "exp": now + 300, "iat": now, "jti": f"jti-{time.time_ns()}", **changes}


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = orjson.loads(jwt.utils.base64url_decode(payload))
    claims["sub"] = "someone-else"
    return ".".join([header, jwt.utils.base64url_encode(orjson.dumps(claims)).decode(), signature])


def _hs256_with_the_public_key(jwks: dict[str, Any], path: str) -> str:
    """The classic confusion attack: the issuer's public key used as an HMAC secret."""
    public = json.dumps(jwks["keys"][0]).encode()
    header = jwt.utils.base64url_encode(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "ec-1"})).decode()
    payload = jwt.utils.base64url_encode(orjson.dumps(_claims(path))).decode()
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{jwt.utils.base64url_encode(signature).decode()}"


# case -> (what the log says, token maker)
BAD_TOKENS = {
    "expired": ('ExpiredSignatureError', lambda mint, jwks, path: mint(path, iat=int(time.time()) - 900, exp=int(time.time()) - 600)),
    "not-yet-valid-nbf": ('not yet valid (nbf)', lambda mint, jwks, path: mint(path, nbf=int(time.time()) + 600)),
    "issued-in-the-future": ('not yet valid (iat)', lambda mint, jwks, path: mint(path, iat=int(time.time()) + 600, exp=int(time.time()) + 900)),
    "wrong-audience-other-service": ('InvalidAudienceError', lambda mint, jwks, path: mint("/cds-services/another-service")),
    "wrong-audience-internal-url": ('InvalidAudienceError', lambda mint, jwks, path: mint(path, base="http://localhost")),
    "wrong-audience-query-string": ('InvalidAudienceError', lambda mint, jwks, path: mint(path + "?x=1")),
    "alg-none": ("algorithm 'none' is not accepted", lambda mint, jwks, path: _forged_none(_claims(path))),
    "alg-hs256": ("algorithm 'HS256' is not accepted", lambda mint, jwks, path: _hs256_with_the_public_key(jwks, path)),
    "alg-es256-naming-the-issuer-kid": ("algorithm 'ES256' is not accepted", lambda mint, jwks, path: mint(path, algorithm="ES256", key=ec.generate_private_key(ec.SECP256R1()))),
    "alg-rs256": ("algorithm 'RS256' is not accepted", lambda mint, jwks, path: mint(path, kid="rsa-1", algorithm="RS256")),
    "rs384-naming-the-ec-kid": ("key 'ec-1' does not sign RS384", lambda mint, jwks, path: mint(path, kid="ec-1", key=_rsa_key())),
    "unknown-kid": ("unknown key kid='stranger'", lambda mint, jwks, path: mint(path, kid="stranger")),
    "issuer-kid-other-key": ('InvalidSignatureError', lambda mint, jwks, path: mint(path, kid="ec-1", key=ec.generate_private_key(ec.SECP384R1()))),
    "untrusted-issuer": ("'https://evil.example.org' is not trusted", lambda mint, jwks, path: mint(path, iss="https://evil.example.org")),
    "no-kid": ("has no kid", lambda mint, jwks, path: _without_kid(mint(path))),
    "kid-too-long": ("has no kid of 1-256 characters", lambda mint, jwks, path: mint(path, kid="k" * 300, key=ec.generate_private_key(ec.SECP384R1()))),
    "tampered-payload": ('InvalidSignatureError', lambda mint, jwks, path: _tampered(mint(path))),
    "no-exp": ('missing the "exp" claim', lambda mint, jwks, path: mint(path, exp=None)),
    "no-iat": ('missing the "iat" claim', lambda mint, jwks, path: mint(path, iat=None)),
    "no-jti": ('missing the "jti" claim', lambda mint, jwks, path: mint(path, jti=None)),
    "jti-not-a-string": ('JWT ID must be a string', lambda mint, jwks, path: mint(path, jti=12345)),
    "no-aud": ('missing the "aud" claim', lambda mint, jwks, path: mint(path, aud=None)),
    "lifetime-beyond-an-hour": ('exp more than 3600 s ahead', lambda mint, jwks, path: mint(path, exp=int(time.time()) + 2 * 3600)),
    "not-a-jwt": ('not a JWT', lambda mint, jwks, path: "not-a-jwt"),
}


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _without_kid(token: str) -> str:
    header, payload, signature = token.split(".")
    fields = orjson.loads(jwt.utils.base64url_decode(header))
    del fields["kid"]
    return ".".join([jwt.utils.base64url_encode(orjson.dumps(fields)).decode(), payload, signature])


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
@pytest.mark.parametrize("path", [DISCOVERY, SERVICE])
def test_bad_token_is_a_bare_401(client, mint, jwks, hook_request, outcome_issue, caplog, case, path):
    reason, make = BAD_TOKENS[case]
    token = make(mint, jwks, path)
    with caplog.at_level(logging.WARNING, logger="cartox.auth"):
        response = client.post(path, json=hook_request, headers=bearer(token)) if path == SERVICE else client.get(path, headers=bearer(token))
    assert_unauthorized(response, outcome_issue)
    reasons = [r.getMessage() for r in caplog.records if r.name == "cartox.auth"]
    assert len(reasons) == 1 and f"401 {'POST' if path == SERVICE else 'GET'} {path}" in reasons[0], reasons
    assert reason in reasons[0], reasons
    assert token not in caplog.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                                     {"Authorization": f"ApiKey {API_KEY}"}, {"X-API-Key": API_KEY}],
                         ids=["missing", "empty-bearer", "basic", "api-key-scheme", "x-api-key"])
def test_cds_hooks_needs_a_bearer_jwt(client, outcome_issue, headers):
    """API keys are for /evaluate only: an EHR signs its CDS Hooks calls."""
    assert_unauthorized(client.get(DISCOVERY, headers=headers), outcome_issue)


def test_replayed_token_is_refused(client, mint, hook_request, outcome_issue, caplog):
    token = mint(SERVICE)
    assert client.post(SERVICE, json=hook_request, headers=bearer(token)).status_code == 200
    with caplog.at_level(logging.WARNING, logger="cartox.auth"):
        assert_unauthorized(client.post(SERVICE, json=hook_request, headers=bearer(token)), outcome_issue)
    assert "replayed" in caplog.text


def test_a_refused_token_does_not_use_up_its_jti(client, mint):
    """A wrong aud is refused before the replay check: the same jti then works where it was meant for."""
    assert client.get(SERVICE.replace("car-t-toxicity", "other"), headers=bearer(mint(SERVICE, jti="jti-kept"))).status_code == 401
    assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, jti="jti-kept"))).status_code == 200


def test_the_same_jti_of_another_issuer_is_not_a_replay(production_app, jwks, mint):
    app = production_app(trusted_issuers=json.dumps({ISSUER: {"jwks": jwks}, "https://ehr-2.example.org": {"jwks": jwks}}))
    client = app.test_client()
    assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, jti="shared"))).status_code == 200
    assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, jti="shared", iss="https://ehr-2.example.org"))).status_code == 200


def test_replay_store_is_the_injected_one(app_factory, engine, jwks, mint):
    from service.app import create_app

    class Recording:
        def __init__(self) -> None:
            self.claims: list[tuple[str, str]] = []

        def claim(self, issuer, jti, expires_at):
            self.claims.append((issuer, jti))
            return len(self.claims) == 1

    store = Recording()
    settings = engine.settings.with_values(mode="production", trusted_issuers=json.dumps({ISSUER: {"jwks": jwks}}),
                                           external_base_urls=BASE)
    client = create_app(settings, engine, replay_store=store).test_client()
    assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, jti="a"))).status_code == 200
    assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, jti="b"))).status_code == 401
    assert store.claims == [(ISSUER, "a"), (ISSUER, "b")]


# --------------------------------------------------------------------------------------------------
# aud: the external base URL(s) plus the path called
# --------------------------------------------------------------------------------------------------
def test_each_external_base_url_is_an_audience(production_app, mint):
    app = production_app(external_base_urls="https://cds.example.org/cartox/, https://cartox.intranet.example:8443")
    client = app.test_client()
    for base in ("https://cds.example.org/cartox", "https://cartox.intranet.example:8443"):
        assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, base=base))).status_code == 200, base
    assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, base="https://cds.example.org"))).status_code == 401


def test_aud_is_not_taken_from_the_host_header(client, mint):
    """The Host header is the caller's to choose: the audience comes from configuration only."""
    token = mint(DISCOVERY, base="https://attacker.example.org")
    assert client.get(DISCOVERY, headers={**bearer(token), "Host": "attacker.example.org"}).status_code == 401


def test_tenant_allow_list(production_app, jwks, mint, outcome_issue):
    app = production_app(trusted_issuers=json.dumps({ISSUER: {"jwks": jwks, "tenants": ["hospital-a"]}}))
    client = app.test_client()
    assert client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, tenant="hospital-a"))).status_code == 200
    assert_unauthorized(client.get(DISCOVERY, headers=bearer(mint(DISCOVERY, tenant="hospital-b"))), outcome_issue)
    assert_unauthorized(client.get(DISCOVERY, headers=bearer(mint(DISCOVERY))), outcome_issue)


# --------------------------------------------------------------------------------------------------
# /evaluate: the same JWT or an API key
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{"X-API-Key": API_KEY}, {"Authorization": f"ApiKey {API_KEY}"}], ids=["x-api-key", "authorization"])
def test_evaluate_takes_an_api_key(client, small_bundle, headers):
    response = client.post(f"/evaluate?asOf={AS_OF.replace('+', '%2B')}", json=small_bundle, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["cards"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": API_KEY[:-1] + "X"}, {"Authorization": "ApiKey short"},
                                     {"X-API-Key": ""}], ids=["none", "wrong", "short", "empty"])
def test_evaluate_refuses_without_valid_credentials(client, small_bundle, outcome_issue, caplog, headers):
    with caplog.at_level(logging.WARNING, logger="cartox.auth"):
        response = client.post("/evaluate", json=small_bundle, headers=headers)
    assert_unauthorized(response, outcome_issue)
    assert API_KEY not in caplog.text


def test_evaluate_jwt_audience_is_evaluate(client, mint, outcome_issue):
    assert client.get("/evaluate", headers=bearer(mint("/evaluate"))).status_code == 200
    assert_unauthorized(client.get("/evaluate", headers=bearer(mint(DISCOVERY))), outcome_issue)


def test_api_keys_only_configuration(app_factory, small_bundle, outcome_issue):
    """No trusted issuer: /evaluate with an API key works, every CDS Hooks call is refused."""
    client = app_factory(mode="production", api_keys=f"{API_KEY},second-key-0123456789").test_client()
    assert client.post("/evaluate", json=small_bundle, headers={"X-API-Key": "second-key-0123456789"}).status_code == 200
    assert_unauthorized(client.get(DISCOVERY), outcome_issue)


# --------------------------------------------------------------------------------------------------
# Test-harness parameters on the CDS Hooks services
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [("asOf", AS_OF), ("infusionDate", "2026-03-02"), ("guideline", "ASCO-2021")])
def test_test_parameters_are_refused_in_production(client, mint, hook_request, outcome_issue, name, value):
    response = client.post(SERVICE, json=hook_request, headers=bearer(mint(SERVICE)), query_string={name: value})
    issue = outcome_issue(response, 400, "test-parameter-disabled", name)
    assert "CARTOX_ALLOW_TEST_PARAMETERS" in issue["details"]["text"]


def test_test_parameters_need_authentication_first(client, hook_request, outcome_issue):
    assert_unauthorized(client.post(SERVICE, json=hook_request, query_string={"asOf": AS_OF}), outcome_issue)


def test_test_parameters_when_enabled(production_app, mint, hook_request):
    client = production_app(allow_test_parameters=True).test_client()
    response = client.post(SERVICE, json=hook_request, headers=bearer(mint(SERVICE)), query_string={"asOf": AS_OF})
    assert response.status_code == 200


def test_evaluate_keeps_its_parameters_in_production(client, small_bundle):
    response = client.post("/evaluate", json=small_bundle, headers={"X-API-Key": API_KEY},
                           query_string={"asOf": AS_OF, "guideline": "ASCO-2021"})
    assert response.status_code == 200


# --------------------------------------------------------------------------------------------------
# Development mode
# --------------------------------------------------------------------------------------------------
def test_development_mode_accepts_unsigned_calls_and_test_parameters(app_factory, hook_request):
    client = app_factory().test_client()  # the default settings: loopback host, no mode
    assert client.get(DISCOVERY).status_code == 200
    assert client.post(SERVICE, json=hook_request, query_string={"asOf": AS_OF}).status_code == 200
    assert client.get(DISCOVERY, headers=bearer("not-a-jwt")).status_code == 200


def test_access_tokens_are_never_logged(client, mint, hook_request, caplog):
    token = mint(SERVICE)
    with caplog.at_level(logging.DEBUG):
        client.post(SERVICE, json=hook_request, headers=bearer(token))
        client.post(SERVICE, json=hook_request, headers=bearer(token))  # refused: a replay
    assert caplog.records, "the replay should have been logged"
    assert token not in caplog.text and "fhir-access-token-not-for-logs" not in caplog.text
