"""GET /healthz: alive, with the rule set loaded (the engine is built at start-up or the app fails)."""

from __future__ import annotations

from flask import Blueprint, Response

from service import __version__
from service.http_api.common import engine, json_response

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    rules = engine().rules
    return json_response({
        "status": "ok",
        "version": __version__,
        "rulesLoaded": True,
        "ruleSetVersion": rules.version,
        "ruleFiles": rules.files,
        "guidelines": list(rules.guideline_ids),
    })
