"""Modes and the security settings: what each default means, and every value refused at start with the
variable's name (tests/deploy/test_config_errors.py checks that `cartox serve` prints it as one line)."""

from __future__ import annotations

import json
import logging

import pytest

from service.security.config import DEVELOPMENT, PRODUCTION, SecurityConfig, is_loopback, security_config
from service.settings import Settings

ISSUER = "https://ehr.example.org"
BASE = "https://cds.example.org/cartox"


@pytest.fixture(scope="module")
def static_issuer(jwks) -> str:
    return json.dumps({ISSUER: {"jwks": jwks}})


def config(**values) -> SecurityConfig:
    return security_config(Settings(**values))


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True), ("::1", True),
                                            ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
                                            ("cartox.example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_default_settings_are_development_mode():
    """The README quick start: `cartox serve` on 127.0.0.1 with no configuration."""
    chosen = config()
    assert chosen.mode == DEVELOPMENT and not chosen.production
    assert chosen.cors_origins == ("*",) and chosen.allow_test_parameters
    assert any("NO AUTHENTICATION" in warning for warning in chosen.warnings)


def test_a_non_loopback_address_defaults_to_production(static_issuer):
    chosen = config(host="0.0.0.0", trusted_issuers=static_issuer, external_base_urls=BASE)
    assert chosen.mode == PRODUCTION and chosen.cors_origins == () and not chosen.allow_test_parameters
    assert chosen.warnings == ()


def test_production_on_loopback_when_asked(static_issuer):
    assert config(mode="Production", trusted_issuers=static_issuer, external_base_urls=BASE).mode == PRODUCTION


def test_forced_development_on_a_non_loopback_address_warns():
    chosen = config(host="0.0.0.0", mode="development", allow_insecure_development=True)
    assert chosen.mode == DEVELOPMENT
    assert any("0.0.0.0:8080" in warning and "NO AUTHENTICATION" in warning for warning in chosen.warnings)


def test_the_development_warning_is_logged_at_start(app_factory, caplog):
    with caplog.at_level(logging.WARNING, logger="cartox.auth"):
        app_factory()
    assert "DEVELOPMENT MODE on 127.0.0.1:8080: NO AUTHENTICATION" in caplog.text


def test_external_base_urls_lose_their_trailing_slash(static_issuer):
    chosen = config(mode="production", trusted_issuers=static_issuer, external_base_urls=" https://a.example.org/x/ ,https://b.example.org")
    assert chosen.external_base_urls == ("https://a.example.org/x", "https://b.example.org")


def test_issuer_keys_from_a_file(tmp_path, jwks):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    chosen = config(mode="production", trusted_issuers=json.dumps({ISSUER: {"jwks_file": str(path), "tenants": ["a"]}}),
                    external_base_urls=BASE)
    assert sorted(chosen.issuers[ISSUER].static_keys) == ["ec-1", "rsa-1"]
    assert chosen.issuers[ISSUER].tenants == frozenset({"a"})


def test_api_keys_are_kept_as_digests_only():
    chosen = config(mode="production", api_keys="key-number-one-0123, key-number-two-4567")
    assert len(chosen.api_key_digests) == 2
    assert "key-number-one" not in repr(chosen) and "key-number-one" not in repr(Settings(api_keys="key-number-one-0123"))


# (settings, variable named first, words of the message)
REFUSED = [
    ({"mode": "staging"}, "CARTOX_MODE", ["'staging'", "production or development"]),
    ({"mode": "development", "host": "0.0.0.0"}, "CARTOX_MODE", ["0.0.0.0", "CARTOX_ALLOW_INSECURE_DEVELOPMENT=1"]),
    ({"host": "0.0.0.0"}, "CARTOX_TRUSTED_ISSUERS", ["production mode", "0.0.0.0:8080", "CARTOX_API_KEYS"]),
    ({"mode": "production"}, "CARTOX_TRUSTED_ISSUERS", ["at least one trusted JWT issuer"]),
    ({"mode": "production", "trusted_issuers": "ISSUERS"}, "CARTOX_EXTERNAL_BASE_URLS", ["aud"]),
    ({"mode": "production", "trusted_issuers": "ISSUERS", "external_base_urls": BASE, "cors_origins": "*"},
     "CARTOX_CORS_ORIGINS", ["'*'", "production"]),
    ({"cors_origins": "https://ehr.example.org/path"}, "CARTOX_CORS_ORIGINS", ["https://ehr.example.org/path"]),
    ({"cors_origins": "https://ehr.*.org"}, "CARTOX_CORS_ORIGINS", ["https://ehr.*.org"]),
    ({"external_base_urls": "cds.example.org"}, "CARTOX_EXTERNAL_BASE_URLS", ["'cds.example.org'"]),
    ({"external_base_urls": "https://cds.example.org/?x=1"}, "CARTOX_EXTERNAL_BASE_URLS", ["without query"]),
    ({"api_keys": "long-enough-key-0123,short"}, "CARTOX_API_KEYS", ["1 key(s) shorter than 16"]),
    ({"trusted_issuers": "{not json"}, "CARTOX_TRUSTED_ISSUERS", ["not valid JSON"]),
    ({"trusted_issuers": "[]"}, "CARTOX_TRUSTED_ISSUERS", ["JSON object"]),
    ({"trusted_issuers": json.dumps({ISSUER: {"jwks_uri": "https://ehr.example.org/jwks"}})}, "CARTOX_TRUSTED_ISSUERS",
     ["unknown field(s) jwks_uri"]),
    ({"trusted_issuers": json.dumps({ISSUER: {"tenants": ["a"]}})}, "CARTOX_TRUSTED_ISSUERS", ["exactly one of jwks_url, jwks, jwks_file"]),
    ({"trusted_issuers": json.dumps({ISSUER: {"jwks_url": "http://ehr.example.org/jwks"}})}, "CARTOX_TRUSTED_ISSUERS",
     ["must use https"]),
    ({"trusted_issuers": json.dumps({ISSUER: {"jwks_file": "/nonexistent/jwks.json"}})}, "CARTOX_TRUSTED_ISSUERS",
     ["/nonexistent/jwks.json"]),
    ({"trusted_issuers": json.dumps({ISSUER: {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}}})},
     "CARTOX_TRUSTED_ISSUERS", ["no usable signature key"]),
    ({"trusted_issuers": json.dumps({ISSUER: {"jwks": "ISSUER-JWKS", "tenants": []}})}, "CARTOX_TRUSTED_ISSUERS",
     ["tenants must be a non-empty list"]),
    ({"trusted_issuers": json.dumps({"https://sandbox.cds-hooks.org": {"jwks": "ISSUER-JWKS"}}), "trust_cds_hooks_sandbox": True},
     "CARTOX_TRUST_CDS_HOOKS_SANDBOX", ["configure it once"]),
]


