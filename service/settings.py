"""Configuration from environment variables, all prefixed CARTOX_ (documented in README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

PREFIX = "CARTOX_"


def _as_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class Settings:
    """Service settings. Clinical thresholds are not here: they live in rules/ (see rule_overrides)."""

    host: str = "127.0.0.1"
    port: int = 8080
    canonical_base: str = "http://cartox.example.org/fhir"
    guideline: str = "seed-S004"
    max_body_bytes: int = 32 * 1024 * 1024
    accept_preliminary: bool = False
    strict_validation: bool = False
    # JSON object {"rule-id": {"parameter": value}}: a site's values for the parameters rule files mark
    # configurable (window length, waiver lapse, blood-pressure threshold ...).
    rule_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
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
            return int(raw)
        if kind == "bool":
            return _as_bool(raw)
        if kind.startswith("Mapping"):
            import orjson

            parsed = orjson.loads(raw)
            if not isinstance(parsed, dict):
                raise ValueError("expected a JSON object")
            return parsed
        return raw
    except ValueError as exc:
        raise ValueError(f"{PREFIX}{name.upper()}: {exc}") from exc
