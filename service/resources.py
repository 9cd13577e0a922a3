"""Where the shipped data live: inside the installed package, or beside it in a source checkout."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    bundled = _PACKAGE_DIR / name  # wheel: force-included into the package
    if bundled.is_dir():
        return bundled
    checkout = _PACKAGE_DIR.parent / name  # source tree (editable install or plain checkout)
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"cartox data directory {name!r} not found next to {_PACKAGE_DIR}")


def rules_dir() -> Path:
    """The rule directory: CARTOX_RULES_DIR when set (a site's own rule set), else the shipped rules."""
    override = os.environ.get("CARTOX_RULES_DIR")
    return Path(override) if override else _data_dir("rules")


def profiles_dir() -> Path:
    """The FHIR conformance artefacts (profiles, CodeSystem, ValueSets) shipped with the service."""
    return _data_dir("fhir_profiles")