@pytest.mark.parametrize("values, variable, words", REFUSED, ids=[f"{v}-{i}" for i, (_, v, _) in enumerate(REFUSED)])
def test_refused_security_settings(static_issuer, jwks, values, variable, words):
    resolved = {name: static_issuer if value == "ISSUERS" else value for name, value in values.items()}
    if "ISSUER-JWKS" in str(resolved.get("trusted_issuers")):
        resolved["trusted_issuers"] = resolved["trusted_issuers"].replace('"ISSUER-JWKS"', json.dumps(jwks))
    with pytest.raises(ValueError) as refused:
        config(**resolved)
    message = str(refused.value)
    assert message.startswith(f"{variable}: "), message
    for word in words:
        assert word in message, (word, message)
    assert "long-enough-key" not in message


def test_create_app_refuses_too(app_factory):
    with pytest.raises(ValueError, match="^CARTOX_CORS_ORIGINS"):
        app_factory(mode="production", api_keys="long-enough-key-0123", cors_origins="*")


def test_settings_from_the_environment():
    settings = Settings.from_env({"CARTOX_MODE": "production", "CARTOX_ALLOW_TEST_PARAMETERS": "yes", "CARTOX_JWT_LEEWAY_SECONDS": "10",
                                  "CARTOX_CORS_ORIGINS": "https://a.example.org", "CARTOX_API_KEYS": "k" * 20})
    assert (settings.mode, settings.allow_test_parameters, settings.jwt_leeway_seconds) == ("production", True, 10)
    with pytest.raises(ValueError, match="^CARTOX_JWT_LEEWAY_SECONDS: 301 is outside the allowed range 0-300"):
        Settings.from_env({"CARTOX_JWT_LEEWAY_SECONDS": "301"})
