"""The security configuration from Settings: the mode, trusted issuers, audiences, CORS origins, API keys.

Every value the service cannot run with is a ValueError whose message starts with the variable's name
(`cartox serve` prints it as one line and exits 2)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from service.security.jwks import PublicKey, parse_jwks
from service.settings import Settings

PRODUCTION = "production"
DEVELOPMENT = "development"
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
_ISSUER_FIELDS = {"jwks_url", "jwks", "jwks_file", "tenants"}
_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")
MIN_API_KEY_LENGTH = 16


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    jwks_url: str | None = None
    static_keys: dict[str, PublicKey] | None = None
    tenants: frozenset[str] | None = None  # None: any tenant, or none


@dataclass(frozen=True)
class SecurityConfig:
    mode: str
    issuers: dict[str, IssuerConfig] = field(default_factory=dict)
    external_base_urls: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # ("*",) in development only
    api_key_digests: tuple[bytes, ...] = field(default=(), repr=False)
    leeway_seconds: int = 30
    jwks_min_refresh_seconds: int = 30
    allow_test_parameters: bool = False
    warnings: tuple[str, ...] = ()  # logged at start

    @property
    def production(self) -> bool:
        return self.mode == PRODUCTION


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def api_key_digest(key: str) -> bytes:
    """Keys are compared as digests: equal length whatever the key, so the comparison leaks nothing."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def security_config(settings: Settings) -> SecurityConfig:
    mode = _mode(settings)
    issuers = _issuers(settings.trusted_issuers)
    warnings: list[str] = []
    if settings.trust_cds_hooks_sandbox:
        if SANDBOX_ISSUER in issuers:
            raise ValueError(f"CARTOX_TRUST_CDS_HOOKS_SANDBOX: {SANDBOX_ISSUER} is also in CARTOX_TRUSTED_ISSUERS: configure it once")
        issuers[SANDBOX_ISSUER] = IssuerConfig(SANDBOX_ISSUER, static_keys=parse_jwks(orjson.loads(sandbox_jwks_bytes())))
        warnings.append(f"CARTOX_TRUST_CDS_HOOKS_SANDBOX=1: JWTs of the public CDS Hooks sandbox ({SANDBOX_ISSUER}) are accepted; "
                        "its private key is published, so anyone can sign as it: for tests only, never with patient data")
    bases = _base_urls(settings.external_base_urls)
    api_keys = _api_keys(settings.api_keys)
    origins = _cors_origins(settings.cors_origins, mode)
    where = f"{settings.host}:{settings.port}"
    if mode == PRODUCTION:
        if not issuers and not api_keys:
            raise ValueError(f"CARTOX_TRUSTED_ISSUERS: production mode (serving on {where}) needs at least one trusted JWT issuer "
                             "(or CARTOX_API_KEYS for /evaluate alone); see README \"Security\"")
        if issuers and not bases:
            raise ValueError("CARTOX_EXTERNAL_BASE_URLS: production mode with trusted issuers needs the base URL(s) clients call "
                             "(a JWT's aud is that base plus the path)")
        if settings.allow_test_parameters:
            warnings.append("CARTOX_ALLOW_TEST_PARAMETERS=1: CDS Hooks calls may set asOf, infusionDate and guideline")
    else:
        warnings.append(f"DEVELOPMENT MODE on {where}: NO AUTHENTICATION, every caller is trusted and test parameters are accepted; "
                        "set CARTOX_MODE=production (see README \"Security\") before any real use")
    return SecurityConfig(
        mode=mode,
        issuers=issuers,
        external_base_urls=bases,
        cors_origins=origins,
        api_key_digests=tuple(api_key_digest(key) for key in api_keys),
        leeway_seconds=settings.jwt_leeway_seconds,
        jwks_min_refresh_seconds=settings.jwks_min_refresh_seconds,
        allow_test_parameters=settings.allow_test_parameters or mode == DEVELOPMENT,
        warnings=tuple(warnings),
    )


def sandbox_jwks_bytes() -> bytes:
    return resources.files("service.security").joinpath("cds_hooks_sandbox_jwks.json").read_bytes()


