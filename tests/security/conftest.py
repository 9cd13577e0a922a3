"""Fixtures of the security suite: issuer keys generated at test time, a token minter, production apps.

- ``issuer_keys``: an EC P-384 and an RSA 2048 key pair of the test issuer, plus an unrelated P-384 key.
- ``jwks``: the public JWK Set of ``issuer_keys`` (kids "ec-1", "rsa-1").
- ``mint(path, **claims)``: a signed token for the test issuer whose aud is BASE + path; claims given as
  None are left out, ``headers=``/``key=``/``algorithm=`` override the signature.
- ``production_app(**settings)``: create_app in production mode trusting the test issuer (static JWKS).
- ``hook_request``: a patient-view request whose prefetch says "no data" (valid, quick to evaluate).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://ehr.example.org"
BASE = "https://cds.example.org/cartox"  # the external base behind a proxy; the app itself sees "/"
API_KEY = "test-api-key-0123456789abcdef"


@pytest.fixture(scope="session")
def issuer_keys() -> dict[str, Any]:
    return {
        "ec-1": ec.generate_private_key(ec.SECP384R1()),
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "stranger": ec.generate_private_key(ec.SECP384R1()),
    }


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.ECAlgorithm if isinstance(private_key, ec.EllipticCurvePrivateKey) else jwt.algorithms.RSAAlgorithm
    jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, "use": "sig"}


@pytest.fixture(scope="session")
def jwk_of() -> Callable[[Any, str], dict[str, Any]]:
    return public_jwk


@pytest.fixture(scope="session")
def jwks(issuer_keys) -> dict[str, Any]:
    return {"keys": [public_jwk(issuer_keys["ec-1"], "ec-1"), public_jwk(issuer_keys["rsa-1"], "rsa-1")]}


@pytest.fixture(scope="session")
def mint(issuer_keys) -> Callable[..., str]:
    def make(path: str, *, kid: str = "ec-1", key: Any = None, algorithm: str | None = None,
             headers: dict[str, Any] | None = None, base: str = BASE, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": base + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()),
                   "sub": "ehr-client"}
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        signing_key = key if key is not None else issuer_keys[kid]
        chosen = algorithm or ("ES384" if isinstance(signing_key, ec.EllipticCurvePrivateKey) else "RS384")
        return jwt.encode(payload, signing_key, algorithm=chosen, headers={"kid": kid, **(headers or {})})

    return make


@pytest.fixture(scope="session")
def production_app(app_factory, jwks) -> Callable[..., Any]:
    def make(**settings: Any):
        values: dict[str, Any] = {
            "mode": "production",
            "trusted_issuers": json.dumps({ISSUER: {"jwks": jwks}}),
            "external_base_urls": BASE,
            "api_keys": API_KEY,
            "cors_origins": "https://ehr.example.org",
        }
        values.update(settings)
        return app_factory(**values)

    return make


@pytest.fixture
def hook_request() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": "https://ehr.example.org/fhir",
        "fhirAuthorization": {"access_token": "fhir-access-token-not-for-logs", "token_type": "Bearer",
                              "expires_in": 300, "scope": "patient/*.read", "subject": "cartox"},
        "context": {"userId": "Practitioner/p1", "patientId": "p1"},
        "prefetch": {"patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1961-03-14"},
                     "observations": None, "medicationAdministrations": None, "conditions": None},
    }
