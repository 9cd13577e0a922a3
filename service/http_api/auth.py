"""Authentication and CORS of the HTTP API (README "Security").

Production: every call under /cds-services (discovery, services, feedback) carries a JWT of a trusted
issuer whose aud is an external base URL plus the path called; /evaluate takes the same JWT or an API key;
the CDS Hooks test-harness parameters are refused unless configured. Development: no authentication.
OPTIONS (CORS preflight) and the health endpoints are always open. A refused call gets a bare 401
(`WWW-Authenticate: Bearer`, an OperationOutcome `unauthorized`); the reason goes to the "cartox.auth" log.
"""

from __future__ import annotations

import hmac
import logging

from flask import Flask, Response, request
from flask_cors import CORS

from service.errors import InputError, Issue
from service.http_api.common import outcome_response
from service.security.config import SecurityConfig, api_key_digest
from service.security.replay import InMemoryReplayStore, ReplayStore
from service.security.tokens import AuthenticationFailed, Caller, TokenVerifier

log = logging.getLogger("cartox.auth")

#: request.environ key of the authenticated Caller (absent in development mode).
CALLER = "cartox.caller"
TEST_PARAMETERS = ("asOf", "infusionDate", "guideline")
CDS_SERVICES = "/cds-services"
EVALUATE = "/evaluate"


def install(app: Flask, config: SecurityConfig, replay_store: ReplayStore | None) -> None:
    """CORS on every route, then authentication of the protected ones; say at start what is risky."""
    for warning in config.warnings:
        log.warning(warning)
    if config.production and config.issuers and replay_store is None:
        log.warning("jti replay check in process memory: a token replayed to another worker or instance is not seen "
                    "(inject a shared ReplayStore)")
    _install_cors(app, config)
    app.extensions["cartox.security"] = config
    if not config.production:
        return
    verifier = TokenVerifier(config, replay_store or InMemoryReplayStore())

    @app.before_request
    def authenticate() -> Response | None:
        if request.method == "OPTIONS":
            return None  # a preflight carries no credentials (CORS), flask-cors answers it
        path = request.path
        cds_hooks = path == CDS_SERVICES or path.startswith(CDS_SERVICES + "/")
        if not cds_hooks and path != EVALUATE:
            return None
        try:
            request.environ[CALLER] = _caller(verifier, config, evaluate=not cds_hooks)
        except AuthenticationFailed as exc:
            log.warning("401 %s %s from %s: %s", request.method, path, request.remote_addr, exc)
            return unauthorized()
        if cds_hooks and not config.allow_test_parameters:
            refuse_test_parameters()
        return None


def _caller(verifier: TokenVerifier, config: SecurityConfig, evaluate: bool) -> Caller:
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if evaluate:
        key = request.headers.get("X-API-Key") or (credentials if scheme.lower() == "apikey" else None)
        if key is not None:
            if not _known_api_key(key, config):
                raise AuthenticationFailed("unknown API key")
            return Caller("api-key", None, None, api_key=True)
    if scheme.lower() != "bearer" or not credentials:
        raise AuthenticationFailed("no bearer token" if not scheme else f"Authorization scheme {scheme[:20]!r} is not Bearer")
    return verifier.verify(credentials, [base + request.path for base in config.external_base_urls])


def _known_api_key(key: str, config: SecurityConfig) -> bool:
    digest = api_key_digest(key)
    # every key compared, in constant time each: the time taken says nothing about which key came close
    matches = [hmac.compare_digest(digest, known) for known in config.api_key_digests]
    return any(matches)


def unauthorized() -> Response:
    response = outcome_response([Issue("unauthorized", "Authentication required", None, fhir_type="login")], 401)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def refuse_test_parameters() -> None:
    given = [name for name in TEST_PARAMETERS if name in request.args]
    if given:
        raise InputError([Issue("test-parameter-disabled",
                                f"{name} is a test-harness parameter, refused in production (CARTOX_ALLOW_TEST_PARAMETERS)",
                                name, fhir_type="not-supported") for name in given])


def _install_cors(app: Flask, config: SecurityConfig) -> None:
    """Browser clients (CDS Hooks sandboxes, SMART apps) on the allow-list; no cookies, so no credentials.

    Private network access: a page of an allowed public origin (e.g. the CDS Hooks sandbox) may call a
    cartox on a private or loopback address (browsers ask in the preflight)."""
    any_origin = config.cors_origins == ("*",)
    CORS(app, resources={r"/*": {"origins": "*" if any_origin else list(config.cors_origins)}},
         allow_headers=["Authorization", "Content-Type"], methods=["GET", "POST", "OPTIONS"],
         expose_headers=["WWW-Authenticate"], max_age=600, supports_credentials=False, allow_private_network=True,
         send_wildcard=any_origin, always_send=any_origin, vary_header=True)
