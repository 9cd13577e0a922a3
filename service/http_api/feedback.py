"""POST /cds-services/{id}/feedback (CDS Hooks 2.0): what clinicians did with the cards, stored before the answer.

Validated field by field (400 with the location, e.g. feedback[0].outcome); the same card, outcome and
outcomeTimestamp sent again is stored once; a card uuid no audit row names is accepted and flagged
(cards are not stored, only their uuids in the audit).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime
from typing import Any

import orjson
from flask import Blueprint, Response
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import NotFound

from service.errors import CartoxError, InputError, Issue
from service.http_api.audit import request_id, storage
from service.http_api.cds_hooks import ORDER_SERVICE_ID, SERVICE_ID
from service.cds_cards.cards import OVERRIDE_REASONS
from service.http_api.common import engine, json_response, require_json_body
from service.storage.feedback import ACCEPTED, OVERRIDDEN, FeedbackItem, OverrideReason

log = logging.getLogger("cartox.feedback")
blueprint = Blueprint("feedback", __name__)

SERVICES = (SERVICE_ID, ORDER_SERVICE_ID)
MAX_ITEMS = 100
MAX_COMMENT_CHARS = 2000
_MAX_TEXT = 512
# The reasons the cards offer (CDS Hooks: a client may also send reasons of its own, in its own system).
OUR_REASONS = tuple(code for code, _display in OVERRIDE_REASONS)
# FHIR instant: seconds required, a UTC offset required.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


def _bad(message: str, where: str, fhir_type: str = "invalid") -> Issue:
    return Issue("input-bad-parameter", message, where, fhir_type=fhir_type)


def _text(value: Any, where: str, issues: list[Issue], limit: int = _MAX_TEXT) -> str | None:
    """A non-empty string of at most `limit` characters, else an issue (None)."""
    if not isinstance(value, str) or not value.strip():
        issues.append(_bad(f"{where} must be a non-empty string", where))
        return None
    if len(value) > limit:
        issues.append(_bad(f"{where} is longer than {limit} characters", where, "too-long"))
        return None
    return value


def _instant(value: Any, where: str, issues: list[Issue]) -> datetime | None:
    if isinstance(value, str) and _INSTANT.fullmatch(value):
        try:  # fromisoformat takes at most 6 fraction digits
            return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value))
        except ValueError:
            pass
    issues.append(_bad(f"{where} must be an instant with a UTC offset, e.g. 2026-03-07T12:00:00Z", where))
    return None


def _suggestions(value: Any, where: str, issues: list[Issue]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        issues.append(_bad(f"{where} must list the accepted suggestions ({{\"id\": uuid}}) of an accepted card", where, "required"))
        return ()
    ids = []
    for index, suggestion in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(suggestion, dict):
            issues.append(_bad(f"{at} must be an object {{\"id\": uuid}}", at))
            continue
        identifier = _text(suggestion.get("id"), f"{at}.id", issues, 128)
        if identifier is not None:
            ids.append(identifier)
    return tuple(ids)


def _override_reason(value: Any, where: str, issues: list[Issue]) -> OverrideReason | None:
    if not isinstance(value, dict):
        issues.append(_bad(f"{where} must be an object with reason (a Coding) and/or userComment", where))
        return None
    system = code = display = comment = None
    reason = value.get("reason")
    if reason is not None:
        if not isinstance(reason, dict):
            issues.append(_bad(f"{where}.reason must be a Coding", f"{where}.reason"))
        else:
            code = _text(reason.get("code"), f"{where}.reason.code", issues, 128)
            if "system" in reason:
                system = _text(reason["system"], f"{where}.reason.system", issues)
            if system == engine().output.codesystem and code is not None and code not in OUR_REASONS:
                issues.append(_bad(f"{code!r} is not one of the cartox override reasons: {', '.join(OUR_REASONS)}",
                                   f"{where}.reason.code", "code-invalid"))
                code = None
            if "display" in reason:
                display = _text(reason["display"], f"{where}.reason.display", issues)
    if "userComment" in value:
        comment = _text(value["userComment"], f"{where}.userComment", issues, MAX_COMMENT_CHARS)
    if code is None and comment is None:
        return None  # an empty reason is a plain dismiss
    return OverrideReason(system, code, display, comment)


def parse_item(value: Any, where: str, issues: list[Issue]) -> FeedbackItem | None:
    if not isinstance(value, dict):
        issues.append(_bad(f"{where} must be an object", where))
        return None
    before = len(issues)
    card = value.get("card")
    try:
        card_uuid = str(uuid.UUID(card)) if isinstance(card, str) and len(card) <= 45 else None
    except ValueError:
        card_uuid = None
    if card_uuid is None:
        issues.append(_bad(f"{where}.card must be the uuid of a card", f"{where}.card", "required" if card is None else "invalid"))
    outcome = value.get("outcome")
    if outcome not in (ACCEPTED, OVERRIDDEN):
        issues.append(_bad(f"{where}.outcome must be 'accepted' or 'overridden'", f"{where}.outcome", "required" if outcome is None else "code-invalid"))
    timestamp = _instant(value.get("outcomeTimestamp"), f"{where}.outcomeTimestamp", issues)
    suggestions: tuple[str, ...] = ()
    override = None
    if outcome == ACCEPTED:
        suggestions = _suggestions(value.get("acceptedSuggestions"), f"{where}.acceptedSuggestions", issues)
        if "overrideReason" in value:
            issues.append(_bad("overrideReason is only for an overridden card", f"{where}.overrideReason", "business-rule"))
    elif outcome == OVERRIDDEN:
        if value.get("acceptedSuggestions") not in (None, []):
            issues.append(_bad("acceptedSuggestions is only for an accepted card", f"{where}.acceptedSuggestions", "business-rule"))
        if value.get("overrideReason") is not None:
            override = _override_reason(value["overrideReason"], f"{where}.overrideReason", issues)
    if len(issues) > before or card_uuid is None or timestamp is None:
        return None
    return FeedbackItem(card_uuid, outcome, timestamp, suggestions, override)


def parse_feedback(body: bytes) -> list[FeedbackItem]:
    """The request body -> feedback items, or InputError listing every problem with its location."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(Issue("input-not-json", f"Body is not valid JSON: {exc}", None, fhir_type="structure")) from None
    entries = document.get("feedback") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(_bad("feedback must be a non-empty array of Feedback objects", "feedback", "required"))
    if len(entries) > MAX_ITEMS:
        raise InputError(_bad(f"feedback lists {len(entries)} entries, at most {MAX_ITEMS} are accepted per request", "feedback", "too-long"))
    issues: list[Issue] = []
    items = [parse_item(entry, f"feedback[{index}]", issues) for index, entry in enumerate(entries)]
    if issues:
        raise InputError(issues)
    return [item for item in items if item is not None]


@blueprint.post("/cds-services/<service_id>/feedback")
def post_feedback(service_id: str) -> Response:
    if service_id not in SERVICES:
        raise NotFound()
    items = parse_feedback(require_json_body())
    try:
        result = storage().feedback.store(service_id, items, request_id())
    except SQLAlchemyError:
        log.exception("feedback of request %s not stored", request_id())
        raise CartoxError(Issue("storage-unavailable", "The feedback could not be stored (database unavailable): nothing was stored, retry later",
                                None, fhir_type="transient"), status=503) from None
    answer: dict[str, Any] = {"stored": result.stored, "alreadyStored": result.already_stored}
    if result.unknown_cards:
        answer["unknownCards"] = list(result.unknown_cards)
    return json_response(answer)
