"""Issuer keys fetched from a JWKS URL (a loopback HTTP server here): cached, refreshed on an unknown kid,
at most once per interval, bounded in size; a failed fetch keeps the last good keys."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

BASE = "https://cds.example.org/cartox"
ISSUER = "https://ehr.example.org"


class JwksServer:
    """Serves `document` (any JSON, or raw bytes) at /jwks.json and counts the fetches."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.status = 200
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.fetches += 1
                body = server.document if isinstance(server.document, bytes) else json.dumps(server.document).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_keys_fetched_once_then_refreshed_on_an_unknown_kid(production_app, jwks_server, issuer_keys, jwk_of, mint):
    jwks_server.document = {"keys": [jwk_of(issuer_keys["ec-1"], "ec-1")]}
    app = production_app(trusted_issuers=json.dumps({ISSUER: {"jwks_url": jwks_server.url}}), jwks_min_refresh_seconds=0)
    client = app.test_client()
    assert jwks_server.fetches == 0  # nothing fetched at start: the EHR may be unreachable then
    for _ in range(3):
        assert client.get("/cds-services", headers=bearer(mint("/cds-services"))).status_code == 200
    assert jwks_server.fetches == 1

    # the issuer rotates its key: the new kid is unknown, the set is fetched again
    rotated = ec.generate_private_key(ec.SECP384R1())
    jwks_server.document = {"keys": [jwk_of(rotated, "ec-2")]}
    assert client.get("/cds-services", headers=bearer(mint("/cds-services", kid="ec-2", key=rotated))).status_code == 200
    assert jwks_server.fetches == 2
    # the retired key is gone with the old set
    assert client.get("/cds-services", headers=bearer(mint("/cds-services"))).status_code == 401
    assert jwks_server.fetches == 3


def test_unknown_kids_refresh_at_most_once_per_interval(jwks_server, issuer_keys, jwk_of):
    from service.security.jwks import JwksSource

    now = [1000.0]
    jwks_server.document = {"keys": [jwk_of(issuer_keys["ec-1"], "ec-1")]}
    source = JwksSource(ISSUER, url=jwks_server.url, min_refresh_seconds=30, clock=lambda: now[0])
    assert source.key("ec-1") is not None
    for kid in ("made-up-1", "made-up-2", "made-up-3"):
        assert source.key(kid) is None
    assert jwks_server.fetches == 1
    now[0] += 30
    jwks_server.document = {"keys": [jwk_of(issuer_keys["ec-1"], "ec-1"), jwk_of(issuer_keys["stranger"], "made-up-1")]}
    assert source.key("made-up-1") is not None
    assert jwks_server.fetches == 2


def test_cached_keys_expire_after_an_hour(jwks_server, issuer_keys, jwk_of):
    from service.security.jwks import MAX_AGE_SECONDS, JwksSource

    now = [0.0]
    jwks_server.document = {"keys": [jwk_of(issuer_keys["ec-1"], "ec-1")]}
    source = JwksSource(ISSUER, url=jwks_server.url, clock=lambda: now[0])
    source.key("ec-1")
    now[0] += MAX_AGE_SECONDS + 1
    jwks_server.document = {"keys": [jwk_of(issuer_keys["rsa-1"], "rsa-1")]}
    assert source.key("ec-1") is None and source.key("rsa-1") is not None
    assert jwks_server.fetches == 2


@pytest.mark.parametrize("status, document, reason", [
    (500, {"keys": []}, "HTTP 500"),
    (200, b"<html>", "JSON"),
    (200, {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}, "no usable signature key"),
    (200, b" " * (256 * 1024 + 1), "larger than 262144 bytes"),
])
def test_a_failed_refresh_keeps_the_last_good_keys(jwks_server, issuer_keys, jwk_of, caplog, status, document, reason):
    from service.security.jwks import JwksSource

    now = [0.0]
    jwks_server.document = {"keys": [jwk_of(issuer_keys["ec-1"], "ec-1")]}
    source = JwksSource(ISSUER, url=jwks_server.url, min_refresh_seconds=0, clock=lambda: now[0])
    assert source.key("ec-1") is not None
    jwks_server.status, jwks_server.document = status, document
    with caplog.at_level(logging.WARNING, logger="cartox.auth"):
        assert source.key("other") is None
    assert source.key("ec-1") is not None
    assert f"JWKS of issuer {ISSUER} not refreshed from {jwks_server.url}" in caplog.text and reason in caplog.text


def test_an_unreachable_jwks_url_is_a_401_not_a_500(production_app, mint, outcome_issue):
    from socket import socket

    with socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/jwks.json"
    app = production_app(trusted_issuers=json.dumps({ISSUER: {"jwks_url": url}}))
    outcome_issue(app.test_client().get("/cds-services", headers=bearer(mint("/cds-services"))), 401, "unauthorized")


def test_only_usable_signature_keys_are_kept(issuer_keys, jwk_of):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from service.security.jwks import parse_jwks

    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p256 = ec.generate_private_key(ec.SECP256R1())
    keys = parse_jwks({"keys": [
        jwk_of(issuer_keys["ec-1"], "ec-1"),
        {**jwk_of(issuer_keys["rsa-1"], "rsa-1"), "alg": "RS384"},
        {**jwk_of(issuer_keys["stranger"], "encryption"), "use": "enc"},
        {**jwk_of(issuer_keys["rsa-1"], "rs256-only"), "alg": "RS256"},
        jwk_of(small_rsa, "rsa-1024"),
        jwk_of(p256, "p-256"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {k: v for k, v in jwk_of(issuer_keys["ec-1"], "x").items() if k != "kid"},
    ]})
    assert sorted(keys) == ["ec-1", "rsa-1"]


def test_the_sandbox_option_trusts_the_published_sandbox_key(production_app, caplog):
    from service.security.config import SANDBOX_ISSUER
    from service.security.jwks import algorithm_of

    with caplog.at_level(logging.WARNING, logger="cartox.auth"):
        app = production_app(trust_cds_hooks_sandbox=True)
    config = app.extensions["cartox.security"]
    keys = config.issuers[SANDBOX_ISSUER].static_keys
    assert SANDBOX_ISSUER == "https://sandbox.cds-hooks.org"
    assert list(keys) == ["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"]
    assert algorithm_of(keys["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"]) == "ES384"
    assert "CARTOX_TRUST_CDS_HOOKS_SANDBOX=1" in caplog.text and "private key is published" in caplog.text


def test_the_sandbox_is_not_trusted_by_default(production_app):
    from service.security.config import SANDBOX_ISSUER

    assert SANDBOX_ISSUER not in production_app().extensions["cartox.security"].issuers
