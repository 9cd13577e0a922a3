"""An issuer's signing keys: a static JWK Set, or one fetched from its URL, cached and refreshed when a
token names a key it does not have (key rotation), at most once per interval (a stream of made-up `kid`s
cannot turn the service into a fetch loop)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

import orjson
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError

log = logging.getLogger("cartox.auth")

#: The two algorithms CDS Hooks 2.0 names; never `none`, never a shared-secret (HS*) algorithm.
ALGORITHMS = ("ES384", "RS384")
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MAX_KEYS = 100
MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT = (3.05, 5.0)  # (connect, read) seconds: a JWKS fetch can sit on a request's path
MAX_AGE_SECONDS = 3600.0
MIN_RSA_BITS = 2048


def parse_jwks(document: Any) -> dict[str, PublicKey]:
    """kid -> public key of every usable signature key (EC P-384 or RSA >= 2048 bits) of a JWK Set.

    ValueError when the document is not a JWK Set or has no usable key; keys of other types or uses are
    skipped (an issuer's set may also carry encryption keys)."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError('not a JWK Set: expected {"keys": [...]}')
    usable: dict[str, PublicKey] = {}
    for jwk in keys[:MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
            continue
        declared = jwk.get("alg")
        if declared is not None and declared not in ALGORITHMS:
            continue
        try:
            key = PyJWK(jwk).key
        except (PyJWKError, ValueError, TypeError):
            continue
        if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            key = key.public_key()  # a set copied with its private parts: only the public half verifies
        if algorithm_of(key) is not None:
            usable[jwk["kid"]] = key
    if not usable:
        raise ValueError("the JWK Set has no usable signature key (EC P-384 or RSA of at least 2048 bits, with a kid)")
    return usable


def algorithm_of(key: Any) -> str | None:
    """The one accepted algorithm a public key verifies: a P-384 key ES384, an RSA key RS384."""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1":
        return "ES384"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return "RS384"
    return None


class JwksSource:
    """The keys of one issuer: static, or fetched from `url` (cached MAX_AGE_SECONDS)."""

    def __init__(self, issuer: str, *, static: Mapping[str, PublicKey] | None = None, url: str | None = None,
                 session: requests.Session | None = None, min_refresh_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (static is None) == (url is None):
            raise ValueError("a JWKS source is either static or a URL")
        self.issuer = issuer
        self.url = url
        self._keys: dict[str, PublicKey] = dict(static or {})
        self._session = session or requests.Session()
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> PublicKey | None:
        if self.url is None:
            return self._keys.get(kid)
        with self._lock:  # one fetch at a time; the other threads then find its keys
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at > MAX_AGE_SECONDS
            if (stale or kid not in self._keys) and self._may_fetch(now):
                self._fetch(now)
            return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refresh

    def _fetch(self, now: float) -> None:
        """Replace the keys by the issuer's current set; on failure keep the last good set and log why."""
        self._attempted_at = now
        assert self.url is not None
        try:
            with self._session.get(self.url, timeout=FETCH_TIMEOUT, stream=True, allow_redirects=False,
                                   headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            self._keys = parse_jwks(orjson.loads(body))
            self._fetched_at = now
        except (requests.RequestException, ValueError) as exc:  # JSONDecodeError is a ValueError
            log.warning("JWKS of issuer %s not refreshed from %s: %s", self.issuer, self.url, exc)
