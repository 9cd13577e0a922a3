"""CDS Hooks 2.0 JWT verification: a trusted issuer's key, ES384/RS384, aud = the URL called, exp/iat/nbf
with a small leeway, a jti used once, an allowed tenant."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import jwt
import requests

from service.security.config import SecurityConfig
from service.security.jwks import ALGORITHMS, JwksSource, algorithm_of
from service.security.replay import ReplayStore

# A token may live at most this long from now (CDS Hooks clients sign each call, typically for 5 minutes):
# bounds how long the replay store keeps a jti.
MAX_LIFETIME_SECONDS = 3600
MAX_TOKEN_CHARS = 16 * 1024
MAX_CLAIM_CHARS = 256


class AuthenticationFailed(Exception):
    """Why a token was refused: for the log only, never for the caller."""


@dataclass(frozen=True)
class Caller:
    """Who made an authenticated call (for the layers after authentication, e.g. a FHIR server allow-list)."""

    issuer: str
    subject: str | None
    tenant: str | None
    api_key: bool = False


class TokenVerifier:
    def __init__(self, config: SecurityConfig, replay_store: ReplayStore, session: requests.Session | None = None) -> None:
        self.config = config
        self.replay_store = replay_store
        shared = session or requests.Session()
        self.sources = {
            issuer: JwksSource(issuer, static=entry.static_keys, url=entry.jwks_url, session=shared,
                               min_refresh_seconds=config.jwks_min_refresh_seconds)
            for issuer, entry in config.issuers.items()
        }

    def verify(self, token: str, audiences: Iterable[str]) -> Caller:
        """The caller of a valid token whose aud is one of `audiences`; AuthenticationFailed otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationFailed(f"token longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"not a JWT: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:  # before any key is looked at: none, HS256 ... never verify
            raise AuthenticationFailed(f"algorithm {str(algorithm)[:20]!r} is not accepted (ES384, RS384)")
        issuer = unverified.get("iss")
        source = self.sources.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise AuthenticationFailed(f"issuer {str(issuer)[:MAX_CLAIM_CHARS]!r} is not trusted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_CLAIM_CHARS:
            raise AuthenticationFailed(f"issuer {issuer}: the JWT header has no kid of 1-{MAX_CLAIM_CHARS} characters")
        key = source.key(kid)
        if key is None:
            raise AuthenticationFailed(f"issuer {issuer}: unknown key kid={kid!r}")
        if algorithm_of(key) != algorithm:
            raise AuthenticationFailed(f"issuer {issuer}: key {kid!r} does not sign {algorithm}")
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=list(audiences), issuer=issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"issuer {issuer}: {type(exc).__name__}: {exc}") from None
        return self._checked(issuer, claims)

    def _checked(self, issuer: str, claims: dict) -> Caller:
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_CLAIM_CHARS:
            raise AuthenticationFailed(f"issuer {issuer}: jti must be a string of 1-{MAX_CLAIM_CHARS} characters")
        if claims["exp"] - time.time() > MAX_LIFETIME_SECONDS:
            raise AuthenticationFailed(f"issuer {issuer}: exp more than {MAX_LIFETIME_SECONDS} s ahead")
        tenant = claims.get("tenant")
        allowed = self.config.issuers[issuer].tenants
        if allowed is not None and tenant not in allowed:
            raise AuthenticationFailed(f"issuer {issuer}: tenant {str(tenant)[:MAX_CLAIM_CHARS]!r} is not allowed")
        # Last: only a token valid in every other respect may use up its jti.
        expires_at = datetime.fromtimestamp(claims["exp"] + self.config.leeway_seconds, timezone.utc)
        if not self.replay_store.claim(issuer, jti, expires_at):
            raise AuthenticationFailed(f"issuer {issuer}: jti {jti!r} replayed")
        subject = claims.get("sub")
        return Caller(issuer, subject if isinstance(subject, str) else None, tenant if isinstance(tenant, str) else None)
