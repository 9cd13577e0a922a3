"""Which FHIR servers a CDS Hooks call may make cartox query, and where its access token may go.

A `fhirServer` is queried only when its base URL is on the allow-list of the caller (the verified JWT issuer
or tenant, or "*" for any caller). Without any allow-list, only loopback servers are allowed: development
against a local FHIR server, never a way to make cartox call out to an address a caller chose.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import urlsplit

ANY_CALLER = "*"


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default ports made explicit; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, an unbalanced IPv6 bracket
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def same_origin(url: str, base: str) -> bool:
    """Paging links and every query stay on the origin of fhirServer: the token never leaves it."""
    return origin(url) is not None and origin(url) == origin(base)


def normalised_base(url: str) -> str | None:
    """scheme://host:port/path without a trailing slash, for comparing base URLs; None if not http(s) or
    if it carries a query, a fragment or credentials."""
    parts = urlsplit(url)
    where = origin(url)
    if where is None or parts.query or parts.fragment or parts.username or parts.password:
        return None
    scheme, host, port = where
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def is_loopback(url: str) -> bool:
    where = origin(url)
    if where is None:
        return False
    host = where[1].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerPolicy:
    """allowlist: {issuer, tenant or "*": base URLs}; loopback_without_allowlist: development mode."""

    allowlist: Mapping[str, tuple[str, ...]]
    loopback_without_allowlist: bool

    def allows(self, fhir_server: str, callers: Iterable[str | None]) -> bool:
        """Whether this fhirServer may be queried for a call from these callers (issuer, tenant; None when
        unsigned). Base URLs compare exactly after normalisation (case of the host, default port, a
        trailing slash): a prefix match would let https://ehr.example/fhir-evil through."""
        base = normalised_base(fhir_server)
        if base is None:
            return False
        if not self.allowlist:
            return self.loopback_without_allowlist and is_loopback(fhir_server)
        keys = {ANY_CALLER, *(caller for caller in callers if caller)}
        return any(base == normalised_base(allowed) for key in keys for allowed in self.allowlist.get(key, ()))
