"""The audit record of each evaluation answered, built at the HTTP edge and handed to the background writer."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, current_app, g, request

from service.http_api.common import engine
from service.pipeline import Outcome
from service.storage import Storage
from service.storage.audit import AuditRecord, card_summaries, count_failures, finding_summary, patient_hash

log = logging.getLogger("cartox.audit")
blueprint = Blueprint("audit", __name__)

# A caller's X-Request-ID is kept when it is a plain token; anything else gets a fresh id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@blueprint.before_app_request
def start_clock() -> None:
    g.cartox_started = time.perf_counter()


def request_id() -> str:
    """The request's id: the caller's X-Request-ID when usable, else a new one (the same for the whole request)."""
    if "cartox_request_id" not in g:
        given = request.headers.get("X-Request-ID", "")
        g.cartox_request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    return g.cartox_request_id


def storage() -> Storage:
    return current_app.extensions["cartox.storage"]


def audit_evaluation(service_id: str, body: bytes, outcome: Outcome, cards: Sequence[dict[str, Any]], output_ids: Sequence[str],
                     hook_instance: str | None = None, patient_id: str | None = None) -> None:
    """Queue the audit record of an answered evaluation; a failure is logged and counted, never raised."""
    store = storage()
    if store.audit is None:
        return
    try:
        patient = outcome.timeline.patient or (f"Patient/{patient_id}" if patient_id else None)
        record = AuditRecord(
            created_at=datetime.now(timezone.utc),
            request_id=request_id(),
            service_id=service_id,
            hook_instance=hook_instance[:128] if hook_instance else None,
            rule_set_version=engine().rules.version,
            guideline=engine().check_guideline(request.args.get("guideline")),
            as_of=outcome.timeline.as_of,
            patient_hash=patient_hash(store.audit_key, patient),
            body=body,
            output_ids=list(output_ids),
            findings=[finding_summary(finding) for finding in outcome.evaluation.findings],
            cards=card_summaries(cards),
            duration_ms=(time.perf_counter() - g.cartox_started) * 1000,
        )
    except Exception:
        count_failures(1)
        log.exception("audit record of request %s could not be built", request_id())
        return
    store.audit.submit(record)
