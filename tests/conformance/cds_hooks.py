"""CDS Hooks 2.0 conformance of documents: the JSON Schema beside this file plus the invariants it cannot say.

`violations(document, kind)` lists every problem as "path: message" (empty when conformant); kind is a
$defs entry of cds-hooks-2.0.schema.json: discovery, request, response or feedback. tests/conftest.py
applies it to every CDS Hooks response the test client receives.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

SCHEMA_PATH = Path(__file__).with_name("cds-hooks-2.0.schema.json")
KINDS = ("discovery", "request", "response", "feedback")
SUMMARY_LIMIT = 140  # "<140 characters"


@cache
def _validator(kind: str) -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    rooted = {**schema, "$ref": f"#/$defs/{kind}"}
    Draft202012Validator.check_schema(rooted)
    return Draft202012Validator(rooted, format_checker=FormatChecker())


def empty_values(value: Any, path: str = "$") -> list[str]:
    """Paths of null, "", blank strings, [] and {} anywhere in the document (CDS Hooks: omit, never empty)."""
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += empty_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += empty_values(item, f"{path}[{index}]")
    elif isinstance(value, str) and not value.strip():
        found.append(path)
    return found


def _card_invariants(cards: list[Any]) -> list[str]:
    """Spelled out beside the schema so that a failure names the rule it breaks."""
    problems: list[str] = []
    for index, card in enumerate(cards):
        if not isinstance(card, dict):
            continue
        where = f"$.cards[{index}]"
        summary = card.get("summary")
        if isinstance(summary, str) and len(summary) >= SUMMARY_LIMIT:
            problems.append(f"{where}.summary: {len(summary)} characters, must be under {SUMMARY_LIMIT}")
        if card.get("suggestions") and "selectionBehavior" not in card:
            problems.append(f"{where}: suggestions without selectionBehavior")
        for s_index, suggestion in enumerate(card.get("suggestions") or []):
            for a_index, action in enumerate((suggestion or {}).get("actions") or []):
                if not (action or {}).get("description"):
                    problems.append(f"{where}.suggestions[{s_index}].actions[{a_index}]: action without description")
        for r_index, reason in enumerate(card.get("overrideReasons") or []):
            if not (reason or {}).get("display"):
                problems.append(f"{where}.overrideReasons[{r_index}]: override reason without display")
        uuids = [s.get("uuid") for s in card.get("suggestions") or [] if isinstance(s, dict) and s.get("uuid")]
        if len(uuids) != len(set(uuids)):
            problems.append(f"{where}.suggestions: the same uuid twice")
    card_uuids = [c.get("uuid") for c in cards if isinstance(c, dict) and c.get("uuid")]
    if len(card_uuids) != len(set(card_uuids)):
        problems.append("$.cards: the same card uuid twice (feedback could not tell the cards apart)")
    return problems


def document_kind(method: str, path: str, status: int, mimetype: str) -> str | None:
    """The CDS Hooks document a successful HTTP response is (discovery or response), None when it is none."""
    if status != 200 or mimetype != "application/json":
        return None
    if method == "GET" and path == "/cds-services":
        return "discovery"
    segments = path.strip("/").split("/")
    if method == "POST" and (len(segments) == 2 and segments[0] == "cds-services" or path == "/evaluate"):
        return "response"  # /evaluate's default format is a CDS Hooks response too
    return None


def violations(document: Any, kind: str) -> list[str]:
    """Every way `document` breaks CDS Hooks 2.0 as a `kind` document; [] when it conforms."""
    if kind not in KINDS:
        raise ValueError(f"unknown CDS Hooks document kind {kind!r}: one of {KINDS}")
    problems = [f"{error.json_path}: {error.message[:300]}" for error in _validator(kind).iter_errors(document)]
    # The one required array the specification allows empty: "no decision support" is {"cards": []}.
    empty = [path for path in empty_values(document) if path != "$.cards"]
    if kind == "request" and isinstance(document, dict) and isinstance(document.get("prefetch"), dict):
        # a null prefetch value is the EHR saying "no data": the one null the specification defines
        empty = [path for path in empty if not (path.startswith("$.prefetch.") and document["prefetch"].get(path[11:], 0) is None)]
    problems += [f"{path}: null or empty value" for path in empty]
    if kind == "response" and isinstance(document, dict) and isinstance(document.get("cards"), list):
        problems += _card_invariants(document["cards"])
    return problems