def _mode(settings: Settings) -> str:
    """Unset: development on a loopback address (the README quick start), production anywhere else."""
    loopback = is_loopback(settings.host)
    chosen = settings.mode.strip().lower()
    if not chosen:
        return DEVELOPMENT if loopback else PRODUCTION
    if chosen not in (PRODUCTION, DEVELOPMENT):
        raise ValueError(f"CARTOX_MODE: expected production or development, got {settings.mode!r}")
    if chosen == DEVELOPMENT and not loopback and not settings.allow_insecure_development:
        raise ValueError(f"CARTOX_MODE: development mode (no authentication) on the non-loopback address {settings.host} is refused: "
                         "use production mode, or set CARTOX_ALLOW_INSECURE_DEVELOPMENT=1 to force it")
    return chosen


def _issuers(raw: str) -> dict[str, IssuerConfig]:
    name = "CARTOX_TRUSTED_ISSUERS"
    if not raw.strip():
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError(f'{name}: expected a JSON object {{"issuer": {{"jwks_url": "https://..."}}}}')
    issuers = {}
    for issuer, entry in document.items():
        if not issuer or not isinstance(entry, dict):
            raise ValueError(f'{name}: {issuer!r}: expected {{"jwks_url": ...}}, {{"jwks": {{"keys": [...]}}}} or {{"jwks_file": PATH}}')
        unknown = sorted(set(entry) - _ISSUER_FIELDS)
        if unknown:
            raise ValueError(f"{name}: {issuer}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_ISSUER_FIELDS))})")
        sources = [key for key in ("jwks_url", "jwks", "jwks_file") if key in entry]
        if len(sources) != 1:
            raise ValueError(f"{name}: {issuer}: give exactly one of jwks_url, jwks, jwks_file")
        issuers[issuer] = IssuerConfig(issuer, tenants=_tenants(issuer, entry.get("tenants")), **_keys_of(issuer, sources[0], entry[sources[0]]))
    return issuers


def _keys_of(issuer: str, source: str, value: Any) -> dict[str, Any]:
    name = f"CARTOX_TRUSTED_ISSUERS: {issuer}"
    if source == "jwks_url":
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{name}: jwks_url must be an https URL, got {value!r}")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError(f"{name}: jwks_url must use https (http only on a loopback address), got {value!r}")
        return {"jwks_url": value}
    try:
        if source == "jwks_file":
            if not isinstance(value, str):
                raise ValueError(f"jwks_file must be a path, got {value!r}")
            try:
                value = orjson.loads(Path(value).read_bytes())
            except OSError as exc:
                raise ValueError(f"jwks_file {exc}") from None
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"jwks_file is not JSON ({exc})") from None
        return {"static_keys": parse_jwks(value)}
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _tenants(issuer: str, value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t for t in value):
        raise ValueError(f"CARTOX_TRUSTED_ISSUERS: {issuer}: tenants must be a non-empty list of strings")
    return frozenset(value)


def _base_urls(raw: str) -> tuple[str, ...]:
    bases = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"CARTOX_EXTERNAL_BASE_URLS: expected http(s) URLs without query, separated by commas, got {item!r}")
        bases.append(item.rstrip("/"))
    return tuple(bases)


def _api_keys(raw: str) -> list[str]:
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    short = sum(1 for key in keys if len(key) < MIN_API_KEY_LENGTH)
    if short:  # never echo a key
        raise ValueError(f"CARTOX_API_KEYS: {short} key(s) shorter than {MIN_API_KEY_LENGTH} characters")
    return keys


def _cors_origins(raw: str, mode: str) -> tuple[str, ...]:
    """Unset: any origin in development (browser sandboxes on a laptop), none in production."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        return ("*",) if mode == DEVELOPMENT else ()
    if "*" in items:
        if mode == PRODUCTION:
            raise ValueError("CARTOX_CORS_ORIGINS: '*' (any origin) is refused in production mode: list the EHR origins")
        return ("*",)
    origins = []
    for item in items:
        origin = item.lower().rstrip("/")
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(f"CARTOX_CORS_ORIGINS: expected origins such as https://ehr.example.org (scheme, host, optional port), got {item!r}")
        origins.append(origin)
    return tuple(origins)
