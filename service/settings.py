"""Configuration from environment variables, all prefixed CARTOX_ (documented in README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

PREFIX = "CARTOX_"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Integer settings: (smallest, largest) accepted value.
_INT_RANGES = {"port": (1, 65535), "max_body_bytes": (1, 2**31 - 1), "body_timeout_seconds": (1, 3600),
               "fhir_max_pages": (1, 1000), "fhir_page_size": (1, 10000),
               "jwt_leeway_seconds": (0, 300), "jwks_min_refresh_seconds": (0, 3600),
               "audit_write_timeout_ms": (1, 10_000)}
# Float settings (seconds): (smallest, largest) accepted value.
_FLOAT_RANGES = {"fhir_connect_timeout_seconds": (0.05, 60.0), "fhir_read_timeout_seconds": (0.05, 120.0),
                 "fhir_fetch_budget_seconds": (0.1, 120.0)}
_DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")
_AUDIT_KEY_MIN_CHARS = 32


def _as_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false (1/0, yes/no, on/off), got {text!r}")


@dataclass(frozen=True)
class Settings:
    """Service settings. Clinical thresholds are not here: they live in rules/ (see rule_overrides)."""

    host: str = "127.0.0.1"
    port: int = 8080
    canonical_base: str = "http://cartox.example.org/fhir"
    guideline: str = "seed-S004"
    max_body_bytes: int = 32 * 1024 * 1024
    # The whole request body must arrive within this many seconds of its headers (else 408).
    body_timeout_seconds: int = 30
    accept_preliminary: bool = False
    strict_validation: bool = False
    # JSON object {"rule-id": {"parameter": value}}: a site's values for the parameters rule files mark
    # configurable (window length, waiver lapse, blood-pressure threshold ...).
    rule_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    log_level: str = "INFO"
    # Prefetch fallback (service.fhir_client): FHIR servers a CDS Hooks call may make cartox query, per JWT
    # issuer or tenant ("*": any caller); empty = loopback servers only (development).
    fhir_server_allowlist: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fhir_connect_timeout_seconds: float = 1.0
    fhir_read_timeout_seconds: float = 3.0
    # Every query of one CDS Hooks call, retries and pages included, ends within this budget (else 412).
    fhir_fetch_budget_seconds: float = 5.0
    fhir_max_pages: int = 50  # per prefetch key: a longer search is used as partial data
    fhir_page_size: int = 1000  # _count asked for when the template does not say
    # Security (service/security/config.py reads and checks these; README "Security"). mode "": development
    # on a loopback host, production on any other.
    mode: str = ""
    trusted_issuers: str = ""  # JSON {"issuer": {"jwks_url" | "jwks" | "jwks_file": ..., "tenants": [...]}}
    external_base_urls: str = ""  # comma-separated: the base URL(s) clients call, the aud of their JWTs
    jwt_leeway_seconds: int = 30
    jwks_min_refresh_seconds: int = 30
    trust_cds_hooks_sandbox: bool = False
    cors_origins: str = ""  # comma-separated; unset: "*" in development, none in production
    api_keys: str = field(default="", repr=False)  # comma-separated keys for /evaluate
    allow_test_parameters: bool = False
    allow_insecure_development: bool = False
    # Storage (service.storage): the SQLite file lives in data_dir unless database_url names another database.
    data_dir: str = "cartox-data"
    database_url: str = field(default="", repr=False)  # may carry a password
    audit: bool = True
    audit_key: str = field(default="", repr=False)  # HMAC key of the patient ids in the audit
    # The longest a request waits to hand its audit record to the background writer (full queue).
    audit_write_timeout_ms: int = 50
    # bench/: POST /bench/loads, the floor of a JSON endpoint under the same server (never in production).
    bench_endpoints: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Settings from CARTOX_ variables; ValueError naming the variable for a value that cannot be used."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = env.get(PREFIX + spec.name.upper())
            if raw is None:
                continue
            values[spec.name] = _parse(spec.name, spec.type, raw)
        return cls(**values)

    def with_values(self, **changes: Any) -> "Settings":
        return replace(self, **changes)


def _parse(name: str, declared: Any, raw: str) -> Any:
    kind = str(declared)
    try:
        if kind == "int":
            return _as_int(name, raw)
        if kind == "float":
            return _as_float(name, raw)
        if kind == "bool":
            return _as_bool(raw)
        if name == "fhir_server_allowlist":
            return _as_allowlist(raw)
        if kind.startswith("Mapping"):
            return _as_overrides(raw)
        if name == "log_level":
            level = raw.strip().upper()
            if level not in _LOG_LEVELS:
                raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
            return level
        if name == "database_url" and not raw.startswith(_DATABASE_SCHEMES):
            raise ValueError("expected a sqlite:/// or postgresql+psycopg:// URL")  # the value may hold a password
        if name == "audit_key" and len(raw) < _AUDIT_KEY_MIN_CHARS:
            raise ValueError(f"too short: at least {_AUDIT_KEY_MIN_CHARS} characters")
        if name == "canonical_base" and not raw.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {raw!r}")
        return raw
    except ValueError as exc:
        raise ValueError(f"{PREFIX}{name.upper()}: {exc}") from None


def _as_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None
    low, high = _INT_RANGES[name]
    if not low <= value <= high:
        raise ValueError(f"{value} is outside the allowed range {low}-{high}")
    return value


def _as_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    low, high = _FLOAT_RANGES[name]
    if not low <= value <= high:  # also refuses nan
        raise ValueError(f"{value} is outside the allowed range {low}-{high}")
    return value


def _as_allowlist(raw: str) -> dict[str, tuple[str, ...]]:
    """{"issuer, tenant or *": ["https://ehr.example/fhir", ...]}: absolute http(s) base URLs without query."""
    import orjson
    from urllib.parse import urlsplit

    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    shape = 'expected a JSON object {"issuer, tenant or *": ["https://ehr.example/fhir", ...]}'
    if not isinstance(parsed, dict) or not all(isinstance(urls, list) for urls in parsed.values()):
        raise ValueError(shape)
    for urls in parsed.values():
        for url in urls:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                raise ValueError(f"{url!r} is not an http(s) FHIR base URL; {shape}")
    return {caller: tuple(urls) for caller, urls in parsed.items()}


def _as_overrides(raw: str) -> dict[str, Any]:
    import orjson

    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(parsed, dict) or not all(isinstance(values, dict) for values in parsed.values()):
        raise ValueError('expected a JSON object {"rule-id": {"parameter": value}}')
    return parsed
