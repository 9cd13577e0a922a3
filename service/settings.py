"""Configuration from environment variables, all prefixed CARTOX_ (documented in README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

PREFIX = "CARTOX_"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Integer settings: (smallest, largest) accepted value.
_INT_RANGES = {"port": (1, 65535), "max_body_bytes": (1, 2**31 - 1), "body_timeout_seconds": (1, 3600)}


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
        if kind == "bool":
            return _as_bool(raw)
        if kind.startswith("Mapping"):
            return _as_overrides(raw)
        if name == "log_level":
            level = raw.strip().upper()
            if level not in _LOG_LEVELS:
                raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
            return level
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


def _as_overrides(raw: str) -> dict[str, Any]:
    import orjson

    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(parsed, dict) or not all(isinstance(values, dict) for values in parsed.values()):
        raise ValueError('expected a JSON object {"rule-id": {"parameter": value}}')
    return parsed
